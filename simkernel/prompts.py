"""The prompt contract shared by the simulator and real text: what a prompt builder hands to
the capture and the analysis.

A prompt is token ids plus, for every demonstration, its span and the position of its label
token, recorded by the prompt builder (``alignment`` from the simulator's sampler, ``textdata``
for real text) and never found by searching the token stream, where a label token can also
occur inside an input.  :func:`collate` left-pads prompts into one :class:`PromptBatch`,
shifting every recorded position with the padding.

numpy only, so the simulator and text sides share it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
