"""Block look-up tables (LUTs): which key blocks each query block visits.

A :class:`BlockLUT` is the compact form of a block mask of shape ``(B|1, H|1, num_q_blocks, num_k_blocks)``:
for every query block it lists the indices of the key blocks to visit (``indices``) and how many of them are valid
(``counts``). The kernels walk the valid entries in order, so the order of a row is the order in which key blocks
are processed (this matters only for ``threshold`` skipping).

Tables are checked once, not per call: the constructors here build valid tables (``trusted``), and a table made
directly from tensors is checked by value (:meth:`BlockLUT.validate`, which reads the tensors on the host) at its
first use. Per call only shapes are compared (:meth:`BlockLUT.check_shape`), so a call never synchronises the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
        trusted: the values were built valid (by a constructor of this class or a pattern); an untrusted table is
            checked by value once, at its first use (:meth:`validate`).
        key_blocks: every listed index is below it (the key blocks the table was built for); None = not known.

    Size-1 batch/head dimensions broadcast over the batch and heads of ``q``.
    """

    indices: Tensor
    counts: Tensor
    block_m: int
    block_n: int
    trusted: bool = field(default=False, compare=False, repr=False)
    key_blocks: int | None = field(default=None, compare=False, repr=False)

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
        """Returns the same table with ``indices`` and ``counts`` on ``device`` (itself when already there)."""
        if self.indices.device == torch.device(device):
            return self
        return BlockLUT(self.indices.to(device), self.counts.to(device), self.block_m, self.block_n, self.trusted,
                        self.key_blocks)

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
        return cls(indices, counts.contiguous(), block_m, block_n, trusted=True, key_blocks=int(mask.shape[-1]))

    @classmethod
    def from_ranked(cls, ranked: Tensor, counts: Tensor, block_m: int, block_n: int, key_blocks: int) -> BlockLUT:
        """A LUT from key-block indices already in visiting order, without any host synchronisation.

        Args:
            ranked: integer ``(B|1, H|1, Mq, W)``: distinct key-block indices per row (e.g. ``torch.topk`` indices);
                the first ``counts`` entries of a row are visited, in this order.
            counts: integer ``(B|1, H|1, Mq)`` in ``[0, W]``.
            key_blocks: number of key blocks the indices refer to (all ranked entries lie below it).

        The caller guarantees distinct, in-range entries (nothing is read back to check them); entries past a row's
        count are never read by the kernels and stay as given. int32 contiguous inputs are used without a copy.
        """
        indices = ranked.to(torch.int32).contiguous()
        return cls(indices, counts.to(torch.int32).contiguous(), block_m, block_n, trusted=True,
                   key_blocks=key_blocks)

    @classmethod
    def full(cls, n_q: int, n_k: int, block_m: int, block_n: int, device: torch.device | str = "cpu") -> BlockLUT:
        """LUT visiting every key block from every query block (dense attention), shape ``(1, 1, Mq, Mk)``."""
        _check_block_size("block_m", block_m)
        _check_block_size("block_n", block_n)
        mq, mk = math.ceil(n_q / block_m), math.ceil(n_k / block_n)
        indices = torch.arange(mk, dtype=torch.int32, device=device).expand(1, 1, mq, mk).contiguous()
        counts = torch.full((1, 1, mq), mk, dtype=torch.int32, device=device)
        return cls(indices, counts, block_m, block_n, trusted=True, key_blocks=mk)

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

    def pair_count(self, n_q: int, n_k: int) -> Tensor:
        """Token pairs ``(B|1, H|1)`` (float64, float32 on MPS; on the LUT's device) in the listed blocks, computed on
        the device with no host synchronisation: partial last blocks count only their real tokens (entries assumed
        distinct)."""
        mq, mk = math.ceil(n_q / self.block_m), math.ceil(n_k / self.block_n)
        dtype = torch.float32 if self.indices.device.type == "mps" else torch.float64
        width = self.max_k_blocks
        valid = torch.arange(width, device=self.indices.device) < self.counts[..., None]
        last_k = n_k - (mk - 1) * self.block_n
        k_tokens = self.counts.to(dtype) * self.block_n
        if last_k != self.block_n:  # rows listing the partial last key block hold fewer keys
            has_last = ((self.indices == mk - 1) & valid).any(-1)
            k_tokens = k_tokens - has_last.to(dtype) * (self.block_n - last_k)
        q_sizes = torch.full((mq,), float(self.block_m), dtype=dtype, device=self.indices.device)
        q_sizes[-1] = n_q - (mq - 1) * self.block_m
        return (k_tokens * q_sizes).sum(-1)

    def check_shape(self, batch: int, heads: int, n_q: int, n_k: int) -> None:
        """``ValueError`` unless the table's shape fits ``q (batch, heads, n_q, D)``; reads no tensor values."""
        mq = math.ceil(n_q / self.block_m)
        b, h, rows = self.counts.shape
        if b not in (1, batch) or h not in (1, heads) or rows != mq:
            raise ValueError(
                f"lut has counts shape {tuple(self.counts.shape)}, expected (1 or {batch}, 1 or {heads}, {mq}) for "
                f"q with batch {batch}, {heads} heads and {n_q} tokens in blocks of block_m={self.block_m}."
            )
        mk = math.ceil(n_k / self.block_n)
        if self.key_blocks is not None and self.key_blocks > mk:
            raise ValueError(
                f"lut lists key blocks up to index {self.key_blocks - 1}, but {n_k} keys in blocks of "
                f"block_n={self.block_n} make only {mk} key blocks."
            )

    def validate(self, batch: int, heads: int, n_q: int, n_k: int) -> None:
        """Raises ValueError unless this LUT fits ``q`` of shape ``(batch, heads, n_q, D)`` and ``n_k`` keys.

        Checks the shape ``(B|1, H|1, ceil(n_q / block_m))``, that counts lie in ``[0, max_k_blocks]`` and that
        every valid index lies in ``[0, ceil(n_k / block_n))``.
        """
        mk = math.ceil(n_k / self.block_n)
        self.check_shape(batch, heads, n_q, n_k)
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
            object.__setattr__(self, "key_blocks", hi + 1)
        else:
            object.__setattr__(self, "key_blocks", 0)
        object.__setattr__(self, "trusted", True)
