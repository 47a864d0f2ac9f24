"""Figures, drawn only from tidy tables: a figure is redrawn from its CSV and JSON alone.

``plot_convergence(rows, fits, path_png, path_pdf, title)`` draws the figure of
``simkernel converge`` from the rows of ``convergence.csv`` (``CONVERGENCE_COLUMNS``: n_demos,
estimator, kernel, metric, mean, ci_low, ci_high, n_prompts, n_worlds; n_demos is a whole
number or ``inf`` for the exact n -> oo limit; a table older than n_worlds reads as one world)
and the power-law fits stored under "fits" in ``convergence.json``;
``load_convergence(folder)`` reads both back.  ``plot_icl_vs_bayes``,
``load_icl`` and ``redraw_icl`` do the same for ``simkernel icl-eval``'s icl_vs_bayes.csv and
.json.  One module per figure family (``convergence``, ``icl``, ``measure``, ``phenomena``, ``regime``,
``llm_world``,
``sweep``, ``strategies``), all drawn through ``style``: DPI, the kernel and predictor palettes, the reference
greys, shared widths and layers, metadata and the atomic save; the report's and the claims'
figures take their look from it too.  Nothing here runs an experiment or computes a statistic.

matplotlib is imported lazily and drawn through its Agg canvas (no pyplot, no global
backend switch), so importing this module costs nothing and it works on a headless machine.
Files are written atomically (temp name beside the target, then rename).
"""

from __future__ import annotations

from ..constants import CONVERGENCE_COLUMNS, ICL_COLUMNS
from .style import DPI, EXTRA_COLOURS, metadata, save
from .convergence import load_convergence, plot_convergence, redraw_convergence
from .icl import ICL_FILES, plot_icl_vs_bayes, load_icl, redraw_icl
from .measure import MEASURE_FILES, MEASURE_FIGURES, plot_attention_profile, plot_head_scores, plot_probes, REFERENCES_FIGURE, plot_references, load_measurements, draw_measurements, redraw_measurements
from .phenomena import PHENOMENON_COLUMNS, plot_phenomenon
from .sweep import plot_sweep
from .regime import plot_regime
from .llm_world import plot_documents
from .strategies import load_strategies, plot_strategies, redraw_strategies
