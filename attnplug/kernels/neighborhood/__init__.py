"""Neighbourhood attention (NATTEN / GNA semantics): fast paths beside a plain reference.

Layout: ``reference.py`` (fp32 ground truth from the definition), ``params.py`` (normalisation, validation,
per-grid resolution), ``tiles.py`` (gathered query tiles + batched SDPA: CPU and any device), the block-sparse kernel
(:mod:`attnplug.kernels.block_sparse`, Triton on CUDA) with the neighbourhood as element mask, ``dispatch.py``
(backend choice) and ``functional.py`` (public ops in NATTEN's argument order).
"""

from .dispatch import BACKENDS, neighborhood_dispatch, neighborhood_lut
from .functional import na1d, na2d, na3d, neighborhood_attention, neighborhood_attention_generic
from .params import ResolvedNeighborhood, normalize_params, resolve_neighborhood
from .reference import neighborhood_mask, neighborhood_reference
from .tiles import GATHER_COST, TilePlan, default_tile, tile_plan, tiles_attention

__all__ = [
    "BACKENDS",
    "GATHER_COST",
    "ResolvedNeighborhood",
    "TilePlan",
    "default_tile",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighborhood_attention_generic",
    "neighborhood_dispatch",
    "neighborhood_lut",
    "neighborhood_mask",
    "neighborhood_reference",
    "normalize_params",
    "resolve_neighborhood",
    "tile_plan",
    "tiles_attention",
]
