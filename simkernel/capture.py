"""Attention capture from any Hugging Face causal LM: the final position's attention row in
every layer and head, the label log-probabilities, and keys / values at chosen offsets around
each demonstration's label.

One implementation for the small GPT-J models trained here and GPT-J-6B alike, so it knows
nothing of the simulator: prompts arrive as a :class:`~simkernel.prompts.PromptBatch`, and
``analysis`` reads the arrays a :class:`Capture` holds.

torch and transformers are imported inside the functions that need them, so importing this
module (and reading a cached :class:`Capture`) costs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .prompts import PromptBatch


#: the attention implementation registered with transformers while capturing
CAPTURE_IMPLEMENTATION = "simkernel_final_row"


@dataclass
class Capture:
    """What one pass over a :class:`PromptBatch` recorded.

    attn         (B, L, H, T) float32  attention of the final position over every position, per
                                       layer and head (0 on padding); rows sum to 1
    label_logp   (B, C) float64        log P(label token c | prompt) at the final position, over
                                       the whole vocabulary (not renormalised over the labels)
    keys, values (B, n, O, L, Hkv, d) float32 or None: the attention key / value vectors at
                                       ``label_pos + offset`` for each offset in ``offsets``
                                       (rotary applied to keys, as the attention sees them);
                                       Hkv < H for grouped-query models (head h reads kv
                                       head h // (H // Hkv))
    offsets      (O,) int64
    layers       (L',) int64: the model layers the keys / values axis holds (all by default)
    """

    attn: np.ndarray
    label_logp: np.ndarray
    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    offsets: np.ndarray | None = None
    layers: np.ndarray | None = None

    @property
    def label_probs(self) -> np.ndarray:
        """(B, C) the label distribution renormalised over the C label tokens."""
        return label_distribution(self.label_logp)

    @property
    def prediction(self) -> np.ndarray:
        """(B,) the model's own prediction: the class whose label token is most probable (ties:
        the lowest class; scoring uses :attr:`label_probs`, tie-fair, never this)."""
        return self.label_logp.argmax(-1)


def label_distribution(label_logp: np.ndarray) -> np.ndarray:
    """(..., C) log P(label token) over the whole vocabulary -> the distribution over the C
    labels (renormalised)."""
    z = label_logp - label_logp.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


class _Recorder:
    """Receives each layer's query / key / value from the registered attention function."""

    def __init__(self, positions=None, layers=None):
        self.positions = positions      # torch (B, P) long or None: where to keep keys / values
        self.layers = layers            # the layers whose keys / values are kept (None: all)
        self.rows: dict[int, object] = {}
        self.keys: dict[int, object] = {}
        self.values: dict[int, object] = {}

    def record(self, layer, query, key, value, mask, scaling):
        import torch

        h, hkv = query.shape[1], key.shape[1]
        k = key if h == hkv else key.repeat_interleave(h // hkv, dim=1)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        # the final query row only: (B, H, T) scores, never the T x T map
        # K q (not q K^T): no transposed copy of K
        s = torch.matmul(k.float(), query[:, :, -1, :, None].float())[..., 0] * scaling
        if mask is not None:
            last = mask[:, :, -1, :]
            s = s.masked_fill(~last, float("-inf")) if last.dtype == torch.bool else s + last.float()
        self.rows[layer] = torch.softmax(s, dim=-1).cpu()
        if self.positions is not None and (self.layers is None or layer in self.layers):
            idx = self.positions[:, None, :, None].expand(-1, hkv, -1, key.shape[-1])
            self.keys[layer] = torch.gather(key, 2, idx).float().cpu()        # (B, Hkv, P, d)
            self.values[layer] = torch.gather(value, 2, idx).float().cpu()


# the registered attention function is global to transformers: it finds the recorder of the
# capture in progress here (none outside capture, where it is plain sdpa)
_ACTIVE: list[_Recorder] = []


def _attention(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: the output from sdpa, the final row on the side."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap"):
        # sdpa has no logit soft-capping: its output (and the row) would not be the model's
        raise ValueError(f"{type(module).__name__} soft-caps its attention logits; simkernel's capture "
                         f"(sdpa plus the final row) supports models without soft-capping")
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if _ACTIVE:
        _ACTIVE[-1].record(module.layer_idx, query, key, value, attention_mask, kwargs.get("scaling"))
    return out


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _attention)
    # a registered attention needs a mask function too, or padded batches get no mask at all
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def _position_ids(mask):
    """Positions that ignore left padding, so a padded row sees what it would see alone."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:       # pragma: no cover - a model without parameters
        import torch
        return torch.device("cpu")


def forward_labels(model, batch: PromptBatch, batch_size: int = 8, progress=None) -> np.ndarray:
    """(B, C) log P(label token | prompt) at the final position from a plain forward pass (the
    model's own attention implementation, nothing captured): the baseline that
    :func:`capture` is checked and benchmarked against."""
    import torch

    dev = _model_device(model)
    out = np.empty((len(batch), batch.n_classes))
    lab = torch.tensor(batch.label_tokens, device=dev)
    with torch.no_grad():
        for a in range(0, len(batch), batch_size):
            part = batch.subset(np.arange(a, min(a + batch_size, len(batch))))
            ids = torch.as_tensor(part.input_ids, device=dev)
            mask = torch.as_tensor(part.attention_mask, device=dev)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask),
                           logits_to_keep=1).logits[:, -1].float()
            out[a:a + len(part)] = torch.log_softmax(logits, -1)[:, lab].double().cpu().numpy()
            if progress is not None:
                progress(len(part))
    return out


def capture(model, batch: PromptBatch, offsets=None, batch_size: int = 8, layers=None,
            progress=None) -> Capture:
    """Run ``model`` over ``batch`` and record the final position's attention row in every
    layer and head, the label log-probabilities and, when ``offsets`` is given (e.g. -1..3),
    the key and value vectors at ``label_pos + offset`` of every demonstration.

    Works for any Hugging Face model whose attention goes through transformers'
    ``AttentionInterface`` (GPT-J, GPT-2, GPT-NeoX/Pythia, Llama, ... in transformers 5): while
    capturing, the model's attention is sdpa for the output plus the final row computed
    explicitly (softmax(q_T K^T · scale + mask)), so memory grows by one (B, H, T) row per
    layer, never by T x T maps.  ``layers`` limits which layers keep keys / values (all by
    default).  The model's attention implementation is restored afterwards.
    """
    import torch

    offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64).reshape(-1)
    if offsets is not None and len(batch):
        first = batch.input_ids.shape[1] - batch.attention_mask.sum(1, keepdims=True)    # (B, 1)
        if ((batch.label_pos + offsets.min() < first).any()
                or (batch.label_pos + offsets.max() >= batch.input_ids.shape[1]).any()):
            raise ValueError(f"offsets {offsets.tolist()} around the label positions reach outside "
                             f"some prompt; allowed: offsets that stay within every prompt")
    if not getattr(type(model), "_supports_attention_backend", False):
        # older transformers (GPT-J before 5.24) hard-wire their attention: nothing to hook
        import transformers
        raise ValueError(f"{type(model).__name__} does not route its attention through transformers' "
                         f"AttentionInterface in transformers {transformers.__version__}, so its attention rows "
                         f"cannot be captured; allowed: transformers >= 5.24 (pip install 'transformers>=5.24')")
    _register()
    cfg = model.config
    old = getattr(cfg, "_attn_implementation", None) or "eager"
    dev = _model_device(model)
    B, T = batch.input_ids.shape
    attn = keys = values = None
    label_logp = np.empty((B, batch.n_classes))
    lab = torch.tensor(batch.label_tokens, device=dev)
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    try:
        with torch.no_grad():
            for a in range(0, B, batch_size):
                rows = np.arange(a, min(a + batch_size, B))
                part = batch.subset(rows)
                t = part.input_ids.shape[1]
                ids = torch.as_tensor(part.input_ids, device=dev)
                mask = torch.as_tensor(part.attention_mask, device=dev)
                pos = None
                if offsets is not None:
                    p = part.label_pos[:, :, None] + offsets[None, None, :]          # (b, n, O)
                    pos = torch.as_tensor(p.reshape(len(rows), -1), device=dev)
                rec = _Recorder(pos, None if layers is None else set(layers))
                _ACTIVE.append(rec)
                try:
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask),
                                   logits_to_keep=1).logits[:, -1].float()
                finally:
                    _ACTIVE.pop()
                if not rec.rows:
                    raise RuntimeError(f"{type(model).__name__} does not route attention through "
                                       f"transformers' AttentionInterface; cannot capture attention")
                L = len(rec.rows)
                H = rec.rows[0].shape[1]
                if attn is None:
                    attn = np.zeros((B, L, H, T), dtype=np.float32)
                attn[rows, :, :, T - t:] = torch.stack([rec.rows[i] for i in range(L)], 1).numpy()
                label_logp[rows] = torch.log_softmax(logits, -1)[:, lab].double().cpu().numpy()
                if offsets is not None:
                    keep = range(L) if layers is None else list(layers)
                    n, O = batch.n_demos, offsets.size
                    k0 = rec.keys[keep[0]]
                    if keys is None:
                        shape = (B, n, O, len(keep), k0.shape[1], k0.shape[-1])
                        keys, values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
                    for j, layer in enumerate(keep):
                        # (b, Hkv, n*O, d) -> (b, n, O, Hkv, d)
                        kk = rec.keys[layer].permute(0, 2, 1, 3).reshape(len(rows), n, O, k0.shape[1], -1)
                        vv = rec.values[layer].permute(0, 2, 1, 3).reshape(len(rows), n, O, k0.shape[1], -1)
                        keys[rows, :, :, j] = kk.numpy()
                        values[rows, :, :, j] = vv.numpy()
                if progress is not None:
                    progress(len(rows))
    finally:
        model.set_attn_implementation(old)
    kept = None
    if offsets is not None:
        kept = np.arange(attn.shape[1]) if layers is None else np.asarray(list(layers), dtype=np.int64)
    return Capture(attn, label_logp, keys, values, offsets, kept)
