"""Figures, drawn only from tidy tables: a figure is redrawn from its CSV and JSON alone.

``plot_convergence(rows, fits, path_png, path_pdf, title)`` draws the figure of
``simkernel converge`` from the rows of ``convergence.csv`` (``CONVERGENCE_COLUMNS``: n_demos,
estimator, kernel, metric, mean, ci_low, ci_high, n_prompts, n_worlds; n_demos is a whole
number or ``inf`` for the exact n -> oo limit; a table older than n_worlds reads as one world)
and the power-law fits stored under "fits" in ``convergence.json``;
``load_convergence(folder)`` reads both back.  ``plot_icl_vs_bayes``,
``load_icl`` and ``redraw_icl`` do the same for ``simkernel icl-eval``'s icl_vs_bayes.csv and
.json.  Nothing here runs an experiment or computes a statistic.

matplotlib is imported lazily and drawn through its Agg canvas (no pyplot, no global
backend switch), so importing this module costs nothing and it works on a headless machine.
Files are written atomically (temp name beside the target, then rename).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .constants import CONVERGENCE_COLUMNS, ICL_COLUMNS  # one schema per table, spelled once
from .store import atomic_write

#: Columns a table may lack, with the value they then take: tables written before n_worlds
#: pooled the prompts of a single world.
_CONVERGENCE_OPTIONAL = {"n_worlds": 1}
_CONVERGENCE_REQUIRED = tuple(c for c in CONVERGENCE_COLUMNS if c not in _CONVERGENCE_OPTIONAL)
DPI = 110

#: One colour per kernel.  frequency (K ≡ 1) is the null model every kernel must beat, so it
#: is grey and dashed: a reference, not a contender.
_COLOURS = {"theory": "tab:blue", "oracle": "tab:orange", "similarity": "tab:green", "frequency": "0.35"}
_KERNEL_LINES = {"frequency": "--"}
_KERNEL_LABELS = {"frequency": "frequency (K ≡ 1: label-frequency baseline)"}
#: theory is drawn thinnest and on top, oracle widest and below, so coinciding curves both show.
_WIDTHS = {"theory": 1.2, "oracle": 2.8, "similarity": 1.6, "frequency": 1.5}
_ZORDER = {"theory": 9, "oracle": 3, "similarity": 6, "frequency": 5}
_EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
#: Rows that score exact Bayes itself, not a kernel estimate (estimator '-').
_REFERENCE_KERNELS = ("bayes", "bayes-vs-oracle", "bayes-vs-known")
#: The one estimator drawn (else the table's first): Nadaraya–Watson normalisation makes every
#: kernel's estimate a distribution, so the kernels are compared on equal terms.
_PRIMARY_ESTIMATOR = "normalised"
#: A log panel spans at most this many decades below its top, so a limit that is exactly 0
#: up to rounding (1e-12) does not squash every other curve into the top of the panel.
_LOG_DECADES = 4


# ---------------------------------------------------------------------- reading tables
def _records(rows) -> list[dict]:
    """A list of dicts or a pandas DataFrame -> a list of dicts with typed values: n_demos an
    int >= 1 or ``math.inf`` (the exact limit), mean / ci_low / ci_high floats (NaN allowed: a
    metric no prompt defined), n_prompts / n_worlds ints (n_worlds 1 when the table lacks it).
    Anything else is a one-line ValueError naming the row."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    out = []
    for i, r in enumerate(rows):
        missing = [c for c in _CONVERGENCE_REQUIRED if c not in r]
        if missing:
            raise ValueError(f"row {i} of the convergence table lacks column {missing[0]!r}; "
                             f"expected {', '.join(CONVERGENCE_COLUMNS)} (n_worlds optional)")
        # repr keeps the message on one line whatever the cells hold
        where = (f"row {i} of the convergence table (n_demos {r['n_demos']!r}, kernel {r['kernel']!r}, "
                 f"estimator {r['estimator']!r}, metric {r['metric']!r})")
        rec = {"n_demos": _n_demos(r["n_demos"], where), "estimator": str(r["estimator"]),
               "kernel": str(r["kernel"]), "metric": str(r["metric"])}
        for c in ("mean", "ci_low", "ci_high"):
            rec[c] = _table_float(r[c], c, where)
        for c in ("n_prompts", "n_worlds"):
            rec[c] = _table_count(r.get(c, _CONVERGENCE_OPTIONAL.get(c)), c, where)
        out.append(rec)
    return out


def _as_float(v) -> float | None:
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        return None


def _n_demos(v, where: str):
    x = _as_float(v)
    if x == math.inf:
        return math.inf
    if x is None or not math.isfinite(x) or x != int(x) or x < 1:
        raise ValueError(f"{where} has n_demos {v!r}; allowed: a whole number >= 1, or inf for the n -> oo limit")
    return int(x)


def _table_float(v, column: str, where: str) -> float:
    x = _as_float(v)
    if x is None:
        raise ValueError(f"{where} has a non-numeric {column}: {v!r}")
    if math.isinf(x):
        raise ValueError(f"{where} has {column} {v!r}; inf is allowed only in n_demos")
    return x


def _table_count(v, column: str, where: str) -> int:
    x = _as_float(v)
    if x is None or not math.isfinite(x) or x != int(x) or x < 0:
        raise ValueError(f"{where} has {column} {v!r}; allowed: a whole number >= 0")
    return int(x)


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
    return _load_results(folder, ("convergence.csv", "convergence.json"), _CONVERGENCE_REQUIRED, _records,
                         "convergence", "run `simkernel converge --out {folder}` first")


def _series(rows, kernel, estimator, metric):
    """(n, mean, ci_low, ci_high) at the finite n, in increasing n (the n = inf row: _limit)."""
    sel = sorted((r for r in rows if r["kernel"] == kernel and r["estimator"] == estimator
                  and r["metric"] == metric and r["n_demos"] != math.inf), key=lambda r: r["n_demos"])
    return ([r["n_demos"] for r in sel], [r["mean"] for r in sel],
            [r["ci_low"] for r in sel], [r["ci_high"] for r in sel])


def _limit(rows, kernel, estimator, metric):
    """(mean, ci_low, ci_high) of the n = inf row, or None."""
    for r in rows:
        if (r["n_demos"] == math.inf and r["kernel"] == kernel and r["estimator"] == estimator
                and r["metric"] == metric):
            return r["mean"], r["ci_low"], r["ci_high"]
    return None


def _fit_curve(fit, n_lo, n_hi):
    """The fitted a·n^slope + floor on a log-spaced grid over n_lo..n_hi, on the fit's own scale."""
    n = [n_lo * (n_hi / n_lo) ** (i / 99) for i in range(100)] if n_hi > n_lo else [n_lo]
    return n, [fit["amplitude"] * m ** fit["slope"] + fit["floor"] for m in n]


def _fit_range(fit, n_lo, n_hi) -> tuple[float, float]:
    """The fit's n_range cut to the n the table holds (older fits have none: all of them)."""
    rng = fit.get("n_range")
    if isinstance(rng, (list, tuple)) and len(rng) == 2 and _finite(*rng) and rng[0] <= rng[1]:
        return max(rng[0], n_lo), min(rng[1], n_hi)
    return n_lo, n_hi


def _fit_usable(fit) -> bool:
    """A fit worth a line: finite, and not flagged degenerate (a slope on a bound of the
    search is the search's edge, not a measurement)."""
    return (not fit.get("degenerate", False)
            and _finite(fit.get("slope"), fit.get("floor"), fit.get("amplitude")))


def _primary_estimator(rows) -> str | None:
    present = list(dict.fromkeys(r["estimator"] for r in rows
                                 if r["kernel"] not in _REFERENCE_KERNELS and r["estimator"] != "-"))
    if _PRIMARY_ESTIMATOR in present:
        return _PRIMARY_ESTIMATOR
    return present[0] if present else None


def _kernels(rows, estimator) -> list[str]:
    """The kernels with rows for ``estimator``: the known ones in a fixed order (so colours and
    legends do not depend on row order), then the others as they come."""
    present = list(dict.fromkeys(r["kernel"] for r in rows if r["estimator"] == estimator
                                 and r["kernel"] not in _REFERENCE_KERNELS))
    return [k for k in _COLOURS if k in present] + [k for k in present if k not in _COLOURS]


def _log_range(means, highs) -> tuple[float, float] | None:
    """y limits of a log panel: every positive mean and upper CI bound in view, but at most
    _LOG_DECADES decades below the top."""
    pos = [v for v in means if _finite(v) and v > 0]
    if not pos:
        return None
    top = max(pos + [v for v in highs if _finite(v) and v > 0]) * 1.6
    return max(min(pos) / 1.6, top / 10 ** _LOG_DECADES), top


def _log2_ticks(n_lo, n_hi) -> list[int]:
    """Powers of 2 in n_lo..n_hi, and n_hi itself unless a power of 2 sits close below it."""
    ticks, p = [], 1
    while p <= n_hi:
        if p >= n_lo:
            ticks.append(p)
        p *= 2
    if not ticks or n_hi / ticks[-1] >= 1.4:
        ticks.append(n_hi)
    return ticks


def _num(x: float) -> str:
    """Two decimals, without a negative zero."""
    t = f"{x:.2f}"
    return t[1:] if t == "-0.00" else t


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


# ---------------------------------------------------------------------- the convergence figure
def plot_convergence(rows, fits: dict, path_png, path_pdf=None, title: str | None = None,
                     dpi: int = DPI) -> list[Path]:
    """Draw the convergence figure from the tidy rows and the fits; write PNG (and PDF).

    One estimator is drawn (normalised when the table has it, else its first), one line per
    kernel with 95% CI bands; frequency (K ≡ 1), the baseline, grey and dashed.

    1. log-log: total variation to exact Bayes against n; exact Bayes against the oracle (and
       against the concept-known predictive, when the table has it) as thin black references;
       at "∞", an octave right of the largest n, each kernel's exact n -> oo limit scored
       against the oracle, with its CI: the floor no number of demonstrations gets below.
    2. log-log: total variation between the estimate and its own n -> oo limit (the sampling
       term), the power law fitted to it over the fit's n_range (dotted; none for a
       degenerate fit, which the legend flags instead) and a line ∝ n^(-1/2) for reference.
    3. tie-fair argmax agreement with exact Bayes, exact Bayes' own accuracy against y_test
       as a reference, and at "∞" the limits' agreement with the oracle.

    Series absent from the rows are skipped.  Returns the paths written."""
    rows = _records(rows)
    if not rows:
        raise ValueError("the convergence table has no rows")
    fits = {} if fits is None else fits
    if not isinstance(fits, dict):
        raise ValueError(f"the fits must map 'kernel/estimator' to a fit, not be a {type(fits).__name__}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatterSciNotation, NullLocator

    class PlainLog(LogFormatterSciNotation):
        """matplotlib's choice of which log ticks to label, written 0.3 rather than 3×10⁻¹."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    est = _primary_estimator(rows)
    kernels = _kernels(rows, est) if est is not None else []
    shown = est if est is not None else "no kernel"      # a table of reference rows only
    extra = iter(_EXTRA_COLOURS)
    colour = {k: _COLOURS.get(k) or next(extra, "tab:gray") for k in kernels}
    ns = sorted({r["n_demos"] for r in rows if r["n_demos"] != math.inf})
    n_lo, n_hi = (ns[0], ns[-1]) if ns else (1, 1)
    has_inf = any(r["n_demos"] == math.inf for r in rows)
    # one octave right of N on the log axis: apart from the data, yet on the same scale
    x_inf = 2 * n_hi
    marker = "o" if len(ns) <= 24 else None

    def style(k):
        return dict(color=colour[k], ls=_KERNEL_LINES.get(k, "-"), lw=_WIDTHS.get(k, 1.4),
                    zorder=_ZORDER.get(k, 5), marker=marker, ms=3)

    def fit_of(k):
        fit = fits.get(f"{k}/{est}")
        return fit if isinstance(fit, dict) else None

    def curve(ax, n, m, lo, hi, bottom, label, band=True, **st):
        ax.plot(n, m, label=label, **st)
        if not band:
            return
        if bottom is not None:
            # a CI reaching 0 runs off the bottom of the log panel instead of vanishing there
            cut = bottom / 100
            lo = [cut if v <= cut else v for v in lo]
            hi = [cut if v <= cut else v for v in hi]
        ax.fill_between(n, lo, hi, color=st["color"], alpha=0.11, lw=0)

    def limits(ax, items, bottom):
        """Markers with error bars at x_inf, a little apart so overlapping bars stay readable;
        on a log panel a limit below the panel sits on its bottom edge as a ▼."""
        items = [(c, v) for c, v in items if v is not None and _finite(v[0])]
        below = False
        for j, (c, (m, lo, hi)) in enumerate(items):
            x = x_inf * 2 ** (0.12 * (j - (len(items) - 1) / 2))
            shape = "D"
            if bottom is not None and m < bottom:
                m, shape, below = bottom * 1.12, "v", True
            lo = m if not _finite(lo) else (max(lo, bottom / 100) if bottom is not None else lo)
            hi = m if not _finite(hi) else hi
            ax.errorbar([x], [m], yerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]], fmt=shape, color=c, ms=6,
                        mec="white", mew=0.6, capsize=3, elinewidth=1.3, zorder=12)
        return below

    def x_axis(ax, with_inf):
        ax.set_xscale("log", base=2)
        ticks = _log2_ticks(n_lo, n_hi)
        labels = [f"{t:g}" for t in ticks]
        if with_inf:
            ax.axvspan(n_hi * 2 ** 0.5, x_inf * 2 ** 0.55, color="0.93", lw=0, zorder=0)
            ticks, labels = ticks + [x_inf], labels + ["∞"]
            ax.set_xlim(n_lo / 1.3, x_inf * 2 ** 0.55)
        else:
            ax.set_xlim(n_lo / 1.15, n_hi * 1.15)
        ax.set_xticks(ticks, labels)
        # a log axis would put minor ticks between N and "∞", where no n lies
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("n (demonstrations)")
        ax.grid(True, which="major", alpha=0.3)

    def log_labels(ax):
        ax.yaxis.set_major_formatter(PlainLog())
        ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))

    def finish_log(ax, rng, with_inf, ylabel, title):
        """A log-y panel's axes, range, labels and title (panels 1 and 2)."""
        ax.set_yscale("log", nonpositive="mask")
        log_labels(ax)
        if rng:
            ax.set_ylim(*rng)
        x_axis(ax, with_inf)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)

    def fit_lines(ax, metric) -> str | None:
        """The fits of ``metric`` as dotted lines; returns a legend title when they share one n range."""
        # fits written before tv_limit were fitted to the TV to exact Bayes (metric "tv")
        chosen = [(k, fit_of(k)) for k in kernels if fit_of(k) and fit_of(k).get("metric", "tv") == metric]
        ranges = {_fit_range(f, n_lo, n_hi) for _k, f in chosen if _fit_usable(f)}
        for k, fit in chosen:
            if not _fit_usable(fit):
                ax.plot([], [], ls="none", marker="x", color=colour[k], label=f"{k}: (degenerate fit) not drawn")
                continue
            a, b = _fit_range(fit, n_lo, n_hi)
            fn, fy = _fit_curve(fit, a, b)
            where = "" if len(ranges) == 1 else f" (n = {a:g}..{b:g})"
            ax.plot(fn, fy, ls=":", color=colour[k], lw=2.2, zorder=12,
                    label=f"{k}: slope {_num(fit['slope'])}, floor {fit['floor']:.2g}{where}")
        if not chosen:
            return None
        span = f", n = {min(ranges)[0]:g}..{min(ranges)[1]:g}" if len(ranges) == 1 else ""
        return f"dotted: fitted a·n^slope + floor{span}"

    def legend(ax, extra_handles=(), title=None):
        handles, labels = ax.get_legend_handles_labels()
        handles += list(extra_handles)
        labels += [h.get_label() for h in extra_handles]
        if handles:
            # under the panel, never over the data
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8,
                      title=title, title_fontsize=8, frameon=False,
                      ncol=2 if len(handles) > 4 and max(map(len, labels)) <= 40 else 1)

    fig = Figure(figsize=(17.0, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    label = {k: _KERNEL_LABELS.get(k, k) for k in kernels}

    # ---- panel 1: distance to exact Bayes
    tv = {k: _series(rows, k, est, "tv") for k in kernels}
    tv_inf = {k: _limit(rows, k, est, "tv") for k in kernels}
    refs = [(kname, _series(rows, kname, "-", "tv"), ls, text) for kname, ls, text in (
        ("bayes-vs-oracle", ":", "exact Bayes vs the oracle (reference)"),
        ("bayes-vs-known", "-.", "exact Bayes vs the concept-known predictive (reference)"))]
    refs = [r for r in refs if r[1][0]]
    means = [v for s in tv.values() for v in s[1]] + [v[0] for v in tv_inf.values() if v]
    highs = [v for s in tv.values() for v in s[3]] + [v[2] for v in tv_inf.values() if v]
    # exact Bayes falls to 0 (machine precision): show where it starts, not its fall
    means += [v for _k, s, _ls, _t in refs for v in (s[1] if not means else s[1][:1])]
    rng1 = _log_range(means, highs)
    bottom1 = rng1[0] if rng1 else None
    for k in kernels:
        if tv[k][0]:
            curve(ax1, *tv[k], bottom1, label[k], **style(k))
    # references without their bands: a band per reference hides the kernels' bands
    for _k, s, ls, text in refs:
        curve(ax1, *s, bottom1, text, band=False, color="black", ls=ls, lw=1.0, zorder=11, marker=marker, ms=2)
    fits1 = fit_lines(ax1, "tv")
    below1 = limits(ax1, [(colour[k], tv_inf[k]) for k in kernels], bottom1)
    finish_log(ax1, rng1, has_inf, "TV to exact Bayes", f"distance to exact Bayes ({shown} estimator)")
    proxies = []
    if any(tv_inf.values()):
        proxies.append(Line2D([], [], ls="none", marker="D", color="0.2",
                              label="∞: exact n → ∞ limit of the kernel, TV to the oracle"))
    if below1:
        proxies.append(Line2D([], [], ls="none", marker="v", color="0.2", label="▼: limit below the panel (≈ 0)"))
    legend(ax1, proxies, fits1)

    # ---- panel 2: the sampling term
    tvl = {k: _series(rows, k, est, "tv_limit") for k in kernels}
    tvl = {k: s for k, s in tvl.items() if s[0]}
    rng2 = _log_range([v for s in tvl.values() for v in s[1]], [v for s in tvl.values() for v in s[3]])
    bottom2 = rng2[0] if rng2 else None
    for k, s in tvl.items():
        curve(ax2, *s, bottom2, None, **style(k))
    fits2 = fit_lines(ax2, "tv_limit")
    if tvl:
        anchor = "theory" if "theory" in tvl else next(iter(tvl))
        n_a = _fit_range(fit_of(anchor), n_lo, n_hi)[0] if fit_of(anchor) else n_lo
        n, m = tvl[anchor][:2]
        start = next(((x, y) for x, y in zip(n, m) if x >= n_a and _finite(y) and y > 0), None)
        if start and start[0] < n_hi:
            x0, y0 = start
            ax2.plot([x0, n_hi], [y0, y0 * (n_hi / x0) ** -0.5], color="0.55", lw=1.0, zorder=2,
                     label=rf"$\propto n^{{-1/2}}$ (through {anchor} at n = {x0:g})")
    finish_log(ax2, rng2, False, "TV to its n → ∞ limit",
               f"sampling term: distance to the estimator's own limit ({shown})")
    legend(ax2, title=fits2)

    # ---- panel 3: agreement
    for k in kernels:
        s = _series(rows, k, est, "agree")
        if s[0]:
            curve(ax3, *s, None, None, **style(k))
    s = _series(rows, "bayes", "-", "acc")
    if s[0]:
        curve(ax3, *s, None, "exact Bayes: accuracy vs y_test (at ∞: the oracle's)", band=False,
              color="black", ls="-.", lw=1.2, zorder=11, marker=marker, ms=2)
    items = [(colour[k], _limit(rows, k, est, "agree")) for k in kernels]
    items.append(("black", _limit(rows, "bayes", "-", "acc")))
    limits(ax3, items, None)
    ax3.set_ylim(-0.03, 1.05)
    x_axis(ax3, has_inf)
    ax3.set_ylabel("argmax agreement with exact Bayes (ties 1/m)")
    ax3.set_title(f"agreement with exact Bayes ({shown} estimator)", fontsize=10)
    legend(ax3, [Line2D([], [], ls="none", marker="D", color="0.2",
                        label="∞: the limit's agreement with the oracle")] if any(i[1] for i in items[:-1]) else [])

    if title:
        worlds = max(r["n_worlds"] for r in rows)
        prompts = max(r["n_prompts"] for r in rows)
        unit = f"{worlds} worlds" if worlds > 1 else f"{prompts} prompts"
        caption = f"{shown} estimator, {prompts} prompts; bands and bars: 95% CI over {unit}"
        if has_inf:
            caption += "; ∞: the exact n → ∞ limit, scored against the oracle P(y | x_test, true concept)"
        fig.suptitle(f"{title}\n{caption}", fontsize=10)

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
ICL_FILES = ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png")
_GROUP_TITLES = {"prior": "concepts drawn from the prior", "id": "in-distribution concepts (prior > 0)",
                 "ood": "out-of-distribution concepts (prior = 0)"}
#: (panel, metric, colour, line style, width, marker, label).  Solid: the model against
#: something; dashed: the theory kernel against exact Bayes, the reference for how far the
#: kernel is.  The label-frequency baseline (the null model a kernel has to beat) is purple,
#: dotted / dash-dotted with hollow square markers, so it never reads as a kernel curve.
_ICL_SERIES = (
    (0, "tv_bayes", "tab:blue", "-", 1.8, "o", "model vs exact Bayes"),
    (0, "tv_kernel", "tab:green", "-", 1.8, "o", "model vs theory kernel"),
    (0, "tv_oracle", "tab:gray", "-", 1.0, "o", "model vs oracle"),
    (0, "tv_kernel_bayes", "tab:green", "--", 1.3, "o", "theory kernel vs exact Bayes"),
    (0, "tv_frequency", "tab:purple", ":", 1.3, "s", "model vs label frequencies (baseline)"),
    (0, "tv_frequency_bayes", "tab:purple", "-.", 1.3, "s", "label frequencies vs exact Bayes"),
    (1, "agree_bayes", "tab:blue", "-", 1.8, "o", "model = exact Bayes"),
    (1, "agree_kernel", "tab:green", "-", 1.8, "o", "model = theory kernel"),
    (1, "agree_frequency", "tab:purple", ":", 1.3, "s", "model = label frequencies (baseline)"),
    (2, "acc_model", "tab:blue", "-", 1.8, "o", "model"),
    (2, "acc_bayes", "black", "-", 1.4, "o", "exact Bayes"),
    (2, "acc_kernel", "tab:green", "--", 1.3, "o", "theory kernel"),
    (2, "acc_oracle", "tab:orange", ":", 1.4, "o", "oracle (true concept)"),
    (2, "acc_frequency", "tab:purple", "-.", 1.3, "s", "label frequencies (baseline)"),
)
#: Markers drawn hollow: the baseline's.
_HOLLOW = {"s"}


def _checked_rows(rows, columns, what):
    """(index, row) of a tidy table (a list of dicts or a DataFrame) whose rows all hold ``columns``."""
    for i, r in enumerate(rows.to_dict("records") if hasattr(rows, "to_dict") else rows):
        missing = [c for c in columns if c not in r]
        if missing:
            raise ValueError(f"row {i} of the {what} table lacks column {missing[0]!r}; "
                             f"expected {', '.join(columns)}")
        yield i, r


def _icl_records(rows) -> list[dict]:
    recs = []
    for i, r in _checked_rows(rows, ICL_COLUMNS, "icl-eval"):
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
            ax.fill_between(n, lo, hi, color=colour, alpha=0.07 if hollow else 0.12, lw=0)
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
#: the measurement's tidy tables (``analysis.HEAD_COLUMNS`` etc.): the figures below read only these.
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


# ---------------------------------------------------------------------- measurement figures: reference votes
#: the reference votes beside the chosen heads, from references.csv (and pooled.csv)
REFERENCES_FIGURE = "references.png"


def plot_references(reference_rows, path_png, pooled_rows=None, title: str | None = None, dpi: int = DPI) -> Path:
    """A forest plot per target (the prediction a vote is scored against: model, bayes, gold,
    ...): for each reference vote (uniform, the kernels clipped at 0, shuffled, best), the
    held-out difference head minus reference with its paired bootstrap CI (columns of
    ``analysis.REFERENCE_COLUMNS``, plus ``run`` when several runs are drawn, one marker
    each), and, from ``pooled_rows`` (``alignment.POOLED_COLUMNS``), the pooled difference
    with its interval over runs (black).  Right of 0: the head beats the reference."""
    import numpy as np
    from matplotlib.figure import Figure

    rows = list(reference_rows)
    if not rows:
        raise ValueError("the references table has no rows")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    refs = list(dict.fromkeys(r["reference"] for r in rows))
    runs = list(dict.fromkeys(r.get("run", "") for r in rows))
    pooled = {(r["target"], r["reference"]): r for r in (pooled_rows or [])}
    ncol = min(3, len(targets))
    nrow = -(-len(targets) // ncol)
    fig = Figure(figsize=(4.4 * ncol, 0.45 * len(refs) * nrow + 1.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    cmap = __import__("matplotlib").colormaps["tab10"]
    span = 0.6 / max(len(runs), 1)
    for ax, target in zip(axes.flat, targets):
        for k, run in enumerate(runs):
            sel = {r["reference"]: r for r in rows if r["target"] == target and r.get("run", "") == run}
            for j, ref in enumerate(refs):
                if ref not in sel:
                    continue
                d, lo, hi = (_as_float(sel[ref][c]) for c in ("difference", "diff_lo", "diff_hi"))
                if not _finite(d, lo, hi):
                    continue
                y = j - 0.3 + span * (k + 0.5)
                ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", ms=3, color=cmap(k % 10),
                            label=run if (j == 0 and run) else None)
        for j, ref in enumerate(refs):
            p = pooled.get((target, ref))
            if p is not None and int(p["n_runs"]) > 1:
                d, lo, hi = (_as_float(p[c]) for c in ("difference", "lo", "hi"))
                if _finite(d, lo, hi):
                    ax.errorbar([d], [j], xerr=[[d - lo], [hi - d]], fmt="D", ms=5, color="black", lw=2,
                                label="pooled" if j == 0 else None)
        head = next((r for r in rows if r["target"] == target), {})
        ax.axvline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(range(len(refs)), refs, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("head minus reference (held-out agreement)", fontsize=8)
        where = f" (L{head.get('layer')} H{head.get('head')})" if len(runs) == 1 else ""
        ax.set_title(f"agreement with {target}: chosen head{where}", fontsize=8)
        if len(runs) > 1 or pooled:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(targets):]:
        ax.set_visible(False)
    fig.suptitle((title + "\n" if title else "") + "each reference vote beside the head chosen by agreement with "
                 "the target (95% CIs)", fontsize=9)
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


# ---------------------------------------------------------------------- the phenomena figures
#: ``phenomena.COLUMNS`` (spelled here too: plots must not import the Numba-heavy modules).
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
    for i, r in _checked_rows(rows, PHENOMENON_COLUMNS, "phenomenon"):
        where = f"row {i} of the phenomenon table (setting {r['setting']!r}, metric {r['metric']!r})"
        n = _as_float(r["n_demos"])
        if n is None:
            raise ValueError(f"{where} has n_demos {r['n_demos']!r}; allowed: a whole number, or inf")
        rec = {"setting": str(r["setting"]), "n_demos": n, "predictor": str(r["predictor"]), "metric": str(r["metric"])}
        for c in ("mean", "ci_low", "ci_high"):
            v = _as_float(r[c])
            rec[c] = math.nan if v is None else v
        recs.append(rec)
    return recs


def _split_setting(s: str):
    """'group:value' -> (group, float value); a setting without a number -> (s, None)."""
    if ":" in s:
        g, v = s.rsplit(":", 1)
        x = _as_float(v)
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
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=_metadata("png")))
    return path


# ---------------------------------------------------------------------- sweeps
def plot_sweep(table, x: str, y: str, path_png=None, *, hue: str | None = None, where: dict | None = None,
               title: str | None = None, out=None, dpi: int = DPI) -> Path:
    """Y against X, one line per value of HUE, from a sweep's combined table (a DataFrame:
    ``simkernel.sweep.SweepResult.table``): the line is the mean over the other rows (worlds,
    seeds, ...) and the band its 95% bootstrap interval (seaborn).  ``y`` is a column, or a value
    of the table's ``metric`` column (then the ``mean`` of those rows).  ``where``: {column:
    value as text} filters.  Failed jobs' rows are left out.  One-line ValueErrors name a
    missing column and the ones there are."""
    import seaborn as sns

    df = table[table["status"] == "done"] if "status" in table.columns else table
    for col, val in (where or {}).items():
        if col not in df.columns:
            raise ValueError(f"where column {col!r} is not in the table; allowed: {', '.join(df.columns)}")
        df = df[df[col].astype(str) == str(val)]
    value = y
    if y not in df.columns:
        if "metric" in df.columns and y in set(df["metric"]):
            df, value = df[df["metric"] == y], "mean"
        else:
            metrics = sorted(set(df["metric"])) if "metric" in df.columns else []
            raise ValueError(f"y {y!r} is neither a column nor a metric; allowed: {', '.join(df.columns)}"
                             + (f"; metrics: {', '.join(metrics)}" if metrics else ""))
    for name, col in (("x", x), ("hue", hue)):
        if col is not None and col not in df.columns:
            raise ValueError(f"{name} {col!r} is not a column of the table; allowed: {', '.join(df.columns)}")
    if df.empty:
        raise ValueError("no rows left to plot (every job failed, or the where filters match nothing)")
    df = df[[c for c in {x, value, hue} if c is not None]].copy()
    df = df[df[x].astype(str) != "inf"]        # exact n -> ∞ limits are not points on an n axis
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if hue is not None:
        df[hue] = df[hue].astype(str)
    sns.lineplot(data=df, x=x, y=value, hue=hue, errorbar=("ci", 95), marker="o", ax=ax, seed=0)
    ax.set_xlabel(x)
    ax.set_ylabel(y if value == y else f"{y} (mean)")
    numeric = df[x].dtype.kind in "if"
    if numeric and df[x].min() > 0 and df[x].max() / df[x].min() >= 16:
        ax.set_xscale("log", base=2)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path_png if path_png is not None else out, dpi)


# ---------------------------------------------------------------------- simkernel regime
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
        colours[key] = "0.35" if key[0] == "frequency" else _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)] \
            if key[1] != "normalised" else "tab:blue"

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
    ax_r.axhspan(1 - band, 1 + band, color="tab:green", alpha=0.12, label=f"1 ± {band:g}")
    ax_r.axhline(1.0, color="tab:green", lw=0.8)
    primary = next((k for k in keys if k[0] != "frequency"), None)
    if primary is not None:
        for key, lab in ((primary, f"{primary[0]} kernel, {primary[1]}"), (("frequency", "normalised"),
                                                                          "label frequencies")):
            ns, m = mean_over_worlds(key[0], key[1], "tv_bayes")
            ax_b.plot(ns, m, "-", color=colours.get(key, "0.35"), label=f"{lab}: measured")
            ns, m = mean_over_worlds(key[0], key[1], "tv_bayes_pred")
            ax_b.plot(ns, m, ":", color=colours.get(key, "0.35"), label=f"{lab}: predicted (vs the oracle)")
        for wr in worlds:
            if (wr["kernel"], wr["estimator"]) == primary and math.isfinite(float(wr["crossover"])):
                ax_b.axvline(float(wr["crossover"]), color="tab:red", lw=0.6, alpha=0.4)
        ax_b.plot([], [], color="tab:red", lw=0.6, alpha=0.6, label="crossover n× per world")
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
    return _save(fig, path_png, dpi)
