"""Attention capture from any Hugging Face causal LM: the final position's attention row in
every layer and head, the label log-probabilities, and keys / values at chosen offsets around
each demonstration's label.

One implementation for the small GPT-J models trained here and GPT-J-6B alike, so it knows
nothing of the simulator: prompts arrive as a :class:`~simkernel.prompts.PromptBatch`, and
``analysis`` reads the arrays a :class:`Capture` holds.  Beside the capture, the model-side
pieces both LLM branches share: label log-probabilities with the prompts run longest first
(:func:`forward_labels_by_length`), per-token log-probabilities of whole documents
(:func:`token_logprobs`), and which layers' keys and values fit in memory
(:func:`probe_layer_list`, :data:`PROBE_BUDGET`).

torch and transformers are imported inside the functions that need them, so importing this
module (and reading a cached :class:`Capture`) costs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .analysis import PROBE_OFFSETS

if TYPE_CHECKING:
    from .prompts import PromptBatch


#: the attention implementation registered with transformers while capturing
CAPTURE_IMPLEMENTATION = "simkernel_final_row"
#: bytes of float32 keys + values held in memory for the probes under ``probe_layers="auto"``
#: (``simkernel llm`` peaks at about 1.5x this; see ``llm``'s module docstring)
PROBE_BUDGET = 4 << 30


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


def model_device(model):
    """The ``torch.device`` of the model's first parameter (cpu for a model without any)."""
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

    dev = model_device(model)
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


def _require_offsets_inside(batch: PromptBatch, offsets) -> None:
    """A one-line ValueError when some ``label_pos + offset`` falls on padding or past the end."""
    if offsets is None or not len(batch):
        return
    first = batch.input_ids.shape[1] - batch.attention_mask.sum(1, keepdims=True)    # (B, 1)
    if ((batch.label_pos + offsets.min() < first).any()
            or (batch.label_pos + offsets.max() >= batch.input_ids.shape[1]).any()):
        raise ValueError(f"offsets {offsets.tolist()} around the label positions reach outside "
                         f"some prompt; allowed: offsets that stay within every prompt")


def _require_attention_backend(model) -> None:
    """A one-line ValueError when ``model``'s attention does not go through transformers'
    AttentionInterface (nothing to record the final row from)."""
    if not getattr(type(model), "_supports_attention_backend", False):
        # older transformers (GPT-J before 5.24) hard-wire their attention: nothing to hook
        import transformers
        raise ValueError(f"{type(model).__name__} does not route its attention through transformers' "
                         f"AttentionInterface in transformers {transformers.__version__}, so its attention rows "
                         f"cannot be captured; allowed: transformers >= 5.24 (pip install 'transformers>=5.24')")


def _kept_vectors(rec: _Recorder, keep, n: int, O: int):
    """(keys, values), each (b, n, O, len(keep), Hkv, d) numpy, of one batch's recorded layers."""
    import torch

    def stack(per_layer):
        # (b, Hkv, n*O, d) per layer -> (b, n, O, Hkv, d), stacked over the kept layers
        parts = [per_layer[i].permute(0, 2, 1, 3) for i in keep]
        b, _, hkv, d = parts[0].shape
        return torch.stack([x.reshape(b, n, O, hkv, d) for x in parts], 3).numpy()

    return stack(rec.keys), stack(rec.values)


def token_logprobs(model, ids, symbol_ids, batch_size: int = 8, progress=None):
    """(logp, lse), each (D, T-1) float64, for unpadded rows ``ids`` (D, T): log P(ids[:, j+1] |
    ids[:, :j+1]) over the whole vocabulary and log Σ_v P(symbol_ids[v] | ids[:, :j+1]).  Only
    (D, T-1) numbers leave the device; the (b, T, vocabulary) logits of one batch are the peak.
    (``llm_world`` scores whole documents with it.)"""
    import torch

    dev = model_device(model)
    ids = np.asarray(ids, dtype=np.int64)
    D, T = ids.shape
    logp, lse = np.empty((D, T - 1)), np.empty((D, T - 1))
    sym = torch.as_tensor(np.asarray(symbol_ids, dtype=np.int64), device=dev)
    with torch.no_grad():
        for a in range(0, D, batch_size):
            x = torch.as_tensor(ids[a:a + batch_size], device=dev)
            mask = torch.ones_like(x)
            lp = torch.log_softmax(model(input_ids=x, attention_mask=mask).logits[:, :-1].float(), -1)
            logp[a:a + len(x)] = lp.gather(-1, x[:, 1:, None])[..., 0].double().cpu().numpy()
            lse[a:a + len(x)] = torch.logsumexp(lp[..., sym], -1).double().cpu().numpy()
            if progress is not None:
                progress(len(x))
    return logp, lse


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
    _require_offsets_inside(batch, offsets)
    _require_attention_backend(model)
    _register()
    cfg = model.config
    old = getattr(cfg, "_attn_implementation", None) or "eager"
    dev = model_device(model)
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
                if attn is None:
                    attn = np.zeros((B, L, rec.rows[0].shape[1], T), dtype=np.float32)
                attn[rows, :, :, T - t:] = torch.stack([rec.rows[i] for i in range(L)], 1).numpy()
                label_logp[rows] = torch.log_softmax(logits, -1)[:, lab].double().cpu().numpy()
                if offsets is not None:
                    kk, vv = _kept_vectors(rec, range(L) if layers is None else list(layers), batch.n_demos,
                                           offsets.size)
                    if keys is None:
                        keys, values = (np.zeros((B,) + kk.shape[1:], np.float32) for _ in range(2))
                    keys[rows], values[rows] = kk, vv
                if progress is not None:
                    progress(len(rows))
    finally:
        model.set_attn_implementation(old)
    kept = None
    if offsets is not None:
        kept = np.arange(attn.shape[1]) if layers is None else np.asarray(list(layers), dtype=np.int64)
    return Capture(attn, label_logp, keys, values, offsets, kept)


def model_devices(model) -> str:
    """Where the weights are: ``cpu``, ``cuda:0``, or a comma list when they are spread."""
    return ",".join(sorted({str(p.device) for p in model.parameters()})) or "cpu"


def length_order(batch: PromptBatch) -> np.ndarray:
    """(B,) the prompts longest first: an out-of-memory batch shows at once, and prompts of
    similar length share a batch, so little padding is computed."""
    return np.argsort(-batch.attention_mask.sum(1), kind="stable")


def in_length_order(fn, batch: PromptBatch):
    """(fn(batch sorted by :func:`length_order`), inv): ``result[inv]`` puts per-prompt results
    back in ``batch``'s order."""
    order = length_order(batch)
    res = fn(batch.subset(order))
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return res, inv


def forward_labels_by_length(model, batch: PromptBatch, batch_size: int = 8, progress=None) -> np.ndarray:
    """(B, C) :func:`forward_labels` with the prompts run longest first, in ``batch``'s order."""
    out, inv = in_length_order(lambda b: forward_labels(model, b, batch_size, progress), batch)
    return out[inv]


def probe_layer_bytes(config, n_examples: int, n_demos: int, n_offsets: int = len(PROBE_OFFSETS)) -> int:
    """Bytes of the float32 keys and values one probed layer holds for ``n_examples`` prompts
    of ``n_demos`` demonstrations: B x n x O x Hkv x d x 4 bytes x 2 arrays (``config``: the
    model's, for the kv heads Hkv and the head size d)."""
    H = int(config.num_attention_heads)
    hkv = int(getattr(config, "num_key_value_heads", None) or H)
    d = int(getattr(config, "head_dim", None) or config.hidden_size // H)
    return int(n_examples) * int(n_demos) * int(n_offsets) * hkv * d * 4 * 2


def probe_layer_list(spec, n_layers: int, per_layer_bytes: int) -> list[int]:
    """The layers whose keys and values are kept.  ``spec``: ``"auto"`` (all when they fit
    :data:`PROBE_BUDGET`, else that many evenly spaced interior layers, at least one), ``"all"``,
    ``"none"``, or a list of layer indices."""
    if isinstance(spec, str):
        if spec == "none":
            return []
        if spec == "all":
            return list(range(n_layers))
        if spec != "auto":
            raise ValueError(f"unknown probe layers {spec!r}; allowed: auto, all, none or layer indices")
        k = int(max(1, min(n_layers, PROBE_BUDGET // max(per_layer_bytes, 1))))
        if k >= n_layers:
            return list(range(n_layers))
        return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, k + 2)[1:-1]})
    layers = sorted({int(x) for x in spec})
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"probe layer {bad[0]} does not exist; the model has layers 0..{n_layers - 1}")
    return layers
