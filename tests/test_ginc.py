"""GINC: scoring GINC's own published world and documents, and the ``ginc`` preset's structure
against GINC's design and its published parameters (tests/data/ginc, see its README)."""

from __future__ import annotations

import numpy as np
import pytest

from simkernel import World, log_likelihood, make_world
from simkernel.bayes import choose_method


@pytest.fixture(scope="module")
def id_world(ginc_dir) -> World:
    return World.load(ginc_dir / "ginc_id_world.npz")


@pytest.fixture(scope="module")
def ood_world(ginc_dir) -> World:
    return World.load(ginc_dir / "ginc_ood_world.npz")


@pytest.fixture(scope="module")
def val(ginc_dir):
    with np.load(ginc_dir / "ginc_val.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def published(ginc_dir):
    with np.load(ginc_dir / "ginc_id_world.npz") as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------- GINC's published world
def test_load_published_worlds(id_world, ood_world):
    for w in (id_world, ood_world):
        assert (w.n_concepts, w.n_states, w.n_symbols) == (5, 100, 50)
        assert w.restart is False                      # no restart flag in the file: plain HMM
        assert w.delimiter == 0
        np.testing.assert_array_equal(w.labels, np.arange(1, 50))
        assert {"memory", "slot_transition", "value_transition"} <= set(w.extras)
        np.testing.assert_allclose(w.prior, 0.2)
    np.testing.assert_array_equal(id_world.extras["memory"], ood_world.extras["memory"])
    assert not np.array_equal(id_world.transition, ood_world.transition)


def test_auto_method_is_sparse_for_published_ginc(id_world):
    assert choose_method(id_world) == "sparse"


def test_auto_method_is_sparse_for_ginc_preset():
    assert choose_method(make_world("ginc")) == "sparse"
    assert choose_method(make_world("ginc", smoothing=0)) == "sparse"
    assert choose_method(make_world("random")) == "dense"


@pytest.mark.parametrize("method", ["sparse", "dense", "auto"])
def test_validation_loglik_matches_hmmlearn(id_world, val, method):
    expected = val["hmmlearn_loglik"]
    assert expected.shape == (100, 5)
    got = log_likelihood(id_world, val["tokens"], method=method)
    assert got.shape == (100, 5)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    assert not np.isnan(got).any()
    fin = np.isfinite(expected)
    assert fin.sum() >= 100                                          # at least the generating concept
    assert fin[np.arange(100), val["concept"]].all()
    np.testing.assert_allclose(got[fin], expected[fin], rtol=1e-9)


def test_validation_hiddens_are_a_possible_path(id_world, val):
    """The documented hidden states emit the documented tokens (state -> memory symbol)."""
    mem = id_world.extras["memory"].reshape(-1)
    np.testing.assert_array_equal(mem[val["hiddens"].astype(np.int64)], val["tokens"])


def test_restart_scoring_differs_on_ginc_documents(id_world, val):
    """GINC's documents must be scored without restart: restart semantics gives other numbers."""
    restart = World.from_arrays(id_world.prior, id_world.start, id_world.transition, id_world.emission,
                                0, restart=True)
    got = log_likelihood(restart, val["tokens"][:10])
    fin = np.isfinite(val["hmmlearn_loglik"][:10])
    assert not np.allclose(np.where(fin, got, 0), np.where(fin, val["hmmlearn_loglik"][:10], 0))


# ---------------------------------------------------------------------- the ginc preset
@pytest.fixture(scope="module")
def preset():
    return make_world("ginc", seed=0, smoothing=0)


def test_preset_structure(preset):
    w = preset
    ne, npr, K, V = 10, 10, 10, 50
    assert (w.n_concepts, w.n_states, w.n_symbols) == (K, ne * npr, V)
    assert w.restart is False and w.delimiter == 0
    memory = w.extras["memory"]
    slot_T, value_T = w.extras["slot_transition"], w.extras["value_transition"]
    assert memory.shape == (ne, npr) and slot_T.shape == (K, npr, npr) and value_T.shape == (K, ne, ne)
    # one-hot emission through the memory matrix, identical across concepts
    assert set(np.unique(w.emission)) == {0.0, 1.0}
    np.testing.assert_array_equal(w.emission.sum(axis=2), 1.0)
    for k in range(1, K):
        np.testing.assert_array_equal(w.emission[k], w.emission[0])
    emitted = w.emission[0].argmax(axis=1)
    np.testing.assert_array_equal(emitted, memory.reshape(-1))
    # state i = (entity i // npr, property i % npr): property 0 and only it emits the delimiter
    prop = np.arange(ne * npr) % npr
    assert (emitted[prop == 0] == 0).all()
    assert (emitted[prop != 0] != 0).all()
    # transitions: kron(value, slot); slot doubly stochastic; value shared, diagonal >= vic
    for k in range(K):
        np.testing.assert_array_equal(w.transition[k], np.kron(value_T[k], slot_T[k]))
        np.testing.assert_allclose(slot_T[k].sum(axis=0), 1.0, atol=1e-12)
        np.testing.assert_allclose(slot_T[k].sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(value_T[k], value_T[0])
    assert (np.diag(value_T[0]) >= 0.9).all()
    np.testing.assert_allclose(value_T[0].sum(axis=1), 1.0, atol=1e-12)
    # concepts differ in the slot (property) matrix only
    assert all(not np.array_equal(slot_T[0], slot_T[k]) for k in range(1, K))
    # prior uniform over the first half (ID), 0 on the second half (OOD)
    np.testing.assert_allclose(w.prior[:5], 0.2)
    np.testing.assert_array_equal(w.prior[5:], 0.0)
    assert w.meta["in_distribution"] == [0, 1, 2, 3, 4]
    # start nearly uniform (start temperature 10)
    assert w.start.min() > 0.009 and w.start.max() < 0.011
    np.testing.assert_array_equal(w.labels, np.arange(1, 50))


def test_published_world_has_the_same_structure(published):
    """Sanity of the reference itself, so that the comparisons below mean something."""
    mem, slot_T, value_T = published["memory"], published["slot_transition"], published["value_transition"]
    for k in range(5):
        np.testing.assert_allclose(published["transition"][k], np.kron(value_T[k], slot_T[k]), atol=1e-12)
    assert (mem[:, 0] == 0).all() and (mem[:, 1:] != 0).all()


def test_preset_statistics_match_published(preset, published):
    ours, theirs = preset.extras["slot_transition"], published["slot_transition"]
    assert abs((ours == 0).mean() - (theirs == 0).mean()) <= 0.15
    assert abs(ours.max(axis=-1).mean() - theirs.max(axis=-1).mean()) <= 0.15
    n_ours = np.unique(preset.extras["memory"]).size
    n_theirs = np.unique(published["memory"]).size
    assert abs(n_ours - n_theirs) <= 8
    # value (entity) matrix: mostly identity, like GINC's 0.9 diagonal
    assert abs(np.diag(preset.extras["value_transition"][0]).mean()
               - np.diag(published["value_transition"][0]).mean()) <= 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_smoothing_removes_exact_zeros(seed):
    raw = make_world("ginc", seed=seed, smoothing=0)
    smooth = make_world("ginc", seed=seed)
    assert smooth.meta["options"]["smoothing"] == 1e-3
    assert (raw.transition == 0).any()
    assert (smooth.transition > 0).all()
    assert (smooth.start > 0).all()
    # the factors are floored, not the product: structure survives
    st, vt = smooth.extras["slot_transition"], smooth.extras["value_transition"]
    for k in range(smooth.n_concepts):
        np.testing.assert_array_equal(smooth.transition[k], np.kron(vt[k], st[k]))
        np.testing.assert_allclose(st[k].sum(axis=0), 1.0, atol=1e-12)
    assert st.min() >= 1e-3 / 10 * (1 - 1e-12)
    np.testing.assert_array_equal(smooth.emission, raw.emission)
