"""retrieval: n demonstrations chosen out of a pool of M from the test concept, by the theory
kernel, the prediction similarity or token overlap with x_test at a bandwidth τ (softmax
sampling of standardised scores at temperature τ), or at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernel
from ..sampling import sample_prompts
from ..validate import check_choices, check_floats, check_int
from .common import add_scores, demo_blocks, headroom, label_index, paired, predict, row_value, with_demos
from .registry import DEFAULT_FIGURE, CommonParams, FigureSpec, Measurement, Phenomenon

SELECTORS = ("kernel", "similarity", "overlap")


@dataclass(frozen=True)
class Params(CommonParams):
    """n_demos: n shown; pool_size: M to choose from (>= n); bandwidths: the softmax temperatures
    τ (inf = random); selectors: the similarity scores to choose by."""

    n_demos: int = 8
    pool_size: int = 64
    bandwidths: tuple = (0.1, 0.3, 1.0, 3.0)
    selectors: tuple = SELECTORS
    QUICK = {"n_demos": 4, "pool_size": 16, "bandwidths": (0.1, 1.0)}

    def check(self) -> dict:
        n, pool = check_int("n_demos", self.n_demos, 1), check_int("pool_size", self.pool_size, 1)
        if pool < n:
            raise ValueError(f"pool_size must be >= n_demos ({n}): M demonstrations to choose n from, got {pool}")
        return {"n_demos": n, "pool_size": pool,
                "bandwidths": tuple(check_floats("bandwidths", self.bandwidths, 0.0, lo_open=True, allow_inf=True)),
                "selectors": tuple(check_choices("selectors", self.selectors, SELECTORS))}


@dataclass(frozen=True)
class Setting:
    """Demonstrations chosen by ``selector`` at ``bandwidth``; selector 'random' (bandwidth inf)
    is the reference every selection is compared with."""

    selector: str
    bandwidth: float = math.inf

    @property
    def label(self) -> str:
        return "random" if self.selector == "random" else f"{self.selector}:{self.bandwidth:g}"

    @property
    def group(self) -> str:
        return self.selector

    @property
    def value(self):
        return None if self.selector == "random" else self.bandwidth

    @classmethod
    def from_label(cls, label: str):
        sel, _, bw = label.partition(":")
        try:
            return cls(sel, float(bw)) if bw else cls(sel)
        except ValueError:
            return cls(label)


RANDOM = Setting("random")


@dataclass(frozen=True)
class Info:
    def json(self) -> dict:
        return {"mean_kernel_shown": {}}


def selector_scores(ctx, pool, selector: str) -> np.ndarray:
    """(B, M) how close each pool demonstration x_j is to x_test: ``kernel`` K(x_test, x_j) (the
    theory kernel), ``similarity`` P(o | x_test)ᵀ P(o | x_j) (the paper's prediction similarity,
    each input scored alone under the pretraining mixture), ``overlap`` the number of positions
    where x_j and x_test hold the same symbol.  ``pool``: prompts of M demonstrations."""
    if selector == "overlap":
        blocks = demo_blocks(pool)[:, :, :pool.example_length - 1]
        return (blocks == pool.x_test()[:, None, :]).sum(-1).astype(np.float64)
    kname = {"kernel": "theory", "similarity": "similarity"}[selector]
    kv, _ = kernel.kernel_values(ctx.world, pool, (kname,), kernel_set=ctx.ks)
    return kv[kname]


def select_demos(score: np.ndarray, n: int, bandwidth: float, gumbel: np.ndarray) -> np.ndarray:
    """(B, n) indices into the pool, ascending (the chosen demonstrations keep their pool order, so
    that a selection differs from another only in which demonstrations it shows).

    score (B, M); the scores are standardised per prompt (mean 0, sd 1; a constant row is all 0)
    and n are drawn without replacement with probabilities ∝ exp(z / bandwidth) (Gumbel-top-n with
    the given noise ``gumbel`` (B, M)): bandwidth -> 0 is the n nearest, inf is uniformly random."""
    sd = score.std(axis=1, keepdims=True)
    z = np.where(sd > 0, (score - score.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)
    keys = gumbel if bandwidth == math.inf else z / bandwidth + gumbel
    top = np.argsort(-keys, axis=1, kind="stable")[:, :n]
    return np.sort(top, axis=1)


def measure(ctxs, p: Params, seed: int, tick, table) -> Info:
    B, n, M, k = p.n_prompts, p.n_demos, p.pool_size, p.example_length
    for ci, ctx in enumerate(ctxs):
        tick(f"world {ctx.wid}", ci, len(ctxs))
        w = ctx.world
        pool = sample_prompts(w, B, M, k, seed)
        y = label_index(w.labels, pool.y_test)
        rng = np.random.default_rng([seed, ctx.wid, 29])
        gumbel = rng.gumbel(size=(B, M))          # common random numbers: every selection shares them
        blocks = demo_blocks(pool)
        K_theory = selector_scores(ctx, pool, "kernel")
        choices = [(RANDOM, select_demos(np.zeros((B, M)), n, math.inf, gumbel))]
        for sel in p.selectors:
            sc = K_theory if sel == "kernel" else selector_scores(ctx, pool, sel)
            choices += [(Setting(sel, bw), select_demos(sc, n, bw, gumbel)) for bw in p.bandwidths]
        for setting, idx in choices:
            shown = with_demos(pool, np.take_along_axis(blocks, idx[:, :, None], axis=1),
                               np.take_along_axis(pool.labels, idx, axis=1))
            add_scores(table, setting, n, ctx.wid, predict(ctx, shown), y)
            # how near the shown demonstrations are, in the theory kernel (the bandwidth's effect)
            table.add(setting, n, "kernel", "mean_kernel_shown", ctx.wid,
                      np.take_along_axis(K_theory, idx, axis=1).mean(1))
    return Info()


def verdict(m: Measurement) -> dict:
    table, p = m.table, m.params
    n, bw = p.n_demos, min(p.bandwidths)
    out, bits = {"n_demos": n, "bandwidth": bw, "pool_size": p.pool_size}, []
    for sel in p.selectors:
        s = Setting(sel, bw)
        res = {}
        for pred in ("bayes", "kernel", "frequency", "model"):
            d = paired(table, (s, n, pred, "tv_oracle"), (RANDOM, n, pred, "tv_oracle"))
            if d["n_prompts"] == 0:
                continue
            a = paired(table, (s, n, pred, "acc"), (RANDOM, n, pred, "acc"))
            res[pred] = {"tv_oracle_minus_random": d, "acc_minus_random": a,
                         "helps": bool(d["excludes_0"] and d["mean"] < 0),
                         "hurts": bool(d["excludes_0"] and d["mean"] > 0)}
        out[sel] = res
        bits.append(f"{sel}: " + ", ".join(
            f"{pred} ΔTV {r['tv_oracle_minus_random']['mean']:+.3f} "
            f"({'helps' if r['helps'] else 'hurts' if r['hurts'] else 'no detectable effect'})" for pred, r in res.items()))
    # does the kernel's distance to the oracle shrink as the kernel retrieval's bandwidth shrinks?
    bws = sorted(p.bandwidths)
    curve = [row_value(table, Setting("kernel", b), n, "kernel", "tv_oracle") for b in bws]
    out["kernel_tv_by_bandwidth"] = dict(zip(map(str, bws), curve))
    out["kernel_tv_random"] = row_value(table, RANDOM, n, "kernel", "tv_oracle")
    shrinks = None
    if "kernel" in p.selectors and len(bws) >= 2:
        d = paired(table, (Setting("kernel", bws[0]), n, "kernel", "tv_oracle"),
                   (Setting("kernel", bws[-1]), n, "kernel", "tv_oracle"))
        out["kernel_smallest_minus_largest_bandwidth"] = d
        shrinks = bool(d["excludes_0"] and d["mean"] < 0)
    out["kernel_bias_shrinks_with_bandwidth"] = shrinks
    text = (f"{n} of {p.pool_size} demonstrations chosen at bandwidth τ = {bw:g} vs at random, change in TV to "
            f"the oracle: " + "; ".join(bits))
    if shrinks is not None:
        text += ("; with kernel retrieval the kernel's TV to the oracle goes "
                 + " → ".join(f"{c['mean']:.3f}" for c in curve[::-1]) + f" as τ falls {bws[-1]:g} → {bws[0]:g} "
                 f"({'shrinks: CI excludes 0' if shrinks else 'no detectable shrinking'}; random {out['kernel_tv_random']['mean']:.3f})")
    rule = ("retrieval helps (hurts) a predictor when the 95% CI over worlds of the per-prompt difference in TV to the "
            "oracle, retrieved at the smallest bandwidth minus random (same pools, same noise), lies below (above) 0; "
            "the kernel's bias shrinks when its TV at the smallest minus the largest bandwidth lies below 0")
    return {"text": text, "rule": rule, **out, "headroom": headroom(table, RANDOM, n)}


FIGURE = FigureSpec(panels=DEFAULT_FIGURE.panels, xlabel="bandwidth τ (dotted: random demonstrations)", xscale="log",
                    references=True)

PHENOMENON = Phenomenon("retrieval", Params, measure, verdict, Setting, FIGURE)
