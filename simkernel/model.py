"""Small decoder-only transformers (Hugging Face GPT-J) trained on a world's documents.

The vocabulary is the world's V symbols and nothing else: a document is a sequence of symbol
ids, fed to the model as-is (no BOS, no padding).  Presets:

    tiny     2 layers, d_model  64,  4 heads, context  256   tests and CI
    cpu      4 layers, d_model 128,  4 heads, context  512   the CPU default
    ginc-4   4 layers, d_model 768, 12 heads, context 1024   GINC-sized (Xie et al. 2022), GPU
    ginc-12 12 layers, d_model 768, 12 heads, context 1024
    ginc-16 16 layers, d_model 768, 12 heads, context 1024

Dropout is off (the corpora are large relative to these models; it also keeps a training
run a deterministic function of its seed).  Attention uses ``sdpa`` for training; pass
``attn_implementation="eager"`` to :func:`build_model` / :func:`load_model` when the
attention weights are needed (transformers' sdpa path returns no attention weights).

This module imports torch and transformers at import time: only ``train`` and the CLI's
``train`` command import it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPTJConfig, GPTJForCausalLM

#: name -> (n_layer, n_embd, n_head, n_positions)
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=256),
    "cpu": dict(n_layer=4, n_embd=128, n_head=4, n_positions=512),
    "ginc-4": dict(n_layer=4, n_embd=768, n_head=12, n_positions=1024),
    "ginc-12": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
    "ginc-16": dict(n_layer=16, n_embd=768, n_head=12, n_positions=1024),
}

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def model_config(preset: str, vocab_size: int, **overrides) -> GPTJConfig:
    """The GPTJConfig of a preset for a vocabulary of ``vocab_size`` symbols.  ``overrides``
    replace preset entries (n_layer, n_embd, n_head, n_positions) or set any GPTJConfig field."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; allowed: {', '.join(MODEL_PRESETS)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    opts = dict(MODEL_PRESETS[preset])
    opts.update(overrides)
    n_embd, n_head = int(opts["n_embd"]), int(opts["n_head"])
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    head_dim = n_embd // n_head
    base = dict(vocab_size=vocab_size, rotary_dim=head_dim, n_inner=4 * n_embd,
                activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                initializer_range=0.02, tie_word_embeddings=False, use_cache=False,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    base.update(opts)
    return GPTJConfig(**base)


def _available(attn_implementation: str) -> str:
    """``sdpa`` where this transformers' GPT-J supports it, else ``eager`` (the same numbers,
    slower): GPT-J gained sdpa only in transformers 5.24."""
    return attn_implementation if GPTJForCausalLM._supports_sdpa or attn_implementation != "sdpa" else "eager"


def build_model(preset: str, vocab_size: int, *, attn_implementation: str = "sdpa",
                **overrides) -> GPTJForCausalLM:
    """A freshly initialised GPT-J of the preset (float32, on the CPU; torch's global RNG
    draws the initial weights, so seed it first for a reproducible model)."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attn_implementation {attn_implementation!r}; allowed: "
                         f"{', '.join(ATTN_IMPLEMENTATIONS)}")
    cfg = model_config(preset, vocab_size, **overrides)
    cfg._attn_implementation = _available(attn_implementation)
    model = GPTJForCausalLM(cfg)
    return model.float()


def context_length(model) -> int:
    """The longest input the model accepts (its n_positions)."""
    return int(model.config.n_positions)


def save_model(model, folder) -> Path:
    """``save_pretrained`` into ``folder`` (config.json + model.safetensors)."""
    folder = Path(folder)
    model = getattr(model, "module", model)          # unwrap DDP
    model = getattr(model, "_orig_mod", model)       # unwrap torch.compile
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def load_model(folder, *, attn_implementation: str = "sdpa", device="cpu") -> GPTJForCausalLM:
    """A model saved by :func:`save_model` (or any GPT-J folder), float32, in eval mode."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attn_implementation {attn_implementation!r}; allowed: "
                         f"{', '.join(ATTN_IMPLEMENTATIONS)}")
    model = GPTJForCausalLM.from_pretrained(Path(folder), attn_implementation=_available(attn_implementation),
                                            dtype=torch.float32)
    return model.to(device).eval()


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
