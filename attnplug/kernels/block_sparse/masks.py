"""Element masks computed from token coordinates: NATTEN / GNA neighbourhoods with global (text) tokens.

The first ``frames * height * width`` tokens form a row-major ``(t, y, x)`` grid; every later token is *global*
(it attends to, and is attended by, every token whose block is in the LUT). Per grid dimension of length ``L`` with
kernel ``k``, dilation ``d``, stride ``s`` and causal flag ``c``, a query at coordinate ``i`` sees the key coordinate
``j`` iff ``j % d == i % d`` and ``start <= j // d < end`` where, with ``r = i % d``, ``Lr = (L - r + d - 1) // d``
(the length of ``i``'s dilation group) and ``a = i // d``; ``s`` consecutive positions of a group share the window
of their stride-group leader ``a'`` (NATTEN's rule):

- non-causal: ``a' = min((a // s) * s + s // 2, Lr - 1)`` (the centre; the right-hand one for even ``s``),
  ``start = clamp(a' - k // 2, 0, Lr - k)``, ``end = start + k`` (windows clamped inward: every query sees exactly
  ``k`` positions);
- causal: ``a' = min((a // s) * s + s - 1, Lr - 1)`` (the group's last position), ``start = max(a' - k + 1, 0)``,
  ``end = a + 1`` (a query never sees later positions).

The same formula is written as a Triton device function in ``triton.py``; tests check both against a brute-force
enumeration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..._args import DIM_NAMES, as_tuple
from .lut import BlockLUT

__all__ = ["NeighborhoodMask", "dim_window"]


def _merge_x_intervals(qb, rt, st, et, ry, sy, ey, xlo, xhi, dx: int, width: int):
    """Merges the x-intervals of queries that share a query block and (t, y) windows.

    Two intervals merge when the next starts at most ``dx`` after the running end, so the merged set of allowed x
    positions never has a gap wider than ``dx`` (<= block_n): marking every key block between its ends stays exact.
    Returns the same columns for the merged rows (typically ~``block_m / kernel_x`` times fewer rows).
    """
    cols = torch.stack([qb, rt, st, et, ry, sy, ey])
    _, group = torch.unique(cols, dim=1, return_inverse=True)
    big = width + 1  # > any x coordinate
    order = torch.argsort(group * big + xlo)
    g, lo, hi = group[order], xlo[order], xhi[order]
    run_hi = torch.cummax(g * big + hi, 0).values - g * big  # running end within each group
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = (g[1:] != g[:-1]) | (lo[1:] > run_hi[:-1] + dx)
    seg = torch.cumsum(start.long(), 0) - 1
    merged_hi = torch.zeros(int(seg[-1]) + 1, dtype=hi.dtype).scatter_reduce(0, seg, hi, "amax", include_self=False)
    first = order[start]
    return (qb[first], rt[first], st[first], et[first], ry[first], sy[first], ey[first], lo[start], merged_hi)

_DIM_NAMES = DIM_NAMES


def dim_window(i: Tensor, length: int, kernel: int, dilation: int, stride: int, causal: bool):
    """Window of query coordinates ``i`` along one dimension.

    Returns ``(r, start, end)`` (same shape as ``i``): a key coordinate ``j`` is allowed iff ``j % dilation == r`` and
    ``start <= j // dilation < end``.
    """
    d, k, s = dilation, kernel, stride
    r = i % d
    group_len = (length - r + d - 1) // d
    a = i // d
    if causal:  # the group's last query leads; each query's window still ends at itself
        leader = torch.minimum((a // s) * s + s - 1, group_len - 1)
        end = a + 1
        start = torch.clamp(leader - k + 1, min=0)
    else:  # the group's centre leads (the right-hand one for even strides)
        leader = torch.minimum((a // s) * s + s // 2, group_len - 1)
        start = torch.minimum(torch.clamp(leader - k // 2, min=0), group_len - k)
        end = start + k
    return r, start, end


@dataclass(frozen=True)
class NeighborhoodMask:
    """Neighbourhood (sliding / strided / blocked window) element mask with NATTEN semantics.

    Attributes:
        grid: ``(frames, height, width)`` of the first ``frames * height * width`` tokens (row-major ``t, y, x``);
            tokens after them are global. Use ``frames=1`` for images.
        kernel_size: window size per dimension (odd unless causal, or equal to the grid length: the whole
            dimension); an int applies to all three dimensions (this is the kernel-level 3-D mask).
        dilation: dilation per dimension.
        is_causal: causal flag per dimension (a query sees itself and the ``kernel - 1`` positions before it).
        stride: GNA stride per dimension: ``stride`` consecutive queries share the window of their group's centre
            (1 = sliding window, ``kernel`` = blocked / Swin-style windows).
    """

    grid: tuple[int, int, int]
    kernel_size: tuple[int, int, int]
    dilation: tuple[int, int, int] = (1, 1, 1)
    is_causal: tuple[bool, bool, bool] = (False, False, False)
    stride: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        owner = "NeighborhoodMask"
        grid = as_tuple(self.grid, 3, "grid", owner)
        kernel = as_tuple(self.kernel_size, 3, "kernel_size", owner)
        dilation = as_tuple(self.dilation, 3, "dilation", owner)
        causal = as_tuple(self.is_causal, 3, "is_causal", owner, kind=bool)
        stride = as_tuple(self.stride, 3, "stride", owner)
        for dim, (n, k, d, c, s) in enumerate(zip(grid, kernel, dilation, causal, stride)):
            name = _DIM_NAMES[dim]
            if n < 1:
                raise ValueError(f"grid[{dim}] ({name}) must be >= 1, got {n}.")
            if k < 1:
                raise ValueError(f"kernel_size[{dim}] ({name}) must be >= 1, got {k}.")
            if d < 1:
                raise ValueError(f"dilation[{dim}] ({name}) must be >= 1, got {d}.")
            if s < 1:
                raise ValueError(f"stride[{dim}] ({name}) must be >= 1, got {s}.")
            if k * d > n:
                raise ValueError(
                    f"kernel_size[{dim}] * dilation[{dim}] ({name}) = {k} * {d} = {k * d} exceeds the grid "
                    f"length {n}; it must be <= {n}."
                )
            if s > k:
                raise ValueError(f"stride[{dim}] ({name}) = {s} must be <= kernel_size[{dim}] = {k}.")
            if not c and k % 2 == 0 and k != n:  # an even kernel equal to the length is the whole dimension
                raise ValueError(
                    f"kernel_size[{dim}] ({name}) = {k} must be odd for a non-causal dimension (or equal to the grid "
                    f"length {n}: the whole dimension)."
                )
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "kernel_size", kernel)
        object.__setattr__(self, "dilation", dilation)
        object.__setattr__(self, "is_causal", causal)
        object.__setattr__(self, "stride", stride)

    # ------------------------------------------------------------------ helpers
    @property
    def num_grid_tokens(self) -> int:
        """``frames * height * width``: tokens with a smaller index are grid tokens, the rest are global."""
        return self.grid[0] * self.grid[1] * self.grid[2]

    def check_tokens(self, n: int, name: str = "n") -> None:
        """Raises ValueError when a sequence of ``n`` tokens cannot hold the grid."""
        if self.num_grid_tokens > n:
            raise ValueError(
                f"neighborhood grid {self.grid} has {self.num_grid_tokens} tokens, more than the sequence length "
                f"{name}={n}; the grid product must be <= {n}."
            )

    def coords(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Row-major ``(t, y, x)`` coordinates of token indices ``idx`` (meaningful for grid tokens only)."""
        _, h, w = self.grid
        return idx // (h * w), (idx // w) % h, idx % w

    def windows(self, q_idx: Tensor):
        """Per-dimension ``(r, start, end)`` windows for query token indices, see :func:`dim_window`."""
        cq = self.coords(q_idx)
        return [
            dim_window(cq[d], self.grid[d], self.kernel_size[d], self.dilation[d], self.stride[d], self.is_causal[d])
            for d in range(3)
        ]

    def allowed(self, q_idx: Tensor, k_idx: Tensor) -> Tensor:
        """Boolean mask: may query token ``q_idx`` attend to key token ``k_idx``? Broadcasts like ``q_idx + k_idx``.

        Global tokens (index >= ``num_grid_tokens``) are allowed with everything.
        """
        q_idx = torch.as_tensor(q_idx).long()
        k_idx = torch.as_tensor(k_idx, device=q_idx.device).long()
        n_grid = self.num_grid_tokens
        q_grid = q_idx.clamp(max=n_grid - 1)
        k_grid = k_idx.clamp(max=n_grid - 1)
        ck = self.coords(k_grid)
        ok = torch.ones(torch.broadcast_shapes(q_idx.shape, k_idx.shape), dtype=torch.bool, device=q_idx.device)
        for d, (r, start, end) in enumerate(self.windows(q_grid)):
            j = ck[d]
            dil = self.dilation[d]
            jd = j // dil
            ok = ok & (j % dil == r) & (jd >= start) & (jd < end)
        return ok | (q_idx >= n_grid) | (k_idx >= n_grid)

    # ------------------------------------------------------------------ LUT
    def block_lut(self, n: int, block_m: int, block_n: int, *, n_k: int | None = None,
                  device: torch.device | str = "cpu") -> BlockLUT:
        """Exact LUT ``(1, 1, ceil(n / block_m), max)``: key block ``j`` is listed for query block ``i`` iff some query
        of block ``i`` may attend to some key of block ``j``. Global key blocks are listed for every query block, and
        query blocks holding a global query list every key block. ``n_k`` defaults to ``n`` (self-attention).

        Cost: one interval per (grid query, frame offset, row offset) of the window, i.e.
        ``O(grid tokens * kernel_t * kernel_y)`` integer work on the CPU, no ``N x N`` mask.
        """
        n_k = n if n_k is None else n_k
        self.check_tokens(n, "n")
        self.check_tokens(n_k, "n_k")
        if block_m < 1 or block_n < 1:
            raise ValueError(f"block_m and block_n must be >= 1, got {block_m} and {block_n}.")
        mask = self.block_mask(n, block_m, block_n, n_k=n_k)
        return BlockLUT.from_block_mask(mask[None, None], block_m, block_n).to(device)

    def block_mask(self, n: int, block_m: int, block_n: int, *, n_k: int | None = None) -> Tensor:
        """Exact boolean block mask ``(ceil(n / block_m), ceil(n_k / block_n))`` behind :meth:`block_lut` (CPU)."""
        n_k = n if n_k is None else n_k
        mq, mk = math.ceil(n / block_m), math.ceil(n_k / block_n)
        n_grid = self.num_grid_tokens
        f, h, w = self.grid
        kt, ky, kx = self.kernel_size
        dt, dy, dx = self.dilation
        # diff[i, j] += 1 at the first and -= 1 after the last key block of each interval; cumsum > 0 = listed.
        diff = torch.zeros(mq, mk + 1, dtype=torch.int32)
        chunk = max(1, (1 << 22) // max(1, kt * ky * (kx if dx > block_n else 1)))
        off_t = torch.arange(kt)
        off_y = torch.arange(ky)
        for lo_q in range(0, n_grid, chunk):
            q = torch.arange(lo_q, min(n_grid, lo_q + chunk))
            (rt, st, et), (ry, sy, ey), (rx, sx, ex) = self.windows(q)
            qb = q // block_m
            xlo, xhi = rx + dx * sx, rx + dx * (ex - 1)
            if dx <= block_n:
                qb, rt, st, et, ry, sy, ey, xlo, xhi = _merge_x_intervals(qb, rt, st, et, ry, sy, ey, xlo, xhi, dx, w)
            t = rt[:, None] + dt * (st[:, None] + off_t)  # (Q, kt) key frames
            y = ry[:, None] + dy * (sy[:, None] + off_y)  # (Q, ky) key rows
            # causal windows near the start are shorter than the kernel: drop the offsets past the end
            ok = ((st[:, None] + off_t) < et[:, None])[:, :, None] & ((sy[:, None] + off_y) < ey[:, None])[:, None, :]
            base = (t[:, :, None] * (h * w) + y[:, None, :] * w).reshape(len(qb), -1)  # (Q, kt*ky)
            ok = ok.reshape(len(qb), -1)
            if dx > block_n:  # allowed x positions may skip whole key blocks: enumerate them one by one
                off_x = torch.arange(kx)
                x = rx[:, None] + dx * (sx[:, None] + off_x)  # (Q, kx)
                lo = (base[:, :, None] + x[:, None, :]).reshape(len(qb), -1)
                ok = (ok[:, :, None] & ((sx[:, None] + off_x) < ex[:, None])[:, None, :]).reshape(len(qb), -1)
                hi = lo
            else:  # consecutive allowed keys are <= block_n apart: every block between the ends is touched
                lo = base + xlo[:, None]
                hi = base + xhi[:, None]
            qbs = qb[:, None].expand_as(lo)[ok]
            lo, hi = lo[ok], hi[ok]
            diff.index_put_((qbs, lo // block_n), torch.ones(lo.numel(), dtype=torch.int32), accumulate=True)
            diff.index_put_((qbs, hi // block_n + 1), torch.full((hi.numel(),), -1, dtype=torch.int32),
                            accumulate=True)
        mask = diff.cumsum(-1)[:, :mk] > 0
        if n_grid < n_k:  # global keys: visible from every query block
            mask[:, n_grid // block_n:] = True
        if n_grid < n:  # global queries: see every key block
            mask[n_grid // block_m:, :] = True
        return mask
