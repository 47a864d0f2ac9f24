"""C5: a transformer trained near the Bayes loss predicts like the kernel rather than like exact Bayes.

Evidence: the ``strategies`` map (``simkernel strategies``): transformers trained in worlds of K
pretraining concepts (task diversity), at two model sizes, over worlds x training seeds, each
checkpoint scored against exact Bayes, the theory kernel, label frequencies, an in-context bigram
rule and the uniform vote on prompts from the pretraining concepts ('seen') and new ones
('unseen').  The claim is judged only where the map says it could hold: seen concepts (the
kernel's Σ is the pretraining one), the last checkpoint, runs near the Bayes loss.  Every other
region of the map is reported beside it, with its numbers, not counted.
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import NEAR_BAYES_GAP
from ..metrics import unit_ci
from ..plots.style import CI_ALPHA, FAMILY_COLOURS, PREDICTOR_STYLE, REFERENCE_COLOUR
from .base import (INCONCLUSIVE, MIN_UNITS, NAN, REFUTED, SUPPORTED, Claim, ci_text, done, failed_note, few, fmt,
                   worst)

ID = "C5"
TITLE = "A transformer trained to near the Bayes loss predicts like the kernel estimate rather than like exact Bayes"
KIND = "finite-n"
SOURCE = ("the paper's central empirical claim: a trained transformer's attention carries out the kernel regression "
          "(THEORY.md §7, §10; the paper's Table 2, GPT-J)")
SCOPE = ("prompts from the pretraining concepts, within the trained context", "the last checkpoint of each run",
         f"runs near the Bayes loss (gap <= {NEAR_BAYES_GAP:g} nats/token)",
         f">= {MIN_UNITS} worlds per region of the map (K, model size)")
FAMILY = "random"
RULE = (f"Per region of the strategies map (K pretraining concepts x model size), at the last checkpoint and the "
        f"largest n inside the trained block, on prompts from the pretraining concepts: d = TV(model, kernel) - "
        f"TV(model, exact Bayes) per run, and the kernel's weight in the best convex mixture of the predictors "
        f"(fitted on a selection split, scored on held-out prompts); 95% t-intervals over worlds (the unit; training "
        f"seeds averaged within a world).  A region is judged only when every run ends within {NEAR_BAYES_GAP:g} "
        f"nats/token of the Bayes floor and it has >= {MIN_UNITS} worlds; the rest (too far from the Bayes loss, "
        f"unseen concepts, earlier checkpoints) is reported, not counted.  Supported in a region when d's interval "
        f"lies below 0 and the kernel weight's above 0; refuted when d's interval lies above 0 (nearer exact Bayes); "
        f"inconclusive otherwise.  The claim's word is the worst of its judged regions (refuted when any is); "
        f"inconclusive when no region is judged.")
_METRICS = (("bayes", "tv"), ("kernel", "tv"), ("frequency", "tv"), ("ngram", "tv"), ("uniform", "tv"),
            ("kernel", "weight"), ("bayes", "weight"), ("model", "gap"))


def per_run(frame, concepts: str = "seen"):
    """{(k, size): DataFrame per run (world_seed, train_seed) at its last step and the largest n,
    one column per ``predictor:metric`` of :data:`_METRICS` plus 'd' (TV to the kernel minus TV to
    exact Bayes)} for one concept split of the map's rows (``strategies.MAP_COLUMNS`` +
    ``EVAL_COLUMNS``)."""
    r = frame[frame["concepts"] == concepts]
    if r.empty:
        return {}
    last = r.groupby(["k", "size", "world_seed", "train_seed"])["step"].transform("max")
    r = r[(r["step"] == last) & (r["n_demos"] == r["n_demos"].max())]
    r = r.assign(name=r["predictor"] + ":" + r["metric"])
    piv = r.pivot_table(index=["k", "size", "world_seed", "train_seed"], columns="name", values="mean",
                        aggfunc="mean").reset_index()
    if {"kernel:tv", "bayes:tv"} <= set(piv.columns):
        piv["d"] = piv["kernel:tv"] - piv["bayes:tv"]
    return {key: g for key, g in piv.groupby(["k", "size"], sort=True)}


def _ci(g, col, lower=None):
    if col not in g.columns:
        return (NAN, NAN, NAN, 0)
    return unit_ci(g[col].to_numpy(float), g["world_seed"].to_numpy(), lower=lower)


def _region(key, g) -> dict:
    """One region's numbers, scope and word."""
    k, size = key
    d, wk, wb = _ci(g, "d"), _ci(g, "kernel:weight"), _ci(g, "bayes:weight")
    gaps = g["model:gap"].to_numpy(float) if "model:gap" in g.columns else np.array([np.nan])
    tvs = {p: _ci(g, f"{p}:tv", lower=0.0) for p in ("bayes", "kernel", "frequency", "ngram", "uniform")}
    near = bool(np.isfinite(gaps).all() and gaps.max() <= NEAR_BAYES_GAP)
    W = d[3]
    closest = min((p for p in tvs if math.isfinite(tvs[p][0])), key=lambda p: tvs[p][0], default="-")
    seeds = sorted({int(s) for s in g["train_seed"]})
    name = f"K = {k}, size {size}"
    ko, bo = _ci(g, "kernel:tv_oracle", lower=0.0), _ci(g, "bayes:tv_oracle", lower=0.0)
    text = (f"{name}, {W} worlds x {len(seeds)} training seeds: TV(model, exact Bayes) {ci_text(tvs['bayes'])}, "
            f"TV(model, kernel) {ci_text(tvs['kernel'])}, d {ci_text(d)}; mixture weight: kernel {ci_text(wk)}, "
            f"exact Bayes {ci_text(wb)}; nearest: {closest}; the kernel's own TV to the oracle {fmt(ko[0], 2)} "
            f"(exact Bayes' {fmt(bo[0], 2)}); gap to the Bayes floor {fmt(np.nanmax(gaps), 2)} nats/token at most")
    if not near:
        return {"name": name, "judged": False, "why": f"runs end up to {fmt(np.nanmax(gaps), 2)} nats/token above the "
                f"Bayes floor (> {NEAR_BAYES_GAP:g}): not the claim's model", "text": text, "d": d, "wk": wk}
    if W < MIN_UNITS:
        return {"name": name, "judged": True, "verdict": INCONCLUSIVE, "why": few(W), "text": text, "d": d, "wk": wk}
    if d[1] > 0:
        v, why = REFUTED, "nearer exact Bayes than the kernel"
    elif d[2] < 0 and wk[1] > 0:
        v, why = SUPPORTED, "nearer the kernel, which carries weight in the mixture"
    else:
        v, why = INCONCLUSIVE, "an interval includes 0"
    return {"name": name, "judged": True, "verdict": v, "why": why, "text": text, "d": d, "wk": wk}


def verdict(rows, sizes: dict | None = None):
    """C5 from the strategies sweep's combined table (one job per run: the grid columns
    train.overrides, train.world_seed, train.seed, train.model, train.model_overrides, then
    strategies.csv's columns); ``sizes``: the map's [sizes] (names for the model columns)."""
    from ..strategies import cells

    rows_all, rows = rows, done(rows)
    if rows is None or rows.empty:
        note = failed_note(rows_all)
        return CLAIM.result(INCONCLUSIVE, {FAMILY: {"verdict": INCONCLUSIVE, "text": "no strategies rows",
                                                    "short": "no data"}},
                            "no strategies rows" + (f"; {note}" if note else ""), plot={"regions": []})
    frame, _missing = cells(rows, sizes)
    seen_runs, unseen_runs = per_run(frame, "seen"), per_run(frame, "unseen")
    seen = [_region(key, g) for key, g in seen_runs.items()]
    unseen = [_region(key, g) for key, g in unseen_runs.items()]
    judged = [r for r in seen if r["judged"]]
    parts = [{"name": r["name"], "verdict": r["verdict"], "text": f"{r['text']} ({r['why']})"} for r in judged]
    outside = [{"setting": r["name"], "why": r["why"], "text": r["text"]} for r in seen if not r["judged"]]
    outside += [{"setting": f"{r['name']}, unseen concepts", "text": r["text"],
                 "why": "prompts from concepts outside pretraining: the kernel's Σ and exact Bayes are both over the "
                        "pretraining concepts, and the theory says nothing of new ones"} for r in unseen]
    n = int(frame["n_demos"].max()) if not frame.empty else 0
    if not judged:
        v, txt = INCONCLUSIVE, (f"no region of the map is in the claim's scope (every region's runs end more than "
                                f"{NEAR_BAYES_GAP:g} nats/token above the Bayes floor); the regions are listed outside")
    else:
        v = worst(r["verdict"] for r in judged)
        by = {w: [r["name"] for r in judged if r["verdict"] == w] for w in (SUPPORTED, REFUTED, INCONCLUSIVE)}
        txt = (f"n = {n}, the last checkpoint, seen concepts; {len(judged)} of {len(seen)} regions near the Bayes "
               f"loss: " + "; ".join(f"{w} in " + " and ".join(f"({x})" for x in names)
                                     for w, names in by.items() if names) + ". "
               + " | ".join(f"{r['text']} ({r['why']})" for r in judged))
    note = failed_note(rows_all)
    numbers = {f"{r['name']}: TV(model, kernel) - TV(model, exact Bayes)": r["d"][:3] for r in seen}
    numbers.update({f"{r['name']}: the kernel's mixture weight": r["wk"][:3] for r in seen})
    short = (f"{len(judged)} of {len(seen)} regions judged; " +
             "; ".join(f"({r['name']}) d {fmt(r['d'][0], 2)}" for r in judged)) if judged else "no region in scope"
    families = {FAMILY: {"verdict": v, "text": txt, "short": short}}
    reference = ("exact Bayes, label frequencies, the in-context bigram rule and the uniform vote beside the kernel in "
                 "every region (their TVs are in the strategies map: figures/strategies)")
    plot = {"regions": [{"name": r["name"], "k": key[0], "size": key[1], "judged": r["judged"], "d": list(r["d"][:3]),
                         "wk": list(r["wk"][:3])} for key, r in zip(seen_runs, seen)],
            "unseen": [{"k": key[0], "size": key[1], "d": list(r["d"][:3])}
                       for key, r in zip(unseen_runs, unseen)], "n": n}
    return CLAIM.result(v, families, txt + (f"; {note}" if note else ""), reference=reference, numbers=numbers,
                        parts=parts, outside=outside, plot=plot)


def judge(tables: dict, info: dict):
    return verdict(tables["strategies"], sizes=info.get("strategies.sizes"))


def draw(result, fig) -> None:
    """Per model size against K: d = TV(model, kernel) - TV(model, exact Bayes) (left; filled:
    judged regions, open: outside the scope, dashed grey: unseen concepts) and the kernel's mixture
    weight (right); 95% CIs over worlds."""
    plot = result.plot
    if not plot.get("regions"):
        raise ValueError("no data for a figure")
    ax, ax2 = fig.subplots(1, 2)
    sizes = list(dict.fromkeys(r["size"] for r in plot["regions"]))
    for i, size in enumerate(sizes):
        col = FAMILY_COLOURS[i % len(FAMILY_COLOURS)]
        reg = [r for r in plot["regions"] if r["size"] == size]
        ks = np.array([r["k"] for r in reg], float)
        for a, key in ((ax, "d"), (ax2, "wk")):
            ci = np.array([r[key] for r in reg], float)
            a.plot(ks, ci[:, 0], "-", color=col, lw=1.0, label=f"size {size}")
            a.fill_between(ks, ci[:, 1], ci[:, 2], color=col, alpha=CI_ALPHA, lw=0)
            for r, x, y in zip(reg, ks, ci[:, 0]):
                a.plot([x], [y], "o", ms=5, color=col, mfc=col if r["judged"] else "white")
        un = [r for r in plot.get("unseen", []) if r["size"] == size]
        if un:
            ax.plot([r["k"] for r in un], [r["d"][0] for r in un], "--", color=col, alpha=0.6, lw=0.9,
                    label=f"size {size}, unseen concepts")
    ax.axhline(0, color=REFERENCE_COLOUR, lw=0.8)
    ax.set_ylabel("TV(model, kernel) - TV(model, exact Bayes)")
    ax2.set_ylabel("the kernel's weight in the fitted mixture")
    ax2.set_ylim(-0.02, 1.02)
    ax2.plot([], [], "o", color=PREDICTOR_STYLE["kernel"][0], mfc="white", label="open: outside the scope")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xlabel(f"K (pretraining concepts); last checkpoint, n = {plot.get('n')}")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=6, frameon=False)


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("strategies",), judge=judge, draw=draw,
              families=(FAMILY,))
