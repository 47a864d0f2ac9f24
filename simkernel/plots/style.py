"""The one look of every figure: DPI, the palette, line widths and layers, and the atomic, date-free save.

Every figure in the project (commands, report and claims, llm-world) draws through here, so a
colour or the resolution changes in one place.  matplotlib is imported lazily (Agg canvas, no
pyplot).  Colours are matplotlib colour strings; a grey is a string "0.0" (black) .. "1.0" (white).

- ``KERNEL_*``: the kernels of ``constants.KERNELS`` (the convergence figure);
- ``PREDICTOR_*`` / ``PREDICTOR_STYLE``: who predicts (exact Bayes, the kernel, label frequencies,
  the oracle, a trained model) in the figures that compare predictors (phenomena, llm-world, claims);
- ``ESTIMATOR_COLOURS``, ``FAMILY_COLOURS``, ``ICL_COLOURS``: the other series that have a colour;
- the reference greys and colours (``INK`` .. ``SPAN_GREY``, ``BAND_COLOUR``, ``MARK_COLOUR``): what a
  reference, a note, a guide line or a background span is drawn in.
"""

from __future__ import annotations

from pathlib import Path

from ..store import atomic_write

DPI = 110
#: Colours for series beyond the named ones.
EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
#: When even those run out.
FALLBACK_COLOUR = "tab:gray"

# ---------------------------------------------------------------------- reference greys and colours
#: References that are exact (exact Bayes, the oracle's accuracy): drawn thin, on top.
REFERENCE_COLOUR = "black"
#: Legend proxies and markers that stand for no one series.
INK = "0.2"
#: Text and guide lines that say something about the panel, not the data (placeholders, zero lines).
NOTE_GREY = "0.4"
#: Light guide lines (a slope for reference).
GUIDE_GREY = "0.55"
#: The zero line of a difference (head minus reference).
ZERO_GREY = "grey"
#: A background span (the "∞" column of the convergence figure).
SPAN_GREY = "0.93"
#: Beyond a limit (a prompt longer than the trained block).
SHADE_GREY = "0.85"
#: The band a ratio should stay in (1 ± band) and its centre line.
BAND_COLOUR = "tab:green"
#: Marks that flag a place: the label position, a chosen head, a crossover, a violation.
MARK_COLOUR = "tab:red"
#: Alpha of a 95% CI band under its line.
CI_ALPHA = 0.12

# ---------------------------------------------------------------------- kernels
#: One colour per kernel.  frequency (K ≡ 1) is the null model every kernel must beat, so it is
#: grey and dashed: a reference, not a contender.
KERNEL_COLOURS = {"theory": "tab:blue", "oracle": "tab:orange", "similarity": "tab:green", "frequency": "0.35"}
KERNEL_LINES = {"frequency": "--"}
#: theory and oracle often coincide: oracle is a wide pale stroke underneath (KERNEL_ALPHA), theory
#: a thin solid line on top of it, so where they coincide both stay visible.
KERNEL_WIDTHS = {"theory": 1.3, "oracle": 5.0, "similarity": 1.6, "frequency": 1.5}
KERNEL_ALPHA = {"oracle": 0.45}
KERNEL_ZORDER = {"theory": 9, "oracle": 3, "similarity": 6, "frequency": 5}

# ---------------------------------------------------------------------- predictors
#: Who predicts: exact Bayes black, the kernel blue, the label-frequency baseline grey and dashed
#: with squares, the oracle orange and dotted, a trained model red, the in-context n-gram rule
#: green, the uniform vote brown and dotted, a fitted mixture of predictors purple.
PREDICTOR_COLOURS = {"bayes": REFERENCE_COLOUR, "kernel": "tab:blue", "clipped": "tab:cyan", "frequency": "0.45",
                     "oracle": "tab:orange", "model": "tab:red", "ngram": "tab:green", "uniform": "tab:brown",
                     "mixture": "tab:purple"}
PREDICTOR_LINES = {"bayes": "-", "kernel": "-", "clipped": "-.", "frequency": "--", "oracle": ":", "model": "-",
                   "ngram": "-", "uniform": ":", "mixture": "-."}
PREDICTOR_MARKERS = {"bayes": "o", "kernel": "o", "clipped": "^", "frequency": "s", "oracle": "D", "model": "*",
                     "ngram": "v", "uniform": ".", "mixture": "x"}
#: {predictor: (colour, line style, marker)}.
PREDICTOR_STYLE = {p: (PREDICTOR_COLOURS[p], PREDICTOR_LINES[p], PREDICTOR_MARKERS[p]) for p in PREDICTOR_COLOURS}
#: A predictor not named above.
OTHER_PREDICTOR = ("tab:purple", "-", "o")
#: The label frequencies' asymptotic prediction beside their measured line (claims C1, C4): the
#: two often coincide, so the prediction is darker, dotted and on top.
FREQUENCY_PREDICTED = ("0.15", ":")

# ---------------------------------------------------------------------- other series
#: The kernel estimators (claim C1 compares them).
ESTIMATOR_COLOURS = {"normalised": "tab:blue", "averaged": "tab:orange", "clipped": "tab:green"}
#: One colour per preset family (or any other small set of groups), in order.
FAMILY_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
#: ``simkernel icl-eval``: the model blue, the theory kernel green, the oracle orange (its TV: grey),
#: the label-frequency baseline purple (never read as a kernel curve).
ICL_COLOURS = {"model": "tab:blue", "kernel": "tab:green", "oracle": "tab:orange", "oracle_tv": "tab:gray",
               "frequency": "tab:purple", "bayes": REFERENCE_COLOUR}


def metadata(fmt: str) -> dict:
    # no creation dates, so redrawing the same table gives the same file
    return {"Software": None} if fmt == "png" else {"CreationDate": None, "Creator": None, "Producer": None}


def save(fig, path, dpi=DPI) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (a temp file beside it, then a rename)."""
    return save_as(fig, path, "png", dpi)


def save_as(fig, path, fmt: str, dpi=DPI) -> Path:
    """Write ``fig`` in ``fmt`` ('png' or 'pdf') to ``path`` atomically, without dates."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, metadata=metadata(fmt)))
    return path
