"""C4: the n at which the theory kernel overtakes label counting (a comparison: a number, not a verdict).

Evidence: the ``regime`` sweep.  Per world, the crossover n× is the first grid n from which the
kernel's mean TV to exact Bayes stays below the label frequencies' (paired over prompts, with a
bootstrap interval over prompts), found by extending n; beside it the n× the exact asymptotic
laws predict, and the limit comparison: the exact floors of both against the oracle.
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics import log_ci, unit_ci
from ..plots.style import MARK_COLOUR, PREDICTOR_COLOURS, REFERENCE_COLOUR
from .base import (INCONCLUSIVE, MEASURED, MIN_UNITS, NAN, Claim, ci_text, done, failed_note, families_of,
                   family_axes, few, fmt, fmt_n, frequency_lines, of_family, overall)

ID = "C4"
TITLE = "Where the kernel overtakes label counting: the crossover n× with the label frequencies"
KIND = "comparison"
SOURCE = "project extension (no source in the paper): label counting (K ≡ 1) is the null model every kernel must beat"
SCOPE = ("restart (Assumption 1)", "demonstrations i.i.d. from θ*")
KERNEL, ESTIMATOR = "theory", "normalised"
RULE = ("A comparison, reported as numbers (verdict word 'measured'): per preset family, the limit comparison (the "
        "exact floor TV(limit, oracle) of the theory kernel's normalised estimate against the label frequencies', "
        "95% t-intervals over worlds) and the crossover n×: per world the first grid n from which the mean over "
        "prompts of TV(kernel_n, Bayes_n) - TV(frequencies_n, Bayes_n) stays below 0 (a percentile bootstrap over "
        "prompts gives its interval), extended while needed; over the worlds that crossed by the largest simulated "
        "n, the geometric mean with a t-interval on log n×, the count that crossed, and the n× the asymptotic laws "
        "predict (geometric mean over the worlds where the limit favours the kernel).  Inconclusive only with fewer "
        f"than {MIN_UNITS} worlds.")


def summary(s) -> dict:
    """One family's crossover numbers from its worlds-table rows (one per world)."""
    worlds = s["world"].to_numpy()
    W = len(set(worlds))
    x = s["crossover"].to_numpy(float)
    crossed = np.isfinite(x)
    est = list(log_ci(x[crossed], worlds[crossed]))
    if est[1] == est[1]:
        est[1] = max(est[1], 1.0)            # n× >= 1 by definition: the interval on log n× may reach below
    pred = s["crossover_pred"].to_numpy(float)
    pf = np.isfinite(pred)
    return {"W": W, "crossed": len(set(worlds[crossed])), "n_max": int(s["n_max"].max()) if W else 0,
            "estimate": est[:3], "predicted": log_ci(pred[pf], worlds[pf])[0], "predicted_worlds": int(pf.sum()),
            "floor": unit_ci(s["floor"].to_numpy(float), worlds, lower=0.0)[:3],
            "floor_frequency": unit_ci(s["floor_frequency"].to_numpy(float), worlds, lower=0.0)[:3]}


def headline(c: dict) -> str:
    """'n× ≈ 1,400 [900, 2,100] (17/20 worlds by n = 8,192); limit 0.009 vs 0.17'."""
    m, lo, hi = c["estimate"]
    if c["crossed"]:
        ci = f" [{fmt_n(lo)}, {fmt_n(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
        head = f"n× ≈ {fmt_n(m)}{ci} ({c['crossed']}/{c['W']} worlds by n = {c['n_max']:,})"
    else:
        head = f"no crossover by n = {c['n_max']:,} (0/{c['W']} worlds)"
    return f"{head}; limit {fmt(c['floor'][0], 2)} vs {fmt(c['floor_frequency'][0], 2)}"


def _curves(rows, kernel, estimator) -> dict:
    out = {}
    if rows is None or rows.empty:
        return out
    r = rows[np.isfinite(rows["n_demos"].to_numpy(float))]
    for k, e in ((kernel, estimator), ("frequency", "normalised")):
        s = r[(r["kernel"] == k) & (r["estimator"] == e)]
        if s.empty:
            continue
        tv = s[s["metric"] == "tv_bayes"].groupby("n_demos")["mean"].mean()
        pred = s[s["metric"] == "tv_bayes_pred"].groupby("n_demos")["mean"].mean()
        out[k] = {"n": [float(n) for n in tv.index], "tv_bayes": tv.tolist(),
                  "predicted": [float(pred.get(n, NAN)) for n in tv.index]}
    d = r[(r["kernel"] == kernel) & (r["estimator"] == estimator) & (r["metric"] == "diff_frequency")]
    if not d.empty:
        ns = sorted(set(d["n_demos"]))
        out["diff"] = {"n": [float(n) for n in ns],
                       "ci": [list(unit_ci(d[d["n_demos"] == n]["mean"].to_numpy(float),
                                           d[d["n_demos"] == n]["world"].to_numpy())[:3]) for n in ns]}
    return out


def verdict(worlds, rows=None, *, family: str = "preset", kernel: str = KERNEL, estimator: str = ESTIMATOR):
    """C4 from the regime sweep's ``worlds`` table (crossover, crossover_lo/hi, crossover_pred,
    floor, floor_frequency, n_max per world) and, for the figure, its main table ``rows``."""
    worlds_all, worlds, rows = worlds, done(worlds), done(rows)
    families, parts, numbers, crossover = {}, [], {}, {}
    plot = {"families": {}, "kernel": kernel, "estimator": estimator}
    for fam in families_of(worlds, family):
        f = of_family(worlds, fam, family)
        s = f[(f["kernel"] == kernel) & (f["estimator"] == estimator)]
        c = summary(s)
        crossover[fam] = {"estimate": c["estimate"][0], "ci_low": c["estimate"][1], "ci_high": c["estimate"][2],
                          "worlds_crossed": c["crossed"], "worlds": c["W"], "n_max": c["n_max"],
                          "predicted": c["predicted"]}
        numbers[f"{fam}: crossover n×, geometric mean over the worlds that crossed"] = c["estimate"]
        numbers[f"{fam}: crossover n× predicted by the asymptotic laws"] = (
            c["predicted"], NAN, NAN)
        numbers[f"{fam}: floor TV(limit, oracle), {kernel} kernel ({estimator})"] = c["floor"]
        numbers[f"{fam}: floor TV(limit, oracle), label frequencies (reference)"] = c["floor_frequency"]
        other = f[(f["kernel"] == kernel) & (f["estimator"] != estimator) & (f["estimator"] != "-")]
        for e in dict.fromkeys(other["estimator"]):
            co = summary(other[other["estimator"] == e])
            numbers[f"{fam}: crossover n× ({e})"] = co["estimate"]
            numbers[f"{fam}: floor TV(limit, oracle), {kernel} kernel ({e})"] = co["floor"]
        if c["W"] < MIN_UNITS:
            v, txt = INCONCLUSIVE, f"{fam}: {few(c['W'])}; {headline(c)}"
        else:
            v = MEASURED
            txt = (f"{fam}: {headline(c)} (limits: kernel floor {ci_text(c['floor'])} vs label frequencies "
                   f"{ci_text(c['floor_frequency'])}; predicted n× ≈ {fmt_n(c['predicted'])})")
        families[fam] = {"verdict": v, "text": txt, "short": headline(c)}
        parts.append({"name": fam, "verdict": v, "text": txt})
        plot["families"][fam] = {
            "worlds": [w.item() if hasattr(w, "item") else w for w in s["world"]],
            "crossover": s["crossover"].to_numpy(float).tolist(), "lo": s["crossover_lo"].to_numpy(float).tolist(),
            "hi": s["crossover_hi"].to_numpy(float).tolist(), "pred": s["crossover_pred"].to_numpy(float).tolist(),
            "n_max": c["n_max"], "curves": _curves(of_family(rows, fam, family) if rows is not None else None,
                                                   kernel, estimator)}
    note = failed_note(worlds_all)
    text = ("; ".join(f["text"] for f in families.values()) or "no regime rows") + (f"; {note}" if note else "")
    reference = ("label frequencies (K ≡ 1, the null model) against exact Bayes, and their floor P(y | θ*) against "
                 "the oracle: " + "; ".join(f"{k.split(':')[0]} {ci_text(v)}" for k, v in numbers.items()
                                             if "(reference)" in k))
    return CLAIM.result(overall(families), families, text, reference=reference, numbers=numbers, parts=parts,
                        plot=plot, extra={"crossover": crossover})


def judge(tables: dict, info: dict):
    return verdict(tables["regime.worlds"], tables.get("regime"))


def draw(result, fig) -> None:
    """Per family: TV to exact Bayes of the kernel and of the label frequencies against n (dashed,
    dotted: predicted), and each world's crossover n× with its interval (open: predicted; a
    triangle at n_max: not crossed)."""
    kernel = PREDICTOR_COLOURS["kernel"]
    for fam, d, ax, ax2 in family_axes(result, fig):
        c = d["curves"].get(result.plot.get("kernel", KERNEL))
        if c:
            ax.plot(c["n"], c["tv_bayes"], "-o", ms=2.5, color=kernel, label="theory kernel: measured")
            ax.plot(c["n"], c["predicted"], "--", lw=1, color=kernel, label="theory kernel: predicted")
        c = d["curves"].get("frequency")
        if c:
            frequency_lines(ax, c["n"], c["tv_bayes"], c["predicted"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (demonstrations)")
        ax.set_ylabel("mean TV to exact Bayes")
        ax.set_title(f"{fam}: measured (solid) and predicted (dashed, dotted)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
        x = np.array(d["crossover"], float)
        lo, hi, pred = (np.array(d[k], float) for k in ("lo", "hi", "pred"))
        idx = np.arange(x.size)
        ok = np.isfinite(x)
        with np.errstate(invalid="ignore"):              # inf - inf where a world did not cross
            lo_e = np.where(np.isfinite(lo), x - lo, 0.0)
            hi_e = np.where(np.isfinite(hi), hi - x, 0.0)
        ax2.errorbar(idx[ok], x[ok], yerr=[lo_e[ok], hi_e[ok]], fmt="o", ms=3.5, capsize=2, color=kernel,
                     label="crossover n× (95% CI over prompts)")
        if (~ok).any():
            ax2.plot(idx[~ok], np.full((~ok).sum(), d["n_max"]), "^", color=MARK_COLOUR, ms=5,
                     label=f"not crossed by n = {d['n_max']:,}")
        pf = np.isfinite(pred)
        ax2.plot(idx[pf], pred[pf], "o", mfc="none", color=REFERENCE_COLOUR, ms=5, label="predicted")
        ax2.set_xticks(idx, [str(w) for w in d["worlds"]], fontsize=6)
        ax2.set_yscale("log")
        ax2.set_xlabel("world seed")
        ax2.set_ylabel("n×")
        ax2.set_title(f"{fam}: the crossover per world", fontsize=9)
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=6, frameon=False)


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("regime.worlds", "regime"), judge=judge, draw=draw)
