"""What a phenomenon declares, and the registry that ``run(name)`` looks names up in.

A phenomenon is one module that ends with ``PHENOMENON = Phenomenon(...)``: its parameters (a
frozen dataclass over :class:`CommonParams`), its measurement (per-prompt numbers into an
:class:`~simkernel.phenomena.common.EffectTable` under typed settings), its verdict, its setting
type and its :class:`FigureSpec`.  :func:`register` makes it known to ``run``; the package
registers the built-in five (see docs/guide/contributing.md for adding one).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, ClassVar

from ..validate import check_int


# ---------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class CommonParams:
    """The knobs every phenomenon takes: n_prompts (prompts per world and setting) and
    example_length (k: x has k-1 tokens; >= 3 so that the theory kernel varies within a prompt,
    see docs/theory.md §19).  A subclass adds its own fields (with their full defaults), ``QUICK``
    (the quick defaults that differ) and ``check`` (its fields' validation)."""

    n_prompts: int = 200
    example_length: int = 3
    QUICK: ClassVar[dict] = {"n_prompts": 24}

    def check(self) -> dict:
        """{field: normalised value} of this class's own fields; one-line ValueError on bad input."""
        return {"n_prompts": check_int("n_prompts", self.n_prompts, 1),
                "example_length": check_int("example_length", self.example_length, 2)}

    def checked(self):
        """A copy with every field validated and normalised (base fields first, as declared)."""
        values = {}
        for cls in reversed(type(self).__mro__):
            if "check" in vars(cls):
                values.update(cls.check(self))
        return replace(self, **values)

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def resolve(cls, name: str, quick: bool, given: dict):
        """The validated parameters of phenomenon ``name``: ``given`` over the (quick) defaults."""
        allowed = cls.names()
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} for phenomenon {name!r}; allowed: {', '.join(allowed)}")
        return cls(**{k: v for k, v in cls.defaults(quick).items() if k not in given}, **given).checked()

    @classmethod
    def defaults(cls, quick: bool = False) -> dict:
        """{field: default} (``quick``: the quick defaults where they differ), unvalidated."""
        quick_values = {}
        if quick:
            for c in reversed(cls.__mro__):
                quick_values.update(vars(c).get("QUICK", {}))
        return {f.name: quick_values.get(f.name, f.default) for f in fields(cls)}

    def config(self) -> dict:
        """The parameters as JSON-able config entries (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


# ---------------------------------------------------------------------- the figure
@dataclass(frozen=True)
class Line:
    """One line per predictor of ``metric`` (with its CI band), at n = the table's largest finite n
    (``at='max'``), at n = ∞ (``'inf'``) or at every n (``'all'``, for an x axis of n).
    ``style`` overrides the predictors' line style; ``suffix`` is added to their legend labels;
    ``predictors`` keeps only those; ``right`` draws on a twin y axis."""

    metric: str
    at: str = "max"
    style: str | None = None
    suffix: str = ""
    predictors: tuple | None = None
    right: bool = False


@dataclass(frozen=True)
class Panel:
    """A row of axes (one per setting group, or one alone): its lines, y label (``{n}`` is the
    largest finite n), y limits (None: matplotlib's) and, with ``right`` lines, the twin axis'
    label and scale."""

    lines: tuple
    ylabel: str = ""
    ylim: tuple | None = None
    right_label: str = ""
    right_scale: str = "linear"


@dataclass(frozen=True)
class FigureSpec:
    """A phenomenon's figure, read by ``plots.phenomena``.

    x: 'value' (the setting's swept value) or 'n' (the number of demonstrations); xscale:
    'linear', 'log', 'log2' or 'symlog' (from 0; the axis starts at 0); panels: stacked rows;
    by_group: one column per setting group (settings without a value drawn as dotted reference
    lines when ``references``), else the panels side by side over every setting; title: each
    axis' title ('{group}' is the group); size: (width per column, extra width, height) in
    inches; legend: 'figure' (beside the panels) or 'axes' (in each)."""

    panels: tuple
    x: str = "value"
    xlabel: str = ""
    xscale: str = "linear"
    by_group: bool = True
    references: bool = False
    title: str = "{group}"
    title_size: int = 9
    size: tuple = (4.2, 2.5, 7.2)
    legend: str = "figure"


#: The figure of a table whose phenomenon is unknown: TV to the oracle and accuracy against the
#: swept value, one column per setting group.
DEFAULT_FIGURE = FigureSpec(
    panels=(Panel((Line("tv_oracle"),), "TV to the oracle (n = {n})", (0, None)),
            Panel((Line("acc"),), "accuracy (argmax == y_test, ties 1/m)", (-0.02, 1.02))),
    xlabel="shift size", references=True)


# ---------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Measurement:
    """What a phenomenon's measurement hands its verdict: the table, the parameters, the
    phenomenon's own typed info, whether a trained model was measured and in which variant."""

    table: object
    params: CommonParams
    info: object
    has_model: bool = False
    model_setting: str | None = None


def one_variant(world) -> tuple:
    """The worlds a phenomenon measures for one world: (variant name, world) pairs."""
    return (("", world),)


@dataclass(frozen=True)
class Phenomenon:
    """A phenomenon: its name, parameters class, ``measure(ctxs, params, seed, tick, table) ->
    info`` (info has ``json()``), ``verdict(Measurement) -> dict`` (with 'text' and 'rule'), its
    setting type (with ``from_label`` for redraws from a CSV), its figure, the (metric, n)
    tables its summary prints ('max': the largest finite n), the variants of each world it
    measures and a check that needs the worlds (before any work)."""

    name: str
    params: type
    measure: Callable
    verdict: Callable
    setting: type
    figure: FigureSpec
    headline: tuple = (("tv_oracle", "max"), ("acc", "max"))
    variants: Callable = one_variant
    check_worlds: Callable | None = None


REGISTRY: dict = {}


def register(phenomenon: Phenomenon) -> Phenomenon:
    """Make ``phenomenon`` known to ``run`` (a name registered again is replaced)."""
    if not isinstance(phenomenon, Phenomenon):
        raise ValueError(f"phenomenon must be a Phenomenon, got {type(phenomenon).__name__}")
    REGISTRY[phenomenon.name] = phenomenon
    return phenomenon


def get(name: str) -> Phenomenon:
    """The registered phenomenon ``name``; one-line ValueError listing the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown phenomenon {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]

