"""The n = 1..N experiment: the exact Bayesian predictive against the theory's kernel
estimators, on the same prompts, from one forward pass and one cumulative pass per prompt.

Pure functions on arrays: `run_seed` returns per-prompt arrays, `metrics` turns them into
per-prompt metric arrays, `summarise` into tidy rows with 95% confidence intervals, and
`fit_power_law` fits distance(n) = a n^slope + floor.  Nothing here prints or writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import bayes, kernel
from .sampling import sample_prompt_set
from .world import World

KERNELS = ("theory", "oracle", "similarity")
METRICS = ("l1", "tv", "kl", "agree", "acc")
#: KL(Bayes || kernel) mixes the kernel distribution with this much of the uniform one, so a
#: kernel estimate with a zero where Bayes has mass gives a large but finite KL.
KL_MIX = 1e-6
#: The features of every distinct input and of the Σ sample are held in memory; above this many
#: bytes run_seed refuses with a one-line error instead of exhausting the machine.
FEATURE_MEMORY_LIMIT = 8 * 2**30


@dataclass
class SeedResult:
    """One seed's prompts, B prompts, N demonstrations, L labels.

    bayes   (B, N, L): exact posterior predictive over the labels with n = 1..N demonstrations
    oracle  (B, L):    P(y | x_test, true concept) over the labels
    y_test  (B,)       index of the gold label in world.labels
    concepts (B,)
    estimates: {(kernel, estimator): (B, N, L) distribution over the labels}
    info: Σ sample sizes, ridges, ε_θ and η per concept, ...
    """

    bayes: np.ndarray
    oracle: np.ndarray
    y_test: np.ndarray
    concepts: np.ndarray
    estimates: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def restrict(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A distribution over symbols (..., V) -> over the label set (..., L), renormalised."""
    q = p[..., labels]
    s = q.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return q / s


def _pretrain_predictive(world: World, x: np.ndarray) -> np.ndarray:
    """P(o | x) under the pretraining mixture, x scored alone: (B, V); zero rows where x is
    impossible under every in-distribution concept."""
    fw = bayes.forward(world, x, prefixes=False)
    w = np.nan_to_num(np.exp(bayes.log_posterior_weights(world, fw.final)))
    return np.einsum("bk,bkv->bv", w, bayes.next_symbol(world, fw.next_state))


def _check_names(kernels, estimators) -> None:
    for kname in kernels:
        if kname not in KERNELS:
            raise ValueError(f"unknown kernel {kname!r}; allowed: {', '.join(KERNELS)}")
    for e in estimators:
        if e not in kernel.ESTIMATORS:
            raise ValueError(f"unknown estimator {e!r}; allowed: {', '.join(kernel.ESTIMATORS)}")


def run_seed(world: World, n_max: int, example_length: int, n_prompts: int, seed: int = 0,
             kernels=("theory", "oracle", "similarity"), estimators=kernel.ESTIMATORS,
             features: str = "belief", concepts="prior", n_samples: int = 20_000, ridge: float = 0.01,
             progress=None) -> SeedResult:
    """Sample prompts (``concepts``: 'prior', 'id', 'ood' or a concept index; see
    sampling.sample_prompt_set), compute the exact Bayes curve for n = 1..n_max and every
    requested kernel estimate (:func:`kernel_estimates`)."""
    _check_names(kernels, estimators)
    tick = progress or (lambda _msg: None)
    labels = world.labels
    prompts = sample_prompt_set(world, n_prompts, n_max, example_length, seed=seed, concepts=concepts)
    tick("exact Bayes")
    curve = bayes.icl_curve(world, prompts)
    label_index = np.full(world.n_symbols, -1)
    label_index[labels] = np.arange(len(labels))
    res = SeedResult(bayes=restrict(curve.predictive[:, 1:], labels), oracle=restrict(curve.oracle, labels),
                     y_test=label_index[prompts.y_test], concepts=prompts.concepts)
    res.info["impossible_prompts"] = int(np.isnan(curve.predictive[:, -1]).any(axis=-1).sum())
    estimates, info = kernel_estimates(world, prompts, kernels, estimators, features=features,
                                       n_samples=n_samples, ridge=ridge, seed=seed, progress=progress)
    res.estimates.update(estimates)
    res.info.update(info)
    return res


def kernel_estimates(world: World, prompts, kernels=("theory", "oracle", "similarity"),
                     estimators=kernel.ESTIMATORS, features: str = "belief", n_samples: int = 20_000,
                     ridge: float = 0.01, seed: int = 0, progress=None) -> tuple[dict, dict]:
    """Every requested kernel estimate of the next label of ``prompts`` (B prompts of N >= 1
    demonstrations, example length k) after n = 1..N demonstrations, in one cumulative pass
    over the kernel values of :func:`kernel_values`.

    Returns ({(kernel, estimator): (B, N, L) distribution over world.labels}, info: Σ per
    kernel)."""
    _check_names(kernels, estimators)
    values, info = kernel_values(world, prompts, kernels, features=features, n_samples=n_samples,
                                 ridge=ridge, seed=seed, progress=progress)
    estimates = {}
    for name, kv in values.items():
        for e in estimators:
            estimates[(name, e)] = kernel.to_distribution(
                kernel.estimates(kv, prompts.labels, world.labels, e), e)
    return estimates, info


def kernel_values(world: World, prompts, kernels=("theory", "oracle", "similarity"),
                  features: str = "belief", n_samples: int = 20_000, ridge: float = 0.01, seed: int = 0,
                  progress=None) -> tuple[dict, dict]:
    """K(x_test, x_i) for every prompt and demonstration: ({kernel: (B, N)}, info: Σ per kernel).

    kernels: 'theory' (Σ of the pretraining inputs), 'oracle' (Σ_θ* of the prompt's own
    concept), 'similarity' (P(o|x)ᵀP(o|x')); features: 'belief' or 'operator'
    (kernel.features); Σ from n_samples Monte Carlo inputs (drawn with ``seed``) unless
    enumerable, with ridge λ = ridge · trace(Σ) / D.  A one-line ValueError when the features
    would not fit in FEATURE_MEMORY_LIMIT."""
    _check_names(kernels, ())
    tick = progress or (lambda _msg: None)
    B, N, k = prompts.tokens.shape[0], prompts.n_demos, prompts.example_length
    if N < 1:
        raise ValueError("kernel estimates need prompts with at least one demonstration")
    values, info = {}, {}

    # every input of the experiment (demonstrations then x_test), deduplicated
    starts = prompts.x_spans[:, 0]
    xs = np.stack([prompts.tokens[:, s:s + k - 1] for s in starts], axis=1)      # (B, N+1, k-1)
    uniq, inv = np.unique(xs.reshape(-1, k - 1), axis=0, return_inverse=True)
    inv = inv.reshape(B, N + 1)

    need_psi = any(kname in ("theory", "oracle") for kname in kernels)
    if need_psi:
        D = kernel.feature_dim(world, features)
        n_sigma = min(n_samples, world.n_symbols ** (k - 1)) if world.n_symbols ** (k - 1) <= kernel.EXACT_LIMIT \
            else n_samples
        need = 8 * D * (len(uniq) + n_sigma) + (8 * D * D if D <= kernel.DENSE_LIMIT else 8 * n_sigma ** 2)
        if need > FEATURE_MEMORY_LIMIT:
            raise ValueError(f"{features} features of this world have D = {D:,} dimensions: {len(uniq):,} "
                             f"distinct inputs plus {n_sigma:,} Σ inputs need about {need / 2**30:.1f} GiB "
                             f"(limit {FEATURE_MEMORY_LIMIT / 2**30:.0f} GiB); use fewer prompts or "
                             f"demonstrations, a smaller --n-samples, or --features belief")
        tick("features")
        psi_u = kernel.features(world, uniq, features)                            # (U, D)
    if "theory" in kernels:
        tick("Σ (pretraining)")
        model = _model(world, k, None, features, n_samples, seed, ridge)
        info["theory"] = _model_info(model)
        values["theory"] = _kernel_values(model, psi_u, inv)
    if "oracle" in kernels:
        tick("Σ_θ* (oracle)")
        kv = np.empty((B, N))
        info["oracle"] = {}
        for c in np.unique(prompts.concepts):
            rows = prompts.concepts == c
            m_c = _model(world, k, int(c), features, n_samples, seed, ridge)
            info["oracle"][int(c)] = _model_info(m_c)
            kv[rows] = _kernel_values(m_c, psi_u, inv[rows])
        values["oracle"] = kv
    if "similarity" in kernels:
        tick("similarity")
        p_u = _pretrain_predictive(world, uniq)                                    # (U, V)
        values["similarity"] = np.einsum("bv,bnv->bn", p_u[inv[:, -1]], p_u[inv[:, :-1]])
    return values, info


def _model(world, k, concept, features, n_samples, seed, ridge):
    sample = kernel.input_distribution(world, k, concept=concept, n_samples=n_samples, seed=seed)
    psi = kernel.features(world, sample.x, features)
    return kernel.fit_kernel(psi, sample.weights, ridge=ridge, exact=sample.exact)


def _model_info(m: kernel.KernelModel) -> dict:
    return {"form": m.form, "ridge_lambda": m.ridge, "n_inputs": m.n_inputs, "exact": m.exact,
            "sigma_trace": m.sigma_trace}


def _kernel_values(model: kernel.KernelModel, psi_u: np.ndarray, inv: np.ndarray, chunk: int = 64) -> np.ndarray:
    """K(x_test, x_i) for prompts given as indices into the unique inputs: inv (B, N+1) with
    x_test last -> (B, N)."""
    U = psi_u.shape[0]
    if U <= 4000:
        G = model.gram(psi_u, psi_u)
        return G[inv[:, -1:], inv[:, :-1]]
    out = np.empty((inv.shape[0], inv.shape[1] - 1))
    for a in range(0, inv.shape[0], chunk):
        b = min(a + chunk, inv.shape[0])
        out[a:b] = model.gram(psi_u[inv[a:b, -1]][:, None, :], psi_u[inv[a:b, :-1]])[:, 0, :]
    return out


# ---------------------------------------------------------------------- metrics
def metrics(p_ref: np.ndarray, q: np.ndarray, y_test: np.ndarray) -> dict:
    """Per-prompt, per-n metrics of the estimate q against the reference p (both (B, N, L),
    or (B, L) broadcast): l1 = Σ|p - q|, tv = l1 / 2, kl = KL(p || (1-KL_MIX) q + KL_MIX / L),
    agree = [argmax q == argmax p], acc = [argmax q == y_test].  KL renormalises q first (the
    averaged estimate need not sum to 1)."""
    L = q.shape[-1]
    l1 = np.abs(p_ref - q).sum(axis=-1)
    mass = q.sum(axis=-1, keepdims=True)     # the averaged form is not renormalised: KL needs it
    qn = np.where(mass > 0, q / np.where(mass > 0, mass, 1.0), 1.0 / L)
    qm = (1 - KL_MIX) * qn + KL_MIX / L
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p_ref > 0, p_ref * (np.log(p_ref) - np.log(qm)), 0.0).sum(axis=-1)
    agree = (q.argmax(axis=-1) == p_ref.argmax(axis=-1)).astype(float)
    yt = y_test.reshape((-1,) + (1,) * (q.ndim - 2))
    acc = (q.argmax(axis=-1) == yt).astype(float)
    return {"l1": l1, "tv": l1 / 2, "kl": kl, "agree": agree, "acc": acc}


def mean_ci(x: np.ndarray, axis: int = 0):
    """Mean and normal-approximation 95% CI over ``axis`` (NaNs dropped): (mean, lo, hi, count)."""
    n = np.sum(np.isfinite(x), axis=axis)
    m = np.nanmean(x, axis=axis)
    sd = np.nanstd(x, axis=axis, ddof=1) if x.shape[axis] > 1 else np.zeros_like(m)
    half = 1.96 * sd / np.sqrt(np.maximum(n, 1))
    return m, m - half, m + half, n


def fit_power_law(n: np.ndarray, d: np.ndarray):
    """Fit d(n) = a n^slope + floor (a > 0, floor >= 0, -3 <= slope <= 0) by least squares on
    log d.  Returns (slope, floor, a); NaNs when fewer than 4 usable points."""
    from scipy.optimize import least_squares

    ok = np.isfinite(d) & (d > 0)
    n, d = np.asarray(n, float)[ok], np.asarray(d, float)[ok]
    if len(n) < 4:
        return float("nan"), float("nan"), float("nan")
    ln, ld = np.log(n), np.log(d)
    b0, a0 = np.polyfit(ln, ld, 1)

    def resid(p):
        la, b, lc = p
        return np.logaddexp(la + b * ln, lc) - ld

    lc0 = np.log(max(d.min() / 4, 1e-12))
    fit = least_squares(resid, [a0, min(max(b0, -3), 0), lc0], bounds=([-50, -3, -40], [50, 0, 5]))
    la, b, lc = fit.x
    return float(b), float(np.exp(lc)), float(np.exp(la))


# ---------------------------------------------------------------------- tidy tables
def summarise(results: list[SeedResult], n_demos) -> tuple[list[dict], dict]:
    """Pool the prompts of every seed; for each requested n, every (kernel, estimator) and
    every metric: mean and 95% CI over prompts.  Reference rows: kernel 'bayes' (the exact
    posterior's own accuracy, estimator '-') and 'bayes-vs-oracle' (Bayes scored against the
    oracle, so its distance is the concept-identification term).

    Returns (rows, fits): rows are dicts with the columns n_demos, estimator, kernel, metric,
    mean, ci_low, ci_high, n_prompts; fits maps 'kernel/estimator' to {slope, floor, amplitude}
    fitted to the mean total variation over every n = 1..N (not only the requested ones)."""
    n_demos = np.asarray(sorted(set(int(n) for n in n_demos)))
    bayes_all = np.concatenate([r.bayes for r in results])
    oracle_all = np.concatenate([r.oracle for r in results])
    y_all = np.concatenate([r.y_test for r in results])
    N = bayes_all.shape[1]
    rows, fits = [], {}

    def add(kname, est, per_prompt):
        for metric, arr in per_prompt.items():
            m, lo, hi, cnt = mean_ci(arr, axis=0)
            m, lo, hi, cnt = (np.broadcast_to(v, (N,)) for v in (m, lo, hi, cnt))
            for n in n_demos:
                rows.append(dict(n_demos=int(n), estimator=est, kernel=kname, metric=metric,
                                 mean=float(m[n - 1]), ci_low=float(lo[n - 1]), ci_high=float(hi[n - 1]),
                                 n_prompts=int(cnt[n - 1])))

    for key in results[0].estimates:
        q = np.concatenate([r.estimates[key] for r in results])
        per = metrics(bayes_all, q, y_all)
        add(key[0], key[1], per)
        slope, floor, amp = fit_power_law(np.arange(1, N + 1), np.nanmean(per["tv"], axis=0))
        fits[f"{key[0]}/{key[1]}"] = {"slope": slope, "floor": floor, "amplitude": amp,
                                      "metric": "tv", "n_range": [1, N]}
    acc = {"acc": (bayes_all.argmax(-1) == y_all[:, None]).astype(float)}
    add("bayes", "-", acc)
    add("bayes-vs-oracle", "-", {k: v for k, v in metrics(np.broadcast_to(oracle_all[:, None], bayes_all.shape),
                                                          bayes_all, y_all).items() if k in ("l1", "tv", "kl", "agree")})
    return rows, fits


# ---------------------------------------------------------------------- exact Bayes alone
BAYES_METRICS = ("posterior_true", "bayes_accuracy", "oracle_agreement", "tv_oracle", "oracle_accuracy")


def bayes_summary(world: World, prompts, curve, ns) -> tuple[list[dict], int]:
    """Per-n summary of exact Bayes on ``prompts`` (tidy rows: n_demos, metric, mean, ci_low,
    ci_high, n_prompts) and the number of prompts whose posterior is undefined (probability 0
    under the pretraining mixture) at some n.  Over the labels, renormalised:
      posterior_true    P(true concept | n demonstrations, x_test)
      bayes_accuracy    argmax of the Bayes predictive == y_test
      oracle_agreement  that argmax == the oracle's argmax (true concept known)
      tv_oracle         total variation between Bayes and oracle
      oracle_accuracy   the oracle's argmax == y_test (a ceiling, the same for every n)
    A prompt is left out at the n where it is impossible."""
    labels = world.labels
    idx = np.full(world.n_symbols, -1)
    idx[labels] = np.arange(len(labels))
    y = idx[prompts.y_test]
    oracle = restrict(curve.oracle, labels)                                     # (B, L)
    pred = restrict(curve.predictive[:, list(ns)], labels)                      # (B, n, L)
    post_true = curve.posterior[np.arange(len(y)), :, prompts.concepts][:, list(ns)]
    bad = ~np.isfinite(pred).all(axis=-1) | ~np.isfinite(curve.posterior[:, list(ns)]).all(axis=-1)
    both = ~bad & np.isfinite(oracle).all(axis=-1)[:, None]
    m = metrics(oracle[:, None], np.where(bad[..., None], 0.0, pred), y)
    m_oracle = metrics(oracle, oracle, y)
    per = {"posterior_true": np.where(bad, np.nan, post_true),
           "bayes_accuracy": np.where(bad, np.nan, (pred.argmax(-1) == y[:, None]).astype(float)),
           "oracle_agreement": np.where(both, m["agree"], np.nan),
           "tv_oracle": np.where(both, m["tv"], np.nan),
           "oracle_accuracy": np.broadcast_to(np.where(np.isfinite(oracle).all(-1), m_oracle["acc"],
                                                       np.nan)[:, None], bad.shape)}
    rows = []
    for j, n in enumerate(ns):
        for metric in BAYES_METRICS:
            mean, lo, hi, cnt = mean_ci(per[metric][:, j])
            rows.append({"n_demos": int(n), "metric": metric, "mean": float(mean), "ci_low": float(lo),
                         "ci_high": float(hi), "n_prompts": int(cnt)})
    return rows, int(bad.any(axis=1).sum())
