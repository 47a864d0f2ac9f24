"""File formats in simkernel.store: corpora, prompts, JSON/CSV, provenance, atomicity."""

import json
import os
from datetime import datetime

import numpy as np
import pytest

import simkernel.sampling as sampling
from simkernel import World, make_world, sample_corpus, sample_prompts
from simkernel import store


@pytest.fixture(scope="module")
def world():
    return make_world("random", seed=1, n_concepts=3, n_states=4, n_symbols=7)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------- provenance
def test_versions_and_provenance():
    v = store.versions()
    assert set(v) == {"python", "simkernel", "numpy", "scipy", "numba"}
    assert v["numpy"] == np.__version__
    p = store.provenance({"a": 1}, 7)
    assert p["config"] == {"a": 1} and p["seed"] == 7 and p["versions"] == v
    assert datetime.fromisoformat(p["created"]).tzinfo is not None
    extra = store.versions("matplotlib", "no-such-package-xyz")
    assert extra == dict(v, **{"matplotlib": extra["matplotlib"], "no-such-package-xyz": None})
    assert extra["matplotlib"] is not None
    assert store.provenance({}, 0, extra_packages=("matplotlib",))["versions"] == store.versions("matplotlib")


# ---------------------------------------------------------------------- corpora
def test_corpus_round_trip_equals_one_call(world, tmp_path):
    out = tmp_path / "corpus"
    seen = []
    sampling.write_corpus(world, out, n_docs=10, doc_length=17, seed=5, chunk_docs=3,
                       progress=seen.append, config={"note": "test"})
    assert seen == [3, 6, 9, 10]
    c = sampling.read_corpus(out)
    ref = sample_corpus(world, 10, 17, seed=5)
    assert isinstance(c.tokens, np.memmap) and not c.tokens.flags.writeable
    assert c.tokens.dtype == ref.tokens.dtype == sampling.token_dtype(world.n_symbols)
    np.testing.assert_array_equal(c.tokens, ref.tokens)
    np.testing.assert_array_equal(c.offsets, ref.offsets)
    np.testing.assert_array_equal(c.concepts, ref.concepts)
    np.testing.assert_array_equal(c.document(3), ref.document(3))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 5
    assert meta["config"]["n_docs"] == 10 and meta["config"]["doc_length"] == 17
    assert meta["config"]["note"] == "test"
    assert meta["versions"] == store.versions()
    assert meta["world"]["K"] == 3 and meta["world"]["V"] == 7
    assert meta["world"]["meta"]["preset"] == "random"
    w2 = World.load(out / "world.npz")
    np.testing.assert_array_equal(w2.transition, world.transition)
    assert _entries(tmp_path) == ["corpus"]          # no temp folder left behind


def test_corpus_interrupted_leaves_nothing(world, tmp_path, monkeypatch):
    real = sampling.sample_corpus
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(sampling, "sample_corpus", flaky)
    with pytest.raises(RuntimeError):
        sampling.write_corpus(world, tmp_path / "corpus", 10, 5, seed=0, chunk_docs=4)
    assert _entries(tmp_path) == []


def test_corpus_interrupted_overwrite_keeps_old(world, tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    sampling.write_corpus(world, out, 4, 5, seed=0)
    before = sampling.read_corpus(out).tokens.copy()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "sample_corpus", boom)
    with pytest.raises(KeyboardInterrupt):
        sampling.write_corpus(world, out, 6, 5, seed=1, overwrite=True)
    np.testing.assert_array_equal(sampling.read_corpus(out).tokens, before)
    assert _entries(tmp_path) == ["corpus"]


def test_corpus_overwrite_semantics(world, tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()                                    # an empty folder is fine
    sampling.write_corpus(world, out, 3, 4, seed=0)
    with pytest.raises(ValueError, match="already exists and is not empty.*overwrite=True"):
        sampling.write_corpus(world, out, 5, 4, seed=1)
    assert sampling.read_corpus(out).concepts.size == 3
    sampling.write_corpus(world, out, 5, 4, seed=1, overwrite=True)
    c = sampling.read_corpus(out)
    assert c.concepts.size == 5
    np.testing.assert_array_equal(c.tokens, sample_corpus(world, 5, 4, seed=1).tokens)
    assert _entries(tmp_path) == ["corpus"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        sampling.write_corpus(world, tmp_path / "file", 3, 4, seed=0, overwrite=True)


def test_corpus_bad_arguments(world, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sampling.write_corpus(world, tmp_path / "no" / "corpus", 3, 4, seed=0)
    with pytest.raises(ValueError, match="n_docs"):
        sampling.write_corpus(world, tmp_path / "c", 0, 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sampling.write_corpus(world, tmp_path / "c", 3, 4, seed=-1)
    assert _entries(tmp_path) == []


def test_corpus_disk_space_checked_first(world, tmp_path, monkeypatch):
    from collections import namedtuple
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: Usage(100, 90, 10))
    with pytest.raises(ValueError, match="MiB free"):
        sampling.write_corpus(world, tmp_path / "c", 3, 4, seed=0)
    assert _entries(tmp_path) == []


def test_read_corpus_errors(world, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sampling.read_corpus(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="lacks tokens.npy"):
        sampling.read_corpus(tmp_path / "empty")
    out = tmp_path / "c"
    sampling.write_corpus(world, out, 3, 4, seed=0)
    np.save(out / "offsets.npy", np.array([0, 5, 7], dtype=np.int64))
    with pytest.raises(ValueError, match="offsets"):
        sampling.read_corpus(out)
    (out / "tokens.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        sampling.read_corpus(out)


# ---------------------------------------------------------------------- prompts
@pytest.mark.parametrize("n_demos", [0, 3])
def test_prompts_round_trip(world, tmp_path, n_demos):
    p = sample_prompts(world, 5, n_demos, 3, seed=2)
    path = tmp_path / "p.npz"
    store.write_prompts(p, path, {"n_demos": n_demos}, 2)
    q = sampling.read_prompts(path)
    for name in ("tokens", "x_spans", "label_positions", "delimiter_positions", "labels",
                 "y_test", "concepts"):
        a, b = getattr(p, name), getattr(q, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b)
    assert (q.n_demos, q.example_length) == (n_demos, 3)
    np.testing.assert_array_equal(q.x_test(), p.x_test())
    meta = store.read_prompts_meta(path)
    assert meta["seed"] == 2 and meta["config"] == {"n_demos": n_demos}
    assert set(meta["versions"]) >= {"numpy", "simkernel"}
    assert _entries(tmp_path) == ["p.npz"]


def test_read_prompts_errors(world, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sampling.read_prompts(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        sampling.read_prompts(tmp_path / "junk.npz")
    np.savez(tmp_path / "w.npz", tokens=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lacks array"):
        sampling.read_prompts(tmp_path / "w.npz")


def test_write_prompts_missing_folder(world, tmp_path):
    p = sample_prompts(world, 2, 1, 2, seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        store.write_prompts(p, tmp_path / "no" / "p.npz", {}, 0)


# ---------------------------------------------------------------------- JSON / CSV
def test_write_json_atomic(tmp_path):
    path = tmp_path / "r.json"
    store.write_json(path, {"x": np.float64(1.5), "a": np.arange(3), "n": np.int64(2)})
    assert json.loads(path.read_text()) == {"x": 1.5, "a": [0, 1, 2], "n": 2}
    with pytest.raises(TypeError):
        store.write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["x"] == 1.5          # the old file is intact
    assert _entries(tmp_path) == ["r.json"]


def test_write_csv(tmp_path):
    path = tmp_path / "t.csv"
    store.write_csv(path, [{"a": 1, "b": 0.5}, {"a": 2, "b": float("nan")}], ["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "1,0.5", "2,nan"]


def test_written_files_get_ordinary_permissions(world, tmp_path):
    old = os.umask(0o022)
    try:
        store.write_json(tmp_path / "r.json", {})
        sampling.write_corpus(world, tmp_path / "c", 2, 3, seed=0)
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "c" / "world.npz").stat().st_mode & 0o777 == 0o644


def test_check_writable(tmp_path):
    store.check_writable(tmp_path)
    assert _entries(tmp_path) == []                 # the probe file is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        store.check_writable(tmp_path / "f", "out.npz")
