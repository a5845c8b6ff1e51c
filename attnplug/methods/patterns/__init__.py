"""Block patterns of the sparse video method. Each implements the :class:`Pattern` protocol (:mod:`.base`):
``plan(layout, device) -> Plan`` once per layout, ``run(q, k, v, plan, info) -> PatternOutput`` per call.

- :mod:`.tiles`: sliding tile attention (STA) in tile-major order;
- :mod:`.heads`: spatial / temporal heads chosen online (Sparse VideoGen);
- :mod:`.topk`: pooled-score block selection with Rectified SpaAttn's rectification;
- :mod:`.threshold`: in-kernel score-threshold skipping (BLASST) on top of any pattern;
- :mod:`.long`: a temporal window around every query frame plus anchor frames, for long videos.
"""

from .base import CallSummary, Pattern, PatternOutput, Plan, PlanCache, effective_density, key_padding, pair_density
from .common import add_global_blocks, block_token_mask, inverse_permutation, lut_from_block_mask
from .heads import HeadsPattern, band_block_mask, band_width_for_density, head_coords, head_permutation, profile_heads
from .long import LongPattern, anchor_positions, frame_slots, long_frame_mask, long_window_for_density
from .threshold import DEFAULT_THRESHOLD, ThresholdPattern, locality_priority
from .tiles import (
    TilesPattern,
    fit_tile,
    tile_block_mask,
    tile_grid,
    tile_major_order,
    tile_permutation,
    tile_window_for_density,
)
from .topk import (
    TopkPattern,
    apply_rectification,
    gapr_compensable,
    pool_blocks,
    pooled_block_probs,
    rectification_terms,
    select_blocks,
)

#: The pattern class of each ``SparseVideoConfig.pattern`` name.
PATTERNS: dict[str, type] = {p.name: p for p in (TilesPattern, HeadsPattern, TopkPattern, ThresholdPattern,
                                                 LongPattern)}

__all__ = [
    "DEFAULT_THRESHOLD",
    "CallSummary",
    "PATTERNS",
    "HeadsPattern",
    "LongPattern",
    "Pattern",
    "PatternOutput",
    "Plan",
    "PlanCache",
    "ThresholdPattern",
    "TilesPattern",
    "TopkPattern",
    "add_global_blocks",
    "anchor_positions",
    "apply_rectification",
    "band_block_mask",
    "band_width_for_density",
    "block_token_mask",
    "effective_density",
    "fit_tile",
    "frame_slots",
    "gapr_compensable",
    "head_coords",
    "head_permutation",
    "inverse_permutation",
    "key_padding",
    "locality_priority",
    "long_frame_mask",
    "long_window_for_density",
    "lut_from_block_mask",
    "pair_density",
    "pool_blocks",
    "pooled_block_probs",
    "profile_heads",
    "rectification_terms",
    "select_blocks",
    "tile_block_mask",
    "tile_grid",
    "tile_major_order",
    "tile_permutation",
    "tile_window_for_density",
]
