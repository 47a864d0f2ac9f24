"""Seeded Numba samplers: reproducibility, chunking, prompt layout, and the distributions drawn."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from conftest import worlds
from simkernel import World, log_likelihood, make_world, oracle_predictive, sample_corpus, sample_prompts

SEEDS = st.integers(0, 2**63 - 1)


def _prompts_equal(a, b):
    for name in ("tokens", "x_spans", "label_positions", "delimiter_positions", "labels", "y_test", "concepts"):
        x, y = getattr(a, name), getattr(b, name)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return a.n_demos == b.n_demos and a.example_length == b.example_length


def _corpora_equal(a, b):
    return all(getattr(a, n).dtype == getattr(b, n).dtype and np.array_equal(getattr(a, n), getattr(b, n))
               for n in ("tokens", "offsets", "concepts"))


@pytest.fixture(scope="module")
def world():
    return make_world("random", seed=3, n_concepts=3, n_states=5, n_symbols=7)


# ---------------------------------------------------------------------- reproducibility
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, restart=st.booleans())
def test_seed_reproduces_prompts_and_corpus(seed, restart):
    w = make_world("random", seed=3, n_concepts=3, n_states=5, n_symbols=7, restart=restart)
    assert _prompts_equal(sample_prompts(w, 7, 3, 4, seed=seed), sample_prompts(w, 7, 3, 4, seed=seed))
    assert _corpora_equal(sample_corpus(w, 5, 40, seed=seed), sample_corpus(w, 5, 40, seed=seed))
    other = seed + 1
    assert not np.array_equal(sample_prompts(w, 7, 3, 4, seed=seed).tokens,
                              sample_prompts(w, 7, 3, 4, seed=other).tokens)
    assert not np.array_equal(sample_corpus(w, 5, 40, seed=seed).tokens,
                              sample_corpus(w, 5, 40, seed=other).tokens)


def test_known_seed_is_stable_across_calls_and_numpy_ints(world):
    a = sample_prompts(world, 4, 2, 3, seed=123)
    b = sample_prompts(world, 4, 2, 3, seed=np.int64(123))
    assert _prompts_equal(a, b)
    assert _corpora_equal(sample_corpus(world, 3, 9, seed=123), sample_corpus(world, 3, 9, seed=np.uint32(123)))


def test_thread_count_does_not_change_samples(world):
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        p1, c1 = sample_prompts(world, 50, 3, 4, seed=8), sample_corpus(world, 40, 30, seed=8)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        p2, c2 = sample_prompts(world, 50, 3, 4, seed=8), sample_corpus(world, 40, 30, seed=8)
    finally:
        numba.set_num_threads(before)
    assert _prompts_equal(p1, p2)
    assert _corpora_equal(c1, c2)


def test_prompt_batch_prefix_is_stable(world):
    """Prompt b depends only on (seed, b): a smaller batch is a prefix of a larger one."""
    small, big = sample_prompts(world, 5, 2, 3, seed=4), sample_prompts(world, 9, 2, 3, seed=4)
    np.testing.assert_array_equal(small.tokens, big.tokens[:5])
    np.testing.assert_array_equal(small.y_test, big.y_test[:5])


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, cuts=st.lists(st.integers(1, 11), max_size=3, unique=True))
def test_corpus_in_chunks_equals_one_call(world, seed, cuts):
    whole = sample_corpus(world, 12, 17, seed=seed)
    edges = [0] + sorted(cuts) + [12]
    parts = [sample_corpus(world, b - a, 17, seed=seed, first_doc=a, n_total_docs=12)
             for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_array_equal(np.concatenate([p.tokens for p in parts]), whole.tokens)
    np.testing.assert_array_equal(np.concatenate([p.concepts for p in parts]), whole.concepts)
    for p, (a, b) in zip(parts, zip(edges[:-1], edges[1:])):
        np.testing.assert_array_equal(p.offsets, np.arange(b - a + 1) * 17)
        for d in range(b - a):
            np.testing.assert_array_equal(p.document(d), whole.document(a + d))
    # the default n_total_docs (first_doc + n_docs) gives the same documents
    head = sample_corpus(world, edges[1], 17, seed=seed)
    assert _corpora_equal(head, parts[0])


def test_corpus_rejects_inconsistent_chunk(world):
    with pytest.raises(ValueError):
        sample_corpus(world, 6, 4, seed=0, first_doc=0, n_total_docs=3)


def test_corpus_layout_and_dtype(world):
    c = sample_corpus(world, 4, 25, seed=2)
    assert c.tokens.shape == (100,) and c.tokens.dtype == np.uint8
    np.testing.assert_array_equal(c.offsets, [0, 25, 50, 75, 100])
    assert ((c.concepts >= 0) & (c.concepts < 3)).all()
    assert c.tokens.max() < world.n_symbols
    big = make_world("random", n_concepts=1, n_states=2, n_symbols=300)
    assert sample_corpus(big, 1, 10).tokens.dtype == np.uint16


# ---------------------------------------------------------------------- prompt layout
def _check_layout(w: World, p, B, n, k):
    L = n * (k + 1) + k - 1
    assert p.tokens.shape == (B, L)
    assert p.n_demos == n and p.example_length == k
    np.testing.assert_array_equal(p.x_spans[:, 0], np.arange(n + 1) * (k + 1))
    np.testing.assert_array_equal(p.x_spans[:, 1] - p.x_spans[:, 0], k - 1)
    assert p.x_spans[-1, 1] == L
    np.testing.assert_array_equal(p.label_positions, np.arange(n) * (k + 1) + k - 1)
    np.testing.assert_array_equal(p.delimiter_positions, np.arange(n) * (k + 1) + k)
    assert (p.tokens[:, p.delimiter_positions] == w.delimiter).all()
    np.testing.assert_array_equal(p.labels, p.tokens[:, p.label_positions])
    assert p.labels.shape == (B, n)
    assert np.isin(p.labels, w.labels).all()
    assert np.isin(p.y_test, w.labels).all()
    assert p.y_test.shape == (B,)
    assert ((p.tokens >= 0) & (p.tokens < w.n_symbols)).all()
    np.testing.assert_array_equal(p.x_test(), p.tokens[:, L - (k - 1):])
    assert p.test_span == (L - (k - 1), L)


def _sample_or_reject(w, B, n, k, seed, concept=None):
    try:
        return sample_prompts(w, B, n, k, seed=seed, concept=concept)
    except ValueError as e:       # the world cannot produce such a prompt (exact zeros)
        assert "cannot produce" in str(e)
        assume(False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(w=worlds(), n=st.integers(0, 4), k=st.integers(2, 5), seed=st.integers(0, 10**6))
def test_prompt_layout_and_finite_likelihood(w, n, k, seed):
    p = _sample_or_reject(w, 3, n, k, seed)
    _check_layout(w, p, 3, n, k)
    assert (w.prior[p.concepts] > 0).all()
    # the sampler conditions on labels and delimiters, so a prompt is never impossible under its concept
    for method in ("dense", "sparse"):
        ll = log_likelihood(w, p.tokens, method=method)
        assert np.isfinite(ll[np.arange(3), p.concepts]).all()
    for m in range(n + 1):
        t = p.truncated(m)
        _check_layout(w, t, 3, m, k)
        np.testing.assert_array_equal(t.tokens[:, : m * (k + 1)], p.tokens[:, : m * (k + 1)])
        np.testing.assert_array_equal(t.x_test(), p.x_test())
        np.testing.assert_array_equal(t.y_test, p.y_test)


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 1e-3])
def test_ginc_prompts_possible_under_own_concept(restart, smoothing):
    w = make_world("ginc", seed=1, smoothing=smoothing, restart=restart)
    if smoothing == 0:
        assert (w.transition == 0).any()        # the trap is there: exact zeros
    p = sample_prompts(w, 40, 8, 5, seed=3)
    _check_layout(w, p, 40, 8, 5)
    ll = log_likelihood(w, p.tokens)
    assert np.isfinite(ll[np.arange(40), p.concepts]).all()
    assert set(p.concepts.tolist()) <= set(np.flatnonzero(w.prior > 0).tolist())
    # out-of-distribution concepts (prior 0) can be asked for explicitly
    q = sample_prompts(w, 10, 4, 3, seed=3, concept=7)
    assert (q.concepts == 7).all()
    assert np.isfinite(log_likelihood(w, q.tokens)[:, 7]).all()


def test_paper_c_prompts_possible_under_own_concept():
    w = make_world("paper-c", seed=2)
    p = sample_prompts(w, 20, 16, 6, seed=0)
    _check_layout(w, p, 20, 16, 6)
    assert np.isfinite(log_likelihood(w, p.tokens)[np.arange(20), p.concepts]).all()


def test_concept_fixes_the_concept(world):
    for c in range(world.n_concepts):
        p = sample_prompts(world, 30, 2, 3, seed=1, concept=c)
        assert (p.concepts == c).all()
    p = sample_prompts(world, 300, 0, 2, seed=1)
    assert set(p.concepts.tolist()) == {0, 1, 2}


def test_impossible_prompt_raises():
    """A world whose states never emit the delimiter cannot close a demonstration."""
    E = np.array([[[0.0, 0.5, 0.5], [0.0, 0.2, 0.8]]])
    w = World.from_arrays([1.0], [[0.5, 0.5]], [[[0.5, 0.5], [0.5, 0.5]]], E, 0)
    sample_prompts(w, 2, 0, 3)                               # no delimiter needed: fine
    with pytest.raises(ValueError, match=r"concept 0 cannot produce example 1 of prompt 0"):
        sample_prompts(w, 2, 1, 3)


# ---------------------------------------------------------------------- distributions
def test_corpus_concept_frequencies_match_prior():
    w = make_world("random", seed=4, n_concepts=4, n_states=3, n_symbols=4).with_prior([0.1, 0.0, 0.5, 0.4])
    N = 20000
    c = sample_corpus(w, N, 1, seed=6)
    counts = np.bincount(c.concepts, minlength=4)
    assert counts[1] == 0                                       # prior 0: never drawn
    live = w.prior > 0
    p = stats.chisquare(counts[live], N * w.prior[live]).pvalue
    assert p > 1e-3
    se = np.sqrt(w.prior * (1 - w.prior) / N)
    assert (np.abs(counts / N - w.prior) <= 5 * se + 1e-12).all()


def _pair_distribution(w: World, restart: bool) -> np.ndarray:
    """Exact P(o0, o1) for a single-concept world under the given delimiter semantics."""
    st_, T, E = w.start[0], w.transition[0], w.emission[0]
    V = w.n_symbols
    joint = np.zeros((V, V))
    for o0 in range(V):
        a = st_ * E[:, o0]                                     # P(h0, o0)
        nxt = a.sum() * st_ if (restart and o0 == w.delimiter) else a @ T
        joint[o0] = nxt @ E
    return joint


@pytest.mark.parametrize("restart", [True, False])
def test_corpus_token_statistics_match_world(restart):
    w = make_world("random", seed=21, n_concepts=1, n_states=4, n_symbols=4, concentration=0.5, restart=restart)
    N = 40000
    docs = sample_corpus(w, N, 2, seed=5).tokens.reshape(N, 2).astype(np.int64)
    first = np.bincount(docs[:, 0], minlength=4) / N
    expected_first = w.start[0] @ w.emission[0]
    se = np.sqrt(expected_first * (1 - expected_first) / N)
    assert (np.abs(first - expected_first) <= 5 * se + 1e-3).all()
    pair = np.bincount(docs[:, 0] * 4 + docs[:, 1], minlength=16).reshape(4, 4) / N
    expected = _pair_distribution(w, restart)
    other = _pair_distribution(w, not restart)
    se = np.sqrt(expected * (1 - expected) / N)
    assert (np.abs(pair - expected) <= 5 * se + 1e-3).all()
    # the test can tell the two semantics apart on this world
    assert (np.abs(pair - other) > 5 * se + 1e-3).any()


def test_prompt_x_distribution_matches_world(world):
    """n=0, k=2: x is one symbol drawn from start @ emission of the prompt's concept (no
    rejection in a world without zeros)."""
    N = 30000
    p = sample_prompts(world, N, 0, 2, seed=11, concept=1)
    freq = np.bincount(p.tokens[:, 0], minlength=world.n_symbols) / N
    expected = world.start[1] @ world.emission[1]
    se = np.sqrt(expected * (1 - expected) / N)
    assert (np.abs(freq - expected) <= 5 * se + 1e-3).all()


def _check_y_given_x(w: World, p, min_count=300):
    """Empirical P(y_test | x_test, concept) against the oracle predictive restricted to the
    labels and renormalised; returns the number of (concept, x) groups checked."""
    x = p.x_test()[:, 0]
    checked = 0
    for c in np.unique(p.concepts):
        for o in np.unique(x[p.concepts == c]):
            sel = (p.concepts == c) & (x == o)
            n = int(sel.sum())
            if n < min_count:
                continue
            oracle = oracle_predictive(w, [[o]], [c])[0]
            exact = oracle[w.labels] / oracle[w.labels].sum()
            emp = np.array([(p.y_test[sel] == y).mean() for y in w.labels])
            se = np.sqrt(exact * (1 - exact) / n)
            assert (np.abs(emp - exact) <= 5 * se + 0.01).all(), (c, o, emp, exact)
            checked += 1
    return checked


def test_y_matches_exact_conditional_one_hot_start():
    """A restart world with a strict label subset (paper-c structure, small): y_test given x_test
    follows P(y | x, concept) restricted to the labels."""
    w = make_world("paper-c", seed=1, n_states=6, n_symbols=5, n_tasks=3, n_labels=2, concentration=1.0)
    p = sample_prompts(w, 60000, 0, 2, seed=3)
    assert _check_y_given_x(w, p) >= 6


def test_y_matches_exact_conditional_general():
    # states A, B emit 1; A -> C (emits the delimiter 0.9, label 2 0.1), B -> D (emits label 1)
    start = [[0.5, 0.5, 0.0, 0.0]]
    T = [[[0, 0, 1, 0], [0, 0, 0, 1], [0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]]]
    E = [[[0, 1, 0], [0, 1, 0], [0.9, 0, 0.1], [0, 1, 0]]]
    w = World.from_arrays([1.0], start, np.array(T, float), np.array(E, float), 0, restart=True)
    p = sample_prompts(w, 20000, 0, 2, seed=0)
    assert _check_y_given_x(w, p) == 1


# ---------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(n_demos=-1), "n_demos must be >= 0"),
    (dict(example_length=1), "example_length must be >= 2"),
    (dict(example_length=0), "example_length must be >= 2"),
    (dict(example_length=3.0), "example_length must be an integer"),
    (dict(n_prompts=0), "n_prompts must be >= 1"),
    (dict(n_demos=True), "n_demos must be an integer"),
    (dict(seed="abc"), "seed must be an integer >= 0"),
    (dict(seed=1.5), "seed must be an integer >= 0"),
    (dict(seed=True), "seed must be an integer >= 0"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(concept=3), r"concept must be an integer in 0\.\.2"),
    (dict(concept=-1), r"concept must be an integer in 0\.\.2"),
    (dict(concept=1.0), r"concept must be an integer in 0\.\.2"),
    (dict(concept=True), r"concept must be an integer in 0\.\.2"),
])
def test_sample_prompts_bad_inputs(world, kwargs, pattern):
    args = dict(n_prompts=2, n_demos=1, example_length=3, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        sample_prompts(world, **args)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(n_docs=0), "n_docs must be >= 1"),
    (dict(doc_length=0), "doc_length must be >= 1"),
    (dict(doc_length=2.5), "doc_length must be an integer"),
    (dict(seed="abc"), "seed must be an integer >= 0"),
    (dict(seed=-3), "seed must be an integer >= 0"),
])
def test_sample_corpus_bad_inputs(world, kwargs, pattern):
    args = dict(n_docs=2, doc_length=5, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        sample_corpus(world, **args)


def test_truncated_out_of_range(world):
    p = sample_prompts(world, 2, 3, 3)
    with pytest.raises(ValueError, match=r"n must be in 0\.\.3"):
        p.truncated(4)
    with pytest.raises(ValueError, match=r"n must be in 0\.\.3"):
        p.truncated(-1)
