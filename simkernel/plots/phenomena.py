"""The figure of ``simkernel phenomena``: every predictor's effect per setting."""

from __future__ import annotations

import math
from pathlib import Path

from ..store import atomic_write
from .common import as_float, checked_rows
from .style import DPI, metadata


PHENOMENON_COLUMNS = ("setting", "n_demos", "predictor", "metric", "mean", "ci_low", "ci_high", "n_prompts",
                      "n_worlds")
#: One style per predictor: exact Bayes black, the kernel blue, the label-frequency baseline grey and
#: dashed (the null model), the oracle orange and dotted (a ceiling), the trained model red.
_PREDICTOR_STYLE = {"bayes": ("black", "-", "o"), "kernel": ("tab:blue", "-", "o"), "clipped": ("tab:cyan", "-.", "^"),
                    "frequency": ("0.45", "--", "s"), "oracle": ("tab:orange", ":", "D"), "model": ("tab:red", "-", "*")}
_PREDICTOR_LABELS = {"bayes": "exact Bayes", "kernel": "theory kernel (normalised)", "clipped": "theory kernel (clipped)",
                     "frequency": "label frequencies (K ≡ 1)", "oracle": "oracle (true concept)", "model": "trained model"}


def _phenomenon_records(rows) -> list[dict]:
    recs = []
    for i, r in checked_rows(rows, PHENOMENON_COLUMNS, "phenomenon"):
        where = f"row {i} of the phenomenon table (setting {r['setting']!r}, metric {r['metric']!r})"
        n = as_float(r["n_demos"])
        if n is None:
            raise ValueError(f"{where} has n_demos {r['n_demos']!r}; allowed: a whole number, or inf")
        rec = {"setting": str(r["setting"]), "n_demos": n, "predictor": str(r["predictor"]), "metric": str(r["metric"])}
        for c in ("mean", "ci_low", "ci_high"):
            v = as_float(r[c])
            rec[c] = math.nan if v is None else v
        recs.append(rec)
    return recs


def _split_setting(s: str):
    """'group:value' -> (group, float value); a setting without a number -> (s, None)."""
    if ":" in s:
        g, v = s.rsplit(":", 1)
        x = as_float(v)
        if x is not None:
            return g, x
    return s, None


def _draw_predictors(ax, recs, metric, x_of, predictors=None, ls_override=None, label_suffix=""):
    """One line (with a CI band) per predictor of the records of ``metric``; x from x_of(rec)."""
    preds = [p for p in dict.fromkeys(r["predictor"] for r in recs if r["metric"] == metric)
             if predictors is None or p in predictors]
    for p in preds:
        sel = sorted(((x_of(r), r) for r in recs if r["metric"] == metric and r["predictor"] == p
                      and x_of(r) is not None and math.isfinite(r["mean"])), key=lambda t: t[0])
        if not sel:
            continue
        colour, ls, marker = _PREDICTOR_STYLE.get(p, ("tab:purple", "-", "o"))
        xs = [t[0] for t in sel]
        ax.plot(xs, [t[1]["mean"] for t in sel], ls_override or ls, color=colour, marker=marker, ms=3.5, lw=1.5,
                label=_PREDICTOR_LABELS.get(p, p) + label_suffix)
        ax.fill_between(xs, [t[1]["ci_low"] for t in sel], [t[1]["ci_high"] for t in sel], color=colour, alpha=0.1, lw=0)


def plot_phenomenon(rows, path, title: str | None = None, name: str = "", dpi: int = DPI) -> Path:
    """The figure of ``simkernel phenomena NAME`` from its tidy rows (``PHENOMENON_COLUMNS``; a
    setting is 'group:value' for a swept value, else a plain name).  Every predictor in its own
    style (exact Bayes black, kernel blue, label frequencies grey dashed, oracle orange dotted, the
    model red), 95% CI bands over worlds.

    order      TV between the prediction on the original and on a permuted order, against n, one
               panel per world type (restart, restart-free)
    labels     mass on y_test (solid) and on its remapped label (dashed) against the remapped
               fraction f, one panel per mode (flip, format)
    prior      TV to the oracle at the largest n against the test concept's prior; the kernel's
               exact floor (n = ∞) beside η²ε_θ
    retrieval  TV to the oracle and accuracy against the bandwidth τ, one column per selector; the
               random choice as horizontal lines
    shift      accuracy and TV to the oracle against the shift size, one column per (kind, target)"""
    recs = _phenomenon_records(rows)
    if not recs:
        raise ValueError("the phenomenon table has no rows")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite_n = sorted({r["n_demos"] for r in recs if math.isfinite(r["n_demos"])})
    n_max = finite_n[-1] if finite_n else math.inf
    at_n = [r for r in recs if r["n_demos"] == n_max]

    if name == "order":
        groups = list(dict.fromkeys(r["setting"] for r in recs))
        fig = Figure(figsize=(5.2 * len(groups) + 2.5, 4.0), layout="constrained")
        axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
        for ax, g in zip(axes, groups):
            _draw_predictors(ax, [r for r in recs if r["setting"] == g], "tv_perm", lambda r: r["n_demos"])
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(__import__("matplotlib.ticker", fromlist=["x"]).FuncFormatter(
                lambda v, _pos: f"{v:g}"))
            ax.set_title(f"{g} world", fontsize=10)
            ax.set_xlabel("n (demonstrations)")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("TV(original order, permuted order)")
        axes[0].set_ylim(bottom=0)
    elif name == "labels":
        groups = list(dict.fromkeys(_split_setting(r["setting"])[0] for r in at_n))
        fig = Figure(figsize=(5.6 * len(groups) + 3.0, 4.2), layout="constrained")
        axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
        for ax, g in zip(axes, groups):
            sel = [r for r in at_n if _split_setting(r["setting"])[0] == g]
            x_of = lambda r: _split_setting(r["setting"])[1]  # noqa: E731
            _draw_predictors(ax, sel, "mass_original", x_of, label_suffix=": y_test")
            _draw_predictors(ax, sel, "mass_remapped", x_of, ls_override="--", label_suffix=": remapped label")
            ax.set_title(f"{g}: labels of a fraction f of the demonstrations remapped", fontsize=9)
            ax.set_xlabel("f (share of demonstrations remapped)")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(f"probability on the label (n = {n_max:g})")
        axes[0].set_ylim(-0.02, 1.02)
    elif name == "prior":
        fig = Figure(figsize=(11.5, 4.2), layout="constrained")
        ax, ax2 = fig.subplots(1, 2)
        x_of = lambda r: _split_setting(r["setting"])[1]  # noqa: E731
        _draw_predictors(ax, at_n, "tv_oracle", x_of)
        ax.set_ylabel(f"TV to the oracle at n = {n_max:g}")
        inf = [r for r in recs if r["n_demos"] == math.inf]
        _draw_predictors(ax2, inf, "floor_tv", x_of, label_suffix=": exact floor (n = ∞)")
        ax3 = ax2.twinx()
        _draw_predictors(ax3, [r for r in inf if r["predictor"] == "kernel"], "eta2_eps_span", x_of,
                         ls_override=":", label_suffix=": η²ε_θ (span), right axis")
        ax3.set_yscale("log")
        ax2.set_ylabel("exact floor: TV(limit, oracle)")
        ax3.set_ylabel("η²ε_θ (span)")
        top = max((x_of(r) or 0.0 for r in recs), default=1.0) or 1.0
        for a in (ax, ax2):
            a.set_xscale("symlog", linthresh=1e-6)
            a.set_xlim(0.0, top * 1.5)          # no negative priors: symlog's margins would add them
            a.set_xlabel("pretraining prior of the test concept (0: out of distribution)")
            a.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        h1, l1 = ax2.get_legend_handles_labels()
        h2, l2 = ax3.get_legend_handles_labels()
        ax2.legend(h1 + h2, l1 + l2, fontsize=7, frameon=False)
        axes = [ax]
    else:   # retrieval, shift and any other swept phenomenon: metric rows x groups columns
        metrics = ("tv_oracle", "acc")
        groups = [g for g in dict.fromkeys(_split_setting(r["setting"])[0] for r in at_n)
                  if any(_split_setting(r["setting"])[1] is not None and _split_setting(r["setting"])[0] == g
                         for r in at_n)]
        flat = [s for s in dict.fromkeys(r["setting"] for r in at_n) if _split_setting(s)[1] is None]
        groups = groups or ["all"]
        fig = Figure(figsize=(4.2 * len(groups) + 2.5, 7.2), layout="constrained")
        axes2 = fig.subplots(len(metrics), len(groups), squeeze=False, sharey="row")
        for j, g in enumerate(groups):
            sel = [r for r in at_n if _split_setting(r["setting"])[0] == g]
            for i, metric in enumerate(metrics):
                ax = axes2[i, j]
                _draw_predictors(ax, sel, metric, lambda r: _split_setting(r["setting"])[1])
                for s in flat:     # reference settings without a value (retrieval's random choice)
                    for r in at_n:
                        if r["setting"] == s and r["metric"] == metric and math.isfinite(r["mean"]):
                            colour = _PREDICTOR_STYLE.get(r["predictor"], ("tab:purple",))[0]
                            ax.axhline(r["mean"], color=colour, lw=0.8, ls=(0, (1, 3)))
                if name == "retrieval":
                    ax.set_xscale("log")
                ax.grid(True, alpha=0.3)
                ax.set_title(f"{g}", fontsize=9)
                ax.set_xlabel("bandwidth τ (dotted: random demonstrations)" if name == "retrieval" else "shift size")
            axes2[0, j].set_ylim(bottom=0)
            axes2[1, j].set_ylim(-0.02, 1.02)
        axes2[0, 0].set_ylabel(f"TV to the oracle (n = {n_max:g})")
        axes2[1, 0].set_ylabel("accuracy (argmax == y_test, ties 1/m)")
        axes = list(axes2[0])
    handles = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if name != "prior" and handles:
        # beside the panels, never over the curves
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    FigureCanvasAgg(fig)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=metadata("png")))
    return path


# ---------------------------------------------------------------------- sweeps
