"""The capture against transformers' own eager attention (one example at a time, no padding)
for three architectures: attention rows, label log-probabilities, keys and values at the label
offsets, the memory of one row per layer, and the probed layers carried into the analysis.
The end-to-end runs on a trained model live in test_alignment."""

from __future__ import annotations

import numpy as np
import pytest

from simkernel.analysis import analyse
from simkernel.capture import capture, forward_labels
from simkernel.prompts import Example, collate


def _tiny_models():
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(bos_token_id=None, eos_token_id=None)
    return {
        "gptj": tr.GPTJForCausalLM(tr.GPTJConfig(vocab_size=40, n_embd=32, n_head=4, n_layer=2, rotary_dim=8,
                                                 n_positions=64, **common)),
        "llama-gqa": tr.LlamaForCausalLM(tr.LlamaConfig(vocab_size=40, hidden_size=32, num_attention_heads=4,
                                                        num_key_value_heads=2, num_hidden_layers=2,
                                                        intermediate_size=64, max_position_embeddings=64,
                                                        pad_token_id=None, **common)),
        "gpt2": tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=40, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                                                 **common)),
    }


@pytest.fixture(scope="module")
def tiny_models():
    return {k: m.eval() for k, m in _tiny_models().items()}


def _ragged_batch(seed=0):
    rng = np.random.default_rng(seed)
    ex = []
    for T in (9, 14, 11, 14):
        n = 2
        spans = np.array([[0, 3], [4, 7]])
        ex.append(Example(rng.integers(1, 40, T), spans, spans[:, 1] - 1, rng.integers(0, 3, n), 1))
    return ex, collate(ex, [5, 6, 7], pad_id=0)


@pytest.mark.parametrize("name", ["gptj", "llama-gqa", "gpt2"])
def test_captured_rows_equal_eager_attention_one_by_one(tiny_models, name):
    """The batched, left-padded capture equals transformers' eager ``output_attentions`` last row
    of each prompt run alone — an independent computation of the same attention."""
    import torch

    model = tiny_models[name]
    ex, batch = _ragged_batch()
    cap = capture(model, batch, offsets=[-1, 0, 1], batch_size=3)
    assert model.config._attn_implementation == "sdpa"                 # restored afterwards
    T = batch.input_ids.shape[1]
    model.set_attn_implementation("eager")
    try:
        for i, e in enumerate(ex):
            with torch.no_grad():
                out = model(input_ids=torch.as_tensor(e.input_ids)[None], output_attentions=True)
            ref = torch.stack([a[0, :, -1] for a in out.attentions]).numpy()           # (L, H, t)
            t = len(e.input_ids)
            np.testing.assert_allclose(cap.attn[i, :, :, T - t:], ref, atol=2e-6)
            assert np.all(cap.attn[i, :, :, :T - t] == 0)
            lp = torch.log_softmax(out.logits[0, -1].double(), -1)[[5, 6, 7]].numpy()
            np.testing.assert_allclose(cap.label_logp[i], lp, atol=1e-5)
    finally:
        model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(cap.label_logp, forward_labels(model, batch, batch_size=2), atol=1e-5)


def test_keys_and_values_are_read_at_the_label_offsets(tiny_models):
    """The captured value vectors equal v_proj of the layer's input at label_pos + offset,
    taken from the hidden states transformers returns (GPT-J, no padding)."""
    import torch

    model = tiny_models["gptj"]
    ex, _ = _ragged_batch(seed=2)
    batch = collate(ex[:1], [5, 6, 7])
    cap = capture(model, batch, offsets=[-1, 0, 1])
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(batch.input_ids), output_hidden_states=True)
    layer = 1
    blk = model.transformer.h[layer]
    with torch.no_grad():
        v = blk.attn.v_proj(blk.ln_1(out.hidden_states[layer]))[0].view(-1, 4, 8).numpy()    # (T, H, d)
    for i, p in enumerate(batch.label_pos[0]):
        for j, o in enumerate([-1, 0, 1]):
            np.testing.assert_allclose(cap.values[0, i, j, layer], v[p + o], atol=1e-5)


def test_capture_memory_is_one_row_per_layer_and_offsets_are_checked(tiny_models):
    ex, batch = _ragged_batch()
    cap = capture(tiny_models["gpt2"], batch)
    assert cap.attn.shape == (4, 2, 4, batch.input_ids.shape[1]) and cap.keys is None
    np.testing.assert_allclose(cap.attn.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="offsets .* reach outside some prompt"):
        capture(tiny_models["gpt2"], batch, offsets=[0, 40])


def test_probe_rows_carry_the_model_layer_when_only_some_layers_are_kept(tiny_models):
    ex, _ = _ragged_batch(seed=5)
    batch = collate(ex * 3, [5, 6, 7])
    cap = capture(tiny_models["gptj"], batch, offsets=[0, 1], layers=[1])
    assert cap.keys.shape[3] == 1 and cap.layers.tolist() == [1]
    res = analyse(cap, batch, n_select=8, n_report=4)
    assert {r["layer"] for r in res.probes} == {1}
    assert {(r["vector"], r["target"]) for r in res.probes} == {("values", "label")}
