"""The theory's claims as verdicts: ``simkernel report``.

Each claim of the kernel-regression theory (THEORY.md; docs/theory.md §17-21) gets one pure
*verdict function* that reads the combined tidy tables of a sweep (pandas DataFrames shaped like
``sweep.SweepResult.table(...)``) and returns a claim dict:

    claim      'C1' .. 'C6', 'C7-<phenomenon>'
    title      the claim in one line
    verdict    'supported' | 'refuted' | 'inconclusive'
    rule       how the verdict was decided, thresholds included
    text       one sentence with the numbers
    reference  the baseline beside the claim (label frequencies beside the kernel, the uniform
               vote beside heads, exact Bayes and the oracle beside everything)
    numbers    {name: (estimate, ci_low, ci_high)}: 95% intervals over worlds or training seeds
               (``metrics.world_ci``: a t-interval over the units), NaN where there is none
    parts      [{'name', 'verdict', 'text'}]: per preset family, phenomenon setting, ...
    figure     the PNG file name beside the page ('c1.png'); plot: the data it is drawn from

Every interval is 95%.  With fewer than :data:`MIN_UNITS` worlds (C1-C4, C7) or training seeds
(C5, C6) a verdict is 'inconclusive' and says why.  A claim measured on several preset families
(C1-C4) aggregates as :data:`FAMILY_RULE` states.

- :func:`battery` gives the sweep configs of the verification battery (``quick``: seconds-sized);
- :func:`run` runs them through ``sweep.run`` and returns a :class:`Report`;
- :func:`claims_from_sweeps` turns the sweep results into the claim dicts;
- :func:`write_report` writes ``index.html`` (offline: inline CSS, figures as PNG files beside
  it), ``report.md`` and ``report.json``; :func:`check_in_browser` renders the page in headless
  Chromium, checks every image loaded and the verdict table, and keeps a screenshot.

matplotlib and pandas are imported inside the functions that need them.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from .constants import PHENOMENA
from .metrics import fit_power_law, world_ci

VERDICTS = ("supported", "refuted", "inconclusive")
#: Fewer worlds (or training seeds) than this: no interval worth a verdict.
MIN_UNITS = 3
#: C1: the central-limit rate and the band a supported slope's interval must lie in.
SLOPE_BAND = (-0.6, -0.4)
#: C1: the sampling term is fitted over n >= this (convergence.FIT_N_MIN; smaller n are far from
#: the central-limit regime).
FIT_N_MIN = 4
#: C2: a floor below this (TV) is no floor; Σ_θ* "removes" the floor when it removes more than this share.
FLOOR_MIN = 1e-3
REMOVED_SHARE = 0.5
#: C5: "trained to near the Bayes loss": every run's validation loss within this many nats per
#: token of the Bayes floor (train.TrainConfig's default target gap).
NEAR_BAYES_GAP = 0.05
#: C3: world-cluster bootstrap resamples of the rank correlation.
N_BOOT = 2000
#: C7: an exact invariance (phenomena.INVARIANCE_TOL): TV below this is zero.
INVARIANCE_TOL = 1e-12
FAMILY_RULE = ("over preset families: supported when every family supports the claim, refuted when any family "
               "refutes it (one counterexample refutes a general claim), inconclusive otherwise")
CI_NOTE = ("95% intervals: a t-interval over worlds (C1-C4, C7) or training seeds (C5, C6) of the per-unit values "
           "(metrics.world_ci) unless a rule says otherwise; fewer than 3 units make a verdict inconclusive")
#: What :meth:`Report.write` publishes besides one figure per claim (and the browser's screenshot).
FILES = ("index.html", "report.md", "report.json")
SCREENSHOT = "screenshot.png"
BROWSER_JSON = "browser_check.json"
#: The battery's sweeps, in the order :func:`run` runs them (icl-eval trains the runs measure reuses).
SWEEPS = ("converge", "phenomena", "icl-eval", "measure")
NAN = float("nan")


# ---------------------------------------------------------------------- small helpers
def _f(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NAN
    return v


def _fmt(x, digits: int = 3) -> str:
    v = _f(x)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}g}"


def _ci_text(t) -> str:
    """'est [lo, hi]' (or 'est' without an interval)."""
    est, lo, hi = (_f(v) for v in tuple(t)[:3])
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]"
    return _fmt(est)


def unit_ci(values, units=None, lower: float | None = None) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n_units): the 95% t-interval over units of ``values`` (one or more per
    unit; a unit's values are averaged first), from ``metrics.world_ci``.  NaN values are
    dropped; lo and hi are NaN with fewer than two units; ``lower`` clips lo (a distance's
    interval stays >= 0, as convergence's rows do)."""
    v = np.asarray(values, np.float64).reshape(-1)
    u = np.arange(v.size) if units is None else np.asarray(list(units), dtype=object).reshape(-1)
    if u.size != v.size:
        raise ValueError(f"units has {u.size} entries for {v.size} values; give one unit per value")
    ok = np.isfinite(v)
    v, u = v[ok], u[ok]
    if v.size == 0:
        return NAN, NAN, NAN, 0
    ids = np.unique(u.astype(str), return_inverse=True)[1]
    n = int(ids.max()) + 1
    m, lo, hi, _cnt, _w = world_ci(v[:, None], ids)
    if n < 2:
        return float(m[0]), NAN, NAN, n
    lo0 = float(lo[0]) if lower is None else max(float(lo[0]), lower)
    return float(m[0]), lo0, float(hi[0]), n


def _done(df):
    """The rows of finished jobs (a combined sweep table has a status column)."""
    if df is None:
        return None
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "done"]
    return df


def _failed_note(df) -> str:
    if df is None or "status" not in df.columns:
        return ""
    bad = df[df["status"].astype(str) != "done"]
    if bad.empty:
        return ""
    jobs = bad["job"].nunique() if "job" in bad.columns else len(bad)
    err = next((str(e) for e in bad.get("error", []) if isinstance(e, str) and e), "")
    return f"{jobs} job{'s' if jobs != 1 else ''} did not finish" + (f" (e.g. {err[:160]})" if err else "")


def _families(df, family: str) -> list:
    if df is None or df.empty:
        return []
    if family not in df.columns:
        return ["all"]
    return list(dict.fromkeys(df[family].astype(str)))


def _of_family(df, family: str, fam):
    if family not in df.columns:
        return df
    return df[df[family].astype(str) == str(fam)]


def _units(df, world: str):
    for col in (world, "world", "job"):
        if col in df.columns:
            return df[col].astype(str).to_numpy()
    return np.arange(len(df)).astype(str)


def _is_inf(x) -> bool:
    v = _f(x)
    return math.isinf(v)


def _decide(lo: float, hi: float, supported, refuted) -> str:
    """'supported' when supported(lo, hi), 'refuted' when refuted(lo, hi), else 'inconclusive'
    (also when the interval is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if supported(lo, hi):
        return "supported"
    if refuted(lo, hi):
        return "refuted"
    return "inconclusive"


def combine(parts: list[dict]) -> str:
    """The verdict of a claim from its parts' (:data:`FAMILY_RULE`): refuted when any part is,
    supported when every part is (and there is one), else inconclusive."""
    vs = [p["verdict"] for p in parts]
    if any(v == "refuted" for v in vs):
        return "refuted"
    if vs and all(v == "supported" for v in vs):
        return "supported"
    return "inconclusive"


def _claim(claim, title, verdict, rule, text, reference, numbers, parts=(), plot=None, **extra) -> dict:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    nums = {k: tuple(_f(x) for x in v) for k, v in numbers.items()}
    return {"claim": claim, "title": title, "verdict": verdict, "rule": rule, "text": text, "reference": reference,
            "numbers": nums, "parts": list(parts), "figure": f"{claim.lower()}.png", "plot": plot or {}, **extra}


def _few(n: int, what: str = "worlds") -> str:
    return f"only {n} {what if n != 1 else what[:-1]} (need >= {MIN_UNITS} for an interval)"


# ---------------------------------------------------------------------- C1: the sampling term
C1_TITLE = "The kernel estimate converges to its exact limit at rate n^-1/2 (the sampling term)"
C1_RULE = (f"Per world, the slope of a·n^slope fitted to the mean TV between the {{kernel}} kernel's {{estimator}} "
           f"estimate and its exact n -> inf limit over n = {FIT_N_MIN}..N (degenerate fits left out); supported when "
           f"the 95% t-interval over worlds of the slope lies inside [{SLOPE_BAND[0]}, {SLOPE_BAND[1]}], refuted when "
           f"it lies wholly outside (the rate is not n^-1/2 within n <= N), else inconclusive; " + FAMILY_RULE + ".")


def verdict_c1(fits, rows=None, *, family: str = "preset", world: str = "world_seed", kernel: str = "theory",
               estimator: str = "normalised") -> dict:
    """C1 from the sweep's ``fits`` table (one row per job, kernel and estimator: slope,
    degenerate, ...) and, for the figure and the world-averaged slope, its main table ``rows``
    (convergence.csv rows: n_demos, kernel, estimator, metric 'tv_limit', mean)."""
    fits_all = fits
    fits = _done(fits)
    rows = _done(rows)
    parts, numbers, plot = [], {}, {"families": {}}
    lo_b, hi_b = SLOPE_BAND
    n_max = None
    for fam in _families(fits, family):
        f = _of_family(fits, family, fam)
        units = _units(f, world)
        sel = (f["kernel"].astype(str) == kernel) & (f["estimator"].astype(str) == estimator)
        deg = (f["degenerate"].astype(str).str.lower().isin(("true", "1")) if "degenerate" in f.columns
               else f["kernel"].astype(str) != f["kernel"].astype(str))
        slope = f["slope"].astype(float)
        use = sel & ~deg & np.isfinite(slope)
        m, lo, hi, W = unit_ci(slope[use], units[use.to_numpy()])
        n_deg = int((sel & deg).sum())
        numbers[f"{fam}: slope, {kernel} kernel ({estimator})"] = (m, lo, hi)
        for k2, e2 in ((kernel, "averaged"), ("frequency", estimator)):
            s2 = (f["kernel"].astype(str) == k2) & (f["estimator"].astype(str) == e2) & ~deg & np.isfinite(slope)
            if s2.any() and (k2, e2) != (kernel, estimator):
                m2, lo2, hi2, _ = unit_ci(slope[s2], units[s2.to_numpy()])
                label = "label frequencies (reference)" if k2 == "frequency" else f"{k2} kernel (averaged)"
                numbers[f"{fam}: slope, {label}"] = (m2, lo2, hi2)
        curve = {}
        if rows is not None and not rows.empty:
            r = _of_family(rows, family, fam)
            r = r[(r["metric"].astype(str) == "tv_limit") & ~r["n_demos"].map(_is_inf)]
            for k2 in (kernel, "frequency"):
                rk = r[(r["kernel"].astype(str) == k2) & (r["estimator"].astype(str) == estimator)]
                if rk.empty:
                    continue
                g = rk.assign(n=rk["n_demos"].astype(float)).groupby("n")["mean"].mean()
                curve[k2] = {"n": [float(x) for x in g.index], "mean": [float(x) for x in g.to_numpy()]}
            if kernel in curve:
                n_arr, d_arr = np.array(curve[kernel]["n"]), np.array(curve[kernel]["mean"])
                n_max = int(n_arr.max()) if n_arr.size else n_max
                keep = n_arr >= FIT_N_MIN
                pl = fit_power_law(n_arr[keep], d_arr[keep], floor=False)
                if math.isfinite(pl.slope) and not pl.degenerate:
                    numbers[f"{fam}: slope of the world-averaged curve ({kernel}, {estimator})"] = (pl.slope, NAN, NAN)
        if W < MIN_UNITS:
            v, why = "inconclusive", _few(W)
        else:
            v = _decide(lo, hi, lambda a, b: a >= lo_b and b <= hi_b, lambda a, b: b < lo_b or a > hi_b)
            why = {"supported": "inside the band", "refuted": "outside the band: not n^-1/2 in the measured range",
                   "inconclusive": "the interval straddles the band's edge"}[v]
        txt = f"{fam}: slope {_ci_text((m, lo, hi))} over {W} worlds ({why})" + (
            f"; {n_deg} degenerate fit{'s' if n_deg != 1 else ''} left out" if n_deg else "")
        parts.append({"name": fam, "verdict": v, "text": txt})
        plot["families"][fam] = {"slopes": [float(x) for x in slope[use]], "ci": [m, lo, hi], "curve": curve}
    verdict = combine(parts) if parts else "inconclusive"
    note = _failed_note(fits_all)
    text = ("; ".join(p["text"] for p in parts) or "no fits") + (f"; {note}" if note else "")
    if n_max:
        text += f" (n = {FIT_N_MIN}..{n_max})"
    ref = [f"{k.split(':')[0]} {_ci_text(v)}" for k, v in numbers.items() if "label frequencies" in k]
    reference = ("label frequencies (K ≡ 1) converge to P(y | θ*) at the central-limit rate: slope "
                 + "; ".join(ref) if ref else "label frequencies (K ≡ 1): no fit in the table")
    return _claim("C1", C1_TITLE, verdict, C1_RULE.format(kernel=kernel, estimator=estimator), text, reference,
                  numbers, parts,
                  dict(plot, band=list(SLOPE_BAND), kernel=kernel, estimator=estimator))


# ---------------------------------------------------------------------- C2: the bias floor and Σ_θ*
C2_TITLE = ("The limit differs from the exact posterior by a bias floor with Σ_pretrain (kernel 'theory'), "
            "removed by Σ_θ* (kernel 'oracle')")
C2_RULE = (f"Per world, the exact floor TV(limit, oracle) of the theory's {{estimator}} estimate, weighted over the "
           f"concepts by their pretraining prior, with Σ_pretrain (F_pre) and with Σ_θ* (F_θ*), and the share removed "
           f"1 - F_θ*/F_pre; supported when the 95% t-interval over worlds of F_pre lies above {FLOOR_MIN:g} and "
           f"that of the share removed above {REMOVED_SHARE:g}, refuted when F_pre's lies below {FLOOR_MIN:g} (no "
           f"floor) or the share's below {REMOVED_SHARE:g}, else inconclusive (the averaged estimate, the default, is "
           f"the one the theory's bias term is about); " + FAMILY_RULE + ".")


def _world_floor(fl, kernel: str, estimator: str):
    """{world: prior-weighted mean floor over the concepts with prior > 0}."""
    s = fl[(fl["kernel"].astype(str) == kernel) & (fl["estimator"].astype(str) == estimator)]
    out = {}
    for w, g in s.groupby("_unit"):
        p = g["prior"].astype(float).to_numpy()
        v = g["floor_tv"].astype(float).to_numpy()
        ok = np.isfinite(v) & (p > 0)
        if ok.any():
            out[w] = float((p[ok] * v[ok]).sum() / p[ok].sum())
    return out


def verdict_c2(floors, rows=None, *, family: str = "preset", world: str = "world_seed",
               estimator: str = "averaged", also=("normalised",)) -> dict:
    """C2 from the sweep's ``floors`` table (floors.csv rows: world, concept, prior, kernel,
    estimator, floor_tv, ...) and, for the reference line, the main table ``rows`` (exact Bayes
    against the oracle at the largest n)."""
    floors_all = floors
    floors = _done(floors)
    rows = _done(rows)
    parts, numbers, plot = [], {}, {"families": {}}
    for fam in _families(floors, family):
        fl = _of_family(floors, family, fam)
        fl = fl.assign(_unit=_units(fl, "world" if "world" in fl.columns else world))
        fam_plot = {}
        for e in (estimator, *also):
            pre, own = _world_floor(fl, "theory", e), _world_floor(fl, "oracle", e)
            ws = [w for w in pre if w in own]
            t = np.array([pre[w] for w in ws])
            o = np.array([own[w] for w in ws])
            share = np.where(t > 0, 1.0 - o / np.where(t > 0, t, 1.0), NAN)
            ft, fo, fs = unit_ci(t, ws, lower=0.0), unit_ci(o, ws, lower=0.0), unit_ci(share, ws)
            numbers[f"{fam}: floor with Σ_pretrain ({e})"] = ft[:3]
            numbers[f"{fam}: floor with Σ_θ* ({e})"] = fo[:3]
            numbers[f"{fam}: share of the floor Σ_θ* removes ({e})"] = fs[:3]
            fam_plot[e] = {"worlds": ws, "theory": t.tolist(), "oracle": o.tolist()}
            if e == estimator:
                W = ft[3]
                if W < MIN_UNITS:
                    v, why = "inconclusive", _few(W)
                elif ft[2] < FLOOR_MIN:
                    v, why = "refuted", f"no floor (below {FLOOR_MIN:g})"
                elif ft[1] > FLOOR_MIN and fs[1] > REMOVED_SHARE:
                    v, why = "supported", "a floor, mostly removed by Σ_θ*"
                elif math.isfinite(fs[2]) and fs[2] < REMOVED_SHARE:
                    v, why = "refuted", f"Σ_θ* removes less than {REMOVED_SHARE:.0%} of it"
                else:
                    v, why = "inconclusive", "an interval straddles its threshold"
                txt = (f"{fam}: floor {_ci_text(ft)} with Σ_pretrain against {_ci_text(fo)} with Σ_θ*, share removed "
                       f"{_ci_text(fs)} over {W} worlds ({e} estimator; {why})")
                parts.append({"name": fam, "verdict": v, "text": txt})
        fq = _world_floor(fl, "frequency", "normalised")
        if fq:
            numbers[f"{fam}: floor of the label frequencies (reference)"] = unit_ci(list(fq.values()), list(fq),
                                                                                     lower=0.0)[:3]
        if rows is not None and not rows.empty:
            r = _of_family(rows, family, fam)
            r = r[(r["kernel"].astype(str) == "bayes-vs-oracle") & (r["metric"].astype(str) == "tv")
                  & ~r["n_demos"].map(_is_inf)]
            if not r.empty:
                nmax = r["n_demos"].astype(float).max()
                rr = r[r["n_demos"].astype(float) == nmax]
                numbers[f"{fam}: TV(exact Bayes, oracle) at n = {nmax:g} (reference)"] = unit_ci(
                    rr["mean"].astype(float), _units(rr, world), lower=0.0)[:3]
        plot["families"][fam] = fam_plot
    verdict = combine(parts) if parts else "inconclusive"
    note = _failed_note(floors_all)
    text = ("; ".join(p["text"] for p in parts) or "no floors") + (f"; {note}" if note else "")
    refs = [f"{k} {_ci_text(v)}" for k, v in numbers.items() if "(reference)" in k]
    reference = ("exact Bayes tends to the oracle (the floor's target) and the label frequencies' limit is P(y | θ*) "
                 "whatever x: " + "; ".join(refs)) if refs else "no reference rows"
    return _claim("C2", C2_TITLE, verdict, C2_RULE.format(estimator=estimator), text, reference, numbers, parts,
                  dict(plot, estimator=estimator, also=list(also)))


# ---------------------------------------------------------------------- C3: η²ε_θ ranks the floors
C3_TITLE = "The bias floor grows with η²ε_θ (rank correlation over concepts and worlds)"
C3_RULE = ("Spearman correlation between {x} and the exact floor of the theory kernel's {estimator} estimator over the "
           "(world, concept) pairs, with a 95% percentile interval from {n_boot} bootstrap resamples of whole worlds; "
           "supported when the interval lies above 0, refuted when it lies below 0, else inconclusive (also with < 3 "
           "worlds or < 4 pairs); " + FAMILY_RULE + ".")


def spearman_ci(x, y, units, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95):
    """(rho, lo, hi, n_pairs, n_units): Spearman's rho of the pairs (x, y) and its percentile
    interval from ``n_boot`` resamples of whole units (the pairs of a resampled unit come
    together; ``analysis._boot_counts`` draws the counts).  NaN where undefined (< 4 pairs,
    constant x or y; fewer than half the resamples defined)."""
    from scipy.stats import spearmanr

    from .analysis import _boot_counts

    x, y = np.asarray(x, float), np.asarray(y, float)
    u = np.asarray(units).astype(str)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, u = x[ok], y[ok], u[ok]
    ids, inv = np.unique(u, return_inverse=True)
    P, W = x.size, ids.size

    def rho_of(a, b):
        if a.size < 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return NAN
        return float(spearmanr(a, b)[0])

    rho = rho_of(x, y)
    if not math.isfinite(rho) or W < 2:
        return rho, NAN, NAN, P, W
    counts = _boot_counts(W, n_boot, seed)
    reps = []
    for c in counts:
        rep = np.repeat(np.arange(P), c[inv])
        reps.append(rho_of(x[rep], y[rep]))
    reps = np.array(reps)
    good = reps[np.isfinite(reps)]
    if good.size < n_boot / 2:
        return rho, NAN, NAN, P, W
    lo, hi = np.quantile(good, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(lo), float(hi), P, W


def verdict_c3(floors, *, family: str = "preset", world: str = "world_seed", estimator: str = "averaged",
               x: str = "eta2_eps", n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """C3 from the sweep's ``floors`` table (floor_tv and eta2_eps / eta2_eps_span per world and
    concept, theory kernel)."""
    floors_all = floors
    floors = _done(floors)
    parts, numbers, plot = [], {}, {"families": {}}
    for fam in _families(floors, family):
        fl = _of_family(floors, family, fam)
        fl = fl[fl["kernel"].astype(str) == "theory"]
        units = _units(fl, "world" if "world" in fl.columns else world)
        fam_plot = {}
        for e, col in ((estimator, x), (estimator, "eta2_eps_span"), ("normalised", x)):
            if col not in fl.columns:
                continue
            s = (fl["estimator"].astype(str) == e).to_numpy()
            if not s.any() or (e, col) in fam_plot:
                continue
            xs, ys = fl[col].astype(float).to_numpy()[s], fl["floor_tv"].astype(float).to_numpy()[s]
            rho, lo, hi, P, W = spearman_ci(xs, ys, units[s], n_boot, seed)
            label = f"{fam}: Spearman(η²ε_θ{' (span)' if col.endswith('span') else ''}, floor) ({e})"
            numbers[label] = (rho, lo, hi)
            fam_plot[(e, col)] = True
            if (e, col) == (estimator, x):
                plot["families"][fam] = {"x": xs.tolist(), "y": ys.tolist(), "rho": [rho, lo, hi]}
                if W < MIN_UNITS or P < 4:
                    v, why = "inconclusive", _few(W) if W < MIN_UNITS else f"only {P} pairs"
                else:
                    v = _decide(lo, hi, lambda a, b: a > 0, lambda a, b: b < 0)
                    why = {"supported": "the floor grows with η²ε_θ", "refuted": "the floor falls as η²ε_θ grows",
                           "inconclusive": "the interval includes 0"}[v]
                parts.append({"name": fam, "verdict": v,
                              "text": f"{fam}: Spearman {_ci_text((rho, lo, hi))} over {P} (world, concept) pairs in "
                                      f"{W} worlds ({why})"})
    verdict = combine(parts) if parts else "inconclusive"
    note = _failed_note(floors_all)
    text = ("; ".join(p["text"] for p in parts) or "no floors") + (f"; {note}" if note else "")
    reference = ("as a bound η²ε_θ is loose by orders of magnitude (docs/theory.md §20); the normalised estimator's "
                 "correlation is listed beside the averaged one: "
                 + "; ".join(f"{k.split(':')[0]} {_ci_text(v)}" for k, v in numbers.items() if "(normalised)" in k))
    rule = C3_RULE.format(x={"eta2_eps": "η²ε_θ", "eta2_eps_span": "η²ε_θ (span)"}.get(x, x), estimator=estimator,
                          n_boot=n_boot)
    return _claim("C3", C3_TITLE, verdict, rule, text, reference, numbers, parts,
                  dict(plot, estimator=estimator, x=x))


# ---------------------------------------------------------------------- C4: kernel vs label counting
C4_TITLE = "The kernel adds to label counting: closer to exact Bayes than the label frequencies (and in which worlds)"
C4_RULE = ("Per world at the largest finite n, the difference TV({kernel} kernel, exact Bayes) - TV(label frequencies, "
           "exact Bayes) of the {estimator} estimates; supported when its 95% t-interval over worlds lies below 0, "
           "refuted when above 0, else inconclusive; a world counts as a win (loss) when the two 95% intervals over "
           "its prompts do not overlap and the kernel's is the lower (higher), else a tie; " + FAMILY_RULE + ".")


def verdict_c4(rows, *, family: str = "preset", world: str = "world_seed", kernel: str = "theory",
               estimator: str = "normalised", baseline: str = "frequency") -> dict:
    """C4 from the sweep's main table (convergence.csv rows, one world per job)."""
    rows_all = rows
    rows = _done(rows)
    parts, numbers, plot = [], {}, {"families": {}}
    for fam in _families(rows, family):
        r = _of_family(rows, family, fam)
        r = r[(r["metric"].astype(str) == "tv") & ~r["n_demos"].map(_is_inf)
              & (r["estimator"].astype(str) == estimator)]
        r = r.assign(_unit=_units(r, world))
        if r.empty:
            continue
        nmax = float(r["n_demos"].astype(float).max())
        r = r[r["n_demos"].astype(float) == nmax]
        cols = ["mean", "ci_low", "ci_high"]
        # one row per world (several jobs of one world, e.g. prompt seeds as a grid key, are averaged)
        r = r.astype({c: float for c in cols})
        k = r[r["kernel"].astype(str) == kernel].groupby("_unit", sort=False)[cols].mean()
        b = r[r["kernel"].astype(str) == baseline].groupby("_unit", sort=False)[cols].mean()
        ws = [w for w in k.index if w in b.index]
        kd, bd = k.loc[ws, cols], b.loc[ws, cols]
        diff = (kd["mean"] - bd["mean"]).to_numpy()
        m, lo, hi, W = unit_ci(diff, ws)
        numbers[f"{fam}: TV(kernel, Bayes) at n = {nmax:g}"] = unit_ci(kd["mean"], ws, lower=0.0)[:3]
        numbers[f"{fam}: TV(label frequencies, Bayes) at n = {nmax:g} (reference)"] = unit_ci(bd["mean"], ws,
                                                                                             lower=0.0)[:3]
        numbers[f"{fam}: kernel minus label frequencies"] = (m, lo, hi)
        wins = [w for w in ws if kd.loc[w, "ci_high"] < bd.loc[w, "ci_low"]]
        losses = [w for w in ws if kd.loc[w, "ci_low"] > bd.loc[w, "ci_high"]]
        ties = [w for w in ws if w not in wins and w not in losses]
        if W < MIN_UNITS:
            v, why = "inconclusive", _few(W)
        else:
            v = _decide(lo, hi, lambda a, c: c < 0, lambda a, c: a > 0)
            why = {"supported": "the kernel is closer", "refuted": "the label frequencies are closer",
                   "inconclusive": "the interval includes 0"}[v]
        parts.append({"name": fam, "verdict": v, "wins": wins, "losses": losses, "ties": ties,
                      "text": f"{fam}: kernel minus label frequencies {_ci_text((m, lo, hi))} at n = {nmax:g} over "
                              f"{W} worlds ({why}); the kernel wins in {len(wins)} worlds"
                              f"{' (' + ', '.join(wins) + ')' if wins else ''}, loses in {len(losses)}"
                              f"{' (' + ', '.join(losses) + ')' if losses else ''}, ties in {len(ties)}"})
        plot["families"][fam] = {"worlds": ws, "n": nmax, "kernel": kd.to_numpy().tolist(),
                                 "baseline": bd.to_numpy().tolist()}
    verdict = combine(parts) if parts else "inconclusive"
    note = _failed_note(rows_all)
    text = ("; ".join(p["text"] for p in parts) or "no rows") + (f"; {note}" if note else "")
    refs = [f"{k.split(':')[0]} {_ci_text(v)}" for k, v in numbers.items() if "(reference)" in k]
    reference = "label frequencies (K ≡ 1, the null model) against exact Bayes: " + "; ".join(refs)
    return _claim("C4", C4_TITLE, verdict, C4_RULE.format(kernel=kernel, estimator=estimator), text, reference,
                  numbers, parts,
                  dict(plot, kernel=kernel, baseline=baseline))


# ---------------------------------------------------------------------- C5: a trained transformer
C5_TITLE = ("A transformer trained to near the Bayes loss predicts like the kernel estimate rather than like exact "
            "Bayes")
C5_RULE = (f"Per training seed at the largest n, d = TV(model, kernel) - TV(model, exact Bayes) (the theory kernel's "
           f"normalised estimate, in-distribution prompts); supported when the 95% t-interval over seeds of d lies "
           f"below 0 (the model shares the kernel's departures from Bayes), refuted when it lies above 0 (the model "
           f"is closer to exact Bayes than to the kernel), else inconclusive; also inconclusive with < 3 seeds or "
           f"when a run's validation loss is more than {NEAR_BAYES_GAP:g} nats/token above the Bayes floor (not near "
           f"the Bayes loss).")
_C5_SERIES = (("tv_bayes", "TV(model, exact Bayes)"), ("tv_kernel", "TV(model, kernel)"),
              ("tv_frequency", "TV(model, label frequencies)"), ("tv_kernel_bayes", "TV(kernel, exact Bayes)"))


def verdict_c5(rows, *, seed_col: str = "train.seed", gaps=None, group: str | None = None) -> dict:
    """C5 from an icl-eval sweep's main table (icl_vs_bayes.csv rows: n_demos, concepts, metric,
    mean, one job per training seed in ``seed_col``) and ``gaps`` ({seed: the run's final gap
    to the Bayes floor, nats/token}; unknown seeds are not checked)."""
    rows_all = rows
    rows = _done(rows)
    numbers, plot = {}, {"series": {}}
    if rows is None or rows.empty:
        return _claim("C5", C5_TITLE, "inconclusive", C5_RULE, "no icl-eval rows" + (
            f"; {_failed_note(rows_all)}" if _failed_note(rows_all) else ""), "", {}, [], plot)
    groups = list(dict.fromkeys(rows["concepts"].astype(str)))
    g = group or next((x for x in ("id", "prior") if x in groups), groups[0])
    r = rows[rows["concepts"].astype(str) == g].assign(_unit=_units(rows[rows["concepts"].astype(str) == g], seed_col))
    ns = sorted({float(n) for n in r["n_demos"].astype(float) if n >= 1})
    for metric, label in _C5_SERIES:
        rm = r[r["metric"].astype(str) == metric]
        series = []
        for n in ns:
            rn = rm[rm["n_demos"].astype(float) == n]
            series.append(list(unit_ci(rn["mean"].astype(float), rn["_unit"], lower=0.0)[:3]) if not rn.empty
                          else [NAN] * 3)
        plot["series"][metric] = {"label": label, "n": ns, "ci": series}
    n_use = next((n for n in reversed(ns) if {"tv_bayes", "tv_kernel"} <= set(
        r[r["n_demos"].astype(float) == n]["metric"].astype(str))), None)
    if n_use is None:
        return _claim("C5", C5_TITLE, "inconclusive", C5_RULE, f"concepts {g}: no n with both TV(model, Bayes) and "
                      "TV(model, kernel) (the kernel could not be computed?)", "", numbers, [], plot)
    at = r[r["n_demos"].astype(float) == n_use]
    piv = at.pivot_table(index="_unit", columns="metric", values="mean", aggfunc="mean")
    d = (piv["tv_kernel"] - piv["tv_bayes"]).dropna()
    m, lo, hi, S = unit_ci(d.to_numpy(), list(d.index))
    for metric, label in _C5_SERIES:
        if metric in piv.columns:
            col = piv[metric].dropna()
            numbers[f"{label} at n = {n_use:g}" + (" (reference)" if metric in ("tv_frequency", "tv_kernel_bayes")
                                                  else "")] = unit_ci(col.to_numpy(), list(col.index), lower=0.0)[:3]
    numbers[f"TV(model, kernel) - TV(model, exact Bayes) at n = {n_use:g}"] = (m, lo, hi)
    for n in ns:
        for metric, label in _C5_SERIES[:2]:
            ci = plot["series"][metric]["ci"][ns.index(n)]
            if n != n_use:
                numbers[f"{label} at n = {n:g}"] = tuple(ci)
    gap_vals = {}
    if gaps is not None:
        gap_vals = {str(k): _f(v) for k, v in (gaps.items() if isinstance(gaps, dict) else gaps)}
    seeds = [str(s) for s in piv.index]
    known = [gap_vals[s] for s in seeds if s in gap_vals and math.isfinite(gap_vals[s])]
    if known:
        numbers["gap to the Bayes floor (nats/token)"] = unit_ci(known)[:3]
    far = [s for s in seeds if s in gap_vals and gap_vals[s] > NEAR_BAYES_GAP]
    if S < MIN_UNITS:
        v, why = "inconclusive", _few(S, "training seeds")
    elif far:
        v, why = "inconclusive", (f"runs {', '.join(far)} are not near the Bayes loss (gap > {NEAR_BAYES_GAP:g} "
                                  f"nats/token)")
    else:
        v = _decide(lo, hi, lambda a, b: b < 0, lambda a, b: a > 0)
        why = {"supported": "closer to the kernel", "refuted": "closer to exact Bayes than to the kernel",
               "inconclusive": "the interval includes 0"}[v]
    tvb = numbers.get(f"TV(model, exact Bayes) at n = {n_use:g}", (NAN,) * 3)
    tvk = numbers.get(f"TV(model, kernel) at n = {n_use:g}", (NAN,) * 3)
    text = (f"concepts {g}, n = {n_use:g}, {S} training seeds: TV(model, exact Bayes) {_ci_text(tvb)}, "
            f"TV(model, kernel) {_ci_text(tvk)}, difference {_ci_text((m, lo, hi))} ({why})")
    if known:
        text += f"; gap to the Bayes floor {_ci_text(numbers['gap to the Bayes floor (nats/token)'])} nats/token"
    note = _failed_note(rows_all)
    text += f"; {note}" if note else ""
    refs = [f"{k} {_ci_text(v)}" for k, v in numbers.items() if "(reference)" in k]
    reference = ("the label frequencies and the kernel's own distance to exact Bayes beside the model: "
                 + "; ".join(refs))
    parts = [{"name": f"concepts {g}", "verdict": v, "text": text}]
    return _claim("C5", C5_TITLE, v, C5_RULE, text, reference, numbers, parts, dict(plot, group=g, n=n_use))


# ---------------------------------------------------------------------- C6: heads that regress
C6_TITLE = ("Some attention heads reconstruct the prediction beyond the uniform vote and correlate with the kernel "
            "(with the shuffled-weights control)")
C6_RULE = ("From simkernel measure over training seeds (measure.json): supported when its pooled verdict is 'detected' "
           "(alignment.POOLED_RULE: the head chosen by agreement with exact Bayes beats the uniform vote and its own "
           "weights shuffled within each prompt, in every run and in the t-interval over runs) and the 95% "
           "t-interval over runs of the held-out within-prompt Pearson correlation with the theory kernel "
           "K(x_test, x_i) of the head chosen (on the selection prompts) for that correlation lies above 0; refuted "
           "when the pooled verdict is 'not detected' or that correlation's interval lies below 0; inconclusive "
           f"otherwise ('mixed'), with < 3 training seeds, or when a run's validation loss is more than "
           f"{NEAR_BAYES_GAP:g} nats/token above the Bayes floor (a model far from the Bayes loss is not the "
           f"claim's model).")


def _measure_runs(meta: dict) -> dict:
    """{run name: its best.csv rows} from a measure.json (several runs, or one)."""
    if "runs" in meta and isinstance(meta["runs"], dict):
        return {name: r.get("best", []) for name, r in meta["runs"].items()}
    if "best" in meta:
        return {"run": meta["best"]}
    return {}


def verdict_c6(pooled, measure_meta: dict, *, target: str = "bayes", kernel: str = "theory", gaps=None) -> dict:
    """C6 from a measure job's pooled table (pooled.csv rows: target, reference, difference, lo,
    hi, head_agreement, reference_agreement, n_runs), its ``measure.json`` (``summary`` with the
    pooled verdict, ``runs`` with each run's best heads) and ``gaps`` ({run name: final gap to
    the Bayes floor, nats/token}; unknown runs are not checked)."""
    pooled = _done(pooled)
    meta = measure_meta or {}
    summary = meta.get("summary") or meta.get("pooled") or {}
    pv = summary.get("verdict", {}) if isinstance(summary, dict) else {}
    word = pv.get("verdict")
    n_runs = int(pv.get("n_runs") or summary.get("n_runs") or 0)
    target = pv.get("target") or target
    numbers, plot = {}, {"bars": []}
    if pooled is not None and not pooled.empty:
        p = pooled[pooled["target"].astype(str) == target]
        for ref in ("uniform", "shuffled", "theory_clipped", "similarity", "best"):
            row = p[p["reference"].astype(str) == ref]
            if row.empty:
                continue
            row = row.iloc[0]
            label = {"uniform": "uniform vote", "shuffled": "shuffled weights",
                     "theory_clipped": "clipped theory kernel",
                     "similarity": "prediction similarity", "best": "best non-negative weights"}[ref]
            numbers[f"head minus {label} (agreement with {target})"] = (row["difference"], row["lo"], row["hi"])
            plot["bars"].append({"reference": label, "ci": [_f(row["difference"]), _f(row["lo"]), _f(row["hi"])],
                                 "head": _f(row["head_agreement"]), "ref": _f(row["reference_agreement"])})
        head = p["head_agreement"].astype(float)
        if not head.empty:
            numbers[f"chosen head's agreement with {target} (mean over runs)"] = (float(head.iloc[0]), NAN, NAN)
    corr = []
    for name, best in _measure_runs(meta).items():
        for b in best:
            if str(b.get("measure")) == "pearson" and str(b.get("reference")) == kernel:
                corr.append((name, _f(b.get("report"))))
    cm, clo, chi, cn = unit_ci([c for _, c in corr], [n for n, _ in corr]) if corr else (NAN, NAN, NAN, 0)
    numbers[f"held-out Pearson(head weights, {kernel} kernel)"] = (cm, clo, chi)
    plot["corr"] = [c for _, c in corr]
    n_units = max(n_runs, cn)
    gaps = {str(k): _f(g) for k, g in (gaps or {}).items()}
    known = [g for g in gaps.values() if math.isfinite(g)]
    if known:
        numbers["gap to the Bayes floor (nats/token)"] = unit_ci(known)[:3]
    far = sorted(k for k, g in gaps.items() if g > NEAR_BAYES_GAP)
    if word is None:
        v, why = "inconclusive", "no pooled verdict in measure.json"
    elif n_units < MIN_UNITS:
        v, why = "inconclusive", _few(n_units, "training seeds")
    elif far:
        v, why = "inconclusive", (f"runs {', '.join(far)} are not near the Bayes loss (gap > {NEAR_BAYES_GAP:g} "
                                  f"nats/token)")
    elif word == "not detected" or (math.isfinite(chi) and chi < 0):
        v, why = "refuted", ("no head beats the uniform vote and its shuffled control" if word == "not detected"
                             else "head weights anti-correlate with the kernel")
    elif word == "detected" and math.isfinite(clo) and clo > 0:
        v, why = "supported", "a head beats both controls and its weights follow the kernel"
    else:
        v, why = "inconclusive", (f"pooled verdict {word!r}" if word != "detected" else
                                  "the correlation's interval includes 0")
    u = numbers.get(f"head minus uniform vote (agreement with {target})", (NAN,) * 3)
    s = numbers.get(f"head minus shuffled weights (agreement with {target})", (NAN,) * 3)
    text = (f"{n_units} training seeds: pooled verdict {word!r}; head minus uniform vote {_ci_text(u)}, minus its "
            f"shuffled weights {_ci_text(s)}; held-out Pearson with the {kernel} kernel "
            f"{_ci_text((cm, clo, chi))} ({why})")
    refs = [b for b in plot["bars"] if b["reference"] in ("uniform vote", "clipped theory kernel",
                                                          "best non-negative weights")]
    reference = ("agreement with " + target + " of the reference votes beside the head (" + _fmt(
        refs[0]["head"] if refs else NAN) + "): " + "; ".join(f"{b['reference']} {_fmt(b['ref'])}" for b in refs))
    return _claim("C6", C6_TITLE, v, C6_RULE, text, reference, numbers,
                  [{"name": f"target {target}", "verdict": v, "text": text}], dict(plot, target=target))


# ---------------------------------------------------------------------- C7: the phenomena
C7_RULE = ("For each setting, the phenomenon's effect with its 95% interval over worlds (phenomena.py's paired "
           "differences, same prompts) for exact Bayes (what in-context learning is in the simulator) and for the "
           "theory kernel: a setting supports the kernel account when both effects exclude 0 with the same sign, "
           "refutes it when both exclude 0 with opposite signs (or, for order, when exact Bayes is order-sensitive, "
           "which the order-invariant kernel cannot follow), and is inconclusive otherwise; settings where exact "
           "Bayes shows no effect or is undefined have nothing to explain and do not count. The phenomenon: refuted "
           "when any setting refutes, supported when every counted setting supports (at least one), else "
           "inconclusive; inconclusive with < 3 worlds.")
C7_TITLES = {
    "retrieval": "Retrieving demonstrations similar to x_test acts like a smaller kernel bandwidth (less bias)",
    "labels": "Changing the labels of the demonstrations misdirects the weighted vote",
    "shift": "Out-of-distribution inputs hurt (larger ε)",
    "order": "The kernel account and demonstration order (the kernel is order-invariant)",
    "prior": "A concept rare in pretraining is learned worse in context",
}
#: what each phenomenon's effect is, and the sign the kernel account predicts
C7_EFFECTS = {
    "retrieval": ("TV to the oracle, retrieved at the smallest bandwidth minus random", -1),
    "labels": ("mass on the remapped minus the original label, largest fraction", +1),
    "shift": ("accuracy at the largest shift minus unshifted", -1),
    "order": ("TV(original order, permuted order)", 0),
    "prior": ("TV to the oracle at the smallest prior minus the uniform prior", +1),
}


def _eff(d) -> dict | None:
    """A phenomena paired / row dict -> {'ci': [mean, lo, hi], 'n_worlds', 'sign'} (sign: +1 / -1
    when the interval excludes 0, else 0); None when it holds no number."""
    if not isinstance(d, dict) or not math.isfinite(_f(d.get("mean"))) or int(d.get("n_prompts", 1) or 0) == 0:
        return None
    m, lo, hi = _f(d.get("mean")), _f(d.get("ci_low")), _f(d.get("ci_high"))
    sign = 1 if lo > 0 else -1 if hi < 0 else 0
    return {"ci": [m, lo, hi], "n_worlds": int(d.get("n_worlds", 0) or 0), "sign": sign}


def _c7_settings(name: str, v: dict) -> list[dict]:
    """[{'setting', 'bayes', 'kernel', 'frequency'}] (each an :func:`_eff` or None) of one
    phenomenon's verdict dict."""
    out = []
    if name == "retrieval":
        for sel in ("kernel", "similarity", "overlap"):
            res = v.get(sel)
            if isinstance(res, dict):
                out.append({"setting": f"{sel} selector, τ = {v.get('bandwidth')}", **{
                    p: _eff(res.get(p, {}).get("tv_oracle_minus_random")) for p in ("bayes", "kernel", "frequency")}})
    elif name == "labels":
        for mode in ("flip", "format"):
            res = v.get(mode)
            if isinstance(res, dict):
                out.append({"setting": f"{mode}, fraction {v.get('fraction')}",
                            **{p: _eff(res.get(p)) for p in ("bayes", "kernel", "frequency")}})
    elif name == "shift":
        for key, res in v.items():
            if "/" in str(key) and isinstance(res, dict):
                out.append({"setting": f"{key}, shift {v.get('shift')}", **{
                    p: _eff(res.get(p, {}).get("shifted_minus_clean")) for p in ("bayes", "kernel", "frequency")}})
    elif name == "prior":
        preds = v.get("predictors", {})
        row = {"setting": "smallest prior vs uniform"}
        for p in ("bayes", "kernel", "frequency"):
            vs = preds.get(p, {}).get("vs_uniform", [])
            row[p] = _eff(vs[-1]) if vs else None
        out.append(row)
    elif name == "order":
        checks = v.get("checks", {})
        kernel_zero = bool(checks.get("passed")) and _f(checks.get("kernel_max_tv", NAN)) < INVARIANCE_TOL
        for world, key in (("restart", "bayes_restart"), ("restart-free", "bayes_restart_free")):
            b = _eff(v.get(key))
            exact = b is not None and (b["ci"][0] < INVARIANCE_TOL or (
                world == "restart" and _f(checks.get("restart_bayes_max_tv", NAN)) < INVARIANCE_TOL))
            if exact:
                b["sign"] = 0                      # exactly invariant, not a (tiny) effect
            k = ({"ci": [0.0, 0.0, 0.0], "n_worlds": b["n_worlds"] if b else 0, "sign": 0, "exact_zero": True}
                 if kernel_zero else _eff(v.get("kernel_restart_free")))
            out.append({"setting": f"{world} worlds", "bayes": b, "kernel": k, "frequency": None,
                        "order": True, "invariant_bayes": exact})
    return out


def _c7_setting_verdict(s: dict) -> tuple[str | None, str]:
    """(verdict or None when the setting does not count, why)."""
    b, k = s.get("bayes"), s.get("kernel")
    if b is None:
        return None, "exact Bayes undefined (every prompt impossible under the pretraining concepts)"
    if b["n_worlds"] < MIN_UNITS:
        return "inconclusive", _few(b["n_worlds"])
    if s.get("order"):
        if s.get("invariant_bayes") and k is not None and k.get("exact_zero"):
            return "supported", "exact Bayes and the kernel are both exactly order-invariant"
        if b["sign"] > 0:
            return "refuted", "exact Bayes is order-sensitive; the kernel is invariant by construction"
        return None, "exact Bayes shows no detectable order effect"
    if b["sign"] == 0:
        return None, ("exact Bayes shows no detectable effect" + (
            "; the kernel does" if k is not None and k["sign"] != 0 else ""))
    if k is None:
        return "inconclusive", "no kernel number"
    if k["sign"] == b["sign"]:
        return "supported", "the kernel shows exact Bayes' effect"
    if k["sign"] == -b["sign"]:
        return "refuted", "the kernel's effect has the opposite sign"
    return "inconclusive", "the kernel shows no detectable effect"


def verdict_c7(verdicts) -> list[dict]:
    """One claim per phenomenon from the phenomena sweep's ``verdicts`` table (name, text,
    verdict_json: the phenomenon's verdict dict as JSON)."""
    verdicts = _done(verdicts)
    out = []
    if verdicts is None or verdicts.empty:
        return out
    for _, row in verdicts.iterrows():
        name = str(row["name"])
        try:
            v = json.loads(row["verdict_json"]) if isinstance(row["verdict_json"], str) else dict(row["verdict_json"])
        except (TypeError, ValueError):
            v = {}
        settings = _c7_settings(name, v)
        parts, numbers = [], {}
        effect, sign = C7_EFFECTS.get(name, ("effect", 0))
        for s in settings:
            verdict, why = _c7_setting_verdict(s)
            for p in ("bayes", "kernel", "frequency"):
                e = s.get(p)
                if e is not None:
                    label = {"bayes": "exact Bayes", "kernel": "kernel",
                             "frequency": "label frequencies (reference)"}[p]
                    numbers[f"{s['setting']}: {label}"] = tuple(e["ci"])
            b, k = s.get("bayes"), s.get("kernel")
            few = b is not None and b["n_worlds"] < MIN_UNITS
            parts.append({"name": s["setting"], "verdict": verdict or "not counted", "few_worlds": few,
                          "text": f"{s['setting']}: exact Bayes {_ci_text(b['ci']) if b else 'undefined'}, kernel "
                                  f"{_ci_text(k['ci']) if k else 'n/a'} ({why})"})
        counted = [p for p in parts if p["verdict"] in VERDICTS]
        if not settings:
            verdict, head = "inconclusive", "no settings in the phenomenon's verdict"
        elif counted and all(p["few_worlds"] for p in counted):
            verdict, head = "inconclusive", "too few worlds"
        elif not counted:
            verdict, head = "inconclusive", "exact Bayes shows the effect in no setting: nothing to explain"
        else:
            verdict = combine(counted)
            head = f"{sum(p['verdict'] == 'supported' for p in counted)} of {len(counted)} counted settings support"
        predicts = {1: "> 0", -1: "< 0", 0: "0: the kernel estimate is order-invariant"}[sign]
        text = (f"{effect} (the kernel account predicts {predicts}): {head}; "
                + "; ".join(p["text"] for p in parts))
        reference = ("the phenomenon's own verdict: " + str(row.get("text", "")) if str(row.get("text", "")) else
                     "label frequencies beside every predictor")
        plot = {"settings": [{"setting": s["setting"], **{p: (s[p]["ci"] if s.get(p) else None)
                                                         for p in ("bayes", "kernel", "frequency")}}
                             for s in settings], "effect": effect}
        out.append(_claim(f"C7-{name}", C7_TITLES.get(name, name), verdict, C7_RULE, text, reference, numbers,
                          parts, plot, phenomenon_rule=v.get("rule", "")))
    order = {n: i for i, n in enumerate(PHENOMENA)}
    return sorted(out, key=lambda c: order.get(c["claim"][3:], 99))


def not_run(claim: str, title: str, why: str) -> dict:
    """A claim whose experiment did not run: inconclusive, saying why."""
    return _claim(claim, title, "inconclusive", "no data: the experiment did not run.", why, "", {}, [], {})


# ---------------------------------------------------------------------- figures
def _figure(claim: dict, path) -> Path:
    """Draw ``claim``'s figure from its ``plot`` data into the PNG ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plots import DPI, _metadata

    c, plot = claim["claim"], claim.get("plot") or {}
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    if c == "C1" and plot.get("families"):
        ax, ax2 = fig.subplots(1, 2)
        lo_b, hi_b = plot.get("band", SLOPE_BAND)
        for i, (fam, d) in enumerate(plot["families"].items()):
            col = colours[i % len(colours)]
            for k, style in ((plot.get("kernel", "theory"), "-"), ("frequency", "--")):
                cur = d["curve"].get(k)
                if cur:
                    ax.plot(cur["n"], cur["mean"], style, color=col if k != "frequency" else "0.45",
                            label=f"{fam}: {k}" if k != "frequency" else f"{fam}: label frequencies")
            ys = d["slopes"]
            ax2.plot(np.full(len(ys), i) + np.linspace(-0.15, 0.15, max(len(ys), 1))[:len(ys)], ys, "o", color=col,
                     ms=3, alpha=0.6)
            m, lo, hi = d["ci"]
            if math.isfinite(_f(lo)):
                ax2.errorbar([i + 0.3], [m], yerr=[[m - lo], [hi - m]], fmt="s", color="black", capsize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (demonstrations)")
        ax.set_ylabel("mean TV(estimate_n, its limit)")
        ax.legend(fontsize=7, frameon=False)
        ax.grid(True, alpha=0.3)
        ax2.axhspan(lo_b, hi_b, color="tab:green", alpha=0.12, label="supported band")
        ax2.axhline(-0.5, color="tab:green", lw=0.8)
        ax2.set_xticks(range(len(plot["families"])), list(plot["families"]))
        ax2.set_ylabel("fitted slope per world (square: mean, 95% CI)")
        ax2.grid(True, alpha=0.3)
    elif c == "C2" and plot.get("families"):
        ests = [plot.get("estimator", "averaged"), *plot.get("also", [])]
        axes = fig.subplots(1, len(ests), squeeze=False)[0]
        for ax, e in zip(axes, ests):
            for i, (fam, d) in enumerate(plot["families"].items()):
                dd = d.get(e)
                if not dd:
                    continue
                col = colours[i % len(colours)]
                for t, o in zip(dd["theory"], dd["oracle"]):
                    ax.plot([0, 1], [t, o], "-o", color=col, alpha=0.35, ms=3)
                ax.plot([], [], "-o", color=col, label=fam)
            ax.set_xticks([0, 1], ["Σ_pretrain (theory)", "Σ_θ* (oracle)"])
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            ax.set_ylabel(f"exact floor TV(limit, oracle), {e}")
            ax.set_title(f"{e} estimator: one line per world", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, frameon=False)
    elif c == "C3" and plot.get("families"):
        ax = fig.subplots()
        for i, (fam, d) in enumerate(plot["families"].items()):
            rho = d["rho"]
            ax.plot(d["x"], d["y"], "o", ms=3.5, alpha=0.6, color=colours[i % len(colours)],
                    label=f"{fam}: Spearman {_ci_text(rho)}")
        ax.set_xscale("log")
        ax.set_xlabel("η²ε_θ (theory's bias term)")
        ax.set_ylabel(f"exact floor TV(limit, oracle), {plot.get('estimator', 'averaged')}")
        ax.legend(fontsize=7, frameon=False)
        ax.grid(True, alpha=0.3)
    elif c == "C4" and plot.get("families"):
        fams = list(plot["families"].items())
        axes = fig.subplots(1, len(fams), squeeze=False)[0]
        for ax, (fam, d) in zip(axes, fams):
            k, b = np.array(d["kernel"], float).reshape(-1, 3), np.array(d["baseline"], float).reshape(-1, 3)
            x = np.arange(len(k))
            ax.errorbar(x - 0.1, k[:, 0], yerr=[k[:, 0] - k[:, 1], k[:, 2] - k[:, 0]], fmt="o", ms=3, capsize=2,
                        color="tab:blue", label="theory kernel")
            ax.errorbar(x + 0.1, b[:, 0], yerr=[b[:, 0] - b[:, 1], b[:, 2] - b[:, 0]], fmt="s", ms=3, capsize=2,
                        color="0.45", label="label frequencies")
            ax.set_xticks(x, [str(w) for w in d["worlds"]], fontsize=6)
            ax.set_xlabel("world seed")
            ax.set_ylabel(f"TV to exact Bayes at n = {_fmt(d['n'])}")
            ax.set_title(fam, fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, frameon=False)
    elif c == "C5" and plot.get("series"):
        ax = fig.subplots()
        styles = {"tv_bayes": ("black", "-"), "tv_kernel": ("tab:blue", "-"), "tv_frequency": ("0.45", "--"),
                  "tv_kernel_bayes": ("tab:blue", ":")}
        for metric, s in plot["series"].items():
            ci = np.array(s["ci"], float).reshape(-1, 3)
            if not np.isfinite(ci[:, 0]).any():
                continue
            col, ls = styles.get(metric, ("tab:red", "-"))
            ax.plot(s["n"], ci[:, 0], ls, marker="o", ms=3, color=col, label=s["label"])
            ax.fill_between(s["n"], ci[:, 1], ci[:, 2], color=col, alpha=0.12, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (demonstrations)")
        ax.set_ylabel("total variation (95% CI over training seeds)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    elif c == "C6" and (plot.get("bars") or plot.get("corr")):
        ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 1])
        bars = plot.get("bars", [])
        for i, b in enumerate(bars):
            m, lo, hi = b["ci"]
            ax.errorbar([m], [i], xerr=[[m - lo], [hi - m]] if math.isfinite(lo) else None, fmt="o", capsize=4,
                        color="tab:blue")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(bars)), [b["reference"] for b in bars])
        ax.set_xlabel(f"chosen head minus reference vote: agreement with {plot.get('target', 'bayes')} (95% CI)")
        ax.grid(True, alpha=0.3)
        corr = plot.get("corr", [])
        ax2.plot(np.zeros(len(corr)), corr, "o", color="tab:blue")
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xticks([0], ["runs"])
        ax2.set_ylabel("held-out Pearson(head, theory kernel)")
        ax2.grid(True, alpha=0.3)
    elif c.startswith("C7") and plot.get("settings"):
        ax = fig.subplots()
        sets = plot["settings"]
        for j, (p, col, lab) in enumerate((("bayes", "black", "exact Bayes"), ("kernel", "tab:blue", "theory kernel"),
                                           ("frequency", "0.5", "label frequencies"))):
            first = True
            for i, s in enumerate(sets):
                ci = s.get(p)
                if not ci or not math.isfinite(_f(ci[0])):
                    continue
                m, lo, hi = (_f(x) for x in ci)
                err = [[max(m - lo, 0)], [max(hi - m, 0)]] if math.isfinite(lo) and math.isfinite(hi) else None
                ax.errorbar([m], [i + (j - 1) * 0.22], xerr=err, fmt="o", ms=4, capsize=3, color=col,
                            label=lab if first else None)
                first = False
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(sets)), [s["setting"] for s in sets], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(plot.get("effect", "effect") + " (95% CI over worlds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    else:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no data for a figure", ha="center", va="center", fontsize=12, color="0.4")
        ax.set_axis_off()
    fig.suptitle(f"{c}: {claim.get('verdict', '')}", fontsize=10)
    FigureCanvasAgg(fig)
    path = Path(path)
    with open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, metadata=_metadata("png"))
    return path


# ---------------------------------------------------------------------- the page
#: Sets data-images-loaded="k/n" on <body> once the page has loaded (k images decoded): what
#: check_in_browser reads back from the dumped DOM.  Inline: the page needs no network.
_LOAD_SCRIPT = ("window.addEventListener('load',function(){var im=document.images,k=0;"
                "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)k++;}"
                "document.body.setAttribute('data-images-loaded',k+'/'+im.length);});")
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #d0d0d0;padding:.3em .55em;
text-align:left;vertical-align:top}th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.v{font-weight:600;padding:.1em .45em;border-radius:3px;white-space:nowrap}
.supported{background:#dff3e3;color:#14532d}.refuted{background:#fde2e1;color:#7f1d1d}
.inconclusive{background:#fff4d6;color:#713f12}.not-counted{background:#eee;color:#555}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto;font-size:.85em;border:1px solid #e3e3e3}
img{max-width:100%;border:1px solid #eee}.rule{color:#333;font-size:.93em}.meta{color:#555;font-size:.88em}
"""


def _vspan(v: str) -> str:
    cls = v if v in VERDICTS else "not-counted"
    return f'<span class="v {cls}">{html.escape(v)}</span>'


def _commands_of(commands: dict, claim: str) -> list[str]:
    got = commands.get(claim, commands.get(claim.split("-")[0], commands.get("*", [])))
    return [got] if isinstance(got, str) else list(got)


def render_html(claims: list[dict], *, meta: dict, commands: dict) -> str:
    """The page: a verdict table (id "verdicts", one row per claim) and one <section> per claim
    (figure, numbers, verdict, rule, reference, the commands that reproduce it).  No external
    URL: inline CSS, figures as relative PNG paths."""
    e = html.escape
    title = meta.get("title", "simkernel: the kernel-regression theory of in-context learning, verified")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style>", f"<script>{_LOAD_SCRIPT}</script>", "</head><body>", f"<h1>{e(title)}</h1>"]
    sub = meta.get("subtitle")
    if sub:
        out.append(f'<p class="meta">{e(sub)}</p>')
    out.append(f'<table id="verdicts" data-claims="{len(claims)}"><thead><tr><th>claim</th><th>statement</th>'
               "<th>verdict</th><th>in parts</th></tr></thead><tbody>")
    for c in claims:
        sid = c["claim"].lower()
        parts = "; ".join(f"{p['name']}: {p['verdict']}" for p in c.get("parts", []) if len(c.get("parts", [])) > 1)
        out.append(f'<tr data-claim="{e(c["claim"])}"><td><a href="#{e(sid)}">{e(c["claim"])}</a></td>'
                   f"<td>{e(c['title'])}</td><td>{_vspan(c['verdict'])}</td><td>{e(parts)}</td></tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="rule"><b>How verdicts are decided.</b> Each claim states its rule below. {e(CI_NOTE)}; '
               f"{e(FAMILY_RULE)}.</p>")
    allc = _commands_of(commands, "*")
    if allc:
        out.append("<p>Everything on this page, in one command:</p><pre>" + e("\n".join(allc)) + "</pre>")
    for c in claims:
        sid = c["claim"].lower()
        out.append(f'<section id="{e(sid)}"><h2>{e(c["claim"])}: {e(c["title"])}</h2>')
        out.append(f"<p>Verdict: {_vspan(c['verdict'])} {e(c['text'])}</p>")
        out.append(f'<p><img src="{e(c["figure"])}" alt="figure of {e(c["claim"])}"></p>')
        if c.get("numbers"):
            out.append("<table><thead><tr><th>number</th><th>estimate</th><th>95% CI</th></tr></thead><tbody>")
            for name, (est, lo, hi) in c["numbers"].items():
                ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(_f(lo)) and math.isfinite(_f(hi)) else "n/a"
                out.append(f'<tr><td>{e(name)}</td><td class="num">{e(_fmt(est))}</td>'
                           f'<td class="num">{e(ci)}</td></tr>')
            out.append("</tbody></table>")
        if len(c.get("parts", [])) > 1:
            out.append("<table><thead><tr><th>part</th><th>verdict</th><th>numbers</th></tr></thead><tbody>")
            for p in c["parts"]:
                out.append(f"<tr><td>{e(str(p['name']))}</td><td>{_vspan(p['verdict'])}</td>"
                           f"<td>{e(p['text'])}</td></tr>")
            out.append("</tbody></table>")
        out.append(f'<p class="rule"><b>Rule.</b> {e(c["rule"])}</p>')
        if c.get("reference"):
            out.append(f'<p class="rule"><b>Reference.</b> {e(c["reference"])}</p>')
        cmds = _commands_of(commands, c["claim"])
        if cmds:
            out.append("<p>Reproduce:</p><pre>" + e("\n".join(cmds)) + "</pre>")
        out.append("</section>")
    prov = {k: meta.get(k) for k in ("created", "versions", "elapsed_s") if meta.get(k) is not None}
    if prov:
        out.append(f'<p class="meta">{e(json.dumps(prov, default=str))}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(claims: list[dict], *, meta: dict, commands: dict) -> str:
    """The same content as :func:`render_html`, in Markdown (figures as relative images)."""
    title = meta.get("title", "simkernel: the kernel-regression theory of in-context learning, verified")
    out = [f"# {title}", ""]
    if meta.get("subtitle"):
        out += [meta["subtitle"], ""]
    out += ["| claim | statement | verdict | in parts |", "| --- | --- | --- | --- |"]
    for c in claims:
        parts = "; ".join(f"{p['name']}: {p['verdict']}" for p in c.get("parts", []) if len(c.get("parts", [])) > 1)
        out.append(f"| [{c['claim']}](#{c['claim'].lower()}) | {_md_escape(c['title'])} | **{c['verdict']}** | "
                   f"{_md_escape(parts)} |")
    out += ["", f"**How verdicts are decided.** Each claim states its rule below. {CI_NOTE}; {FAMILY_RULE}.", ""]
    allc = _commands_of(commands, "*")
    if allc:
        out += ["Everything on this page, in one command:", "", "```bash", *allc, "```", ""]
    for c in claims:
        out += [f'<a id="{c["claim"].lower()}"></a>', "", f"## {c['claim']}: {c['title']}", "",
                f"**Verdict: {c['verdict']}.** {c['text']}", "", f"![{c['claim']}]({c['figure']})", ""]
        if c.get("numbers"):
            out += ["| number | estimate | 95% CI |", "| --- | ---: | ---: |"]
            for name, (est, lo, hi) in c["numbers"].items():
                ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(_f(lo)) and math.isfinite(_f(hi)) else "n/a"
                out.append(f"| {_md_escape(name)} | {_fmt(est)} | {ci} |")
            out.append("")
        if len(c.get("parts", [])) > 1:
            out += ["| part | verdict | numbers |", "| --- | --- | --- |"]
            out += [f"| {_md_escape(p['name'])} | {p['verdict']} | {_md_escape(p['text'])} |" for p in c["parts"]]
            out.append("")
        out += [f"*Rule.* {c['rule']}", ""]
        if c.get("reference"):
            out += [f"*Reference.* {c['reference']}", ""]
        cmds = _commands_of(commands, c["claim"])
        if cmds:
            out += ["Reproduce:", "", "```bash", *cmds, "```", ""]
    return "\n".join(out)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(claims: list[dict], out, *, meta: dict, commands: dict) -> list[Path]:
    """Publish ``index.html``, ``report.md``, ``report.json`` (claims, meta, commands) and one
    PNG per claim into the folder ``out``, all complete before any is renamed in
    (``store.publish``).  Returns the paths written."""
    from .store import check_results_dir, publish, write_json

    if not isinstance(claims, (list, tuple)) or not claims:
        raise ValueError("claims must be a non-empty list of claim dicts (verdict_c1(...), ...)")
    names = [c.get("claim") for c in claims]
    if len(set(names)) != len(names):
        raise ValueError(f"claims has a claim twice: {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    for c in claims:
        if c.get("verdict") not in VERDICTS:
            raise ValueError(f"claims: {c.get('claim')!r} has verdict {c.get('verdict')!r}; allowed: "
                             f"{', '.join(VERDICTS)}")
    out = check_results_dir(Path(out))
    page = render_html(claims, meta=meta, commands=commands)
    md = render_markdown(claims, meta=meta, commands=commands)
    data = _jsonable({"claims": claims, "meta": meta, "commands": commands, "ci": CI_NOTE, "family_rule": FAMILY_RULE})
    writers = {"index.html": lambda p: p.write_text(page, encoding="utf-8"),
               "report.md": lambda p: p.write_text(md, encoding="utf-8"),
               "report.json": lambda p: write_json(p, data)}
    for c in claims:
        writers[c["figure"]] = lambda p, c=c: _figure(c, p)
    return publish(out, writers)


# ---------------------------------------------------------------------- the browser check
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    """The path of a Chromium executable, or a one-line ValueError."""
    for name in CHROMIUM_NAMES:
        p = shutil.which(name)
        if p:
            return p
    raise ValueError("chromium not found: apt-get install chromium")


class _PageParser(HTMLParser):
    """What the check reads from the dumped DOM: body attributes, the verdict table's body rows,
    the sections, the images."""

    def __init__(self):
        super().__init__()
        self.body, self.images, self.sections = {}, [], []
        self.in_verdicts = self.in_tbody = False
        self.depth, self.rows, self.claims_attr = 0, 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.images.append(a.get("src"))
        elif tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "table":
            if a.get("id") == "verdicts":
                self.in_verdicts, self.depth, self.claims_attr = True, 1, a.get("data-claims")
            elif self.in_verdicts:
                self.depth += 1
        elif self.in_verdicts and tag == "tbody" and self.depth == 1:
            self.in_tbody = True
        elif self.in_verdicts and self.in_tbody and tag == "tr" and self.depth == 1:
            self.rows += 1

    def handle_endtag(self, tag):
        if self.in_verdicts and tag == "table":
            self.depth -= 1
            if self.depth == 0:
                self.in_verdicts = self.in_tbody = False
        elif self.in_verdicts and tag == "tbody" and self.depth == 1:
            self.in_tbody = False


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def check_in_browser(index_html, screenshot_png, *, timeout_s: float = 120, budget_ms: int = 10000,
                     window=(1280, 4000)) -> dict:
    """Render ``index_html`` in headless Chromium: dump the DOM after the load event (the page's
    inline script writes data-images-loaded="k/n" on <body>) and write a screenshot to
    ``screenshot_png``.  Returns {'ok', 'problems', 'images_loaded', 'n_images', 'n_loaded',
    'verdict_rows', 'claims', 'sections', 'screenshot', 'screenshot_bytes', 'screenshot_size',
    'chromium'}; ok when the verdict table has one body row per claim (its data-claims), one
    section per claim, every image loaded, and the screenshot is a PNG of the window's size.
    One-line ValueError when Chromium is missing or the page is not a file."""
    exe = find_chromium()
    index_html = Path(index_html).resolve()
    if not index_html.is_file():
        raise ValueError(f"index_html {str(index_html)!r} is not a file")
    shot = Path(screenshot_png).resolve()
    if not shot.parent.is_dir():
        raise ValueError(f"screenshot_png: folder {str(shot.parent)!r} does not exist")
    url = index_html.as_uri()
    problems = []
    with tempfile.TemporaryDirectory(prefix="simkernel-chromium-") as profile:
        base = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}"]
        try:
            version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = ""
        try:
            dom = subprocess.run(base + [f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ValueError(f"chromium did not render {str(index_html)!r} within {timeout_s:g} s") from None
        tmp = shot.with_name(f".{shot.name}.{os.getpid()}.tmp.png")
        try:
            subprocess.run(base + [f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
                                   f"--screenshot={tmp}", url], capture_output=True, text=True, timeout=timeout_s)
            if tmp.is_file():
                os.replace(tmp, shot)
        except subprocess.TimeoutExpired:
            problems.append(f"no screenshot within {timeout_s:g} s")
        finally:
            tmp.unlink(missing_ok=True)
    parser = _PageParser()
    parser.feed(dom.stdout or "")
    loaded = parser.body.get("data-images-loaded")
    try:
        k, n = (int(x) for x in str(loaded).split("/"))
    except ValueError:
        k, n = -1, len(parser.images)
    claims = int(parser.claims_attr) if str(parser.claims_attr or "").isdigit() else None
    if not dom.stdout.strip():
        problems.append(f"chromium dumped no DOM (exit {dom.returncode}: {' '.join(dom.stderr.split())[-200:]})")
    if loaded is None:
        problems.append("the page's load event never ran (no data-images-loaded on <body>)")
    elif k != n or n != len(parser.images):
        problems.append(f"images loaded {loaded} (of {len(parser.images)} <img>)")
    if claims is None:
        problems.append('no verdict table (table id="verdicts" with data-claims)')
    elif parser.rows != claims:
        problems.append(f"the verdict table has {parser.rows} rows for {claims} claims")
    if claims is not None and len(parser.sections) != claims:
        problems.append(f"{len(parser.sections)} sections for {claims} claims")
    size = _png_size(shot) if shot.is_file() else (0, 0)
    if size != tuple(window):
        problems.append(f"screenshot {shot.name} missing or not {window[0]}x{window[1]} (got {size[0]}x{size[1]})")
    return {"ok": not problems, "problems": problems, "images_loaded": loaded, "n_images": len(parser.images),
            "n_loaded": k, "verdict_rows": parser.rows, "claims": claims, "sections": len(parser.sections),
            "screenshot": str(shot), "screenshot_bytes": shot.stat().st_size if shot.is_file() else 0,
            "screenshot_size": list(size), "chromium": version or exe, "url": url}


# ---------------------------------------------------------------------- the battery
def _train_spec(quick: bool) -> dict:
    """The [train] table of C5 and C6: the ginc-small world, where the kernel vote beats the
    majority vote (docs/results/measure.md); quick: the tiny model for a few steps."""
    if quick:
        return {"preset": "ginc-small", "model": "tiny", "max_steps": 40, "eval_every": 20, "n_docs": 64,
                "doc_length": 512}
    return {"preset": "ginc-small", "model": "tiny", "max_steps": 3000, "target_gap": 0.01}


TRAIN_SEEDS = (0, 1, 2)


def battery(quick: bool = False) -> dict[str, dict]:
    """The sweep configs of the verification battery, {name: config} (``sweep.run``'s dicts):

    converge   C1-C4: every world seed (20; quick 3) of each preset family ('ginc-small' and
               'paper-c', both with x of two tokens so that the theory kernel varies within a
               prompt), one world per job;
    phenomena  C7: one job per phenomenon on 'ginc-small' worlds (10; quick: 3 and phenomena's
               quick sizes);
    icl-eval   C5: one job per training seed (3) of a model trained on 'ginc-small';
    measure    C6: one job measuring the same three runs on the same prompts (pooled)."""
    n_worlds = 3 if quick else 20
    converge = {"command": "converge",
                "options": {"n_demos": "1..32" if quick else "1,2,3,4,6,8,12,16,24,32,48,64,96,128,192,256",
                            "example_length": 3, "n_prompts": 30 if quick else 200, "seeds": [0]},
                "grid": {"preset": ["ginc-small", "paper-c"], "world_seed": list(range(n_worlds))}}
    phen = {"command": "phenomena",
            "options": {"preset": "ginc-small", "world_seeds": [0, 1, 2] if quick else list(range(10)), "seed": 0,
                        "quick": bool(quick)},
            "grid": {"name": list(PHENOMENA)}}
    train = _train_spec(quick)
    icl = {"command": "icl-eval",
           "options": {"n_demos": "0,1,2,4,8,16" if quick else "0,1,2,4,8,16,32,48", "example_length": 3,
                       "n_prompts": 40 if quick else 200, "seed": 0, "device": "cpu"},
           "train": dict(train), "grid": {"train.seed": list(TRAIN_SEEDS)}}
    measure = {"command": "measure",
               "options": {"n_prompts": 100 if quick else 1000, "n_demos": 8 if quick else 16, "example_length": 3,
                           "n_select": 70 if quick else 700, "n_report": 30 if quick else 300, "device": "cpu"},
               "train": dict(train, seeds=list(TRAIN_SEEDS)), "grid": {"seed": [0]}}
    return {"converge": converge, "phenomena": phen, "icl-eval": icl, "measure": measure}


def to_toml(config: dict) -> str:
    """A sweep config as TOML (what ``simkernel sweep`` reads): top-level scalars, then one table
    per nested dict.  Values: str, bool, int, float, lists of them."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise ValueError(f"config value {v!r} has no TOML form; allowed: str, bool, int, float, lists, tables")

    def _key(k):
        k = str(k)
        return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)

    lines = [f"{_key(k)} = {value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for k, v in config.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(a)} = {value(b)}" for a, b in v.items()]
    return "\n".join(lines) + "\n"


def default_commands(quick: bool, out, sweeps_dir) -> dict:
    """{claim or '*': [shell commands]} that reproduce the report and each claim's sweep."""
    out, sweeps_dir = Path(out), Path(sweeps_dir)
    flag = " --quick" if quick else ""
    per = {"converge": ("C1", "C2", "C3", "C4"), "phenomena": ("C7",), "icl-eval": ("C5",), "measure": ("C6",)}
    # the sweeps' folder is named only when it is not the default, so the line reruns this very report
    sweeps_flag = "" if sweeps_dir == out / "sweeps" else f" --sweeps {sweeps_dir}"
    cmds = {"*": [f"simkernel report{flag} --out {out}{sweeps_flag}"]}
    for key, claims in per.items():
        lines = [f"simkernel sweep {out / 'battery' / (key + '.toml')} --out {sweeps_dir / key}",
                 f"python -c \"from simkernel import report, sweep; sweep.run(report.battery(quick={bool(quick)})"
                 f"['{key}'], '{sweeps_dir / key}')\""]
        for c in claims:
            cmds[c] = lines
    return cmds


# ---------------------------------------------------------------------- the glue
def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _table(res, name=None):
    try:
        return res.table(name)
    except (ValueError, OSError, KeyError):
        return None


def _train_gaps(res) -> dict:
    """{training seed: final gap} from an icl-eval sweep's job folders (icl_vs_bayes.json's
    train_done and train_config)."""
    out = {}
    for j in res.jobs:
        if j.get("status") != "done":
            continue
        meta = _read_json(Path(j["folder"]) / "icl_vs_bayes.json")
        done = meta.get("train_done") or {}
        seed = j.get("grid", {}).get("train.seed")
        if seed is None:
            cfg = meta.get("train_config") or {}
            seed = (cfg.get("train") or cfg).get("seed")
        if seed is not None and "gap" in done:
            out[str(seed)] = _f(done["gap"])
    return out


def _measure_gaps(meta: dict) -> dict:
    """{run name: final gap} from the run folders a measure.json names (their done.json)."""
    runs = meta.get("runs") if isinstance(meta.get("runs"), dict) else {
        "run": {"run": (meta.get("config") or {}).get("run")}}
    out = {}
    for name, r in runs.items():
        done = _read_json(Path(str(r.get("run"))) / "done.json") if r.get("run") else {}
        if "gap" in done:
            out[name] = _f(done["gap"])
    return out


def claims_from_sweeps(results: dict) -> list[dict]:
    """The claim dicts (C1-C7) from the battery's ``sweep.SweepResult`` s ({name: result}; a
    missing name makes its claims inconclusive, saying so)."""
    claims = []
    conv = results.get("converge")
    if conv is not None:
        rows, floors, fits = _table(conv), _table(conv, "floors"), _table(conv, "fits")
        claims.append(verdict_c1(fits, rows) if fits is not None else not_run("C1", C1_TITLE, _failed_note(rows)))
        claims.append(verdict_c2(floors, rows) if floors is not None else not_run("C2", C2_TITLE, _failed_note(rows)))
        claims.append(verdict_c3(floors) if floors is not None else not_run("C3", C3_TITLE, _failed_note(rows)))
        claims.append(verdict_c4(rows) if rows is not None else not_run("C4", C4_TITLE, "no table"))
    else:
        claims += [not_run(c, t, "the converge sweep did not run") for c, t in
                   (("C1", C1_TITLE), ("C2", C2_TITLE), ("C3", C3_TITLE), ("C4", C4_TITLE))]
    icl = results.get("icl-eval")
    if icl is not None:
        rows = _table(icl)
        claims.append(verdict_c5(rows, gaps=_train_gaps(icl)) if rows is not None else
                      not_run("C5", C5_TITLE, "no icl-eval table"))
    else:
        claims.append(not_run("C5", C5_TITLE, "the icl-eval sweep did not run"))
    mes = results.get("measure")
    if mes is not None:
        done = [j for j in mes.jobs if j.get("status") == "done"]
        if done:
            meta = _read_json(Path(done[0]["folder"]) / "measure.json")
            claims.append(verdict_c6(_table(mes, "pooled"), meta, gaps=_measure_gaps(meta)))
        else:
            err = next((j.get("error") for j in mes.jobs if j.get("error")), "no job finished")
            claims.append(not_run("C6", C6_TITLE, f"the measure job did not finish: {err}"))
    else:
        claims.append(not_run("C6", C6_TITLE, "the measure sweep did not run"))
    phen = results.get("phenomena")
    c7 = verdict_c7(_table(phen, "verdicts")) if phen is not None else []
    have = {c["claim"] for c in c7}
    for name in PHENOMENA:
        if f"C7-{name}" not in have:
            why = "the phenomena sweep did not run" if phen is None else next(
                (f"the job failed: {j.get('error')}" for j in phen.jobs
                 if j.get("grid", {}).get("name") == name and j.get("status") != "done"), "no verdict row")
            c7.append(not_run(f"C7-{name}", C7_TITLES[name], why))
    order = {n: i for i, n in enumerate(PHENOMENA)}
    claims += sorted(c7, key=lambda c: order.get(c["claim"][3:], 99))
    return claims


@dataclass
class Report:
    """What :func:`run` returns: the claim dicts (C1-C7), ``meta`` (config: quick, the battery's
    sweep configs, out; seeds; versions; per sweep its folder, job counts and wall time) and
    ``commands`` ({claim or '*': shell commands}).  :meth:`write` publishes the page, the
    Markdown, the JSON and the figures and (when Chromium is there) checks the page in it."""

    claims: list
    meta: dict
    commands: dict = field(default_factory=dict)
    browser: dict | None = None

    def write(self, out, browser: bool | None = None) -> list[Path]:
        """Publish into ``out``: :data:`FILES`, one PNG per claim and ``battery/<sweep>.toml``
        (the configs the commands name); then, unless ``browser`` is False, render the page in
        headless Chromium (:func:`check_in_browser`), keeping ``screenshot.png`` and
        ``browser_check.json``.  ``browser`` None: only when Chromium is installed; True:
        Chromium is required.  A failed check is a one-line ValueError after the files are
        written."""
        from .store import publish, write_json

        out = Path(out)
        paths = write_report(self.claims, out, meta=self.meta, commands=self.commands)
        configs = (self.meta.get("config") or {}).get("battery") or {}
        if configs:
            paths += publish(out / "battery", {f"{k}.toml": lambda p, c=c: p.write_text(to_toml(c))
                                               for k, c in configs.items()})
        if browser is False:
            return paths
        try:
            find_chromium()
        except ValueError:
            if browser:
                raise
            self.browser = {"ok": None, "skipped": "chromium not found: apt-get install chromium"}
            write_json(out / BROWSER_JSON, self.browser)
            return paths + [out / BROWSER_JSON]
        self.browser = check_in_browser(out / "index.html", out / SCREENSHOT)
        write_json(out / BROWSER_JSON, self.browser)
        paths += [out / SCREENSHOT, out / BROWSER_JSON]
        if not self.browser["ok"]:
            raise ValueError(f"the report page failed its browser check: {'; '.join(self.browser['problems'])}")
        return paths

    def summary_lines(self) -> list[str]:
        """What ``simkernel report`` prints: one line per claim (verdict and its sentence), then
        the browser check when it ran."""
        out = []
        w = max(len(c["claim"]) for c in self.claims) if self.claims else 2
        for c in self.claims:
            out.append(f"{c['claim']:<{w}}  {c['verdict']:<12}  {c['title']}")
            out.append(f"{'':<{w}}  {'':<12}  {c['text']}")
        counts = {v: sum(c["verdict"] == v for c in self.claims) for v in VERDICTS}
        out.append(", ".join(f"{n} {v}" for v, n in counts.items()))
        b = self.browser
        if b and b.get("ok") is not None:
            out.append(f"browser check ({b.get('chromium', 'chromium')}): images {b['images_loaded']}, verdict table "
                       f"{b['verdict_rows']} rows, screenshot {b['screenshot']}"
                       + ("" if b["ok"] else f"; PROBLEMS: {'; '.join(b['problems'])}"))
        elif b:
            out.append(f"browser check skipped: {b.get('skipped')}")
        return out


def run(quick: bool = False, out="figures/report", workers=None, scheduler=None, progress=None, *,
        sweeps_dir=None) -> Report:
    """``simkernel report`` as a library call: run the :func:`battery` (quick: CI-sized) through
    ``sweep.run``, one sweep after another into ``sweeps_dir`` (default ``<out>/sweeps``; a rerun
    resumes them), and turn the tables into claims.  ``progress(sweep, done, failed, running,
    total)`` is called as jobs finish.  Writes nothing but the sweeps (:meth:`Report.write`
    writes the page)."""
    from . import sweep
    from .store import provenance

    t0 = time.perf_counter()
    out = Path(out)
    sweeps_dir = out / "sweeps" if sweeps_dir is None else Path(sweeps_dir)
    configs = battery(quick)
    sweeps_dir.mkdir(parents=True, exist_ok=True)       # each sweep's lock sits beside its folder
    results, info = {}, {}
    for key in SWEEPS:
        cfg = configs[key]
        tick = (lambda *a, key=key: progress(key, *a)) if progress else None
        t1 = time.perf_counter()
        res = sweep.run(cfg, sweeps_dir / key, workers=workers, scheduler=scheduler, progress=tick)
        results[key] = res
        info[key] = {"folder": str(res.out), "jobs": res.counts(), "wall_s": round(time.perf_counter() - t1, 1)}
    claims = claims_from_sweeps(results)
    conv = configs["converge"]["grid"]
    seeds = {"world": {p: conv["world_seed"] for p in conv["preset"]},
             "phenomena_world": configs["phenomena"]["options"]["world_seeds"], "train": list(TRAIN_SEEDS),
             "prompt": 0}
    meta = provenance({"command": "report", "quick": bool(quick), "out": str(out), "sweeps_dir": str(sweeps_dir),
                       "battery": configs}, seeds,
                      extra_packages=("matplotlib", "pandas", "pyarrow", "dask", "distributed", "torch"))
    meta.update(title="simkernel: the kernel-regression theory of in-context learning, claim by claim",
                subtitle=(f"{'quick setting (CI-sized: few worlds, tiny models)' if quick else 'default setting'}; "
                          f"{len(conv['world_seed'])} world seeds per preset family for C1-C4, "
                          f"{len(TRAIN_SEEDS)} training seeds for C5-C6"),
                sweeps=info, elapsed_s=round(time.perf_counter() - t0, 1))
    return Report(claims, meta, default_commands(quick, out, sweeps_dir))
