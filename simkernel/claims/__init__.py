"""The theory's claims as code: one module per claim, each with its statement, kind, source,
scope, evidence from the sweep tables, rule and figure.

A claim is a :class:`~simkernel.claims.base.Claim`: ``judge(tables, info)`` reads the combined
sweep tables it names in ``reads`` (``{'regime.worlds': DataFrame, ...}``; ``info`` holds what the
report read from the job folders: training gaps, block sizes, measure.json) and returns a
:class:`~simkernel.claims.base.Result`; ``draw(result, fig)`` draws its figure.  :data:`REGISTRY`
lists them in page order; adding a claim is one new module and one :func:`register` line below.

- ``c1``  the sampling term shrinks like n^-1/2, judged where the central-limit regime has begun
- ``c2``  a bias floor exists with Σ_pretrain (and the Σ_θ* identity, as a check)
- ``c3``  the floor obeys the bound floor <= η²ε_θ
- ``c4``  the crossover n× at which the kernel overtakes label counting (a comparison)
- ``c5``  a trained transformer predicts like the kernel rather than like exact Bayes
- ``c6``  attention heads that regress
- ``c7``  the phenomena (C7-<name>)

Nothing here imports the report or runs a sweep.
"""

from __future__ import annotations

from . import c1, c2, c3, c4, c5, c6, c7
from .base import (CHECKS, EVIDENCE, FAMILIES, KINDS, OVERALL, OVERALL_RULE, VERDICTS, Claim, Result,  # noqa: F401
                   overall)

#: Every claim, in the order of the page.
REGISTRY: list[Claim] = []


def register(*claims: Claim) -> None:
    """Add claims to :data:`REGISTRY` (an id twice is a ValueError)."""
    for c in claims:
        if any(c.id == r.id for r in REGISTRY):
            raise ValueError(f"claim {c.id!r} is registered twice; give each claim its own id")
        REGISTRY.append(c)


register(c1.CLAIM)
register(c2.CLAIM)
register(c3.CLAIM)
register(c4.CLAIM)
register(c5.CLAIM)
register(c6.CLAIM)
register(*c7.CLAIMS.values())


def get(claim_id: str) -> Claim:
    """The registered claim with this id ('C1', 'C7-order'), or a ValueError naming the ids."""
    for c in REGISTRY:
        if c.id == claim_id:
            return c
    raise ValueError(f"unknown claim {claim_id!r}; allowed: {', '.join(c.id for c in REGISTRY)}")


def judge_all(tables: dict, info: dict | None = None, missing: dict | None = None) -> list[Result]:
    """Every registered claim's result.  ``tables``: {'regime.worlds': DataFrame or None, ...};
    ``missing``: {sweep name: why it has no tables}.  A claim whose tables are missing, or whose
    judge fails on them, is inconclusive and says why."""
    info, missing = info or {}, missing or {}
    out = []
    for c in REGISTRY:
        need = [r for r in c.reads[:1] if tables.get(r) is None]
        if need:
            sweep = need[0].split(".")[0]
            out.append(c.not_run(missing.get(sweep) or f"no {need[0]} table"))
            continue
        try:
            out.append(c.judge(tables, info))
        except KeyError as e:                   # a table from an older sweep, without a column the rule reads
            out.append(c.not_run(f"a table lacks the column {e} (a sweep older than the claim?)"))
        except (LookupError, ValueError) as e:
            out.append(c.not_run(str(e)))
    return out
