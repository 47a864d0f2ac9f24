"""The figure of ``simkernel icl-eval``: a trained model against exact Bayes, the kernel and label counts."""

from __future__ import annotations

from pathlib import Path

from ..constants import ICL_COLUMNS
from .common import checked_rows, load_results
from .style import CI_ALPHA, DPI, ICL_COLOURS, save


# ---------------------------------------------------------------------- the ICL evaluation figure
ICL_FILES = ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png")
_GROUP_TITLES = {"prior": "concepts drawn from the prior", "id": "in-distribution concepts (prior > 0)",
                 "ood": "out-of-distribution concepts (prior = 0)"}
#: (panel, metric, colour, line style, width, marker, label).  Solid: the model against
#: something; dashed: the theory kernel against exact Bayes, the reference for how far the
#: kernel is.  The label-frequency baseline (the null model a kernel has to beat) is purple,
#: dotted / dash-dotted with hollow square markers, so it never reads as a kernel curve.
_M, _K, _F = ICL_COLOURS["model"], ICL_COLOURS["kernel"], ICL_COLOURS["frequency"]
_ICL_SERIES = (
    (0, "tv_bayes", _M, "-", 1.8, "o", "model vs exact Bayes"),
    (0, "tv_kernel", _K, "-", 1.8, "o", "model vs theory kernel"),
    (0, "tv_oracle", ICL_COLOURS["oracle_tv"], "-", 1.0, "o", "model vs oracle"),
    (0, "tv_kernel_bayes", _K, "--", 1.3, "o", "theory kernel vs exact Bayes"),
    (0, "tv_frequency", _F, ":", 1.3, "s", "model vs label frequencies (baseline)"),
    (0, "tv_frequency_bayes", _F, "-.", 1.3, "s", "label frequencies vs exact Bayes"),
    (1, "agree_bayes", _M, "-", 1.8, "o", "model = exact Bayes"),
    (1, "agree_kernel", _K, "-", 1.8, "o", "model = theory kernel"),
    (1, "agree_frequency", _F, ":", 1.3, "s", "model = label frequencies (baseline)"),
    (2, "acc_model", _M, "-", 1.8, "o", "model"),
    (2, "acc_bayes", ICL_COLOURS["bayes"], "-", 1.4, "o", "exact Bayes"),
    (2, "acc_kernel", _K, "--", 1.3, "o", "theory kernel"),
    (2, "acc_oracle", ICL_COLOURS["oracle"], ":", 1.4, "o", "oracle (true concept)"),
    (2, "acc_frequency", _F, "-.", 1.3, "s", "label frequencies (baseline)"),
)
#: Markers drawn hollow: the baseline's.
_HOLLOW = {"s"}




def _icl_records(rows) -> list[dict]:
    recs = []
    for i, r in checked_rows(rows, ICL_COLUMNS, "icl-eval"):
        try:
            recs.append({"n_demos": int(r["n_demos"]), "concepts": str(r["concepts"]), "metric": str(r["metric"]),
                         "mean": float(r["mean"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
                         "n_prompts": int(float(r["n_prompts"]))})
        except (TypeError, ValueError):
            raise ValueError(f"row {i} of the icl-eval table has a non-numeric value: {dict(r)!r}") from None
    return recs


def plot_icl_vs_bayes(rows, path_png, title: str | None = None, dpi: int = DPI) -> Path:
    """The figure of ``simkernel icl-eval`` from its tidy rows (columns ``ICL_COLUMNS``).

    One row of panels per concept group, so in-distribution and out-of-distribution prompts
    sit one above the other on shared y axes.  Columns: (1) total variation over the labels
    of the model against exact Bayes, the theory kernel estimator (normalised), the oracle
    and the label frequencies, and of the kernel (dashed) and the label frequencies against
    exact Bayes; (2) argmax agreement of the model with exact Bayes, the kernel and the label
    frequencies; (3) accuracy against y_test of the model, exact Bayes, the kernel, the
    oracle and the label frequencies.  Agreement and accuracy are tie-fair (a tie among m
    labels scores 1/m).  The label-frequency baseline is drawn in its own style (purple,
    hollow squares).  95% CI bands; n = 0 sits at the left edge of a symlog axis (the kernel
    and the label frequencies have no n = 0 point).  Series absent from the rows (an older
    table without the baseline, or a kernel skipped for the world) are simply not drawn."""
    recs = _icl_records(rows)
    if not recs:
        raise ValueError("the icl-eval table has no rows")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    groups = list(dict.fromkeys(r["concepts"] for r in recs))

    def series(group, metric):
        sel = sorted((r for r in recs if r["concepts"] == group and r["metric"] == metric), key=lambda r: r["n_demos"])
        return ([r["n_demos"] for r in sel], [r["mean"] for r in sel], [r["ci_low"] for r in sel],
                [r["ci_high"] for r in sel])

    fig = Figure(figsize=(15.0, 0.9 + 3.9 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 3, sharex=True, sharey="col", squeeze=False)
    for i, g in enumerate(groups):
        for col, metric, colour, ls, lw, marker, label in _ICL_SERIES:
            n, m, lo, hi = series(g, metric)
            if not n:
                continue
            ax = axes[i, col]
            hollow = marker in _HOLLOW
            ax.plot(n, m, ls, color=colour, lw=lw, marker=marker, ms=4 if hollow else 3,
                    mfc="white" if hollow else colour, label=label)
            ax.fill_between(n, lo, hi, color=colour, alpha=0.07 if hollow else CI_ALPHA, lw=0)
        where = _GROUP_TITLES.get(g, f"concept {g}")
        axes[i, 0].set_ylabel(f"{where}\ntotal variation over the labels", fontsize=9)
        axes[i, 1].set_ylabel("argmax agreement", fontsize=9)
        axes[i, 2].set_ylabel("accuracy (argmax == y_test)", fontsize=9)
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    n_max = max(r["n_demos"] for r in recs)
    for ax in axes.flat:
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.xaxis.set_major_formatter(fmt)
        ax.grid(True, alpha=0.3)
    # symlog's automatic margins reach below n = 0, where no n can be
    axes[0, 0].set_xlim(-0.25, max(n_max, 1) * 1.25)
    ns = sorted({r["n_demos"] for r in recs})
    if len(ns) <= 12:
        axes[0, 0].set_xticks(ns)
    for ax in axes[-1]:
        ax.set_xlabel("n (demonstrations)")
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    axes[0, 0].set_ylim(bottom=0)
    for col in (1, 2):
        axes[0, col].set_ylim(-0.02, 1.02)
    axes[0, 0].set_title("distance to exact Bayes, kernel, oracle, label frequencies", fontsize=10)
    axes[0, 1].set_title("same argmax label (ties: 1/m)", fontsize=10)
    axes[0, 2].set_title("accuracy against y_test", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path_png, dpi)


def load_icl(folder) -> tuple[list[dict], dict]:
    """The rows of ``folder/icl_vs_bayes.csv`` and the dict of ``folder/icl_vs_bayes.json``."""
    return load_results(folder, ICL_FILES[:2], ICL_COLUMNS, _icl_records, "icl-eval",
                         "run `simkernel icl-eval --run RUN --out {folder}` first")


def redraw_icl(folder, out_folder=None) -> Path:
    """Redraw icl_vs_bayes.png from a folder's icl_vs_bayes.csv and .json (into
    ``out_folder``, default the same folder)."""
    rows, meta = load_icl(folder)
    out = Path(out_folder) if out_folder is not None else Path(folder)
    return plot_icl_vs_bayes(rows, out / ICL_FILES[2], title=meta.get("title"))


# ---------------------------------------------------------------------- measurement figures
#: the measurement's tidy tables (``analysis.HEAD_COLUMNS`` etc.): the figures below read only these.
