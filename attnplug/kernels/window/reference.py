"""Shifted-window attention as a brute-force boolean mask over all token pairs, built with Python loops: the
ground truth of :func:`attnplug.kernels.window.window_attention` (tiny grids only: ``O(N^2)`` Python work)."""

from __future__ import annotations

import math

import torch

from ...layout import TokenLayout

__all__ = ["window_attention_reference", "window_mask_reference"]


Triple = tuple[int, int, int]


def window_mask_reference(layout: TokenLayout, window: Triple, shift: Triple) -> torch.Tensor:
    """``(N, N)`` bool in the layout's token order: an image token sees the image tokens whose cyclically shifted
    coordinates fall in the same window in every dimension, and all text; a text token sees everything."""
    f, h, w = layout.grid
    off = layout.text_tokens if layout.text_first else 0
    n = layout.num_tokens
    win_id = {}
    for t in range(f):
        for y in range(h):
            for x in range(w):
                c = (t, y, x)
                win_id[off + (t * h + y) * w + x] = tuple(
                    ((c[d] - shift[d]) % layout.grid[d]) // window[d] for d in range(3)
                )
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            mask[i, j] = i not in win_id or j not in win_id or win_id[i] == win_id[j]
    return mask


def window_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    window: tuple[int, int, int],
    shift: tuple[int, int, int],
    scale: float | None = None,
) -> torch.Tensor:
    """Masked attention (float64 inside) of ``q, k, v (B, H, N, D)`` under :func:`window_mask_reference` ->
    ``(B, H, N, D)`` in ``q``'s dtype."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = window_mask_reference(layout, window, shift)
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return (torch.softmax(s.masked_fill(~mask, -math.inf), -1) @ v.double()).to(q.dtype)
