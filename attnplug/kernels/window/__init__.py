"""Shifted-window attention (Swin / HiDiffusion MSW-MSA): attention inside non-overlapping windows of a cyclically
rolled token grid.

Layout: ``reference.py`` (brute-force pair mask, the ground truth), ``torch.py`` (roll, pad, partition, one batched
SDPA call).
"""

from .reference import window_attention_reference, window_mask_reference
from .torch import (
    ShiftTables,
    WindowPlan,
    partition,
    reverse,
    shift_tables,
    shifted_window_attention,
    window_attention,
    window_plan,
)

__all__ = [
    "ShiftTables",
    "WindowPlan",
    "partition",
    "reverse",
    "shift_tables",
    "shifted_window_attention",
    "window_attention",
    "window_attention_reference",
    "window_mask_reference",
    "window_plan",
]
