"""What every phenomenon shares: prompt surgery, the predictors, per-prompt scores, the tidy
table of effects and the statistics of a verdict.

A phenomenon module (``order``, ``labels``, ...) builds prompts with :func:`with_demos`,
:func:`permute_demos`, :func:`stack_prompts`; asks :func:`predict` for every predictor's
distribution over the labels; scores them (:func:`scores`); and adds the per-prompt numbers to an
:class:`EffectTable` under a typed setting.  The table turns into tidy rows (``COLUMNS``) and
typed :class:`Effect` rows, and answers the verdict's questions: :func:`row_value` (one key's
mean and 95% CI over worlds), :func:`paired` (a paired per-prompt difference) and
:func:`headroom` (TV(exact Bayes, oracle) of the unperturbed setting).

Every argmax score is tie-fair (a tie among m labels scores 1/m); every interval is a 95% CI
with worlds as the unit (``metrics.world_ci``; over prompts when there is one world).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from .. import bayes, kernel
from ..constants import INVARIANCE_TOL  # noqa: F401  (re-exported: the package names its tolerance)
from ..kernel import KernelSet
from ..metrics import compare, mean_ci, paired_difference, restrict, tv, world_ci
from ..sampling import concat_prompts, prompt_layout
from ..store import world_summary
from ..world import World

COLUMNS = ("setting", "n_demos", "predictor", "metric", "mean", "ci_low", "ci_high", "n_prompts", "n_worlds")
#: The dtypes of ``COLUMNS`` (n_demos is a float: inf marks the exact n -> ∞ rows).
DTYPES = {"setting": "str", "n_demos": "float", "predictor": "str", "metric": "str", "mean": "float",
          "ci_low": "float", "ci_high": "float", "n_prompts": "int", "n_worlds": "int"}
#: Every predictor a table may hold, in the order the summaries print them.
PREDICTORS = ("bayes", "kernel", "clipped", "frequency", "oracle", "model")
#: The kernel of ``kernel`` / ``clipped`` and its baseline (``frequency``), computed in one call.
KERNEL_NAMES = ("theory", "frequency")
#: CSV values keep this many significant digits (far below any CI width).
DIGITS = 6
#: Metrics that are shares or probabilities: their intervals are clipped to [0, 1].
BOUNDED = ("acc", "agree_oracle", "tv_oracle", "tv_perm", "argmax_change", "undefined", "acc_original",
           "acc_remapped", "mass_original", "mass_remapped", "mass_format_set", "impossible_x")

METRIC_DESCRIPTIONS = {
    "acc": "argmax == y_test (a tie among m labels scores 1/m)",
    "tv_oracle": "total variation over the scored labels between the predictor and the oracle "
                 "P(y | x_test, true concept)",
    "agree_oracle": "argmax == the oracle's argmax (tie-fair)",
    "undefined": "share of prompts where the predictor has no answer (exact Bayes: the prompt has probability "
                 "0 under every concept with prior > 0); they are left out of the other metrics",
    "tv_perm": "order: mean over the R permutations of TV(prediction on the original order, on the permuted "
               "order)",
    "argmax_change": "order: mean over the R permutations of 1 - tie-fair agreement of the two argmaxes",
    "acc_original": "labels: argmax == y_test (the concept's own label)",
    "acc_remapped": "labels: argmax == map(y_test) (the label the remapped demonstrations teach)",
    "mass_original": "labels: probability the predictor puts on y_test",
    "mass_remapped": "labels: probability the predictor puts on map(y_test)",
    "mass_format_set": "labels (format): total probability on the format's symbols",
    "floor_tv": "prior: n = inf, the kernel's exact bias floor E_x*[TV(limit(x*), oracle(x*))] over the test "
                "concept's inputs (convergence.concept_floors)",
    "eta2_eps": "prior: n = inf, the theory's bias term η²ε_θ (η = max ‖ψ‖, ε_θ = ρ(Σ_pre⁻¹ − Σ_θ⁻¹))",
    "eta2_eps_span": "prior: n = inf, η²ε_θ with ε_θ restricted to the span of the concept's features",
    "impossible_x": "shift: share of shifted prompts impossible under every concept with prior > 0",
    "eps_shift": "shift: n = inf, ε of the shifted inputs ρ(Σ_pre⁻¹ − Σ_shift⁻¹) restricted to their span",
}


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Named:
    """A setting that is a plain name (a reference such as retrieval's random choice, or the hidden
    headroom setting).  Every setting type has ``label`` (the CSV's ``setting``), ``group`` (the
    figure's panel) and ``value`` (the figure's x, None for a reference)."""

    name: str

    @property
    def label(self) -> str:
        return self.name

    @property
    def group(self) -> str:
        return self.name

    @property
    def value(self):
        return None

    @classmethod
    def from_label(cls, label: str) -> "Named":
        return cls(str(label))


@dataclass(frozen=True)
class Swept:
    """A setting 'group:value' (the generic reading of a table whose phenomenon is not known)."""

    name: str
    x: float

    @property
    def label(self) -> str:
        return f"{self.name}:{self.x:g}"

    @property
    def group(self) -> str:
        return self.name

    @property
    def value(self) -> float:
        return self.x

    @classmethod
    def from_label(cls, label: str):
        """'group:value' -> Swept; anything else -> :class:`Named`."""
        if ":" in label:
            g, v = label.rsplit(":", 1)
            try:
                return cls(g, float(v))
            except ValueError:
                pass
        return Named(label)


#: The setting under which labels and shift keep their unperturbed prompts' TV(exact Bayes,
#: oracle) when the swept fractions / shifts leave out 0 (hidden: no rows).
HEADROOM = Named("headroom")
HEADROOM_SETTING = HEADROOM.label


@dataclass(frozen=True)
class Effect:
    """One row of a phenomenon's table, typed: ``setting`` is the phenomenon's setting object
    (``setting.label`` is the CSV's string); n_demos an int, or inf for exact n -> ∞ quantities;
    mean and its 95% CI over worlds; how many prompts and worlds it averages."""

    setting: object
    n_demos: float
    predictor: str
    metric: str
    mean: float
    ci_low: float
    ci_high: float
    n_prompts: int
    n_worlds: int

    def row(self) -> dict:
        """The tidy row (``COLUMNS``) as written to the CSV."""
        return {"setting": self.setting.label, "n_demos": self.n_demos, "predictor": self.predictor,
                "metric": self.metric, "mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "n_prompts": self.n_prompts, "n_worlds": self.n_worlds}


# ---------------------------------------------------------------------- one world's predictors
@dataclass
class Ctx:
    """One world of an experiment: its kernels (cached), the trained model when the run's world
    is this world (``model_world``: the model's own world, to match derived worlds against), its
    index among the experiment's worlds (the CI unit) and its variant ('restart' ... or '')."""

    world: World
    wid: int
    ks: KernelSet
    model: object = None
    device: str = "cpu"
    model_world: World | None = None
    variant: str = ""


def context(world: World, example_length: int, seed: int = 0, wid: int = 0, model=None, model_world=None,
            device: str = "cpu", variant: str = "") -> Ctx:
    """The predictors' context for one world (its kernels, cached; Monte Carlo inputs, if any, drawn
    with ``seed``): pass it to :func:`predict`.  ``model`` is used only when ``model_world`` is
    ``world`` (the same arrays)."""
    use = model is not None and same_world(world, model_world)
    return Ctx(world, wid, KernelSet(world, example_length, seed=seed), model if use else None, device,
               model_world, variant)


def predict(ctx: Ctx, prompts, label_set=None, ns=None) -> dict:
    """Every predictor on ``prompts`` (B prompts of N demonstrations) after the first n of their
    demonstrations, for each n in ``ns`` (default: N only): {predictor: (B, len(ns), L)}, a
    distribution over ``label_set`` (default the world's labels; renormalised).  Exact Bayes is
    NaN where the prompt is impossible under every concept with prior > 0; ``model`` is present
    only when ``ctx`` holds one."""
    w, ks = ctx.world, ctx.ks
    labels = np.asarray(w.labels if label_set is None else label_set)
    N = prompts.n_demos
    ns = [N] if ns is None else list(ns)
    curve = bayes.icl_curve(w, prompts)
    out = {"bayes": restrict(curve.predictive[:, ns], labels)}
    kv, _ = kernel.kernel_values(w, prompts, KERNEL_NAMES, kernel_set=ks)
    for pname, kname, est in (("kernel", "theory", "normalised"), ("clipped", "theory", "clipped"),
                              ("frequency", "frequency", "normalised")):
        raw = kernel.estimates(kv[kname], prompts.labels, labels, est)
        out[pname] = kernel.to_distribution(raw[:, [n - 1 for n in ns]], est)
    # the oracle as convergence scores it: x_test as a demonstration deep inside a prompt starts
    orc = curve.oracle if w.restart else bayes.oracle_predictive(ks.ew, prompts.x_test(), prompts.concepts)
    out["oracle"] = np.repeat(restrict(orc, labels)[:, None], len(ns), axis=1)
    if ctx.model is not None:
        from ..icl_eval import model_predictive
        out["model"] = np.stack([model_predictive(ctx.model, prompts.truncated(n).tokens, labels, ctx.device)
                                 for n in ns], axis=1)
    return out


def scores(pred: np.ndarray, oracle: np.ndarray, y: np.ndarray) -> dict:
    """Per-prompt acc, tv_oracle, agree_oracle of ``pred`` (B, ..., L) against the oracle
    (B, ..., L) and y (B,) label indices (tie-fair); NaN where the predictor is undefined."""
    ok = np.isfinite(pred).all(-1)
    m = compare(oracle, np.where(ok[..., None], pred, 0.0), y)
    return {"acc": np.where(ok, m["acc"], np.nan), "tv_oracle": np.where(ok, m["tv"], np.nan),
            "agree_oracle": np.where(ok, m["agree"], np.nan)}


def undefined(pred: np.ndarray) -> np.ndarray:
    """1.0 where the predictor has no answer (a non-finite distribution), else 0.0: (B, ...)."""
    return (~np.isfinite(pred).all(-1)).astype(float)


def tv_rows(a, b):
    """Row-wise total variation of (B, L) arrays, non-finite entries read as 0."""
    return tv(np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0))


def label_index(labels, symbols) -> np.ndarray:
    """Index of each symbol in ``labels`` (-1 where absent): same shape as ``symbols``."""
    idx = np.full(int(max(np.max(labels), np.max(symbols))) + 1, -1)
    idx[np.asarray(labels)] = np.arange(len(labels))
    return idx[np.asarray(symbols)]


# ---------------------------------------------------------------------- prompt surgery
def with_demos(prompts, tokens_demo, labels_demo, x_test=None):
    """Prompts with the same x_test, y_test and concepts (or another ``x_test`` (B, k-1)) and
    other demonstrations: tokens_demo (B, n, k+1) = [x_i, y_i, delimiter] blocks, labels_demo
    (B, n)."""
    B, n, k1 = tokens_demo.shape
    xt = prompts.x_test() if x_test is None else x_test
    tokens = np.ascontiguousarray(np.concatenate([tokens_demo.reshape(B, n * k1), xt], axis=1).astype(np.int32))
    return prompt_layout(tokens, n, k1 - 1, np.asarray(labels_demo, np.int32), prompts.y_test, prompts.concepts)


def demo_blocks(prompts) -> np.ndarray:
    """(B, N, k+1) the demonstrations' [x_i, y_i, delimiter] blocks."""
    B, N, k = prompts.tokens.shape[0], prompts.n_demos, prompts.example_length
    return prompts.tokens[:, :N * (k + 1)].reshape(B, N, k + 1)


def permute_demos(prompts, perms: np.ndarray):
    """The prompts with their demonstrations reordered: perms (B, N), row b a permutation of
    0..N-1 (demonstration j of the new prompt is demonstration perms[b, j] of the old)."""
    blocks = np.take_along_axis(demo_blocks(prompts), perms[:, :, None], axis=1)
    return with_demos(prompts, blocks, np.take_along_axis(prompts.labels, perms, axis=1))


def stack_prompts(parts):
    """One batch of the prompts of ``parts`` (same N and k), in order."""
    return concat_prompts(parts)


# ---------------------------------------------------------------------- worlds
def same_world(a: World, b: World | None) -> bool:
    """True when ``a`` and ``b`` hold the same concepts and semantics (array for array)."""
    if b is None:
        return False
    return (a.restart == b.restart and a.delimiter == b.delimiter and np.array_equal(a.labels, b.labels)
            and all(getattr(a, f).shape == getattr(b, f).shape and np.array_equal(getattr(a, f), getattr(b, f))
                    for f in ("prior", "start", "transition", "emission")))


def with_restart(world: World, restart: bool) -> World:
    """The same concepts with the other delimiter semantics (the world itself when it already has them)."""
    if world.restart == restart:
        return world
    meta = dict(world.meta, restart=bool(restart))
    return replace(world, restart=bool(restart), meta=meta).revalidated()


def jsonable(obj):
    """``obj`` with dict keys as strings, tuples as lists, numpy values as Python ones and worlds
    as their summaries."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, World):
        return world_summary(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def canonical_json(obj) -> str:
    """The one-line, key-sorted JSON of a verdict (the ``verdict_json`` of the verdicts table)."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


# ---------------------------------------------------------------------- the tidy table
def round_sig(v) -> float:
    """``v`` at ``DIGITS`` significant digits (non-finite values as they are)."""
    v = float(v)
    return float(f"{v:.{DIGITS}g}") if math.isfinite(v) else v


def clip_ci(lo, hi, metric: str):
    """Every metric here is >= 0; shares and probabilities (``BOUNDED``) are also <= 1."""
    lo = np.maximum(lo, 0.0)
    return lo, (np.minimum(hi, 1.0) if metric in BOUNDED else hi)


class EffectTable:
    """Per-prompt values by (setting, n, predictor, metric), each tagged with its world (an index
    into ``world_labels``, the names the verdicts give the worlds).  Settings are typed (anything
    with a ``label``); the key is the label.  ``hidden`` values are read like the others but
    written as no row: the headroom of an unperturbed setting that the phenomenon's own sweep
    leaves out (the CSV keeps exactly the swept settings)."""

    def __init__(self, world_labels=None):
        self.data = defaultdict(list)
        self.hidden = defaultdict(list)
        self.settings = {}
        self.world_labels = None if world_labels is None else list(world_labels)

    def add(self, setting, n, predictor, metric, wid, values, hidden=False):
        """Append the per-prompt ``values`` (any shape, flattened) of world ``wid``."""
        v = np.asarray(values, np.float64).reshape(-1)
        self.settings.setdefault(setting.label, setting)
        (self.hidden if hidden else self.data)[(setting.label, n, predictor, metric)].append((np.full(v.size, wid), v))

    def values(self, setting, n, predictor, metric):
        """(values (P,), world index (P,)) of one key, or (None, None)."""
        key = (getattr(setting, "label", setting), n, predictor, metric)
        got = self.data.get(key) or self.hidden.get(key)
        if not got:
            return None, None
        return np.concatenate([g[1] for g in got]), np.concatenate([g[0] for g in got])

    def per_prompt(self) -> dict:
        """(label, n, predictor, metric) -> (values (P,), world index (P,)) of every key, hidden ones too."""
        return {key: self.values(*key) for key in (*self.data, *self.hidden)}

    def label(self, wid):
        """The JSON name of world index ``wid`` (its world seed when the run was given them)."""
        if self.world_labels is None or not 0 <= int(wid) < len(self.world_labels):
            return int(wid)
        return jsonable(self.world_labels[int(wid)])

    def world_means(self, x: np.ndarray, wids: np.ndarray) -> dict:
        """{'worlds': labels, 'world_means': [...]}: each world's mean of the per-prompt values x (P,)
        over its prompts (NaNs dropped; NaN when it has none), worlds in the order of
        ``np.unique(wids)``: exactly the world means ``metrics.world_ci`` averages."""
        ids = np.unique(wids)
        means = [float(mean_ci(x[wids == i][:, None], axis=0)[0][0]) for i in ids]
        return {"worlds": [self.label(i) for i in ids], "world_means": [round_sig(m) for m in means]}

    def effects(self) -> list[Effect]:
        """One :class:`Effect` per key (hidden ones excepted), in the order they were added."""
        out = []
        for (label, n, pred, metric), parts in self.data.items():
            x = np.concatenate([p[1] for p in parts])
            wids = np.concatenate([p[0] for p in parts])
            m, lo, hi, cnt, nw = world_ci(x[:, None], wids)
            lo, hi = clip_ci(lo, hi, metric)
            out.append(Effect(self.settings[label], n, pred, metric, round_sig(m[0]), round_sig(lo[0]),
                              round_sig(hi[0]), int(cnt[0]), int(nw[0])))
        return out


def nan_effect(**extra) -> dict:
    """The verdict's dict for an effect with no numbers."""
    return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_prompts": 0, "n_worlds": 0,
            **extra, "worlds": [], "world_means": []}


def paired(table: EffectTable, a: tuple, b: tuple) -> dict:
    """Mean and 95% CI over worlds of the per-prompt difference a - b (same prompts in the same
    order; a and b are (setting, n, predictor, metric) keys): {'mean', 'ci_low', 'ci_high',
    'n_prompts', 'n_worlds', 'excludes_0', 'worlds', 'world_means'} (each world's mean
    difference, :meth:`EffectTable.world_means`: the units of the interval, so that ratios and
    paired comparisons over worlds can be formed from them)."""
    xa, wa = table.values(*a)
    xb, wb = table.values(*b)
    if xa is None or xb is None or xa.shape != xb.shape or not np.array_equal(wa, wb):
        return nan_effect(excludes_0=False)
    d = paired_difference(xa, xb, wa)
    return {"mean": round_sig(d["mean"]), "ci_low": round_sig(d["ci_low"]), "ci_high": round_sig(d["ci_high"]),
            "n_prompts": int(d["n_prompts"]), "n_worlds": int(d["n_worlds"]), "excludes_0": bool(d["excludes_0"]),
            **table.world_means(xa - xb, wa)}


def row_value(table: EffectTable, setting, n, predictor, metric) -> dict:
    """Mean and 95% CI over worlds of one key's per-prompt values, clipped like the rows, with
    'worlds' and 'world_means' (:meth:`EffectTable.world_means`)."""
    x, w = table.values(setting, n, predictor, metric)
    if x is None:
        return nan_effect()
    m, lo, hi, cnt, nw = world_ci(x[:, None], w)
    lo, hi = clip_ci(lo, hi, metric)
    return {"mean": round_sig(m[0]), "ci_low": round_sig(lo[0]), "ci_high": round_sig(hi[0]),
            "n_prompts": int(cnt[0]), "n_worlds": int(nw[0]), **table.world_means(x, w)}


def headroom(table: EffectTable, setting, n, name: str | None = None) -> dict:
    """How far exact Bayes still is from the oracle in the unperturbed ``setting`` at ``n``: the
    room a perturbation has to move it.  :func:`row_value` of the per-prompt TV(bayes, oracle)
    (the ``tv_oracle`` of predictor 'bayes') plus 'n_demos' and 'setting' (``name``, default
    the setting's label: what the unperturbed setting is)."""
    return {**row_value(table, setting, n, "bayes", "tv_oracle"), "n_demos": n,
            "setting": str(setting.label if name is None else name)}


def add_headroom(table: EffectTable, n, wid, pr: dict, y) -> None:
    """Keep TV(exact Bayes, oracle) per prompt of the unperturbed prompts' predictions ``pr``
    (:func:`predict`, first n) under :data:`HEADROOM`."""
    tvs = scores(pr["bayes"][:, 0], pr["oracle"][:, 0], y)["tv_oracle"]
    table.add(HEADROOM, n, "bayes", "tv_oracle", wid, tvs, hidden=True)


def add_scores(table: EffectTable, setting, n, wid, pr: dict, y, j: int = 0) -> None:
    """The common rows of every predictor in ``pr`` (:func:`predict`) at its j-th n: undefined,
    acc, tv_oracle, agree_oracle."""
    for name, a in pr.items():
        a = a[:, j]
        table.add(setting, n, name, "undefined", wid, undefined(a))
        for metric, v in scores(a, pr["oracle"][:, j], y).items():
            table.add(setting, n, name, metric, wid, v)


def fmt(d: dict) -> str:
    """'mean [lo, hi]' of an effect dict, or 'n/a'."""
    if not math.isfinite(d.get("mean", float("nan"))):
        return "n/a"
    return f"{d['mean']:.3g} [{d['ci_low']:.3g}, {d['ci_high']:.3g}]"
