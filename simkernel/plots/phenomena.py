"""The figure of ``simkernel phenomena``: every predictor's effect per setting, laid out by the
phenomenon's figure spec (``phenomena.registry.FigureSpec``: the x axis, the panels and their
lines), so a new phenomenon needs no code here."""

from __future__ import annotations

import math
from pathlib import Path

from .common import as_float, checked_rows
from .style import DPI, OTHER_PREDICTOR, PREDICTOR_STYLE, save

PHENOMENON_COLUMNS = ("setting", "n_demos", "predictor", "metric", "mean", "ci_low", "ci_high", "n_prompts",
                      "n_worlds")
PREDICTOR_LABELS = {"bayes": "exact Bayes", "kernel": "theory kernel (normalised)",
                    "clipped": "theory kernel (clipped)", "frequency": "label frequencies (K ≡ 1)",
                    "oracle": "oracle (true concept)", "model": "trained model"}
#: Settings without a swept value (retrieval's random choice): a thin dotted line per predictor.
REFERENCE_LINE = (0, (1, 3))


def checked_records(rows) -> list[dict]:
    """The rows of a phenomenon table, checked: every column there, n_demos a number (or inf)."""
    recs = []
    for i, r in checked_rows(rows, PHENOMENON_COLUMNS, "phenomenon"):
        where = f"row {i} of the phenomenon table (setting {r['setting']!r}, metric {r['metric']!r})"
        if as_float(r["n_demos"]) is None:
            raise ValueError(f"{where} has n_demos {r['n_demos']!r}; allowed: a whole number, or inf")
        recs.append(r)
    return recs


def draw_lines(ax, effects, line, x_of) -> None:
    """One line (with a CI band) per predictor of the effects of ``line.metric``; x from x_of(effect)."""
    sel_metric = [e for e in effects if e.metric == line.metric]
    preds = [p for p in dict.fromkeys(e.predictor for e in sel_metric)
             if line.predictors is None or p in line.predictors]
    for p in preds:
        sel = sorted(((x_of(e), e) for e in sel_metric if e.predictor == p and x_of(e) is not None
                      and math.isfinite(e.mean)), key=lambda t: t[0])
        if not sel:
            continue
        colour, ls, marker = PREDICTOR_STYLE.get(p, OTHER_PREDICTOR)
        xs = [t[0] for t in sel]
        ax.plot(xs, [t[1].mean for t in sel], line.style or ls, color=colour, marker=marker, ms=3.5, lw=1.5,
                label=PREDICTOR_LABELS.get(p, p) + line.suffix)
        ax.fill_between(xs, [t[1].ci_low for t in sel], [t[1].ci_high for t in sel], color=colour, alpha=0.1, lw=0)


def set_xscale(ax, spec, top: float) -> None:
    if spec.xscale == "log2":
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    elif spec.xscale == "symlog":
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_xlim(0.0, top * 1.5)          # no negative values: symlog's margins would add them
    elif spec.xscale != "linear":
        ax.set_xscale(spec.xscale)


def draw_panel(ax, panel, spec, effects, n_max, references=()) -> None:
    """One axis: the panel's lines over ``effects`` (x: n, or the setting's value), its reference
    lines, labels and limits; lines marked ``right`` on a twin axis."""
    def at(line):
        if line.at == "all":
            return effects
        n = math.inf if line.at == "inf" else n_max
        return [e for e in effects if e.n_demos == n]

    x_of = (lambda e: e.n_demos) if spec.x == "n" else (lambda e: e.setting.value)
    twin = None
    for line in panel.lines:
        if line.right:
            twin = twin or ax.twinx()
            draw_lines(twin, at(line), line, x_of)
        else:
            draw_lines(ax, at(line), line, x_of)
        for e in references:
            if e.metric == line.metric and e.n_demos == n_max and math.isfinite(e.mean):
                ax.axhline(e.mean, color=PREDICTOR_STYLE.get(e.predictor, OTHER_PREDICTOR)[0], lw=0.8,
                           ls=REFERENCE_LINE)
    if twin is not None:
        twin.set_yscale(panel.right_scale)
        twin.set_ylabel(panel.right_label)
    top = max((e.setting.value or 0.0 for e in effects if e.setting.value is not None), default=1.0) or 1.0
    set_xscale(ax, spec, top)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel(spec.xlabel)
    if spec.legend == "axes":
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            h2, l2 = twin.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=7, frameon=False)


def plot_effects(effects, path, spec, title: str | None = None, dpi: int = DPI) -> Path:
    """Draw typed effect rows (``phenomena.Effect``: each setting with ``group`` and ``value``) by
    the figure spec ``spec``: one column per setting group (or the panels side by side), one row
    per panel, every predictor in its own style (exact Bayes black, kernel blue, label
    frequencies grey dashed, oracle orange dotted, the model red), 95% CI bands over worlds."""
    if not effects:
        raise ValueError("the phenomenon table has no rows")
    from matplotlib.figure import Figure

    finite_n = sorted({e.n_demos for e in effects if math.isfinite(e.n_demos)})
    n_max = finite_n[-1] if finite_n else math.inf
    at_n = [e for e in effects if e.n_demos == n_max]
    if not spec.by_group:
        columns = [("", effects, ())]
    elif spec.x == "n":
        columns = [(g, [e for e in effects if e.setting.group == g], ())
                   for g in dict.fromkeys(e.setting.group for e in effects)]
    else:
        refs = [e for e in at_n if e.setting.value is None] if spec.references else []
        groups = [g for g in dict.fromkeys(e.setting.group for e in at_n)
                  if any(e.setting.value is not None and e.setting.group == g for e in at_n)] or ["all"]
        columns = [(g, [e for e in effects if e.setting.group == g], refs) for g in groups]
    n_rows, n_cols = (1, len(spec.panels)) if not spec.by_group else (len(spec.panels), len(columns))
    width, extra, height = spec.size
    fig = Figure(figsize=(width * n_cols + extra, height), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey="row" if spec.by_group else False)
    for i, panel in enumerate(spec.panels):
        for j, (group, sel, refs) in enumerate(columns):
            ax = axes[i, j] if spec.by_group else axes[0, i]
            draw_panel(ax, panel, spec, sel, n_max, refs)
            if spec.title:
                ax.set_title(spec.title.format(group=group), fontsize=spec.title_size)
        first = axes[i, 0] if spec.by_group else axes[0, i]
        first.set_ylabel(panel.ylabel.format(n=f"{n_max:g}"))
        if panel.ylim is not None:
            # after every column is drawn: a limit fixes the shared axis' other end where it stands
            first.set_ylim(*panel.ylim)
    if spec.legend == "figure":
        handles = {}
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        if handles:
            # beside the panels, never over the curves
            fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, dpi)


def plot_phenomenon(rows, path, title: str | None = None, name: str = "", dpi: int = DPI) -> Path:
    """The figure of ``simkernel phenomena NAME`` redrawn from its tidy rows
    (``PHENOMENON_COLUMNS``, e.g. read back from NAME.csv): the settings are read by the
    phenomenon's setting type and drawn by its figure spec (a table of an unknown ``name``:
    'group:value' settings, TV to the oracle and accuracy against the value)."""
    recs = checked_records(rows)
    if not recs:
        raise ValueError("the phenomenon table has no rows")
    from ..phenomena import effects_from_rows, figure_of

    return plot_effects(effects_from_rows(name, recs), path, figure_of(name), title, dpi)
