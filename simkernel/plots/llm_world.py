"""``simkernel llm --preset/--world``'s documents figure (documents.png), drawn from the rows of
documents.csv and worlds.csv (``llm_world.DOC_COLUMNS``, ``llm_world.WORLD_COLUMNS``) alone.

Colours, DPI and the save come from ``style``: one colour per world (``WORLD_COLOURS``: the family
colours, then the extra ones), and per world the LM solid, exact Bayes dashed and the loss with
the concept known dotted.
"""

from __future__ import annotations

from pathlib import Path

from .style import CI_ALPHA, DPI, EXTRA_COLOURS, FAMILY_COLOURS, NOTE_GREY, save

#: One colour per world, in the order the worlds appear (the family colours, then the extra ones).
WORLD_COLOURS = FAMILY_COLOURS + tuple(c for c in EXTRA_COLOURS if c not in FAMILY_COLOURS)
#: documents.csv metric -> (line style, legend label) in the loss panel.
LOSS_LINES = {"lm_loss_symbols": ("-", "LM"), "bayes_loss": ("--", "exact Bayes"),
              "oracle_loss": (":", "concept known")}


def _series(doc_rows, world: str, metric: str):
    """(positions, means, CI lows, CI highs) of one world's ``metric``, by position."""
    sel = sorted((r for r in doc_rows if r["world"] == world and r["metric"] == metric),
                 key=lambda r: int(r["position"]))
    return ([int(r["position"]) for r in sel], [float(r["mean"]) for r in sel],
            [float(r["ci_low"]) for r in sel], [float(r["ci_high"]) for r in sel])


def plot_documents(doc_rows, world_rows, path_png, title: str | None = None, dpi: int = DPI) -> Path:
    """documents.png from documents.csv and worlds.csv rows: (1) per-position loss of the LM
    (renormalised over the symbols) against exact Bayes and the known-concept loss, one colour
    per world, 95% CI bands; (2) the gap LM − Bayes per position; (3) each world's mean gap
    (95% CI) against its mixing rate, the entropy rate as the marker's label."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["world"] for r in doc_rows))
    if not names:
        raise ValueError("the documents table has no rows")
    colour = {name: WORLD_COLOURS[i % len(WORLD_COLOURS)] for i, name in enumerate(names)}
    fig = Figure(figsize=(15.0, 4.4), layout="constrained")
    ax = fig.subplots(1, 3, squeeze=False)[0]
    for name in names:
        c = colour[name]
        for metric, (ls, label) in LOSS_LINES.items():
            t, m, lo, hi = _series(doc_rows, name, metric)
            ax[0].plot(t, m, ls, color=c, lw=1.3, label=f"{name}: {label}")
            if metric != "oracle_loss":
                ax[0].fill_between(t, lo, hi, color=c, alpha=CI_ALPHA, lw=0)
        t, m, lo, hi = _series(doc_rows, name, "gap")
        ax[1].plot(t, m, "-", color=c, lw=1.3, label=name)
        ax[1].fill_between(t, lo, hi, color=c, alpha=CI_ALPHA, lw=0)
    ax[1].axhline(0.0, color=NOTE_GREY, lw=0.8)
    for r in world_rows:
        x, g = float(r["mixing_rate"]), float(r["gap"])
        ax[2].errorbar([x], [g], yerr=[[g - float(r["gap_lo"])], [float(r["gap_hi"]) - g]], fmt="o",
                       color=colour.get(r["world"], WORLD_COLOURS[0]))
        ax[2].annotate(f"{r['world']} (H {float(r['entropy_rate']):.2f})", (x, g), fontsize=7,
                       xytext=(4, 4), textcoords="offset points")
    ax[0].set(xlabel="position t (symbols before)", ylabel="log-loss (nats per symbol)")
    ax[1].set(xlabel="position t (symbols before)", ylabel="gap: LM - exact Bayes (nats)")
    ax[2].set(xlabel="mixing rate (SLEM of the hidden chain)", ylabel="mean gap over positions (nats)")
    for a in ax:
        a.grid(True, alpha=0.3)
    ax[0].legend(fontsize=7, frameon=False)
    ax[1].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path_png, dpi)
