"""C5: a transformer trained near the Bayes loss predicts like the kernel rather than like exact Bayes.

Evidence: the ``icl-eval`` sweep over trained models (worlds x training seeds), prompts inside
the trained block only.  Distances (is the model nearer the kernel or exact Bayes?) and direction
(over the labels of a prompt, does the model's departure from exact Bayes point where the kernel's
departure points, more than where the label frequencies' does?).
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import NEAR_BAYES_GAP
from ..metrics import unit_ci
from ..plots.style import EXTRA_COLOURS, PREDICTOR_STYLE, REFERENCE_COLOUR, SHADE_GREY
from .base import (INCONCLUSIVE, MIN_UNITS, NAN, REFUTED, SUPPORTED, Claim, as_float, ci_text, done, failed_note,
                   few, fmt, overall)

ID = "C5"
TITLE = "A transformer trained to near the Bayes loss predicts like the kernel estimate rather than like exact Bayes"
KIND = "finite-n"
SOURCE = ("the paper's central empirical claim: a trained transformer's attention carries out the kernel regression "
          "(THEORY.md §7, §10; the paper's Table 2, GPT-J)")
SCOPE = ("prompts within the trained context (block size)", f">= {MIN_UNITS} worlds x {MIN_UNITS} training seeds",
         "models trained near the Bayes loss")
#: train.TrainConfig's default block size and icl-eval's default example length, for a job whose
#: own are unknown.
DEFAULT_BLOCK, DEFAULT_K = 128, 3
RULE = (f"Per world of the trained models (the unit; training seeds pooled within a world) at the largest n whose "
        f"prompt fits in the trained block (n (k + 1) + k - 1 <= block size; longer prompts are not judged and are "
        f"reported under 'outside'), the theory kernel's normalised estimate: d = TV(model, kernel) - TV(model, exact "
        f"Bayes), dir_kernel = the per-prompt correlation over the labels of (model - Bayes) with (kernel - Bayes), "
        f"dir_gap = dir_kernel - the same with the label frequencies in place of the kernel (paired per prompt); "
        f"95% t-intervals over worlds.  Supported when d's interval lies below 0 (nearer the kernel), dir_kernel's "
        f"above 0 and dir_gap's above 0 (the model departs from Bayes the kernel's way, more than label counting's "
        f"way).  Refuted when dir_kernel's interval lies below 0, or dir_gap's lies below 0, or d's lies above 0 "
        f"(nearer exact Bayes) while dir_gap's does not lie above 0.  Inconclusive otherwise, with < {MIN_UNITS} "
        f"worlds or a world with < {MIN_UNITS} training seeds, without the directional metrics, or when a run ends "
        f"more than {NEAR_BAYES_GAP:g} nats/token above the Bayes floor (not the claim's model).")
_SERIES = (("tv_bayes", "TV(model, exact Bayes)"), ("tv_kernel", "TV(model, kernel)"),
           ("tv_frequency", "TV(model, label frequencies)"), ("tv_kernel_bayes", "TV(kernel, exact Bayes)"),
           ("dir_kernel", "direction: corr(model - Bayes, kernel - Bayes)"),
           ("dir_frequency", "direction: corr(model - Bayes, frequencies - Bayes)"),
           ("dir_gap", "direction: kernel minus label frequencies"))
_REFERENCE = ("tv_frequency", "tv_kernel_bayes", "dir_frequency")


def in_block(rows, limits=None):
    """(rows inside the trained block, rows beyond it): a row is inside when its prompt of n
    demonstrations, n (k + 1) + k - 1 symbols, fits the job's block size.  ``limits``: {job:
    (block_size, example_length)}; unknown jobs get (DEFAULT_BLOCK, DEFAULT_K)."""
    from ..sampling import prompt_length

    limits = limits or {}
    lim = [limits.get(j, (DEFAULT_BLOCK, DEFAULT_K)) for j in rows["job"]]
    fits = np.array([prompt_length(int(n), int(k)) <= int(b) for n, (b, k) in zip(rows["n_demos"], lim)], bool)
    return rows[fits], rows[~fits]


def _at(r, n, metric, world):
    s = r[(r["n_demos"] == n) & (r["metric"] == metric)]
    return s["mean"].to_numpy(float), s[world].to_numpy(), s


def _series(r, beyond, world) -> tuple[dict, list]:
    """({metric: {'label', 'n', 'ci'}} per n over every prompt group's n >= 1, for the figure;
    the 'outside' entries of the n beyond the trained block, with their numbers, not judged)."""
    series = {}
    ns_all = sorted(set(r["n_demos"]))
    for metric, label in _SERIES:
        cis = []
        for n in ns_all:
            v, u, _ = _at(r, n, metric, world)
            cis.append(list(unit_ci(v, u)[:3]) if v.size else [NAN] * 3)
        series[metric] = {"label": label, "n": [float(n) for n in ns_all], "ci": cis}
    outside = []
    for n in sorted(set(beyond["n_demos"])):
        v, u, _ = _at(beyond, n, "tv_bayes", world)
        vk, uk, _ = _at(beyond, n, "tv_kernel", world)
        outside.append({"setting": f"n = {n}", "why": "the prompt is longer than the trained block",
                        "text": f"n = {n}: TV(model, exact Bayes) {ci_text(unit_ci(v, u, lower=0.0))}, TV(model, "
                                f"kernel) {ci_text(unit_ci(vk, uk, lower=0.0))} (not judged)"})
    return series, outside


def _word(W, few_seeds, far, has_dir, d, dk, dg) -> tuple[str, str]:
    """(verdict, why) by :data:`RULE` from the units, the runs' gaps and the three intervals."""
    if W < MIN_UNITS:
        return INCONCLUSIVE, few(W)
    if few_seeds:
        return INCONCLUSIVE, (f"world{'s' if len(few_seeds) > 1 else ''} {', '.join(map(str, few_seeds))} "
                              f"{'have' if len(few_seeds) > 1 else 'has'} fewer than {MIN_UNITS} training seeds")
    if far:
        return INCONCLUSIVE, (f"{len(far)} run{'s are' if len(far) > 1 else ' is'} not near the Bayes loss (gap > "
                              f"{NEAR_BAYES_GAP:g} nats/token)")
    if not has_dir:
        return INCONCLUSIVE, "no directional metrics (dir_kernel, dir_gap) in the table: an older icl-eval"
    if dk[2] < 0 or dg[2] < 0:
        return REFUTED, ("the model departs from exact Bayes against the kernel's direction" if dk[2] < 0 else
                         "label counting points where the model departs better than the kernel does")
    if d[1] > 0 and not dg[1] > 0:
        return REFUTED, "nearer exact Bayes than the kernel, and its departures do not follow the kernel's way"
    if d[2] < 0 and dk[1] > 0 and dg[1] > 0:
        return SUPPORTED, "nearer the kernel, and its departures from exact Bayes point the kernel's way"
    return INCONCLUSIVE, "the distances and the direction do not agree, or an interval includes 0"


def verdict(rows, *, world: str = "train.world_seed", seed: str = "train.seed", gaps=None, limits=None,
            group: str | None = None, family: str = "ginc-small"):
    """C5 from an icl-eval sweep's main table (icl_vs_bayes.csv rows: n_demos, concepts, metric,
    mean; one job per trained model, the grid columns ``world`` and ``seed``), ``gaps`` ({job:
    the run's final gap to the Bayes floor, nats/token}; unknown jobs are not checked) and
    ``limits`` ({job: (block_size, example_length)})."""
    rows_all, rows = rows, done(rows)
    plot = {"series": {}}
    if rows is None or rows.empty:
        note = failed_note(rows_all)
        return CLAIM.result(INCONCLUSIVE, {family: {"verdict": INCONCLUSIVE, "text": "no icl-eval rows",
                                                    "short": "no data"}},
                            "no icl-eval rows" + (f"; {note}" if note else ""), plot=plot)
    if world not in rows.columns:
        world = "job"
    groups = list(dict.fromkeys(rows["concepts"]))
    g = group or next((x for x in ("id", "prior") if x in groups), groups[0])
    r = rows[(rows["concepts"] == g) & (rows["n_demos"] >= 1)]
    inside, beyond = in_block(r, limits)
    ns = sorted(set(inside["n_demos"]))
    plot["series"], outside = _series(r, beyond, world)
    plot["n_inside"] = [float(n) for n in ns]
    n_use = next((n for n in reversed(ns) if {"tv_bayes", "tv_kernel"} <= set(inside[inside["n_demos"] == n]["metric"])),
                 None)
    numbers = {}
    if n_use is None:
        txt = f"concepts {g}: no n >= 1 inside the trained block with TV(model, Bayes) and TV(model, kernel)"
        return CLAIM.result(INCONCLUSIVE, {family: {"verdict": INCONCLUSIVE, "text": txt, "short": "no data"}}, txt,
                            plot=plot, outside=outside)
    at = inside[inside["n_demos"] == n_use]
    piv = at.pivot_table(index=["job", world, seed] if seed in at.columns else ["job", world], columns="metric",
                         values="mean", aggfunc="mean").reset_index()
    units = piv[world].to_numpy()

    def ci(metric, lower=None):
        if metric not in piv.columns:
            return (NAN, NAN, NAN, 0)
        return unit_ci(piv[metric].to_numpy(float), units, lower=lower)

    d = unit_ci((piv["tv_kernel"] - piv["tv_bayes"]).to_numpy(float), units)
    dk, df, dg = ci("dir_kernel"), ci("dir_frequency"), ci("dir_gap")
    for metric, label in _SERIES:
        if metric in piv.columns:
            numbers[f"{label} at n = {n_use}" + (" (reference)" if metric in _REFERENCE else "")] = \
                ci(metric, lower=0.0 if metric.startswith("tv") else None)[:3]
    numbers[f"TV(model, kernel) - TV(model, exact Bayes) at n = {n_use}"] = d[:3]
    W = d[3]
    seeds_per_world = {w: len(set(piv[piv[world] == w][seed])) if seed in piv.columns else 1 for w in set(units)}
    gaps = {k: as_float(v) for k, v in (gaps or {}).items()}
    known = [gaps[j] for j in piv["job"] if j in gaps and math.isfinite(gaps[j])]
    if known:
        numbers["gap to the Bayes floor (nats/token), mean over runs"] = unit_ci(known)[:3]
    far = [j for j in piv["job"] if gaps.get(j, -math.inf) > NEAR_BAYES_GAP]
    few_seeds = sorted(w for w, c in seeds_per_world.items() if c < MIN_UNITS)
    has_dir = math.isfinite(dk[0]) and math.isfinite(dg[0])
    v, why = _word(W, few_seeds, far, has_dir, d, dk, dg)
    tvb = numbers.get(f"TV(model, exact Bayes) at n = {n_use}", (NAN,) * 3)
    tvk = numbers.get(f"TV(model, kernel) at n = {n_use}", (NAN,) * 3)
    nseeds = sorted(set(seeds_per_world.values()))
    txt = (f"concepts {g}, n = {n_use} (the largest inside the trained block), {W} worlds x "
           f"{'/'.join(map(str, nseeds))} training seeds: TV(model, exact Bayes) {ci_text(tvb)}, TV(model, kernel) "
           f"{ci_text(tvk)}, difference {ci_text(d)}; direction: kernel {ci_text(dk)}, label frequencies "
           f"{ci_text(df)}, kernel minus frequencies {ci_text(dg)} ({why})")
    if known:
        txt += f"; gap to the Bayes floor {ci_text(numbers['gap to the Bayes floor (nats/token), mean over runs'])}"
    note = failed_note(rows_all)
    text = txt + (f"; {note}" if note else "")
    refs = [f"{k} {ci_text(x)}" for k, x in numbers.items() if "(reference)" in k]
    reference = ("the label frequencies beside the kernel (distance and direction), and the kernel's own distance to "
                 "exact Bayes: " + "; ".join(refs))
    families = {family: {"verdict": v, "text": txt,
                         "short": f"TV(model, kernel) - TV(model, Bayes) {fmt(d[0], 2)}; direction: kernel "
                                  f"{fmt(dk[0], 2)}, label frequencies {fmt(df[0], 2)}"}}
    return CLAIM.result(overall(families), families, text, reference=reference, numbers=numbers,
                        parts=[{"name": f"concepts {g}", "verdict": v, "text": txt}], outside=outside,
                        plot=dict(plot, group=g, n=float(n_use)))


def judge(tables: dict, info: dict):
    return verdict(tables["icl-eval"], gaps=info.get("icl-eval.gaps"), limits=info.get("icl-eval.limits"))


def draw(result, fig) -> None:
    """TV of the model to exact Bayes, to the kernel and to the label frequencies against n (95%
    CI over worlds; the grey span: beyond the trained block, not judged), and the direction."""
    plot = result.plot
    if not plot.get("series"):
        raise ValueError("no data for a figure")
    ax, ax2 = fig.subplots(1, 2)
    bayes, kernel, freq = (PREDICTOR_STYLE[p][0] for p in ("bayes", "kernel", "frequency"))
    styles = {"tv_bayes": (bayes, "-"), "tv_kernel": (kernel, "-"), "tv_frequency": (freq, "--"),
              "tv_kernel_bayes": (kernel, ":"), "dir_kernel": (kernel, "-"),
              "dir_frequency": (freq, "--"), "dir_gap": (EXTRA_COLOURS[1], "-")}
    for metric, s in plot["series"].items():
        ci = np.array(s["ci"], float).reshape(-1, 3)
        if not np.isfinite(ci[:, 0]).any():
            continue
        a = ax2 if metric.startswith("dir") else ax
        col, ls = styles.get(metric, (EXTRA_COLOURS[0], "-"))
        a.plot(s["n"], ci[:, 0], ls, marker="o", ms=3, color=col, label=s["label"])
        a.fill_between(s["n"], ci[:, 1], ci[:, 2], color=col, alpha=0.12, lw=0)
    inside = plot.get("n_inside") or []
    for a in (ax, ax2):
        if inside:
            a.axvspan(max(inside) * 1.02, a.get_xlim()[1] * 2, color=SHADE_GREY, alpha=0.5, lw=0)
        a.set_xscale("log", base=2)
        a.set_xlabel("n (demonstrations); grey: beyond the trained block")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=6, frameon=False)
    ax.set_ylabel("total variation (95% CI over worlds)")
    ax.set_ylim(bottom=0)
    ax2.axhline(0, color=REFERENCE_COLOUR, lw=0.8)
    ax2.set_ylabel("mean per-prompt correlation over the labels")


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("icl-eval",), judge=judge, draw=draw,
              families=("ginc-small",))
