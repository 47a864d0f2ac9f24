"""The paper's in-context-learning phenomena, each measured on the same prompts for exact Bayes,
the theory's kernel estimate, the label frequencies, the oracle and (optionally) a trained model.

``run(name, ...)`` is ``simkernel phenomena NAME`` as a library call; it returns a
:class:`PhenomenonResult` (tidy ``rows`` with ``COLUMNS``, a ``verdict``, ``meta``) whose
``write(out)`` publishes ``<name>.csv``, ``<name>.json`` and ``<name>.png`` together.

Predictors (each a distribution over the scored label set, per prompt):

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

Every argmax score is tie-fair (a tie among m labels scores 1/m); every interval is a 95% CI with
worlds as the unit (``metrics.world_ci``; over prompts when there is one world).  Every effect in a
verdict (a :func:`paired` difference or a :func:`_row_value`) carries ``worlds`` (the world labels)
and ``world_means`` (each world's mean of the per-prompt quantity, the units of its interval), and
every verdict but order's carries ``headroom`` (:func:`headroom`: TV(exact Bayes, oracle) of the
unperturbed setting at the judged n, the room exact Bayes had to move).

The phenomena (``NAMES``):

- ``order``      R random permutations of each prompt's demonstrations; mean TV between the original
                 and the permuted prediction, in the restart world and its restart-free twin.
- ``labels``     demonstrations' labels remapped with a fraction f: ``flip`` (a derangement of the
                 labels the concepts emit) and ``format`` (onto symbols no concept emits as a label);
                 the mass each predictor puts on the original and on the remapped label.
- ``prior``      the test concept's pretraining prior swept from uniform down to 0; each predictor's
                 distance to the oracle at large n, and the kernel's exact floor beside η²ε_θ.
- ``retrieval``  n demonstrations chosen out of a pool of M from the test concept, by the theory
                 kernel, the prediction similarity or token overlap with x_test at a bandwidth τ
                 (softmax sampling of standardised scores at temperature τ), or at random.
- ``shift``      x_test (or the x_i) drawn from a shifted input distribution: one-symbol typos,
                 rare symbols, tempered transitions; accuracy and distance to the oracle against the
                 size of the shift, with the shifted inputs' ε.

Nothing here prints; nothing is written except by :meth:`PhenomenonResult.write`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import bayes, kernel
from .constants import PHENOMENA
from .kernel import KernelSet
from .metrics import compare, mean_ci, restrict, tie_accuracy, tie_agreement, world_ci
from .sampling import prompt_layout, prompt_length, sample_prompts
from .store import check_results_dir, check_seed, provenance, publish, world_summary, write_csv, write_json
from .world import World

NAMES = PHENOMENA
COLUMNS = ("setting", "n_demos", "predictor", "metric", "mean", "ci_low", "ci_high", "n_prompts", "n_worlds")
#: Every predictor a table may hold, in the order the summaries print them.
PREDICTORS = ("bayes", "kernel", "clipped", "frequency", "oracle", "model")
#: The kernel of ``kernel`` / ``clipped`` and its baseline (``frequency``), computed in one call.
KERNEL_NAMES = ("theory", "frequency")
#: CSV values keep this many significant digits (far below any CI width).
DIGITS = 6
#: The built-in invariance check: exact Bayes in a restart world and every kernel estimate must
#: change by less than this (TV) under a permutation of the demonstrations.
INVARIANCE_TOL = 1e-12
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


# ---------------------------------------------------------------------- parameters
def _ints(name, v, minimum=1, single=False):
    vals = [v] if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
    try:
        vals = list(vals)
    except TypeError:
        vals = None
    if not vals or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < minimum for x in vals) \
            or (single and len(vals) != 1):
        what = "an integer" if single else "an integer or a list of integers"
        raise ValueError(f"{name} must be {what} >= {minimum}, got {v!r}")
    if single:
        return int(vals[0])
    return sorted(set(int(x) for x in vals))


def _int(name, minimum):
    return lambda v: _ints(name, v, minimum, single=True)


def _floats(name, lo, hi, lo_open=False, allow_inf=False, words=""):
    def check(v):
        vals = [v] if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else v
        try:
            vals = [None if isinstance(x, bool) else float(x) for x in vals]
            vals = None if None in vals else vals
        except (TypeError, ValueError):
            vals = None
        ok = bool(vals) and all((x > lo if lo_open else x >= lo) and (x <= hi or (allow_inf and x == math.inf))
                                and (math.isfinite(x) or (allow_inf and x == math.inf)) for x in vals)
        if not ok:
            rng = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
            raise ValueError(f"{name} must be a non-empty list of numbers in {rng}{words}, got {v!r}")
        return list(dict.fromkeys(vals))
    return check


def _choices(name, allowed):
    def check(v):
        vals = [v] if isinstance(v, str) else list(v) if v is not None else []
        bad = [x for x in vals if x not in allowed]
        if not vals or bad:
            raise ValueError(f"{name} must be a non-empty list of {', '.join(allowed)}, got {v!r}")
        return list(dict.fromkeys(vals))
    return check


def _optional(check):
    return lambda v: None if v is None else check(v)


SHIFT_KINDS = ("typo", "rare", "tempered")
SHIFT_TARGETS = ("x_test", "demos")
SELECTORS = ("kernel", "similarity", "overlap")

#: name -> {param: (default, quick default, validator)}.  Every phenomenon also takes n_prompts
#: (prompts per world and setting) and example_length (k: x has k-1 tokens; >= 3 so that the
#: theory kernel varies within a prompt, see docs/theory.md §19).
_COMMON = {"n_prompts": (200, 24, _int("n_prompts", 1)), "example_length": (3, 3, _int("example_length", 2))}
_PARAMS = {
    "order": {"n_demos": ((2, 4, 8, 16, 32), (2, 6), lambda v: _ints("n_demos", v, 1)),
              "n_permutations": (8, 3, _int("n_permutations", 1))},
    "labels": {"n_demos": (16, 8, _int("n_demos", 1)),
               "fractions": ((0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 0.5, 1.0),
                             _floats("fractions", 0.0, 1.0)),
               "modes": (("flip", "format"), ("flip", "format"), _choices("modes", ("flip", "format")))},
    "prior": {"n_demos": ((1, 4, 16, 64, 256), (1, 8), lambda v: _ints("n_demos", v, 1)),
              "priors": (None, None, _optional(_floats("priors", 0.0, 1.0))),
              "concepts": (None, None, _optional(lambda v: _ints("concepts", v, 0)))},
    "retrieval": {"n_demos": (8, 4, _int("n_demos", 1)), "pool_size": (64, 16, _int("pool_size", 1)),
                  "bandwidths": ((0.1, 0.3, 1.0, 3.0), (0.1, 1.0),
                                 _floats("bandwidths", 0.0, math.inf, lo_open=True, allow_inf=True,
                                         words=" (a softmax temperature; inf = random)")),
                  "selectors": (SELECTORS, SELECTORS, _choices("selectors", SELECTORS))},
    "shift": {"n_demos": (16, 8, _int("n_demos", 1)),
              "kinds": (SHIFT_KINDS, SHIFT_KINDS, _choices("kinds", SHIFT_KINDS)),
              "shifts": ((0.0, 0.25, 0.5, 1.0), (0.0, 1.0), _floats("shifts", 0.0, 1.0)),
              "targets": (SHIFT_TARGETS, ("x_test",), _choices("targets", SHIFT_TARGETS))},
}


def _resolve_params(name: str, quick: bool, params: dict) -> dict:
    spec = dict(_COMMON, **_PARAMS[name])
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for phenomenon {name!r}; allowed: {', '.join(spec)}")
    out = {}
    for p, (default, quick_default, check) in spec.items():
        v = params[p] if p in params else (quick_default if quick else default)
        out[p] = check(v) if v is not None or p in params else None
    return out


# ---------------------------------------------------------------------- the result
@dataclass
class PhenomenonResult:
    """What :func:`run` returns.  rows: tidy dicts with ``COLUMNS`` (floats at ``DIGITS``
    significant digits; n_demos an int, or inf for exact n -> ∞ quantities); verdict: ``text``
    (one sentence), ``rule`` (how it was decided) and the numbers behind it; meta: the JSON
    (provenance: config, seeds, versions; the verdict; metric definitions; timings)."""

    name: str
    rows: list
    verdict: dict
    meta: dict
    elapsed_s: float
    title: str = ""
    #: (setting, n, predictor, metric) -> (values (P,), world index (P,)): the per-prompt numbers
    #: behind every row, prompts in the same order for every key of a setting (and behind the
    #: verdict's headroom where that has no row: setting HEADROOM_SETTING)
    per_prompt: dict = field(default_factory=dict, repr=False)

    def summary_lines(self) -> list[str]:
        """The printed summary: one table per headline metric (settings x predictors, mean ± CI
        half-width at the largest n), then the verdict."""
        out = [self.title] if self.title else []
        for metric, n_pick in _HEADLINE[self.name]:
            sel = [r for r in self.rows if r["metric"] == metric]
            if not sel:
                continue
            preds = [p for p in (*PREDICTORS, *sorted({r["predictor"] for r in sel} - set(PREDICTORS)))
                     if any(r["predictor"] == p for r in sel)]
            settings = list(dict.fromkeys(r["setting"] for r in sel))
            finite = sorted({r["n_demos"] for r in sel if r["n_demos"] != math.inf})
            n = (finite[-1] if finite else math.inf) if n_pick == "max" else n_pick
            w = max(20, *(len(p) + 2 for p in preds))
            sw = max(12, *(len(s) + 2 for s in settings))
            out.append(f"{metric} at n = {'∞' if n == math.inf else n} (mean ± 95% CI half-width): "
                       f"{METRIC_DESCRIPTIONS.get(metric, '')}")
            out.append(f"{'setting':<{sw}}" + "".join(f"{p:>{w}}" for p in preds))
            by = {(r["setting"], r["predictor"]): r for r in sel if r["n_demos"] == n}
            for s in settings:
                out.append(f"{s:<{sw}}" + "".join(f"{_cell(by.get((s, p))):>{w}}" for p in preds))
        out.append("verdict: " + self.verdict.get("text", ""))
        return out

    def write(self, out) -> list[Path]:
        """Publish ``<name>.csv``, ``<name>.json`` and ``<name>.png`` into ``out`` together
        (``store.publish``: all or none)."""
        from . import plots

        out = check_results_dir(out)
        stem = self.name
        return publish(out, {
            f"{stem}.csv": lambda p: write_csv(p, self.rows, COLUMNS),
            f"{stem}.json": lambda p: write_json(p, self.meta),
            f"{stem}.png": lambda p: plots.plot_phenomenon(self.rows, p, self.title, stem)})


#: (metric, n) of each phenomenon's printed tables ("max": the largest finite n of the table).
_HEADLINE = {
    "order": [("tv_perm", "max")],
    "labels": [("mass_original", "max"), ("mass_remapped", "max")],
    "prior": [("tv_oracle", "max"), ("floor_tv", math.inf)],
    "retrieval": [("tv_oracle", "max"), ("acc", "max")],
    "shift": [("acc", "max"), ("tv_oracle", "max"), ("floor_tv", math.inf)],
}


def _cell(r) -> str:
    if r is None or not math.isfinite(r["mean"]):
        return "n/a"
    half = (r["ci_high"] - r["ci_low"]) / 2
    digits = 3 if abs(r["mean"]) >= 1e-3 or r["mean"] == 0 else 1
    fmt = "f" if digits == 3 else "e"
    return f"{r['mean']:.{digits}{fmt}} ± {half:.{digits}{fmt}}" if math.isfinite(half) else f"{r['mean']:.3g}"


# ---------------------------------------------------------------------- one world's predictors
@dataclass
class _Ctx:
    """One world of an experiment: its kernels (cached), the trained model when the run's world
    is this world, and its index among the experiment's worlds (the CI unit)."""

    world: World
    wid: int
    ks: KernelSet
    model: object = None
    device: str = "cpu"


def context(world: World, example_length: int, seed: int = 0, wid: int = 0, model=None, model_world=None,
            device: str = "cpu") -> _Ctx:
    """The predictors' context for one world (its kernels, cached; Monte Carlo inputs, if any, drawn
    with ``seed``): pass it to :func:`predict`.  ``model`` is used only when ``model_world`` is
    ``world`` (the same arrays)."""
    use = model is not None and _same_world(world, model_world)
    return _Ctx(world, wid, KernelSet(world, example_length, seed=seed), model if use else None, device)


def _ctx(world, wid, k, seed, model_info) -> _Ctx:
    model, model_world, device = model_info
    return context(world, k, seed, wid, model, model_world, device)


def predict(ctx: _Ctx, prompts, label_set=None, ns=None) -> dict:
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
        from .icl_eval import model_predictive
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


def label_index(labels, symbols) -> np.ndarray:
    """Index of each symbol in ``labels`` (-1 where absent): same shape as ``symbols``."""
    idx = np.full(int(max(np.max(labels), np.max(symbols))) + 1, -1)
    idx[np.asarray(labels)] = np.arange(len(labels))
    return idx[np.asarray(symbols)]


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
    from .sampling import concat_prompts
    return concat_prompts(parts)


# ---------------------------------------------------------------------- tidy rows
class _Table:
    """Per-prompt values by (setting, n, predictor, metric), each tagged with its world (an index
    into ``world_labels``, the names the verdicts give the worlds).  ``hidden`` values are read
    like the others but written as no row: the headroom of an unperturbed setting that the
    phenomenon's own sweep leaves out (the CSV keeps exactly the swept settings)."""

    def __init__(self, world_labels=None):
        self.data = defaultdict(list)
        self.hidden = defaultdict(list)
        self.world_labels = None if world_labels is None else list(world_labels)

    def add(self, setting, n, predictor, metric, wid, values, hidden=False):
        v = np.asarray(values, np.float64).reshape(-1)
        (self.hidden if hidden else self.data)[(str(setting), n, predictor, metric)].append((np.full(v.size, wid), v))

    def values(self, setting, n, predictor, metric):
        key = (str(setting), n, predictor, metric)
        got = self.data.get(key) or self.hidden.get(key)
        if not got:
            return None, None
        return np.concatenate([g[1] for g in got]), np.concatenate([g[0] for g in got])

    def label(self, wid):
        """The JSON name of world index ``wid`` (its world seed when the run was given them)."""
        if self.world_labels is None or not 0 <= int(wid) < len(self.world_labels):
            return int(wid)
        return _jsonable(self.world_labels[int(wid)])

    def world_means(self, x: np.ndarray, wids: np.ndarray) -> dict:
        """{'worlds': labels, 'world_means': [...]}: each world's mean of the per-prompt values x (P,)
        over its prompts (NaNs dropped; NaN when it has none), worlds in the order of
        ``np.unique(wids)``: exactly the world means ``metrics.world_ci`` averages."""
        ids = np.unique(wids)
        means = [float(mean_ci(x[wids == i][:, None], axis=0)[0][0]) for i in ids]
        return {"worlds": [self.label(i) for i in ids], "world_means": [_round(m) for m in means]}

    def rows(self) -> list[dict]:
        out = []
        for (setting, n, pred, metric), parts in self.data.items():
            x = np.concatenate([p[1] for p in parts])
            wids = np.concatenate([p[0] for p in parts])
            m, lo, hi, cnt, nw = world_ci(x[:, None], wids)
            lo = np.maximum(lo, 0.0)          # every metric here is >= 0
            if metric in BOUNDED:
                hi = np.minimum(hi, 1.0)
            out.append({"setting": setting, "n_demos": n, "predictor": pred, "metric": metric,
                        "mean": _round(m[0]), "ci_low": _round(lo[0]), "ci_high": _round(hi[0]),
                        "n_prompts": int(cnt[0]), "n_worlds": int(nw[0])})
        return out


def _round(v) -> float:
    v = float(v)
    return float(f"{v:.{DIGITS}g}") if math.isfinite(v) else v


def paired(table: _Table, a: tuple, b: tuple) -> dict:
    """Mean and 95% CI over worlds of the per-prompt difference a - b (same prompts in the same
    order): {'mean', 'ci_low', 'ci_high', 'n_prompts', 'n_worlds', 'excludes_0', 'worlds',
    'world_means'} (each world's mean difference, :meth:`_Table.world_means`: the units of the
    interval, so that ratios and paired comparisons over worlds can be formed from them)."""
    xa, wa = table.values(*a)
    xb, wb = table.values(*b)
    if xa is None or xb is None or xa.shape != xb.shape or not np.array_equal(wa, wb):
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_prompts": 0,
                "n_worlds": 0, "excludes_0": False, "worlds": [], "world_means": []}
    m, lo, hi, cnt, nw = world_ci((xa - xb)[:, None], wa)
    return {"mean": _round(m[0]), "ci_low": _round(lo[0]), "ci_high": _round(hi[0]), "n_prompts": int(cnt[0]),
            "n_worlds": int(nw[0]), "excludes_0": bool(lo[0] > 0 or hi[0] < 0), **table.world_means(xa - xb, wa)}


def _row_value(table: _Table, *key) -> dict:
    """Mean and 95% CI over worlds of one key's per-prompt values, clipped like the rows, with
    'worlds' and 'world_means' (:meth:`_Table.world_means`)."""
    x, w = table.values(*key)
    if x is None:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_prompts": 0,
                "n_worlds": 0, "worlds": [], "world_means": []}
    m, lo, hi, cnt, nw = world_ci(x[:, None], w)
    lo = np.maximum(lo, 0.0)                     # as in the rows: every metric here is >= 0
    if key[-1] in BOUNDED:
        hi = np.minimum(hi, 1.0)
    return {"mean": _round(m[0]), "ci_low": _round(lo[0]), "ci_high": _round(hi[0]), "n_prompts": int(cnt[0]),
            "n_worlds": int(nw[0]), **table.world_means(x, w)}


#: The setting under which labels and shift keep their unperturbed prompts' TV(exact Bayes,
#: oracle) when the swept fractions / shifts leave out 0 (hidden: no rows).
HEADROOM_SETTING = "headroom"


def headroom(table: _Table, setting: str, n, name: str | None = None) -> dict:
    """How far exact Bayes still is from the oracle in the unperturbed ``setting`` at ``n``: the
    room a perturbation has to move it.  :func:`_row_value` of the per-prompt TV(bayes, oracle)
    (the ``tv_oracle`` of predictor 'bayes') plus 'n_demos' and 'setting' (``name``, default
    ``setting``: what the unperturbed setting is)."""
    return {**_row_value(table, setting, n, "bayes", "tv_oracle"), "n_demos": n,
            "setting": str(setting if name is None else name)}


def _add_headroom(table: _Table, n, wid, pr: dict, y) -> None:
    """Keep TV(exact Bayes, oracle) per prompt of the unperturbed prompts' predictions ``pr``
    (:func:`predict`, first n) under HEADROOM_SETTING."""
    tv = scores(pr["bayes"][:, 0], pr["oracle"][:, 0], y)["tv_oracle"]
    table.add(HEADROOM_SETTING, n, "bayes", "tv_oracle", wid, tv, hidden=True)


def _fmt(d: dict) -> str:
    if not math.isfinite(d.get("mean", float("nan"))):
        return "n/a"
    return f"{d['mean']:.3g} [{d['ci_low']:.3g}, {d['ci_high']:.3g}]"


# ---------------------------------------------------------------------- worlds and the model
def _same_world(a: World, b: World) -> bool:
    return (a.restart == b.restart and a.delimiter == b.delimiter and np.array_equal(a.labels, b.labels)
            and all(getattr(a, f).shape == getattr(b, f).shape and np.array_equal(getattr(a, f), getattr(b, f))
                    for f in ("prior", "start", "transition", "emission")))


def with_restart(world: World, restart: bool) -> World:
    """The same concepts with the other delimiter semantics (the world itself when it already has them)."""
    if world.restart == restart:
        return world
    meta = dict(world.meta, restart=bool(restart))
    return replace(world, restart=bool(restart), meta=meta).revalidated()


def _build_worlds(preset, world_seeds, overrides, worlds):
    from .presets import make_world

    if worlds is not None:
        worlds = [worlds] if isinstance(worlds, World) else list(worlds)
        if not worlds or not all(isinstance(w, World) for w in worlds):
            raise ValueError("worlds must be a non-empty list of World objects (or None to build preset at world_seeds)")
        return worlds, [w.meta.get("seed", i) for i, w in enumerate(worlds)]
    seeds = [world_seeds] if isinstance(world_seeds, (int, np.integer)) and not isinstance(world_seeds, bool) \
        else list(world_seeds or [])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"world_seeds must be distinct non-negative integers, at least one; got {world_seeds!r}")
    for s in seeds:
        try:
            check_seed(s)
        except ValueError:
            raise ValueError(f"world_seeds must be distinct non-negative integers, got {world_seeds!r}") from None
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of preset options, got {type(overrides).__name__}")
    return [make_world(preset, int(s), **(overrides or {})) for s in seeds], [int(s) for s in seeds]


def _load_model(run_dir, device, worlds, labels, variants):
    """(model, its world, device) of a run folder, with its world matched against the
    experiment's worlds (or their ``variants``); the experiment then keeps the matching world only."""
    from .device import resolve_device
    from .icl_eval import load_run, run_paths

    run_paths(run_dir)
    dev = resolve_device(device)
    model, mworld, _model_dir, _world_file = load_run(run_dir, device=dev)
    for w, lab in zip(worlds, labels):
        if any(_same_world(mworld, v) for v in variants(w)):
            return (model, mworld, dev), [w], [lab]
    raise ValueError(f"run_dir {str(run_dir)!r} was trained on another world ({mworld!r}, meta "
                     f"{mworld.meta.get('preset')!r} seed {mworld.meta.get('seed')!r}) than the experiment's "
                     f"({len(worlds)} world(s): {worlds[0]!r}, seeds {labels}); allowed: the preset, overrides and "
                     f"world_seeds (or worlds=[...]) that built the run's world")


# ---------------------------------------------------------------------- order
def _order(ctxs, p, seed, tick, table, info):
    ns, R, B, k = p["n_demos"], p["n_permutations"], p["n_prompts"], p["example_length"]
    checks = {"restart_bayes_max_tv": 0.0, "kernel_max_tv": 0.0}
    for ci, (setting, ctx) in enumerate(ctxs):
        tick(f"{setting}, world {ctx.wid}", ci, len(ctxs))
        w = ctx.world
        prompts = sample_prompts(w, B, ns[-1], k, seed)
        y = label_index(w.labels, prompts.y_test)
        rng = np.random.default_rng([seed, ctx.wid, int(w.restart), 17])
        for n in ns:
            base = prompts.truncated(n)
            perms = np.argsort(rng.random((R, B, n)), axis=-1)                  # R x B uniform permutations
            shuffled = stack_prompts([permute_demos(base, perms[r]) for r in range(R)])
            p0 = predict(ctx, base)
            p1 = predict(ctx, shuffled)
            for name, a in p0.items():
                a = a[:, 0]
                b = p1[name][:, 0].reshape(R, B, -1)
                tv = 0.5 * np.abs(b - a[None]).sum(-1)                            # (R, B)
                change = 1.0 - tie_agreement(b, a[None])
                table.add(setting, n, name, "tv_perm", ctx.wid, tv.mean(0))
                table.add(setting, n, name, "argmax_change", ctx.wid, change.mean(0))
                for metric, v in scores(a, p0["oracle"][:, 0], y).items():
                    table.add(setting, n, name, metric, ctx.wid, v)
                if name in ("kernel", "clipped", "frequency") and np.isfinite(tv).any():
                    checks["kernel_max_tv"] = max(checks["kernel_max_tv"], float(np.nanmax(tv)))
                if name == "bayes" and w.restart and np.isfinite(tv).any():
                    checks["restart_bayes_max_tv"] = max(checks["restart_bayes_max_tv"], float(np.nanmax(tv)))
    info["checks"] = dict(checks, tolerance=INVARIANCE_TOL,
                          passed=bool(checks["restart_bayes_max_tv"] < INVARIANCE_TOL
                                      and checks["kernel_max_tv"] < INVARIANCE_TOL))


def _order_verdict(table, p, info, has_model):
    n = p["n_demos"][-1]
    free = _row_value(table, "restart-free", n, "bayes", "tv_perm")
    rest = _row_value(table, "restart", n, "bayes", "tv_perm")
    kern = _row_value(table, "restart-free", n, "kernel", "tv_perm")
    sensitive = math.isfinite(free["mean"]) and free["ci_low"] > 0
    checks = info["checks"]
    nums = {"n_demos": n, "bayes_restart_free": free, "bayes_restart": rest, "kernel_restart_free": kern,
            "checks": checks}
    text = (f"at n = {n}, exact Bayes changes by TV {_fmt(free)} under a permutation of the demonstrations in the "
            f"restart-free worlds ({'order-sensitive: the CI over worlds excludes 0' if sensitive else 'no order sensitivity detected: the CI over worlds reaches 0'}), "
            f"against {rest['mean']:.1e} in the restart worlds and {kern['mean']:.1e} for the kernel "
            f"(invariance check {'passed' if checks['passed'] else 'FAILED'}: both below {INVARIANCE_TOL:g})")
    if has_model:
        setting = info.get("model_setting")
        mod = _row_value(table, setting, n, "model", "tv_perm")
        bay = _row_value(table, setting, n, "bayes", "tv_perm")
        share = bay["mean"] / mod["mean"] if mod["mean"] > 0 else float("nan")
        diff = paired(table, (setting, n, "model", "tv_perm"), (setting, n, "bayes", "tv_perm"))
        nums.update(model=mod, bayes_same_world=bay, share_of_model=_round(share), model_minus_bayes=diff)
        text += (f"; the trained model ({setting} world) changes by {_fmt(mod)}, so exact Bayes already has "
                 f"{share:.0%} of the model's order sensitivity (model − Bayes {_fmt(diff)}"
                 f"{', CI excludes 0' if diff['excludes_0'] else ', CI includes 0'})")
    rule = ("order-sensitive: the 95% CI over worlds of the mean TV(original, permuted) at the largest n excludes 0; "
            "invariance check: max TV < 1e-12 for exact Bayes in restart worlds and every kernel estimate; "
            "share = mean TV of Bayes / of the model in the model's world")
    return {"text": text, "rule": rule, "order_sensitive_bayes_restart_free": sensitive, **nums}


# ---------------------------------------------------------------------- labels
def active_labels(world: World) -> np.ndarray:
    """The labels a demonstration's y can take under a concept with prior > 0 (the sampler's event:
    a label, then a delimiter can follow): (A,) symbols."""
    emit = world.emission[:, :, world.labels] * kernel.demo_weight(world)[..., None]
    return world.labels[(emit[world.prior > 0] > 0).any(axis=(0, 1))]


def label_maps(world: World, rng) -> tuple[dict, np.ndarray, np.ndarray]:
    """The two remappings of the labels phenomenon: {'flip': (V,) symbol map, 'format': (V,) or
    None}, the active labels A and the format symbols F.

    flip: a random cyclic derangement of A (every active label goes to another active label);
    format: A onto F = the non-delimiter symbols outside A (the labels no concept with prior > 0
    emits as y, then any other symbol), cyclically when |F| < |A|; None when F is empty."""
    V = world.n_symbols
    A = active_labels(world)
    order = rng.permutation(len(A))
    flip = np.arange(V)
    if len(A) >= 2:
        flip[A[order]] = A[np.roll(order, -1)]
    F = np.array([o for o in range(V) if o != world.delimiter and o not in set(A.tolist())], dtype=np.int64)
    fmt = None
    if F.size:
        fmt = np.arange(V)
        fmt[A[order]] = F[np.arange(len(A)) % F.size]
    return {"flip": flip, "format": fmt}, A, F


def remap(prompts, mapping: np.ndarray, fraction: float, priority: np.ndarray):
    """The prompts with the labels of round(fraction · N) demonstrations mapped through
    ``mapping`` ((V,) symbol map): those with the lowest ``priority`` (B, N) values, so that
    the remapped sets are nested in the fraction.  fraction 0 returns the very same prompts."""
    N = prompts.n_demos
    m = int(math.floor(fraction * N + 0.5))
    if m == 0:
        return prompts
    chosen = np.argsort(priority, axis=1, kind="stable")[:, :m]
    labels = prompts.labels.copy()
    rows = np.arange(labels.shape[0])[:, None]
    labels[rows, chosen] = mapping[labels[rows, chosen]]
    blocks = demo_blocks(prompts).copy()
    blocks[:, :, -2] = labels
    return with_demos(prompts, blocks, labels)


def _labels(ctxs, p, seed, tick, table, info):
    B, n, k = p["n_prompts"], p["n_demos"], p["example_length"]
    info["maps"] = {}
    for ci, (_s, ctx) in enumerate(ctxs):
        tick(f"world {ctx.wid}", ci, len(ctxs))
        w = ctx.world
        rng = np.random.default_rng([seed, ctx.wid, 23])
        maps, A, F = label_maps(w, rng)
        label_set = np.array(sorted(set(w.labels.tolist()) | set(F.tolist())), dtype=np.int64)
        info["maps"][str(ctx.wid)] = {"active": A.tolist(), "format_symbols": F.tolist(), "label_set": label_set.tolist(),
                                      **{m: {int(a): int(v[a]) for a in A} for m, v in maps.items() if v is not None}}
        prompts = sample_prompts(w, B, n, k, seed)
        priority = rng.random((B, n))
        y = label_index(label_set, prompts.y_test)
        clean = None
        for mode in p["modes"]:
            mapping = maps[mode]
            if mapping is None:
                info.setdefault("skipped", {})[f"{mode}/{ctx.wid}"] = "no symbol outside the active labels"
                continue
            y_new = label_index(label_set, mapping[prompts.y_test])
            fset = np.isin(label_set, F)
            for f in p["fractions"]:
                pr = predict(ctx, remap(prompts, mapping, f, priority), label_set)
                if f == 0 and clean is None:
                    clean = pr                    # remap at 0 returns the very prompts: every mode's f = 0
                setting = f"{mode}:{f:g}"
                for name, a in pr.items():
                    a = a[:, 0]
                    ok = np.isfinite(a).all(-1)
                    rows = np.arange(B)
                    table.add(setting, n, name, "undefined", ctx.wid, (~ok).astype(float))
                    for metric, v in scores(a, pr["oracle"][:, 0], y).items():
                        table.add(setting, n, name, metric, ctx.wid, v)
                    table.add(setting, n, name, "acc_original", ctx.wid, np.where(ok, tie_accuracy(a, y), np.nan))
                    table.add(setting, n, name, "acc_remapped", ctx.wid, np.where(ok, tie_accuracy(a, y_new), np.nan))
                    table.add(setting, n, name, "mass_original", ctx.wid, a[rows, np.clip(y, 0, None)])
                    table.add(setting, n, name, "mass_remapped", ctx.wid, a[rows, np.clip(y_new, 0, None)])
                    if mode == "format":
                        table.add(setting, n, name, "mass_format_set", ctx.wid, a[:, fset].sum(-1))
        _add_headroom(table, n, ctx.wid, clean if clean is not None else predict(ctx, prompts, label_set), y)


def _labels_verdict(table, p, info, has_model):
    n = p["n_demos"]
    f = max(p["fractions"])
    out, parts = {"n_demos": n, "fraction": f}, []
    for mode in p["modes"]:
        s = f"{mode}:{f:g}"
        verdicts = {}
        for pred in ("bayes", "kernel", "frequency", "oracle", "model"):
            d = paired(table, (s, n, pred, "mass_remapped"), (s, n, pred, "mass_original"))
            if d["n_prompts"] == 0:
                continue
            side = ("follows the demonstrations" if d["excludes_0"] and d["mean"] > 0 else
                    "follows the pretraining concepts" if d["excludes_0"] and d["mean"] < 0 else "undecided")
            verdicts[pred] = dict(d, side=side, mass_original=_row_value(table, s, n, pred, "mass_original"),
                                  mass_remapped=_row_value(table, s, n, pred, "mass_remapped"),
                                  undefined=_row_value(table, s, n, pred, "undefined"))
        out[mode] = verdicts
        bits = []
        for pred, d in verdicts.items():
            if d["n_prompts"] == 0 or not math.isfinite(d["mean"]):
                und = d["undefined"]["mean"]
                bits.append(f"{pred} undefined ({und:.0%} of prompts impossible)")
            else:
                bits.append(f"{pred} {d['mass_original']['mean']:.2f} vs {d['mass_remapped']['mean']:.2f} ({d['side']})")
        parts.append(f"{mode} f = {f:g}: mass on the original vs the remapped label: " + "; ".join(bits))
    und = {mode: _row_value(table, f"{mode}:{f:g}", n, "bayes", "undefined") for mode in p["modes"]}
    for mode, d in und.items():
        if math.isfinite(d["mean"]) and d["mean"] > 0:
            parts.append(f"exact Bayes has no answer for {d['mean']:.0%} of the {mode} prompts (probability 0 "
                         f"under every concept with prior > 0)")
    rule = ("a predictor follows the demonstrations (the pretraining concepts) when the 95% CI over worlds of its "
            "per-prompt mass_remapped − mass_original at the largest fraction lies above (below) 0; undecided otherwise")
    return {"text": f"n = {n}: " + "; ".join(parts), "rule": rule, **out,
            "headroom": headroom(table, HEADROOM_SETTING, n, "fraction 0")}


# ---------------------------------------------------------------------- prior
def prior_world(world: World, concept: int, value: float) -> World:
    """The world with concept ``concept``'s pretraining prior set to ``value`` and the other
    concepts sharing 1 - value in proportion to their prior (uniformly when they have none)."""
    rest = np.array(world.prior, dtype=np.float64)
    rest[concept] = 0.0
    if rest.sum() <= 0:
        rest = np.ones_like(rest)
        rest[concept] = 0.0
    if rest.sum() <= 0:
        if value != 1.0:
            raise ValueError("priors must be [1.0] in a world of one concept")
        return world
    prior = rest / rest.sum() * (1.0 - value)
    prior[concept] = value
    return world.with_prior(prior / prior.sum())


def default_priors(world: World, concept: int) -> list[float]:
    """u · (1, 0.1, 0.01, 1e-3, 1e-4, 1e-6, 0) with u = 1 / (number of concepts with prior > 0,
    counting ``concept``): the uniform prior down to out-of-distribution."""
    u = 1.0 / max(1, int(((world.prior > 0) | (np.arange(world.n_concepts) == concept)).sum()))
    return [u * s for s in (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-6)] + [0.0]


def _prior(ctxs, p, seed, tick, table, info):
    from .convergence import concept_floors

    ns, B, k = p["n_demos"], p["n_prompts"], p["example_length"]
    jobs = []
    for _s, ctx in ctxs:
        base = ctx.world
        concepts = p["concepts"] if p["concepts"] is not None else [int(c) for c in np.flatnonzero(base.prior > 0)]
        bad = [c for c in concepts if c >= base.n_concepts]
        if bad:
            raise ValueError(f"concepts must be concept indices in 0..{base.n_concepts - 1}, got {bad[0]}")
        for c in concepts:
            jobs.append((ctx, c, p["priors"] if p["priors"] is not None else default_priors(base, c)))
    info["priors"] = {f"{ctx.wid}/{c}": pri for ctx, c, pri in jobs}
    # the setting names the prior when every (world, concept) sweeps the same values, else its rank
    # (so that the rows and the paired verdicts line up across worlds and concepts)
    same = all(pri == jobs[0][2] for _c, _k, pri in jobs)
    info["setting_names"] = "value" if same else "rank"
    info["rank_values"] = {r: sorted({round(pri[r], 15) for _c, _k, pri in jobs if r < len(pri)})
                           for r in range(max(len(pri) for _c, _k, pri in jobs))}
    info["floors"] = []
    total = sum(len(pri) for _c, _k, pri in jobs)
    done = 0
    for ctx, c, priors in jobs:
        base = ctx.world
        for rank, value in enumerate(priors):
            tick(f"world {ctx.wid}, concept {c}, prior {value:.3g}", done, total)
            done += 1
            w = prior_world(base, c, value)
            sub = _Ctx(w, ctx.wid, KernelSet(w, k, seed=seed),
                       ctx.model if ctx.model is not None and _same_world(w, info["model_world"]) else None,
                       ctx.device)
            prompts = sample_prompts(w, B, ns[-1], k, seed, concept=c)
            y = label_index(w.labels, prompts.y_test)
            pr = predict(sub, prompts, ns=ns)
            setting = prior_setting(info, rank)
            for name, a in pr.items():
                sc = scores(a, pr["oracle"], y)
                for j, n in enumerate(ns):
                    table.add(setting, n, name, "undefined", ctx.wid, (~np.isfinite(a[:, j]).all(-1)).astype(float))
                    for metric, v in sc.items():
                        table.add(setting, n, name, metric, ctx.wid, v[:, j])
            for fl in concept_floors(sub.ks, [c], kernels=("theory",), estimators=("normalised", "clipped"),
                                     world_label=ctx.wid):
                name = "kernel" if fl["estimator"] == "normalised" else "clipped"
                for metric in ("floor_tv", "eta2_eps", "eta2_eps_span"):
                    table.add(setting, math.inf, name, metric, ctx.wid, [fl[metric]])
                info["floors"].append(dict(fl, prior_rank=rank, prior_value=value))


def prior_setting(info, rank) -> str:
    """'prior:<value>' (or 'prior:rank<r>' when the worlds sweep different values)."""
    if info["setting_names"] == "value":
        return f"prior:{info['rank_values'][rank][0]:.6g}"
    return f"prior:rank{rank}"


def _prior_verdict(table, p, info, has_model):
    n = p["n_demos"][-1]
    ranks = sorted(info["rank_values"])
    out, per = {"n_demos": n, "prior_values": info["rank_values"]}, {}
    for pred in ("bayes", "kernel", "frequency", "model"):
        vals = [_row_value(table, prior_setting(info, r), n, pred, "tv_oracle") for r in ranks]
        if not any(math.isfinite(v["mean"]) for v in vals):
            continue
        # ICL overcomes the preference down to the smallest prior whose distance to the oracle is not
        # above the uniform prior's (the paired difference's CI does not lie above 0)
        overcome = []
        for r in ranks[1:]:
            d = paired(table, (prior_setting(info, r), n, pred, "tv_oracle"),
                       (prior_setting(info, ranks[0]), n, pred, "tv_oracle"))
            overcome.append({"rank": r, "worse_than_uniform": bool(d["excludes_0"] and d["mean"] > 0), **d})
        per[pred] = {"tv_oracle": vals, "vs_uniform": overcome}
    out["predictors"] = per
    from scipy.stats import spearmanr
    fl = [f for f in info["floors"] if f["estimator"] == "normalised"]
    x = np.array([f["eta2_eps_span"] for f in fl], float)
    yv = np.array([f["floor_tv"] for f in fl], float)
    ok = np.isfinite(x) & np.isfinite(yv)
    rho = float(spearmanr(x[ok], yv[ok])[0]) if ok.sum() >= 4 and np.ptp(x[ok]) > 0 and np.ptp(yv[ok]) > 0 else float("nan")
    out["floor_vs_eta2_eps_span_spearman"] = _round(rho)
    out["n_floor_pairs"] = int(ok.sum())
    bits = []
    for pred, d in per.items():
        worse = [o for o in d["vs_uniform"] if o["worse_than_uniform"]]
        first_bad = min((o["rank"] for o in worse), default=None)
        vals = d["tv_oracle"]
        bits.append(f"{pred} TV {vals[0]['mean']:.3f} at the uniform prior → {vals[-1]['mean']:.3f} at the smallest"
                    + (f", detectably worse than at the uniform prior from prior {_rank_text(info, first_bad)} down"
                       if first_bad is not None else ", at no prior detectably worse than at the uniform prior"))
        d["first_worse_prior"] = None if first_bad is None else info["rank_values"].get(first_bad)
    fk = [_row_value(table, prior_setting(info, r), math.inf, "kernel", "floor_tv")["mean"] for r in ranks]
    text = (f"distance to the oracle at n = {n}: " + "; ".join(bits)
            + f"; the kernel's exact floor goes {fk[0]:.3f} → {fk[-1]:.3f} and its Spearman correlation with "
              f"η²ε_θ (span) over {out['n_floor_pairs']} (world, concept, prior) triples is {rho:.2f}")
    rule = ("a predictor fails to overcome the pretraining preference at a prior when the 95% CI over worlds of its "
            "per-prompt TV to the oracle at the largest n minus the same at the uniform prior lies above 0")
    return {"text": text, "rule": rule, **out, "headroom": headroom(table, prior_setting(info, ranks[0]), n)}


def _rank_text(info, rank):
    vals = info["rank_values"].get(rank, [])
    return "/".join(f"{v:.2g}" for v in vals)


# ---------------------------------------------------------------------- retrieval
def selector_scores(ctx: _Ctx, pool, selector: str) -> np.ndarray:
    """(B, M) how close each pool demonstration x_j is to x_test: ``kernel`` K(x_test, x_j) (the
    theory kernel), ``similarity`` P(o | x_test)ᵀ P(o | x_j) (the paper's prediction similarity,
    each input scored alone under the pretraining mixture), ``overlap`` the number of positions
    where x_j and x_test hold the same symbol.  ``pool``: prompts of M demonstrations."""
    if selector == "overlap":
        blocks = demo_blocks(pool)[:, :, :pool.example_length - 1]
        return (blocks == pool.x_test()[:, None, :]).sum(-1).astype(np.float64)
    kname = {"kernel": "theory", "similarity": "similarity"}[selector]
    kv, _ = kernel.kernel_values(ctx.world, pool, (kname,), kernel_set=ctx.ks)
    return kv[kname]


def select_demos(score: np.ndarray, n: int, bandwidth: float, gumbel: np.ndarray) -> np.ndarray:
    """(B, n) indices into the pool, ascending (the chosen demonstrations keep their pool order, so
    that a selection differs from another only in which demonstrations it shows).

    score (B, M); the scores are standardised per prompt (mean 0, sd 1; a constant row is all 0)
    and n are drawn without replacement with probabilities ∝ exp(z / bandwidth) (Gumbel-top-n with
    the given noise ``gumbel`` (B, M)): bandwidth -> 0 is the n nearest, inf is uniformly random."""
    sd = score.std(axis=1, keepdims=True)
    z = np.where(sd > 0, (score - score.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)
    keys = gumbel if bandwidth == math.inf else z / bandwidth + gumbel
    top = np.argsort(-keys, axis=1, kind="stable")[:, :n]
    return np.sort(top, axis=1)


def _retrieval(ctxs, p, seed, tick, table, info):
    B, n, M, k = p["n_prompts"], p["n_demos"], p["pool_size"], p["example_length"]
    info["mean_kernel_shown"] = {}
    for ci, (_s, ctx) in enumerate(ctxs):
        tick(f"world {ctx.wid}", ci, len(ctxs))
        w = ctx.world
        pool = sample_prompts(w, B, M, k, seed)
        y = label_index(w.labels, pool.y_test)
        rng = np.random.default_rng([seed, ctx.wid, 29])
        gumbel = rng.gumbel(size=(B, M))          # common random numbers: every selection shares them
        blocks = demo_blocks(pool)
        K_theory = selector_scores(ctx, pool, "kernel")
        choices = [("random", select_demos(np.zeros((B, M)), n, math.inf, gumbel))]
        for sel in p["selectors"]:
            sc = K_theory if sel == "kernel" else selector_scores(ctx, pool, sel)
            choices += [(f"{sel}:{bw:g}", select_demos(sc, n, bw, gumbel)) for bw in p["bandwidths"]]
        for setting, idx in choices:
            shown = with_demos(pool, np.take_along_axis(blocks, idx[:, :, None], axis=1),
                               np.take_along_axis(pool.labels, idx, axis=1))
            pr = predict(ctx, shown)
            for name, a in pr.items():
                a = a[:, 0]
                table.add(setting, n, name, "undefined", ctx.wid, (~np.isfinite(a).all(-1)).astype(float))
                for metric, v in scores(a, pr["oracle"][:, 0], y).items():
                    table.add(setting, n, name, metric, ctx.wid, v)
            # how near the shown demonstrations are, in the theory kernel (the bandwidth's effect)
            table.add(setting, n, "kernel", "mean_kernel_shown", ctx.wid,
                      np.take_along_axis(K_theory, idx, axis=1).mean(1))


def _retrieval_verdict(table, p, info, has_model):
    n, bw = p["n_demos"], min(p["bandwidths"])
    out, bits = {"n_demos": n, "bandwidth": bw, "pool_size": p["pool_size"]}, []
    for sel in p["selectors"]:
        s = f"{sel}:{bw:g}"
        res = {}
        for pred in ("bayes", "kernel", "frequency", "model"):
            d = paired(table, (s, n, pred, "tv_oracle"), ("random", n, pred, "tv_oracle"))
            if d["n_prompts"] == 0:
                continue
            a = paired(table, (s, n, pred, "acc"), ("random", n, pred, "acc"))
            res[pred] = {"tv_oracle_minus_random": d, "acc_minus_random": a,
                         "helps": bool(d["excludes_0"] and d["mean"] < 0),
                         "hurts": bool(d["excludes_0"] and d["mean"] > 0)}
        out[sel] = res
        bits.append(f"{sel}: " + ", ".join(
            f"{pred} ΔTV {r['tv_oracle_minus_random']['mean']:+.3f} "
            f"({'helps' if r['helps'] else 'hurts' if r['hurts'] else 'no detectable effect'})" for pred, r in res.items()))
    # does the kernel's distance to the oracle shrink as the kernel retrieval's bandwidth shrinks?
    bws = sorted(p["bandwidths"])
    curve = [_row_value(table, f"kernel:{b:g}", n, "kernel", "tv_oracle") for b in bws]
    out["kernel_tv_by_bandwidth"] = dict(zip(map(str, bws), curve))
    out["kernel_tv_random"] = _row_value(table, "random", n, "kernel", "tv_oracle")
    shrinks = None
    if "kernel" in p["selectors"] and len(bws) >= 2:
        d = paired(table, (f"kernel:{bws[0]:g}", n, "kernel", "tv_oracle"), (f"kernel:{bws[-1]:g}", n, "kernel", "tv_oracle"))
        out["kernel_smallest_minus_largest_bandwidth"] = d
        shrinks = bool(d["excludes_0"] and d["mean"] < 0)
    out["kernel_bias_shrinks_with_bandwidth"] = shrinks
    text = (f"{n} of {p['pool_size']} demonstrations chosen at bandwidth τ = {bw:g} vs at random, change in TV to "
            f"the oracle: " + "; ".join(bits))
    if shrinks is not None:
        text += (f"; with kernel retrieval the kernel's TV to the oracle goes "
                 + " → ".join(f"{c['mean']:.3f}" for c in curve[::-1]) + f" as τ falls {bws[-1]:g} → {bws[0]:g} "
                 f"({'shrinks: CI excludes 0' if shrinks else 'no detectable shrinking'}; random {out['kernel_tv_random']['mean']:.3f})")
    rule = ("retrieval helps (hurts) a predictor when the 95% CI over worlds of the per-prompt difference in TV to the "
            "oracle, retrieved at the smallest bandwidth minus random (same pools, same noise), lies below (above) 0; "
            "the kernel's bias shrinks when its TV at the smallest minus the largest bandwidth lies below 0")
    return {"text": text, "rule": rule, **out, "headroom": headroom(table, "random", n)}


# ---------------------------------------------------------------------- shift
def emittable(world: World) -> np.ndarray:
    """Non-delimiter symbols some state of a concept with prior > 0 can emit: (E,) symbols."""
    e = (world.emission[world.prior > 0] > 0).any(axis=(0, 1))
    e[world.delimiter] = False
    return np.flatnonzero(e)


def rare_symbols(world: World, example_length: int) -> np.ndarray:
    """The emittable symbols in the lowest third of the pretraining inputs' symbol frequencies
    (at least one): (R,) symbols."""
    s = kernel.input_distribution(world, example_length, None)
    freq = np.zeros(world.n_symbols)
    for j in range(s.x.shape[1]):
        np.add.at(freq, s.x[:, j], s.weights)
    cand = emittable(world)
    order = cand[np.argsort(freq[cand], kind="stable")]
    return np.sort(order[:max(1, len(order) // 3)])


def tempered(world: World, temperature: float) -> World:
    """Every start, transition and emission row raised to 1 / temperature and renormalised (zeros
    stay zero; temperature > 1 flattens the rows)."""
    def t(a):
        b = np.where(a > 0, np.power(np.where(a > 0, a, 1.0), 1.0 / temperature), 0.0)
        return b / b.sum(-1, keepdims=True)
    return World.from_arrays(world.prior, t(world.start), t(world.transition), t(world.emission), world.delimiter,
                             world.labels, world.restart, world.meta)


#: tempered: temperature = 1 + TEMPER_SCALE · shift size.
TEMPER_SCALE = 9.0


def shift_inputs(world: World, x: np.ndarray, concepts: np.ndarray, kind: str, size: float, rng,
                 symbols: np.ndarray) -> np.ndarray:
    """Shifted copies of the inputs x (B, k-1) of the given concepts (B,).

    typo      with probability ``size`` one position of x (uniform) gets another symbol of ``symbols``
    rare      each position, with probability ``size``, becomes a uniform draw from ``symbols`` (rare ones)
    tempered  x drawn afresh from the concept with every row tempered at 1 + TEMPER_SCALE · size
              (``size`` 0 keeps x)
    typo and rare keep each example's label (a typo does not change the gold label, as in the paper's
    Table 1); a tempered input is a new input, labelled by its concept (``_shift``)."""
    B, L = x.shape
    out = x.copy()
    if size == 0 or L == 0:
        return out
    if kind == "typo":
        hit = np.flatnonzero(rng.random(B) < size)
        pos = rng.integers(0, L, size=hit.size)
        for b, j in zip(hit, pos):
            others = symbols[symbols != out[b, j]]
            if others.size:
                out[b, j] = rng.choice(others)
        return out
    if kind == "rare":
        mask = rng.random((B, L)) < size
        out[mask] = rng.choice(symbols, size=int(mask.sum()))
        return out
    wt = tempered(world, 1.0 + TEMPER_SCALE * size)
    for c in np.unique(concepts):
        sel = np.flatnonzero(concepts == c)
        draw = sample_prompts(wt, len(sel), 0, L + 1, int(rng.integers(2**31)), concept=int(c))
        out[sel] = draw.x_test()
    return out


def _labels_given_x(ctx: _Ctx, x, concepts, rng):
    """y ~ P(y | x, true concept, y a label) for each row (x scored as a demonstration input starts),
    as label symbols; -1 where x is impossible under its concept.  (B,)"""
    orc = restrict(bayes.oracle_predictive(ctx.ks.ew, x, concepts), ctx.world.labels)
    ok = np.isfinite(orc).all(-1)
    u = rng.random(len(x))
    idx = (np.cumsum(np.where(ok[:, None], orc, 0.0), axis=1) < u[:, None] * np.where(ok, 1.0, 0.0)[:, None]).sum(1)
    return np.where(ok, ctx.world.labels[np.clip(idx, 0, len(ctx.world.labels) - 1)], -1)


def _shift(ctxs, p, seed, tick, table, info):
    B, n, k = p["n_prompts"], p["n_demos"], p["example_length"]
    info["symbols"] = {}
    total = len(ctxs) * len(p["kinds"]) * len(p["targets"])
    done = 0
    for _s, ctx in ctxs:
        w = ctx.world
        syms = {"typo": emittable(w), "rare": rare_symbols(w, k), "tempered": emittable(w)}
        info["symbols"][str(ctx.wid)] = {kk: v.tolist() for kk, v in syms.items()}
        base = sample_prompts(w, B, n, k, seed)
        blocks = demo_blocks(base)
        pre = ctx.ks.theory()
        clean = False
        for kind in p["kinds"]:
            for target in p["targets"]:
                tick(f"world {ctx.wid}: {kind} on {target}", done, total)
                done += 1
                for size in p["shifts"]:
                    rng = np.random.default_rng([seed, ctx.wid, SHIFT_KINDS.index(kind), SHIFT_TARGETS.index(target),
                                                 int(round(size * 1e6))])
                    setting = f"{kind}/{target}:{size:g}"
                    if target == "x_test":
                        xt = shift_inputs(w, base.x_test(), base.concepts, kind, size, rng, syms[kind])
                        # a typo or a rare word leaves the gold label as it was (the paper's protocol);
                        # a tempered x_test is a new input, labelled by its concept
                        ytest = base.y_test if size == 0 or kind != "tempered" else \
                            _labels_given_x(ctx, xt, base.concepts, rng)
                        ytest = np.where(ytest >= 0, ytest, base.y_test)
                        prompts = with_demos(base, blocks, base.labels, x_test=xt)
                        prompts = replace(prompts, y_test=np.asarray(ytest, np.int32))
                        xs = xt
                    else:
                        xd = blocks[:, :, :k - 1].reshape(B * n, k - 1)
                        cd = np.repeat(base.concepts, n)
                        xd2 = shift_inputs(w, xd, cd, kind, size, rng, syms[kind])
                        yd = base.labels.reshape(-1) if size == 0 or kind != "tempered" else \
                            _labels_given_x(ctx, xd2, cd, rng)
                        nb = blocks.copy()
                        nb[:, :, :k - 1] = xd2.reshape(B, n, k - 1)
                        # an impossible x_i keeps its old label: the prompt is then counted impossible below
                        yd = np.where(yd >= 0, yd, base.labels.reshape(-1)).reshape(B, n)
                        nb[:, :, k - 1] = yd
                        prompts = with_demos(base, nb, yd)
                        xs = xd2
                    y = label_index(w.labels, prompts.y_test)
                    pr = predict(ctx, prompts)
                    if size == 0 and not clean:   # every kind and target leaves the prompts as they are at 0
                        _add_headroom(table, n, ctx.wid, pr, y)
                        clean = True
                    imp = ~np.isfinite(pr["bayes"][:, 0]).all(-1)
                    table.add(setting, n, "bayes", "impossible_x", ctx.wid, imp.astype(float))
                    for name, a in pr.items():
                        a = a[:, 0]
                        table.add(setting, n, name, "undefined", ctx.wid, (~np.isfinite(a).all(-1)).astype(float))
                        for metric, v in scores(a, pr["oracle"][:, 0], y).items():
                            table.add(setting, n, name, metric, ctx.wid, v)
                    # the shifted inputs' ε: Σ of their features against Σ_pretrain, in their span
                    psi = ctx.ks.psi(np.ascontiguousarray(xs, dtype=np.int32))
                    keep = np.linalg.norm(psi, axis=1) > 0
                    if keep.sum() >= 2 and pre.form == "dense":
                        m = kernel.fit_kernel(psi[keep], np.full(keep.sum(), 1.0 / keep.sum()), ridge=ctx.ks.ridge)
                        eps = kernel.epsilon_theta(pre, m, kernel.support_basis(psi[keep]))
                        table.add(setting, math.inf, "kernel", "eps_shift", ctx.wid, [eps])
                    if target == "x_test":
                        _shift_floor(ctx, prompts, table, setting)
        if not clean:
            _add_headroom(table, n, ctx.wid, predict(ctx, base), label_index(w.labels, base.y_test))


def _shift_floor(ctx, prompts, table, setting):
    """The kernel's exact n -> ∞ limit at each (shifted) x_test, demonstrations from the concept's
    own (unshifted) distribution, against the oracle: the floor the shift leaves (n = inf rows)."""
    w = ctx.world
    _, info = kernel.kernel_values(w, prompts, ("theory",), kernel_set=ctx.ks, limits_for=("normalised", "clipped"))
    orc = bayes.oracle_predictive(ctx.ks.ew, prompts.x_test(), prompts.concepts)
    orc = restrict(orc, w.labels)
    for est, name in (("normalised", "kernel"), ("clipped", "clipped")):
        lim = kernel.to_distribution(info["limits"][("theory", est)].scores, est)
        ok = np.isfinite(orc).all(-1)
        table.add(setting, math.inf, name, "floor_tv", ctx.wid, np.where(ok, tv_rows(lim, orc), np.nan))


def tv_rows(a, b):
    """Row-wise total variation of (B, L) arrays."""
    return 0.5 * np.abs(np.where(np.isfinite(a), a, 0.0) - np.where(np.isfinite(b), b, 0.0)).sum(-1)


def _shift_verdict(table, p, info, has_model):
    n, big = p["n_demos"], max(p["shifts"])
    out, bits = {"n_demos": n, "shift": big}, []
    for kind in p["kinds"]:
        for target in p["targets"]:
            g = f"{kind}/{target}"
            res = {}
            for pred in ("bayes", "kernel", "frequency", "oracle", "model"):
                d = paired(table, (f"{g}:{big:g}", n, pred, "acc"), (f"{g}:0", n, pred, "acc"))
                if d["n_prompts"] == 0:
                    continue
                res[pred] = {"acc_clean": _row_value(table, f"{g}:0", n, pred, "acc"),
                             "acc_shifted": _row_value(table, f"{g}:{big:g}", n, pred, "acc"),
                             "shifted_minus_clean": d, "hurts": bool(d["excludes_0"] and d["mean"] < 0)}
            res["impossible"] = _row_value(table, f"{g}:{big:g}", n, "bayes", "impossible_x")
            res["eps_shift"] = [_row_value(table, f"{g}:{s:g}", math.inf, "kernel", "eps_shift")["mean"]
                                for s in p["shifts"]]
            if target == "x_test":
                res["kernel_floor"] = [_row_value(table, f"{g}:{s:g}", math.inf, "kernel", "floor_tv")["mean"]
                                       for s in p["shifts"]]
            out[g] = res
            accs = ", ".join(f"{pred} {r['acc_clean']['mean']:.3f} → {r['acc_shifted']['mean']:.3f}"
                             f"{'' if r['shifted_minus_clean']['excludes_0'] else ' (n.s.)'}"
                             for pred, r in res.items() if isinstance(r, dict) and "acc_clean" in r)
            imp = res["impossible"]["mean"]
            bits.append(f"{g}: {accs}" + (f"; {imp:.0%} of prompts impossible under every concept" if imp > 0 else ""))
    text = f"accuracy at n = {n}, clean → shift {big:g} (n.s.: the CI over worlds of the change includes 0): " + "; ".join(bits)
    rule = ("a shift hurts a predictor when the 95% CI over worlds of its per-prompt accuracy at the largest shift "
            "minus at shift 0 (same prompts and demonstrations) lies below 0")
    return {"text": text, "rule": rule, **out, "headroom": headroom(table, HEADROOM_SETTING, n, "shift 0")}


# ---------------------------------------------------------------------- the experiment
_RUNNERS = {"order": (_order, _order_verdict), "labels": (_labels, _labels_verdict),
            "prior": (_prior, _prior_verdict), "retrieval": (_retrieval, _retrieval_verdict),
            "shift": (_shift, _shift_verdict)}


def run(name: str, *, preset: str = "ginc-small", world_seeds=(0, 1, 2), overrides=None, worlds=None, seed: int = 0,
        quick: bool = False, run_dir=None, device: str = "auto", progress=None, **params) -> PhenomenonResult:
    """``simkernel phenomena NAME`` as a library call (see the module docstring).

    preset, world_seeds, overrides: the worlds (``presets.make_world``), one per world seed;
    ``worlds`` (a list of World) replaces them.  seed: the prompt seed (and every other draw).
    quick: small defaults for every parameter not given (the tests' setting, seconds).
    run_dir: a folder made by ``simkernel train``; its model is added as predictor ``model`` and its
    world must be one of the experiment's worlds (``order``: or its restart twin), which is then the
    only world used.  device: the model's ('auto', 'cpu', 'cuda', ...).  progress: optional
    callable(message, done, total) between stages.  ``params``: the phenomenon's own knobs
    (``_PARAMS``; unknown names are a ValueError listing the allowed ones).  Bad arguments raise a
    one-line ValueError naming the argument before any work.  Writes nothing."""
    t0 = time.perf_counter()
    if name not in NAMES:
        raise ValueError(f"unknown phenomenon {name!r}; allowed: {', '.join(NAMES)}")
    if name not in _RUNNERS:
        raise ValueError(f"phenomenon {name!r} is not implemented yet; implemented: {', '.join(_RUNNERS)}")
    seed = check_seed(seed)
    p = _resolve_params(name, bool(quick), params)
    _check_combination(name, p)
    world_list, labels = _build_worlds(preset, world_seeds, overrides, worlds)
    _check_worlds(name, p, world_list)
    variants = (lambda w: (w, with_restart(w, not w.restart))) if name == "order" else (lambda w: (w,))
    model_info = (None, None, "cpu")
    if run_dir is not None:
        model_info, world_list, labels = _load_model(run_dir, device, world_list, labels, variants)
        ctx_len = getattr(getattr(model_info[0], "config", None), "n_positions", None)
        n_max = max(p["n_demos"]) if isinstance(p["n_demos"], list) else p["n_demos"]
        if ctx_len is not None and prompt_length(n_max, p["example_length"]) > ctx_len:
            raise ValueError(f"n_demos {n_max} makes prompts of {prompt_length(n_max, p['example_length'])} symbols, "
                             f"longer than the model's context ({ctx_len}); allowed: n_demos with "
                             f"n (k + 1) + k - 1 <= {ctx_len}")
    tick = progress or (lambda _m, _d, _t: None)
    k = p["example_length"]
    ctxs = []
    for wi, w in enumerate(world_list):
        if name == "order":
            for restart in (True, False):
                ctxs.append(("restart" if restart else "restart-free", _ctx(with_restart(w, restart), wi, k, seed,
                                                                             model_info)))
        else:
            ctxs.append(("", _ctx(w, wi, k, seed, model_info)))
    table, info = _Table(labels), {"model_world": model_info[1]}
    if model_info[0] is not None:
        info["model_setting"] = next((s for s, c in ctxs if c.model is not None), None)
    runner, verdict_fn = _RUNNERS[name]
    runner(ctxs, p, seed, tick, table, info)
    tick("summary", 1, 1)
    rows = table.rows()
    has_model = any(r["predictor"] == "model" for r in rows)
    verdict = verdict_fn(table, p, info, has_model)
    info.pop("model_world", None)
    config = {"command": "phenomena", "name": name, "preset": preset if worlds is None else None,
              "world_seeds": labels, "overrides": dict(overrides or {}), "seed": seed, "quick": bool(quick),
              "run_dir": None if run_dir is None else str(run_dir), "device": str(model_info[2]) if run_dir else None,
              "worlds": [w.meta for w in world_list] if worlds is not None else None, **p}
    extra = ("matplotlib", "torch") if run_dir is not None else ("matplotlib",)
    meta = provenance(config, {"prompt": seed, "world": labels}, extra_packages=extra)
    elapsed = time.perf_counter() - t0
    title = (f"phenomenon '{name}': {world_list[0].meta.get('preset', 'custom')} worlds {labels}, k = {k}, "
             f"{p['n_prompts']} prompts per world and setting, seed {seed}"
             + (f", model {Path(str(run_dir)).name}" if run_dir is not None else ""))
    meta.update(title=title, verdict=verdict, world=world_summary(world_list[0]), n_worlds=len(world_list),
                predictors={"bayes": "exact posterior predictive of the prompt shown",
                            "kernel": "theory kernel (Σ pretraining, belief features, ridge 0.01), normalised",
                            "clipped": "theory kernel with max(K, 0), normalised",
                            "frequency": "label frequencies of the demonstrations (K ≡ 1)",
                            "oracle": "P(y | x_test, true concept)", "model": "the trained model of run_dir"},
                info=_jsonable(info), elapsed_s=round(elapsed, 3), columns=list(COLUMNS),
                metrics={m: d for m, d in METRIC_DESCRIPTIONS.items() if any(r["metric"] == m for r in rows)},
                ci="95%: mean of the world means ± t(0.975, W-1) · sd / √W (worlds the unit), over prompts with one "
                   "world; clipped to the metric's range")
    per_prompt = {key: table.values(*key) for key in (*table.data, *table.hidden)}
    return PhenomenonResult(name, rows, verdict, meta, elapsed, title, per_prompt)


def _check_combination(name, p):
    if name == "retrieval" and p["pool_size"] < p["n_demos"]:
        raise ValueError(f"pool_size must be >= n_demos ({p['n_demos']}): M demonstrations to choose n from, "
                         f"got {p['pool_size']}")


def _check_worlds(name, p, worlds):
    """Checks that need the worlds (still before any work)."""
    if name == "shift":
        for w in worlds:
            if emittable(w).size < 2:
                raise ValueError(f"kinds {p['kinds']} cannot shift the inputs of a world whose concepts emit fewer "
                                 f"than 2 non-delimiter symbols: every shifted input would be impossible under every "
                                 f"concept; allowed: worlds with >= 2 emittable symbols")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, World):
        return world_summary(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
