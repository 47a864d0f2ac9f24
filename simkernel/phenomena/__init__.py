"""The paper's in-context-learning phenomena, each measured on the same prompts for exact Bayes,
the theory's kernel estimate, the label frequencies, the oracle and (optionally) a trained model.

``run(name, ...)`` is ``simkernel phenomena NAME`` as a library call; it returns a
:class:`PhenomenonResult` (tidy ``rows`` with ``COLUMNS`` and the same as typed
:meth:`~PhenomenonResult.effects`, a ``verdict``, ``meta``) whose ``write(out)`` publishes
``<name>.csv``, ``<name>.json`` and ``<name>.png`` together, and whose ``tables()`` adds the
``verdicts`` table a sweep collects.

Predictors (each a distribution over the scored label set, per prompt; :func:`predict`):

- ``bayes``      the exact posterior predictive of the prompt actually shown (``bayes.icl_curve``);
                 undefined (left out, counted as ``undefined``) where the prompt has probability 0
                 under every concept with prior > 0
- ``kernel``     the theory kernel (Σ of the pretraining inputs, belief features, ridge 0.01),
                 normalised estimator Σ e(y_i) K / Σ K (``kernel.kernel_values``, ``kernel.estimates``)
- ``clipped``    the same with max(K, 0)
- ``frequency``  the demonstrations' label frequencies (K ≡ 1): the null model of every kernel
- ``oracle``     P(y | x_test, true concept): what exact Bayes tends to once the concept is known
                 (x_test as a demonstration deep inside a prompt starts, as in ``convergence``)
- ``model``      a trained model's next-symbol distribution after x_test (``run_dir`` only, and only
                 in the settings whose world is the run's world)

Every effect in a verdict (a :func:`paired` difference or a :func:`row_value`) carries ``worlds``
(the world labels) and ``world_means`` (each world's mean of the per-prompt quantity, the units of
its interval), and every verdict but order's carries ``headroom`` (:func:`headroom`: TV(exact
Bayes, oracle) of the unperturbed setting at the judged n, the room exact Bayes had to move).

The phenomena, one module each (``NAMES``): ``retrieval``, ``labels``, ``shift``, ``order``,
``prior`` (see their docstrings).  Each declares a :class:`Phenomenon` (registry.py); adding one
is one new module plus its name in ``constants.PHENOMENA``, which registers it here (or a
:func:`register` call from outside the package; docs/guide/contributing.md).

Nothing here prints; nothing is written except by :meth:`PhenomenonResult.write`.
"""

from __future__ import annotations

from importlib import import_module

from ..constants import PHENOMENA
from .common import (BOUNDED, COLUMNS, DIGITS, DTYPES, HEADROOM, HEADROOM_SETTING, INVARIANCE_TOL, KERNEL_NAMES,
                     METRIC_DESCRIPTIONS, PREDICTORS, Ctx, Effect, EffectTable, Named, Swept, add_headroom,
                     add_scores, canonical_json, context, demo_blocks, headroom, label_index, paired, permute_demos,
                     predict, row_value, same_world, scores, stack_prompts, tv_rows, undefined, with_demos,
                     with_restart)
from .experiment import VERDICT_COLUMNS, PhenomenonResult, run
from .labels import active_labels, label_maps, remap
from .prior import default_priors, prior_world
from .registry import (DEFAULT_FIGURE, REGISTRY, CommonParams, FigureSpec, Line, Measurement, Panel, Phenomenon, get,
                       register)
from .retrieval import SELECTORS, select_demos, selector_scores
from .shift import KINDS as SHIFT_KINDS, TARGETS as SHIFT_TARGETS
from .shift import TEMPER_SCALE, emittable, labels_given_x, rare_symbols, shift_inputs, tempered

# the registration: every name of constants.PHENOMENA (the CLI's choices) is the module of that
# name in this package, declaring PHENOMENON
for _name in PHENOMENA:
    register(import_module(f".{_name}", __name__).PHENOMENON)

#: The built-in phenomena (``constants.PHENOMENA``, the CLI's choices).
NAMES = PHENOMENA


def parameter_names() -> set[str]:
    """Every parameter of every registered phenomenon (the keyword arguments ``run`` passes on)."""
    return {p for ph in REGISTRY.values() for p in ph.params.names()}


def defaults(name: str, quick: bool = False) -> dict:
    """{parameter: default} of phenomenon ``name`` (``quick``: the quick defaults), as ``run``
    would resolve them with no parameters given."""
    return get(name).params.resolve(name, bool(quick), {}).config()


def effects_from_rows(name: str, rows) -> list:
    """Typed :class:`Effect` rows from the tidy rows of a ``<name>.csv`` (as read back: strings
    or numbers); settings read by the phenomenon's setting type (``Swept``/``Named`` when the
    name is not registered).  Numbers are floats; a missing one NaN."""
    reader = REGISTRY[name].setting if name in REGISTRY else Swept

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")
    return [Effect(reader.from_label(str(r["setting"])), num(r["n_demos"]), str(r["predictor"]), str(r["metric"]),
                   num(r["mean"]), num(r["ci_low"]), num(r["ci_high"]), int(num(r.get("n_prompts", 0)) or 0),
                   int(num(r.get("n_worlds", 0)) or 0)) for r in rows]


def figure_of(name: str) -> FigureSpec:
    """The figure spec of phenomenon ``name`` (the generic metric grid when it is not registered)."""
    return REGISTRY[name].figure if name in REGISTRY else DEFAULT_FIGURE
