"""simkernel llm: a real-LLM run end to end, offline on CPU, with a tiny random GPT-J.

The model folder (``tiny_llm_dir``, tests/llm_helpers.py) is loaded through the same
``from_pretrained`` path as GPT-J-6B, and the command is run through the CLI on the shipped
sample data.  Nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from cli_helpers import ok, run  # noqa: E402
from llm_helpers import flip_in_member  # noqa: E402

from simkernel import analysis, cache, capture, hf, llm, textdata  # noqa: E402
from simkernel.store import publish  # noqa: E402

SAMPLE = textdata.sample_data_path("sst2_sample.tsv")
TABLES = {"heads.csv": analysis.HEAD_COLUMNS, "best.csv": analysis.BEST_COLUMNS,
          "profile.csv": analysis.PROFILE_COLUMNS, "probes.csv": analysis.PROBE_COLUMNS}
FIGURES = ("attention_profile.png", "head_scores.png", "probes.png")


def header(path):
    with open(path, newline="") as f:
        return tuple(next(csv.reader(f)))


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_tables(a, b):
    """Two ``analysis.Analysis`` have equal tables (NaN equal to NaN)."""
    for t in ("heads", "best", "profile", "probes"):
        assert json.dumps(getattr(a, t)) == json.dumps(getattr(b, t)), t


@pytest.fixture(scope="module")
def tiny(tiny_llm_dir):
    model, tok = hf.load_model(str(tiny_llm_dir), device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def sample():
    return textdata.load_local(SAMPLE, "sentence", "label", ["Negative", "Positive"])


# ---------------------------------------------------------------------- end to end
def test_cli_end_to_end_then_from_the_cache(tiny_llm_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    r = ok(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--out", out])
    for name, cols in TABLES.items():
        assert header(out / name) == tuple(cols), name
        assert rows(out / name), name
    for name in FIGURES:
        assert (out / name).stat().st_size > 0
    caches = sorted(out.glob("outputs-*.npz"))
    assert len(caches) == 1
    meta = json.loads((out / "llm.json").read_text())
    assert meta["cache"]["cache_hit"] is False and meta["cache"]["model_loaded"] is True
    assert meta["config"]["data"] == str(SAMPLE) and meta["seed"] == 0
    assert meta["model"]["id"] == str(tiny_llm_dir) and meta["model"]["layers"] == 2
    assert {"python", "numpy", "simkernel", "torch", "transformers"} <= set(meta["versions"])
    s = meta["summary"]
    assert (s["n_examples"], s["n_demos"], s["layers"], s["heads"]) == (48, textdata.DEFAULT_N_DEMOS, 2, 4)
    assert s["n_select"] + s["n_report"] == 48
    # the printed Table 2 is the JSON's
    t2 = meta["table2"]
    lines = r.stdout.splitlines()
    assert any(line.startswith("Table 2") for line in lines)
    row = next(line for line in lines if line.startswith("sst2_sample "))
    assert row.split()[1:] == [f"{t2['icl_accuracy']:.3f}", f"{t2['agreement']:.3f}",
                               f"{t2['reconstructed_accuracy']:.3f}", f"L{t2['layer']}", f"H{t2['head']}"]
    probes = rows(out / "probes.csv")
    assert {(p["vector"], p["target"]) for p in probes} == {("keys", "standalone"), ("values", "label")}
    assert {int(p["offset"]) for p in probes} == set(analysis.PROBE_OFFSETS)
    assert (meta["cache"]["device"], meta["cache"]["dtype"], meta["cache"]["batch_size"]) == ("cpu", "float32", 8)
    first = {name: (out / name).read_text() for name in TABLES}

    # another weight re-analyses the cached outputs: the model is never loaded
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although its outputs are cached")

    monkeypatch.setattr(hf, "load_model", no_model)
    # no model is needed, so --device cuda is not checked (there may be no GPU), and llm.json
    # reports the device, dtype and batch size the cached outputs were computed with
    r2 = ok(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--out", out, "--weight", "label",
             "--device", "cuda", "--dtype", "float32", "--batch-size", 3])
    meta2 = json.loads((out / "llm.json").read_text())
    assert meta2["cache"]["cache_hit"] is True and meta2["cache"]["model_loaded"] is False
    assert (meta2["cache"]["device"], meta2["cache"]["dtype"], meta2["cache"]["batch_size"]) == ("cpu", "float32", 8)
    assert meta2["config"]["device"] == "cuda" and meta2["config"]["batch_size"] == 3
    assert meta2["cache"]["cache_file"] == meta["cache"]["cache_file"]
    assert meta2["model"] == meta["model"] and meta2["summary"]["weight"] == "label"
    assert "read from the cache" in r2.stdout
    assert sorted(out.glob("outputs-*.npz")) == caches
    # the same analysis from the cache gives the same tables as the first run
    ok(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--out", out])
    meta3 = json.loads((out / "llm.json").read_text())
    assert meta3["summary"] == meta["summary"] and meta3["best"] == meta["best"]
    assert {name: (out / name).read_text() for name in TABLES} == first

    # a damaged cache file is recomputed, and the run says so: a changed byte inside an array
    # (the zip's CRC-32 of the member catches it), then a truncated file
    monkeypatch.undo()
    for damage, why in ((lambda f: flip_in_member(f, "attn.npy"), "BadZipFile: Bad CRC-32 for file 'attn.npy'"),
                        (lambda f: f.write_bytes(f.read_bytes()[:1000]), "BadZipFile")):
        damage(caches[0])
        with pytest.raises(cache.CacheUnreadable):
            llm.load_text_outputs(caches[0])
        r4 = ok(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--out", out])
        assert f"the cache file {caches[0].name} could not be read ({why}" in r4.stdout
        assert "): recomputed" in r4.stdout and "computed and cached" in r4.stdout
        meta4 = json.loads((out / "llm.json").read_text())
        assert meta4["cache"]["cache_damaged"].startswith(why)
        assert meta4["cache"]["cache_hit"] is False and meta4["cache"]["model_loaded"] is True
        assert meta4["summary"] == meta["summary"] and {name: (out / name).read_text() for name in TABLES} == first
        assert sorted(out.glob("outputs-*.npz")) == caches
        llm.load_text_outputs(caches[0])                      # replaced by a readable file
    ok(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--out", out])
    meta5 = json.loads((out / "llm.json").read_text())
    assert meta5["cache"]["cache_hit"] is True and meta5["cache"]["cache_damaged"] is None



def test_pair_of_label_words_from_a_csv_without_probes(tiny_llm_dir, tmp_path):
    out = tmp_path / "csv"
    r = ok(["llm", "--model", tiny_llm_dir, "--data", textdata.sample_data_path("sentiment_sample.csv"),
            "--text-column", "review", "--label-column", "sentiment", "--label-words", "Negative,Positive",
            "--n-examples", 12, "--n-demos", 3, "--demos", "balanced", "--probe-layers", "none", "--out", out])
    assert rows(out / "probes.csv") == [] and not (out / "probes.png").exists()
    meta = json.loads((out / "llm.json").read_text())
    assert meta["summary"]["n_examples"] == 12 and meta["outputs"]["probe_layers"] == []
    assert "Table 2" in r.stdout


# ---------------------------------------------------------------------- prompts and capture
def test_label_positions_against_the_text(tiny, sample):
    model, tok = tiny
    ids = np.arange(10)
    batch, demo_ids = llm.build_batch(tok, sample, ids, 4, "random", seed=3)
    words = [" Negative", " Positive"]
    for b in range(len(ids)):
        for i in range(batch.n_demos):
            pos = batch.label_pos[b, i]
            start, end = batch.spans[b, i]
            assert end == pos + 1
            assert tok.decode([batch.input_ids[b, pos]]) == words[batch.demo_labels[b, i]]
            assert batch.demo_labels[b, i] == sample.labels[demo_ids[b, i]]
            text = tok.decode(batch.input_ids[b, start:pos])
            assert text == f" {sample.texts[demo_ids[b, i]]} Output:"
        real = batch.input_ids[b, batch.attention_mask[b] == 1]
        assert tok.decode(real) == textdata.prompt_text(sample, int(ids[b]), demo_ids[b])
        assert batch.gold[b] == sample.labels[ids[b]]


def test_batched_equals_single_through_the_llm_path(tiny, sample):
    model, tok = tiny
    ids = np.arange(6)
    one = llm.compute(model, tok, sample, 3, "random", 1, test_ids=ids, batch_size=1)
    many = llm.compute(model, tok, sample, 3, "random", 1, test_ids=ids, batch_size=4)
    # prompts of different lengths share a batch: left padding must not change anything
    assert len(set(many.batch.attention_mask.sum(1))) > 1
    np.testing.assert_allclose(many.capture.attn, one.capture.attn, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(many.capture.label_logp, one.capture.label_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(many.capture.keys, one.capture.keys, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(many.capture.values, one.capture.values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(many.test_logp, one.test_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(many.pool_logp, one.pool_logp, rtol=1e-5, atol=1e-5)
    # the attention rows are distributions over the real tokens only
    np.testing.assert_allclose(many.capture.attn.sum(-1), 1.0, atol=5e-3)
    pad = many.batch.attention_mask == 0
    assert (many.capture.attn.transpose(0, 3, 1, 2)[pad] == 0).all()
    # the capture's label log-probs are a plain forward's
    np.testing.assert_allclose(capture.forward_labels(model, many.batch, 4), many.capture.label_logp,
                               rtol=1e-5, atol=1e-5)
    # each standalone prediction is the zero-demonstration prompt's, each pool text once
    assert np.array_equal(many.pool_ids, np.unique(np.concatenate([many.demo_ids.ravel(), ids])))
    alone = capture.forward_labels(model, llm.standalone_batch(tok, sample, many.pool_ids), 1)
    np.testing.assert_allclose(many.pool_logp, alone, rtol=1e-5, atol=1e-5)


def test_cache_round_trip_and_held_out_selection(tiny, sample, tmp_path):
    model, tok = tiny
    outputs = llm.compute(model, tok, sample, 4, "random", 0, n_examples=40, batch_size=8, probe_layers=[1])
    assert outputs.capture.keys.shape[3] == 1 and list(outputs.probe_layers) == [1]
    path = llm.save_text_outputs(tmp_path / "o.npz", outputs)
    back = llm.load_text_outputs(path)
    np.testing.assert_array_equal(back.capture.attn, outputs.capture.attn)       # float16 both times
    np.testing.assert_array_equal(back.capture.keys, outputs.capture.keys)
    np.testing.assert_array_equal(back.capture.values, outputs.capture.values)
    np.testing.assert_array_equal(back.probe_layers, [1])
    np.testing.assert_array_equal(back.batch.label_pos, outputs.batch.label_pos)
    a, b = llm.analyse(outputs, n_select=28, n_report=12), llm.analyse(back, n_select=28, n_report=12)
    assert a.summary == b.summary
    same_tables(a, b)
    # probes name the model's layer, not its place among the probed layers
    assert {p["layer"] for p in a.probes} == {1}

    select, report = analysis.split_indices(40, 28, 12, 0)
    assert np.intersect1d(select, report).size == 0 and select.size + report.size == 40
    # Table 2's numbers come from the report split alone
    t2 = a.summary["table2"]
    w = analysis.demo_weights(outputs.capture.attn, outputs.batch.spans, outputs.batch.label_pos, "max")
    recon = analysis.reconstruct(w, outputs.batch.demo_labels, 2)[:, t2["layer"], t2["head"]]
    pred = outputs.capture.prediction
    assert t2["agreement"] == pytest.approx((recon[report] == pred[report]).mean())
    assert t2["icl_accuracy"] == pytest.approx((pred[report] == outputs.batch.gold[report]).mean())
    best = next(r for r in a.best if r["measure"] == "agree" and r["reference"] == "model")
    assert best["select"] == pytest.approx((recon[select] == pred[select]).mean())
    for p in a.probes:
        assert (p["n_train"], p["n_test"]) == (28 * 4, 12 * 4)


def test_separate_pool_runs_test_texts_and_pool_texts_alone(tiny, sample):
    """Demonstrations from another dataset (as a task's train split): the test inputs and the
    pool texts are run alone from their own datasets, each distinct row once."""
    model, tok = tiny
    pool = textdata.load_local(textdata.sample_data_path("sentiment_sample.jsonl"), "text", "label",
                               ["Negative", "Positive"])
    ids = np.array([5, 1, 5, 9, 2])                                   # a repeated test row
    out = llm.compute(model, tok, sample, 3, "random", 4, test_ids=ids, batch_size=4, pool=pool,
                      probe_layers="none")
    assert out.meta["dataset"]["pool"]["rows"] == len(pool)
    assert np.array_equal(out.pool_ids, np.unique(out.demo_ids))
    assert out.meta["standalone_texts"] == out.pool_ids.size + np.unique(ids).size
    alone_test = capture.forward_labels(model, llm.standalone_batch(tok, sample, ids), 1)
    np.testing.assert_allclose(out.test_logp, alone_test, rtol=1e-5, atol=1e-5)
    alone_demos = capture.forward_labels(model, llm.standalone_batch(tok, pool, out.demo_ids.ravel()), 1)
    np.testing.assert_allclose(out.p_demos, capture.label_distribution(alone_demos).reshape(out.p_demos.shape),
                               rtol=1e-5, atol=1e-6)
    # the prompts' demonstrations are the pool's rows
    for b in range(len(ids)):
        real = out.batch.input_ids[b, out.batch.attention_mask[b] == 1]
        assert tok.decode(real) == textdata.prompt_text(sample, int(ids[b]), out.demo_ids[b], pool=pool)


# ---------------------------------------------------------------------- names, keys, errors
def test_cache_key_covers_what_changes_the_outputs(tmp_path):
    base = dict(n_demos=8, mode="random", seed=0, n_examples=1000, dtype="bfloat16", probe_layers="auto")
    model, data = {"hub_id": "EleutherAI/gpt-j-6b", "revision": None, "commit": "abc"}, {"task": "sst2"}
    k = cache.cache_key(model, data, **base)
    assert k == cache.cache_key(dict(model), dict(data), **base)
    for change in (dict(seed=1), dict(n_demos=4), dict(mode="balanced"), dict(n_examples=10),
                   dict(dtype="float32"), dict(probe_layers=[3]), dict(max_text_tokens=64)):
        assert cache.cache_key(model, data, **{**base, **change}) != k, change
    assert cache.cache_key(dict(model, commit="def"), data, **base) != k
    assert cache.cache_key(model, {"task": "mnli"}, **base) != k
    # the revision is part of the model's identity
    where = hf.resolve_model("gpt-j-6b")
    assert (cache.cache_key(hf.model_identity(where, "float16"), data, **base)
            != cache.cache_key(hf.model_identity(where, None), data, **base))
    # editing the data file changes the key; the same contents in place keep it
    f = tmp_path / "d.tsv"
    f.write_text(SAMPLE.read_text())
    spec = llm.DataSpec(path=str(f))
    k1 = cache.cache_key(model, spec.identity(), **base)
    assert cache.cache_key(model, spec.identity(), **base) == k1
    f.write_text(SAMPLE.read_text().replace("\t0\n", "\t1\n", 1))
    assert cache.cache_key(model, spec.identity(), **base) != k1
    # dtype auto keys as what it resolves to
    assert hf.planned_dtype("auto", "cuda") == "bfloat16" and hf.planned_dtype("auto", "cpu") == "float32"
    assert hf.planned_dtype("auto", "cpu", device_map="auto") == "bfloat16"
    assert hf.planned_dtype("fp16", "cpu") == "float16"


def test_damaged_cache_file_is_a_one_line_value_error(tiny, sample, tmp_path):
    model, tok = tiny
    outputs = llm.compute(model, tok, sample, 2, test_ids=np.arange(4), probe_layers="none")
    path = llm.save_text_outputs(tmp_path / "outputs-x.npz", outputs)
    data = path.read_bytes()
    for damaged in (data[:len(data) // 2], b"not a zip file at all", b""):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="delete the file to recompute") as e:
            llm.load_text_outputs(path)
        assert "outputs-x.npz" in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, cache.CacheUnreadable)
        assert cache.read_cache(path, llm.load_text_outputs) == (None, e.value.reason)
        assert e.value.reason.split(":")[0] in ("BadZipFile", "EOFError", "ValueError")
    assert cache.read_cache(tmp_path / "absent.npz", llm.load_text_outputs) == (None, None)
    llm.save_text_outputs(path, outputs)
    back, why = cache.read_cache(path, llm.load_text_outputs)
    assert why is None and np.array_equal(back.capture.attn, outputs.capture.attn)
    flip_in_member(path, "attn.npy")
    assert cache.read_cache(path, llm.load_text_outputs) == (None, "BadZipFile: Bad CRC-32 for file 'attn.npy'")


def test_missing_transformers_is_one_line(monkeypatch, tiny_llm_dir):
    for module in ("transformers", "huggingface_hub", "huggingface_hub.constants"):
        monkeypatch.setitem(sys.modules, module, None)           # import raises ModuleNotFoundError
    for call in (lambda: hf.load_tokenizer(str(tiny_llm_dir)), lambda: hf.load_config(str(tiny_llm_dir)),
                 lambda: hf.load_model(str(tiny_llm_dir), device="cpu"),
                 lambda: hf.hub_commit("EleutherAI/gpt-j-6b")):
        with pytest.raises(ValueError, match=r"pip install 'simkernel\[llm\]'"):
            call()


def test_download_hint_only_for_missing_files():
    hub = {"name": "gpt-j-6b", "id": "EleutherAI/gpt-j-6b", "local": False}
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        except LocalEntryNotFoundError as inner:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from inner
    except OSError as e:
        missing = str(hf._unavailable(hub, None, e))
    assert "not available offline" in missing and "hf download EleutherAI/gpt-j-6b" in missing
    other = str(hf._unavailable(hub, "float16", ValueError("Unrecognized model type 'foo' in config.json\nmore")))
    assert "download" not in other and "offline" not in other
    assert other == ("cannot load model 'EleutherAI/gpt-j-6b' (revision float16): ValueError: "
                     "Unrecognized model type 'foo' in config.json")


def test_prompt_errors_come_before_the_weights(tiny_llm_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the weights were loaded before the prompts were checked")

    monkeypatch.setattr(hf, "load_model", no_model)
    out = tmp_path / "run"
    base = ["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--out", out]
    for extra, fragments in (
            (["--n-demos", 48], ["48 demonstrations asked for", "offers only 47"]),
            (["--label-words", "Negative,Negatively"], ["share their first token"]),
            (["--n-demos", 40], ["more than max_length=1024"]),
            (["--probe-layers", "5"], ["probe layer 5 does not exist", "layers 0..1"])):
        r = run(base + extra)
        assert r.exit_code == 1, (extra, r.stderr)
        one_error_line(r, *fragments)
    assert not list(out.glob("*")) if out.exists() else True


def test_publish_removes_a_stale_figure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "probes.png").write_bytes(b"old")
    (out / "keep.txt").write_text("mine")
    written = publish(out, {"a.csv": lambda p: p.write_text("x")}, remove=("probes.png", "head_scores.png"))
    assert written == [out / "a.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "keep.txt"]


def test_probe_layers_auto_fits_the_budget():
    assert capture.probe_layer_list("auto", 2, 1000) == [0, 1]
    big = capture.probe_layer_list("auto", 28, capture.PROBE_BUDGET // 3)
    assert len(big) == 3 and 0 < big[0] and big[-1] < 27
    assert capture.probe_layer_list("none", 28, 1) == [] and capture.probe_layer_list("all", 3, 10**12) == [0, 1, 2]
    with pytest.raises(ValueError, match="layers 0..27"):
        capture.probe_layer_list([28], 28, 1)


def one_error_line(result, *fragments):
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    for f in fragments:
        assert f in err[0], err[0]


def test_missing_hub_model_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_VERBOSITY="error")
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "simkernel.cli", "llm", "--model", "gpt-j-6b", "--data", str(SAMPLE),
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    # GPT-J's main branch holds 24 GiB of float32 weights: the hint names the float16 branch
    one_error_line(p, "'EleutherAI/gpt-j-6b'", "not available offline",
                   "hf download EleutherAI/gpt-j-6b --revision float16", "run with --revision float16",
                   "HF_HOME", "--model")
    assert not list(out.glob("*.csv")) if out.exists() else True


def test_model_folder_without_a_tokenizer_is_one_line(tiny_llm_dir, tmp_path):
    """A folder holding only the model (no tokenizer files): transformers would build an empty
    tokenizer and every label word would "tokenize to nothing"; the error says what is missing."""
    import shutil

    folder = tmp_path / "model-only"
    folder.mkdir()
    for f in tiny_llm_dir.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, folder / f.name)
    r = run(["llm", "--model", folder, "--data", SAMPLE, "--out", tmp_path / "run"])
    assert r.exit_code == 1
    one_error_line(r, "has no tokenizer", "save_pretrained")


def test_bad_inputs_are_one_line(tiny_llm_dir, tmp_path):
    out = tmp_path / "run"
    r = run(["llm", "--model", tmp_path / "nope" / "model", "--data", SAMPLE, "--out", out])
    assert r.exit_code == 2
    one_error_line(r, "does not exist")
    r = run(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--text-column", "review", "--out", out])
    assert r.exit_code == 1
    one_error_line(r, "no column 'review'", "sentence")
    r = run(["llm", "--model", tiny_llm_dir, "--data", SAMPLE, "--label-words", "Good,Good", "--out", out])
    assert r.exit_code == 2
    one_error_line(r, "'Good' is given twice")
    bad = tmp_path / "bad.txt"
    bad.write_text("x\n")
    r = run(["llm", "--model", tiny_llm_dir, "--data", bad, "--out", out])
    assert r.exit_code == 1
    one_error_line(r, "unknown file type", ".csv")
    r = run(["llm", "--model", tiny_llm_dir, "--data", tmp_path / "absent.csv", "--out", out])
    assert r.exit_code == 2
    one_error_line(r, "absent.csv")
    r = run(["llm", "--model", tiny_llm_dir, "--task", "sst2", "--data", SAMPLE, "--out", out])
    assert r.exit_code == 2
    one_error_line(r, "--task")
    r = run(["llm", "--model", tiny_llm_dir, "--probe-layers", "x", "--data", SAMPLE, "--out", out])
    assert r.exit_code == 2
    one_error_line(r, "auto, all, none")
    r = run(["llm", "--model", tiny_llm_dir, "--n-demos", 0, "--data", SAMPLE, "--out", out])
    assert r.exit_code == 2
    one_error_line(r, "--n-demos", "integers >= 1")
    assert not out.exists()


def test_resolve_model_folders_aliases_hub_ids_and_bad_paths(tiny_llm_dir, tmp_path):
    where = hf.resolve_model(str(tiny_llm_dir))
    assert where["local"] and where["id"] == str(Path(tiny_llm_dir).resolve())
    assert hf.resolve_model("gpt-j-6b") == {"name": "gpt-j-6b", "id": "EleutherAI/gpt-j-6b", "local": False}
    assert hf.resolve_model("org/model")["id"] == "org/model"
    with pytest.raises(ValueError, match="does not exist"):
        hf.resolve_model(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        hf.resolve_model(str(tmp_path / "file"))


def test_cheap_names_agree_with_the_modules():
    """The CLI's --help reads task, mode and dtype names from simkernel.constants (no transformers
    import); they must be the ones textdata and hf implement."""
    from simkernel import constants, hf, textdata
    assert constants.TEXT_TASKS == tuple(textdata.TASKS)
    assert constants.DEMO_MODES == textdata.MODES and constants.LLM_DTYPES == hf.DTYPES
