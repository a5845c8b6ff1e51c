"""Launch configurations of the Triton block-sparse kernel per GPU architecture (importable without Triton).

``ARCH_CONFIGS`` maps ``(arch, precision)`` to the largest query/key tile, warps and software-pipeline stages. The
kernel reads the row of the launching device (``torch.cuda.get_device_capability``; the interpreter uses sm_80) and
:func:`kernel_config` derives the tiles of one call from it. Every row is compiled ahead of time by
``benchmarks/kernel_compile_report.py`` (``benchmarks/results/kernel_compile_report.json``): registers, spills and
shared memory per row, or the reason a row did not compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ARCH_CONFIGS", "SMEM_LIMITS", "ArchConfig", "arch_of", "config_for", "kernel_config", "precision_of"]


@dataclass(frozen=True)
class ArchConfig:
    """One row of the table: tiles up to ``max_tile_m x max_tile_n`` launched with ``num_warps`` / ``num_stages``."""

    arch: int
    precision: str  # "16bit" (fp16/bf16) or "fp32"
    max_tile_m: int
    max_tile_n: int
    num_warps: int
    num_stages: int


def _row(arch: int, precision: str, tile_m: int, tile_n: int, warps: int, stages: int) -> tuple:
    return (arch, precision), ArchConfig(arch, precision, tile_m, tile_n, warps, stages)


#: sm_80 (A100; also sm_86/89), sm_90 (H100/H200: wgmma, 128-row tiles with a 3-stage K/V pipeline), sm_100 (B200:
#: 128-row tcgen05 tiles; 128 x 64 spilled with the neighbourhood mask), sm_120 (consumer Blackwell: mma.sync, ~99 KB
#: shared memory per block). "fp32" = IEEE dots on CUDA cores (small tiles), "tf32" = fp32 inputs while
#: ``torch.backends.cuda.matmul.allow_tf32`` is True. Chosen from the AOT compile report: no spills in 16-bit; the
#: fp32 rows spill a few dozen bytes in their heaviest variants (threshold, head dim >= 96), 4 warps spilled more.
ARCH_CONFIGS: dict[tuple[int, str], ArchConfig] = dict([
    _row(80, "16bit", 64, 64, 8, 3),
    _row(80, "tf32", 64, 32, 8, 2),
    _row(80, "fp32", 32, 32, 8, 2),
    _row(90, "16bit", 128, 64, 8, 3),
    _row(90, "tf32", 64, 32, 8, 2),
    _row(90, "fp32", 32, 32, 8, 2),
    _row(100, "16bit", 128, 32, 8, 3),
    _row(100, "tf32", 128, 32, 8, 2),
    _row(100, "fp32", 32, 32, 8, 2),
    _row(120, "16bit", 64, 64, 8, 2),
    _row(120, "tf32", 64, 32, 8, 2),
    _row(120, "fp32", 32, 32, 8, 2),
])

#: Usable shared memory per block (bytes) per table architecture.
SMEM_LIMITS = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}

#: Tile limits when a threshold forces the tiles to equal the LUT blocks (the skip decision is per LUT block).
_THRESHOLD_MAX = {"block_m": 128, "block_n": 64}
_DTYPES = {torch.float16: "16bit", torch.bfloat16: "16bit", torch.float32: "fp32"}


def precision_of(dtype: torch.dtype, tf32: bool = False) -> str:
    """``'16bit'``, ``'fp32'`` or (fp32 with ``tf32``) ``'tf32'``; ValueError for any other dtype."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype} is not supported by the Triton kernel; accepted: float16, bfloat16, float32.")
    return "tf32" if tf32 and dtype == torch.float32 else _DTYPES[dtype]


def arch_of(capability: tuple[int, int]) -> int:
    """The table architecture for a CUDA capability: the newest table arch not newer than it (sm_86 -> 80)."""
    value = capability[0] * 10 + capability[1]
    known = sorted({a for a, _ in ARCH_CONFIGS})
    older = [a for a in known if a <= value]
    return older[-1] if older else known[0]


def config_for(arch: int, dtype: torch.dtype, tf32: bool = False) -> ArchConfig:
    """The table row for ``arch`` (a table arch or any sm value, mapped by :func:`arch_of`) and ``dtype``."""
    return ARCH_CONFIGS[(arch_of((arch // 10, arch % 10)), precision_of(dtype, tf32))]


def _largest_pow2_divisor(n: int, cap: int) -> int:
    p = 1
    while n % (p * 2) == 0 and p * 2 <= cap:
        p *= 2
    return p


def _padded_head_dim(head_dim: int) -> int:
    if not isinstance(head_dim, int) or head_dim < 1 or head_dim > 256:
        raise ValueError(f"head dim {head_dim!r} is not supported by the Triton kernel; accepted: 1 to 256.")
    return max(16, 1 << (head_dim - 1).bit_length())


def _threshold_tiles(block_m: int, block_n: int) -> tuple[int, int]:
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        top = _THRESHOLD_MAX[name]
        if b < 16 or b > top or b & (b - 1):
            raise ValueError(
                f"threshold skipping in the Triton kernel needs {name} to be a power of two in [16, {top}], got {b}."
            )
    return block_m, block_n


def kernel_config(head_dim: int, block_m: int, block_n: int, dtype: torch.dtype, threshold: bool, *,
                  arch: int = 80, tf32: bool = False) -> dict:
    """Tiles and launch options of one call; ValueError when the LUT blocks do not fit the kernel.

    Returns ``{'D_PAD', 'BLOCK_M', 'BLOCK_N', 'num_warps', 'num_stages'}``. The query tile is the largest power-of-two
    divisor of ``block_m`` up to the table row's ``max_tile_m`` (likewise for keys), at least 16. With ``threshold``
    the tiles equal the LUT blocks: powers of two in [16, 128] x [16, 64]. ``arch`` is an sm value (80, 90, 100,
    120, or any other, mapped to the nearest older table row); ``tf32`` selects the TF32 row for fp32 inputs.
    """
    row = config_for(arch, dtype, tf32)
    d_pad = _padded_head_dim(head_dim)
    if threshold:
        bm, bn = _threshold_tiles(block_m, block_n)
    else:
        bm = _largest_pow2_divisor(block_m, row.max_tile_m)
        bn = _largest_pow2_divisor(block_n, row.max_tile_n)
        if bm < 16 or bn < 16:
            raise ValueError(
                f"the Triton kernel needs block_m and block_n divisible by 16, got block_m={block_m}, "
                f"block_n={block_n}."
            )
    return {"D_PAD": d_pad, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": row.num_warps, "num_stages": row.num_stages}
