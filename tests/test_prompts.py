"""The prompt contract: left padding keeps every recorded position, and prompts with different
numbers of demonstrations are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkernel.prompts import Example, collate


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(4, 12), min_size=1, max_size=5), st.integers(0, 2**31))
def test_collate_left_pads_and_subset_keeps_every_position(lengths, seed):
    rng = np.random.default_rng(seed)
    ex = []
    for T in lengths:
        spans = np.array([[0, 2], [2, 4]])
        ex.append(Example(rng.integers(1, 9, T), spans, spans[:, 1] - 1, rng.integers(0, 2, 2), 1))
    b = collate(ex, [3, 4], pad_id=0)
    assert b.input_ids.shape == (len(lengths), max(lengths))
    for i, e in enumerate(ex):
        row = b.input_ids[i][b.attention_mask[i] == 1]
        np.testing.assert_array_equal(row, e.input_ids)
        np.testing.assert_array_equal(b.input_ids[i, b.label_pos[i]], e.input_ids[e.label_pos])
        sub = b.subset([i])
        assert sub.input_ids.shape[1] == len(e.input_ids)
        np.testing.assert_array_equal(sub.label_pos[0], e.label_pos)


def test_collate_rejects_unequal_demonstration_counts():
    a = Example(np.arange(5), np.array([[0, 2]]), np.array([1]), np.array([0]))
    b = Example(np.arange(5), np.zeros((0, 2), int), np.zeros(0, int), np.zeros(0, int))
    with pytest.raises(ValueError, match=r"same number of demonstrations, got \[0, 1\]"):
        collate([a, b], [1])
