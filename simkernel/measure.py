"""Kernel regression inside a transformer: attention capture, reconstruction, probes.

One implementation for any Hugging Face causal LM (the small GPT-J models trained here and
GPT-J-6B alike).  This module knows nothing of HMMs: prompts arrive as token ids with every
demonstration's span and label position recorded by the prompt builder (``sampling`` for the
simulator, ``textdata`` for real text), never found by searching the token stream.
Comparisons with the true kernel and the exact posterior live in ``alignment``.

Every argmax comparison (a head's reconstructed vote against a reference, the model against a
reference, the majority vote) is tie-fair (``metrics.tie_agreement``): an argmax tie among m
labels scores 1/m, the expected score of a uniformly random tie-break.  Votes tie often (two
labels with the same number of demonstrations under an even head), and the lowest-index argmax
would credit the first label with every such tie.

torch is imported inside the functions that need it; the only other simkernel import is
``metrics`` (pure numpy), so this module runs on real LLMs without the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import onehot_scores, tie_accuracy, tie_agreement


@dataclass
class Example:
    """One in-context prompt as built by a prompt builder (no padding).

    input_ids    (T,) int64   token ids of the whole prompt, ending with the test input's last
                              token (the model's prediction at position T-1 is the answer)
    spans        (n, 2) int64 [start, end) of demonstration i: from x_i's first token through
                              y_i's first label token inclusive (so end - 1 == label_pos[i])
    label_pos    (n,) int64   position of y_i's (first) label token
    demo_labels  (n,) int64   class index of y_i (0..C-1)
    gold         int          class index of the test example's label (-1 when unknown)
    """

    input_ids: np.ndarray
    spans: np.ndarray
    label_pos: np.ndarray
    demo_labels: np.ndarray
    gold: int = -1


@dataclass
class PromptBatch:
    """Left-padded prompts, every position in padded coordinates.

    input_ids       (B, T) int64   pad token where attention_mask is 0 (on the left)
    attention_mask  (B, T) int64   1 on real tokens
    spans           (B, n, 2)      [start, end) of each demonstration
    label_pos       (B, n)         position of each demonstration's label token
    demo_labels     (B, n)         class index of each demonstration's label
    gold            (B,)           class index of each test label (-1 when unknown)
    label_tokens    (C,)           the token id scored for each class (a label word's first token)
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    spans: np.ndarray
    label_pos: np.ndarray
    demo_labels: np.ndarray
    gold: np.ndarray
    label_tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_demos(self) -> int:
        return int(self.label_pos.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.label_tokens.size)

    def subset(self, idx) -> "PromptBatch":
        """The rows ``idx`` (padding columns that no kept row uses are dropped)."""
        idx = np.asarray(idx)
        mask = self.attention_mask[idx]
        lead = int(np.argmax(mask.any(0))) if mask.size else 0
        return PromptBatch(self.input_ids[idx, lead:], mask[:, lead:], self.spans[idx] - lead,
                           self.label_pos[idx] - lead, self.demo_labels[idx], self.gold[idx],
                           self.label_tokens)


def collate(examples, label_tokens, pad_id: int = 0) -> PromptBatch:
    """Left-pad ``examples`` (a sequence of :class:`Example` with the same number of
    demonstrations) into one :class:`PromptBatch`."""
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to collate")
    ns = {len(e.label_pos) for e in examples}
    if len(ns) != 1:
        raise ValueError(f"every example needs the same number of demonstrations, got {sorted(ns)}")
    T = max(len(e.input_ids) for e in examples)
    B, n = len(examples), ns.pop()
    ids = np.full((B, T), int(pad_id), dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    spans = np.zeros((B, n, 2), dtype=np.int64)
    pos = np.zeros((B, n), dtype=np.int64)
    for b, e in enumerate(examples):
        shift = T - len(e.input_ids)
        ids[b, shift:] = e.input_ids
        mask[b, shift:] = 1
        spans[b] = np.asarray(e.spans, dtype=np.int64).reshape(n, 2) + shift
        pos[b] = np.asarray(e.label_pos, dtype=np.int64) + shift
    return PromptBatch(ids, mask, spans, pos,
                       np.array([np.asarray(e.demo_labels, dtype=np.int64) for e in examples]).reshape(B, n),
                       np.array([int(e.gold) for e in examples], dtype=np.int64),
                       np.asarray(label_tokens, dtype=np.int64).reshape(-1))


# ---------------------------------------------------------------------- capture
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


# ---------------------------------------------------------------------- attention profile
def attention_profile(attn: np.ndarray, spans: np.ndarray, length: int = 30) -> np.ndarray:
    """(L, H, length): the final row's attention over each demonstration span, resampled to
    ``length`` points by linear interpolation and averaged over prompts and demonstrations.

    attn (B, L, H, T), spans (B, n, 2) [start, end).  A span of m tokens is read at m equally
    spaced points of [0, 1] (one token: at 1, so it lands on the label) and interpolated at
    ``length`` equally spaced points; the last point is always the label token (spans end
    with it), the first the demonstration's first input token."""
    if length < 2:
        raise ValueError(f"profile length must be >= 2, got {length}")
    B, L, H, _ = attn.shape
    grid = np.linspace(0.0, 1.0, length)
    total = np.zeros((L, H, length))
    count = 0
    for b in range(B):
        for s, e in spans[b]:
            m = int(e - s)
            seg = attn[b, :, :, s:e].reshape(L * H, m).astype(np.float64)
            if m == 1:
                total += np.repeat(seg, length, axis=1).reshape(L, H, length)
            else:
                x = np.linspace(0.0, 1.0, m)
                # np.interp is 1-d: the interpolation weights are shared by every (layer, head)
                j = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, m - 2)
                w = (grid - x[j]) / (x[j + 1] - x[j])
                total += (seg[:, j] * (1 - w) + seg[:, j + 1] * w).reshape(L, H, length)
            count += 1
    return total / max(count, 1)


# ---------------------------------------------------------------------- reconstruction
WEIGHTS = ("max", "label", "mean")


def demo_weights(attn: np.ndarray, spans: np.ndarray, label_pos: np.ndarray, how: str = "max") -> np.ndarray:
    """(B, L, H, n): each head's weight a_i on demonstration i.

    ``max``: the largest attention within the span [x_i, y_i] (the paper's choice);
    ``label``: the attention on y_i's token; ``mean``: the span's mean attention."""
    if how not in WEIGHTS:
        raise ValueError(f"unknown weight {how!r}; allowed: {', '.join(WEIGHTS)}")
    B, L, H, T = attn.shape
    if how == "label":
        idx = np.broadcast_to(label_pos[:, None, None, :], (B, L, H, label_pos.shape[1]))
        return np.take_along_axis(attn, idx, axis=-1)
    out = np.empty((B, L, H, spans.shape[1]), dtype=np.float64)
    # slices, not a masked copy of attn per demonstration: for GPT-J-6B attn is ~1 GB
    for b in range(B):
        for i, (s, e) in enumerate(spans[b]):
            seg = attn[b, :, :, s:e]
            out[b, :, :, i] = seg.max(-1) if how == "max" else seg.mean(-1)
    return out


def label_votes(weights: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(..., C): Σ_i a_i [y_i = c].  weights (B, ..., n), demo_labels (B, n)."""
    onehot = np.eye(n_classes)[demo_labels]                                   # (B, n, C)
    return np.einsum("b...n,bnc->b...c", weights, onehot)


def reconstruct(weights: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, ...) the reconstructed prediction argmax_c Σ_i a_i [y_i = c] (ties: lowest class).

    For display only: :func:`analyse` scores the votes themselves (:func:`label_votes`) with
    ``metrics.tie_agreement``, so a tie among m classes scores 1/m instead of crediting the
    lowest class."""
    return label_votes(weights, demo_labels, n_classes).argmax(-1)


def reference_scores(ref, n_examples: int, n_classes: int) -> np.ndarray:
    """A reference prediction -> (B, C) scores whose top set is the predicted class(es).

    ref: (B,) class indices (-1: undefined for that example) or (B, C) scores (e.g. a
    distribution; ties among the top scores are kept, NaN rows are undefined)."""
    ref = np.asarray(ref)
    if ref.shape == (n_examples,):
        if not np.issubdtype(ref.dtype, np.integer):
            raise ValueError(f"a (B,) reference must hold class indices, got dtype {ref.dtype}")
        if (ref >= n_classes).any() or (ref < -1).any():
            raise ValueError(f"reference class indices must be in -1..{n_classes - 1}")
        return onehot_scores(ref, n_classes)
    if ref.shape == (n_examples, n_classes):
        return ref.astype(np.float64)
    raise ValueError(f"a reference must be ({n_examples},) class indices or ({n_examples}, {n_classes}) "
                     f"scores, got shape {ref.shape}")


def split_indices(n_examples: int, n_select: int = 700, n_report: int = 300, seed: int = 0):
    """(select, report): disjoint random index sets.  With fewer than n_select + n_report
    examples both shrink in proportion (at least one each), so the report set is always
    held out from head selection."""
    if n_examples < 2:
        raise ValueError(f"held-out head selection needs at least 2 examples, got {n_examples}")
    want = n_select + n_report
    if n_examples < want:
        n_select = min(max(1, int(round(n_examples * n_select / want))), n_examples - 1)
        n_report = n_examples - n_select
    perm = np.random.default_rng(seed).permutation(n_examples)
    return np.sort(perm[:n_select]), np.sort(perm[n_select:n_select + n_report])


@dataclass
class HeadChoice:
    """The best head chosen on the selection split and its score on the report split."""

    layer: int
    head: int
    select_score: float
    report_score: float
    n_select: int
    n_report: int


def select_head(scores: np.ndarray, select: np.ndarray, report: np.ndarray) -> HeadChoice:
    """scores (B, L, H): a per-example score of every head (a tie-fair agreement in [0, 1], or
    a correlation; nan where undefined).  The head with the best mean on ``select`` (nan
    ignored; ties: the lowest layer, then head), scored on ``report`` only."""
    if np.intersect1d(select, report).size:
        raise ValueError("the selection and report splits overlap")
    sel = _nanmean0(scores[select])
    if not np.isfinite(sel).any():
        raise ValueError("no head has a defined score on the selection split")
    layer, head = np.unravel_index(int(np.nanargmax(sel)), sel.shape)
    return HeadChoice(int(layer), int(head), float(sel[layer, head]),
                      float(_nanmean0(scores[report][:, layer, head])), int(select.size), int(report.size))


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring nan (nan where every entry is nan), without warnings."""
    ok = np.isfinite(x)
    count = ok.sum(0)
    return np.where(count > 0, np.where(ok, x, 0.0).sum(0) / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------- correlations
def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def row_correlation(a: np.ndarray, b: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Correlation along the last axis of ``a`` (..., n) and ``b`` (broadcastable); nan where
    either side is constant.  method: 'pearson' or 'spearman' (Pearson on average ranks)."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"unknown correlation {method!r}; allowed: pearson, spearman")
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    flat = _constant(a) | _constant(b)
    if method == "spearman":
        a, b = _rank(a), _rank(b)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(flat, np.nan, np.clip(r, -1.0, 1.0))


def _constant(x: np.ndarray) -> np.ndarray:
    """True where the last axis is constant up to rounding."""
    return np.ptp(x, axis=-1) <= 1e-12 * np.abs(x).max(-1, initial=0.0)


def head_correlation(weights: np.ndarray, target: np.ndarray, method: str = "pearson") -> np.ndarray:
    """(L, H): the mean over prompts of the within-prompt correlation between a head's weights
    on the demonstrations, weights (B, L, H, n), and ``target`` (B, n) (e.g. the true kernel
    K(x_test, x_i) or the prediction similarity).  Within-prompt, because a kernel estimator
    only compares the demonstrations of one prompt; prompts where either side is constant
    are left out (nan when all are)."""
    return _nanmean0(row_correlation(weights, target[:, None, None, :], method))


def prediction_similarity(p_test: np.ndarray, p_demos: np.ndarray) -> np.ndarray:
    """(B, n): sim(x_test, x_i) = P(o | x_test)^T P(o | x_i), each distribution from the
    input run alone.  p_test (B, C), p_demos (B, n, C)."""
    return np.einsum("bc,bnc->bn", p_test, p_demos)


# ---------------------------------------------------------------------- probes
def ridge_fit(x: np.ndarray, y: np.ndarray, n_classes: int, lam: float = 0.01):
    """(W (d, C), b (C,)): ridge regression from x (N, d) to one-hot(y) (N, C), with an
    unpenalised intercept: W = (X_c^T X_c + λ I)^-1 X_c^T Y_c on centred X_c, Y_c."""
    x = np.asarray(x, np.float64)
    t = np.eye(n_classes)[np.asarray(y)]
    mx, mt = x.mean(0), t.mean(0)
    xc, tc = x - mx, t - mt
    N, d = xc.shape
    if d <= N:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ tc)
    else:       # the dual form: fewer examples than features
        w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(N), tc)
    return w, mt - mx @ w


def ridge_accuracy(x_train, y_train, x_test, y_test, n_classes: int, lam: float = 0.01) -> float:
    """Test accuracy of :func:`ridge_fit`'s argmax classifier, tie-fair (a tie among m classes
    that holds the target scores 1/m: e.g. an all-zero input predicts the intercept, and the
    class means tie when the classes are equally frequent)."""
    w, b = ridge_fit(x_train, y_train, n_classes, lam)
    scores = np.asarray(x_test, np.float64) @ w + b
    return float(tie_accuracy(scores, np.asarray(y_test)).mean())


def probe_accuracy(vectors: np.ndarray, targets: np.ndarray, train: np.ndarray, test: np.ndarray,
                   n_classes: int, lam: float = 0.01, heads_per_kv: int = 1) -> np.ndarray:
    """(O, L, H): ridge-probe test accuracy per offset, layer and head.

    vectors (B, n, O, L, Hkv, d) from :func:`capture` (keys or values), targets (B, n) class
    indices (the model's standalone prediction for keys, y_i for values).  The split is by
    prompt (``train`` / ``test`` index the B axis), so no prompt is on both sides.  With
    grouped-query attention a kv head serves ``heads_per_kv`` query heads, which share its
    score."""
    B, n, O, L, Hkv, d = vectors.shape
    ytr, yte = targets[train].reshape(-1), targets[test].reshape(-1)
    vtr, vte = vectors[train], vectors[test]          # index once: each is a copy
    out = np.empty((O, L, Hkv * heads_per_kv))
    for o in range(O):
        for layer in range(L):
            for h in range(Hkv):
                acc = ridge_accuracy(vtr[:, :, o, layer, h].reshape(-1, d), ytr,
                                     vte[:, :, o, layer, h].reshape(-1, d), yte, n_classes, lam)
                out[o, layer, h * heads_per_kv:(h + 1) * heads_per_kv] = acc
    return out


# ---------------------------------------------------------------------- one analysis
PROBE_OFFSETS = (-1, 0, 1, 2, 3)
HEAD_COLUMNS = ("layer", "head", "measure", "reference", "split", "value", "n_examples")
PROFILE_COLUMNS = ("layer", "head", "position", "attention", "is_label")
PROBE_COLUMNS = ("vector", "target", "offset", "layer", "head", "accuracy", "n_train", "n_test")
BEST_COLUMNS = ("measure", "reference", "layer", "head", "select", "report", "n_select", "n_report")


@dataclass
class Analysis:
    """Tidy tables (lists of dicts with the ``*_COLUMNS`` keys) and a summary dict.

    heads    per layer, head, measure ('agree': the tie-fair agreement of the head's vote
             with a reference prediction, or a 'pearson' / 'spearman' correlation with a
             reference kernel), split ('select' / 'report' / 'all')
    best     per measure and reference: the head chosen on the selection split and its
             held-out score on the report split
    profile  the attention profile (layer, head, position 0..length-1; the label is last)
    probes   key / value probe accuracies per offset, layer and head (empty without vectors)
    """

    heads: list
    best: list
    profile: list
    probes: list
    summary: dict


def _head_rows(rows, per_example, measure, reference, splits):
    """per_example (B, L, H) -> rows of split means."""
    for split, idx in splits.items():
        m = _nanmean0(per_example[idx])
        count = np.isfinite(per_example[idx]).sum(0)
        for (layer, head), v in np.ndenumerate(m):
            rows.append({"layer": layer, "head": head, "measure": measure, "reference": reference,
                         "split": split, "value": float(v), "n_examples": int(count[layer, head])})


def analyse(cap: Capture, batch: PromptBatch, *, references=None, kernels=None, how: str = "max",
            n_select: int = 700, n_report: int = 300, seed: int = 0, profile_length: int = 30,
            probe_targets=None, probe_lambda: float = 0.01) -> Analysis:
    """Every measurement of one captured batch.

    references  {name: (B,) class index (-1: undefined) or (B, C) scores (NaN rows:
                undefined)}: predictions each head's vote Σ_i a_i e(y_i) is compared with, by
                tie-fair agreement (:func:`reference_scores`; undefined examples are left
                out); 'model' (the model's label distribution) and 'gold' (when every test
                label is known) are always included
    kernels     {name: (B, n) weights}: kernels each head's a_i are correlated with within a
                prompt (Pearson and Spearman), e.g. 'similarity' (prediction similarity) or,
                in the simulator, the theory's K(x_test, x_i)
    probe_targets {'keys' | 'values': (name, (B, n) class index)}: what each probe predicts;
                default values -> y_i ('label')
    Heads are chosen on a selection split and reported on a disjoint report split
    (:func:`split_indices`); probes train on the selection split and test on the report split.

    summary: model_matches {reference: tie-fair agreement of the model with it} (all
    examples), model_accuracy (= model_matches['gold']), model_accuracy_report (report split),
    majority_baseline {reference: agreement of the uniform-weight vote, i.e. the most
    frequent demonstration label(s), on the report split}, table2 (the head chosen by
    agreement with the model: its held-out agreement and the accuracy of its vote).
    """
    B, L, H, _ = cap.attn.shape
    C = batch.n_classes
    select, report = split_indices(B, n_select, n_report, seed)
    splits = {"select": select, "report": report, "all": np.arange(B)}
    model = cap.label_probs                                                    # (B, C)
    refs = {"model": model}
    if (batch.gold >= 0).all():
        refs["gold"] = batch.gold
    refs.update(references or {})
    refs = {name: reference_scores(ref, B, C) for name, ref in refs.items()}   # (B, C) each
    weights = demo_weights(cap.attn, batch.spans, batch.label_pos, how)       # (B, L, H, n)
    votes = label_votes(weights, batch.demo_labels, C)                         # (B, L, H, C)
    heads, best = [], []

    def choose(per_example, measure, name):
        c = select_head(per_example, select, report)
        best.append({"measure": measure, "reference": name, "layer": c.layer, "head": c.head,
                     "select": c.select_score, "report": c.report_score,
                     "n_select": c.n_select, "n_report": c.n_report})

    for name, ref in refs.items():
        # NaN where the reference is undefined (e.g. a prompt exact Bayes rules out)
        hits = tie_agreement(votes, ref[:, None, None, :])                     # (B, L, H)
        _head_rows(heads, hits, "agree", name, splits)
        choose(hits, "agree", name)
    for name, kern in (kernels or {}).items():
        for method in ("pearson", "spearman"):
            r = row_correlation(weights, np.asarray(kern)[:, None, None, :], method)
            _head_rows(heads, r, method, name, splits)
            if np.isfinite(r[select]).any():
                choose(r, method, name)
    prof = attention_profile(cap.attn, batch.spans, profile_length)
    profile = [{"layer": layer, "head": head, "position": pos, "attention": float(v),
                "is_label": pos == profile_length - 1} for (layer, head, pos), v in np.ndenumerate(prof)]
    probes = []
    targets = {"values": ("label", batch.demo_labels)}
    targets.update(probe_targets or {})
    for vector in ("keys", "values"):
        vecs = getattr(cap, vector)
        if vecs is None or vector not in targets:
            continue
        tname, t = targets[vector]
        acc = probe_accuracy(vecs, np.asarray(t), select, report, C, probe_lambda,
                             heads_per_kv=H // vecs.shape[4])
        layer_ids = np.arange(vecs.shape[3]) if cap.layers is None else cap.layers
        for (o, j, head), v in np.ndenumerate(acc):
            probes.append({"vector": vector, "target": tname, "offset": int(cap.offsets[o]),
                           "layer": int(layer_ids[j]), "head": head, "accuracy": float(v),
                           "n_train": int(select.size * batch.n_demos), "n_test": int(report.size * batch.n_demos)})
    def mean_defined(x):
        ok = np.isfinite(x)
        return float(x[ok].mean()) if ok.any() else None

    acc = {name: mean_defined(tie_agreement(model, ref)) for name, ref in refs.items() if name != "model"}
    acc = {name: v for name, v in acc.items() if v is not None}
    gold = refs.get("gold")
    summary = {"n_examples": B, "n_demos": batch.n_demos, "n_classes": C, "layers": L, "heads": H,
               "weight": how, "n_select": int(select.size), "n_report": int(report.size), "seed": seed,
               "model_matches": acc,
               "model_accuracy": acc.get("gold"),
               "model_accuracy_report": (mean_defined(tie_agreement(model[report], gold[report]))
                                         if gold is not None else None)}
    # the vote of a head that weighs every demonstration equally: the majority label(s), the
    # baseline a head's vote has to beat to show it weighs demonstrations at all
    majority = label_votes(np.ones(batch.demo_labels.shape), batch.demo_labels, C)      # (B, C)
    base = {name: mean_defined(tie_agreement(majority[report], ref[report])) for name, ref in refs.items()}
    summary["majority_baseline"] = {name: v for name, v in base.items() if v is not None}
    top = best[0]                                   # chosen by agreement with the model
    summary["table2"] = {"layer": top["layer"], "head": top["head"], "agreement": top["report"],
                         "icl_accuracy": summary["model_accuracy_report"],
                         "reconstructed_accuracy": (mean_defined(tie_agreement(
                             votes[report, top["layer"], top["head"]], gold[report]))
                                                    if gold is not None else None)}
    return Analysis(heads, best, profile, probes, summary)
