"""The pieces every claim shares: the verdict vocabulary, the result, intervals, families.

A claim (one module of this package) reads combined sweep tables (pandas DataFrames shaped like
``sweep.SweepResult.table(...)``: columns ``job``, the grid's columns such as ``preset`` (str) and
``world_seed`` (int), ``status``, ``error``, then the job's own columns, dtypes as the job wrote
them) and returns a :class:`Result`.  The words it may use:

- evidence, per preset family: ``supported``, ``refuted``, ``inconclusive``, ``not reached`` (an
  asymptotic claim whose regime has not begun by the largest simulated n: never a refutation),
  ``out of scope`` (every setting lies outside the claim's assumptions: reported, never counted);
  a comparison (C4) says ``measured``: its finding is a number, not a verdict;
- identity checks (a check of the code; a failure is a bug): ``passed``, ``failed``;
- overall, across the preset families (:func:`overall`): their common word, else ``mixed``.

Every interval is 95%: a t-interval over worlds (or training seeds) of the per-unit values
(``metrics.unit_ci``, built on ``metrics.world_ci``), unless a rule says otherwise.  The
statistics live in :mod:`simkernel.metrics`; each claim imports them from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..plots.style import FREQUENCY_PREDICTED, PREDICTOR_STYLE

SUPPORTED, REFUTED, INCONCLUSIVE = "supported", "refuted", "inconclusive"
NOT_REACHED, OUT_OF_SCOPE = "not reached", "out of scope"
MEASURED, MIXED = "measured", "mixed"
PASSED, FAILED = "passed", "failed"
#: A preset family's evidence word.
EVIDENCE = (SUPPORTED, REFUTED, INCONCLUSIVE, NOT_REACHED, OUT_OF_SCOPE)
#: Every word a family may carry (a comparison's is ``measured``).
VERDICTS = EVIDENCE + (MEASURED,)
#: The overall word of a claim.
OVERALL = VERDICTS + (MIXED,)
#: An identity check's result.
CHECKS = (PASSED, FAILED)
#: What kind of statement a claim is (THEORY.md §10).
KINDS = ("identity", "asymptotic", "bound", "finite-n", "comparison")
#: The preset families of the battery; C6-C7 are measured in the first only, C5 in the strategies
#: map's world family ('random').
FAMILIES = ("ginc-small", "paper-c")
#: Fewer worlds (or training seeds) than this: no interval worth a verdict.
MIN_UNITS = 3
OVERALL_RULE = ("overall: the preset families' common word when they all agree, else 'mixed'; each family's "
                "word stands on its own (one family never decides for another)")
CI_NOTE = ("95% intervals: a t-interval over worlds (C1-C4, C7) or over worlds of trained models (C5) or training "
           "seeds (C6) of the per-unit values (metrics.world_ci) unless a rule says otherwise; fewer than 3 units "
           "make a verdict inconclusive")
NAN = float("nan")


# ---------------------------------------------------------------------- the claim and its result
@dataclass
class Result:
    """One claim's verdict and everything behind it (``as_dict`` is what report.json holds).

    families  {family: {'verdict', 'text', 'short'}}: the evidence word per preset family, its
              sentence, and a short cell for the headline table ('' when the word says it all)
    checks    [{'name', 'verdict': 'passed' | 'failed', 'text'}]: identity checks, not evidence
    outside   [{'setting', 'why', 'text'}]: settings outside the claim's assumptions, with numbers
    numbers   {name: (estimate, ci_low, ci_high)}, NaN where there is no interval
    parts     [{'name', 'verdict', 'text'}]: per family and estimator, per setting, ...
    plot      the data the claim's figure is drawn from
    extra     claim-specific keys merged into the dict (C4: ``crossover``)"""

    claim: str
    title: str
    kind: str
    source: str
    scope: list
    verdict: str
    families: dict
    rule: str
    text: str
    reference: str = ""
    checks: list = field(default_factory=list)
    outside: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)
    plot: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in OVERALL:
            raise ValueError(f"verdict must be one of {', '.join(OVERALL)}, got {self.verdict!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for fam, f in self.families.items():
            if f.get("verdict") not in VERDICTS:
                raise ValueError(f"family {fam!r} has verdict {f.get('verdict')!r}; allowed: {', '.join(VERDICTS)}")
        for c in self.checks:
            if c.get("verdict") not in CHECKS:
                raise ValueError(f"check {c.get('name')!r} has verdict {c.get('verdict')!r}; allowed: passed, failed")
        self.numbers = {k: tuple(as_float(x) for x in v) for k, v in self.numbers.items()}

    @property
    def figure(self) -> str:
        """The PNG file name beside the page ('c1.png', 'c7-order.png')."""
        return f"{self.claim.lower()}.png"

    def as_dict(self) -> dict:
        d = {"claim": self.claim, "title": self.title, "kind": self.kind, "source": self.source,
             "scope": list(self.scope), "verdict": self.verdict, "families": self.families, "checks": self.checks,
             "outside": self.outside, "rule": self.rule, "overall_rule": OVERALL_RULE, "text": self.text,
             "reference": self.reference, "numbers": self.numbers, "parts": self.parts, "figure": self.figure,
             "plot": self.plot}
        d.update(self.extra)
        return d


@dataclass(frozen=True)
class Claim:
    """A claim of the theory as code: its statement (``title``), ``kind`` (:data:`KINDS`),
    ``source`` (a quote from THEORY.md with its section, or 'derived reading' / 'project
    extension'), ``scope`` (the assumptions it is made under), ``rule`` (how the verdict is
    decided, in words), ``reads`` (the sweep tables it needs: 'regime', 'regime.worlds',
    'converge.floors', ...), ``judge(tables, info) -> Result`` (tables: {key: DataFrame};
    info: {key: what the report read from the job folders}) and ``draw(result, fig)`` (its
    figure from ``result.plot``, onto a matplotlib Figure)."""

    id: str
    title: str
    kind: str
    source: str
    scope: tuple
    rule: str
    reads: tuple
    judge: Callable
    draw: Callable
    families: tuple = FAMILIES

    @property
    def sweeps(self) -> tuple:
        """The battery's sweeps this claim reads ('regime', 'converge', ...), in order."""
        return tuple(dict.fromkeys(r.split(".")[0] for r in self.reads))

    def result(self, verdict: str, families: dict, text: str, **kw) -> Result:
        """A :class:`Result` carrying this claim's metadata."""
        return Result(self.id, self.title, self.kind, self.source, list(self.scope), verdict, families,
                      kw.pop("rule", self.rule), text, **kw)

    def not_run(self, why: str) -> Result:
        """The result of a claim whose experiment did not run (or ran into an error): every
        family inconclusive, saying why."""
        fams = {f: {"verdict": INCONCLUSIVE, "text": why, "short": "no data"} for f in self.families}
        return self.result(INCONCLUSIVE, fams, f"no data: {why}")


# ---------------------------------------------------------------------- families and the overall word
def overall(families: dict) -> str:
    """The overall word (:data:`OVERALL_RULE`): the families' common word when they agree,
    else 'mixed'; 'inconclusive' without families."""
    words = {f["verdict"] for f in families.values()}
    if not words:
        return INCONCLUSIVE
    return words.pop() if len(words) == 1 else MIXED


def worst(words) -> str:
    """One word for several judgements of one family (e.g. two estimators): refuted when any
    is, then inconclusive, then not reached, supported only when all are."""
    words = list(words)
    for w in (REFUTED, INCONCLUSIVE, NOT_REACHED, OUT_OF_SCOPE, MEASURED):
        if w in words:
            return w
    return SUPPORTED if words else INCONCLUSIVE


# ---------------------------------------------------------------------- numbers and text
def as_float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return NAN


def fmt(x, digits: int = 3) -> str:
    v = as_float(x)
    return f"{v:.{digits}g}" if math.isfinite(v) else ("inf" if v == math.inf else "n/a")


def fmt_n(x) -> str:
    """A number of demonstrations, two significant digits with thousands separators ('1,400')."""
    v = as_float(x)
    if not math.isfinite(v):
        return "inf" if v == math.inf else "n/a"
    return f"{float(f'{v:.2g}'):,.0f}" if v >= 100 else f"{v:.2g}"


def ci_text(t) -> str:
    """'est [lo, hi]' (or 'est' without an interval)."""
    est, lo, hi = (as_float(v) for v in tuple(t)[:3])
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{fmt(est)} [{fmt(lo)}, {fmt(hi)}]"
    return fmt(est)


def few(n: int, what: str = "worlds") -> str:
    return f"only {n} {what if n != 1 else what[:-1]} (need >= {MIN_UNITS} for an interval)"


def decide(lo: float, hi: float, supported, refuted) -> str:
    """'supported' when supported(lo, hi), 'refuted' when refuted(lo, hi), else 'inconclusive'
    (also when the interval is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if supported(lo, hi):
        return SUPPORTED
    if refuted(lo, hi):
        return REFUTED
    return INCONCLUSIVE


# ---------------------------------------------------------------------- tables
def done(df):
    """The rows of finished jobs (a combined sweep table has a status column)."""
    if df is None:
        return None
    if "status" in df.columns:
        df = df[df["status"] == "done"]
    return df


def failed_note(df) -> str:
    """'k jobs did not finish (e.g. <error>)', or '' when every job finished."""
    if df is None or "status" not in df.columns:
        return ""
    bad = df[df["status"] != "done"]
    if bad.empty:
        return ""
    jobs = bad["job"].nunique() if "job" in bad.columns else len(bad)
    err = next((e for e in bad["error"] if isinstance(e, str) and e), "") if "error" in bad.columns else ""
    return f"{jobs} job{'s' if jobs != 1 else ''} did not finish" + (f" (e.g. {err[:160]})" if err else "")


def families_of(df, column: str = "preset", default: str = FAMILIES[0]) -> list:
    """The preset families in a table, in order of first appearance ([default] when the table
    has no such column)."""
    if df is None or df.empty:
        return []
    if column not in df.columns:
        return [default]
    return list(dict.fromkeys(df[column].dropna()))


def of_family(df, fam, column: str = "preset"):
    return df if column not in df.columns else df[df[column] == fam]


def flags(series) -> np.ndarray:
    """A boolean column as a numpy bool array (a column with nulls arrives as object dtype; a
    null is False)."""
    return np.array([bool(v) if v is not None and v == v else False for v in series], dtype=bool)


# ---------------------------------------------------------------------- figures
def frequency_lines(ax, n, measured, predicted, label: str = "label frequencies", what: str = "predicted") -> None:
    """The label frequencies' measured line (grey, solid, hollow squares) and their prediction
    (darker, dotted, on top): the two often coincide, and must still read as two lines."""
    col, _ls, marker = PREDICTOR_STYLE["frequency"]
    pcol, pls = FREQUENCY_PREDICTED
    ax.plot(n, measured, "-", marker=marker, ms=3, mfc="white", color=col, lw=1.6, label=f"{label}: measured")
    ax.plot(n, predicted, pls, color=pcol, lw=1.3, zorder=5, label=f"{label}: {what}")


def family_axes(result, fig, height: float = 3.4) -> list:
    """[(family, its plot data, left axis, right axis)] for a figure of two panels per preset
    family (C1, C4): one row per family of ``result.plot['families']``, the figure sized to them.
    No family is a ValueError (the report then draws a placeholder saying why)."""
    fams = list(result.plot.get("families", {}).items())
    if not fams:
        raise ValueError("no data for a figure")
    fig.set_size_inches(9.5, height * len(fams))
    axes = fig.subplots(len(fams), 2, squeeze=False)
    return [(fam, d, ax, ax2) for (fam, d), (ax, ax2) in zip(fams, axes)]
