"""Triton flash-attention forward that walks a block LUT, with in-kernel key keep / coordinate masks and skipping.

One program = one query tile (``BLOCK_M`` rows, a divisor of the LUT's ``block_m``) of one (batch, head). It loads
the tile once and walks one flat loop over the valid entries of its LUT row, in order, times the
``block_n / BLOCK_N`` key sub-tiles of each entry (flat so that Triton software-pipelines the K/V loads):
``S = Q K^T`` (fp32 accumulate), optional damping (``HAS_DAMP``: the entry's flag, loaded next to its key block
index, multiplies the positive scaled scores by ``damp_factor``, UltraViCo's rule), key padding, ``kv_keep`` and
neighbourhood mask (``-inf``), optional threshold test, online softmax in base 2, ``acc += P V``. Rows that saw no
allowed key are written as zeros.

Launch safety at any size: query tiles on grid x (limit 2^31 - 1), B*H folded onto grid y and z (each at most
``GRID_YZ_LIMIT``); row offsets are int64 (a (B, N, H, D)-strided view has row stride H*D, so row x stride passes
2^31 once N*H*D does). Tiles, warps and pipeline stages come from ``arch_configs.ARCH_CONFIGS`` for the launching
device's architecture (sm_80 row in the interpreter).

Head dims that are not powers of two (40, 72, 96, ...) are padded to the next power of two with masked loads. fp32
inputs use TF32 dots only when ``torch.backends.cuda.matmul.allow_tf32`` is True at launch, else IEEE dots (fp32
results then match the reference to 1e-5).

Registered as ``torch.ops.attnplug.block_sparse_fwd`` (``torch.library.custom_op``) so ``torch.compile`` sees one op.
Set ``TRITON_INTERPRET=1`` before importing this module to run it on CPU tensors (tests).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .arch_configs import arch_of, kernel_config
from .lut import BlockLUT
from .masks import NeighborhoodMask
from .reference import check_kv_keep

__all__ = [
    "GRID_YZ_LIMIT",
    "block_sparse_triton",
    "fold_batch_heads",
    "kernel_config",
    "launch_arch",
    "na_allowed_kernel",
    "row_offsets_kernel",
    "stride_alignment",
]

_LOG2E = 1.4426950408889634
#: CUDA's limit on grid dimensions y and z; B*H is folded onto both (read at every launch).
GRID_YZ_LIMIT = 65535


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


# --------------------------------------------------------------------------------------------------- offsets, grid
@triton.jit
def _rows64(idx, stride, ALIGN: tl.constexpr):
    """Element offsets ``idx * stride`` of the rows ``idx`` (int32 ``(R,)``) as an int64 column ``(R, 1)``.

    ``ALIGN`` divides ``stride``: Triton infers only 16 | stride, and head dims 40 or 72 (8 | stride) would else load
    2 bytes at a time and lose the K/V pipeline.
    """
    offs = idx.to(tl.int64)[:, None] * stride
    if ALIGN > 1:
        offs = tl.multiple_of(offs, [ALIGN, 1])
    return offs


@triton.jit
def _base64(off_b, off_h, stride_b, stride_h, ALIGN: tl.constexpr):
    """Element offset of one (batch, head) slice (``off_b``, ``off_h`` int64 scalars; ``ALIGN`` divides both)."""
    offs = off_b * stride_b + off_h * stride_h
    if ALIGN > 1:
        offs = tl.multiple_of(offs, ALIGN)
    return offs


@triton.jit
def row_offsets_kernel(OUT, start, stride, BLOCK: tl.constexpr):
    """Test helper: ``OUT[i] = (start + i) * stride`` (int64 ``(BLOCK,)``) through the kernel's offset function."""
    offs = _rows64(start + tl.arange(0, BLOCK), stride, 1)
    tl.store(OUT + tl.arange(0, BLOCK)[:, None], offs)


def fold_batch_heads(bh: int, cap: int | None = None) -> tuple[int, int]:
    """Grid ``(y, z)`` covering ``bh`` (batch x heads) programs with both at most ``cap`` (``GRID_YZ_LIMIT``).

    Program ``(y, z)`` serves ``z * y_size + y``; the at most ``z_size - 1`` programs past ``bh`` write nothing.
    """
    cap = GRID_YZ_LIMIT if cap is None else cap
    if bh < 1 or bh > cap * cap:
        raise ValueError(f"batch x heads = {bh} cannot be launched by the Triton kernel; accepted: 1 to {cap * cap}.")
    gz = triton.cdiv(bh, cap)
    return triton.cdiv(bh, gz), gz


def stride_alignment(*tensors: Tensor) -> int:
    """The largest power of two <= 16 dividing every stride of ``tensors`` but the last and those of size-1 dims
    (which only ever multiply index 0)."""
    align = 16
    for t in tensors:
        for size, s in zip(t.shape[:-1], t.stride()[:-1]):
            while size > 1 and s % align:
                align //= 2
    return align


# ----------------------------------------------------------------------------------------------------------- kernel
@triton.jit
def _bsa_fwd_kernel(
    Q, K, V, Out, LUT_IDX, LUT_CNT, KEEP, SKIP, DAMP,
    qk_scale, thr, damp_factor,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh, stride_lm, stride_lk,
    stride_cb, stride_ch, stride_cm,
    stride_eb, stride_en,
    stride_db, stride_dh, stride_dm, stride_dk,
    H, BH, N_Q, N_K, M_LUT,
    GF, GH, GW, KT, KY, KX, DT, DY, DX, ST, SY, SX,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LUT_BM: tl.constexpr, LUT_BN: tl.constexpr,
    HAS_NA: tl.constexpr, CT: tl.constexpr, CY: tl.constexpr, CX: tl.constexpr, DIL: tl.constexpr,
    HAS_KEEP: tl.constexpr, HAS_THRESHOLD: tl.constexpr, IEEE_DOT: tl.constexpr, ALIGN: tl.constexpr,
    HAS_DAMP: tl.constexpr = False,
):
    """Grid ``(cdiv(N_Q, BLOCK_M), y, z)`` with ``(y, z)`` from :func:`fold_batch_heads`; see the module docstring."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)
    live = pid_bh < BH
    pid_bh = tl.minimum(pid_bh, BH - 1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    lut_row = (pid_m * BLOCK_M) // LUT_BM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < tl.where(live, N_Q, 0)  # (the interpreter mis-types a vector & scalar bool)
    if HEAD_DIM == D_PAD:  # constant-true channel mask keeps the loads vectorised
        d_ok = tl.full([D_PAD], 1, tl.int1)
    else:
        d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + _base64(off_b, off_h, stride_qb, stride_qh, ALIGN) + _rows64(offs_m, stride_qn, ALIGN)
    q_ptrs += offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + _base64(off_b, off_h, stride_kb, stride_kh, ALIGN)
    v_base = V + _base64(off_b, off_h, stride_vb, stride_vh, ALIGN)
    keep_base = KEEP + off_b * stride_eb
    lut_base = LUT_IDX + off_b * stride_lb + off_h * stride_lh + lut_row * stride_lm
    if HAS_DAMP:
        damp_base = DAMP + off_b * stride_db + off_h * stride_dh + lut_row * stride_dm
    count = tl.load(LUT_CNT + off_b * stride_cb + off_h * stride_ch + lut_row * stride_cm)
    count = tl.where(live, count, 0)

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
    SUBS: tl.constexpr = LUT_BN // BLOCK_N

    for it in range(0, count * SUBS):
        kb = tl.load(lut_base + (it // SUBS) * stride_lk)
        offs_n = kb * LUT_BN + (it % SUBS) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N_K
        k = tl.load(k_base + _rows64(offs_n, stride_kn, ALIGN) + offs_d[None, :] * stride_kd,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if IEEE_DOT:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = qk * qk_scale
        if HAS_DAMP:  # a scalar factor per entry (1 when unflagged): positive scores only
            flag = tl.load(damp_base + (it // SUBS) * stride_dk)
            qk = tl.where(qk > 0, qk * tl.where(flag != 0, damp_factor, 1.0), qk)
        valid = col_ok
        if HAS_KEEP:
            valid = valid & (tl.load(keep_base + offs_n.to(tl.int64) * stride_en, mask=col_ok, other=0) != 0)
        valid = valid[None, :]
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
            v = tl.load(v_base + _rows64(offs_n, stride_vn, ALIGN) + offs_d[None, :] * stride_vd,
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if IEEE_DOT:
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
        else:
            n_skip += 1

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = Out + _base64(off_b, off_h, stride_ob, stride_oh, ALIGN) + _rows64(offs_m, stride_on, ALIGN)
    o_ptrs += offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    # One count per LUT query block: its first tile writes (with a threshold the tile is the whole block).
    first = (pid_m * BLOCK_M) % LUT_BM == 0
    tl.store(SKIP + pid_bh.to(tl.int64) * M_LUT + lut_row, n_skip, mask=live & first)


# ------------------------------------------------------------------------------------------------------------- host
def launch_arch(device: torch.device) -> int:
    """The ``ARCH_CONFIGS`` architecture for ``device``: its CUDA capability, or sm_80 for the interpreter."""
    if device.type != "cuda":
        return 80
    return arch_of(torch.cuda.get_device_capability(device))


def _na_args(neighborhood: NeighborhoodMask | None) -> list[int]:
    if neighborhood is None:
        return []
    nb = neighborhood
    return [*nb.grid, *nb.kernel_size, *nb.dilation, *nb.stride, *(int(c) for c in nb.is_causal)]


def _broadcast_strides(x: Tensor, lead: int) -> list[int]:
    """``x``'s strides with the first ``lead`` dimensions zeroed where they have size 1 (they broadcast)."""
    return [0 if i < lead and x.shape[i] == 1 else s for i, s in enumerate(x.stride())]


def _launch(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, counts: Tensor, kv_keep: Tensor | None, block_m: int,
            block_n: int, na: list[int], scale: float, threshold: float | None, damp: Tensor | None = None,
            damp_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    tf32 = q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32  # read at launch, never set
    cfg = kernel_config(dim, block_m, block_n, q.dtype, threshold is not None, arch=launch_arch(q.device), tf32=tf32)
    gy, gz = fold_batch_heads(batch * heads)
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), gy, gz)
    m_lut = triton.cdiv(n_q, block_m)
    out = torch.empty_like(q)
    skip = torch.empty(batch, heads, m_lut, dtype=torch.int32, device=q.device)
    if kv_keep is not None:
        check_kv_keep(kv_keep, batch, n_k, q.device)
        keep, keep_strides = kv_keep.view(torch.uint8), _broadcast_strides(kv_keep, 1)
    else:
        keep, keep_strides = counts, [0, 0]  # never read (HAS_KEEP=False)
    if damp is not None:
        flags, damp_strides = damp.view(torch.uint8), _broadcast_strides(damp, 2)
    else:
        flags, damp_strides = counts, [0, 0, 0, 0]  # never read (HAS_DAMP=False)
    has_na = bool(na)
    geo = na[:12] if has_na else [1] * 12
    causal = [bool(c) for c in na[12:15]] if has_na else [False, False, False]
    args = (
        q, k, v, out, indices, counts, keep, skip, flags,
        scale * _LOG2E, (threshold or 0.0) * _LOG2E, float(damp_factor),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *_broadcast_strides(indices, 2), *_broadcast_strides(counts, 2), *keep_strides, *damp_strides,
        heads, batch * heads, n_q, n_k, m_lut, *geo,
    )
    _bsa_fwd_kernel[grid](
        *args, HEAD_DIM=dim, D_PAD=cfg["D_PAD"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], LUT_BM=block_m,
        LUT_BN=block_n, HAS_NA=has_na, CT=causal[0], CY=causal[1], CX=causal[2],
        DIL=has_na and max(na[6:9]) > 1, HAS_KEEP=kv_keep is not None, HAS_THRESHOLD=threshold is not None,
        IEEE_DOT=q.dtype == torch.float32 and not tf32, ALIGN=stride_alignment(q, k, v, out),
        HAS_DAMP=damp is not None, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out, skip


@torch.library.custom_op("attnplug::block_sparse_fwd", mutates_args=())
def _block_sparse_fwd_op(q: Tensor, k: Tensor, v: Tensor, lut_indices: Tensor, lut_counts: Tensor,
                         kv_keep: Tensor | None, block_m: int, block_n: int, na: list[int], scale: float,
                         threshold: float | None, damp: Tensor | None = None, damp_factor: float = 1.0
                         ) -> tuple[Tensor, Tensor]:
    """``torch.ops.attnplug.block_sparse_fwd``: (out (B, H, N_q, D), skipped (B, H, cdiv(N_q, block_m)) int32);
    ``damp`` (bool, shaped like ``lut_indices``) flags the LUT entries whose positive scores ``damp_factor``
    multiplies."""
    return _launch(q, k, v, lut_indices, lut_counts, kv_keep, block_m, block_n, list(na), scale, threshold, damp,
                   damp_factor)


@_block_sparse_fwd_op.register_fake
def _(q, k, v, lut_indices, lut_counts, kv_keep, block_m, block_n, na, scale, threshold, damp=None, damp_factor=1.0):
    tiles = math.ceil(q.shape[2] / block_m)
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[1], tiles), dtype=torch.int32)


def block_sparse_triton(q: Tensor, k: Tensor, v: Tensor, lut: BlockLUT, *, neighborhood: NeighborhoodMask | None,
                        scale: float, threshold: float | None, kv_keep: Tensor | None = None,
                        damp: Tensor | None = None, damp_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """Runs the kernel on ``q (B, H, N_q, D)``, ``k, v (B, H, N_k, D)`` (any strides; validated by the dispatcher,
    ``lut`` on ``q.device``); ``kv_keep`` bool ``(B|1, N_k)`` excludes the keys where it is False for every query;
    ``damp`` (bool, shaped like ``lut.indices``, on ``q.device``) flags the entries whose positive scores
    ``damp_factor`` multiplies.

    Returns ``(out (B, H, N_q, D), skipped (B, H, num_query_tiles) int32)``: the threshold-skipped key sub-tiles per
    LUT query block (``num_query_tiles = cdiv(N_q, lut.block_m)``, whatever tile the architecture runs).
    """
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if damp is None:
        return torch.ops.attnplug.block_sparse_fwd(q, k, v, lut.indices, lut.counts, kv_keep, lut.block_m,
                                                   lut.block_n, _na_args(neighborhood), float(scale), threshold)
    return torch.ops.attnplug.block_sparse_fwd(q, k, v, lut.indices, lut.counts, kv_keep, lut.block_m, lut.block_n,
                                               _na_args(neighborhood), float(scale), threshold, damp,
                                               float(damp_factor))
