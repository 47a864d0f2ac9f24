"""Shared helpers for the simkernel test suite.

- ``GINC_DIR``: GINC's published arrays, shipped in ``tests/data/ginc`` (converted from the public
  GINC repository, p-lambda/incontext-learning; see its README), so a plain clone runs the GINC tests.
- ``worlds()``: a hypothesis strategy for small random worlds (K 1-3 concepts, S 1-4 states,
  V 2-5 symbols, both restart semantics, Dirichlet rows that sometimes contain exact zeros,
  sometimes a strict subset of labels).
- ``cluster``: a module-scoped 2-worker Dask LocalCluster (one thread each), closed after the module.
- ``token_batches()``: a (B, L) batch of arbitrary in-vocabulary symbols, L in 0..6.
- ``brute_prob`` / ``brute_next_state``: the probability of a token sequence under one concept
  and the distribution of the next hidden state, by enumerating every hidden path.  These are
  written from the definition of the model (restart semantics: after the delimiter the next
  hidden state is drawn from start, otherwise from the transition row), not from the package.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from simkernel import World

GINC_DIR = Path(__file__).resolve().parent / "data" / "ginc"


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker LocalCluster of one-thread processes (as the sweep starts by default), closed
    after the module's tests; started with a timeout so that a broken install fails fast."""
    import logging

    from distributed import LocalCluster

    from simkernel.sweep_job import THREAD_ENV

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", timeout="60s",
                     env={k: "1" for k in THREAD_ENV}, silence_logs=logging.ERROR)
    try:
        yield c
    finally:
        c.close(timeout=30)


@pytest.fixture(scope="session")
def ginc_dir() -> Path:
    needed = ("ginc_id_world.npz", "ginc_ood_world.npz", "ginc_val.npz")
    missing = [f for f in needed if not (GINC_DIR / f).is_file()]
    if missing:
        pytest.fail(f"GINC's published arrays ship with the tests, yet {GINC_DIR} lacks {', '.join(missing)}")
    return GINC_DIR


# ---------------------------------------------------------------------- random worlds
def dirichlet_rows(rng: np.random.Generator, shape, alpha: float, zero_frac: float) -> np.ndarray:
    """Rows (last axis) ~ Dirichlet(alpha), then with probability ``zero_frac`` each entry is
    set to exactly 0 (keeping each row's largest entry, so every row stays a distribution)."""
    g = rng.gamma(alpha, size=shape) + 1e-12
    if zero_frac > 0:
        kill = rng.random(shape) < zero_frac
        keep = g == g.max(axis=-1, keepdims=True)
        g = np.where(kill & ~keep, 0.0, g)
    return g / g.sum(axis=-1, keepdims=True)


@st.composite
def worlds(draw, restart=None, max_concepts=3, max_states=4, min_symbols=2, max_symbols=5,
           allow_zeros=True, label_subsets=True):
    K = draw(st.integers(1, max_concepts))
    S = draw(st.integers(1, max_states))
    V = draw(st.integers(min_symbols, max_symbols))
    alpha = draw(st.sampled_from([0.3, 1.0, 3.0]))
    zero_frac = draw(st.sampled_from([0.0, 0.0, 0.3, 0.6])) if allow_zeros else 0.0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prior = dirichlet_rows(rng, (K,), 1.0, zero_frac / 2)
    start = dirichlet_rows(rng, (K, S), alpha, zero_frac)
    transition = dirichlet_rows(rng, (K, S, S), alpha, zero_frac)
    emission = dirichlet_rows(rng, (K, S, V), alpha, zero_frac)
    delimiter = draw(st.integers(0, V - 1))
    others = [o for o in range(V) if o != delimiter]
    labels = None
    if label_subsets and draw(st.booleans()):
        labels = np.array(sorted(draw(st.sets(st.sampled_from(others), min_size=1))), dtype=np.int64)
    r = draw(st.booleans()) if restart is None else restart
    return World.from_arrays(prior, start, transition, emission, delimiter, labels, r)


@st.composite
def token_batches(draw, world: World, max_len=6, max_rows=3):
    L = draw(st.integers(0, max_len))
    B = draw(st.integers(1, max_rows))
    rows = [draw(st.lists(st.integers(0, world.n_symbols - 1), min_size=L, max_size=L)) for _ in range(B)]
    return np.array(rows, dtype=np.int64).reshape(B, L)


# ---------------------------------------------------------------------- brute force
@lru_cache(maxsize=None)
def all_paths(S: int, L: int) -> np.ndarray:
    """Every hidden path of length L over S states: (S**L, L) int."""
    if L == 0:
        return np.zeros((1, 0), dtype=np.int64)
    return np.array(list(itertools.product(range(S), repeat=L)), dtype=np.int64).reshape(-1, L)


def _path_weights(start, T, E, tokens, delimiter, restart):
    """P(hidden path, tokens) for every path (vector over paths) and the paths themselves."""
    tokens = [int(o) for o in tokens]
    S, L = len(start), len(tokens)
    paths = all_paths(S, L)
    w = np.ones(paths.shape[0])
    for t in range(L):
        h = paths[:, t]
        if t == 0:
            w = w * start[h]
        elif restart and tokens[t - 1] == delimiter:
            w = w * start[h]
        else:
            w = w * T[paths[:, t - 1], h]
        w = w * E[h, tokens[t]]
    return w, paths


def brute_prob(world: World, k: int, tokens) -> float:
    """P(tokens | concept k) by summing over all S**L hidden paths."""
    w, _ = _path_weights(world.start[k], world.transition[k], world.emission[k], tokens,
                         world.delimiter, world.restart)
    return float(w.sum())


def brute_next_state(world: World, k: int, tokens) -> np.ndarray:
    """P(hidden state of the token after ``tokens`` | tokens, concept k): (S,), NaN if impossible."""
    start, T = world.start[k], world.transition[k]
    w, paths = _path_weights(start, T, world.emission[k], tokens, world.delimiter, world.restart)
    L = len(tokens)
    if L == 0:
        return start.copy()
    total = w.sum()
    if total == 0:
        return np.full(len(start), np.nan)
    if world.restart and int(tokens[-1]) == world.delimiter:
        return start.copy()
    out = np.zeros(len(start))
    for p, h in zip(w, paths[:, -1]):
        out += p * T[h]
    return out / total


def brute_loglik(world: World, tokens) -> np.ndarray:
    """(B, K) log P(row | concept k), -inf where impossible."""
    tokens = np.asarray(tokens)
    out = np.empty((tokens.shape[0], world.n_concepts))
    for b in range(tokens.shape[0]):
        for k in range(world.n_concepts):
            p = brute_prob(world, k, tokens[b])
            out[b, k] = np.log(p) if p > 0 else -np.inf
    return out


def assert_loglik_equal(actual, expected, rtol=1e-9, atol=1e-11):
    """Same -inf pattern, and finite entries equal to rtol."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    assert not np.isnan(actual).any()
    fin = np.isfinite(expected)
    np.testing.assert_allclose(actual[fin], expected[fin], rtol=rtol, atol=atol)


# ---------------------------------------------------------------------- a tiny offline LLM
@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A ``from_pretrained`` folder holding a byte-level BPE tokenizer trained on the shipped
    sample texts and a tiny randomly initialised GPT-J for it (``tests/llm_helpers.py``)."""
    for module in ("tokenizers", "transformers", "torch"):
        pytest.importorskip(module)
    from llm_helpers import make_tiny_llm_dir

    return make_tiny_llm_dir(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    """Commands report progress on stderr when it is not a terminal (plain lines); the tests
    compare stderr with single error lines and stdout with documented outputs, so they run
    with progress off (tests of the progress lines set it themselves)."""
    monkeypatch.setenv("SIMKERNEL_PROGRESS", "none")
