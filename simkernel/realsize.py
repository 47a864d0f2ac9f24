"""Real-size model folders with random weights: what a published model costs, without downloads.

A model with the published configuration and random weights costs exactly what the trained
one costs in memory and time, so the figures of ``docs/guide/llm.md`` (GPT-J-6B on a text
task, any LM on a simulator world) can be measured on a machine that cannot download the
weights.  :func:`write_model_folder` writes a folder ``simkernel llm --model DIR`` loads like a
downloaded one:

- ``config.json``: the published configuration of :data:`PUBLISHED` (``gpt-j-6b``: 28 layers,
  n_embd 4096, 16 heads, rotary dim 64, vocabulary 50,400, 2048 positions; ``pythia-1.4b``: a
  GPT-NeoX with 24 layers, hidden size 2048, 16 heads, rotary fraction 0.25, vocabulary
  50,304), shrunk by ``scale`` (widths and layers; the same code path on a tiny folder);
- the weights, random (normal with the config's ``initializer_range``; layer-norm weights 1,
  biases 0) in bfloat16 or float16, written as safetensors shards of at most ``shard_bytes``
  with the index transformers reads.  The model is built on the meta device (no memory), and
  each tensor is materialised directly in the target dtype one shard at a time, so writing
  GPT-J-6B (12 GiB in bfloat16) never holds more than one shard, and never a float32 copy
  (24 GiB);
- tokenizer files: GPT-2's BPE files cannot be rebuilt offline (they are a download), so the
  folder holds a byte-level BPE in GPT-2's layout (:func:`gpt2_style_tokenizer`: the same
  pre-tokenizer, ``<|endoftext|>`` as BOS/EOS/PAD, no tokens added to inputs) trained here on
  the bundled sample texts and common English words.  Its vocabulary (a few thousand entries)
  is smaller than GPT-2's 50,257 and within the model's, so its prompts take somewhat more
  tokens than GPT-2's; time and memory are reported per token.

One line::

    python -m simkernel.realsize gpt-j-6b /tmp/gptj6b-random            # 12 GiB, bfloat16
    python -m simkernel.realsize pythia-1.4b /tmp/pythia14b --dtype float16
    python -m simkernel.realsize gpt-j-6b /tmp/gptj-small --scale 0.125  # same code, ~100 MB

torch, transformers, tokenizers and safetensors are imported inside the functions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: name -> (transformers config class, the published configuration)
PUBLISHED = {
    "gpt-j-6b": ("GPTJConfig", dict(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28, n_head=16,
                                    rotary_dim=64, n_inner=None, activation_function="gelu_new",
                                    layer_norm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=False)),
    "pythia-1.4b": ("GPTNeoXConfig", dict(vocab_size=50304, max_position_embeddings=2048, hidden_size=2048,
                                          num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192,
                                          rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                                          hidden_act="gelu", layer_norm_eps=1e-5, initializer_range=0.02,
                                          tie_word_embeddings=False)),
}
#: (width, layers, heads, rotary, inner) field names of each config class
_FIELDS = {"GPTJConfig": ("n_embd", "n_layer", "n_head", "rotary_dim", "n_inner"),
           "GPTNeoXConfig": ("hidden_size", "num_hidden_layers", "num_attention_heads", None, "intermediate_size")}
WEIGHT_DTYPES = ("bfloat16", "float16")
EOS = "<|endoftext|>"
#: default bytes per safetensors shard
SHARD_BYTES = 1 << 30


def scaled_fields(name: str, scale: float = 1.0) -> dict:
    """The published configuration of ``name`` with widths and layers multiplied by ``scale``
    (0 < scale <= 1): the width rounded to a multiple of 64 (at least 64), at least 2 layers, the
    published head count unless heads would be narrower than 16 (then width // 32 heads, at least 2),
    the rotary dimension at most the head size; the vocabulary and the context are kept."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(PUBLISHED)}")
    scale = float(scale)
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1]; got {scale}")
    cls, fields = PUBLISHED[name]
    kw = dict(fields)
    if scale == 1:
        return kw
    width_f, layers_f, heads_f, rot_f, inner_f = _FIELDS[cls]
    width = max(64, int(round(kw[width_f] * scale / 64)) * 64)
    heads = kw[heads_f] if width // kw[heads_f] >= 16 else max(2, width // 32)
    kw.update({width_f: width, layers_f: max(2, int(round(kw[layers_f] * scale))), heads_f: heads})
    if rot_f is not None:
        kw[rot_f] = min(kw[rot_f], width // heads)
    if kw.get(inner_f) is not None:
        kw[inner_f] = 4 * width
    return kw


def real_config(name: str, scale: float = 1.0, dtype: str = "bfloat16", tokenizer=None):
    """The transformers config of :func:`scaled_fields` (``dtype`` recorded as the weights'
    dtype; BOS/EOS/PAD ids of ``tokenizer`` when given)."""
    import transformers

    cls, _ = PUBLISHED[name] if name in PUBLISHED else (None, None)
    kw = scaled_fields(name, scale)
    if tokenizer is not None:
        kw.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    cfg = getattr(transformers, cls)(**kw)
    cfg.dtype = dtype
    return cfg


def training_texts() -> list[str]:
    """What :func:`gpt2_style_tokenizer` is trained on: the bundled sample sentences, prompts
    built from them (template words and label words become tokens) and lines of
    ``render.COMMON_WORDS`` (one-token words for the simulator worlds), a fixed list."""
    from . import textdata
    from .render import COMMON_WORDS

    texts = []
    for name, col in (("sentiment_sample.jsonl", "text"), ("sst2_sample.tsv", "sentence")):
        ds = textdata.load_local(textdata.sample_data_path(name), col, "label", ["Negative", "Positive"])
        texts += list(ds.texts)
        texts += [textdata.prompt_text(ds, i, [(i + 1) % len(ds), (i + 2) % len(ds)]) for i in range(len(ds))]
    words = sorted({w for t in textdata.TASKS.values() for w in t.label_words})
    texts += [" ".join(f"Premise: a Hypothesis: b Input: c Output: {w}" for w in words)] * 20
    texts += [" ".join(COMMON_WORDS[j:] + COMMON_WORDS[:j]) for j in range(0, len(COMMON_WORDS), 7)] * 4
    return texts


def gpt2_style_tokenizer(vocab_size: int = 8192):
    """A byte-level BPE ``PreTrainedTokenizerFast`` in GPT-2's layout (ByteLevel pre-tokenizer
    without a prefix space, ``<|endoftext|>`` as BOS, EOS and PAD, nothing added to inputs),
    trained deterministically on :func:`training_texts`; at most ``vocab_size`` entries (the
    small corpus gives fewer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   clean_up_tokenization_spaces=False)


def _init_tensor(name: str, shape, dtype, gen, std: float):
    """One tensor materialised in ``dtype``: biases 0, 1-d norm weights 1, the rest N(0, std²)."""
    import torch

    t = torch.empty(shape, dtype=dtype)
    if name.endswith("bias"):
        return t.zero_()
    if len(shape) == 1:
        return t.fill_(1.0)
    return t.normal_(0.0, std, generator=gen)


def _shards(specs, shard_bytes: int):
    """Group (name, shape, dtype) specs into lists of at most ``shard_bytes`` (one tensor may exceed it)."""
    group, size = [], 0
    for spec in specs:
        n = spec[3]
        if group and size + n > shard_bytes:
            yield group
            group, size = [], 0
        group.append(spec)
        size += n
    if group:
        yield group


def write_weights(config, folder, dtype: str = "bfloat16", seed: int = 0, shard_bytes: int = SHARD_BYTES) -> dict:
    """Random weights for ``config`` as safetensors shards in ``folder`` (plus
    ``model.safetensors.index.json`` when there are several), built on the meta device and
    materialised in ``dtype`` one shard at a time.  Returns ``{"parameters", "bytes", "shards"}``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder, dt = Path(folder), getattr(torch, dtype)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=dt)
    specs = [(k, tuple(v.shape), dt, v.numel() * v.element_size()) for k, v in meta.state_dict().items()]
    del meta
    groups = list(_shards(specs, shard_bytes))
    gen = torch.Generator().manual_seed(int(seed))
    std = float(getattr(config, "initializer_range", 0.02))
    names = ["model.safetensors"] if len(groups) == 1 else \
        [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for fname, group in zip(names, groups):
        tensors = {k: _init_tensor(k, shape, d, gen, std) for k, shape, d, _ in group}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in tensors})
        del tensors
    total = sum(s[3] for s in specs)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return {"parameters": sum(int(torch.Size(s[1]).numel()) for s in specs), "bytes": total, "shards": len(groups)}


def write_model_folder(name: str, folder, *, dtype: str = "bfloat16", scale: float = 1.0, seed: int = 0,
                       shard_bytes: int = SHARD_BYTES, overwrite: bool = False) -> dict:
    """Write a ``from_pretrained`` folder of model ``name`` (:data:`PUBLISHED`) with random
    weights in ``dtype`` (bfloat16 or float16) and the :func:`gpt2_style_tokenizer`: config,
    tokenizer files, safetensors shards (module docstring).  ``scale`` < 1 shrinks widths and
    layers (:func:`scaled_fields`).  A non-empty ``folder`` is a one-line ValueError unless
    ``overwrite``.  Returns ``{"folder", "name", "dtype", "scale", "parameters", "bytes",
    "shards", "vocab"}``."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not a weight dtype here; allowed: {', '.join(WEIGHT_DTYPES)}")
    scaled_fields(name, scale)                                  # one-line errors first
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not overwrite)):
        raise ValueError(f"{str(folder)!r} exists and is not an empty folder; give a new folder (or overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    tok = gpt2_style_tokenizer()
    config = real_config(name, scale, dtype, tok)
    if len(tok) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens, more than the model's {config.vocab_size}")
    tok.save_pretrained(folder)
    config.save_pretrained(folder)
    info = write_weights(config, folder, dtype, seed, shard_bytes)
    return dict(folder=str(folder), name=name, dtype=dtype, scale=float(scale), vocab=len(tok), **info)


def main(argv=None) -> int:
    """``python -m simkernel.realsize NAME FOLDER [--dtype bfloat16|float16] [--scale S] [--seed N]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m simkernel.realsize",
                                 description="Write a model folder with a published configuration and random weights.")
    ap.add_argument("name", choices=sorted(PUBLISHED))
    ap.add_argument("folder")
    ap.add_argument("--dtype", choices=WEIGHT_DTYPES, default="bfloat16")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink widths and layers (0 < scale <= 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    try:
        info = write_model_folder(a.name, a.folder, dtype=a.dtype, scale=a.scale, seed=a.seed, overwrite=a.overwrite)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['folder']}: {info['name']} x{info['scale']:g}, {info['parameters'] / 1e9:.3f} B "
          f"parameters, {info['bytes'] / 2**30:.2f} GiB {info['dtype']} in {info['shards']} shard(s), tokenizer {info['vocab']} tokens")
    return 0


if __name__ == "__main__":                       # pragma: no cover
    sys.exit(main())
