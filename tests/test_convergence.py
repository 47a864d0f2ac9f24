"""Convergence of the theory's kernel estimators to the exact posterior (simkernel.convergence).

5. The tidy summary: rows at every n and at n = inf (the exact limits), fits of the distance to
   the limit, worlds as the unit of the confidence intervals.
6. The floor, computed exactly (no prompts): Σ_θ* never does worse than Σ_pretrain with the
   averaged estimator and stays within the ridge bound; the floor grows with ε_θ when one concept
   dominates pretraining, and is not ordered by ε_θ under a balanced prior (measured).
   (The sampling term, n^(-1/2) against the exact limit, is in test_limits.py.)

Each hypothesis test draws from a domain that was swept in full when the claims were set (the
numbers are in the docstrings), so the tests are deterministic functions of the drawn world.

"Distinguishable" is measured, not assumed: a random world often violates the theory's
Assumption 2 for the *delimited* prompt (the Bayes posterior then concentrates on a rival
concept, see test_bayes_follows_the_delimited_likelihood_not_the_concept).  `margin` is the
smallest expected per-demonstration log-likelihood ratio of the true concept over a rival with
prior > 0, under the prompt sampler's example distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkernel import convergence, icl_curve, kernel, log_likelihood, make_world, metrics
from simkernel.sampling import sample_prompt_set

SLOW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_MAX = 256


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


def floor_world(seed: int):
    """The floor domain: K = 3, S = 5, V = 7, concentration 0.5 (even seeds) or 1 (odd)."""
    return make_world("random", seed=seed, n_concepts=3, n_states=5, n_symbols=7,
                      concentration=[0.5, 1.0][seed % 2])


# ---------------------------------------------------------------------- 5. the tidy summary
def test_summarise_rows_limits_and_fits():
    """One small run: every (kernel, estimator) has rows at every requested n and at n = inf, each
    mean inside its CI; the fit of each pair is fit_power_law of the mean TV between the estimate and
    its limit over n_range with the floor fixed at 0 (exact limits); tv_limit at n is that TV;
    the inf rows score the limit against the oracle; the frequency kernel's limit is the label
    marginal of the prompt's concept and its estimate the label frequencies."""
    world = make_world("ginc-small", 1)
    res = convergence.run_seed(world, 32, 3, 40, seed=3)
    rows, fits = convergence.summarise([res], [1, 2, 8, 32])
    keys = {(k, e) for k in convergence.KERNELS for e in kernel.ESTIMATORS}
    assert set(res.estimates) == keys and set(fits) == {f"{k}/{e}" for k, e in keys}
    for r in rows:
        assert r["ci_low"] - 1e-12 <= r["mean"] <= r["ci_high"] + 1e-12, r
        assert r["n_worlds"] == 1
    n = np.arange(1, 33)
    for k, e in keys:
        got = {(r["n_demos"], r["metric"]): r["mean"] for r in rows if r["kernel"] == k and r["estimator"] == e}
        assert {m for (nn, m) in got if nn == float("inf")} == set(convergence.LIMIT_METRICS)
        d = np.abs(res.estimates[k, e] - res.limits[k, e][:, None]).sum(-1) / 2
        for nn in (1, 2, 8, 32):
            assert got[nn, "tv_limit"] == pytest.approx(d[:, nn - 1].mean(), rel=1e-12)
        lo = fits[f"{k}/{e}"]["n_range"][0]
        want = metrics.fit_power_law(n[lo - 1:], d.mean(0)[lo - 1:], floor=False)
        assert fits[f"{k}/{e}"]["slope"] == pytest.approx(want.slope, abs=1e-9)
        assert got[float("inf"), "tv"] == pytest.approx(
            (np.abs(res.limits[k, e] - res.oracle).sum(-1) / 2).mean(), rel=1e-12)
    # K ≡ 1: the estimate is the label frequencies, the limit the concept's label marginal
    labels = np.searchsorted(world.labels, sample_prompt_set(world, 40, 32, 3, seed=3).labels)
    freq = np.stack([np.bincount(row[:8], minlength=len(world.labels)) / 8 for row in labels])
    np.testing.assert_allclose(res.estimates["frequency", "normalised"][:, 7], freq, atol=1e-12)
    ks = convergence.KernelSet(world, 3)
    for c in np.unique(res.concepts):
        marginal = ks.concept(int(c), need_psi=False).sample.joint.sum(0)
        np.testing.assert_allclose(res.limits["frequency", "averaged"][res.concepts == c], marginal[None].repeat(
            (res.concepts == c).sum(), 0), atol=1e-12)


def test_worlds_are_the_unit_of_the_interval():
    """Two worlds x one prompt seed: each row's mean is the mean of the two worlds' own means and
    its CI is t(0.975, 1)·sd/√2 of those two means (not an interval over the pooled prompts),
    clipped to the metric's range; the floors table has one block of rows per world."""
    from scipy.stats import t as student

    worlds = [make_world("ginc-small", s) for s in (0, 1)]
    out = convergence.run(worlds, [4, 16], 3, 30, seeds=[5], kernels=("theory", "frequency"),
                          estimators=("normalised",))
    assert {f["world"] for f in out.floors} == {0, 1}
    per_world = [convergence.summarise([r], [4, 16])[0] for r in out.results]
    for r in out.rows:
        assert r["n_worlds"] == 2
        ms = [next(x["mean"] for x in pw if all(x[c] == r[c] for c in ("n_demos", "kernel", "estimator", "metric")))
              for pw in per_world]
        assert r["mean"] == pytest.approx(np.mean(ms), rel=1e-9, abs=1e-12)
        half = student.ppf(0.975, 1) * np.std(ms, ddof=1) / np.sqrt(2)
        top = 1.0 if r["metric"] in convergence.BOUNDED else np.inf       # clipped to the metric's range
        assert r["ci_low"] == pytest.approx(max(np.mean(ms) - half, 0.0), rel=1e-9, abs=1e-12)
        assert r["ci_high"] == pytest.approx(min(np.mean(ms) + half, top), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------- 6. the floor, exactly
def floor_table(world, k=2):
    """{(concept, kernel, estimator): floor row} of every concept, theory and oracle kernels."""
    ks = convergence.KernelSet(world, k)
    rows = convergence.concept_floors(ks, range(world.n_concepts), ("theory", "oracle"),
                                      ("averaged", "normalised"))
    return {(r["concept"], r["kernel"], r["estimator"]): r for r in rows}, ks


PRIORS = [(0.95, 0.05, 0.0), (0.85, 0.15, 0.0), (0.5, 0.5, 0.0)]


@SLOW
@given(seed=st.integers(0, 199), prior=st.sampled_from(PRIORS))
def test_task_second_moment_never_raises_the_averaged_floor(seed, prior):
    """The exact floor (limit vs oracle, TV, averaged over x* ~ q_θ) with Σ_θ* is at most the
    ridge bound (mean δ(x*)/2, kernel.ridge_bias_bound) and never above the floor with Σ_pretrain,
    for every concept.  Checked on all 600 (seed, prior) cases of the domain: Σ_θ* floors
    0.0011 .. 0.0083, Σ_pretrain floors >= 0.0049.  (With the normalised estimator Σ_θ* is lower in
    only 82-90% of cases: both floors are below 0.015 there and the ridge decides.)"""
    world = floor_world(seed).with_prior(list(prior))
    F, ks = floor_table(world)
    for c in range(3):
        oracle, theory = F[c, "oracle", "averaged"]["floor_tv"], F[c, "theory", "averaged"]["floor_tv"]
        assert oracle <= theory + 1e-12, (c, oracle, theory)
        con = ks.concept(c)
        delta = kernel.ridge_bias_bound(con.model, con.psi, kernel.belief_readout(ks.ew, c))
        assert oracle <= float(con.sample.weights @ delta) / 2 + 1e-12


@SLOW
@given(seed=st.integers(0, 199))
def test_floor_grows_with_epsilon_when_one_concept_dominates_pretraining(seed):
    """Prior (0.95, 0.05, 0): concept 0 dominates pretraining, 1 is a minor ID concept, 2 is OOD.
    The exact averaged floor of the theory kernel is smallest for concept 0 in 200/200 worlds of the
    domain (seeds 0-199); ε_θ = ρ(Σ_pre⁻¹ - Σ_θ⁻¹) is smallest for concept 0 in 199/200 (seed 196 is
    the exception, asserted below as a known counterexample rather than hidden).  η is the same for
    every concept (belief blocks are distributions; every input is in every support)."""
    F, _ = floor_table(floor_world(seed).with_prior([0.95, 0.05, 0.0]))
    th = {c: F[c, "theory", "averaged"] for c in range(3)}
    assert th[0]["eta"] == pytest.approx(th[1]["eta"]) == pytest.approx(th[2]["eta"])
    for c in (1, 2):
        assert th[c]["floor_tv"] > th[0]["floor_tv"], th
    eps_ok = all(th[c]["eps"] > th[0]["eps"] for c in (1, 2))
    assert eps_ok == (seed != 196), (seed, [th[c]["eps"] for c in range(3)])


def test_a_balanced_prior_does_not_order_the_floors_by_epsilon():
    """Prior (0.5, 0.5, 0), seeds 0-39: the OOD concept has a larger exact averaged floor than both
    ID concepts in most worlds but not all (measured 36/40; 175/200 over seeds 0-199), and
    η²ε_θ orders OOD against ID concept 0 like the floors in only 32/40 (154/200): the bias term is a
    bound, not a predictor (docs/theory.md §20).  Asserted as measured, so a change shows."""
    ood_highest = eps_agrees = 0
    for seed in range(40):
        F, _ = floor_table(floor_world(seed).with_prior([0.5, 0.5, 0.0]))
        f = [F[c, "theory", "averaged"]["floor_tv"] for c in range(3)]
        e = [F[c, "theory", "averaged"]["eta2_eps"] for c in range(3)]
        ood_highest += f[2] > max(f[0], f[1])
        eps_agrees += (e[2] > e[0]) == (f[2] > f[0])
    assert (ood_highest, eps_agrees) == (36, 32)


IDENTITY_ESTIMATORS = ("averaged", "normalised")


@SLOW
@given(seed=st.integers(0, 10_000), restart=st.booleans(), k=st.sampled_from([2, 3]))
def test_oracle_floor_is_within_the_identity_bound(seed, restart, k):
    """floors.csv's identity_bound: on every oracle (Σ_θ*) row of the averaged and normalised
    estimators floor_tv <= identity_bound, and the bound equals the q_θ-weighted mean of the
    per-input bounds δ/2 and min(δ/(1 − δ), 1) (δ = kernel.ridge_bias_bound); every other row
    is NaN.  Per input x*, independently of the floors' moment path: the limits rebuilt from the
    Gram matrix over the concept's inputs (kernel.limits) are within their bound after
    to_distribution, which is what the derivation in docs/theory.md §18 claims."""
    world = make_world("random", seed=seed, n_concepts=2, n_states=3, n_symbols=5, restart=restart)
    ks = convergence.KernelSet(world, k)
    rows = convergence.concept_floors(ks, range(2))
    checked = 0
    for r in rows:
        if r["kernel"] != "oracle" or r["estimator"] not in IDENTITY_ESTIMATORS:
            assert np.isnan(r["identity_bound"]), r
            continue
        c, e = r["concept"], r["estimator"]
        con = ks.concept(c)
        w = con.sample.weights
        delta = kernel.ridge_bias_bound(con.model, con.psi, kernel.belief_readout(ks.ew, c))
        per = delta / 2 if e == "averaged" else np.where(delta < 1, np.minimum(delta / (1 - delta), 1.0), 1.0)
        assert r["identity_bound"] == pytest.approx(float(w @ per), rel=1e-12)
        assert r["floor_tv"] <= r["identity_bound"]
        lim = kernel.limits(con.model.gram(con.psi, con.psi), con.sample, (e,))[e]
        tv = np.abs(kernel.to_distribution(lim.scores, e) - con.sample.label_probs).sum(1) / 2
        assert (tv <= per + 1e-12).all()
        np.testing.assert_allclose(float(w @ tv), r["floor_tv"], rtol=1e-8, atol=1e-12)
        checked += 1
    assert checked == 2 * len(IDENTITY_ESTIMATORS)


def test_identity_bound_is_not_vacuous_and_vanishes_with_the_ridge():
    """The check can fail: the theory kernel's (Σ_pretrain) floor, put in place of the oracle's,
    exceeds the oracle's identity_bound for some (concept, estimator) of a world with a visible
    floor (measured: averaged, theory floors 0.08-0.11 against bounds about 0.03).  And the bound is
    the ridge's: it shrinks with λ (each 100x smaller ridge makes it > 10x smaller) and still
    holds.  Operator features are not exactly linear: NaN there."""
    world = make_world("random", seed=0, n_concepts=3, n_states=5, n_symbols=7)
    F, _ = floor_table(world, k=3)
    bound = {(c, e): F[c, "oracle", e]["identity_bound"] for c in range(3) for e in IDENTITY_ESTIMATORS}
    assert all(F[c, "oracle", e]["floor_tv"] <= b for (c, e), b in bound.items())
    assert any(F[c, "theory", e]["floor_tv"] > b for (c, e), b in bound.items())
    previous = None
    for ridge in (1e-2, 1e-4, 1e-6):
        ks = convergence.KernelSet(world, 3, ridge=ridge)
        rows = convergence.concept_floors(ks, range(3), ("oracle",), IDENTITY_ESTIMATORS)
        worst = max(r["identity_bound"] for r in rows)
        assert all(r["floor_tv"] <= r["identity_bound"] for r in rows)
        if previous is not None:
            assert worst < previous / 10, (ridge, worst, previous)
        previous = worst
    assert previous < 1e-3
    ks = convergence.KernelSet(world, 3, features="operator")
    rows = convergence.concept_floors(ks, [0], ("oracle",), IDENTITY_ESTIMATORS)
    assert all(np.isnan(r["identity_bound"]) for r in rows)


def test_identity_bound_needs_the_exact_readout(monkeypatch):
    """Where P(y | x, θ) = Uψ(x) fails the identity bounds nothing: NaN rather than a number."""
    world = make_world("random", seed=1, n_concepts=2, n_states=3, n_symbols=5)
    real = kernel.belief_readout
    monkeypatch.setattr(kernel, "belief_readout", lambda w, c: 0.9 * real(w, c))
    rows = convergence.concept_floors(convergence.KernelSet(world, 2), range(2), ("oracle",), IDENTITY_ESTIMATORS)
    assert rows and all(np.isnan(r["identity_bound"]) for r in rows)
    monkeypatch.setattr(kernel, "belief_readout", real)
    rows = convergence.concept_floors(convergence.KernelSet(world, 2), range(2), ("oracle",), IDENTITY_ESTIMATORS)
    assert all(np.isfinite(r["identity_bound"]) for r in rows)


def test_identity_bounds_rejects_other_estimators():
    with pytest.raises(ValueError, match="^estimator 'clipped' has no ridge-identity bound; allowed: averaged, "
                                         "normalised$"):
        convergence.identity_bounds(np.zeros(2), "clipped")
    # the averaged estimate is not renormalised: no cap at 1
    np.testing.assert_allclose(convergence.identity_bounds(np.array([0.1, 4.0]), "averaged"), [0.05, 2.0])
    np.testing.assert_allclose(convergence.identity_bounds(np.array([0.1, 0.5, 1.0, 3.0]), "normalised"),
                               [0.1 / 0.9, 1.0, 1.0, 1.0])


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


