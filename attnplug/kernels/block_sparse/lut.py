"""Block look-up tables (LUTs): which key blocks each query block visits.

A :class:`BlockLUT` is the compact form of a block mask of shape ``(B|1, H|1, num_q_blocks, num_k_blocks)``:
for every query block it lists the indices of the key blocks to visit (``indices``) and how many of them are valid
(``counts``). The kernels walk the valid entries in order, so the order of a row is the order in which key blocks
are processed (this matters only for ``threshold`` skipping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DEFAULT_BLOCK_M", "DEFAULT_BLOCK_N", "BlockLUT"]

#: Block sizes used when a caller passes no LUT but needs one (threshold skipping, neighbourhood LUTs).
DEFAULT_BLOCK_M = 128
DEFAULT_BLOCK_N = 64


def _check_block_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (tokens per block), got {value!r}.")


@dataclass(frozen=True)
class BlockLUT:
    """Key-block look-up table for block-sparse attention.

    Attributes:
        indices: int32 tensor ``(B|1, H|1, num_q_blocks, max_k_blocks)``; entry ``[b, h, i, j]`` for ``j < counts[b, h,
            i]`` is the index of a key block visited by query block ``i``; the remaining entries are padding (ignored).
        counts: int32 tensor ``(B|1, H|1, num_q_blocks)``: number of valid entries per row of ``indices``.
        block_m: query block size in tokens.
        block_n: key block size in tokens.

    Size-1 batch/head dimensions broadcast over the batch and heads of ``q``.
    """

    indices: Tensor
    counts: Tensor
    block_m: int
    block_n: int

    def __post_init__(self) -> None:
        _check_block_size("block_m", self.block_m)
        _check_block_size("block_n", self.block_n)
        if not isinstance(self.indices, Tensor) or self.indices.dim() != 4:
            shape = tuple(self.indices.shape) if isinstance(self.indices, Tensor) else type(self.indices).__name__
            raise ValueError(
                f"BlockLUT.indices must be a 4-D tensor (B|1, H|1, num_q_blocks, max_k_blocks), got {shape}."
            )
        if not isinstance(self.counts, Tensor) or self.counts.dim() != 3:
            shape = tuple(self.counts.shape) if isinstance(self.counts, Tensor) else type(self.counts).__name__
            raise ValueError(f"BlockLUT.counts must be a 3-D tensor (B|1, H|1, num_q_blocks), got {shape}.")
        if self.indices.dtype != torch.int32 or self.counts.dtype != torch.int32:
            raise ValueError(
                f"BlockLUT.indices and counts must be int32, got {self.indices.dtype} and {self.counts.dtype}."
            )
        if tuple(self.indices.shape[:3]) != tuple(self.counts.shape):
            raise ValueError(
                f"BlockLUT.indices shape {tuple(self.indices.shape)} does not match counts shape "
                f"{tuple(self.counts.shape)} in the first three dimensions (B|1, H|1, num_q_blocks)."
            )
        if self.indices.device != self.counts.device:
            raise ValueError(
                f"BlockLUT.indices ({self.indices.device}) and counts ({self.counts.device}) must be on one device."
            )

    # ------------------------------------------------------------------ properties
    @property
    def num_q_blocks(self) -> int:
        """Number of query blocks (rows of the table)."""
        return int(self.indices.shape[2])

    @property
    def max_k_blocks(self) -> int:
        """Width of ``indices`` (the longest row, padding included)."""
        return int(self.indices.shape[3])

    def to(self, device: torch.device | str) -> BlockLUT:
        """Returns the same table with ``indices`` and ``counts`` on ``device``."""
        return BlockLUT(self.indices.to(device), self.counts.to(device), self.block_m, self.block_n)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_block_mask(cls, block_mask: Tensor, block_m: int, block_n: int) -> BlockLUT:
        """Builds a LUT from a boolean block mask ``(B|1, H|1, Mq, Mk)`` (True = visit), key blocks in ascending order.

        A 2-D ``(Mq, Mk)`` mask is accepted and treated as ``(1, 1, Mq, Mk)``.
        """
        if not isinstance(block_mask, Tensor):
            raise TypeError(f"block_mask must be a torch.Tensor, got {type(block_mask).__name__}.")
        if block_mask.dim() == 2:
            block_mask = block_mask[None, None]
        if block_mask.dim() != 4:
            raise ValueError(
                f"block_mask must have shape (B|1, H|1, num_q_blocks, num_k_blocks), got {tuple(block_mask.shape)}."
            )
        mask = block_mask.to(torch.bool)
        counts = mask.sum(-1, dtype=torch.int32)
        width = max(int(counts.max().item()) if counts.numel() else 0, 1)
        # Stable sort puts the True columns first, in ascending column order.
        order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :width]
        indices = order.to(torch.int32)
        valid = torch.arange(width, device=mask.device) < counts[..., None]
        indices = torch.where(valid, indices, torch.zeros_like(indices)).contiguous()
        return cls(indices, counts.contiguous(), block_m, block_n)

    @classmethod
    def full(cls, n_q: int, n_k: int, block_m: int, block_n: int, device: torch.device | str = "cpu") -> BlockLUT:
        """LUT visiting every key block from every query block (dense attention), shape ``(1, 1, Mq, Mk)``."""
        _check_block_size("block_m", block_m)
        _check_block_size("block_n", block_n)
        mq, mk = math.ceil(n_q / block_m), math.ceil(n_k / block_n)
        indices = torch.arange(mk, dtype=torch.int32, device=device).expand(1, 1, mq, mk).contiguous()
        counts = torch.full((1, 1, mq), mk, dtype=torch.int32, device=device)
        return cls(indices, counts, block_m, block_n)

    # ------------------------------------------------------------------ conversions
    def to_block_mask(self, num_k_blocks: int) -> Tensor:
        """Boolean block mask ``(B|1, H|1, num_q_blocks, num_k_blocks)``; True where a key block is listed."""
        width = self.max_k_blocks
        valid = torch.arange(width, device=self.indices.device) < self.counts[..., None].long()
        if valid.any() and int(self.indices[valid].max()) >= num_k_blocks:
            raise ValueError(
                f"num_k_blocks={num_k_blocks} is too small: the LUT lists key block {int(self.indices[valid].max())}."
            )
        mask = torch.zeros(*self.counts.shape, num_k_blocks + 1, dtype=torch.bool, device=self.indices.device)
        idx = torch.where(valid, self.indices.long(), torch.full_like(self.indices, num_k_blocks, dtype=torch.long))
        mask.scatter_(-1, idx, True)
        return mask[..., :num_k_blocks]

    def density(self, n_q: int, n_k: int) -> float:
        """Fraction of (query, key) token pairs visited, averaged over the LUT's batch/head entries.

        Partial last blocks count only their real tokens; duplicated entries count once.
        """
        mq, mk = math.ceil(n_q / self.block_m), math.ceil(n_k / self.block_n)
        if mq != self.num_q_blocks:
            raise ValueError(
                f"n_q={n_q} gives {mq} query blocks of {self.block_m}, but the LUT has {self.num_q_blocks} rows."
            )
        mask = self.to_block_mask(mk).to(torch.float64)
        q_sizes = torch.full((mq,), float(self.block_m), dtype=torch.float64, device=mask.device)
        q_sizes[-1] = n_q - (mq - 1) * self.block_m
        k_sizes = torch.full((mk,), float(self.block_n), dtype=torch.float64, device=mask.device)
        k_sizes[-1] = n_k - (mk - 1) * self.block_n
        pairs = torch.einsum("bhqk,q,k->bh", mask, q_sizes, k_sizes)
        return float(pairs.mean() / (n_q * n_k))

    def validate(self, batch: int, heads: int, n_q: int, n_k: int) -> None:
        """Raises ValueError unless this LUT fits ``q`` of shape ``(batch, heads, n_q, D)`` and ``n_k`` keys.

        Checks the shape ``(B|1, H|1, ceil(n_q / block_m))``, that counts lie in ``[0, max_k_blocks]`` and that
        every valid index lies in ``[0, ceil(n_k / block_n))``.
        """
        mq, mk = math.ceil(n_q / self.block_m), math.ceil(n_k / self.block_n)
        b, h, rows = self.counts.shape
        if b not in (1, batch) or h not in (1, heads) or rows != mq:
            raise ValueError(
                f"lut has counts shape {tuple(self.counts.shape)}, expected (1 or {batch}, 1 or {heads}, {mq}) for "
                f"q with batch {batch}, {heads} heads and {n_q} tokens in blocks of block_m={self.block_m}."
            )
        counts = self.counts
        if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > self.max_k_blocks):
            raise ValueError(
                f"lut.counts must lie in [0, {self.max_k_blocks}] (the width of lut.indices), got values in "
                f"[{int(counts.min())}, {int(counts.max())}]."
            )
        valid = torch.arange(self.max_k_blocks, device=counts.device) < counts[..., None]
        if valid.any():
            vals = self.indices[valid]
            lo, hi = int(vals.min()), int(vals.max())
            if lo < 0 or hi >= mk:
                raise ValueError(
                    f"lut.indices must lie in [0, {mk}) ({n_k} keys in blocks of block_n={self.block_n}), got "
                    f"values in [{lo}, {hi}]."
                )
            # A repeated entry would be attended twice by the kernels: refuse it.
            big = torch.where(valid, self.indices.long(), torch.arange(self.max_k_blocks, device=counts.device) + mk)
            ordered = big.sort(-1).values
            if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
                raise ValueError("lut.indices lists some key block twice in one row; each row's valid entries "
                                 "must be distinct.")
