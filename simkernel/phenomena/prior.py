"""prior: the test concept's pretraining prior swept from uniform down to 0; each predictor's
distance to the oracle at large n, and the kernel's exact floor beside η²ε_θ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernel import KernelSet
from ..sampling import sample_prompts
from ..validate import check_floats, check_ints
from .common import (Ctx, Named, headroom, label_index, paired, predict, round_sig, row_value, same_world, scores,
                     undefined)
from .registry import CommonParams, FigureSpec, Line, Measurement, Panel, Phenomenon


@dataclass(frozen=True)
class Params(CommonParams):
    """n_demos: the n at which to score (a prefix of the longest); priors: the swept values (None:
    :func:`default_priors` of each concept); concepts: the test concepts (None: every concept
    with prior > 0)."""

    n_demos: tuple = (1, 4, 16, 64, 256)
    priors: tuple | None = None
    concepts: tuple | None = None
    QUICK = {"n_demos": (1, 8)}

    def check(self) -> dict:
        return {"n_demos": tuple(check_ints("n_demos", self.n_demos, 1)),
                "priors": None if self.priors is None else tuple(check_floats("priors", self.priors, 0.0, 1.0)),
                "concepts": None if self.concepts is None else tuple(check_ints("concepts", self.concepts, 0))}


@dataclass(frozen=True)
class Setting:
    """The rank-th prior of the sweep, named by its value when every (world, concept) sweeps the
    same values (``value`` not None), else by its rank."""

    rank: int
    prior: float | None = None

    @property
    def label(self) -> str:
        return f"prior:{self.prior:.6g}" if self.prior is not None else f"prior:rank{self.rank}"

    @property
    def group(self) -> str:
        return "prior"

    @property
    def value(self):
        return self.prior

    @classmethod
    def from_label(cls, label: str):
        head, _, tail = label.partition(":")
        if head == "prior" and tail.startswith("rank") and tail[4:].isdigit():
            return cls(int(tail[4:]))
        try:
            return cls(-1, float(tail)) if head == "prior" else Named(label)
        except ValueError:
            return Named(label)


@dataclass(frozen=True)
class Info:
    """The sweep of each (world, concept), how settings are named, the values at each rank and
    the kernel's exact floors (``convergence.concept_floors`` rows with prior_rank, prior_value)."""

    priors: dict
    by_value: bool
    rank_values: dict
    floors: list

    def setting(self, rank: int) -> Setting:
        return Setting(rank, self.rank_values[rank][0] if self.by_value else None)

    def rank_text(self, rank) -> str:
        return "/".join(f"{v:.2g}" for v in self.rank_values.get(rank, []))

    def json(self) -> dict:
        return {"priors": self.priors, "setting_names": "value" if self.by_value else "rank",
                "rank_values": self.rank_values, "floors": self.floors}


def prior_world(world, concept: int, value: float):
    """The world with concept ``concept``'s pretraining prior set to ``value`` and the other
    concepts sharing 1 - value in proportion to their prior (uniformly when they have none)."""
    rest = np.array(world.prior, dtype=np.float64)
    rest[concept] = 0.0
    if rest.sum() <= 0:
        rest = np.ones_like(rest)
        rest[concept] = 0.0
    if rest.sum() <= 0:
        if value != 1.0:
            raise ValueError("priors must be [1.0] in a world of one concept")
        return world
    prior = rest / rest.sum() * (1.0 - value)
    prior[concept] = value
    return world.with_prior(prior / prior.sum())


def default_priors(world, concept: int) -> list[float]:
    """u · (1, 0.1, 0.01, 1e-3, 1e-4, 1e-6, 0) with u = 1 / (number of concepts with prior > 0,
    counting ``concept``): the uniform prior down to out-of-distribution."""
    u = 1.0 / max(1, int(((world.prior > 0) | (np.arange(world.n_concepts) == concept)).sum()))
    return [u * s for s in (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-6)] + [0.0]


def jobs_of(ctxs, p: Params) -> list:
    """[(ctx, concept, priors)] of every world's test concepts; a concept out of range is a ValueError."""
    jobs = []
    for ctx in ctxs:
        base = ctx.world
        concepts = p.concepts if p.concepts is not None else [int(c) for c in np.flatnonzero(base.prior > 0)]
        bad = [c for c in concepts if c >= base.n_concepts]
        if bad:
            raise ValueError(f"concepts must be concept indices in 0..{base.n_concepts - 1}, got {bad[0]}")
        for c in concepts:
            jobs.append((ctx, c, list(p.priors) if p.priors is not None else default_priors(base, c)))
    return jobs


def measure(ctxs, p: Params, seed: int, tick, table) -> Info:
    from ..convergence import concept_floors

    ns, B, k = list(p.n_demos), p.n_prompts, p.example_length
    jobs = jobs_of(ctxs, p)
    # the setting names the prior when every (world, concept) sweeps the same values, else its rank
    # (so that the rows and the paired verdicts line up across worlds and concepts)
    info = Info({f"{ctx.wid}/{c}": pri for ctx, c, pri in jobs}, all(pri == jobs[0][2] for _c, _k, pri in jobs),
                {r: sorted({round(pri[r], 15) for _c, _k, pri in jobs if r < len(pri)})
                 for r in range(max(len(pri) for _c, _k, pri in jobs))}, [])
    total, done = sum(len(pri) for _c, _k, pri in jobs), 0
    for ctx, c, priors in jobs:
        for rank, value in enumerate(priors):
            tick(f"world {ctx.wid}, concept {c}, prior {value:.3g}", done, total)
            done += 1
            w = prior_world(ctx.world, c, value)
            sub = Ctx(w, ctx.wid, KernelSet(w, k, seed=seed),
                      ctx.model if ctx.model is not None and same_world(w, ctx.model_world) else None, ctx.device)
            prompts = sample_prompts(w, B, ns[-1], k, seed, concept=c)
            y = label_index(w.labels, prompts.y_test)
            pr = predict(sub, prompts, ns=ns)
            setting = info.setting(rank)
            for name, a in pr.items():
                sc = scores(a, pr["oracle"], y)
                for j, n in enumerate(ns):
                    table.add(setting, n, name, "undefined", ctx.wid, undefined(a[:, j]))
                    for metric, v in sc.items():
                        table.add(setting, n, name, metric, ctx.wid, v[:, j])
            for fl in concept_floors(sub.ks, [c], kernels=("theory",), estimators=("normalised", "clipped"),
                                     world_label=ctx.wid):
                name = "kernel" if fl["estimator"] == "normalised" else "clipped"
                for metric in ("floor_tv", "eta2_eps", "eta2_eps_span"):
                    table.add(setting, math.inf, name, metric, ctx.wid, [fl[metric]])
                info.floors.append(dict(fl, prior_rank=rank, prior_value=value))
    return info


def floor_spearman(info: Info) -> tuple[float, int]:
    """Spearman's ρ of the kernel's exact floor against η²ε_θ (span) over the (world, concept,
    prior) triples, and how many there are (NaN with < 4 or a constant side)."""
    fl = [f for f in info.floors if f["estimator"] == "normalised"]
    x = np.array([f["eta2_eps_span"] for f in fl], float)
    y = np.array([f["floor_tv"] for f in fl], float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() >= 4 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
        from scipy.stats import spearmanr
        return float(spearmanr(x[ok], y[ok])[0]), int(ok.sum())
    return float("nan"), int(ok.sum())


def verdict(m: Measurement) -> dict:
    table, p, info = m.table, m.params, m.info
    n = p.n_demos[-1]
    ranks = sorted(info.rank_values)
    first = info.setting(ranks[0])
    out, per = {"n_demos": n, "prior_values": info.rank_values}, {}
    for pred in ("bayes", "kernel", "frequency", "model"):
        vals = [row_value(table, info.setting(r), n, pred, "tv_oracle") for r in ranks]
        if not any(math.isfinite(v["mean"]) for v in vals):
            continue
        # ICL overcomes the preference down to the smallest prior whose distance to the oracle is not
        # above the uniform prior's (the paired difference's CI does not lie above 0)
        overcome = []
        for r in ranks[1:]:
            d = paired(table, (info.setting(r), n, pred, "tv_oracle"), (first, n, pred, "tv_oracle"))
            overcome.append({"rank": r, "worse_than_uniform": bool(d["excludes_0"] and d["mean"] > 0), **d})
        per[pred] = {"tv_oracle": vals, "vs_uniform": overcome}
    out["predictors"] = per
    rho, pairs = floor_spearman(info)
    out["floor_vs_eta2_eps_span_spearman"] = round_sig(rho)
    out["n_floor_pairs"] = pairs
    bits = []
    for pred, d in per.items():
        first_bad = min((o["rank"] for o in d["vs_uniform"] if o["worse_than_uniform"]), default=None)
        vals = d["tv_oracle"]
        bits.append(f"{pred} TV {vals[0]['mean']:.3f} at the uniform prior → {vals[-1]['mean']:.3f} at the smallest"
                    + (f", detectably worse than at the uniform prior from prior {info.rank_text(first_bad)} down"
                       if first_bad is not None else ", at no prior detectably worse than at the uniform prior"))
        d["first_worse_prior"] = None if first_bad is None else info.rank_values.get(first_bad)
    fk = [row_value(table, info.setting(r), math.inf, "kernel", "floor_tv")["mean"] for r in ranks]
    text = (f"distance to the oracle at n = {n}: " + "; ".join(bits)
            + f"; the kernel's exact floor goes {fk[0]:.3f} → {fk[-1]:.3f} and its Spearman correlation with "
              f"η²ε_θ (span) over {out['n_floor_pairs']} (world, concept, prior) triples is {rho:.2f}")
    rule = ("a predictor fails to overcome the pretraining preference at a prior when the 95% CI over worlds of its "
            "per-prompt TV to the oracle at the largest n minus the same at the uniform prior lies above 0")
    return {"text": text, "rule": rule, **out, "headroom": headroom(table, first, n)}


FIGURE = FigureSpec(
    panels=(Panel((Line("tv_oracle"),), "TV to the oracle at n = {n}"),
            Panel((Line("floor_tv", at="inf", suffix=": exact floor (n = ∞)"),
                   Line("eta2_eps_span", at="inf", style=":", suffix=": η²ε_θ (span), right axis",
                        predictors=("kernel",), right=True)),
                  "exact floor: TV(limit, oracle)", right_label="η²ε_θ (span)", right_scale="log")),
    xlabel="pretraining prior of the test concept (0: out of distribution)", xscale="symlog", by_group=False,
    title="", size=(5.75, 0.0, 4.2), legend="axes")

PHENOMENON = Phenomenon("prior", Params, measure, verdict, Setting, FIGURE,
                        headline=(("tv_oracle", "max"), ("floor_tv", math.inf)))
