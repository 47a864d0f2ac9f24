"""Figures, drawn only from tidy tables: a figure is redrawn from its CSV and JSON alone.

``plot_convergence(rows, fits, path_png, path_pdf, title)`` draws the figure of
``simkernel converge`` from the rows of ``convergence.csv`` (columns n_demos, estimator,
kernel, metric, mean, ci_low, ci_high, n_prompts) and the power-law fits stored in
``convergence.json``; ``load_convergence(folder)`` reads both back.  ``plot_icl_vs_bayes``,
``load_icl`` and ``redraw_icl`` do the same for ``simkernel icl-eval``'s icl_vs_bayes.csv and
.json.  Nothing here runs an experiment or computes a statistic.

matplotlib is imported lazily and drawn through its Agg canvas (no pyplot, no global
backend switch), so importing this module costs nothing and it works on a headless machine.
Files are written atomically (temp name beside the target, then rename).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .world import atomic_write

CONVERGENCE_COLUMNS = ("n_demos", "estimator", "kernel", "metric", "mean", "ci_low", "ci_high", "n_prompts")
DPI = 110

#: One colour per kernel, one line style per estimator.
_COLOURS = {"theory": "tab:blue", "oracle": "tab:orange", "similarity": "tab:green"}
_STYLES = {"averaged": "-", "normalised": "-."}
#: theory is drawn thinnest and on top, oracle widest and below, so coinciding curves both show.
_WIDTHS = {"theory": 1.2, "oracle": 2.8, "similarity": 1.6}
_ZORDER = {"theory": 9, "oracle": 3, "similarity": 6}
_EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


# ---------------------------------------------------------------------- reading tables
def _records(rows) -> list[dict]:
    """A list of dicts or a pandas DataFrame -> a list of dicts with typed values."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    out = []
    for i, r in enumerate(rows):
        missing = [c for c in CONVERGENCE_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"row {i} of the convergence table lacks column {missing[0]!r}; "
                             f"expected {', '.join(CONVERGENCE_COLUMNS)}")
        try:
            out.append({"n_demos": int(r["n_demos"]), "estimator": str(r["estimator"]),
                        "kernel": str(r["kernel"]), "metric": str(r["metric"]),
                        "mean": float(r["mean"]), "ci_low": float(r["ci_low"]),
                        "ci_high": float(r["ci_high"]), "n_prompts": int(float(r["n_prompts"]))})
        except (TypeError, ValueError):
            raise ValueError(f"row {i} of the convergence table has a non-numeric value: {dict(r)!r}") from None
    return out


def _load_results(folder, names, columns, records, what: str, hint: str) -> tuple[list[dict], dict]:
    """The rows of a tidy CSV and the dict of its JSON (``names`` = (csv, json) in ``folder``),
    with one-line ValueErrors naming what is missing or unreadable."""
    folder = Path(folder)
    f_csv, f_json = folder / names[0], folder / names[1]
    for f in (f_csv, f_json):
        if not f.is_file():
            raise ValueError(f"{str(folder)!r} holds no {f.name} ({hint.format(folder=folder)})")
    try:
        with open(f_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise ValueError(f"{str(f_csv)!r} lacks column {missing[0]!r}; expected {', '.join(columns)}")
            rows = records(list(reader))
        meta = json.loads(f_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read the {what} results in {str(folder)!r} ({type(e).__name__})") from None
    if not rows:
        raise ValueError(f"{str(f_csv)!r} has no rows")
    if not isinstance(meta, dict):
        raise ValueError(f"{str(f_json)!r} does not hold a JSON object, as a {names[1]} must")
    return rows, meta


def load_convergence(folder) -> tuple[list[dict], dict]:
    """The rows of ``folder/convergence.csv`` and the dict of ``folder/convergence.json``."""
    return _load_results(folder, ("convergence.csv", "convergence.json"), CONVERGENCE_COLUMNS, _records,
                         "convergence", "run `simkernel converge --out {folder}` first")


def _series(rows, kernel, estimator, metric):
    sel = sorted((r for r in rows if r["kernel"] == kernel and r["estimator"] == estimator
                  and r["metric"] == metric), key=lambda r: r["n_demos"])
    return ([r["n_demos"] for r in sel], [r["mean"] for r in sel],
            [r["ci_low"] for r in sel], [r["ci_high"] for r in sel])


def _fit_curve(fit, n_lo, n_hi):
    """The fitted L1 distance a·n^slope + floor on a grid (a TV fit is doubled: L1 = 2 TV)."""
    scale = 2.0 if fit.get("metric", "tv") == "tv" else 1.0
    n = [n_lo * (n_hi / n_lo) ** (i / 99) for i in range(100)] if n_hi > n_lo else [n_lo]
    return n, [scale * (fit["amplitude"] * m ** fit["slope"] + fit["floor"]) for m in n]


def _num(x: float) -> str:
    """Two decimals, without a negative zero."""
    t = f"{x:.2f}"
    return t[1:] if t == "-0.00" else t


def _finite(*xs) -> bool:
    import math
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


# ---------------------------------------------------------------------- the convergence figure
def plot_convergence(rows, fits: dict, path_png, path_pdf=None, title: str | None = None,
                     dpi: int = DPI) -> list[Path]:
    """Draw the convergence figure from the tidy rows and the fits; write PNG (and PDF).

    Panel 1 (log-log): L1 distance between each kernel estimate and the exact posterior
    against n, 95% CI bands, one line per kernel/estimator; the fitted a·n^slope + floor of
    the theory kernel (slope written on the plot); exact Bayes against the oracle (dashed).
    Panel 2: argmax agreement with the exact posterior against n, and the exact posterior's
    accuracy against y_test as a reference line.  Returns the paths written."""
    rows = _records(rows)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fits = fits or {}
    pairs = []
    for r in rows:
        key = (r["kernel"], r["estimator"])
        if r["kernel"] not in ("bayes", "bayes-vs-oracle") and key not in pairs:
            pairs.append(key)
    extra = iter(_EXTRA_COLOURS)
    colours = {k: _COLOURS.get(k) or next(extra, "tab:gray") for k, _ in pairs}
    ns = sorted({r["n_demos"] for r in rows})
    n_lo, n_hi = ns[0], ns[-1]
    marker = "o" if len(ns) <= 24 else None

    fig = Figure(figsize=(11.5, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    # kernels that coincide (theory = oracle when Σ_pretrain = Σ_θ*) stay visible
    widths = {k: _WIDTHS.get(k, 1.4) for k, _ in pairs}
    z = {k: _ZORDER.get(k, 5) for k, _ in pairs}

    def band(ax, n, lo, hi, colour, alpha, log):
        lo = [v if (v > 0 or not log) else float("nan") for v in lo]
        ax.fill_between(n, lo, hi, color=colour, alpha=alpha, lw=0)

    # ---- panel 1: L1 distance
    positive, tops = [], []
    for kname, est in pairs:
        n, m, lo, hi = _series(rows, kname, est, "l1")
        if not n:
            continue
        positive += [v for v in m if v > 0]
        tops += [v for v in hi if _finite(v)]
        ax1.plot(n, m, _STYLES.get(est, ":"), color=colours[kname], marker=marker, ms=3, lw=widths[kname],
                 zorder=z[kname], label=f"{kname} / {est}")
        band(ax1, n, lo, hi, colours[kname], 0.15, True)
    n, m, lo, hi = _series(rows, "bayes-vs-oracle", "-", "l1")
    lowest = min(positive) / 3 if positive else None
    if n and m[0] > 0 and lowest is not None:
        # show where exact Bayes starts, but not its fall towards 0 (machine precision)
        lowest = max(min(lowest, m[0] / 3), min(positive) / 1000)
    if n:
        ax1.plot(n, m, "--", color="black", lw=1.2, marker=marker, ms=3, zorder=11, label="exact Bayes vs oracle")
        band(ax1, n, lo, hi, "black", 0.08, True)
    slopes = []
    for kname, est in pairs:
        fit = fits.get(f"{kname}/{est}")
        if kname != "theory" or not fit or not _finite(fit.get("slope"), fit.get("floor"), fit.get("amplitude")):
            continue
        lo_n, hi_n = fit.get("n_range", [n_lo, n_hi])
        fn, fy = _fit_curve(fit, lo_n, hi_n)
        scale = 2.0 if fit.get("metric", "tv") == "tv" else 1.0
        ax1.plot(fn, fy, ":", color="navy", lw=1.6, zorder=12,
                 label=f"fit, theory / {est}: a·n^{_num(fit['slope'])} + {scale * fit['floor']:.2g}")
        slopes.append((est, fit["slope"], fn, fy))
    if slopes:
        _est, _slope, fn, fy = slopes[0]
        i = len(fn) // 2
        text = "theory fit: slope " + ", ".join(f"{_num(s)} ({e})" for e, s, _, _ in slopes)
        ax1.annotate(text, (fn[i], fy[i]), xytext=(8, 14), textcoords="offset points", fontsize=8,
                     color="navy", zorder=13,
                     bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="navy", alpha=0.85))
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log", nonpositive="mask")
    if positive:
        ax1.set_ylim(lowest, max(tops + positive) * 1.5)
    ax1.set_xlabel("n (demonstrations)")
    ax1.set_ylabel("distance to the exact posterior:\nL1 over the label set (= 2 × total variation)")
    ax1.set_title("distance of the kernel estimate to exact Bayes (95% CI bands)", fontsize=10)
    ax1.grid(True, which="major", alpha=0.3)

    # ---- panel 2: agreement
    for kname, est in pairs:
        n, m, lo, hi = _series(rows, kname, est, "agree")
        if not n:
            continue
        ax2.plot(n, m, _STYLES.get(est, ":"), color=colours[kname], marker=marker, ms=3, lw=widths[kname],
                 zorder=z[kname])
        band(ax2, n, lo, hi, colours[kname], 0.15, False)
    n, m, lo, hi = _series(rows, "bayes", "-", "acc")
    if n:
        ax2.plot(n, m, "--", color="0.4", lw=1.2, marker=marker, ms=3, zorder=11,
                 label="exact Bayes: accuracy vs y_test")
        band(ax2, n, lo, hi, "0.4", 0.08, False)
    ax2.set_xscale("log", base=2)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("n (demonstrations)")
    ax2.set_ylabel("argmax agreement with the exact posterior")
    ax2.set_title("same argmax label as exact Bayes (95% CI bands)", fontsize=10)
    ax2.grid(True, which="major", alpha=0.3)
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_formatter(fmt)
        ax.set_xlim(n_lo / 1.15, n_hi * 1.15)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)

    written = []
    for path, fmt_name in ((path_png, "png"), (path_pdf, "pdf")):
        if path is None:
            continue
        path = Path(path)
        atomic_write(path, lambda f, fmt_name=fmt_name: fig.savefig(f, format=fmt_name, dpi=dpi,
                                                                      metadata=_metadata(fmt_name)))
        written.append(path)
    return written


def _metadata(fmt: str) -> dict:
    # no creation dates, so redrawing the same table gives the same file
    return {"Software": None} if fmt == "png" else {"CreationDate": None, "Creator": None, "Producer": None}


def redraw_convergence(folder, out_folder=None) -> list[Path]:
    """Redraw convergence.png and convergence.pdf from a folder's convergence.csv and .json
    (into ``out_folder``, default the same folder)."""
    rows, meta = load_convergence(folder)
    out = Path(out_folder) if out_folder is not None else Path(folder)
    return plot_convergence(rows, meta.get("fits", {}), out / "convergence.png", out / "convergence.pdf",
                            title=meta.get("title"))


# ---------------------------------------------------------------------- the ICL evaluation figure
ICL_COLUMNS = ("n_demos", "concepts", "metric", "mean", "ci_low", "ci_high", "n_prompts")
ICL_FILES = ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png")
_GROUP_TITLES = {"prior": "concepts drawn from the prior", "id": "in-distribution concepts (prior > 0)",
                 "ood": "out-of-distribution concepts (prior = 0)"}
#: (panel, metric, colour, line style, width, label).  Solid: the model against something;
#: dashed: the theory kernel against exact Bayes, the reference for how far the kernel is.
_ICL_SERIES = (
    (0, "tv_bayes", "tab:blue", "-", 1.8, "model vs exact Bayes"),
    (0, "tv_kernel", "tab:green", "-", 1.8, "model vs theory kernel"),
    (0, "tv_oracle", "tab:gray", "-", 1.0, "model vs oracle"),
    (0, "tv_kernel_bayes", "tab:green", "--", 1.3, "theory kernel vs exact Bayes"),
    (1, "agree_bayes", "tab:blue", "-", 1.8, "model = exact Bayes"),
    (1, "agree_kernel", "tab:green", "-", 1.8, "model = theory kernel"),
    (2, "acc_model", "tab:blue", "-", 1.8, "model"),
    (2, "acc_bayes", "black", "-", 1.4, "exact Bayes"),
    (2, "acc_kernel", "tab:green", "--", 1.3, "theory kernel"),
    (2, "acc_oracle", "tab:orange", ":", 1.4, "oracle (true concept)"),
)


def _icl_records(rows) -> list[dict]:
    recs = []
    for i, r in enumerate(rows.to_dict("records") if hasattr(rows, "to_dict") else rows):
        missing = [c for c in ICL_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"row {i} of the icl-eval table lacks column {missing[0]!r}; "
                             f"expected {', '.join(ICL_COLUMNS)}")
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
    of the model against exact Bayes, the theory kernel estimator (normalised) and the
    oracle, and of the kernel against exact Bayes (dashed); (2) argmax agreement of the model
    with exact Bayes and with the kernel; (3) accuracy against y_test of the model, exact
    Bayes, the kernel and the oracle.  95% CI bands; n = 0 sits at the left edge of a symlog
    axis (the kernel has no n = 0 point).  Series absent from the rows (an older table, or a
    kernel skipped for the world) are simply not drawn."""
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
        for col, metric, colour, ls, lw, label in _ICL_SERIES:
            n, m, lo, hi = series(g, metric)
            if not n:
                continue
            ax = axes[i, col]
            ax.plot(n, m, ls, color=colour, lw=lw, marker="o", ms=3, label=label)
            ax.fill_between(n, lo, hi, color=colour, alpha=0.12, lw=0)
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
    axes[0, 0].set_title("distance of the prediction to exact Bayes, the kernel, the oracle", fontsize=10)
    axes[0, 1].set_title("same argmax label", fontsize=10)
    axes[0, 2].set_title("accuracy against y_test", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path_png)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=_metadata("png")))
    return path


def load_icl(folder) -> tuple[list[dict], dict]:
    """The rows of ``folder/icl_vs_bayes.csv`` and the dict of ``folder/icl_vs_bayes.json``."""
    return _load_results(folder, ICL_FILES[:2], ICL_COLUMNS, _icl_records, "icl-eval",
                         "run `simkernel icl-eval --run RUN --out {folder}` first")


def redraw_icl(folder, out_folder=None) -> Path:
    """Redraw icl_vs_bayes.png from a folder's icl_vs_bayes.csv and .json (into
    ``out_folder``, default the same folder)."""
    rows, meta = load_icl(folder)
    out = Path(out_folder) if out_folder is not None else Path(folder)
    return plot_icl_vs_bayes(rows, out / ICL_FILES[2], title=meta.get("title"))


# ---------------------------------------------------------------------- measurement figures
#: measure's tidy tables (``measure.HEAD_COLUMNS`` etc.): the figures below read only these.
MEASURE_FILES = {"heads": "heads.csv", "best": "best.csv", "profile": "profile.csv", "probes": "probes.csv"}
MEASURE_FIGURES = ("attention_profile.png", "head_scores.png", "probes.png")


def _grid(rows, key_a, key_b, value, where):
    """A (max key_a + 1, max key_b + 1) float array from tidy rows matching ``where``."""
    import numpy as np

    sel = [r for r in rows if all(str(r[k]) == str(v) for k, v in where.items())]
    if not sel:
        return None
    a = max(int(r[key_a]) for r in sel) + 1
    b = max(int(r[key_b]) for r in sel) + 1
    out = np.full((a, b), np.nan)
    for r in sel:
        out[int(r[key_a]), int(r[key_b])] = float(r[value])
    return out


def _save(fig, path, dpi) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=_metadata("png")))
    return path


def plot_attention_profile(profile_rows, path_png, title: str | None = None, dpi: int = DPI) -> Path:
    """The final token's attention over a demonstration span rescaled to a fixed length
    (columns layer, head, position, attention, is_label), in the spirit of the paper's
    Figure 2: left, every head as one row of a heat map (layers separated by lines); right,
    each layer's mean over heads.  The label position (the span's last point) is marked."""
    import numpy as np
    from matplotlib.figure import Figure

    rows = list(profile_rows)
    if not rows:
        raise ValueError("the attention profile table has no rows")
    L = max(int(r["layer"]) for r in rows) + 1
    H = max(int(r["head"]) for r in rows) + 1
    P = max(int(r["position"]) for r in rows) + 1
    prof = np.zeros((L, H, P))
    for r in rows:
        prof[int(r["layer"]), int(r["head"]), int(r["position"])] = float(r["attention"])
    label = [int(r["position"]) for r in rows if str(r["is_label"]) in ("True", "1", "true")]
    label = label[0] if label else P - 1
    fig = Figure(figsize=(11, max(3.5, min(14, 0.12 * L * H + 1.5))))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    im = ax.imshow(prof.reshape(L * H, P), aspect="auto", cmap="viridis", interpolation="nearest")
    for layer in range(1, L):
        ax.axhline(layer * H - 0.5, color="white", lw=0.6)
    ax.axvline(label, color="tab:red", lw=1.0, ls="--")
    ax.set_yticks([layer * H + (H - 1) / 2 for layer in range(L)], [str(layer) for layer in range(L)])
    ax.set_ylabel("layer (one row per head)")
    ax.set_xlabel(f"position in the demonstration, rescaled to {P} (red: label)")
    fig.colorbar(im, ax=ax, label="attention from the final token")
    cmap = __import__("matplotlib").colormaps["viridis"]
    for layer in range(L):
        ax2.plot(np.arange(P), prof[layer].mean(0), color=cmap(layer / max(L - 1, 1)), label=f"layer {layer}")
    ax2.axvline(label, color="tab:red", lw=1.0, ls="--")
    ax2.set_xlabel("rescaled position (red: label)")
    ax2.set_ylabel("mean attention over heads")
    if L <= 12:
        ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path_png, dpi)


def plot_head_scores(head_rows, best_rows, path_png, split: str = "report", title: str | None = None,
                     dpi: int = DPI) -> Path:
    """Layer x head heat maps of every (measure, reference) in the heads table on ``split``
    (held out from head selection by default): agreement of each head's reconstructed vote
    with a reference, and correlations of its demonstration weights with a kernel.  The head
    chosen on the selection split is boxed."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows = list(head_rows)
    keys = list(dict.fromkeys((r["measure"], r["reference"]) for r in rows))
    if not keys:
        raise ValueError("the heads table has no rows")
    chosen = {(b["measure"], b["reference"]): (int(b["layer"]), int(b["head"])) for b in best_rows}
    ncol = min(4, len(keys))
    nrow = -(-len(keys) // ncol)
    fig = Figure(figsize=(3.3 * ncol, 2.9 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, (measure, ref) in zip(axes.flat, keys):
        g = _grid(rows, "layer", "head", "value", {"measure": measure, "reference": ref, "split": split})
        corr = measure != "agree"
        im = ax.imshow(g, aspect="auto", cmap="RdBu_r" if corr else "viridis", interpolation="nearest",
                       vmin=-1 if corr else 0, vmax=1)
        if (measure, ref) in chosen:
            layer, head = chosen[(measure, ref)]
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="tab:red", lw=1.8))
        ax.set_title(f"{measure} with {ref}", fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        fig.colorbar(im, ax=ax)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle((title + "\n" if title else "") + f"per head, {split} split (red box: chosen on the "
                 "selection split)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path_png, dpi)


def plot_probes(probe_rows, path_png, title: str | None = None, dpi: int = DPI) -> Path:
    """Ridge-probe test accuracy per layer (best head of the layer), one line per offset
    from the label position; one panel per vector (keys, values)."""
    import numpy as np
    from matplotlib.figure import Figure

    rows = list(probe_rows)
    vectors = list(dict.fromkeys(r["vector"] for r in rows))
    if not vectors:
        raise ValueError("the probes table has no rows")
    fig = Figure(figsize=(5 * len(vectors), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(vectors)))
    for ax, vec in zip(axes, vectors):
        sel = [r for r in rows if r["vector"] == vec]
        target = sel[0]["target"]
        for off in sorted({int(r["offset"]) for r in sel}):
            g = _grid(sel, "layer", "head", "accuracy", {"offset": off})
            probed = np.flatnonzero(np.isfinite(g).any(1))       # only some layers may be probed
            ax.plot(probed, np.nanmax(g[probed], 1), marker="o", ms=3, label=f"offset {off:+d}")
        ax.set_xlabel("layer")
        ax.set_ylabel("test accuracy (best head)")
        ax.set_title(f"{vec} -> {target}", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path_png, dpi)


def load_measurements(folder) -> dict:
    """The four tidy tables of a measurement folder as lists of dicts (one-line errors)."""
    folder = Path(folder)
    tables = {}
    for name, fname in MEASURE_FILES.items():
        path = folder / fname
        if not path.is_file():
            raise ValueError(f"{str(folder)!r} has no {fname}; allowed: a folder written by "
                             f"`simkernel measure` or `simkernel llm`")
        with path.open(newline="") as f:
            tables[name] = list(csv.DictReader(f))
    return tables


def draw_measurements(tables: dict, folder, title: str | None = None) -> list[Path]:
    """Every measurement figure (``MEASURE_FIGURES``) from the tables into ``folder``."""
    folder = Path(folder)
    out = [plot_attention_profile(tables["profile"], folder / MEASURE_FIGURES[0], title),
           plot_head_scores(tables["heads"], tables["best"], folder / MEASURE_FIGURES[1], title=title)]
    if tables["probes"]:
        out.append(plot_probes(tables["probes"], folder / MEASURE_FIGURES[2], title))
    return out


def redraw_measurements(folder, out_folder=None) -> list[Path]:
    """Every measurement figure of ``folder`` (tables from `simkernel measure` or `simkernel
    llm`, the title from its measure.json / llm.json when present) into ``out_folder``
    (default: ``folder``)."""
    folder = Path(folder)
    title = None
    for name in ("measure.json", "llm.json"):
        try:
            title = json.loads((folder / name).read_text()).get("title")
            break
        except (OSError, ValueError, AttributeError):
            continue
    return draw_measurements(load_measurements(folder), folder if out_folder is None else out_folder, title)
