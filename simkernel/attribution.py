"""Which predictor a trained model follows: the candidate predictors on one prompt set, and the
attribution of a model's label distributions to them (docs/theory.md §23).

Candidate predictors (:data:`PREDICTORS`), each exact and each a distribution over the scored
label set per prompt (:func:`predictors` returns {name: (B, len(ns), L)}):

- ``bayes``      exact Bayes over the world's pretraining concepts (prior > 0): memorising
- ``kernel``     the theory kernel's normalised estimate, Σ from the pretraining inputs
- ``clipped``    the same with max(K, 0), non-negative weights like attention's
- ``frequency``  the label counts of the demonstrations (K ≡ 1)
- ``ngram``      an in-context n-gram rule that needs no concepts (:func:`ngram`): what followed the
                 prompt's last ``order - 1`` symbols elsewhere in the same prompt, add-α smoothed
- ``uniform``    1/L on every label: the untrained model's prediction, the reference the
                 others must beat (an add-α n-gram rule on few counts is close to it too)
- ``oracle``     the true concept's predictive P(y | x_test, θ*)

The first five but ``ngram`` come from ``phenomena.common.predict`` (the one implementation the
phenomena and ``icl_eval`` share); ``ngram`` is here.  No ``generalising`` predictor: the
``random`` preset draws each concept's HMM from Dirichlet rows, and the posterior predictive
under that prior sums over hidden paths (no closed form; §23).

Attribution (:func:`attribute`) of a model's distributions M (P, L) on the same prompts: TV to
each predictor, tie-fair agreement (``metrics.tie_agreement``), KL(M || predictor) and the best
convex mixture of the predictors (:func:`fit_mixture`: the simplex weights minimising the mean
cross-entropy of the mixture against M, i.e. mean KL(M || mixture)), fitted on a selection split
of the prompts and scored on the held-out rest, with percentile bootstrap CIs of the weights over
prompts (one world) or over worlds (several: a cluster bootstrap).  Every row is reported on the
held-out prompts, so the mixture and each single predictor are scored on the same prompts.

``strategies`` applies these to trained runs along training and across worlds.  Nothing here
prints or writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .constants import PREDICTORS
from .metrics import KL_MIX, bootstrap_counts, compare, tie_agreement, tv, unit_codes, world_ci
from .validate import check_float, check_int, check_seed, did_you_mean

#: What :func:`predictors` computes by default.
DEFAULT_PREDICTORS = ("bayes", "kernel", "frequency", "ngram", "uniform", "oracle")
#: The mixture's components by default: the strategies a model could run.  The oracle is left
#: out: it knows which concept drew the prompt, and exact Bayes tends to it as n grows, so in a
#: mixture it would only split the weight that belongs to Bayes.
MIXTURE_OF = ("bayes", "kernel", "frequency", "ngram", "uniform")
#: Names ``phenomena.common.predict`` computes (all at once, from one kernel pass).
FROM_PREDICT = ("bayes", "kernel", "clipped", "frequency", "oracle")
#: Predictors undefined before the first demonstration (a kernel regresses on demonstrations).
NEED_DEMOS = ("kernel", "clipped", "frequency")
DEFAULT_ORDER = 2
DEFAULT_ALPHA = 1.0
DEFAULT_N_BOOT = 200
DEFAULT_SELECT_FRAC = 0.5
#: The tidy rows of :func:`attribute` (plus the caller's ``tags``).  ``concepts``: 'seen' /
#: 'unseen' as the caller gives them, 'all' when not given.
COLUMNS = ("concepts", "predictor", "metric", "mean", "ci_low", "ci_high", "n_prompts", "n_worlds")
#: Per-prompt metrics of the model against each predictor and against the fitted mixture.
METRICS = ("tv", "agree", "kl")
CONCEPT_SPLITS = ("seen", "unseen")


def check_predictors(names, name: str = "predictors") -> tuple:
    """``names`` (a str or a list) as a tuple of known predictor names, in the order given; a
    one-line ValueError naming the allowed ones for an unknown name or an empty list."""
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError(f"{name} must name at least one predictor; allowed: {', '.join(PREDICTORS)}")
    for n in names:
        if n not in PREDICTORS:
            raise ValueError(f"unknown predictor {n!r} in {name}; allowed: {', '.join(PREDICTORS)}"
                             f"{did_you_mean(n, PREDICTORS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{name} must not repeat a predictor, got {list(names)}")
    return names


# ---------------------------------------------------------------------- the n-gram rule
def ngram_counts(tokens, label_set, order: int = DEFAULT_ORDER) -> np.ndarray:
    """(P, L) counts: how often each label followed the prompt's context inside the prompt.

    tokens (P, T): prompts that stop right before the label to predict (after x_test);
    label_set (L,) symbols.  The context is the last ``order - 1`` symbols of a row; every window
    tokens[t - order + 1 .. t] of the row whose first ``order - 1`` symbols equal it counts its
    last symbol tokens[t] (all positions, not only label positions: a statistical induction head
    reads the whole prompt).  Order 1 has an empty context: the label counts of the whole row.
    A row shorter than ``order`` has no window and counts nothing."""
    tokens = np.asarray(tokens)
    labels = np.asarray(label_set)
    P, T = tokens.shape
    c = order - 1
    if T < order:
        return np.zeros((P, labels.size))
    win = sliding_window_view(tokens, order, axis=1)                     # (P, W, order)
    context = tokens[:, T - c:]                                          # (P, c)
    match = (win[:, :, :c] == context[:, None, :]).all(-1)              # (P, W)
    hit = win[:, :, c, None] == labels[None, None, :]                    # (P, W, L)
    return (match[:, :, None] & hit).sum(axis=1).astype(np.float64)


def ngram(tokens, label_set, order: int = DEFAULT_ORDER, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """(P, L) the in-context n-gram rule: (count_c + α) / (Σ_c' count_c' + α L) over the label set
    (:func:`ngram_counts`); uniform where nothing counts and α = 0.  tokens (P, T), label_set (L,)."""
    order = check_int("order", order, 1)
    alpha = check_float("alpha", alpha, 0.0)
    n = ngram_counts(tokens, label_set, order) + alpha
    tot = n.sum(axis=-1, keepdims=True)
    return np.where(tot > 0, n / np.where(tot > 0, tot, 1.0), 1.0 / n.shape[-1])


def ngram_predictive(prompts, label_set, ns, order: int = DEFAULT_ORDER, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """(B, len(ns), L): :func:`ngram` of the prompts cut to their first n demonstrations (then
    x_test), for each n in ``ns``."""
    return np.stack([ngram(prompts.truncated(int(n)).tokens, label_set, order, alpha) for n in ns], axis=1)


# ---------------------------------------------------------------------- every predictor
def predictors(world, prompts, names=DEFAULT_PREDICTORS, ns=None, order: int = DEFAULT_ORDER,
               alpha: float = DEFAULT_ALPHA, seed: int = 0, ctx=None) -> dict:
    """{name: (B, len(ns), L)} every predictor in ``names`` on ``prompts`` (B prompts of N
    demonstrations) after the first n demonstrations, n in ``ns`` (default [N]), each a
    distribution over ``world.labels``.  Compute once per prompt set and reuse across models.

    ``ctx``: a ``phenomena.common.Ctx`` of this world to reuse its kernels (default: built here,
    Monte Carlo inputs, if any, drawn with ``seed``).  ``bayes`` is NaN on prompts impossible under
    every pretraining concept.  kernel / clipped / frequency need n >= 1."""
    names = check_predictors(names)
    N = prompts.n_demos
    ns = [N] if ns is None else [check_int("ns", n, 0, N) for n in np.atleast_1d(ns).tolist()]
    if not ns:
        raise ValueError(f"ns must hold at least one n in 0..{N}")
    need = [p for p in names if p in NEED_DEMOS]
    if need and min(ns) < 1:
        raise ValueError(f"{need[0]} needs at least one demonstration; ns must be >= 1, got {min(ns)}")
    out = {}
    if set(names) & set(FROM_PREDICT):
        from .phenomena.common import context, predict
        ctx = ctx or context(world, prompts.example_length, seed=seed)
        out = predict(ctx, prompts, ns=ns)
    if "ngram" in names:
        out["ngram"] = ngram_predictive(prompts, world.labels, ns, order, alpha)
    if "uniform" in names:
        out["uniform"] = np.full((prompts.tokens.shape[0], len(ns), world.labels.size), 1.0 / world.labels.size)
    return {p: out[p] for p in names}


# ---------------------------------------------------------------------- the mixture fit
def blend(weights, comps) -> np.ndarray:
    """(P, L) Σ_j w_j comps[j] for weights (J,) and comps (J, P, L)."""
    return np.tensordot(np.asarray(weights, np.float64), comps, axes=1)


def _objective(model, comps, omega):
    """The mean cross-entropy −Σ_p ω_p Σ_l M_pl log m̃_pl / Σ ω and its gradient in w, with m̃ the
    mixture mixed with KL_MIX of the uniform (as ``metrics.compare``'s KL): a component with a
    zero where M has mass gives a large but finite loss instead of an infinite one."""
    L = model.shape[-1]
    scale = omega / omega.sum()

    def f(w):
        mix = (1 - KL_MIX) * blend(w, comps) + KL_MIX / L                 # (P, L)
        loss = -(scale[:, None] * model * np.log(mix)).sum()
        grad = -(1 - KL_MIX) * np.einsum("p,pl,jpl->j", scale, model / mix, comps)
        return loss, grad
    return f


def fit_mixture(model, comps, weights=None, init=None) -> np.ndarray:
    """(J,) simplex weights w minimising the mean cross-entropy of Σ_j w_j comps[j] against the
    model, i.e. mean KL(M || mixture) (the entropy of M does not depend on w).

    model (P, L) and comps (J, P, L) finite distributions; ``weights`` (P,) non-negative prompt
    weights (bootstrap counts; default 1); ``init`` (J,) a start (default uniform).  The loss is
    convex in w, so SLSQP on the simplex finds the global minimum; cross-entropy rather than TV
    because it is smooth (a unique minimiser where the components differ, so bootstrap weights
    do not jump between vertices) and it is the likelihood of "the model draws its label from
    predictor j with probability w_j", the model's own training loss."""
    from scipy.optimize import minimize

    model = np.asarray(model, np.float64)
    comps = np.asarray(comps, np.float64)
    J = comps.shape[0]
    if J == 1:
        return np.ones(1)
    omega = np.ones(model.shape[0]) if weights is None else np.asarray(weights, np.float64)
    w0 = np.full(J, 1.0 / J) if init is None else np.asarray(init, np.float64)
    res = minimize(_objective(model, comps, omega), w0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * J,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(J)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    # SLSQP may step a hair outside the bounds: back onto the simplex
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def split_prompts(n_prompts: int, worlds=None, select_frac: float = DEFAULT_SELECT_FRAC, seed: int = 0) -> np.ndarray:
    """(P,) bool, True for the selection prompts: a seeded random ``select_frac`` of each world's
    prompts (rounded, at least one on each side where the world has two), so every world is on
    both sides of the split."""
    units = np.zeros(n_prompts, np.int64) if worlds is None else unit_codes(list(worlds))
    rng = np.random.default_rng(seed)
    sel = np.zeros(n_prompts, bool)
    for u in np.unique(units):
        idx = np.flatnonzero(units == u)
        k = int(round(select_frac * idx.size))
        k = min(max(k, 1), idx.size - 1) if idx.size >= 2 else idx.size
        sel[rng.permutation(idx)[:k]] = True
    return sel


@dataclass(frozen=True)
class MixtureFit:
    """The fitted mixture: component ``names`` (J,), ``weights`` (J,) on the simplex, the 95%
    percentile bootstrap interval of each (``ci_low``, ``ci_high``, (J,)), the bootstrap weights
    ``boot`` (n_boot, J), the unit it resampled ('prompts' or 'worlds') and the number of
    selection prompts it was fitted on."""

    names: tuple
    weights: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    boot: np.ndarray
    unit: str
    n_select: int


def mixture(model, comps: dict, worlds=None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> MixtureFit:
    """:func:`fit_mixture` of ``model`` (P, L) on ``comps`` {name: (P, L)} (finite rows only: the
    caller drops the rest) and its bootstrap: ``n_boot`` refits with prompt weights drawn by
    ``metrics.bootstrap_counts``, over prompts or, when ``worlds`` (P,) holds two or more worlds,
    over whole worlds (a cluster bootstrap: a world's prompts come and go together)."""
    names = tuple(comps)
    C = np.stack([np.asarray(comps[n], np.float64) for n in names])
    w = fit_mixture(model, C)
    units = None if worlds is None else unit_codes(list(worlds))
    by_world = units is not None and units.max() >= 1
    if not by_world:
        units = np.arange(model.shape[0])
    boot = np.empty((n_boot, len(names)))
    for b, counts in enumerate(bootstrap_counts(int(units.max()) + 1, n_boot, seed)):
        # a prompt's weight is how often its unit was drawn; warm start at the full fit
        boot[b] = fit_mixture(model, C, weights=counts[units], init=w) if counts[units].sum() > 0 else w
    lo, hi = (np.quantile(boot, q, axis=0) if n_boot else w for q in (0.025, 0.975))
    return MixtureFit(names, w, lo, hi, boot, "worlds" if by_world else "prompts", int(model.shape[0]))


# ---------------------------------------------------------------------- attribution
def prompt_scores(model, pred) -> dict:
    """{metric: (P,)} of the model M (P, L) against one predictor (P, L): tv, tie-fair agree and
    kl = KL(M || predictor) (``metrics.compare``'s, predictor mixed with KL_MIX of the uniform);
    NaN where either row is not finite."""
    ok = np.isfinite(model).all(-1) & np.isfinite(pred).all(-1)
    m = np.where(ok[:, None], model, 0.0)
    p = np.where(ok[:, None], pred, 0.0)
    kl = compare(m, p, np.zeros(len(m), np.int64))["kl"]
    return {"tv": np.where(ok, tv(m, p), np.nan), "agree": np.where(ok, tie_agreement(m, p), np.nan),
            "kl": np.where(ok, kl, np.nan)}


def row(concepts, predictor, metric, mean, lo, hi, n_prompts, n_worlds, tags) -> dict:
    return {"concepts": concepts, "predictor": predictor, "metric": metric, "mean": float(mean),
            "ci_low": float(lo), "ci_high": float(hi), "n_prompts": int(n_prompts), "n_worlds": int(n_worlds),
            **tags}


def _metric_rows(concepts, predictor, per: dict, units, tags) -> list[dict]:
    """One row per metric: the mean and 95% CI over worlds (``metrics.world_ci``; over prompts
    with one world) of the per-prompt values ``per`` {metric: (P,)}."""
    out = []
    for metric in METRICS:
        m, lo, hi, n, nw = world_ci(per[metric][:, None], units)
        out.append(row(concepts, predictor, metric, m[0], lo[0], hi[0], n[0], nw[0], tags))
    return out


def _check_inputs(model, preds, worlds, concepts, mixture_names):
    """The arrays as float (P, L), the predictor and mixture names checked; one-line errors."""
    model = np.asarray(model, np.float64)
    if model.ndim != 2:
        raise ValueError(f"model must be a (P, L) array of distributions, got shape {model.shape}")
    check_predictors(list(preds), "preds")
    preds = {k: np.asarray(v, np.float64) for k, v in preds.items()}
    for k, v in preds.items():
        if v.shape != model.shape:
            raise ValueError(f"preds[{k!r}] has shape {v.shape}; the model's is {model.shape}")
    mixture_names = check_predictors(mixture_names, "mixture_of")
    missing = [p for p in mixture_names if p not in preds]
    if missing:
        raise ValueError(f"mixture_of names {missing[0]!r}, which preds lacks; preds has {', '.join(preds)}")
    for name, arr in (("worlds", worlds), ("concepts", concepts)):
        if arr is not None and len(arr) != model.shape[0]:
            raise ValueError(f"{name} has {len(arr)} entries for {model.shape[0]} prompts; give one per prompt")
    if concepts is not None:
        bad = sorted(set(map(str, concepts)) - set(CONCEPT_SPLITS))
        if bad:
            raise ValueError(f"concepts must be 'seen' or 'unseen' per prompt, got {bad[0]!r}")
    return model, preds, mixture_names


def attribute(model, preds: dict, worlds=None, concepts=None, mixture_of=MIXTURE_OF,
              select_frac: float = DEFAULT_SELECT_FRAC, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
              tags: dict | None = None) -> list[dict]:
    """Tidy rows (``COLUMNS`` + ``tags``): which predictor the model's distributions follow.

    model (P, L) the model's label distributions; preds {name: (P, L)} the predictors on the same
    prompts (one n of :func:`predictors`); worlds (P,) each prompt's world (the CI unit; default one
    world); concepts (P,) 'seen' / 'unseen' (each split attributed on its own; default 'all').
    Per split the prompts are divided by :func:`split_prompts` (``select_frac``, ``seed``); the
    mixture of ``mixture_of`` is fitted on the selection prompts (:func:`mixture`, ``n_boot``
    resamples) and every row is scored on the held-out ones:

    - predictor = each name in preds, metric tv / agree / kl: the model against that predictor;
    - predictor = 'mixture', the same metrics against the fitted mixture;
    - predictor = each component, metric 'weight': its mixture weight, CI from the bootstrap,
      n_prompts the selection prompts it was fitted on.

    ``tags`` (e.g. {'n_demos': 8, 'step': 1000}) are added to every row."""
    model, preds, comps = _check_inputs(model, preds, worlds, concepts, mixture_of)
    select_frac = check_float("select_frac", select_frac, 0.0, 1.0, lo_open=True, hi_open=True)
    n_boot = check_int("n_boot", n_boot, 0)
    seed = check_seed("seed", seed)
    tags = dict(tags or {})
    P = model.shape[0]
    split = np.full(P, "all", dtype=object) if concepts is None else np.asarray(list(map(str, concepts)), object)
    units = np.zeros(P, np.int64) if worlds is None else unit_codes(list(worlds))
    rows = []
    for group in [g for g in ("all",) + CONCEPT_SPLITS if (split == g).any()]:
        idx = np.flatnonzero(split == group)
        rows += _attribute_group(group, model[idx], {k: v[idx] for k, v in preds.items()}, units[idx], comps,
                                 select_frac, n_boot, seed, tags)
    return rows


def _attribute_group(group, model, preds, units, comps, select_frac, n_boot, seed, tags) -> list[dict]:
    """:func:`attribute`'s rows of one concept split (arrays already cut to its prompts)."""
    if model.shape[0] < 2:
        raise ValueError(f"the {group!r} prompts number {model.shape[0]}; attribution needs at least 2 "
                         f"(a selection and a held-out prompt)")
    sel = split_prompts(model.shape[0], units, select_frac, seed)
    held = ~sel
    rows = []
    for name, pred in preds.items():
        rows += _metric_rows(group, name, prompt_scores(model[held], pred[held]), units[held], tags)
    # the mixture is fitted where the model and every component are defined
    ok = np.isfinite(model).all(-1) & np.all([np.isfinite(preds[c]).all(-1) for c in comps], axis=0)
    fit_on = sel & ok
    if fit_on.sum() == 0:
        raise ValueError(f"no {group!r} selection prompt has the model and every one of {', '.join(comps)} defined")
    fit = mixture(model[fit_on], {c: preds[c][fit_on] for c in comps}, units[fit_on], n_boot, seed)
    mixed = blend(fit.weights, np.stack([np.where(ok[:, None], preds[c], np.nan) for c in comps]))
    rows += _metric_rows(group, "mixture", prompt_scores(model[held], mixed[held]), units[held], tags)
    n_worlds = len(np.unique(units[fit_on]))
    for j, name in enumerate(fit.names):
        rows.append(row(group, name, "weight", fit.weights[j], fit.ci_low[j], fit.ci_high[j], fit.n_select,
                         n_worlds, tags))
    return rows
