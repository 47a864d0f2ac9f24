"""Exact inference (simkernel.bayes) against brute-force enumeration and hmmlearn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import (assert_loglik_equal, brute_loglik, brute_next_state, brute_prob,
                      token_batches, worlds)
from simkernel import (World, concept_posterior, forward, icl_curve, log_likelihood, make_world,
                       oracle_predictive, posterior_predictive, sample_prompts)
from simkernel.bayes import choose_method

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def brute_predictive(world: World, tokens) -> np.ndarray | None:
    """P(next symbol | tokens) under the mixture: sum_k prior_k P(tokens + [v] | k) over
    sum_k prior_k P(tokens | k), every probability by path enumeration.  None if the
    denominator is 0 (the posterior is undefined)."""
    tokens = [int(o) for o in tokens]
    den = sum(world.prior[k] * brute_prob(world, k, tokens) for k in range(world.n_concepts))
    if den == 0:
        return None
    num = np.array([sum(world.prior[k] * brute_prob(world, k, tokens + [v]) for k in range(world.n_concepts))
                    for v in range(world.n_symbols)])
    return num / den


def brute_single_predictive(world: World, k: int, tokens) -> np.ndarray:
    tokens = [int(o) for o in tokens]
    den = brute_prob(world, k, tokens)
    return np.array([brute_prob(world, k, tokens + [v]) for v in range(world.n_symbols)]) / den


def brute_posterior(world: World, tokens) -> np.ndarray | None:
    w = np.array([world.prior[k] * brute_prob(world, k, tokens) for k in range(world.n_concepts)])
    return None if w.sum() == 0 else w / w.sum()


# ---------------------------------------------------------------------- log-likelihood
@SETTINGS
@given(data=st.data(), method=st.sampled_from(["dense", "sparse", "auto"]))
def test_log_likelihood_equals_brute_force(data, method):
    world = data.draw(worlds())
    tokens = data.draw(token_batches(world))
    assert_loglik_equal(log_likelihood(world, tokens, method=method), brute_loglik(world, tokens))


@SETTINGS
@given(data=st.data())
def test_log_likelihood_of_sampled_prompts_equals_brute_force(data):
    """Random token strings are often impossible; prompts sampled from the world are not, so
    this exercises the finite branch (and delimiters at the example boundaries)."""
    world = data.draw(worlds(allow_zeros=False))
    k = data.draw(st.integers(2, 3))
    n = data.draw(st.integers(0, 1))
    assume(n * (k + 1) + k - 1 <= 7)
    p = sample_prompts(world, 3, n, k, seed=data.draw(st.integers(0, 1000)))
    expected = brute_loglik(world, p.tokens)
    assert np.isfinite(expected[np.arange(3), p.concepts]).all()
    for method in ("dense", "sparse"):
        assert_loglik_equal(log_likelihood(world, p.tokens, method=method), expected)


def test_restart_semantics_change_the_likelihood():
    """The same sequence scores differently under restart and run-on semantics, each as its
    own enumeration says: a hand-checkable two-state world."""
    start = [[1.0, 0.0]]
    T = [[[0.0, 1.0], [1.0, 0.0]]]          # A -> B -> A ...
    E = [[[0.0, 1.0], [1.0, 0.0]]]          # A emits 1, B emits 0 (= delimiter)
    run_on = World.from_arrays([1.0], start, T, E, 0, restart=False)
    restart = World.from_arrays([1.0], start, T, E, 0, restart=True)
    seq = np.array([[1, 0, 1, 0]])
    # run on: A B A B -> probability 1; restart: A B, then start again at A -> also 1
    np.testing.assert_allclose(log_likelihood(run_on, seq), [[0.0]], atol=1e-12)
    np.testing.assert_allclose(log_likelihood(restart, seq), [[0.0]], atol=1e-12)
    # "1 0 0": run on needs B -> B (impossible); restart after 0 starts at A which emits 1 only
    for w in (run_on, restart):
        assert np.isneginf(log_likelihood(w, [[1, 0, 0]])).all()
    # "0": impossible from the start state in both
    assert np.isneginf(log_likelihood(run_on, [[0]])).all()
    # a 3-state world where restart matters: after the delimiter, start is C (emits 2)
    start = [[0.5, 0.0, 0.5]]
    T = [[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
    E = [[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]
    for r in (False, True):
        w = World.from_arrays([1.0], start, T, E, 0, restart=r)
        seq = [[1, 0, 2]]
        ll = log_likelihood(w, seq)
        assert_loglik_equal(ll, brute_loglik(w, seq))
        if r:
            np.testing.assert_allclose(ll, [[np.log(0.5 * 0.5)]], rtol=1e-12)
        else:
            assert np.isneginf(ll).all()


def _hmmlearn_score(world: World, k: int, row) -> float:
    from hmmlearn.hmm import CategoricalHMM
    m = CategoricalHMM(n_components=world.n_states, n_features=world.n_symbols)
    m.startprob_ = np.array(world.start[k], dtype=np.float64)
    m.transmat_ = np.array(world.transition[k], dtype=np.float64)
    m.emissionprob_ = np.array(world.emission[k], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # log(0) warnings where entries are exactly 0
        return float(m.score(np.asarray(row, dtype=np.int64).reshape(-1, 1)))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_log_likelihood_equals_hmmlearn(data):
    world = data.draw(worlds(restart=False, max_states=5, max_symbols=6))
    L = data.draw(st.integers(1, 12))
    B = data.draw(st.integers(1, 2))
    sym = st.integers(0, world.n_symbols - 1)
    tokens = np.array([data.draw(st.lists(sym, min_size=L, max_size=L)) for _ in range(B)])
    expected = np.array([[_hmmlearn_score(world, k, row) for k in range(world.n_concepts)] for row in tokens])
    for method in ("dense", "sparse"):
        assert_loglik_equal(log_likelihood(world, tokens, method=method), expected)


def test_log_likelihood_equals_hmmlearn_on_long_sequences():
    """Longer sequences sampled from the world (finite likelihoods around -100)."""
    from simkernel import sample_corpus
    world = make_world("random", seed=11, n_concepts=3, n_states=6, n_symbols=7, restart=False)
    corpus = sample_corpus(world, 6, 200, seed=5)
    tokens = corpus.tokens.reshape(6, 200)
    expected = np.array([[_hmmlearn_score(world, k, row) for k in range(3)] for row in tokens])
    assert np.isfinite(expected).all() and expected.max() < -50
    for method in ("dense", "sparse"):
        np.testing.assert_allclose(log_likelihood(world, tokens, method=method), expected, rtol=1e-9)


# ---------------------------------------------------------------------- forward internals
@SETTINGS
@given(data=st.data(), method=st.sampled_from(["dense", "sparse"]))
def test_forward_prefixes_and_states_equal_brute_force(data, method):
    world = data.draw(worlds())
    tokens = data.draw(token_batches(world, max_len=5))
    L = tokens.shape[1]
    record = sorted(data.draw(st.lists(st.integers(0, L), max_size=3)))
    fw = forward(world, tokens, record=record, method=method)
    for b, row in enumerate(tokens):
        for k in range(world.n_concepts):
            probs = np.array([brute_prob(world, k, row[:t + 1]) for t in range(L)])
            with np.errstate(divide="ignore"):
                expected = np.log(probs)
            assert_loglik_equal(fw.loglik[b, k], expected)
            if L == 0 or np.isfinite(fw.loglik[b, k, -1]):
                np.testing.assert_allclose(fw.next_state[b, k], brute_next_state(world, k, row),
                                           rtol=1e-9, atol=1e-12)
            for p, q in enumerate(record):
                if q == 0 or np.isfinite(fw.loglik[b, k, q - 1]):
                    np.testing.assert_allclose(fw.recorded[b, k, p], brute_next_state(world, k, row[:q]),
                                               rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- predictives
@SETTINGS
@given(data=st.data(), method=st.sampled_from(["dense", "sparse"]))
def test_posterior_predictive_and_concept_posterior_equal_brute_force(data, method):
    world = data.draw(worlds())
    tokens = data.draw(token_batches(world, max_len=5))
    expected_pred = [brute_predictive(world, row) for row in tokens]
    expected_post = [brute_posterior(world, row) for row in tokens]
    if any(e is None for e in expected_pred):
        with pytest.raises(ValueError, match="probability 0 under every concept"):
            posterior_predictive(world, tokens, method=method)
        with pytest.raises(ValueError, match="probability 0 under every concept"):
            concept_posterior(world, tokens, method=method)
        return
    pred = posterior_predictive(world, tokens, method=method)
    post = concept_posterior(world, tokens, method=method)
    assert pred.shape == (tokens.shape[0], world.n_symbols)
    assert post.shape == (tokens.shape[0], world.n_concepts)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (pred >= 0).all() and (post >= 0).all()
    np.testing.assert_allclose(pred, np.array(expected_pred), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(post, np.array(expected_post), rtol=1e-9, atol=1e-12)


def test_posterior_predictive_of_empty_prompt_is_prior_marginal():
    world = make_world("random", seed=3, n_concepts=3, n_states=4, n_symbols=5)
    pred = posterior_predictive(world, np.zeros((2, 0), dtype=np.int64))
    expected = np.einsum("k,ks,ksv->v", world.prior, world.start, world.emission)
    np.testing.assert_allclose(pred, np.broadcast_to(expected, (2, 5)), rtol=1e-12)
    np.testing.assert_allclose(concept_posterior(world, np.zeros((2, 0), dtype=np.int64)),
                               np.broadcast_to(world.prior, (2, 3)), rtol=1e-12)


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["dense", "sparse"]))
def test_oracle_predictive_equals_single_concept_brute_force(data, method):
    world = data.draw(worlds())
    tokens = data.draw(token_batches(world, max_len=4))
    concepts = np.array(data.draw(st.lists(st.integers(0, world.n_concepts - 1),
                                           min_size=tokens.shape[0], max_size=tokens.shape[0])))
    got = oracle_predictive(world, tokens, concepts, method=method)
    assert got.shape == (tokens.shape[0], world.n_symbols)
    for b, (row, c) in enumerate(zip(tokens, concepts)):
        if brute_prob(world, c, row) == 0:
            assert np.isnan(got[b]).all()
        else:
            np.testing.assert_allclose(got[b], brute_single_predictive(world, c, row), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(got[b].sum(), 1.0, atol=1e-12)


# ---------------------------------------------------------------------- icl_curve
def _check_icl_against_truncations(world, prompts, method):
    curve = icl_curve(world, prompts, method=method)
    B, N = prompts.tokens.shape[0], prompts.n_demos
    assert curve.posterior.shape == (B, N + 1, world.n_concepts)
    assert curve.predictive.shape == (B, N + 1, world.n_symbols)
    n_checked = 0
    for n in range(N + 1):
        toks = prompts.truncated(n).tokens
        assert toks.shape[1] == n * (prompts.example_length + 1) + prompts.example_length - 1
        ll = log_likelihood(world, toks, method=method)
        with np.errstate(divide="ignore"):
            lw = np.log(world.prior) + ll
        possible = np.isfinite(lw).any(axis=1)
        # evidence: log sum_k prior_k P(prompt | k)
        ev = np.full(B, -np.inf)
        m = lw[possible].max(axis=1)
        ev[possible] = m + np.log(np.exp(lw[possible] - m[:, None]).sum(axis=1))
        assert_loglik_equal(curve.log_evidence[:, n], ev)
        if not possible.all():
            assert np.isnan(curve.predictive[~possible, n]).all()
            with pytest.raises(ValueError):
                posterior_predictive(world, toks, method=method)
        if possible.any():
            sel = np.flatnonzero(possible)
            np.testing.assert_allclose(curve.predictive[sel, n],
                                       posterior_predictive(world, toks[sel], method=method),
                                       rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(curve.posterior[sel, n],
                                       concept_posterior(world, toks[sel], method=method),
                                       rtol=1e-9, atol=1e-12)
            n_checked += sel.size
    return curve, n_checked


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("restart", [True, False])
def test_icl_curve_equals_truncated_prompts(restart, method):
    world = make_world("random", seed=7, n_concepts=3, n_states=5, n_symbols=6, restart=restart)
    prompts = sample_prompts(world, 9, 5, 3, seed=2)
    curve, n_checked = _check_icl_against_truncations(world, prompts, method)
    assert n_checked == 9 * 6                      # no zeros in this world: every prefix possible
    np.testing.assert_allclose(curve.predictive.sum(axis=2), 1.0, atol=1e-12)
    np.testing.assert_allclose(curve.oracle,
                               oracle_predictive(world, prompts.x_test(), prompts.concepts, method=method),
                               rtol=1e-12, atol=1e-15)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_icl_curve_equals_truncated_prompts_random_worlds(data):
    """Worlds with exact zeros too, where a truncated prompt can become impossible (NaN)."""
    world = data.draw(worlds())
    k = data.draw(st.integers(2, 4))
    n = data.draw(st.integers(0, 3))
    try:
        prompts = sample_prompts(world, 4, n, k, seed=data.draw(st.integers(0, 100)))
    except ValueError as e:
        assert "cannot produce" in str(e)
        assume(False)
    _check_icl_against_truncations(world, prompts, data.draw(st.sampled_from(["dense", "sparse"])))


# ---------------------------------------------------------------------- scale
def test_long_prompt_does_not_underflow():
    world = make_world("paper-c")
    prompts = sample_prompts(world, 4, 256, 10)
    assert prompts.tokens.shape == (4, 256 * 11 + 9)
    ll = log_likelihood(world, prompts.tokens)
    own = ll[np.arange(4), prompts.concepts]
    assert np.isfinite(own).all()
    assert (own < -745).all()          # a naive product of probabilities would be 0.0
    pred = posterior_predictive(world, prompts.tokens)
    assert np.isfinite(pred).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-12)
    post = concept_posterior(world, prompts.tokens)
    assert np.isfinite(post).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-12)


def test_posterior_concentrates_on_true_concept():
    world = make_world("random", seed=5, n_concepts=3, n_states=4, n_symbols=8, concentration=0.3)
    prompts = sample_prompts(world, 60, 64, 4, seed=9)
    curve = icl_curve(world, prompts)
    on_true = curve.posterior[np.arange(60), :, prompts.concepts]      # (B, N+1)
    assert np.isfinite(on_true).all()
    mean = on_true.mean(axis=0)
    assert mean[64] > 0.9
    assert mean[64] > mean[1]
    assert mean[64] > mean[0]


@pytest.mark.parametrize("restart", [False, True])
def test_dense_and_sparse_agree_on_ginc_preset(restart):
    world = make_world("ginc", restart=restart)
    assert choose_method(world) == "sparse"
    prompts = sample_prompts(world, 12, 6, 5, seed=4)
    ll_d = log_likelihood(world, prompts.tokens, method="dense")
    ll_s = log_likelihood(world, prompts.tokens, method="sparse")
    assert np.isfinite(ll_d).all()
    np.testing.assert_allclose(ll_d, ll_s, rtol=1e-9)
    np.testing.assert_allclose(posterior_predictive(world, prompts.tokens, method="dense"),
                               posterior_predictive(world, prompts.tokens, method="sparse"),
                               rtol=1e-9, atol=1e-13)
    cd = icl_curve(world, prompts, method="dense")
    cs = icl_curve(world, prompts, method="sparse")
    np.testing.assert_allclose(cd.predictive, cs.predictive, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(cd.posterior, cs.posterior, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(cd.log_evidence, cs.log_evidence, rtol=1e-9)


# ---------------------------------------------------------------------- threads
def _forward_pair(world, tokens, method):
    record = [0, 3, tokens.shape[1]]
    f1 = forward(world, tokens, record=record, method=method, n_threads=1)
    f2 = forward(world, tokens, record=record, method=method, n_threads=2)
    return f1, f2


def _assert_bitwise(f1, f2):
    for name in ("loglik", "next_state", "recorded"):
        a, b = getattr(f1, name), getattr(f2, name)
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("n_concepts", [2, 3])
def test_forward_thread_count_is_bitwise_irrelevant(method, n_concepts):
    world = make_world("random", seed=2, n_concepts=n_concepts, n_states=16, n_symbols=6)
    tokens = sample_prompts(world, 300, 4, 4, seed=1).tokens
    _assert_bitwise(*_forward_pair(world, tokens, method))


def test_forward_thread_count_is_bitwise_irrelevant_sparse_single_concept():
    world = make_world("random", seed=2, n_concepts=1, n_states=8, n_symbols=6)
    tokens = sample_prompts(world, 4, 3, 4, seed=1).tokens
    _assert_bitwise(*_forward_pair(world, tokens, "sparse"))


def test_forward_thread_count_is_bitwise_irrelevant_dense_single_concept():
    world = make_world("random", seed=2, n_concepts=1, n_states=8, n_symbols=6)
    tokens = sample_prompts(world, 4, 3, 4, seed=1).tokens
    _assert_bitwise(*_forward_pair(world, tokens, "dense"))


# ---------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def small_world():
    return make_world("random", seed=1, n_concepts=2, n_states=3, n_symbols=5)


@pytest.mark.parametrize("fn", [log_likelihood, posterior_predictive, concept_posterior,
                                lambda w, t: forward(w, t)])
def test_token_outside_vocabulary(small_world, fn):
    with pytest.raises(ValueError, match=r"token 7 .*outside the vocabulary 0\.\.4"):
        fn(small_world, np.array([[1, 2], [3, 7]]))
    with pytest.raises(ValueError, match=r"token -1 .*outside the vocabulary"):
        fn(small_world, np.array([[-1, 2]]))


def test_token_outside_vocabulary_in_oracle(small_world):
    with pytest.raises(ValueError, match=r"token 5 .*outside the vocabulary"):
        oracle_predictive(small_world, np.array([[5]]), [0])


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2), dtype=np.int64), np.int64(3)])
def test_tokens_must_be_2d(small_world, bad):
    with pytest.raises(ValueError, match=r"tokens must be a \(B, L\) array"):
        log_likelihood(small_world, bad)
    with pytest.raises(ValueError, match=r"tokens must be a \(B, L\) array"):
        posterior_predictive(small_world, bad)


def test_tokens_must_be_integers(small_world):
    with pytest.raises(ValueError, match="tokens must be integers"):
        log_likelihood(small_world, np.array([[0.0, 1.0]]))


def test_unknown_method(small_world):
    for fn in (log_likelihood, posterior_predictive, concept_posterior):
        with pytest.raises(ValueError, match="unknown method 'fast'"):
            fn(small_world, [[1, 2]], method="fast")
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        forward(small_world, [[1, 2]], method="fast")


def test_bad_record_and_init(small_world):
    with pytest.raises(ValueError, match="record positions"):
        forward(small_world, [[1, 2]], record=[3])
    with pytest.raises(ValueError, match="init has shape"):
        forward(small_world, [[1, 2]], init=np.ones((1, 2, 4)) / 4)
