"""The one look of every figure: DPI, the palette, and the atomic, date-free save.

Every figure in the project (commands, report, llm-world) draws through here, so a colour or
the resolution changes in one place.  matplotlib is imported lazily (Agg canvas, no pyplot).
"""

from __future__ import annotations

from pathlib import Path

from ..store import atomic_write

DPI = 110
#: Colours for series beyond the named ones.
EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def metadata(fmt: str) -> dict:
    # no creation dates, so redrawing the same table gives the same file
    return {"Software": None} if fmt == "png" else {"CreationDate": None, "Creator": None, "Producer": None}


def save(fig, path, dpi) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=metadata("png")))
    return path
