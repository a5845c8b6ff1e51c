"""Neighbourhood attention (NATTEN / GNA semantics): fast paths beside a plain reference.

Layout: ``reference.py`` (fp32 ground truth from the definition), ``params.py`` (normalisation, validation,
per-grid resolution), ``tiles.py`` (gathered query tiles + batched SDPA: CPU and any device), the block-sparse kernel
(:mod:`attnplug.kernels.block_sparse`, Triton on CUDA) with the neighbourhood as element mask, ``dispatch.py``
(backend choice) and ``functional.py`` (public ops in NATTEN's argument order).

Importing this package is cheap: ``params`` (validation) needs no torch; the other modules load on first use.
"""

from __future__ import annotations

from ..._lazy import lazy_attributes

# public name -> submodule that defines it
_LAZY = {
    "BACKENDS": "params", "ResolvedNeighborhood": "params", "normalize_params": "params",
    "resolve_neighborhood": "params",
    "neighborhood_dispatch": "dispatch", "neighborhood_lut": "dispatch",
    "na1d": "functional", "na2d": "functional", "na3d": "functional", "neighborhood_attention": "functional",
    "neighborhood_attention_generic": "functional",
    "neighborhood_mask": "reference", "neighborhood_reference": "reference",
    "GATHER_COST": "tiles", "TilePlan": "tiles", "default_tile": "tiles", "tile_plan": "tiles",
    "tiles_attention": "tiles",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
