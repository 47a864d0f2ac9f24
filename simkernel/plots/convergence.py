"""The convergence figure of ``simkernel converge``: TV and agreement against n, with the exact limits."""

from __future__ import annotations

import math
from pathlib import Path

from ..constants import CONVERGENCE_COLUMNS
from ..store import atomic_write
from .common import as_float, finite, load_results
from .style import DPI, EXTRA_COLOURS, metadata


_CONVERGENCE_OPTIONAL = {"n_worlds": 1}
_CONVERGENCE_REQUIRED = tuple(c for c in CONVERGENCE_COLUMNS if c not in _CONVERGENCE_OPTIONAL)

#: One colour per kernel.  frequency (K ≡ 1) is the null model every kernel must beat, so it
#: is grey and dashed: a reference, not a contender.
_COLOURS = {"theory": "tab:blue", "oracle": "tab:orange", "similarity": "tab:green", "frequency": "0.35"}
_KERNEL_LINES = {"frequency": "--"}
_KERNEL_LABELS = {"frequency": "frequency (K ≡ 1: label-frequency baseline)"}
#: theory is drawn thinnest and on top, oracle widest and below, so coinciding curves both show.
_WIDTHS = {"theory": 1.2, "oracle": 2.8, "similarity": 1.6, "frequency": 1.5}
_ZORDER = {"theory": 9, "oracle": 3, "similarity": 6, "frequency": 5}
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




def _n_demos(v, where: str):
    x = as_float(v)
    if x == math.inf:
        return math.inf
    if x is None or not math.isfinite(x) or x != int(x) or x < 1:
        raise ValueError(f"{where} has n_demos {v!r}; allowed: a whole number >= 1, or inf for the n -> oo limit")
    return int(x)


def _table_float(v, column: str, where: str) -> float:
    x = as_float(v)
    if x is None:
        raise ValueError(f"{where} has a non-numeric {column}: {v!r}")
    if math.isinf(x):
        raise ValueError(f"{where} has {column} {v!r}; inf is allowed only in n_demos")
    return x


def _table_count(v, column: str, where: str) -> int:
    x = as_float(v)
    if x is None or not math.isfinite(x) or x != int(x) or x < 0:
        raise ValueError(f"{where} has {column} {v!r}; allowed: a whole number >= 0")
    return int(x)




def load_convergence(folder) -> tuple[list[dict], dict]:
    """The rows of ``folder/convergence.csv`` and the dict of ``folder/convergence.json``."""
    return load_results(folder, ("convergence.csv", "convergence.json"), _CONVERGENCE_REQUIRED, _records,
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
    if isinstance(rng, (list, tuple)) and len(rng) == 2 and finite(*rng) and rng[0] <= rng[1]:
        return max(rng[0], n_lo), min(rng[1], n_hi)
    return n_lo, n_hi


def _fit_usable(fit) -> bool:
    """A fit worth a line: finite, and not flagged degenerate (a slope on a bound of the
    search is the search's edge, not a measurement)."""
    return (not fit.get("degenerate", False)
            and finite(fit.get("slope"), fit.get("floor"), fit.get("amplitude")))


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
    pos = [v for v in means if finite(v) and v > 0]
    if not pos:
        return None
    top = max(pos + [v for v in highs if finite(v) and v > 0]) * 1.6
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




# ---------------------------------------------------------------------- the convergence figure
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
    extra = iter(EXTRA_COLOURS)
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
        items = [(c, v) for c, v in items if v is not None and finite(v[0])]
        below = False
        for j, (c, (m, lo, hi)) in enumerate(items):
            x = x_inf * 2 ** (0.12 * (j - (len(items) - 1) / 2))
            shape = "D"
            if bottom is not None and m < bottom:
                m, shape, below = bottom * 1.12, "v", True
            lo = m if not finite(lo) else (max(lo, bottom / 100) if bottom is not None else lo)
            hi = m if not finite(hi) else hi
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
        start = next(((x, y) for x, y in zip(n, m) if x >= n_a and finite(y) and y > 0), None)
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
                                                                      metadata=metadata(fmt_name)))
        written.append(path)
    return written


def redraw_convergence(folder, out_folder=None) -> list[Path]:
    """Redraw convergence.png and convergence.pdf from a folder's convergence.csv and .json
    (into ``out_folder``, default the same folder)."""
    rows, meta = load_convergence(folder)
    out = Path(out_folder) if out_folder is not None else Path(folder)
    return plot_convergence(rows, meta.get("fits", {}), out / "convergence.png", out / "convergence.pdf",
                            title=meta.get("title"))


