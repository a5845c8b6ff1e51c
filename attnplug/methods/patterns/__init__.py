"""Block patterns of the sparse video method (each builds a boolean block mask for the block-sparse kernel).

- :mod:`.tiles`: sliding tile attention (STA) in tile-major order;
- :mod:`.heads`: spatial / temporal heads chosen online (Sparse VideoGen);
- :mod:`.topk`: pooled-score block selection with Rectified SpaAttn's rectification;
- :mod:`.threshold`: in-kernel score-threshold skipping (BLASST) on top of any pattern.
"""

from .common import add_global_blocks, block_token_mask, inverse_permutation, lut_from_block_mask
from .heads import HEAD_PATTERNS, band_block_mask, band_width_for_density, head_coords, head_permutation, profile_heads
from .threshold import DEFAULT_THRESHOLD, effective_density, locality_priority
from .tiles import fit_tile, tile_block_mask, tile_grid, tile_permutation, tile_window_for_density
from .topk import (
    apply_rectification,
    gapr_compensable,
    pool_blocks,
    pooled_block_probs,
    rectification_terms,
    select_blocks,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "HEAD_PATTERNS",
    "add_global_blocks",
    "apply_rectification",
    "band_block_mask",
    "band_width_for_density",
    "block_token_mask",
    "effective_density",
    "fit_tile",
    "gapr_compensable",
    "head_coords",
    "head_permutation",
    "inverse_permutation",
    "locality_priority",
    "lut_from_block_mask",
    "pool_blocks",
    "pooled_block_probs",
    "profile_heads",
    "rectification_terms",
    "select_blocks",
    "tile_block_mask",
    "tile_grid",
    "tile_permutation",
    "tile_window_for_density",
]
