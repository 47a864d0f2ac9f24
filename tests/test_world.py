"""World: construction, validation, .npz round trip, atomic save, presets, smoothing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import worlds
from simkernel import PRESETS, World, make_world
from simkernel.world import ROW_SUM_TOL

ARRAYS = ("prior", "start", "transition", "emission", "labels")


def _base_arrays():
    """A valid K=2, S=3, V=5 world as raw arrays (what a foreign .npz would hold)."""
    rng = np.random.default_rng(0)

    def rows(shape):
        g = rng.random(shape) + 0.1
        return g / g.sum(-1, keepdims=True)

    return dict(prior=np.array([0.25, 0.75]), start=rows((2, 3)), transition=rows((2, 3, 3)),
                emission=rows((2, 3, 5)), delimiter=np.int64(0))


def _write(tmp_path, name="w.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _assert_same_world(a: World, b: World):
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.delimiter == b.delimiter
    assert a.restart is b.restart
    assert a.meta == b.meta
    assert set(a.extras) == set(b.extras)
    for k in a.extras:
        np.testing.assert_array_equal(np.asarray(a.extras[k]), np.asarray(b.extras[k]), err_msg=k)


# ---------------------------------------------------------------------- round trip
@pytest.mark.parametrize("preset", list(PRESETS))
def test_save_load_round_trip_presets(tmp_path, preset):
    w = make_world(preset, seed=3)
    path = w.save(tmp_path / f"{preset}.npz")
    assert path.is_file()
    back = World.load(path)
    _assert_same_world(w, back)
    assert back.meta["preset"] == preset and back.meta["seed"] == 3
    if preset == "paper-c":
        assert "task_states" in back.extras
    if preset == "ginc":
        assert {"memory", "slot_transition", "value_transition"} <= set(back.extras)


@settings(max_examples=25, deadline=None)
@given(world=worlds(), restart=st.booleans())
def test_save_load_round_trip_random(tmp_path_factory, world, restart):
    w = World.from_arrays(world.prior, world.start, world.transition, world.emission, world.delimiter,
                          world.labels, restart, meta={"name": "t", "n": 3, "xs": [1, 2.5], "nested": {"a": True}},
                          extras={"extra_ints": np.arange(4), "extra_matrix": np.eye(2)})
    path = tmp_path_factory.mktemp("rt") / "w.npz"
    w.save(path)
    back = World.load(path)
    _assert_same_world(w, back)
    assert back.restart is restart


def test_loaded_arrays_are_read_only(tmp_path):
    back = World.load(make_world("random").save(tmp_path / "w.npz"))
    with pytest.raises(ValueError):
        back.transition[0, 0, 0] = 1.0


def test_foreign_file_defaults(tmp_path):
    """Only the five core arrays: labels = every symbol but the delimiter, restart False."""
    arrays = _base_arrays()
    arrays["delimiter"] = np.int64(2)
    w = World.load(_write(tmp_path, **arrays))
    assert w.restart is False
    np.testing.assert_array_equal(w.labels, [0, 1, 3, 4])
    assert w.meta == {} and w.extras == {}
    assert (w.n_concepts, w.n_states, w.n_symbols) == (2, 3, 5)


# ---------------------------------------------------------------------- load validation
def _off_row(a):
    a["transition"][1, 2, 0] += 0.01


def _negative(a):
    a["emission"][0, 1, 2] -= 2.0
    a["emission"][0, 1, 3] += 2.0     # the row still sums to 1


def _nan(a):
    a["start"][1, 2] = np.nan


def _inf_prior(a):
    a["prior"][0] = np.inf


def _shape(a):
    a["start"] = np.full((2, 4), 0.25)


def _emission_shape(a):
    a["emission"] = a["emission"][:1]


def _delim(a):
    a["delimiter"] = np.int64(5)


def _delim_float(a):
    a["delimiter"] = np.float64(1.5)


def _labels_delim(a):
    a["labels"] = np.array([0, 1, 2], dtype=np.int64)


def _labels_empty(a):
    a["labels"] = np.zeros(0, dtype=np.int64)


def _labels_outside(a):
    a["labels"] = np.array([1, 9], dtype=np.int64)


def _labels_repeat(a):
    a["labels"] = np.array([1, 1], dtype=np.int64)


def _bad_meta(a):
    a["meta"] = np.array("{not json")


def _prior_sum(a):
    a["prior"] = np.array([0.5, 0.6])


@pytest.mark.parametrize("mutate, pattern", [
    pytest.param(_off_row, r"transition row transition\[1, 2\] sums to 1\.01", id="non-stochastic"),
    pytest.param(_negative, r"emission has a negative entry -.* in row emission\[0, 1\]", id="negative"),
    pytest.param(_nan, r"start is not finite at start\[1\]", id="nan"),
    pytest.param(_inf_prior, r"prior is not finite", id="inf"),
    pytest.param(_prior_sum, r"prior row prior sums to 1\.1", id="prior-sum"),
    pytest.param(_shape, r"start has shape \(2, 4\), expected \(2, 3\)", id="shape"),
    pytest.param(_emission_shape, r"emission has shape \(1, 3, 5\), expected \(2, 3, 5\)", id="emission-shape"),
    pytest.param(_delim, r"delimiter 5 is outside the vocabulary 0\.\.4", id="delimiter"),
    pytest.param(_delim_float, r"delimiter must be an integer symbol", id="delimiter-float"),
    pytest.param(_labels_delim, r"labels contains the delimiter 0", id="labels-delimiter"),
    pytest.param(_labels_empty, r"labels is empty", id="labels-empty"),
    pytest.param(_labels_outside, r"labels contains symbol 9, outside the vocabulary", id="labels-outside"),
    pytest.param(_labels_repeat, r"labels contains a repeated symbol", id="labels-repeat"),
    pytest.param(_bad_meta, r"'meta' is not valid JSON", id="meta"),
])
def test_load_rejects_invalid_world(tmp_path, mutate, pattern):
    arrays = _base_arrays()
    mutate(arrays)
    path = _write(tmp_path, **arrays)
    with pytest.raises(ValueError, match=pattern):
        World.load(path)


def test_row_sum_tolerance(tmp_path):
    a = _base_arrays()
    a["transition"][0, 0, 0] += ROW_SUM_TOL / 2         # within tolerance: accepted
    World.load(_write(tmp_path, "ok.npz", **a))
    a["transition"][0, 0, 0] += ROW_SUM_TOL * 2         # beyond: rejected
    with pytest.raises(ValueError, match=r"transition row transition\[0, 0\]"):
        World.load(_write(tmp_path, "bad.npz", **a))


def test_load_missing_array(tmp_path):
    a = _base_arrays()
    del a["transition"]
    with pytest.raises(ValueError, match=r"lacks array 'transition'"):
        World.load(_write(tmp_path, **a))


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        World.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"hello, not a zip file\n", b"PK\x03\x04truncated", b""])
def test_load_not_an_npz(tmp_path, content):
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read it as .npz"):
        World.load(path)


def test_load_npy_file_is_not_an_npz(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="cannot read it as .npz"):
        World.load(path)


def test_load_pickled_array_refused(tmp_path):
    a = _base_arrays()
    a["notes"] = np.array([{"a": 1}], dtype=object)
    with pytest.raises(ValueError, match="cannot read it as .npz"):
        World.load(_write(tmp_path, **a))


def test_from_arrays_validation():
    a = _base_arrays()
    with pytest.raises(ValueError, match="prior has no concepts"):
        World.from_arrays(np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3, 5)), 0)
    with pytest.raises(ValueError, match="transition must have 3 dimension"):
        World.from_arrays(a["prior"], a["start"], a["transition"][0], a["emission"], 0)
    with pytest.raises(ValueError, match="labels must be a 1-D integer array"):
        World.from_arrays(a["prior"], a["start"], a["transition"], a["emission"], 0, labels=[1.0, 2.0])


# ---------------------------------------------------------------------- atomic save
def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    make_world("random", seed=1).save(path)
    before = path.read_bytes()
    other = make_world("random", seed=2)

    def exploding_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(np, "savez_compressed", exploding_savez)
    with pytest.raises(RuntimeError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]
    _assert_same_world(World.load(path), make_world("random", seed=1))


def test_save_new_file_failure_leaves_nothing(tmp_path, monkeypatch):
    def exploding_savez(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", exploding_savez)
    with pytest.raises(KeyboardInterrupt):
        make_world("random").save(tmp_path / "new.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        make_world("random").save(tmp_path / "no" / "such" / "w.npz")


# ---------------------------------------------------------------------- presets
def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'"):
        make_world("nope")


def test_unknown_override():
    with pytest.raises(ValueError, match=r"unknown option 'n_colors' for preset 'random'"):
        make_world("random", n_colors=3)


def test_override_of_wrong_type():
    with pytest.raises(ValueError, match=r"option 'n_states' of preset 'random' must be int"):
        make_world("random", n_states=2.5)
    with pytest.raises(ValueError, match=r"option 'restart' of preset 'random' must be bool"):
        make_world("random", restart="maybe")
    assert make_world("random", n_states="3").n_states == 3
    assert make_world("random", restart="false").restart is False


@pytest.mark.parametrize("seed", ["abc", 1.5, True, -1, None, 2.0])
def test_non_integer_seed(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        make_world("random", seed=seed)


def test_numpy_integer_seed_accepted():
    a, b = make_world("random", seed=np.int64(4)), make_world("random", seed=4)
    np.testing.assert_array_equal(a.transition, b.transition)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_same_seed_same_world_different_seed_different(preset):
    a, b, c = make_world(preset, seed=11), make_world(preset, seed=11), make_world(preset, seed=12)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.meta == b.meta
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])
    assert not np.array_equal(a.transition, c.transition)
    assert not (np.array_equal(a.start, c.start) and np.array_equal(a.emission, c.emission))


def test_paper_c_structure():
    w = make_world("paper-c", seed=0)
    assert (w.n_concepts, w.n_states, w.n_symbols) == (8, 80, 100)
    assert w.restart is True
    # one HMM shared by all tasks
    for k in range(1, 8):
        np.testing.assert_array_equal(w.transition[k], w.transition[0])
        np.testing.assert_array_equal(w.emission[k], w.emission[0])
    # a task = a start state: one-hot, distinct
    assert set(np.unique(w.start)) == {0.0, 1.0}
    np.testing.assert_array_equal(w.start.sum(axis=1), 1.0)
    starts = w.start.argmax(axis=1)
    assert len(set(starts.tolist())) == 8
    np.testing.assert_array_equal(starts, w.extras["task_states"])
    np.testing.assert_allclose(w.prior, 1 / 8)
    assert len(w.labels) == 4 and w.delimiter not in w.labels
    assert ((w.labels >= 0) & (w.labels < 100)).all()
    assert w.meta["preset"] == "paper-c"


def test_random_preset_shapes_and_overrides():
    w = make_world("random", seed=0, n_concepts=3, n_states=5, n_symbols=7, delimiter=2, n_labels=3, restart=False)
    assert (w.n_concepts, w.n_states, w.n_symbols) == (3, 5, 7)
    assert w.delimiter == 2 and w.restart is False
    assert len(w.labels) == 3 and 2 not in w.labels
    # the three concepts are different HMMs
    assert not np.array_equal(w.transition[0], w.transition[1])


def test_preset_option_validation():
    with pytest.raises(ValueError, match="n_tasks must be <= n_states"):
        make_world("paper-c", n_states=4, n_tasks=5)
    with pytest.raises(ValueError, match="n_labels must be in"):
        make_world("random", n_symbols=3, n_labels=5)
    with pytest.raises(ValueError, match="delimiter 12 is outside"):
        make_world("random", delimiter=12)


# ---------------------------------------------------------------------- smoothing
@settings(max_examples=40, deadline=None)
@given(world=worlds(), eps=st.sampled_from([0.0, 1e-6, 1e-3, 0.1, 0.5, 1.0]))
def test_smoothed(world, eps):
    s = world.smoothed(eps)
    S = world.n_states
    assert s.transition.min() >= eps / S
    assert s.start.min() >= eps / S
    np.testing.assert_allclose(s.transition.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(s.start.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(s.transition, (1 - eps) * world.transition + eps / S, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(s.emission, world.emission)       # emissions untouched
    np.testing.assert_array_equal(s.prior, world.prior)
    assert s.restart is world.restart and s.delimiter == world.delimiter
    np.testing.assert_array_equal(s.labels, world.labels)


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_smoothed_rejects_bad_epsilon(eps):
    with pytest.raises(ValueError, match="smoothing must be in"):
        make_world("random").smoothed(eps)


def test_with_prior():
    w = make_world("random", n_concepts=3)
    w2 = w.with_prior([0.5, 0.5, 0.0])
    np.testing.assert_array_equal(w2.prior, [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(w2.transition, w.transition)
    with pytest.raises(ValueError, match="prior row prior sums to"):
        w.with_prior([0.5, 0.6, 0.0])
