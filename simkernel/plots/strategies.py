"""The figures of ``simkernel strategies``, from summary.csv alone: the phase diagram (K x
training step, each cell coloured by the predictor nearest the model), TV to each predictor over
training, and the seen / unseen contrast at the last checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

from .style import CI_ALPHA, DPI, INK, OTHER_PREDICTOR, PREDICTOR_STYLE, save

FIGURES = ("strategies_phase.png", "strategies_training.png", "strategies_unseen.png")


def _index(summary) -> dict:
    """{(k, size, step, n, concepts, predictor, metric): (mean, lo, hi)}."""
    return {(r["k"], r["size"], r["step"], r["n_demos"], r["concepts"], r["predictor"], r["metric"]):
            (float(r["mean"]), float(r["ci_low"]), float(r["ci_high"])) for r in summary}


def _axes(summary, sizes=None):
    keys = lambda c: sorted({r[c] for r in summary})      # noqa: E731
    have = list(dict.fromkeys(r["size"] for r in summary))
    sizes = [s for s in (sizes or []) if s in have] + [s for s in have if s not in (sizes or [])]
    splits = [s for s in ("seen", "unseen") if s in {r["concepts"] for r in summary}]
    return keys("k"), sizes, keys("step"), keys("n_demos"), splits


def _style(p):
    return PREDICTOR_STYLE.get(p, OTHER_PREDICTOR)


def _band(ax, idx, xs, key, p, ms) -> None:
    """Predictor ``p``'s mean line and 95% band over ``xs`` (``key(x)``: its summary index key)."""
    import numpy as np

    pts = [(x, *idx[key(x)]) for x in xs if key(x) in idx]
    if not pts:
        return
    x, m, lo, hi = (np.array(v, float) for v in zip(*pts))
    col, ls, mk = _style(p)
    ax.plot(x, m, ls, color=col, marker=mk, ms=ms, lw=1.1, label=p)
    ax.fill_between(x, lo, hi, color=col, alpha=CI_ALPHA, lw=0)


def plot_strategies(summary, out, components=("bayes", "kernel", "frequency", "ngram", "uniform"), n: int | None = None,
                    sizes=None, dpi: int = DPI) -> list[Path]:
    """Draw :data:`FIGURES` into the folder ``out`` from summary.csv's rows (dicts with
    ``strategies.SUMMARY_COLUMNS``) at ``n`` demonstrations (default the largest): the single
    predictors are ``components`` (the mixture's), the sizes in the order ``sizes`` (default as
    the rows have them).  Returns the paths written."""
    summary = list(summary)
    if not summary:
        raise ValueError("no rows to draw: the map has no finished runs")
    ks, sizes, steps, ns, splits = _axes(summary, sizes)
    n = ns[-1] if n is None else n
    idx = _index(summary)
    out = Path(out)
    return [_phase(idx, ks, sizes, steps, splits, n, components, out / FIGURES[0], dpi),
            _training(idx, ks, sizes, steps, splits, n, components, out / FIGURES[1], dpi),
            _unseen(idx, ks, sizes, steps, splits, n, components, out / FIGURES[2], dpi)]


def _phase(idx, ks, sizes, steps, splits, n, comps, path, dpi):
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    import numpy as np

    fig = Figure(figsize=(4.2 * len(splits), 1.0 + 1.6 * len(sizes) + 0.25 * len(ks) * len(sizes)))
    axes = np.atleast_2d(fig.subplots(len(sizes), len(splits), squeeze=False))
    cmap = ListedColormap([_style(p)[0] for p in comps])
    for i, size in enumerate(sizes):
        for j, split in enumerate(splits):
            ax = axes[i, j]
            grid = np.full((len(ks), len(steps)), np.nan)
            for a, k in enumerate(ks):
                for b, step in enumerate(steps):
                    tvs = {p: idx.get((k, size, step, n, split, p, "tv"), (math.nan,))[0] for p in comps}
                    tvs = {p: v for p, v in tvs.items() if math.isfinite(v)}
                    if not tvs:
                        continue
                    grid[a, b] = comps.index(min(tvs, key=tvs.get))
                    w = idx.get((k, size, step, n, split, "kernel", "weight"), (math.nan,))[0]
                    if math.isfinite(w):
                        ax.text(b, a, f"{w:.2f}", ha="center", va="center", fontsize=5.5,
                                color="white" if comps[int(grid[a, b])] in ("bayes", "kernel") else INK)
            ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(comps) - 0.5, aspect="auto", origin="lower")
            ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=6, rotation=90)
            ax.set_yticks(range(len(ks)), [str(k) for k in ks], fontsize=7)
            ax.set_title(f"size {size}, {split} concepts", fontsize=8)
            ax.set_xlabel("training step", fontsize=7)
            ax.set_ylabel("K (pretraining concepts)", fontsize=7)
    fig.legend(handles=[Patch(color=_style(p)[0], label=p) for p in comps], loc="upper center", ncol=len(comps),
               fontsize=7, frameon=False)
    fig.suptitle(f"nearest predictor to the model (mean TV over worlds), n = {n}; numbers: the kernel's mixture "
                 f"weight", fontsize=8, y=0.93)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return save(fig, path, dpi)


def _training(idx, ks, sizes, steps, splits, n, comps, path, dpi):
    from matplotlib.figure import Figure
    import numpy as np

    panels = [(size, split) for size in sizes for split in splits]
    fig = Figure(figsize=(2.6 * len(ks), 2.2 * len(panels) + 0.6))
    axes = np.atleast_2d(fig.subplots(len(panels), len(ks), squeeze=False, sharey=True))
    for i, (size, split) in enumerate(panels):
        for j, k in enumerate(ks):
            ax = axes[i, j]
            for p in (*comps, "oracle", "mixture"):
                _band(ax, idx, steps, lambda s, p=p: (k, size, s, n, split, p, "tv"), p, 2.5)
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"K = {k}, size {size}, {split}", fontsize=8)
            if i == len(panels) - 1:
                ax.set_xlabel("training step", fontsize=7)
            if j == 0:
                ax.set_ylabel("TV(model, predictor)", fontsize=7)
            ax.tick_params(labelsize=6)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.suptitle(f"n = {n}: the model's distance to each predictor along training (95% CI over worlds)", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, path, dpi)


def _unseen(idx, ks, sizes, steps, splits, n, comps, path, dpi):
    from matplotlib.figure import Figure
    import numpy as np

    last = steps[-1]
    fig = Figure(figsize=(3.4 * len(sizes), 2.3 * len(splits) + 0.6))
    axes = np.atleast_2d(fig.subplots(len(splits), len(sizes), squeeze=False, sharey=True))
    for i, split in enumerate(splits):
        for j, size in enumerate(sizes):
            ax = axes[i, j]
            for p in (*comps, "oracle"):
                _band(ax, idx, ks, lambda k, p=p: (k, size, last, n, split, p, "tv"), p, 3)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{split} concepts, size {size}", fontsize=8)
            ax.tick_params(labelsize=6)
            if i == len(splits) - 1:
                ax.set_xlabel("K (pretraining concepts)", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"TV(model, predictor), n = {n}", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.suptitle(f"seen vs unseen concepts at the last checkpoint (step {last}); 95% CI over worlds", fontsize=8,
                 color=INK)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, path, dpi)


def load_strategies(folder) -> tuple[list[dict], dict]:
    """(summary.csv's rows, strategies.json) of a ``simkernel strategies`` folder, typed; one-line
    ValueError when either is missing or unreadable."""
    import csv
    import json

    folder = Path(folder)
    try:
        with open(folder / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        meta = json.loads((folder / "strategies.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(folder)!r} holds no readable strategies map (summary.csv and strategies.json: "
                         f"{type(e).__name__})") from None
    ints, floats = ("k", "step", "n_demos", "n_worlds", "n_runs"), ("mean", "ci_low", "ci_high")
    try:
        rows = [dict(r, **{c: int(r[c]) for c in ints}, **{c: float(r[c]) if r[c] != "" else math.nan
                                                              for c in floats}) for r in rows]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{str(folder / 'summary.csv')!r} is not a strategies summary ({type(e).__name__}: {e})") \
            from None
    return rows, meta


def redraw_strategies(folder, out=None) -> list[Path]:
    """Redraw :data:`FIGURES` from a folder's summary.csv and strategies.json (into ``out``,
    default the folder itself)."""
    rows, meta = load_strategies(folder)
    ev = (meta.get("config") or {}).get("eval") or {}
    comps = ev.get("mixture_of") or ("bayes", "kernel", "frequency", "ngram", "uniform")
    sizes = list(((meta.get("config") or {}).get("sizes") or {}))
    return plot_strategies(rows, Path(out) if out is not None else Path(folder), components=tuple(comps), sizes=sizes)
