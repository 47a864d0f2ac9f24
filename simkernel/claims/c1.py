"""C1: the sampling term shrinks like n^-1/2, judged only where the central-limit regime has begun.

Evidence: the ``regime`` sweep (``regime.py``).  Per world it predicts the estimator's large-n
error c/√n from its exact asymptotic covariance, finds the n from which measured / predicted
stays within 1 ± band (``regime_n``), and fits the slope of log TV(estimate_n, limit) on log n
past it (``slope``, only when the window [regime_n, n_max] spans >= 4x: ``judged``).  A flat
stretch before the regime begins is "not yet asymptotic", never a refutation.
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import FIT_N_MIN
from ..metrics import unit_ci
from ..plots.style import BAND_COLOUR, ESTIMATOR_COLOURS, EXTRA_COLOURS, PREDICTOR_STYLE
from .base import (INCONCLUSIVE, MIN_UNITS, NAN, NOT_REACHED, REFUTED, SUPPORTED, Claim, ci_text, decide,
                   done, failed_note, families_of, family_axes, few, flags, fmt_n, frequency_lines, of_family, overall,
                   worst)

ID = "C1"
TITLE = "The kernel estimate converges to its exact limit at rate n^-1/2 (the sampling term)"
KIND = "asymptotic"
SOURCE = "Theorem 1's error has \"a sampling term that shrinks like n^(-1/2) (Hoeffding)\" (THEORY.md §5)"
SCOPE = ("restart (Assumption 1)", "demonstrations i.i.d. from θ*")
#: A supported slope's interval lies inside this band around the central-limit rate -1/2.
SLOPE_BAND = (-0.6, -0.4)
#: This many worlds whose measured error leaves the prediction upwards refute the rate.
MIN_DIVERGING = 3
KERNEL = "theory"
ESTIMATORS = ("normalised", "averaged")
RULE = (f"Per preset family and estimator of the {KERNEL} kernel, from the regime sweep: per world, the regime "
        f"begins at regime_n, the first n from which the measured mean TV(estimate_n, its exact limit) stays within "
        f"1 ± band of the prediction c/√n from the estimator's exact asymptotic covariance; a world is judged when "
        f"[regime_n, n_max] spans >= 4x, and its slope is the least-squares slope of log TV on log n over that window. "
        f"Refuted when >= {MIN_DIVERGING} worlds diverge (measured / predicted ends above 1 + band and still rises: "
        f"the error does not shrink like the prediction); else, with >= {MIN_UNITS} judged worlds, supported when the "
        f"95% t-interval over them of the slope lies inside [{SLOPE_BAND[0]}, {SLOPE_BAND[1]}], refuted when it lies "
        f"wholly outside, inconclusive when it straddles an edge; 'not reached by n = N' when fewer than "
        f"{MIN_UNITS} worlds are judged and most worlds did not reach the regime by the largest simulated n (its own "
        f"verdict, never a refutation); else inconclusive.  The slope over the whole window n = {FIT_N_MIN}..N (pre-asymptotic "
        f"stretch included) is shown, not judged.  A family's word over the estimators: refuted when one is, then "
        f"inconclusive, then not reached, supported when all are.")


def _estimators(theory, estimators) -> list:
    have = list(dict.fromkeys(theory["estimator"]))
    if estimators is not None:
        return [e for e in estimators if e in have]
    return [e for e in ESTIMATORS if e in have] + [e for e in have if e not in ESTIMATORS]


def judge_one(s) -> dict:
    """The verdict of one family and estimator from its rows of the worlds table (one row per
    world): {'verdict', 'why', 'slope': (m, lo, hi), 'window', 'ratio', 'n_max', 'counts', ...}."""
    worlds = s["world"].to_numpy()
    W = len(set(worlds))
    judged, reached, diverging = flags(s["judged"]), flags(s["reached"]), flags(s["diverging"])
    slope = unit_ci(s["slope"].to_numpy(float)[judged], worlds[judged])
    J = slope[3]
    n_max = int(s["n_max"].max()) if W else 0
    n_div = len(set(worlds[diverging]))
    n_not = W - len(set(worlds[reached]))
    regime_n = s["regime_n"].to_numpy(float)[reached]
    out = {"slope": slope[:3], "window": unit_ci(s["slope_window"].to_numpy(float), worlds)[:3],
           "ratio": unit_ci(s["ratio_max"].to_numpy(float), worlds)[:3], "n_max": n_max, "W": W, "J": J,
           "diverging": n_div, "not_reached": n_not,
           "regime_n": float(np.median(regime_n)) if regime_n.size else NAN}
    lo_b, hi_b = SLOPE_BAND
    if W < MIN_UNITS:
        v, why = INCONCLUSIVE, few(W)
    elif n_div >= MIN_DIVERGING:
        v, why = REFUTED, f"{n_div} worlds diverge: the measured error leaves the prediction upwards"
    elif J >= MIN_UNITS:
        v = decide(slope[1], slope[2], lambda a, b: a >= lo_b and b <= hi_b, lambda a, b: b < lo_b or a > hi_b)
        why = {SUPPORTED: "inside the band", REFUTED: "outside the band, past the regime's start",
               INCONCLUSIVE: "the interval straddles the band's edge"}[v]
    elif n_not > W / 2:
        v, why = NOT_REACHED, f"{n_not} of {W} worlds did not reach the regime: not reached by n = {n_max:,}"
    else:
        v, why = INCONCLUSIVE, f"only {J} worlds judged (regime reached with a window of >= 4x)"
    out.update(verdict=v, why=why)
    return out


def _text(fam, e, j) -> str:
    bits = [f"{fam} ({e}): "]
    if j["J"]:
        bits.append(f"slope {ci_text(j['slope'])} over {j['J']} judged worlds of {j['W']}")
    else:
        bits.append(f"no judged world of {j['W']}")
    bits.append(f" ({j['why']})")
    if math.isfinite(j["regime_n"]):
        bits.append(f"; the regime begins at n ≈ {fmt_n(j['regime_n'])} (median over the {j['W'] - j['not_reached']} "
                    f"worlds that reached it)")
    if j["not_reached"] and j["verdict"] != NOT_REACHED:
        bits.append(f"; {j['not_reached']} not reached by n = {j['n_max']:,}")
    if j["diverging"]:
        bits.append(f"; {j['diverging']} diverging")
    bits.append(f"; the pre-asymptotic window's slope (n = {FIT_N_MIN}..{j['n_max']:,}, not judged) "
                f"{ci_text(j['window'])}")
    return "".join(bits)


def _short(j) -> str:
    if j["verdict"] == NOT_REACHED:
        return f"not reached by n = {j['n_max']:,}"
    if j["J"]:
        return f"slope {ci_text(j['slope'])}"
    return j["why"]


def _curves(rows, kernel, estimators) -> dict:
    """Per (kernel, estimator): the world-averaged measured and predicted tv_limit per n, and
    the t-interval over worlds of measured / predicted per n."""
    out = {}
    if rows is None or rows.empty:
        return out
    finite = np.isfinite(rows["n_demos"].to_numpy(float))
    r = rows[finite]
    for k, e in [(kernel, e) for e in estimators] + [("frequency", "normalised")]:
        s = r[(r["kernel"] == k) & (r["estimator"] == e)]
        if s.empty:
            continue
        meas = s[s["metric"] == "tv_limit"].groupby("n_demos")["mean"].mean()
        pred = s[s["metric"] == "tv_limit_pred"].groupby("n_demos")["mean"].mean()
        rat = s[s["metric"] == "ratio"]
        ns = sorted(set(meas.index))
        ratio = [list(unit_ci(rat[rat["n_demos"] == n]["mean"].to_numpy(float),
                              rat[rat["n_demos"] == n]["world"].to_numpy())[:3]) for n in ns]
        out[f"{k}/{e}"] = {"n": [float(n) for n in ns], "measured": [float(meas[n]) for n in ns],
                           "predicted": [float(pred.get(n, NAN)) for n in ns], "ratio": ratio}
    return out


def verdict(worlds, rows=None, *, family: str = "preset", kernel: str = KERNEL, estimators=None):
    """C1 from the regime sweep's ``worlds`` table (regime_worlds.csv rows: world, kernel,
    estimator, n_max, regime_n, reached, judged, slope, slope_window, ratio_max, diverging, ...)
    and, for the figure, its main table ``rows`` (regime.csv: tv_limit, tv_limit_pred and ratio
    per world and n)."""
    worlds_all, worlds, rows = worlds, done(worlds), done(rows)
    families, parts, numbers, plot = {}, [], {}, {"families": {}, "band": list(SLOPE_BAND), "kernel": kernel}
    if worlds is not None and "band" in worlds.columns and worlds["band"].notna().any():
        plot["regime_band"] = float(worlds["band"].dropna().iloc[0])
    for fam in families_of(worlds, family):
        f = of_family(worlds, fam, family)
        theory = f[f["kernel"] == kernel]
        ests = _estimators(theory, estimators)
        words, texts, shorts, regime_ns = [], [], [], {}
        for e in ests:
            j = judge_one(theory[theory["estimator"] == e])
            words.append(j["verdict"])
            texts.append(_text(fam, e, j))
            shorts.append(f"{e}: {_short(j)}" if len(ests) > 1 else _short(j))
            parts.append({"name": f"{fam} ({e})", "verdict": j["verdict"], "text": texts[-1]})
            numbers[f"{fam}: slope past the regime's start, {kernel} kernel ({e})"] = j["slope"]
            numbers[f"{fam}: slope over n = {FIT_N_MIN}..{j['n_max']:,}, pre-asymptotic window, not judged ({e})"] = \
                j["window"]
            numbers[f"{fam}: measured / predicted at n = {j['n_max']:,} ({e})"] = j["ratio"]
            numbers[f"{fam}: regime begins at n (median over the worlds that reached it) ({e})"] = (j["regime_n"],
                                                                                                   NAN, NAN)
            s = theory[theory["estimator"] == e]
            regime_ns[e] = [float(x) for x in s["regime_n"].to_numpy(float)]
        freq = f[f["kernel"] == "frequency"]
        if not freq.empty:
            jf = judge_one(freq)
            numbers[f"{fam}: slope past the regime's start, label frequencies (reference)"] = jf["slope"]
        word = worst(words) if words else INCONCLUSIVE
        families[fam] = {"verdict": word, "text": "; ".join(texts) or f"{fam}: no {kernel} rows",
                         "short": "; ".join(shorts)}
        plot["families"][fam] = {"regime_n": regime_ns, "curves": _curves(of_family(rows, fam, family)
                                                                          if rows is not None else None,
                                                                          kernel, ests)}
    note = failed_note(worlds_all)
    text = ("; ".join(f["text"] for f in families.values()) or "no regime rows") + (f"; {note}" if note else "")
    refs = [f"{k.split(':')[0]} {ci_text(v)}" for k, v in numbers.items() if "label frequencies" in k]
    reference = ("label frequencies (K ≡ 1), a plain mean of i.i.d. one-hot labels, converge at the central-limit "
                 "rate: slope past the regime's start " + "; ".join(refs)) if refs else \
        "label frequencies (K ≡ 1): no rows in the table"
    return CLAIM.result(overall(families), families, text, reference=reference, numbers=numbers, parts=parts,
                        plot=plot)


def judge(tables: dict, info: dict):
    return verdict(tables["regime.worlds"], tables.get("regime"))


def draw(result, fig) -> None:
    """Per family: the measured TV(estimate_n, limit) with the predicted c/√n (dashed; the label
    frequencies' dotted), and measured / predicted per n with the 1 ± band and each world's
    regime_n (ticks)."""
    plot = result.plot
    band = plot.get("regime_band", 0.1)
    other = EXTRA_COLOURS[0]
    for fam, d, ax, ax2 in family_axes(result, fig):
        for key, c in d["curves"].items():
            k, e = key.split("/")
            col = PREDICTOR_STYLE["frequency"][0] if k == "frequency" else ESTIMATOR_COLOURS.get(e, other)
            lab = "label frequencies" if k == "frequency" else f"{k} ({e})"
            if k == "frequency":
                frequency_lines(ax, c["n"], c["measured"], c["predicted"], what="predicted c/√n")
            else:
                ax.plot(c["n"], c["measured"], "-o", ms=2.5, color=col, label=f"{lab}: measured")
                ax.plot(c["n"], c["predicted"], "--", color=col, lw=1, label=f"{lab}: predicted c/√n")
            ci = np.array(c["ratio"], float).reshape(-1, 3)
            ax2.plot(c["n"], ci[:, 0], "-o", ms=2.5, color=col, label=lab)
            ax2.fill_between(c["n"], ci[:, 1], ci[:, 2], color=col, alpha=0.15, lw=0)
        for e, rn in d["regime_n"].items():
            rn = [x for x in rn if math.isfinite(x)]
            ax2.plot(rn, np.full(len(rn), 1 - 2.5 * band), "|", ms=10, color=ESTIMATOR_COLOURS.get(e, other),
                     alpha=0.7)
        ax2.axhspan(1 - band, 1 + band, color=BAND_COLOUR, alpha=0.12, label=f"1 ± {band:g}")
        ax2.axhline(1, color=BAND_COLOUR, lw=0.8)
        for a in (ax, ax2):
            a.set_xscale("log")
            a.grid(True, alpha=0.3)
            a.set_xlabel("n (demonstrations)")
        ax.set_yscale("log")
        ax.set_ylabel("mean TV(estimate_n, limit)")
        ax.set_title(f"{fam}: measured (solid) and predicted c/√n (dashed, dotted)", fontsize=9)
        ax2.set_ylabel("measured / predicted")
        ax2.set_title(f"{fam}: 95% CI over worlds; ticks: each world's regime_n", fontsize=9)
        ax.legend(fontsize=6, frameon=False)
        ax2.legend(fontsize=6, frameon=False)


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("regime.worlds", "regime"), judge=judge, draw=draw)
