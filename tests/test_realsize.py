"""Real-size model folders (``simkernel.realsize``), the memory estimate of ``simkernel llm``
(``hf.memory_plan``) and its one-line refusal when the model does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import run

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from simkernel import hf, realsize  # noqa: E402
from simkernel.textdata import sample_data_path  # noqa: E402

#: a GPT-J-6B shrunk to width 64, 2 layers, 2 heads (rotary 32), vocabulary 50,400 kept
TINY = 1 / 64


def loaded_bytes(model) -> int:
    """What the loaded model holds: parameters and buffers, each counted once."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@pytest.fixture(scope="module")
def gptj_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realsize") / "gptj"
    # small shards: the sharded layout (index + several files) of the real 12 GiB folder
    info = realsize.write_model_folder("gpt-j-6b", folder, dtype="bfloat16", scale=TINY, shard_bytes=4 << 20)
    return folder, info


def test_scaled_fields_keep_the_published_shape():
    full = realsize.scaled_fields("gpt-j-6b")
    assert (full["n_layer"], full["n_embd"], full["n_head"], full["rotary_dim"], full["vocab_size"],
            full["n_positions"]) == (28, 4096, 16, 64, 50400, 2048)
    small = realsize.scaled_fields("gpt-j-6b", TINY)
    assert (small["n_layer"], small["n_embd"], small["n_head"], small["rotary_dim"]) == (2, 64, 2, 32)
    assert small["vocab_size"] == 50400
    neox = realsize.scaled_fields("pythia-1.4b", 0.25)
    assert (neox["num_hidden_layers"], neox["hidden_size"], neox["intermediate_size"]) == (6, 512, 2048)


def test_published_parameter_count():
    """The full GPT-J-6B config, counted on the meta device (nothing allocated): 6.05 B parameters."""
    cfg = realsize.real_config("gpt-j-6b")
    assert abs(hf.weight_bytes(cfg, "bfloat16") / 2 - 6.05e9) < 0.01e9


def test_the_helper_writes_a_loadable_folder(gptj_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, info = gptj_dir
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert info["shards"] > 1 and len(set(index["weight_map"].values())) == info["shards"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert model.config.model_type == "gptj" and model.config.n_layer == 2 and model.config.vocab_size == 50400
    assert len(tok) <= model.config.vocab_size and tok.eos_token == realsize.EOS
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    w = model.transformer.h[0].attn.q_proj.weight.detach().float()
    assert 0.015 < float(w.std()) < 0.025                          # N(0, 0.02²)
    assert float(model.transformer.h[0].ln_1.weight.detach().float().min()) == 1.0
    ids = torch.tensor([tok.encode(" the cat and the dog")])
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert torch.isfinite(out.float()).all()
    # the simulator-world renderer finds one-token words in the GPT-2-style vocabulary
    assert [tok.convert_ids_to_tokens(tok.encode(w)) for w in (" the", " and", "\n")] == [["Ġthe"], ["Ġand"], ["Ċ"]]


def test_pythia_like_folder_float16(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    info = realsize.write_model_folder("pythia-1.4b", tmp_path / "neox", dtype="float16", scale=TINY)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "neox", dtype=torch.float16)
    assert model.config.model_type == "gpt_neox" and info["shards"] == 1
    assert next(model.parameters()).dtype == torch.float16


def test_helper_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        realsize.write_model_folder("gpt-5", tmp_path / "a")
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        realsize.write_model_folder("gpt-j-6b", tmp_path / "a", scale=2)
    with pytest.raises(ValueError, match="allowed: bfloat16, float16"):
        realsize.write_model_folder("gpt-j-6b", tmp_path / "a", dtype="float32")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert realsize.main(["gpt-j-6b", str(tmp_path / "full"), "--scale", str(TINY)]) == 2
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["x"]


def test_one_liner(tmp_path):
    p = subprocess.run([sys.executable, "-m", "simkernel.realsize", "gpt-j-6b", str(tmp_path / "m"), "--scale",
                        str(TINY)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {tmp_path / 'm'}: gpt-j-6b") and (tmp_path / "m" / "model.safetensors").is_file()


# ---------------------------------------------------------------------- the memory estimate
@pytest.mark.parametrize("which", ["gptj-realsize", "tiny-gptj", "tiny-llama"])
def test_weight_estimate_matches_the_loaded_model(which, gptj_dir, tiny_llm_dir, tmp_path):
    """The estimate printed before loading (weights from the config and dtype) against the bytes
    the loaded model holds: within 10% (exact up to buffers the loader leaves out)."""
    if which == "gptj-realsize":
        folder, dtype = gptj_dir[0], "bfloat16"
    elif which == "tiny-gptj":
        folder, dtype = tiny_llm_dir, "float32"
    else:
        from llm_helpers import make_tiny_llama_dir

        folder, dtype = make_tiny_llama_dir(tmp_path / "llama"), "float32"
    plan = hf.memory_plan(hf.load_config(str(folder)), dtype, "cpu", batch_size=2, tokens=64)
    model, _ = hf.load_model(str(folder), dtype=dtype, device="cpu")
    measured = loaded_bytes(model)
    assert abs(plan["weights"] - measured) <= 0.1 * measured
    assert plan["total"] == plan["weights"] + plan["forward"] + plan["capture"] + plan["probes"]


def test_weight_estimate_matches_rss_growth(gptj_dir, tmp_path):
    """The same estimate against the resident memory the loaded weights take in a fresh process
    (every weight touched once): within 10%, on a realsize folder of about 100 MiB."""
    folder = tmp_path / "m"
    realsize.write_model_folder("gpt-j-6b", folder, scale=0.125)
    code = textwrap.dedent(f"""
        import json, torch
        from simkernel import hf

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        plan = hf.memory_plan(hf.load_config({str(folder)!r}), "bfloat16", "cpu", batch_size=1, tokens=8)
        r0 = rss()
        model, _ = hf.load_model({str(folder)!r}, dtype="bfloat16", device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.view(-1)[::512].float().sum()          # touch every page once
                p.view(-1)[-1].float()
        print(json.dumps({{"weights": plan["weights"], "growth": rss() - r0}}))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["weights"] > 90 << 20
    assert abs(r["growth"] - r["weights"]) <= 0.1 * r["weights"], r


@pytest.mark.parametrize("branch", ["text", "world"])
def test_memory_line_before_loading(branch, gptj_dir, tmp_path, monkeypatch):
    """Both branches run end to end on the real-size folder's code path and print the estimate first."""
    monkeypatch.setenv("SIMKERNEL_PROGRESS", "plain")
    args = ["llm", "--model", gptj_dir[0], "--dtype", "bf16", "--device", "cpu", "--out", tmp_path / "run"]
    if branch == "text":
        args += ["--data", sample_data_path("sst2_sample.tsv"), "--n-examples", "4", "--n-demos", "1",
                 "--n-select", "2", "--n-report", "2", "--probe-layers", "none"]
    else:
        args += ["--preset", "random", "--n-demos", "0,1"]
    res = run(args)
    assert res.exit_code == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("memory:")]
    assert len(lines) == 1 and "weights" in lines[0] and "bfloat16" in lines[0] and "host RAM" in lines[0]
    assert "gptj, 2 layers x 2 heads, bfloat16" in res.stdout
    if branch == "text":       # printed before the weights are loaded: before the first forward pass's progress
        assert res.stderr.index("memory:") < res.stderr.index("texts alone")


# ---------------------------------------------------------------------- too little memory
@pytest.mark.parametrize("branch", ["text", "world"])
def test_not_enough_memory_is_one_line_exit_2_nothing_written(branch, gptj_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "host_available_bytes", lambda: 1 << 20)          # 1 MiB available
    out = tmp_path / "run"
    args = ["llm", "--model", gptj_dir[0], "--device", "cpu", "--out", out]
    if branch == "text":
        args += ["--data", sample_data_path("sst2_sample.tsv"), "--n-examples", "4", "--n-demos", "1"]
    else:
        args += ["--preset", "random", "--n-demos", "0,1"]
    res = run(args)
    assert res.exit_code == 2, res.output + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the model needs about "), res.stderr
    assert "1.0 MiB of host RAM is available" in lines[0] and "--dtype bfloat16" in lines[0]
    assert "--device-map auto" in lines[0] and res.stdout == ""
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_check_memory_unit(monkeypatch):
    plan = {"weights": 12 << 30, "forward": 1 << 20, "capture": 0, "probes": 0, "total": (12 << 30) + (1 << 20),
            "device": "cpu", "dtype": "bfloat16"}
    hf.check_memory(plan, device_map="auto")                   # accelerate places the layers: not checked
    monkeypatch.setattr(hf, "host_available_bytes", lambda: 20 << 30)
    hf.check_memory(plan)
    monkeypatch.setattr(hf, "host_available_bytes", lambda: 8 << 30)
    with pytest.raises(ValueError, match=r"needs about 12.00 GiB \(weights 12.00 GiB bfloat16\) but only "
                                         r"8.00 GiB of host RAM"):
        hf.check_memory(plan)
    monkeypatch.setattr(hf, "host_available_bytes", lambda: None)   # unknown: not checked
    hf.check_memory(plan)
    assert hf.memory_line(plan).startswith("memory: needs about 12.00 GiB (weights 12.00 GiB bfloat16")
