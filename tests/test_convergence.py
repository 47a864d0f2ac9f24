"""Convergence of the theory's kernel estimators to the exact posterior (simkernel.convergence).

Statistical checks on small restart worlds, each world drawn by hypothesis from a domain that
was swept in full when the tolerances were set (the numbers are in the docstrings), so the
tests are deterministic functions of the drawn world and do not flake:

5. n^(-1/2): mean TV to the exact posterior falls with n, with a fitted log-log slope near -1/2.
6. The floor: Σ_θ* never does worse than Σ_pretrain; the averaged estimator's floor is larger
   for concepts far from pretraining (OOD, or a minor ID concept), and ε_θ tracks that only when
   one concept dominates pretraining (measured; see the xfail for the balanced case).
7. fit_power_law recovers known parameters; metrics() are what they say.

"Distinguishable" is measured, not assumed: a random world often violates the theory's
Assumption 2 for the *delimited* prompt (the Bayes posterior then concentrates on a rival
concept, see test_bayes_follows_the_delimited_likelihood_not_the_concept).  `margin` is the
smallest expected per-demonstration log-likelihood ratio of the true concept over a rival with
prior > 0, under the prompt sampler's example distribution; worlds with margin < 0.05 nats are
excluded from the convergence domains.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simkernel import convergence, icl_curve, kernel, log_likelihood, make_world
from simkernel.sampling import sample_prompt_set

SLOW = settings(max_examples=4, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

N_MAX, PROMPTS = 256, 200
MIN_MARGIN = 0.05


# ---------------------------------------------------------------------- helpers
def margin(world, k: int) -> float:
    """min over true θ* and rivals θ != θ* with prior > 0 of
    E_{(x,y) ~ θ*}[log P(x, y, delim | θ*) - log P(x, y, delim | θ)], (x, y) drawn as the prompt
    sampler draws a demonstration (P(x, y | θ*) restricted to y ∈ labels; every state of these
    worlds can be followed by the delimiter).  Exact, by enumerating x and y."""
    xs = kernel.all_inputs(world.n_symbols, k - 1)
    seqs = np.array([list(x) + [y, world.delimiter] for x in xs for y in world.labels])
    ll = log_likelihood(world, seqs)
    lxy = log_likelihood(world, seqs[:, :-1])
    rivals = np.flatnonzero(world.prior > 0)
    best = np.inf
    for c in range(world.n_concepts):
        q = np.exp(lxy[:, c] - lxy[:, c].max())
        q /= q.sum()
        e = (q[:, None] * ll).sum(axis=0)
        for j in rivals:
            if j != c:
                best = min(best, e[c] - e[j])
    return float(best)


def slope_world(seed: int, concentration: float):
    """The convergence domain: K 2-3, S 4-6, V 6-8 from the seed, all labels, restart."""
    rng = np.random.default_rng(seed)
    K, S, V = int(rng.integers(2, 4)), int(rng.integers(4, 7)), int(rng.integers(6, 9))
    return make_world("random", seed=seed, n_concepts=K, n_states=S, n_symbols=V,
                      concentration=concentration)


def floor_world(seed: int):
    """The floor domain: K = 3, S = 5, V = 7, concentration 0.5 (even seeds) or 1 (odd)."""
    return make_world("random", seed=seed, n_concepts=3, n_states=5, n_symbols=7,
                      concentration=[0.5, 1.0][seed % 2])


def tv_per_prompt(res: convergence.SeedResult, key) -> np.ndarray:
    """(B, N) total variation of one estimate from the exact posterior."""
    return convergence.metrics(res.bayes, res.estimates[key], res.y_test)["tv"]


def row(rows, kernel_name, estimator, metric, n):
    (r,) = [r for r in rows if r["kernel"] == kernel_name and r["estimator"] == estimator
            and r["metric"] == metric and r["n_demos"] == n]
    return r


def second_moment_model(world, k, concept, ridge=0.01):
    s = kernel.input_distribution(world, k, concept=concept)
    psi = kernel.features(world, s.x, "belief")
    return kernel.fit_kernel(psi, s.weights, ridge=ridge, exact=s.exact), psi


# ---------------------------------------------------------------------- 5. n^(-1/2)
@SLOW
@given(seed=st.integers(0, 299), concentration=st.sampled_from([0.5, 1.0]))
def test_tv_falls_like_inverse_square_root(seed, concentration):
    """Example length 2, 200 prompts, n = 1..256, Σ exact, ridge 0.01, default belief features.

    Oracle kernel (Σ_θ*): the mean TV to the exact posterior falls by > 2x from n = 4 to 64 and
    fit_power_law's slope over n in [4, 256] is within 0.15 of -1/2, for both estimators.
    Measured over the whole domain (seeds 0-299 x concentration {0.5, 1}, margin >= 0.05: 278
    worlds): slope averaged in [-0.530, -0.401] (mean -0.476), normalised in [-0.530, -0.393]
    (mean -0.472); TV(4) / TV(64) >= 2.42 (averaged), >= 2.16 (normalised).  Theory kernel
    (Σ_pretrain): TV(4) / TV(64) >= 1.87 (asserted > 1.5); its averaged slope is not asserted
    (it has a floor: fitted slopes ranged -0.96 .. -0.36).  Bayes is within TV 0.05 of the oracle
    at n = 256 (concept identified)."""
    world = slope_world(seed, concentration)
    assume(margin(world, 2) >= MIN_MARGIN)
    res = convergence.run_seed(world, N_MAX, 2, PROMPTS, seed=seed, kernels=("oracle", "theory"))
    rows, fits = convergence.summarise([res], [4, 64, 256])
    assert set(fits) == {f"{k}/{e}" for k in ("oracle", "theory") for e in kernel.ESTIMATORS}
    assert all(r["ci_low"] <= r["mean"] <= r["ci_high"] and r["n_prompts"] == PROMPTS for r in rows)
    assert row(rows, "bayes-vs-oracle", "-", "tv", 256)["mean"] < 0.05
    n = np.arange(1, N_MAX + 1)
    # summarise's fits are fit_power_law over every n = 1..N of the mean TV
    mean_tv = np.nanmean(tv_per_prompt(res, ("oracle", "averaged")), axis=0)
    assert fits["oracle/averaged"]["slope"] == pytest.approx(convergence.fit_power_law(n, mean_tv)[0], abs=1e-9)
    for kname, min_ratio in (("oracle", 2.0), ("theory", 1.5)):
        for est in kernel.ESTIMATORS:
            tv4, tv64 = (row(rows, kname, est, "tv", m)["mean"] for m in (4, 64))
            assert tv64 * min_ratio < tv4, (kname, est, tv4, tv64)
            if kname == "oracle":
                mean_tv = np.nanmean(tv_per_prompt(res, (kname, est)), axis=0)
                slope, floor, amp = convergence.fit_power_law(n[3:], mean_tv[3:])
                assert abs(slope + 0.5) < 0.15, (est, slope, floor, amp)


# ---------------------------------------------------------------------- 6. the floor
@SLOW
@given(seed=st.integers(0, 199), concept=st.integers(0, 2))
def test_task_second_moment_never_raises_the_floor(seed, concept):
    """Prior (0.85, 0.15, 0) over the floor domain's concepts, prompts from one concept: at
    n = 256 the paired per-prompt TV excess theory - oracle (averaged estimator) is >= -CI95.
    Measured on all 72 distinguishable worlds of seeds 0-199 x 3 concepts: excess >= 0.0004
    (ID-dominant), >= 0.020 (minor ID), >= 0.026 (OOD), every one above its CI.  Σ_pre and Σ_θ*
    differ in every case (ε_θ >= 11)."""
    base = floor_world(seed)
    assume(margin(base, 2) >= MIN_MARGIN)
    world = base.with_prior([0.85, 0.15, 0.0])
    pre, _ = second_moment_model(world, 2, None)
    task, _ = second_moment_model(world, 2, concept)
    assert kernel.epsilon_theta(pre, task) > 1.0
    res = convergence.run_seed(world, N_MAX, 2, PROMPTS, seed=seed, kernels=("oracle", "theory"),
                               concepts=concept, estimators=("averaged",))
    d = tv_per_prompt(res, ("theory", "averaged"))[:, -1] - tv_per_prompt(res, ("oracle", "averaged"))[:, -1]
    ci = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert d.mean() >= -ci, (d.mean(), ci)


def floors(world, seed, concepts=(0, 1, 2)):
    """Per concept: ε_θ, η = max ‖ψ(x)‖₂ over θ's input support, and the theory kernel's mean
    TV (averaged estimator) at n = 256 with its CI half-width."""
    pre, _ = second_moment_model(world, 2, None)
    out = {}
    for c in concepts:
        task, psi = second_moment_model(world, 2, c)
        res = convergence.run_seed(world, N_MAX, 2, PROMPTS, seed=seed, kernels=("theory",),
                                   concepts=c, estimators=("averaged",))
        tv = tv_per_prompt(res, ("theory", "averaged"))[:, -1]
        out[c] = dict(eps=kernel.epsilon_theta(pre, task), eta=float(np.linalg.norm(psi, axis=1).max()),
                      tv=float(tv.mean()), ci=float(1.96 * tv.std(ddof=1) / np.sqrt(len(tv))))
    return out


@SLOW
@given(seed=st.integers(0, 199))
def test_floor_grows_with_epsilon_when_one_concept_dominates_pretraining(seed):
    """Prior (0.95, 0.05, 0): concept 0 dominates pretraining, concept 1 is a minor ID concept,
    concept 2 is OOD.  ε_θ = ρ(Σ_pre⁻¹ - Σ_θ⁻¹) (ridged, kernel.epsilon_theta) is smallest for
    concept 0, and so is the theory kernel's TV at n = 256 (averaged estimator).  η is the same
    for every concept (belief blocks are distributions; every input is in every support):
    measured 0.90 .. 1.35.  Measured on all 72 distinguishable worlds of seeds 0-199: both
    orderings hold in 72/72 for 0 vs 1 and 0 vs 2 (but 1 vs 2 agree only 60%: not asserted)."""
    base = floor_world(seed)
    assume(margin(base, 2) >= MIN_MARGIN)
    fl = floors(base.with_prior([0.95, 0.05, 0.0]), seed)
    assert fl[0]["eta"] == pytest.approx(fl[1]["eta"]) == pytest.approx(fl[2]["eta"])
    for c in (1, 2):
        assert fl[c]["eps"] > fl[0]["eps"], fl
        assert fl[c]["tv"] > fl[0]["tv"], fl


@SLOW
@given(seed=st.integers(0, 199))
def test_ood_floor_exceeds_id_floor_under_a_balanced_prior(seed):
    """Prior (0.5, 0.5, 0): prompts from the OOD concept 2 end (n = 256) farther from the exact
    posterior under the theory kernel than prompts from either ID concept (averaged estimator).
    Measured: 72/72 distinguishable worlds of seeds 0-199, for both ID concepts."""
    base = floor_world(seed)
    assume(margin(base, 2) >= MIN_MARGIN)
    fl = floors(base.with_prior([0.5, 0.5, 0.0]), seed)
    assert fl[2]["tv"] > max(fl[0]["tv"], fl[1]["tv"]), fl


@pytest.mark.xfail(strict=False, reason=(
    "MEASUREMENT, not a bug.  Balanced ID prior (0.5, 0.5, 0), 72 distinguishable worlds: the OOD "
    "concept's theory-kernel TV at n = 256 exceeds both ID concepts' in 72/72, but ε_θ = "
    "ρ(Σ_pre⁻¹ - Σ_θ⁻¹) ranks OOD above ID concept 0 in only 58/72 worlds and above ID concept 1 in "
    "45/72 (the density ratio max_x |w_θ(x)/w_pre(x) - 1| does so in 69/72 and 70/72).  With prior "
    "(0.85, 0.15, 0) ε_θ ranks the dominant concept below OOD in 67/72, with (0.95, 0.05, 0) in "
    "72/72.  ε_θ is a bound on the bias (a spectral radius over all of R^D, including ridge-scale "
    "directions no input's ψ touches), not a predictor of it.  Seed 10 of the floor domain: "
    "ε_0 > ε_2 yet TV_2 > TV_0."))
def test_epsilon_ranks_ood_above_id_under_a_balanced_prior():
    """For the first four distinguishable worlds of the floor domain (seeds 1, 2, 9, 10): the
    concept with the larger ε_θ has the larger theory-kernel floor, OOD concept 2 vs ID concept 0."""
    found = []
    for seed in (1, 2, 9, 10):
        base = floor_world(seed)
        assert margin(base, 2) >= MIN_MARGIN
        fl = floors(base.with_prior([0.5, 0.5, 0.0]), seed, concepts=(0, 2))
        found.append((seed, fl[0]["eps"], fl[2]["eps"], fl[0]["tv"], fl[2]["tv"]))
    bad = [f for f in found if (f[2] > f[1]) != (f[4] > f[3])]
    assert not bad, f"(seed, ε_ID, ε_OOD, TV_ID, TV_OOD) disagreeing: {bad}"


def test_bayes_follows_the_delimited_likelihood_not_the_concept():
    """Why distinguishability is measured: random preset seed 0 (K 3, S 5, V 7, concentration 1)
    with prior (0.5, 0.5, 0) has a negative margin: a demonstration of concept 0, delimiter
    included, is on average more likely under concept 1.  So after 256 demonstrations of
    concept 0 the exact posterior sits on concept 1 and Bayes stays far from the oracle; no
    kernel estimate of P(y | x, θ*) can converge to it."""
    world = make_world("random", seed=0, n_concepts=3, n_states=5, n_symbols=7,
                       concentration=1.0).with_prior([0.5, 0.5, 0.0])
    assert margin(world, 2) < 0
    prompts = sample_prompt_set(world, 40, N_MAX, 2, seed=1, concepts=0)
    curve = icl_curve(world, prompts)
    assert np.median(curve.posterior[:, -1, 1]) > 0.9
    b = convergence.restrict(curve.predictive[:, -1], world.labels)
    o = convergence.restrict(curve.oracle, world.labels)
    assert np.abs(b - o).sum(axis=-1).mean() / 2 > 0.05


# ---------------------------------------------------------------------- 7. fits and metrics
@FAST
@given(b=st.floats(-1.0, -0.2), c=st.floats(0.0, 0.05), a=st.floats(0.3, 3.0),
       noise=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**32 - 1))
def test_fit_power_law_recovers_known_parameters(b, c, a, noise, seed):
    """d(n) = a n^b + c on n = 1..256.  Exact data: slope, floor and amplitude recovered to 1e-4
    (measured ~1e-9).  With 1% multiplicative noise: slope within 0.03 of b, amplitude within
    5%, the fitted curve within 3% of the true one at every n, and the floor within 10% of
    d(256) (the floor is not identified better than the curve's level at the largest n: for
    b = -0.2, a = 3, c = 0.05 the fitted floor misses by 0.05 = 5% of d(256)).  Measured
    worst over 300 random + 1440 grid cases: |Δb| 0.014, |Δa|/a 0.022, curve 1.9%, floor 4.8% of d(256)."""
    n = np.arange(1, 257)
    d = a * n ** b + c
    if noise:
        d = d * np.exp(noise * np.random.default_rng(seed).standard_normal(n.shape))
    slope, floor, amp = convergence.fit_power_law(n, d)
    fitted = amp * n ** slope + floor
    true = a * n ** b + c
    if noise == 0:
        assert abs(slope - b) < 1e-4 and abs(floor - c) < 1e-4 and abs(amp / a - 1) < 1e-4, (slope, floor, amp)
    else:
        assert abs(slope - b) < 0.03, (slope, floor, amp)
        assert abs(amp / a - 1) < 0.05, (slope, floor, amp)
        assert np.abs(np.log(fitted / true)).max() < 0.03, (slope, floor, amp)
        assert abs(floor - c) < 0.1 * true[-1], (slope, floor, amp)


def test_fit_power_law_needs_four_positive_points():
    n = np.arange(1, 6.0)
    d = np.array([1.0, np.nan, 0.0, -1.0, 0.5])
    assert all(np.isnan(convergence.fit_power_law(n, d)))


@st.composite
def distributions(draw, shape):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    alpha = draw(st.sampled_from([0.2, 1.0, 5.0]))
    p = rng.dirichlet(np.full(shape[-1], alpha), size=shape[:-1])
    p[rng.random(p.shape) < 0.1] = 0.0          # exact zeros, then renormalise
    p[..., 0] += (p.sum(axis=-1) == 0)
    return p / p.sum(axis=-1, keepdims=True)


@FAST
@given(st.data(), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))
def test_metrics_are_what_they_say(data, B, N, L):
    """tv = l1 / 2 (l1 = Σ|p - q|), kl >= 0 (q renormalised and mixed with KL_MIX of the
    uniform), kl ≈ 0 when q = p (<= KL_MIX·log L), agree = [argmax q = argmax p],
    acc = [argmax q = y_test], both exactly 0/1; a (B, 1, L) reference broadcasts over n and
    (B, L) arrays (no n axis) work too; the averaged form's total mass is ignored by kl only."""
    p = data.draw(distributions((B, N, L)))
    q = data.draw(distributions((B, N, L)))
    y = np.asarray(data.draw(st.lists(st.integers(0, L - 1), min_size=B, max_size=B)))
    m = convergence.metrics(p, q, y)
    assert set(m) == set(convergence.METRICS)
    np.testing.assert_allclose(m["l1"], np.abs(p - q).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(m["tv"], m["l1"] / 2, rtol=1e-15)
    assert (m["tv"] >= 0).all() and (m["tv"] <= 1 + 1e-12).all()
    assert (m["kl"] >= -1e-12).all()
    for key in ("agree", "acc"):
        assert set(np.unique(m[key])) <= {0.0, 1.0}
    np.testing.assert_array_equal(m["agree"], (q.argmax(-1) == p.argmax(-1)).astype(float))
    np.testing.assert_array_equal(m["acc"], (q.argmax(-1) == y[:, None]).astype(float))
    same = convergence.metrics(p, p, y)
    np.testing.assert_array_equal(same["l1"], 0.0)
    assert (same["kl"] >= -1e-12).all() and (same["kl"] <= convergence.KL_MIX * np.log(max(L, 2)) + 1e-12).all()
    np.testing.assert_array_equal(same["agree"], 1.0)
    # scaling q (the averaged form's mass) changes l1 but not kl
    scaled = convergence.metrics(p, 0.5 * q, y)
    np.testing.assert_allclose(scaled["kl"], m["kl"], rtol=1e-9, atol=1e-12)
    # a (B, 1, L) reference broadcasts over n; (B, L) arrays without an n axis
    ref = p[:, :1]
    full = convergence.metrics(np.broadcast_to(ref, q.shape), q, y)
    for key, val in convergence.metrics(ref, q, y).items():
        np.testing.assert_array_equal(val, full[key])
    flat = convergence.metrics(p[:, -1], q[:, -1], y)
    for key, val in flat.items():
        np.testing.assert_array_equal(val, m[key][:, -1])
