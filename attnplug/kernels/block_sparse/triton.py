"""Triton flash-attention forward that walks a block LUT, with an in-kernel coordinate mask and threshold skipping.

One program = one query tile (``BLOCK_M`` rows, a divisor of the LUT's ``block_m``) of one (batch, head). It loads
the tile once, walks the valid entries of its LUT row in order and, for each key block, its ``block_n / BLOCK_N``
sub-tiles: ``S = Q K^T`` (fp32 accumulate), key padding and neighbourhood mask (``-inf``), optional threshold test,
online softmax in base 2, ``acc += P V``. Rows that saw no allowed key are written as zeros.

Head dims that are not powers of two (40, 80, ...) are padded to the next power of two with masked loads. fp32 inputs
use IEEE dots (no TF32) so that fp32 results match the reference to 1e-5.

Registered as ``torch.ops.attnplug.block_sparse_fwd`` (``torch.library.custom_op``) so ``torch.compile`` sees one op.
Set ``TRITON_INTERPRET=1`` before importing this module to run it on CPU tensors (tests).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .lut import BlockLUT
from .masks import NeighborhoodMask

__all__ = ["AUTOTUNE_CONFIGS", "block_sparse_triton", "kernel_config", "na_allowed_kernel", "warps_for"]

_LOG2E = 1.4426950408889634
_MAX_TILE = 128


# ----------------------------------------------------------------------------------------------- mask device functions
@triton.jit
def _na_window(qc, length, kernel, dil, stride, CAUSAL: tl.constexpr, DIL: tl.constexpr):
    """Per-dimension window ``(r, start, end)`` of query coordinates ``qc`` (any int32 tensor; see masks.py).

    ``DIL=False`` specialises to dilation 1 (no integer division/modulo).
    """
    if DIL:
        r = qc % dil
        group_len = (length - r + dil - 1) // dil
        a = qc // dil
    else:
        r = qc  # unused placeholder (no dilation groups)
        group_len = length
        a = qc
    if CAUSAL:  # the group's last query leads; each query's window still ends at itself
        leader = tl.minimum((a // stride) * stride + stride - 1, group_len - 1)
        end = a + 1
        start = tl.maximum(leader - kernel + 1, 0)
    else:  # the group's centre leads (the right-hand one for even strides)
        leader = tl.minimum((a // stride) * stride + stride // 2, group_len - 1)
        start = tl.minimum(tl.maximum(leader - kernel // 2, 0), group_len - kernel)
        end = start + kernel
    return r, start, end


@triton.jit
def _na_in_window(kc, r, start, end, dil, DIL: tl.constexpr):
    """Is key coordinate ``kc`` inside the window ``(r, start, end)`` (broadcasting)?"""
    if DIL:
        kd = kc // dil
        ok = ((kc % dil) == r) & (kd >= start) & (kd < end)
    else:
        ok = (kc >= start) & (kc < end)
    return ok


@triton.jit
def _na_coords(idx, GH, GW):
    return idx // (GH * GW), (idx // GW) % GH, idx % GW


@triton.jit
def _na_allowed(q_idx, k_idx, GF, GH, GW, KT, KY, KX, DT, DY, DX, ST, SY, SX,
                CT: tl.constexpr, CY: tl.constexpr, CX: tl.constexpr, DIL: tl.constexpr):
    """The NATTEN/GNA element mask for broadcastable int32 token indices; tokens >= GF*GH*GW are global."""
    n_grid = GF * GH * GW
    qt, qy, qx = _na_coords(tl.minimum(q_idx, n_grid - 1), GH, GW)
    kt, ky, kx = _na_coords(tl.minimum(k_idx, n_grid - 1), GH, GW)
    rt, s_t, e_t = _na_window(qt, GF, KT, DT, ST, CT, DIL)
    ry, s_y, e_y = _na_window(qy, GH, KY, DY, SY, CY, DIL)
    rx, s_x, e_x = _na_window(qx, GW, KX, DX, SX, CX, DIL)
    ok = _na_in_window(kt, rt, s_t, e_t, DT, DIL) & _na_in_window(ky, ry, s_y, e_y, DY, DIL)
    ok = ok & _na_in_window(kx, rx, s_x, e_x, DX, DIL)
    return ok | (q_idx >= n_grid) | (k_idx >= n_grid)


@triton.jit
def na_allowed_kernel(Q_IDX, K_IDX, OUT, NQ, NK, GF, GH, GW, KT, KY, KX, DT, DY, DX, ST, SY, SX,
                      CT: tl.constexpr, CY: tl.constexpr, CX: tl.constexpr, DIL: tl.constexpr, BQ: tl.constexpr,
                      BK: tl.constexpr):
    """Test helper: ``OUT[i, j] = allowed(Q_IDX[i], K_IDX[j])`` as int8, one (BQ, BK) tile per program."""
    offs_q = tl.program_id(0) * BQ + tl.arange(0, BQ)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    qi = tl.load(Q_IDX + offs_q, mask=offs_q < NQ, other=0)
    ki = tl.load(K_IDX + offs_k, mask=offs_k < NK, other=0)
    ok = _na_allowed(qi[:, None], ki[None, :], GF, GH, GW, KT, KY, KX, DT, DY, DX, ST, SY, SX, CT, CY, CX, DIL)
    tl.store(OUT + offs_q[:, None] * NK + offs_k[None, :], ok.to(tl.int8),
             mask=(offs_q[:, None] < NQ) & (offs_k[None, :] < NK))


# ----------------------------------------------------------------------------------------------------------- kernel
@triton.jit
def _bsa_fwd_kernel(
    Q, K, V, Out, LUT_IDX, LUT_CNT, SKIP,
    qk_scale, thr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh, stride_lm, stride_lk,
    stride_cb, stride_ch, stride_cm,
    H, N_Q, N_K,
    GF, GH, GW, KT, KY, KX, DT, DY, DX, ST, SY, SX,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LUT_BM: tl.constexpr, LUT_BN: tl.constexpr,
    HAS_NA: tl.constexpr, CT: tl.constexpr, CY: tl.constexpr, CX: tl.constexpr, DIL: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    lut_row = (pid_m * BLOCK_M) // LUT_BM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < N_Q
    if HEAD_DIM == D_PAD:  # constant-true channel mask keeps the loads vectorised
        d_ok = tl.full([D_PAD], 1, tl.int1)
    else:
        d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    lut_base = LUT_IDX + off_b * stride_lb + off_h * stride_lh + lut_row * stride_lm
    count = tl.load(LUT_CNT + off_b * stride_cb + off_h * stride_ch + lut_row * stride_cm)

    if HAS_NA:  # query-side windows, computed once per tile
        n_grid = GF * GH * GW
        q_glob = offs_m >= n_grid
        qt, qy, qx = _na_coords(tl.minimum(offs_m, n_grid - 1), GH, GW)
        rt, s_t, e_t = _na_window(qt, GF, KT, DT, ST, CT, DIL)
        ry, s_y, e_y = _na_window(qy, GH, KY, DY, SY, CY, DIL)
        rx, s_x, e_x = _na_window(qx, GW, KX, DX, SX, CX, DIL)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    n_skip = tl.zeros([], dtype=tl.int32)

    for e in range(0, count):
        kb = tl.load(lut_base + e * stride_lk)
        for sub in tl.range(0, LUT_BN // BLOCK_N, loop_unroll_factor=1):
            offs_n = kb * LUT_BN + sub * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = offs_n < N_K
            k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
            k = tl.load(k_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if IEEE_DOT:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            qk = qk * qk_scale
            valid = col_ok[None, :]
            if HAS_NA:
                kt_, ky_, kx_ = _na_coords(tl.minimum(offs_n, n_grid - 1), GH, GW)
                ok = _na_in_window(kt_[None, :], rt[:, None], s_t[:, None], e_t[:, None], DT, DIL)
                ok = ok & _na_in_window(ky_[None, :], ry[:, None], s_y[:, None], e_y[:, None], DY, DIL)
                ok = ok & _na_in_window(kx_[None, :], rx[:, None], s_x[:, None], e_x[:, None], DX, DIL)
                valid = valid & (ok | q_glob[:, None] | (offs_n >= n_grid)[None, :])
            qk = tl.where(valid, qk, float("-inf"))
            m_blk = tl.max(qk, 1)
            if HAS_THRESHOLD:
                need = (m_blk > m_i - thr) & row_ok
                run = tl.max(need.to(tl.int32), 0) > 0
            else:
                run = True
            if run:
                m_new = tl.maximum(m_i, m_blk)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(qk - m_safe[:, None])
                alpha = tl.math.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None]
                v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
                v = tl.load(v_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                if IEEE_DOT:
                    acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
                else:
                    acc = tl.dot(p.to(v.dtype), v, acc)
                m_i = m_new
            else:
                n_skip += 1

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(SKIP + pid_bh * tl.num_programs(0) + pid_m, n_skip)


# ------------------------------------------------------------------------------------------------------------- host
def _largest_pow2_divisor(n: int, cap: int) -> int:
    p = 1
    while n % (p * 2) == 0 and p * 2 <= cap:
        p *= 2
    return p


def kernel_config(head_dim: int, block_m: int, block_n: int, dtype: torch.dtype, threshold: bool) -> dict:
    """Tile sizes for one call: ``{'D_PAD', 'BLOCK_M', 'BLOCK_N'}``; ValueError when the LUT blocks do not fit.

    Chosen from the compile report (``benchmarks/results/kernel_compile_report.json``: 128-row tiles spilled on
    sm_80, and so did 64 x 64 tiles without the threshold branch): the query tile is the largest power-of-two divisor
    of ``block_m`` up to 64 (32 for fp32, whose IEEE dots need more registers), the key tile the largest divisor of
    ``block_n`` up to 32. With ``threshold`` the tiles must equal the LUT blocks (the skip decision is per LUT block),
    so ``block_m`` must then be a power of two in [16, 128] and ``block_n`` in [16, 64]; 64 x 64 blocks compile
    without spills in 16-bit, 32 x 32 in fp32.
    """
    d_pad = max(16, triton.next_power_of_2(head_dim))
    if d_pad > 256:
        raise ValueError(f"head dim {head_dim} is not supported by the Triton kernel; accepted: <= 256.")
    cap_m, cap_n = (32, 32) if dtype == torch.float32 else (64, 32)
    if threshold:
        for name, b, top in (("block_m", block_m, 128), ("block_n", block_n, 64)):
            if b < 16 or b > top or b & (b - 1):
                raise ValueError(
                    f"threshold skipping in the Triton kernel needs {name} to be a power of two in [16, {top}], "
                    f"got {b}."
                )
        return {"D_PAD": d_pad, "BLOCK_M": block_m, "BLOCK_N": block_n}
    bm = _largest_pow2_divisor(block_m, cap_m)
    bn = _largest_pow2_divisor(block_n, cap_n)
    if bm < 16 or bn < 16:
        raise ValueError(
            f"the Triton kernel needs block_m and block_n divisible by 16, got block_m={block_m}, block_n={block_n}."
        )
    return {"D_PAD": d_pad, "BLOCK_M": bm, "BLOCK_N": bn}


def warps_for(block_m: int, d_pad: int) -> tuple[int, ...]:
    """num_warps the autotuner may try for a tile: 4 warps spilled (or sat at 255 registers) beyond head dim 32."""
    del block_m  # every shipped tile has <= 64 rows; kept for future larger tiles
    return (4, 8) if d_pad <= 32 else (8,)


def _prune(configs, named_args, **kwargs):
    meta = {**named_args, **kwargs}  # constexprs arrive as keyword arguments
    allowed = warps_for(meta["BLOCK_M"], meta["D_PAD"])
    return [c for c in configs if c.num_warps in allowed] or list(configs)


#: num_warps / num_stages tried by the autotuner on a real GPU (the interpreter runs the plain kernel once).
#: The LUT indirection keeps Triton from pipelining the K/V loads (stages 2 and 3 compile to the same shared memory),
#: so only the warp count is tuned.
AUTOTUNE_CONFIGS = [triton.Config({}, num_warps=w, num_stages=2) for w in (4, 8)]
_bsa_fwd_tuned = triton.autotune(
    configs=AUTOTUNE_CONFIGS,
    key=["HEAD_DIM", "BLOCK_M", "BLOCK_N", "LUT_BN", "HAS_NA", "DIL", "HAS_THRESHOLD", "IEEE_DOT"],
    prune_configs_by={"early_config_prune": _prune},
)(_bsa_fwd_kernel)


def _na_args(neighborhood: NeighborhoodMask | None) -> list[int]:
    if neighborhood is None:
        return []
    nb = neighborhood
    return [*nb.grid, *nb.kernel_size, *nb.dilation, *nb.stride, *(int(c) for c in nb.is_causal)]


def _launch(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, counts: Tensor, block_m: int, block_n: int,
            na: list[int], scale: float, threshold: float | None) -> tuple[Tensor, Tensor]:
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    cfg = kernel_config(dim, block_m, block_n, q.dtype, threshold is not None)
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), batch * heads)
    out = torch.empty_like(q)
    skip = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=q.device)
    li, lc = indices, counts  # size-1 batch/head dims broadcast through zero strides
    sl = [li.stride(0) if li.shape[0] > 1 else 0, li.stride(1) if li.shape[1] > 1 else 0, li.stride(2), li.stride(3)]
    sc = [lc.stride(0) if lc.shape[0] > 1 else 0, lc.stride(1) if lc.shape[1] > 1 else 0, lc.stride(2)]
    has_na = bool(na)
    geo = na[:12] if has_na else [1] * 12
    causal = [bool(c) for c in na[12:15]] if has_na else [False, False, False]
    args = (
        q, k, v, out, li, lc, skip,
        scale * _LOG2E, (threshold or 0.0) * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *sl, *sc,
        heads, n_q, n_k, *geo,
    )
    meta = dict(
        HEAD_DIM=dim, D_PAD=cfg["D_PAD"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], LUT_BM=block_m,
        LUT_BN=block_n, HAS_NA=has_na, CT=causal[0], CY=causal[1], CX=causal[2], DIL=has_na and max(na[6:9]) > 1,
        HAS_THRESHOLD=threshold is not None, IEEE_DOT=q.dtype == torch.float32,
    )
    if q.device.type == "cuda":
        _bsa_fwd_tuned[grid](*args, **meta)
    else:  # interpreter: no autotuning
        _bsa_fwd_kernel[grid](*args, **meta, num_warps=warps_for(cfg["BLOCK_M"], cfg["D_PAD"])[0], num_stages=1)
    return out, skip.view(batch, heads, grid[0])


@torch.library.custom_op("attnplug::block_sparse_fwd", mutates_args=())
def _block_sparse_fwd_op(q: Tensor, k: Tensor, v: Tensor, lut_indices: Tensor, lut_counts: Tensor, block_m: int,
                         block_n: int, na: list[int], scale: float, threshold: float | None) -> tuple[Tensor, Tensor]:
    """``torch.ops.attnplug.block_sparse_fwd``: (out (B, H, N_q, D), skipped (B, H, num_query_tiles) int32)."""
    return _launch(q, k, v, lut_indices, lut_counts, block_m, block_n, list(na), scale, threshold)


@_block_sparse_fwd_op.register_fake
def _(q, k, v, lut_indices, lut_counts, block_m, block_n, na, scale, threshold):
    cfg = kernel_config(q.shape[-1], block_m, block_n, q.dtype, threshold is not None)
    tiles = math.ceil(q.shape[2] / cfg["BLOCK_M"])
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[1], tiles), dtype=torch.int32)


def block_sparse_triton(q: Tensor, k: Tensor, v: Tensor, lut: BlockLUT, *, neighborhood: NeighborhoodMask | None,
                        scale: float, threshold: float | None) -> tuple[Tensor, Tensor]:
    """Runs the kernel (inputs validated by the dispatcher; ``lut`` on ``q.device``).

    Returns ``(out (B, H, N_q, D), skipped (B, H, num_query_tiles) int32)``.
    """
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return torch.ops.attnplug.block_sparse_fwd(q, k, v, lut.indices, lut.counts, lut.block_m, lut.block_n,
                                               _na_args(neighborhood), float(scale), threshold)
