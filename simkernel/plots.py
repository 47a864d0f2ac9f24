"""Figures, drawn only from tidy tables: a figure is redrawn from its CSV and JSON alone.

``plot_convergence(rows, fits, path_png, path_pdf, title)`` draws the figure of
``simkernel converge`` from the rows of ``convergence.csv`` (columns n_demos, estimator,
kernel, metric, mean, ci_low, ci_high, n_prompts) and the power-law fits stored in
``convergence.json``; ``load_convergence(folder)`` reads both back.  Nothing here runs an
experiment or computes a statistic.

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


def load_convergence(folder) -> tuple[list[dict], dict]:
    """The rows of ``folder/convergence.csv`` and the dict of ``folder/convergence.json``."""
    folder = Path(folder)
    f_csv, f_json = folder / "convergence.csv", folder / "convergence.json"
    for f in (f_csv, f_json):
        if not f.is_file():
            raise ValueError(f"{str(folder)!r} holds no {f.name} (run `simkernel converge --out {folder}` first)")
    try:
        with open(f_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in CONVERGENCE_COLUMNS if c not in header]
            if missing:
                raise ValueError(f"{str(f_csv)!r} lacks column {missing[0]!r}; expected {', '.join(CONVERGENCE_COLUMNS)}")
            rows = _records(list(reader))
        meta = json.loads(f_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read the convergence results in {str(folder)!r} ({type(e).__name__})") from None
    if not rows:
        raise ValueError(f"{str(f_csv)!r} has no rows")
    if not isinstance(meta, dict):
        raise ValueError(f"{str(f_json)!r} is not a convergence.json (expected a JSON object)")
    return rows, meta


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
_GROUP_STYLES = {"prior": "-", "id": "-", "ood": "--"}


def plot_icl_vs_bayes(rows, path_png, title: str | None = None, dpi: int = DPI) -> Path:
    """The figure of ``simkernel icl-eval`` from its tidy rows (columns ``ICL_COLUMNS``).

    Panel 1: total variation between the model's label distribution and exact Bayes against n
    (and, thin, the model against the oracle).  Panel 2: accuracy against y_test of the model,
    exact Bayes and the oracle.  Solid lines in-distribution ('id' / 'prior'), dashed
    out-of-distribution; 95% CI bands.  n = 0 is drawn at the left edge of a symlog axis."""
    recs = []
    for i, r in enumerate(rows.to_dict("records") if hasattr(rows, "to_dict") else rows):
        missing = [c for c in ICL_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"row {i} of the icl-eval table lacks column {missing[0]!r}")
        recs.append({"n_demos": int(r["n_demos"]), "concepts": str(r["concepts"]), "metric": str(r["metric"]),
                     "mean": float(r["mean"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"])})
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    groups = list(dict.fromkeys(r["concepts"] for r in recs))

    def series(group, metric):
        sel = sorted((r for r in recs if r["concepts"] == group and r["metric"] == metric), key=lambda r: r["n_demos"])
        return ([r["n_demos"] for r in sel], [r["mean"] for r in sel], [r["ci_low"] for r in sel],
                [r["ci_high"] for r in sel])

    fig = Figure(figsize=(11.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for g in groups:
        ls = _GROUP_STYLES.get(g, ":")
        for ax, metric, colour, label, lw in (
                (ax1, "tv_bayes", "tab:blue", "model vs exact Bayes", 1.8),
                (ax1, "tv_oracle", "tab:gray", "model vs oracle", 1.0),
                (ax2, "acc_model", "tab:blue", "model", 1.8),
                (ax2, "acc_bayes", "black", "exact Bayes", 1.4),
                (ax2, "acc_oracle", "tab:orange", "oracle (true concept)", 1.2)):
            n, m, lo, hi = series(g, metric)
            if not n:
                continue
            ax.plot(n, m, ls, color=colour, lw=lw, marker="o", ms=3, label=f"{label} ({g})")
            ax.fill_between(n, lo, hi, color=colour, alpha=0.12, lw=0)
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.xaxis.set_major_formatter(fmt)
        ax.set_xlabel("n (demonstrations)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    ax1.set_ylim(bottom=0)
    ax1.set_ylabel("total variation over the label set")
    ax1.set_title("distance of the model's prediction to exact Bayes (95% CI bands)", fontsize=10)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("accuracy (argmax == y_test)")
    ax2.set_title("accuracy: model, exact Bayes, oracle", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path_png)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=_metadata("png")))
    return path
