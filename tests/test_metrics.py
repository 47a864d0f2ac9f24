"""simkernel.metrics: distances, tie-fair scores, intervals over worlds, power-law fits.

Independent computations: tie-fair scores against an explicit enumeration of every pair of
tie-breaks; world intervals against per-world means computed by hand; fits against exact data."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkernel import metrics

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------- ties
@st.composite
def score_rows(draw, L=None):
    """Rows with deliberate exact ties and near ties (inside and outside TIE_RTOL)."""
    L = L or draw(st.integers(1, 5))
    vals = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 3.0]), min_size=L, max_size=L))
    row = np.array(vals, float)
    jitter = draw(st.sampled_from([0.0, 1e-12, 1e-6]))     # 1e-12: a tie; 1e-6: not
    row[draw(st.integers(0, L - 1))] *= 1 + jitter
    return row


def brute_agreement(q, p) -> float:
    """Mean over every (tie-break of q, tie-break of p) of [same label], ties by the definition:
    within TIE_RTOL of the maximum."""
    tq = [i for i, v in enumerate(q) if v >= q.max() - metrics.TIE_RTOL * abs(q.max())]
    tp = [i for i, v in enumerate(p) if v >= p.max() - metrics.TIE_RTOL * abs(p.max())]
    return float(np.mean([a == b for a, b in itertools.product(tq, tp)]))


@FAST
@given(st.data())
def test_tie_agreement_is_the_mean_over_tie_breaks(data):
    """tie_agreement = the average of [argmax q == argmax p] over every pair of tie-breaks; it is
    symmetric, 1 for a row against itself only when the row has one top label, and 1/m for a tie
    among m labels against a unique top inside the tie."""
    L = data.draw(st.integers(1, 5))
    q, p = data.draw(score_rows(L)), data.draw(score_rows(L))
    got = metrics.tie_agreement(q, p)
    assert got == pytest.approx(brute_agreement(q, p), rel=1e-12)
    assert got == pytest.approx(metrics.tie_agreement(p, q), rel=1e-12)
    m = metrics.top_set(q).sum()
    assert metrics.tie_agreement(q, q) == pytest.approx(1.0 / m)
    top = int(np.flatnonzero(metrics.top_set(q))[0])
    onehot = np.eye(L)[top]
    assert metrics.tie_agreement(q, onehot) == pytest.approx(1.0 / m)
    assert metrics.tie_accuracy(q[None], np.array([top]))[0] == pytest.approx(1.0 / m)


def test_ties_ignore_round_off_but_not_real_gaps():
    """Two labels equal up to 1e-16 (different summation orders) tie; 1e-6 apart they do not."""
    a = np.array([0.1 + 0.2, 0.3, 0.4 - 0.1 - 1e-3])
    assert metrics.top_set(a).tolist() == [True, True, False]
    assert metrics.tie_accuracy(a[None], np.array([1]))[0] == 0.5
    b = np.array([0.3 + 1e-6, 0.3, 0.0])
    assert metrics.top_set(b).tolist() == [True, False, False]
    assert metrics.top_set(np.zeros(3)).all()
    assert np.isnan(metrics.tie_agreement(np.array([np.nan, 1.0]), np.array([1.0, 0.0])))
    assert np.isnan(metrics.tie_accuracy(np.array([[1.0, 0.0]]), np.array([-1]))[0])


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
def test_compare_is_what_it_says(data, B, N, L):
    """tv = l1 / 2 (l1 = Σ|p - q|), kl >= 0 (q renormalised and mixed with KL_MIX of the uniform),
    kl ≈ 0 when q = p (<= KL_MIX·log L), agree = tie_agreement(q, p), acc = tie_accuracy(q, y); a
    (B, 1, L) reference broadcasts over n and (B, L) arrays work too; the averaged form's total mass
    is ignored by kl only."""
    p = data.draw(distributions((B, N, L)))
    q = data.draw(distributions((B, N, L)))
    y = np.asarray(data.draw(st.lists(st.integers(0, L - 1), min_size=B, max_size=B)))
    m = metrics.compare(p, q, y)
    assert set(m) == set(metrics.SCORES)
    np.testing.assert_allclose(m["l1"], np.abs(p - q).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(m["tv"], m["l1"] / 2, rtol=1e-15)
    assert (m["kl"] >= -1e-12).all()
    np.testing.assert_array_equal(m["agree"], metrics.tie_agreement(q, p))
    np.testing.assert_array_equal(m["acc"], metrics.tie_accuracy(q, y))
    same = metrics.compare(p, p, y)
    np.testing.assert_array_equal(same["l1"], 0.0)
    assert (same["kl"] <= metrics.KL_MIX * np.log(max(L, 2)) + 1e-12).all()
    scaled = metrics.compare(p, 0.5 * q, y)
    np.testing.assert_allclose(scaled["kl"], m["kl"], rtol=1e-9, atol=1e-12)
    ref = p[:, :1]
    full = metrics.compare(np.broadcast_to(ref, q.shape), q, y)
    for key, val in metrics.compare(ref, q, y).items():
        np.testing.assert_array_equal(val, full[key])
    flat = metrics.compare(p[:, -1], q[:, -1], y)
    for key, val in flat.items():
        np.testing.assert_array_equal(val, m[key][:, -1])


# ---------------------------------------------------------------------- intervals
@FAST
@given(st.integers(1, 5), st.integers(2, 30), st.integers(0, 2**32 - 1))
def test_world_ci_treats_worlds_as_the_unit(W, P, seed):
    """Several worlds: the mean is the mean of per-world means and the half-width
    t(0.975, W-1)·sd(world means)/√W, whatever the prompts per world; one world: the
    normal-approximation interval over its prompts (half-width 0 from a single value).  NaNs are
    dropped within a world."""
    from scipy.stats import t

    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, P + 1, size=W)
    worlds = np.repeat(np.arange(W), sizes)
    x = rng.normal((worlds * 0.3)[:, None], 1.0, size=(len(worlds), 2))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[np.r_[0, np.cumsum(sizes)[:-1]]] = 1.0          # every world keeps a finite value
    m, lo, hi, n, nw = metrics.world_ci(x, worlds)
    means = np.array([[np.nanmean(x[worlds == w, j]) for j in range(2)] for w in range(W)])
    np.testing.assert_allclose(m, means.mean(0), rtol=1e-12)
    np.testing.assert_array_equal(n, np.isfinite(x).sum(0))
    np.testing.assert_array_equal(nw, W)
    if W == 1:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)       # a column with one value: no spread
            sd = np.where(n > 1, np.nanstd(x, axis=0, ddof=1), 0.0)
        np.testing.assert_allclose((hi - lo) / 2, 1.96 * sd / np.sqrt(n), rtol=1e-12)
    else:
        half = t.ppf(0.975, W - 1) * means.std(0, ddof=1) / np.sqrt(W)
        np.testing.assert_allclose((hi - lo) / 2, half, rtol=1e-10)


# ---------------------------------------------------------------------- fits
@FAST
@given(b=st.floats(-1.0, -0.2), c=st.floats(0.0, 0.05), a=st.floats(0.3, 3.0),
       noise=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**32 - 1))
def test_fit_power_law_recovers_known_parameters(b, c, a, noise, seed):
    """d(n) = a n^b + c on n = 1..256.  Exact data: slope, floor and amplitude recovered to 1e-4
    (measured ~1e-9).  With 1% multiplicative noise: slope within 0.03 of b, amplitude within
    5%, the fitted curve within 3% of the true one at every n, and the floor within 10% of
    d(256).  Measured worst over 300 random + 1440 grid cases: |Δb| 0.014, |Δa|/a 0.022, curve
    1.9%, floor 4.8% of d(256).  None of these fits is degenerate."""
    n = np.arange(1, 257)
    d = a * n ** b + c
    if noise:
        d = d * np.exp(noise * np.random.default_rng(seed).standard_normal(n.shape))
    fit = metrics.fit_power_law(n, d)
    slope, floor, amp = fit
    fitted = amp * n ** slope + floor
    true = a * n ** b + c
    assert not fit.degenerate
    if noise == 0:
        assert abs(slope - b) < 1e-4 and abs(floor - c) < 1e-4 and abs(amp / a - 1) < 1e-4, fit
    else:
        assert abs(slope - b) < 0.03, fit
        assert abs(amp / a - 1) < 0.05, fit
        assert np.abs(np.log(fitted / true)).max() < 0.03, fit
        assert abs(floor - c) < 0.1 * true[-1], fit


@FAST
@given(b=st.floats(-2.5, -0.1), a=st.floats(0.01, 30.0))
def test_floorless_fit_is_the_log_log_line(b, a):
    """floor=False: exact data a n^b is recovered to 1e-9 and the floor reported 0."""
    n = np.arange(4, 257)
    fit = metrics.fit_power_law(n, a * n ** b, floor=False)
    assert fit.slope == pytest.approx(b, abs=1e-9) and fit.amplitude == pytest.approx(a, rel=1e-9)
    assert fit.floor == 0.0 and not fit.degenerate


def test_fits_on_a_bound_are_degenerate():
    """A rising curve pins the slope at its bound 0 and a curve steeper than n^-3 at -3: both are
    flagged, as are fits with fewer than 4 positive points."""
    n = np.arange(1, 65.0)
    assert metrics.fit_power_law(n, 0.1 * n ** 0.3).degenerate
    assert metrics.fit_power_law(n, n ** -4.0, floor=False).degenerate
    few = metrics.fit_power_law(np.arange(1, 6.0), np.array([1.0, np.nan, 0.0, -1.0, 0.5]))
    assert all(np.isnan(few)) and few.degenerate
