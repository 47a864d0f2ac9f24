"""The theory's kernel regression over demonstrations (docs/theory.md, Part 2).

Features ψ(x) of a demonstration input x (k-1 tokens), from the exact forward pass:

- ``belief`` (default): for every concept θ, the label-conditioned belief over the hidden
  state that emits y,  b̃_θ(x) ∝ (P(h_x | x, θ) T_θ) ∘ m_θ  with  m_θ(s) = Σ_{c∈labels} B_θ[s, c],
  concatenated over concepts: D = K·S.  Then P(y = c | x, θ, y ∈ labels) = ⟨b̃_θ(x), B_θ[:, c] / m_θ⟩
  is exactly linear in ψ(x).  For the paper-c world (one HMM, tasks = one-hot start states)
  these are the row-normalised rows of the operator T_x at the task start states.
- ``operator``: the paper's ψ(x) = vec(T_x) with every row normalised (the same label-
  conditioned belief, started from every hidden state s0 instead of the concept's start):
  D = S² per distinct HMM block (in a restart world the start is part of the block).
  Exactly linear only when starts are one-hot.

Σ = E_{x ~ p}[ψ(x) ψ(x)ᵀ] (uncentred), p = the pretraining example distribution (prior-weighted
mixture of the concepts' demonstration-input distributions) or one concept's (the oracle Σ_θ*),
exact by enumeration of all V^(k-1) inputs when that is cheap, Monte Carlo otherwise.  The kernel
is K(x, x') = ψ(x)ᵀ (Σ + λI)⁻¹ ψ(x'), λ = ridge · trace(Σ) / D.  When D is large the same kernel
is computed in sample space (Woodbury) from the Monte Carlo features, never forming a D x D
matrix.

Restart-free worlds (docs/theory.md §17): a demonstration deep inside a prompt starts from the
chain's state after a delimiter, not from the concept's start.  :func:`example_world` returns the
world whose ``start`` is that stationary first-state distribution; features, Σ and the limits
are computed on it (in a restart world it is the world itself).

Exact limits (docs/theory.md §18): as n -> ∞ each estimate tends to a population value computed
from the demonstration distribution q_θ*(x, y) (:func:`input_distribution`, :func:`limits`).

The kernel pipeline of a run (``KernelSet``: the example world, Σ_pretrain, each concept's
demonstration sample and Σ_θ*, cached per world; ``kernel_values`` and ``kernel_estimates`` for a
batch of prompts, with the memory check) is at the end.  Nothing here prints.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from . import bayes, demo_law
from .constants import (DEFAULT_N_SAMPLES, DEFAULT_RIDGE, ESTIMATORS, EXACT_LIMIT, FEATURES,  # noqa: F401
                        KERNELS)
from .sampling import sample_prompts, unique_inputs
from .world import World

#: Feature dimension above which Σ is never formed (sample-space / Woodbury form).
DENSE_LIMIT = 8_000


# ---------------------------------------------------------------------- features
def label_mass(world: World) -> np.ndarray:
    """m (K, S): probability that each state emits a label."""
    return world.emission[:, :, world.labels].sum(axis=2)


def _normalise_rows(a: np.ndarray) -> np.ndarray:
    s = a.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(s > 0, a / np.where(s > 0, s, 1.0), 0.0)
    return out


def distinct_blocks(world: World) -> np.ndarray:
    """Indices of concepts whose HMM differs from every earlier concept's (paper-c's 8 tasks
    share one HMM: its operator features are computed once).  In a restart world a delimiter
    inside x restarts the chain from the concept's own start, so there the start is part of
    the block too."""
    keep = []
    for k in range(world.n_concepts):
        if not any(np.array_equal(world.transition[k], world.transition[j]) and
                   np.array_equal(world.emission[k], world.emission[j]) and
                   (not world.restart or np.array_equal(world.start[k], world.start[j])) for j in keep):
            keep.append(k)
    return np.array(keep, dtype=np.int64)


def feature_dim(world: World, kind: str = "belief") -> int:
    """D, the length of ψ(x): K·S for belief features, (distinct HMM blocks)·S² for operator."""
    if kind not in FEATURES:
        raise ValueError(f"unknown features {kind!r}; allowed: {', '.join(FEATURES)}")
    S = world.n_states
    return world.n_concepts * S if kind == "belief" else len(distinct_blocks(world)) * S * S


def features(world: World, x_tokens, kind: str = "belief") -> np.ndarray:
    """ψ(x) for each row of x_tokens (B, k-1): (B, D) float64 (see the module docstring).

    The block of a concept under which x is impossible is zero."""
    if kind not in FEATURES:
        raise ValueError(f"unknown features {kind!r}; allowed: {', '.join(FEATURES)}")
    x_tokens = bayes.check_tokens(world, x_tokens)
    B = x_tokens.shape[0]
    m = label_mass(world)
    if kind == "belief":
        fw = bayes.forward(world, x_tokens, prefixes=False)       # next_state = P(h_y | x, θ)
        possible = np.isfinite(fw.final)[:, :, None]
        return _normalise_rows(np.where(possible, fw.next_state, 0.0) * m[None]).reshape(B, -1)
    blocks = distinct_blocks(world)
    sub = World.from_arrays(np.full(len(blocks), 1.0 / len(blocks)), world.start[blocks],
                            world.transition[blocks], world.emission[blocks], world.delimiter,
                            world.labels, world.restart)
    S = world.n_states
    # every start state s0 in turn: B*S rows, each started from a one-hot distribution
    rows = np.repeat(x_tokens, S, axis=0)
    init = np.tile(np.eye(S)[None, :, None, :], (B, 1, len(blocks), 1)).reshape(B * S, len(blocks), S)
    fw = bayes.forward(sub, rows, init=init, prefixes=False)
    nxt = np.where(np.isfinite(fw.final)[:, :, None], fw.next_state, 0.0)   # (B*S, Kb, S)
    feats = _normalise_rows(nxt * m[blocks][None])                   # (B*S, Kb, S)
    return feats.reshape(B, S, len(blocks), S).transpose(0, 2, 1, 3).reshape(B, -1)


# ---------------------------------------------------------------------- the input distribution
def all_inputs(V: int, length: int) -> np.ndarray:
    """Every sequence of ``length`` symbols: (V**length, length) int32."""
    return np.array(list(itertools.product(range(V), repeat=length)), dtype=np.int32).reshape(-1, length)


def demo_weight(world: World) -> np.ndarray:
    """w (K, S): the weight of the state that emits y in a demonstration, m_θ(s) times [a
    delimiter can follow s] (the sampler's conditioning event for demonstrations, §4)."""
    d = world.delimiter
    can_delim = (world.transition @ world.emission[:, :, d][..., None])[..., 0] > 0
    return label_mass(world) * can_delim


def example_start(world: World, example_length: int) -> np.ndarray:
    """(K, S): the distribution of the first hidden state of a demonstration deep inside a
    prompt, the one the estimator's demonstrations follow as n -> ∞ (docs/theory.md §17).

    Restart world: each concept's start.  Restart-free world: with h_d the hidden state of the
    delimiter before an example, the demonstrations form a Markov chain on h_d (the example is
    drawn given h_d and the sampler's conditioning event E, then the next delimiter state); its
    Cesàro-stationary law π (the limit of the lazy chain's powers, started from the state after
    the first demonstration) gives the first state's law ρ(h) ∝ Σ_{h_d} π(h_d) T[h_d, h] /
    P(E | h_d).  Rows are normalised; a concept that cannot produce an example keeps its start."""
    if world.restart:
        return np.array(world.start)
    K, S = world.n_concepts, world.n_states
    k = int(example_length)
    T, E, d = world.transition, world.emission, world.delimiter
    w = demo_weight(world)                                               # (K, S)
    out = np.array(world.start)
    for c in range(K):
        Tk = np.linalg.matrix_power(T[c], k)                             # h_d -> h_y: k steps
        Tk1 = np.linalg.matrix_power(T[c], k - 1)                        # h_0 -> h_y
        p_event = Tk @ w[c]                                              # P(E | h_d)
        to_y = _normalise_rows(Tk * w[c][None])                          # P(h_y | h_d, E)
        to_d = _normalise_rows(T[c] * E[c, :, d][None])                  # P(h_d' | h_y)
        chain = to_y @ to_d
        dead = chain.sum(axis=1) == 0                                    # no example from there
        chain[dead, dead] = 1.0
        first = world.start[c] @ Tk1 * w[c]
        if first.sum() <= 0:
            continue
        p1 = (first / first.sum()) @ to_d                                # after demonstration 1
        lazy = 0.5 * (np.eye(S) + chain)
        for _ in range(64):                      # lazy^(2^j) -> the Cesàro projection of chain
            nxt = _normalise_rows(lazy @ lazy)   # renormalised: round-off must not compound
            done = np.abs(nxt - lazy).max() < 1e-15
            lazy = nxt
            if done:
                break
        pi = p1 @ lazy
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(p_event > 0, pi / np.where(p_event > 0, p_event, 1.0), 0.0) @ T[c]
        if rho.sum() > 0:
            out[c] = rho / rho.sum()
    return out


def example_world(world: World, example_length: int) -> World:
    """The world whose ``start`` is :func:`example_start`: its first example is distributed as
    a demonstration deep inside a prompt of ``world``.  A restart world is returned as it is."""
    if world.restart:
        return world
    return replace(world, start=example_start(world, example_length)).revalidated()


@dataclass(frozen=True)
class InputSample:
    """Demonstration inputs x with weights summing to 1: exact enumeration (weights =
    probabilities) or Monte Carlo (uniform weights).

    x (M, k-1) int32; weights (M,); exact bool; label_probs (M, L): P(y = c | x, E) under the
    sampled or enumerated law (for the prior mixture, the mixture's posterior predictive); so
    q(x, c) = weights[:, None] * label_probs is the demonstration distribution (exactly, when
    enumerated).  concepts (M,) the concept of each Monte Carlo draw (-1 when enumerated)."""

    x: np.ndarray
    weights: np.ndarray
    exact: bool
    label_probs: np.ndarray | None = None
    concepts: np.ndarray | None = None

    @property
    def joint(self) -> np.ndarray:
        """(M, L) q(x, c) = weights · P(c | x)."""
        return self.weights[:, None] * self.label_probs


def input_distribution(world: World, example_length: int, concept=None, n_samples: int = DEFAULT_N_SAMPLES,
                       seed: int = 0, exact_limit: int = EXACT_LIMIT) -> InputSample:
    """The distribution of demonstration inputs x (and of their labels given x): under the
    pretraining prior (concept None) or under one concept.  Pass :func:`example_world` for
    restart-free worlds.  Exact when V^(k-1) <= exact_limit, else ``n_samples`` draws from the
    prompt sampler (the first demonstration of one-demonstration prompts, so x follows exactly
    the sampler's demonstration distribution) with P(y | x, θ) computed exactly for each draw."""
    length = example_length - 1
    V = world.n_symbols
    if V ** length <= exact_limit:
        # The sampler conditions a demonstration on E = (y is a label, a delimiter can follow);
        # q(x, c) = P(x, y = c, E | θ), computed by the forward pass.
        x = all_inputs(V, length)
        joint = demo_law.demo_joint(world, x, concept, demo_weight(world))
        w = joint.sum(axis=1)
        keep = w > 0
        x, joint, w = x[keep], joint[keep], w[keep]
        tot = w.sum()
        return InputSample(x, w / tot, True, joint / w[:, None], np.full(len(x), -1))
    p = sample_prompts(world, n_samples, 1, example_length, seed=seed, concept=concept)
    x = np.ascontiguousarray(p.tokens[:, :length])
    lab = demo_law.label_given_x(world, x, p.concepts, demo_weight(world))
    return InputSample(x, np.full(n_samples, 1.0 / n_samples), False, lab, p.concepts)


# ---------------------------------------------------------------------- Σ and K
@dataclass(frozen=True)
class KernelModel:
    """K(a, b) = ψ(a)ᵀ (Σ + λI)⁻¹ ψ(b) in one of two equivalent forms.

    dense:   precision (D, D) = (Σ + λI)⁻¹
    sample:  Ψ (M, D) weighted Monte Carlo features (rows scaled by sqrt(weight)), and the
             Cholesky factor of (ΨΨᵀ + λI) (M, M); then
             K(a, b) = (ψ_aᵀψ_b − (Ψψ_a)ᵀ (ΨΨᵀ + λI)⁻¹ (Ψψ_b)) / λ   (Woodbury).
    ridge: λ; n_inputs: how many inputs Σ was built from; exact: enumerated or Monte Carlo."""

    form: str
    ridge: float
    n_inputs: int
    exact: bool
    precision: np.ndarray | None = None
    psi: np.ndarray | None = None
    chol: np.ndarray | None = None
    sigma_trace: float = 0.0

    def gram(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """K between rows of a (..., A, D) and rows of b (..., C, D): (..., A, C)."""
        if self.form == "dense":
            return (a @ self.precision) @ np.swapaxes(b, -1, -2)
        from scipy.linalg import cho_solve
        pa = a @ self.psi.T                                             # (..., A, M)
        pb = b @ self.psi.T
        flat = pb.reshape(-1, pb.shape[-1]).T
        sol = cho_solve((self.chol, True), flat).T.reshape(pb.shape)    # (..., C, M)
        return (a @ np.swapaxes(b, -1, -2) - pa @ np.swapaxes(sol, -1, -2)) / self.ridge

    def precision_times(self, b: np.ndarray) -> np.ndarray:
        """(Σ + λI)⁻¹ b for b (D, r): (D, r), in either form (so that K-weighted sums over many
        inputs are one product with a D x r matrix instead of a Gram matrix)."""
        if self.form == "dense":
            return self.precision @ b
        from scipy.linalg import cho_solve
        return (b - self.psi.T @ cho_solve((self.chol, True), self.psi @ b)) / self.ridge


def second_moment(psi: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ = Σ_m w_m ψ_m ψ_mᵀ (uncentred): (D, D)."""
    return (psi * weights[:, None]).T @ psi


def fit_kernel(psi: np.ndarray, weights: np.ndarray, ridge: float = DEFAULT_RIDGE, exact: bool = False,
               form: str = "auto") -> KernelModel:
    """The kernel of features psi (M, D) with input weights (M,) summing to 1.
    λ = ridge · trace(Σ) / D; form 'dense' (D <= DENSE_LIMIT under auto) or 'sample'."""
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0 (Σ is badly conditioned; see docs/theory.md), got {ridge}")
    M, D = psi.shape
    if form == "auto":
        form = "dense" if D <= DENSE_LIMIT else "sample"
    trace = float((weights * (psi ** 2).sum(axis=1)).sum())
    lam = ridge * trace / D if trace > 0 else ridge
    if form == "dense":
        sigma = second_moment(psi, weights)
        sigma[np.diag_indices(D)] += lam
        precision = np.linalg.inv(sigma)
        return KernelModel("dense", lam, M, exact, precision=(precision + precision.T) / 2,
                           sigma_trace=trace)
    from scipy.linalg import cholesky
    w_psi = psi * np.sqrt(weights)[:, None]
    G = w_psi @ w_psi.T
    G[np.diag_indices(M)] += lam
    return KernelModel("sample", lam, M, exact, psi=w_psi, chol=cholesky(G, lower=True),
                       sigma_trace=trace)


# ---------------------------------------------------------------------- estimators
def estimates(kvals: np.ndarray, labels: np.ndarray, label_set: np.ndarray, form: str) -> np.ndarray:
    """Kernel-regression estimates after every n = 1..N demonstrations, in one cumulative pass.

    kvals (B, N) = K(x_test, x_i); labels (B, N) symbols y_i; label_set (L,).
    averaged:   (1/n) Σ_{i<=n} e(y_i) K(x_test, x_i)
    normalised: Σ_{i<=n} e(y_i) K(x_test, x_i) / Σ_{i<=n} K(x_test, x_i); undefined (NaN, which
                :func:`to_distribution` turns into the uniform distribution) where the kernel
                sum is <= 0: dividing by a negative sum would reverse the vote
    clipped:    the normalised form of K⁺ = max(K, 0), non-negative weights like attention's
    Returns (B, N, L) raw scores over the label set (not yet a distribution)."""
    if form not in ESTIMATORS:
        raise ValueError(f"unknown estimator {form!r}; allowed: {', '.join(ESTIMATORS)}")
    if form == "clipped":
        kvals = np.clip(kvals, 0.0, None)
    onehot = (labels[:, :, None] == label_set[None, None, :]).astype(np.float64)   # (B, N, L)
    num = np.cumsum(onehot * kvals[:, :, None], axis=1)
    if form == "averaged":
        return num / np.arange(1, kvals.shape[1] + 1)[None, :, None]
    den = np.cumsum(kvals, axis=1)[:, :, None]
    return ratio(num, den)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den > 0, NaN elsewhere (the normalised estimators' rule)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def to_distribution(scores: np.ndarray, form: str = "normalised") -> np.ndarray:
    """Raw scores over the label set (..., L) -> the estimate compared with Bayes.

    Negative scores are clipped to 0 in every form: a negative kernel weight cannot be a
    probability, and Σ⁻¹ makes K(x, x') negative for dissimilar inputs.
    normalised, clipped: the clipped scores renormalised to sum to 1; a row that is undefined
        (NaN: the kernel sum was <= 0) or has no positive score becomes uniform.
    averaged: the clipped scores as they are (NaN -> 0).  The averaged estimator estimates the
        vector P(y | x_test) itself (docs/theory.md: population least squares), so its total
        mass is part of what is measured; renormalising it would make it identical to the
        normalised form wherever the kernel sum is positive."""
    s = np.where(np.isfinite(scores), np.clip(scores, 0.0, None), 0.0)
    if form == "averaged":
        return s
    tot = s.sum(axis=-1, keepdims=True)
    L = s.shape[-1]
    return np.where(tot > 0, s / np.where(tot > 0, tot, 1.0), 1.0 / L)


# ---------------------------------------------------------------------- exact limits
@dataclass(frozen=True)
class Limit:
    """The n -> ∞ limit of one estimator for U test inputs.

    scores (U, L) raw population scores (to_distribution gives the estimate); den (U,) the
    population kernel mass Σ_x q(x) K(x*, x) (K⁺ for clipped; NaN for averaged); se (U, L) the
    Monte Carlo standard error of the scores (zeros when exact)."""

    scores: np.ndarray
    den: np.ndarray
    se: np.ndarray


def limits(kvals: np.ndarray, sample: InputSample, estimators=ESTIMATORS) -> dict:
    """Population estimates from K(x*_u, x_m) over an input sample of the test concept's
    demonstrations: kvals (U, M), sample.joint (M, L) = q(x_m, c).

    averaged   Σ_m q(x_m, c) K(x*, x_m)                           -> f_∞(x*)
    normalised f_∞(x*) / Σ_m q(x_m) K(x*, x_m)   (NaN where that mass is <= 0)
    clipped    the same with K⁺
    Monte Carlo samples (uniform weights) give each score's standard error over draws (the delta
    method for the ratios).  Returns {estimator: Limit}."""
    J, w = sample.joint, sample.weights
    M = len(w)
    out = {}
    for est in estimators:
        if est not in ESTIMATORS:
            raise ValueError(f"unknown estimator {est!r}; allowed: {', '.join(ESTIMATORS)}")
        kv = np.clip(kvals, 0.0, None) if est == "clipped" else kvals
        num = kv @ J                                                     # (U, L)
        den = kv @ w                                                     # (U,)
        if est == "averaged":
            scores, den_out = num, np.full(len(den), np.nan)
        else:
            scores, den_out = ratio(num, den[:, None]), den
        se = np.zeros_like(num)
        if not sample.exact and M > 1:
            # draws z_m = M q(x_m, c) K(x*, x_m) (uniform weights 1/M): the se of their mean; for a
            # ratio R = mean(z) / mean(k), k_m = M w_m K(x*, x_m), the se of mean(z - R k) / mean(k).
            # Sums of squares as matrix products, never the (U, M, L) draws themselves.
            a, b = M * J, (M * w)[:, None]                                  # (M, L), (M, 1)
            k2 = kv ** 2
            ss = k2 @ (a ** 2)                                               # Σ_m z²
            if est == "averaged":
                mean = num
            else:
                R = np.nan_to_num(scores)
                ss = ss - 2 * R * (k2 @ (a * b)) + R ** 2 * (k2 @ (b ** 2))   # Σ_m (z - R k)²
                mean = num - R * den[:, None]
            var = np.maximum(ss - M * mean ** 2, 0.0) / (M - 1)
            se = np.sqrt(var / M)
            if est != "averaged":
                with np.errstate(invalid="ignore", divide="ignore"):
                    se = se / np.abs(den)[:, None]
        out[est] = Limit(scores, den_out, se)
    return out


# ---------------------------------------------------------------------- asymptotic laws
@dataclass(frozen=True)
class Asymptotic:
    """The large-n law of one estimator at U test inputs (docs/theory.md §22):
    √n (estimate_n − limit) → N(0, cov) for demonstrations drawn i.i.d. from q_θ*.

    limit (U, L): the n -> ∞ estimate as a distribution (``to_distribution`` of the population
    scores; NaN rows where the normalised limit is undefined); cov (U, L, L): the asymptotic
    covariance of √n times the *distribution*'s error (the delta method through
    ``to_distribution``); tv_coef (U,): c such that E TV(estimate_n, limit) ≈ c / √n, i.e.
    c = ½ √(2/π) Σ_c sd_c (the mean of a centred normal's absolute value, per label)."""

    limit: np.ndarray
    cov: np.ndarray
    tv_coef: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        """(U, L) the per-label asymptotic standard deviations of √n (estimate_n − limit)."""
        return np.sqrt(np.clip(np.diagonal(self.cov, axis1=-2, axis2=-1), 0.0, None))


def asymptotic_laws(kvals: np.ndarray, sample: InputSample, estimators=ESTIMATORS) -> dict:
    """The exact asymptotic law of each estimator, from K(x*_u, x_m) over the test concept's
    demonstration inputs: kvals (U, M), sample.joint (M, L) = q(x_m, c) (enumerated: exact).

    With z = e(y) k, k = K(x*, x) for one demonstration (x, y) ~ q, and s2_c = E[k² 1(y = c)]:

    averaged   f_n = mean of z:  Cov = diag(s2) − f fᵀ (a mean of i.i.d. vectors; exact at every n)
    normalised g_n = mean(z) / mean(k): the delta method, Cov = E[(z − g k)(z − g k)ᵀ] / m²
               = (diag(s2) − g s2ᵀ − s2 gᵀ + Σ_c s2_c · g gᵀ) / m²,  m = E k
    clipped    the normalised law of K⁺ = max(K, 0)

    then through ``to_distribution``'s Jacobian at the limit: averaged clips (rows with f_c <= 0
    stay at 0), normalised / clipped clip and renormalise, h = g⁺ / Σ g⁺ with
    ∂h_c/∂g_d = (P_c δ_cd − h_c P_d) / Σ g⁺ (P = [g > 0]).  A label whose limit sits exactly at 0
    with positive variance would be half-clipped; its variance is 0 whenever the label cannot
    occur (s2_c = 0), the case that arises.  Returns {estimator: Asymptotic}."""
    J, w = sample.joint, sample.weights
    out = {}
    for est in estimators:
        if est not in ESTIMATORS:
            raise ValueError(f"unknown estimator {est!r}; allowed: {', '.join(ESTIMATORS)}")
        kv = np.clip(kvals, 0.0, None) if est == "clipped" else np.asarray(kvals, np.float64)
        f = kv @ J                                                           # (U, L)
        s2 = (kv ** 2) @ J                                                   # (U, L)
        eye = np.eye(J.shape[1])
        if est == "averaged":
            cov = s2[:, :, None] * eye - f[:, :, None] * f[:, None, :]
            jac = (f > 0).astype(np.float64)[:, :, None] * eye              # the clip at 0
            limit = np.clip(f, 0.0, None)
        else:
            m = kv @ w                                                       # (U,)
            g = ratio(f, m[:, None])                                         # NaN where m <= 0
            tot = s2.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                cov = (s2[:, :, None] * eye - g[:, :, None] * s2[:, None, :] - s2[:, :, None] * g[:, None, :]
                       + tot[:, None, None] * g[:, :, None] * g[:, None, :]) / (m ** 2)[:, None, None]
            pos = (g > 0).astype(np.float64)
            spos = np.where(np.isfinite(g), np.clip(g, 0.0, None), 0.0).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                h = np.clip(g, 0.0, None) / spos[:, None]
                jac = (pos[:, :, None] * eye - h[:, :, None] * pos[:, None, :]) / spos[:, None, None]
            limit = np.where(np.isfinite(g).all(axis=1, keepdims=True) & (spos[:, None] > 0), h, np.nan)
        dist_cov = jac @ cov @ np.swapaxes(jac, -1, -2)
        sd = np.sqrt(np.clip(np.diagonal(dist_cov, axis1=-2, axis2=-1), 0.0, None))
        out[est] = Asymptotic(limit, dist_cov, 0.5 * np.sqrt(2.0 / np.pi) * sd.sum(axis=1))
    return out


def folded_tv(mu: np.ndarray, sd: np.ndarray, n) -> np.ndarray:
    """E TV(limit + Z / √n, target) for Z ~ N(0, diag(sd²)): the expected total variation at n of
    an estimate whose error has reached its Gaussian law, to a target at distance mu = limit −
    target.  Per label E|μ + σZ| = σ √(2/π) exp(−μ²/2σ²) + μ (1 − 2Φ(−μ/σ)) (the folded normal);
    the labels' expectations add whatever their correlation.  mu, sd (..., L); n scalar or
    array broadcasting against the leading axes -> (...)."""
    from scipy.special import ndtr

    n = np.asarray(n, np.float64)
    s = np.asarray(sd, np.float64) / np.sqrt(n)[..., None]
    mu = np.asarray(mu, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(s > 0, mu / np.where(s > 0, s, 1.0), 0.0)
        folded = np.where(s > 0, s * np.sqrt(2.0 / np.pi) * np.exp(-0.5 * z ** 2) + mu * (1.0 - 2.0 * ndtr(-z)),
                          np.abs(mu))
    return 0.5 * folded.sum(axis=-1)


def belief_readout(world: World, concept: int) -> np.ndarray:
    """U (L, D): the linear map from belief features to P(y | x, θ, y ∈ labels) for one concept
    (block θ holds B_θ[:, c] / m_θ, zeros elsewhere; §7)."""
    K, S = world.n_concepts, world.n_states
    m = label_mass(world)[concept]
    block = np.where(m[:, None] > 0, world.emission[concept][:, world.labels] / np.where(m > 0, m, 1.0)[:, None], 0.0)
    out = np.zeros((len(world.labels), K * S))
    out[:, concept * S:(concept + 1) * S] = block.T
    return out


def epsilon_theta(model_pre: KernelModel, model_task: KernelModel, basis: np.ndarray | None = None) -> float:
    """ε_θ = ρ(Σ_pre⁻¹ − Σ_θ⁻¹) (spectral radius; ridged precisions, dense form only).

    basis (D, r), orthonormal columns: the radius of the difference restricted to their span,
    ρ(Qᵀ(Σ_pre⁻¹ − Σ_θ⁻¹)Q).  With Q a basis of the span of the features that occur under θ
    (:func:`support_basis`) this leaves out the directions no input of θ touches, where the
    ridged inverses only measure 1/λ."""
    if model_pre.form != "dense" or model_task.form != "dense":
        raise ValueError("epsilon_theta needs dense kernels (feature dimension <= DENSE_LIMIT)")
    diff = model_pre.precision - model_task.precision
    if basis is not None:
        diff = basis.T @ diff @ basis
    return float(np.max(np.abs(np.linalg.eigvalsh((diff + diff.T) / 2)))) if diff.size else 0.0


def support_basis(psi: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """(D, r) an orthonormal basis of the span of the rows of psi (M, D): the right singular
    vectors whose singular value exceeds rtol times the largest (from the eigenvectors of the
    D x D Gram matrix psiᵀpsi, whose eigenvalues are the squared singular values: far cheaper
    than an SVD of psi when M >> D)."""
    if psi.size == 0:
        return np.zeros((psi.shape[1], 0))
    ev, vec = np.linalg.eigh(psi.T @ psi)
    top = ev.max()
    keep = ev > (rtol ** 2) * top if top > 0 else np.zeros(ev.shape, bool)
    return vec[:, keep]


def ridge_bias_bound(model: KernelModel, psi_star: np.ndarray, readout: np.ndarray) -> np.ndarray:
    """An upper bound on the L1 distance between the averaged estimator's population limit with
    the ridged Σ_θ* and the oracle, for belief features (docs/theory.md §18):

        f_∞ − P(y | x*, θ*) = −λ U (Σ_θ* + λI)⁻¹ ψ(x*),  so  ‖·‖₁ <= λ Σ_c ‖u_c‖₂ ‖(Σ_θ* + λI)⁻¹ψ(x*)‖₂ = δ,

    with readout U (L, D) the linear map from ψ to the oracle (rows u_c).  The normalised limit
    is then within 2δ / (1 − δ) of the oracle (when δ < 1).  psi_star (U, D) -> (U,) δ."""
    v = model.precision_times(psi_star.T).T                                   # (U, D)
    return model.ridge * np.linalg.norm(readout, axis=1).sum() * np.linalg.norm(v, axis=1)


# ---------------------------------------------------------------------- the kernels of a run
#: A kernel is reported constant within a prompt when its values there span at most this much
#: relative to their magnitude (the tie tolerance of the scores).
CONSTANT_RTOL = 1e-9
#: The features of every distinct input and of the Σ sample are held in memory; above this many
#: bytes a run refuses with a one-line error instead of exhausting the machine.
FEATURE_MEMORY_LIMIT = 8 * 2**30
def check_names(kernels, estimators) -> None:
    for kname in kernels:
        if kname not in KERNELS:
            raise ValueError(f"unknown kernel {kname!r}; allowed: {', '.join(KERNELS)}")
    for e in estimators:
        if e not in ESTIMATORS:
            raise ValueError(f"unknown estimator {e!r}; allowed: {', '.join(ESTIMATORS)}")


# ---------------------------------------------------------------------- one world's kernels
@dataclass
class _Concept:
    sample: InputSample
    psi: np.ndarray | None
    model: KernelModel | None
    pred: np.ndarray | None


class KernelSet:
    """The kernels of one world for one example length, built lazily and cached so that every
    prompt seed of the world shares them: the example world (:func:`example_world`), the
    pretraining Σ's kernel and, per concept, its demonstration sample, features and Σ_θ*.
    Monte Carlo inputs (when V^(k-1) is too large to enumerate) are drawn with ``seed``."""

    def __init__(self, world: World, example_length: int, features: str = "belief",
                 n_samples: int = DEFAULT_N_SAMPLES, ridge: float = DEFAULT_RIDGE, seed: int = 0):
        self.world = world
        self.k = int(example_length)
        self.ew = example_world(world, self.k)
        self.features, self.n_samples, self.ridge, self.seed = features, n_samples, ridge, seed
        self._theory = None
        self._concepts: dict = {}

    def psi(self, x: np.ndarray) -> np.ndarray:
        return features(self.ew, x, self.features)

    def predictive(self, x: np.ndarray) -> np.ndarray:
        """P(o | x) under the pretraining mixture, x scored alone as a demonstration input: (B, V);
        zero rows where x is impossible under every in-distribution concept."""
        return bayes.mixture_predictive(self.ew, x)

    def check_memory(self, n_inputs: int) -> None:
        D = feature_dim(self.world, self.features)
        V, k = self.world.n_symbols, self.k
        n_sigma = V ** (k - 1) if V ** (k - 1) <= EXACT_LIMIT else self.n_samples
        # the prompts' inputs, Σ_pretrain's sample and every concept's (cached for the floors),
        # plus one precision or Gram matrix per model
        models = 1 + self.world.n_concepts
        need = 8 * D * (n_inputs + models * n_sigma) + models * (8 * D * D if D <= DENSE_LIMIT
                                                                   else 8 * n_sigma ** 2)
        if need > FEATURE_MEMORY_LIMIT:
            raise ValueError(f"{self.features} features of this world have D = {D:,} dimensions: {n_inputs:,} "
                             f"distinct inputs plus {models} samples of {n_sigma:,} inputs (Σ_pretrain and each "
                             f"concept's) need about {need / 2**30:.1f} GiB "
                             f"(limit {FEATURE_MEMORY_LIMIT / 2**30:.0f} GiB); use fewer prompts or "
                             f"demonstrations, fewer Monte Carlo inputs (n_samples), or belief features")

    def theory(self) -> KernelModel:
        if self._theory is None:
            s = input_distribution(self.ew, self.k, None, n_samples=self.n_samples, seed=self.seed)
            self._theory = fit_kernel(self.psi(s.x), s.weights, ridge=self.ridge, exact=s.exact)
        return self._theory

    def concept(self, c: int, need_psi: bool = True, need_pred: bool = False, need_model: bool = True) -> _Concept:
        """Concept c's demonstration sample (exact or Monte Carlo), its features and (unless
        ``need_model`` is False: only the oracle kernel needs it) Σ_θ*'s kernel."""
        got = self._concepts.get(int(c))
        if got is None:
            s = input_distribution(self.ew, self.k, int(c), n_samples=self.n_samples, seed=self.seed)
            got = self._concepts[int(c)] = _Concept(s, None, None, None)
        if need_psi and got.psi is None:
            got.psi = self.psi(got.sample.x)
        if need_psi and need_model and got.model is None:
            got.model = fit_kernel(got.psi, got.sample.weights, ridge=self.ridge, exact=got.sample.exact)
        if need_pred and got.pred is None:
            got.pred = self.predictive(got.sample.x)
        return got

    def gram(self, kname: str, a: dict, b: dict, concept: int | None = None) -> np.ndarray:
        """K between two sets of inputs given as {'psi': (A, D), 'pred': (A, V), 'n': A}."""
        if kname == "theory":
            return self.theory().gram(a["psi"], b["psi"])
        if kname == "oracle":
            return self.concept(concept).model.gram(a["psi"], b["psi"])
        if kname == "similarity":
            return a["pred"] @ b["pred"].T
        return np.ones((a["n"], b["n"]))

    def model_info(self, m: KernelModel) -> dict:
        return {"form": m.form, "ridge_lambda": m.ridge, "n_inputs": m.n_inputs, "exact": m.exact,
                "sigma_trace": m.sigma_trace}


def _pairs(G_or_fn, inv, chunk: int = 64) -> np.ndarray:
    """K(x_test, x_i) for prompts given as indices into the unique inputs: inv (B, N+1) with
    x_test last -> (B, N).  G_or_fn: the (U, U) Gram matrix, or fn(rows_a, rows_b) -> K."""
    if isinstance(G_or_fn, np.ndarray):
        return G_or_fn[inv[:, -1:], inv[:, :-1]]
    out = np.empty((inv.shape[0], inv.shape[1] - 1))
    for a in range(0, inv.shape[0], chunk):
        b = min(a + chunk, inv.shape[0])
        out[a:b] = G_or_fn(inv[a:b, -1], inv[a:b, :-1])
    return out


def kernel_values(world: World, prompts, kernels=KERNELS, features: str = "belief", n_samples: int = DEFAULT_N_SAMPLES,
                  ridge: float = DEFAULT_RIDGE, seed: int = 0, progress=None, kernel_set: KernelSet | None = None,
                  limits_for=None) -> tuple[dict, dict]:
    """K(x_test, x_i) for every prompt and demonstration: ({kernel: (B, N)}, info).

    kernels: see ``KERNELS``; features 'belief' or 'operator' (features), computed on the
    example world (restart-free worlds: inputs as they occur after a delimiter); Σ exact when
    the V^(k-1) inputs can be enumerated, else from n_samples Monte Carlo inputs drawn with
    ``seed``; ridge λ = ridge · trace(Σ) / D.  ``limits_for`` (a tuple of estimators) adds
    info['limits']: {(kernel, estimator): Limit per prompt (B rows)} and
    info['limit_den']: {kernel: (B,) population kernel mass}.  A one-line ValueError when the
    features would not fit in FEATURE_MEMORY_LIMIT."""
    check_names(kernels, limits_for or ())
    tick = progress or (lambda _msg: None)
    B, N, k = prompts.tokens.shape[0], prompts.n_demos, prompts.example_length
    if N < 1:
        raise ValueError("kernel estimates need prompts with at least one demonstration")
    ks = kernel_set or KernelSet(world, k, features, n_samples, ridge, seed)
    uniq, inv = unique_inputs(prompts)
    need_psi = any(kn in ("theory", "oracle") for kn in kernels)
    if need_psi:
        ks.check_memory(len(uniq))
        tick("features")
    inputs = {"n": len(uniq), "psi": ks.psi(uniq) if need_psi else None,
              "pred": ks.predictive(uniq) if "similarity" in kernels else None}

    def rows(d, idx):
        return {"n": len(idx), "psi": None if d["psi"] is None else d["psi"][idx],
                "pred": None if d["pred"] is None else d["pred"][idx]}

    values, info = {}, {}
    present = [int(c) for c in np.unique(prompts.concepts)]
    for kname in kernels:
        tick({"theory": "Σ (pretraining)", "oracle": "Σ_θ* (oracle)"}.get(kname, kname))
        if kname == "frequency":
            values[kname] = np.ones((B, N))
            continue
        if kname == "oracle":
            kv = np.empty((B, N))
            info["oracle"] = {}
            for c in present:
                sel = prompts.concepts == c
                con = ks.concept(c)
                info["oracle"][c] = ks.model_info(con.model)
                kv[sel] = _gram_pairs(ks, kname, inputs, rows, inv[sel], c)
            values[kname] = kv
            continue
        if kname == "theory":
            info["theory"] = ks.model_info(ks.theory())
        values[kname] = _gram_pairs(ks, kname, inputs, rows, inv, None)

    if limits_for:
        tick("exact limits")
        info["limits"], info["limit_den"] = _prompt_limits(ks, kernels, tuple(limits_for), prompts, inputs, rows, inv)
    return values, info


def _gram_pairs(ks, kname, inputs, rows, inv, concept):
    U = inputs["n"]
    if U <= 4000:
        G = ks.gram(kname, inputs, inputs, concept)
        return _pairs(G, inv)

    def fn(test_idx, demo_idx):
        out = np.empty(demo_idx.shape)
        for j in range(len(test_idx)):
            out[j] = ks.gram(kname, rows(inputs, test_idx[j:j + 1]), rows(inputs, demo_idx[j]), concept)[0]
        return out
    return _pairs(fn, inv)


def _prompt_limits(ks: KernelSet, kernels, estimators, prompts, inputs, rows, inv):
    """The n -> ∞ limit of every (kernel, estimator) for each prompt's x_test, from the
    demonstration sample of the prompt's own concept (exact or Monte Carlo)."""
    B, L = prompts.tokens.shape[0], len(ks.world.labels)
    lim = {(kn, e): Limit(np.full((B, L), np.nan), np.full(B, np.nan), np.zeros((B, L)))
           for kn in kernels for e in estimators}
    den = {kn: np.full(B, np.nan) for kn in kernels}
    for c in (int(c) for c in np.unique(prompts.concepts)):
        sel = np.flatnonzero(prompts.concepts == c)
        t_idx, t_inv = np.unique(inv[sel, -1], return_inverse=True)
        con = ks.concept(c, need_psi=any(kn in ("theory", "oracle") for kn in kernels),
                         need_pred="similarity" in kernels)
        demo = {"n": len(con.sample.x), "psi": con.psi, "pred": con.pred}
        test = rows(inputs, t_idx)
        for kn in kernels:
            G = ks.gram(kn, test, demo, c)                                   # (U_c, M)
            got = limits(G, con.sample, estimators)
            for e, lm in got.items():
                lim[kn, e].scores[sel] = lm.scores[t_inv]
                lim[kn, e].den[sel] = lm.den[t_inv]
                lim[kn, e].se[sel] = lm.se[t_inv]
            den[kn][sel] = (G @ con.sample.weights)[t_inv]
    return lim, den


def kernel_estimates(world: World, prompts, kernels=KERNELS, estimators=ESTIMATORS,
                     features: str = "belief", n_samples: int = DEFAULT_N_SAMPLES, ridge: float = DEFAULT_RIDGE, seed: int = 0,
                     progress=None, kernel_set: KernelSet | None = None) -> tuple[dict, dict]:
    """Every requested kernel estimate of the next label of ``prompts`` (B prompts of N >= 1
    demonstrations, example length k) after n = 1..N demonstrations, in one cumulative pass
    over :func:`kernel_values`.

    Returns ({(kernel, estimator): (B, N, L) distribution over world.labels}, info: Σ per kernel)."""
    check_names(kernels, estimators)
    values, info = kernel_values(world, prompts, kernels, features=features, n_samples=n_samples, ridge=ridge,
                                 seed=seed, progress=progress, kernel_set=kernel_set)
    out = {}
    for name, kv in values.items():
        for e in estimators:
            out[(name, e)] = to_distribution(estimates(kv, prompts.labels, world.labels, e), e)
    return out, info


def kernel_spread(kvals: np.ndarray) -> np.ndarray:
    """(B, 3) per prompt: coefficient of variation |sd / mean| of K(x_test, x_i) over the
    demonstrations (inf when the mean is 0), the number of distinct values (within
    CONSTANT_RTOL relative), and the share of demonstrations at the most common value."""
    kv = np.sort(np.asarray(kvals, np.float64), axis=1)
    mean = kv.mean(axis=1)
    sd = kv.std(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean != 0, sd / np.abs(mean), np.where(sd > 0, np.inf, 0.0))
    scale = np.maximum(np.abs(kv[:, 1:]), np.abs(kv[:, :-1]))
    new = np.diff(kv, axis=1) > CONSTANT_RTOL * scale
    distinct = 1 + new.sum(axis=1)
    # run lengths of equal values: the longest run is the modal share
    modal = np.empty(kv.shape[0])
    for b in range(kv.shape[0]):
        cuts = np.flatnonzero(new[b])
        runs = np.diff(np.concatenate([[0], cuts + 1, [kv.shape[1]]]))
        modal[b] = runs.max() / kv.shape[1]
    return np.stack([cv, distinct, modal], axis=1)
