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
mixture of the concepts' x distributions) or one concept's (the oracle Σ_θ*), exact by
enumeration of all V^(k-1) inputs when that is cheap, Monte Carlo otherwise.  The kernel is
K(x, x') = ψ(x)ᵀ (Σ + λI)⁻¹ ψ(x'), λ = ridge · trace(Σ) / D.  When D is large the same kernel is
computed in sample space (Woodbury) from the Monte Carlo features, never forming a D x D matrix.

Everything here is a pure function of arrays; nothing prints.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from . import bayes
from .sampling import sample_prompts
from .world import World

FEATURES = ("belief", "operator")
ESTIMATORS = ("averaged", "normalised")

#: Inputs are enumerated exactly (instead of Monte Carlo) up to this many sequences.
EXACT_LIMIT = 20_000
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


@dataclass(frozen=True)
class InputSample:
    """Inputs x with weights summing to 1: exact enumeration (weights = probabilities) or
    Monte Carlo (uniform weights).  x (M, k-1) int32, weights (M,), exact bool."""

    x: np.ndarray
    weights: np.ndarray
    exact: bool


def input_distribution(world: World, example_length: int, concept=None, n_samples: int = 20_000,
                       seed: int = 0, exact_limit: int = EXACT_LIMIT) -> InputSample:
    """The distribution of demonstration inputs x: under the pretraining prior (concept None)
    or under one concept.  Exact when V^(k-1) <= exact_limit, else ``n_samples`` draws from the
    prompt sampler (so x follows exactly the sampler's example distribution)."""
    length = example_length - 1
    V = world.n_symbols
    if V ** length <= exact_limit:
        # The sampler conditions an example on (y is a label, delimiter follows); x's weight is
        # P(x | θ) times the probability of that event, computed by the forward pass.
        x = all_inputs(V, length)
        w = _example_weights(world, x, concept)
        keep = w > 0
        return InputSample(x[keep], w[keep] / w[keep].sum(), True)
    p = sample_prompts(world, n_samples, 0, example_length, seed=seed, concept=concept)
    return InputSample(p.x_test(), np.full(n_samples, 1.0 / n_samples), False)


def _example_weights(world: World, x: np.ndarray, concept) -> np.ndarray:
    """P(x, y ∈ labels | θ) mixed over the prior (or for one concept): (M,).  This is the
    marginal of x under the prompt sampler for a world whose examples start from ``start``
    (restart worlds, and the first example of any world)."""
    fw = bayes.forward(world, x, prefixes=False)
    ll = fw.final
    p_label = (fw.next_state * label_mass(world)[None]).sum(axis=2)      # (M, K)
    with np.errstate(divide="ignore"):
        lw = ll + np.log(p_label)
    if concept is None:
        with np.errstate(divide="ignore"):
            lw = lw + np.log(world.prior)[None]
    else:
        lw = lw[:, [int(concept)]]
    m = np.max(lw)
    return np.exp(lw - m).sum(axis=1)


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


def second_moment(psi: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ = Σ_m w_m ψ_m ψ_mᵀ (uncentred): (D, D)."""
    return (psi * weights[:, None]).T @ psi


def fit_kernel(psi: np.ndarray, weights: np.ndarray, ridge: float = 0.01, exact: bool = False,
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
    normalised: Σ_{i<=n} e(y_i) K(x_test, x_i) / Σ_{i<=n} K(x_test, x_i)
    Returns (B, N, L) raw scores over the label set (not yet a distribution)."""
    if form not in ESTIMATORS:
        raise ValueError(f"unknown estimator {form!r}; allowed: {', '.join(ESTIMATORS)}")
    onehot = (labels[:, :, None] == label_set[None, None, :]).astype(np.float64)   # (B, N, L)
    num = np.cumsum(onehot * kvals[:, :, None], axis=1)
    if form == "averaged":
        return num / np.arange(1, kvals.shape[1] + 1)[None, :, None]
    den = np.cumsum(kvals, axis=1)[:, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def to_distribution(scores: np.ndarray, form: str = "normalised") -> np.ndarray:
    """Raw scores over the label set (..., L) -> the estimate compared with Bayes.

    Negative (or NaN) scores are clipped to 0 in both forms: a negative kernel weight cannot be a
    probability, and Σ⁻¹ makes K(x, x') negative for dissimilar inputs.
    normalised: the clipped scores renormalised to sum to 1 (a row with no positive score
        becomes uniform).
    averaged: the clipped scores as they are.  The averaged estimator estimates the vector
        P(y | x_test) itself (docs/theory.md: population least squares), so its total mass is
        part of what is measured; renormalising it would make it identical to the normalised
        form, which differs from it only by the positive factor n / Σ_i K(x_test, x_i)."""
    s = np.where(np.isfinite(scores), np.clip(scores, 0.0, None), 0.0)
    if form == "averaged":
        return s
    tot = s.sum(axis=-1, keepdims=True)
    L = s.shape[-1]
    return np.where(tot > 0, s / np.where(tot > 0, tot, 1.0), 1.0 / L)


def similarity(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """The paper's prediction-similarity kernel sim(x, x') = P(o|x)ᵀ P(o|x'):
    p_a (..., A, V), p_b (..., C, V) -> (..., A, C)."""
    return p_a @ np.swapaxes(p_b, -1, -2)


def epsilon_theta(model_pre: KernelModel, model_task: KernelModel) -> float:
    """ε_θ = ρ(Σ_pre⁻¹ − Σ_θ⁻¹) (spectral radius; ridged precisions, dense form only)."""
    if model_pre.form != "dense" or model_task.form != "dense":
        raise ValueError("epsilon_theta needs dense kernels (feature dimension <= DENSE_LIMIT)")
    return float(np.max(np.abs(np.linalg.eigvalsh(model_pre.precision - model_task.precision))))
