"""The figures of ``simkernel measure``: attention profile, head scores, probes and references."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .common import as_float, finite
from .style import DPI, MARK_COLOUR, REFERENCE_COLOUR, ZERO_GREY, save


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
    ax.axvline(label, color=MARK_COLOUR, lw=1.0, ls="--")
    ax.set_yticks([layer * H + (H - 1) / 2 for layer in range(L)], [str(layer) for layer in range(L)])
    ax.set_ylabel("layer (one row per head)")
    ax.set_xlabel(f"position in the demonstration, rescaled to {P} (red: label)")
    fig.colorbar(im, ax=ax, label="attention from the final token")
    cmap = __import__("matplotlib").colormaps["viridis"]
    for layer in range(L):
        ax2.plot(np.arange(P), prof[layer].mean(0), color=cmap(layer / max(L - 1, 1)), label=f"layer {layer}")
    ax2.axvline(label, color=MARK_COLOUR, lw=1.0, ls="--")
    ax2.set_xlabel("rescaled position (red: label)")
    ax2.set_ylabel("mean attention over heads")
    if L <= 12:
        ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path_png, dpi)


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
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec=MARK_COLOUR, lw=1.8))
        ax.set_title(f"{measure} with {ref}", fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        fig.colorbar(im, ax=ax)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle((title + "\n" if title else "") + f"per head, {split} split (red box: chosen on the "
                 "selection split)", fontsize=9)
    fig.tight_layout()
    return save(fig, path_png, dpi)


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
    return save(fig, path_png, dpi)


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
                d, lo, hi = (as_float(sel[ref][c]) for c in ("difference", "diff_lo", "diff_hi"))
                if not finite(d, lo, hi):
                    continue
                y = j - 0.3 + span * (k + 0.5)
                ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", ms=3, color=cmap(k % 10),
                            label=run if (j == 0 and run) else None)
        for j, ref in enumerate(refs):
            p = pooled.get((target, ref))
            if p is not None and int(p["n_runs"]) > 1:
                d, lo, hi = (as_float(p[c]) for c in ("difference", "lo", "hi"))
                if finite(d, lo, hi):
                    ax.errorbar([d], [j], xerr=[[d - lo], [hi - d]], fmt="D", ms=5, color=REFERENCE_COLOUR, lw=2,
                                label="pooled" if j == 0 else None)
        head = next((r for r in rows if r["target"] == target), {})
        ax.axvline(0.0, color=ZERO_GREY, lw=0.8, ls="--")
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
    return save(fig, path_png, dpi)


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
