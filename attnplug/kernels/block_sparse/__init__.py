"""Block-sparse attention: LUT-driven flash attention with optional in-kernel neighbourhood mask.

Layout: ``reference.py`` (fp32 ground truth), ``lut.py`` / ``masks.py`` (tables and coordinate masks),
``torch.py`` (CPU/MPS path), ``triton.py`` (GPU kernel, imported lazily), ``dispatch.py`` (public entry point).
"""

from .dispatch import BACKENDS, block_sparse_attention, choose_backend
from .lut import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, BlockLUT
from .masks import NeighborhoodMask
from .reference import block_sparse_reference

__all__ = [
    "BACKENDS",
    "DEFAULT_BLOCK_M",
    "DEFAULT_BLOCK_N",
    "BlockLUT",
    "NeighborhoodMask",
    "block_sparse_attention",
    "block_sparse_reference",
    "choose_backend",
]
