"""The figure of ``simkernel regime``: measured over predicted TV, and the crossover."""

from __future__ import annotations

import math
from pathlib import Path

from .style import BAND_COLOUR, DPI, ESTIMATOR_COLOURS, EXTRA_COLOURS, KERNEL_COLOURS, MARK_COLOUR, save

_FREQUENCY = KERNEL_COLOURS["frequency"]


def plot_regime(rows, worlds, path_png, title: str | None = None, dpi: int = DPI) -> Path:
    """The figure of ``simkernel regime`` from regime.csv's rows and regime_worlds.csv's rows
    (dicts or DataFrames).  Left: the mean TV between each estimate and its exact limit (solid)
    and its asymptotic prediction c/√n (dashed), averaged over the worlds; middle: measured /
    predicted per world (thin) with the band 1 ± band and each world's regime start (dots);
    right: the mean TV to exact Bayes of the primary kernel estimate and of the label
    frequencies, with the crossover n× of each world (ticks)."""
    from matplotlib.figure import Figure

    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    worlds = worlds.to_dict("records") if hasattr(worlds, "to_dict") else list(worlds)
    finite = [r for r in rows if math.isfinite(float(r["n_demos"]))]
    keys = list(dict.fromkeys((str(r["kernel"]), str(r["estimator"])) for r in finite if r["kernel"] != "bayes"))
    band = float(worlds[0]["band"]) if worlds else 0.1
    fig = Figure(figsize=(13.5, 4.0), layout="constrained")
    ax, ax_r, ax_b = fig.subplots(1, 3)
    colours = {}
    for i, key in enumerate(keys):
        colours[key] = _FREQUENCY if key[0] == "frequency" else EXTRA_COLOURS[i % len(EXTRA_COLOURS)] \
            if key[1] != "normalised" else ESTIMATOR_COLOURS["normalised"]

    def mean_over_worlds(kn, e, metric):
        by = {}
        for r in finite:
            if (r["kernel"], r["estimator"], r["metric"]) == (kn, e, metric) and math.isfinite(float(r["mean"])):
                by.setdefault(float(r["n_demos"]), []).append(float(r["mean"]))
        ns = sorted(by)
        return ns, [sum(by[n]) / len(by[n]) for n in ns]

    for key in keys:
        kn, e = key
        label = "label frequencies" if kn == "frequency" else f"{kn} kernel, {e}"
        ns, m = mean_over_worlds(kn, e, "tv_limit")
        nsp, mp = mean_over_worlds(kn, e, "tv_limit_pred")
        ax.plot(ns, m, "-", color=colours[key], label=f"{label}: measured", lw=1.4)
        ax.plot(nsp, mp, "--", color=colours[key], lw=1.0, label=f"{label}: predicted c/√n")
        for w in sorted({r["world"] for r in finite}, key=str):
            pts = sorted((float(r["n_demos"]), float(r["mean"])) for r in finite
                         if (r["world"], r["kernel"], r["estimator"], r["metric"]) == (w, kn, e, "ratio"))
            if pts:
                ax_r.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colours[key], lw=0.7, alpha=0.45)
        for wr in worlds:
            if (wr["kernel"], wr["estimator"]) == key and wr.get("reached") and math.isfinite(float(wr["regime_n"])):
                ax_r.plot([float(wr["regime_n"])], [1.0], "o", color=colours[key], ms=3.5, alpha=0.7)
    ax_r.axhspan(1 - band, 1 + band, color=BAND_COLOUR, alpha=0.12, label=f"1 ± {band:g}")
    ax_r.axhline(1.0, color=BAND_COLOUR, lw=0.8)
    primary = next((k for k in keys if k[0] != "frequency"), None)
    if primary is not None:
        for key, lab in ((primary, f"{primary[0]} kernel, {primary[1]}"), (("frequency", "normalised"),
                                                                          "label frequencies")):
            ns, m = mean_over_worlds(key[0], key[1], "tv_bayes")
            ax_b.plot(ns, m, "-", color=colours.get(key, _FREQUENCY), label=f"{lab}: measured")
            ns, m = mean_over_worlds(key[0], key[1], "tv_bayes_pred")
            ax_b.plot(ns, m, ":", color=colours.get(key, _FREQUENCY), label=f"{lab}: predicted (vs the oracle)")
        for wr in worlds:
            if (wr["kernel"], wr["estimator"]) == primary and math.isfinite(float(wr["crossover"])):
                ax_b.axvline(float(wr["crossover"]), color=MARK_COLOUR, lw=0.6, alpha=0.4)
        ax_b.plot([], [], color=MARK_COLOUR, lw=0.6, alpha=0.6, label="crossover n× per world")
    # the Gaussian predictions say nothing at small n and run far above every measured value there
    for a, metric in ((ax, "tv_limit"), (ax_b, "tv_bayes")):
        top = [float(r["mean"]) for r in finite if r["metric"] == metric and math.isfinite(float(r["mean"]))]
        if top:
            a.set_ylim(top=1.5 * max(top))
    for a in (ax, ax_r, ax_b):
        a.set_xscale("log", base=2)
        a.grid(True, alpha=0.3)
        a.set_xlabel("n (demonstrations)")
    ax.set_yscale("log")
    ax_b.set_yscale("log")
    ax_r.set_yscale("log")
    ax.set_ylabel("mean TV(estimate_n, its limit)")
    ax_r.set_ylabel("measured / predicted (one line per world)")
    ax_b.set_ylabel("mean TV to exact Bayes")
    ax.legend(fontsize=6, frameon=False)
    ax_r.legend(fontsize=7, frameon=False)
    ax_b.legend(fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path_png, dpi)
