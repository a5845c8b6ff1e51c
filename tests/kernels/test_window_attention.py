"""Shifted-window kernel: against the brute-force pair-mask reference (Python loops), the plan rule, and the
partition round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnplug.kernels.window import (
    WindowPlan,
    partition,
    reverse,
    window_attention,
    window_attention_reference,
    window_mask_reference,
    window_plan,
)
from attnplug.layout import TokenLayout

CASES = [
    # grid, window_size (None = fraction 0.5 on height/width), shift index
    ((1, 8, 8), None, 0),  # 2x2 windows, divides
    ((1, 8, 8), None, 1),  # shifted by a quarter window
    ((1, 9, 7), None, 3),  # odd sides: windows 5 x 4, padded
    ((1, 6, 10), (4, 3), 2),  # explicit windows, padding on both axes
    ((3, 6, 6), (2, 3, 3), 1),  # 3-D windows, frames padded
    ((4, 5, 6), None, 2),  # video, frames unwindowed
]


@pytest.mark.parametrize("text", [0, 3, -4], ids=["no-text", "text-last", "text-first"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-w{c[1]}-s{c[2]}" for c in CASES])
def test_matches_brute_force(case, text):
    grid, size, idx = case
    layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
    plan = window_plan(grid, size, 0.5, shift_index=idx, num_shifts=4)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = window_attention(q, k, v, layout, plan, scale=0.3)
    ref = window_attention_reference(q, k, v, layout, plan.window, plan.shift, scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_reference_mask_is_block_diagonal_without_shift():
    mask = window_mask_reference(TokenLayout(1, 4, 4), (1, 2, 2), (0, 0, 0))
    assert mask.sum() == 16 * 4  # every token sees the 4 tokens of its 2x2 window
    assert mask[0, 1] and mask[0, 4] and mask[0, 5] and not mask[0, 2] and not mask[0, 8]


def test_plan_rule():
    p = window_plan((1, 9, 7), None, 0.5, shift_index=3)
    assert p.window == (1, 5, 4) and p.counts == (1, 2, 2) and p.padding == (0, 1, 1) and p.shift == (0, 3, 3)
    assert window_plan((1, 64, 64), None, 0.5, shift_index=2).shift == (0, 16, 16)  # HiDiffusion: w // 4 * 2
    assert window_plan((1, 8, 8), 16, shift_index=1).is_dense
    assert window_plan((3, 8, 8), 4).window == (3, 4, 4)  # an int covers height and width; frames unwindowed
    assert window_plan((3, 8, 8), (2, 4, 4)).window == (2, 4, 4)
    with pytest.raises(ValueError, match="window_fraction for height must be > 0"):
        window_plan((1, 8, 8), None, 0.0)


def test_partition_round_trip():
    plan = WindowPlan((2, 5, 7), (2, 3, 4), (0, 1, 2))
    x = torch.randn(2, 3, 2 * 5 * 7, 4)
    parts = partition(x, plan)
    assert parts.shape == (2, 3, 1 * 2 * 2, 2 * 3 * 4, 4)
    torch.testing.assert_close(reverse(parts, plan), x, atol=0, rtol=0)


def test_dense_plan_is_sdpa_and_grid_mismatch_raises():
    layout = TokenLayout(1, 5, 5, text_tokens=2)
    q, k, v = torch.randn(3, 1, 2, 27, 8).unbind(0)
    out = window_attention(q, k, v, layout, window_plan(layout.grid, None, 1.0))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="does not match the layout grid"):
        window_attention(q, k, v, layout, window_plan((1, 4, 4)))
