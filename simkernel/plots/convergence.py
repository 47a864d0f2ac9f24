"""The convergence figure of ``simkernel converge``: TV and agreement against n, with the exact limits."""

from __future__ import annotations

import math
from pathlib import Path

from dataclasses import dataclass

from ..constants import CONVERGENCE_COLUMNS
from .common import as_float, finite, load_results
from .style import (DPI, EXTRA_COLOURS, FALLBACK_COLOUR, GUIDE_GREY, KERNEL_ALPHA, KERNEL_COLOURS, KERNEL_LINES,
                    KERNEL_WIDTHS, KERNEL_ZORDER, REFERENCE_COLOUR, SPAN_GREY, save_as)


_CONVERGENCE_OPTIONAL = {"n_worlds": 1}
_CONVERGENCE_REQUIRED = tuple(c for c in CONVERGENCE_COLUMNS if c not in _CONVERGENCE_OPTIONAL)

#: Legend names of the kernels (colours, widths and layers: ``style.KERNEL_*``).
KERNEL_LABELS = {"oracle": "oracle (Σ_θ*; wide pale line, under theory where they coincide)",
                 "frequency": "frequency (K ≡ 1: label-frequency baseline)"}
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
    return [k for k in KERNEL_COLOURS if k in present] + [k for k in present if k not in KERNEL_COLOURS]


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
@dataclass
class _Frame:
    """What every panel of the convergence figure shares: the typed rows, the fits, the one
    estimator drawn, its kernels and their colours, and the n axis (x_inf: where "∞" sits)."""

    rows: list
    fits: dict
    est: str | None
    kernels: list
    colour: dict
    n_lo: int
    n_hi: int
    has_inf: bool
    marker: str | None

    @property
    def shown(self) -> str:
        return self.est if self.est is not None else "no kernel"      # a table of reference rows only

    @property
    def x_inf(self) -> float:
        # one octave right of N on the log axis: apart from the data, yet on the same scale
        return 2 * self.n_hi

    def fit_of(self, k):
        fit = self.fits.get(f"{k}/{self.est}")
        return fit if isinstance(fit, dict) else None

    def style(self, k) -> dict:
        return dict(color=self.colour[k], ls=KERNEL_LINES.get(k, "-"), lw=KERNEL_WIDTHS.get(k, 1.4),
                    alpha=KERNEL_ALPHA.get(k), zorder=KERNEL_ZORDER.get(k, 5), marker=self.marker, ms=3)


def _frame(rows, fits) -> _Frame:
    est = _primary_estimator(rows)
    kernels = _kernels(rows, est) if est is not None else []
    extra = iter(EXTRA_COLOURS)
    colour = {k: KERNEL_COLOURS.get(k) or next(extra, FALLBACK_COLOUR) for k in kernels}
    ns = sorted({r["n_demos"] for r in rows if r["n_demos"] != math.inf})
    n_lo, n_hi = (ns[0], ns[-1]) if ns else (1, 1)
    return _Frame(rows, fits, est, kernels, colour, n_lo, n_hi, any(r["n_demos"] == math.inf for r in rows),
                  "o" if len(ns) <= 24 else None)


def _curve(ax, n, m, lo, hi, bottom, label, band=True, **st):
    """A series with its CI band; on a log panel (``bottom`` its lower limit) a band reaching 0
    runs off the bottom instead of vanishing there."""
    ax.plot(n, m, label=label, **st)
    if not band:
        return
    if bottom is not None:
        cut = bottom / 100
        lo = [cut if v <= cut else v for v in lo]
        hi = [cut if v <= cut else v for v in hi]
    ax.fill_between(n, lo, hi, color=st["color"], alpha=0.11, lw=0)


def _limits(ax, fr: _Frame, items, bottom) -> dict:
    """Markers with error bars at x_inf, a little apart so overlapping bars stay readable; on a
    log panel a limit below the panel sits on its bottom edge as a ▼.  Returns {marker: the
    colours drawn with it}, for the legend."""
    items = [(c, v) for c, v in items if v is not None and finite(v[0])]
    drawn = {"D": [], "v": []}
    for j, (c, (m, lo, hi)) in enumerate(items):
        x = fr.x_inf * 2 ** (0.12 * (j - (len(items) - 1) / 2))
        shape = "D"
        if bottom is not None and m < bottom:
            m, shape = bottom * 1.12, "v"
        drawn[shape].append(c)
        lo = m if not finite(lo) else (max(lo, bottom / 100) if bottom is not None else lo)
        hi = m if not finite(hi) else hi
        ax.errorbar([x], [m], yerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]], fmt=shape, color=c, ms=6,
                    mec="white", mew=0.6, capsize=3, elinewidth=1.3, zorder=12)
    return drawn


def _inf_marks(colours, marker="D"):
    """A legend handle of one marker per colour, side by side: the "∞" points in their colours."""
    from matplotlib.lines import Line2D

    return tuple(Line2D([], [], ls="none", marker=marker, color=c, mec="white", mew=0.6, ms=6)
                 for c in dict.fromkeys(colours))


def _x_axis(ax, fr: _Frame, with_inf: bool):
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ticks = _log2_ticks(fr.n_lo, fr.n_hi)
    labels = [f"{t:g}" for t in ticks]
    if with_inf:
        ax.axvspan(fr.n_hi * 2 ** 0.5, fr.x_inf * 2 ** 0.55, color=SPAN_GREY, lw=0, zorder=0)
        ticks, labels = ticks + [fr.x_inf], labels + ["∞"]
        ax.set_xlim(fr.n_lo / 1.3, fr.x_inf * 2 ** 0.55)
    else:
        ax.set_xlim(fr.n_lo / 1.15, fr.n_hi * 1.15)
    ax.set_xticks(ticks, labels)
    # a log axis would put minor ticks between N and "∞", where no n lies
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("n (demonstrations)")
    ax.grid(True, which="major", alpha=0.3)


def _finish_log(ax, fr: _Frame, rng, with_inf, ylabel, title):
    """A log-y panel's axes, range, labels and title (panels 1 and 2)."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLog(LogFormatterSciNotation):
        """matplotlib's choice of which log ticks to label, written 0.3 rather than 3×10⁻¹."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    ax.set_yscale("log", nonpositive="mask")
    ax.yaxis.set_major_formatter(PlainLog())
    ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))
    if rng:
        ax.set_ylim(*rng)
    _x_axis(ax, fr, with_inf)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def _with_floor(fit) -> bool:
    """Whether the fit has a free floor (fits before with_floor: a floor that is not 0)."""
    w = fit.get("with_floor")
    return bool(w) if w is not None else fit.get("floor") != 0


def _fit_lines(ax, fr: _Frame, metric) -> str | None:
    """The fits of ``metric`` as dotted lines; returns a legend title saying what was fitted (with
    "+ floor" only when a drawn fit has one) and the n range when they share one."""
    # fits written before tv_limit were fitted to the TV to exact Bayes (metric "tv")
    chosen = [(k, fr.fit_of(k)) for k in fr.kernels if fr.fit_of(k) and fr.fit_of(k).get("metric", "tv") == metric]
    usable = [(k, f) for k, f in chosen if _fit_usable(f)]
    ranges = {_fit_range(f, fr.n_lo, fr.n_hi) for _k, f in usable}
    for k, fit in chosen:
        if not _fit_usable(fit):
            ax.plot([], [], ls="none", marker="x", color=fr.colour[k], label=f"{k}: (degenerate fit) not drawn")
            continue
        a, b = _fit_range(fit, fr.n_lo, fr.n_hi)
        fn, fy = _fit_curve(fit, a, b)
        where = "" if len(ranges) == 1 else f" (n = {a:g}..{b:g})"
        floor = f", floor {fit['floor']:.2g}" if _with_floor(fit) else ""
        ax.plot(fn, fy, ls=":", color=fr.colour[k], lw=2.2, zorder=12,
                label=f"{k}: slope {_num(fit['slope'])}{floor}{where}")
    if not chosen:
        return None
    span = f", n = {min(ranges)[0]:g}..{min(ranges)[1]:g}" if len(ranges) == 1 else ""
    form = "a·n^slope + floor" if any(_with_floor(f) for _k, f in usable) else "a·n^slope"
    return f"dotted: fitted {form}{span}"


def _legend(ax, extra=(), title=None):
    """The panel's legend under it, never over the data; ``extra``: (handle, label) pairs, a
    handle may be a tuple of markers (drawn side by side)."""
    from matplotlib.legend_handler import HandlerTuple

    handles, labels = ax.get_legend_handles_labels()
    handles += [h for h, _l in extra]
    labels += [lab for _h, lab in extra]
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8,
                  title=title, title_fontsize=8, frameon=False, handler_map={tuple: HandlerTuple(ndivide=None)},
                  ncol=2 if len(handles) > 4 and max(map(len, labels)) <= 40 else 1)


def _leaves_panel(n, m, bottom):
    """The first n from which a series stays below ``bottom`` (off the foot of a log panel), or None."""
    out = None
    for x, y in zip(n, m):
        if finite(y) and y >= bottom:
            out = None
        elif out is None:
            out = x
    return out


def _panel_distance(ax, fr: _Frame):
    """Panel 1: each kernel's TV to exact Bayes, exact Bayes' own references, the limits at ∞."""
    tv = {k: _series(fr.rows, k, fr.est, "tv") for k in fr.kernels}
    tv_inf = {k: _limit(fr.rows, k, fr.est, "tv") for k in fr.kernels}
    refs = [(_series(fr.rows, kname, "-", "tv"), ls, text) for kname, ls, text in (
        ("bayes-vs-oracle", ":", "exact Bayes vs the oracle (reference)"),
        ("bayes-vs-known", "-.", "exact Bayes vs the concept-known predictive (reference)"))]
    refs = [r for r in refs if r[0][0]]
    means = [v for s in tv.values() for v in s[1]] + [v[0] for v in tv_inf.values() if v]
    highs = [v for s in tv.values() for v in s[3]] + [v[2] for v in tv_inf.values() if v]
    # exact Bayes falls to 0 (machine precision): show where it starts, not its fall
    means += [v for s, _ls, _t in refs for v in (s[1] if not means else s[1][:1])]
    rng = _log_range(means, highs)
    bottom = rng[0] if rng else None
    for k in fr.kernels:
        if tv[k][0]:
            curve_label = KERNEL_LABELS.get(k, k)
            _curve(ax, *tv[k], bottom, curve_label, **fr.style(k))
    # references without their bands: a band per reference hides the kernels' bands
    for s, ls, text in refs:
        off = _leaves_panel(s[0], s[1], bottom) if bottom is not None else None
        if off is not None:
            # say where it goes rather than stretch the panel over decades of round-off
            text += f"; below the panel from n = {off:g} on (→ 0), ▼"
            ax.plot([off], [bottom * 1.12], ls="none", marker="v", color=REFERENCE_COLOUR, ms=5, zorder=11)
        _curve(ax, *s, bottom, text, band=False, color=REFERENCE_COLOUR, ls=ls, lw=1.0, zorder=11,
               marker=fr.marker, ms=2)
    fits = _fit_lines(ax, fr, "tv")
    drawn = _limits(ax, fr, [(fr.colour[k], tv_inf[k]) for k in fr.kernels], bottom)
    _finish_log(ax, fr, rng, fr.has_inf, "TV to exact Bayes", f"distance to exact Bayes ({fr.shown} estimator)")
    extra = []
    if drawn["D"] or drawn["v"]:
        extra.append((_inf_marks(drawn["D"] or drawn["v"], "D" if drawn["D"] else "v"),
                      "∞: exact n → ∞ limit of the kernel (its colour), TV to the oracle"))
    if drawn["v"]:
        extra.append((_inf_marks(drawn["v"], "v"), "▼: limit below the panel (≈ 0)"))
    _legend(ax, extra, fits)


def _panel_sampling(ax, fr: _Frame):
    """Panel 2: TV of each estimate to its own n -> ∞ limit, the fitted power laws, ∝ n^(-1/2)."""
    tvl = {k: _series(fr.rows, k, fr.est, "tv_limit") for k in fr.kernels}
    tvl = {k: s for k, s in tvl.items() if s[0]}
    rng = _log_range([v for s in tvl.values() for v in s[1]], [v for s in tvl.values() for v in s[3]])
    bottom = rng[0] if rng else None
    for k, s in tvl.items():
        _curve(ax, *s, bottom, None, **fr.style(k))
    fits = _fit_lines(ax, fr, "tv_limit")
    if tvl:
        anchor = "theory" if "theory" in tvl else next(iter(tvl))
        n_a = _fit_range(fr.fit_of(anchor), fr.n_lo, fr.n_hi)[0] if fr.fit_of(anchor) else fr.n_lo
        n, m = tvl[anchor][:2]
        start = next(((x, y) for x, y in zip(n, m) if x >= n_a and finite(y) and y > 0), None)
        if start and start[0] < fr.n_hi:
            x0, y0 = start
            ax.plot([x0, fr.n_hi], [y0, y0 * (fr.n_hi / x0) ** -0.5], color=GUIDE_GREY, lw=1.0, zorder=2,
                    label=rf"$\propto n^{{-1/2}}$ (through {anchor} at n = {x0:g})")
    _finish_log(ax, fr, rng, False, "TV to its n → ∞ limit",
                f"sampling term: distance to the estimator's own limit ({fr.shown})")
    _legend(ax, title=fits)


def _panel_agreement(ax, fr: _Frame):
    """Panel 3: argmax agreement with exact Bayes, exact Bayes' accuracy, the limits at ∞."""
    from matplotlib.lines import Line2D

    for k in fr.kernels:
        s = _series(fr.rows, k, fr.est, "agree")
        if s[0]:
            _curve(ax, *s, None, None, **fr.style(k))
    extra = []
    s = _series(fr.rows, "bayes", "-", "acc")
    bayes = dict(color=REFERENCE_COLOUR, ls="-.", lw=1.2, zorder=11)
    if s[0]:
        _curve(ax, *s, None, None, band=False, marker=fr.marker, ms=2, **bayes)
        # the black diamond at ∞ is this line's: the legend shows both
        extra.append((Line2D([], [], marker="D", ms=5, **bayes), "exact Bayes: accuracy vs y_test (◆ at ∞: the oracle's)"))
    items = [(fr.colour[k], _limit(fr.rows, k, fr.est, "agree")) for k in fr.kernels]
    items.append((REFERENCE_COLOUR, _limit(fr.rows, "bayes", "-", "acc")))
    drawn = _limits(ax, fr, items, None)
    ax.set_ylim(-0.03, 1.05)
    _x_axis(ax, fr, fr.has_inf)
    ax.set_ylabel("argmax agreement with exact Bayes (ties 1/m)")
    ax.set_title(f"agreement with exact Bayes ({fr.shown} estimator)", fontsize=10)
    kernels_inf = [c for c in drawn["D"] if c in fr.colour.values()]
    if kernels_inf:
        extra.append((_inf_marks(kernels_inf), "∞: the limit's agreement with the oracle (its colour)"))
    _legend(ax, extra)


def _caption(fig, fr: _Frame, title: str):
    worlds = max(r["n_worlds"] for r in fr.rows)
    prompts = max(r["n_prompts"] for r in fr.rows)
    unit = f"{worlds} worlds" if worlds > 1 else f"{prompts} prompts"
    caption = f"{fr.shown} estimator, {prompts} prompts; bands and bars: 95% CI over {unit}"
    if fr.has_inf:
        caption += "; ∞: the exact n → ∞ limit, scored against the oracle P(y | x_test, true concept)"
    fig.suptitle(f"{title}\n{caption}", fontsize=10)


def plot_convergence(rows, fits: dict, path_png, path_pdf=None, title: str | None = None,
                     dpi: int = DPI) -> list[Path]:
    """Draw the convergence figure from the tidy rows and the fits; write PNG (and PDF).

    One estimator is drawn (normalised when the table has it, else its first), one line per
    kernel with 95% CI bands; frequency (K ≡ 1), the baseline, grey and dashed; oracle a wide pale
    stroke under the thin theory line, so both show where they coincide.

    1. log-log: total variation to exact Bayes against n; exact Bayes against the oracle (and
       against the concept-known predictive, when the table has it) as thin black references,
       a ▼ and a legend note where one falls below the panel; at "∞", an octave right of the
       largest n, each kernel's exact n -> oo limit scored against the oracle, with its CI: the
       floor no number of demonstrations gets below.
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
    from matplotlib.figure import Figure

    fr = _frame(rows, fits)
    fig = Figure(figsize=(17.0, 6.4), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    _panel_distance(ax1, fr)
    _panel_sampling(ax2, fr)
    _panel_agreement(ax3, fr)
    if title:
        _caption(fig, fr, title)
    return [save_as(fig, path, fmt, dpi) for path, fmt in ((path_png, "png"), (path_pdf, "pdf")) if path is not None]


def redraw_convergence(folder, out_folder=None) -> list[Path]:
    """Redraw convergence.png and convergence.pdf from a folder's convergence.csv and .json
    (into ``out_folder``, default the same folder)."""
    rows, meta = load_convergence(folder)
    out = Path(out_folder) if out_folder is not None else Path(folder)
    return plot_convergence(rows, meta.get("fits", {}), out / "convergence.png", out / "convergence.pdf",
                            title=meta.get("title"))


