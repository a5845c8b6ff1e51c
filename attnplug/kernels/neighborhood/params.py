"""Neighbourhood parameters: normalisation (one int-or-tuple rule), validation and per-grid resolution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._args import DIM_NAMES, as_tuple

if TYPE_CHECKING:  # the masks module imports torch; this one stays importable without it (config validation)
    from ..block_sparse.masks import NeighborhoodMask

__all__ = ["BACKENDS", "ResolvedNeighborhood", "check_params", "normalize_params", "resolve_neighborhood"]

#: Backends of the neighbourhood ops (chosen in :mod:`.dispatch`).
BACKENDS = ("auto", "triton", "torch", "flex", "natten", "tiles", "reference")

Triple = tuple[int, int, int]


def normalize_params(kernel_size, stride=1, dilation=1, is_causal=False, *, owner: str, ndim: int = 3,
                     spatial: int | None = 2) -> tuple[tuple, Triple, Triple, tuple[bool, bool, bool]]:
    """``(kernel, stride, dilation, causal)`` as triples over ``(frames, height, width)``, validated.

    ``ndim`` is the number of dimensions the caller's op has (1, 2 or 3; the missing leading dimensions are
    unrestricted). ``spatial`` is how many trailing dimensions a scalar covers: with ``ndim=3, spatial=2`` (the configs
    and the layout op) an int or a 2-tuple is (height, width) and frames stay unrestricted unless a 3-tuple is given;
    with ``spatial=None`` (NATTEN's ``na1d``/``na2d``/``na3d``) a scalar covers all ``ndim`` dimensions. A kernel entry
    ``None`` leaves that dimension unrestricted.
    """
    spatial = ndim if spatial is None else min(spatial, ndim)
    kw = dict(owner=owner, spatial=spatial)
    kernel = as_tuple(kernel_size, ndim, "kernel_size", fill=None, allow_none=True, minimum=1, **kw)
    st = as_tuple(stride, ndim, "stride", fill=1, minimum=1, **kw)
    dil = as_tuple(dilation, ndim, "dilation", fill=1, minimum=1, **kw)
    causal = as_tuple(is_causal, ndim, "is_causal", kind=bool, fill=False, **kw)
    pad = 3 - ndim
    kernel, st, dil, causal = (None,) * pad + kernel, (1,) * pad + st, (1,) * pad + dil, (False,) * pad + causal
    check_params(kernel, st, dil, causal, owner, names=DIM_NAMES[3 - ndim:] if ndim < 3 else DIM_NAMES, pad=pad)
    return kernel, st, dil, causal


def check_params(kernel, stride, dilation, causal, owner: str, *, names=DIM_NAMES, pad: int = 0) -> None:
    """Grid-independent checks: odd kernels where non-causal, stride <= kernel, no stride/dilation on an unrestricted
    dimension."""
    for dim in range(pad, 3):
        k, s, d, c = kernel[dim], stride[dim], dilation[dim], causal[dim]
        name = names[dim - pad]
        if k is None:
            if s != 1 or d != 1:
                raise ValueError(
                    f"{owner}: the {name} dimension is unrestricted (kernel None) so its stride and dilation must be "
                    f"1, got stride {s} and dilation {d}."
                )
            continue
        if not c and k % 2 == 0:
            raise ValueError(
                f"{owner}.kernel_size for {name} is {k}, but a non-causal neighbourhood needs an odd kernel size "
                f"(e.g. {k - 1} or {k + 1}); even sizes are accepted only for causal dimensions."
            )
        if s > k:
            raise ValueError(f"{owner}.stride for {name} is {s}, larger than its kernel size {k}; it must be <= {k}.")


@dataclass(frozen=True)
class ResolvedNeighborhood:
    """Per-call neighbourhood parameters for one grid (all triples over (frames, height, width)); hashable (a cache
    key)."""

    grid: Triple
    kernel_size: Triple
    stride: Triple
    dilation: Triple
    is_causal: tuple[bool, bool, bool]

    @property
    def full(self) -> tuple[bool, bool, bool]:
        """Per dimension: whether the window covers the whole grid length (no restriction)."""
        return tuple(
            (not c and k >= n and d == 1) or n == 1
            for n, k, d, c in zip(self.grid, self.kernel_size, self.dilation, self.is_causal)
        )

    @property
    def is_dense(self) -> bool:
        """Whether every query sees every grid token (the op is plain attention)."""
        return all(self.full)

    def density(self) -> float:
        """Fraction of (grid query, grid key) pairs allowed (causal windows counted exactly)."""
        frac = 1.0
        for n, k, d, c in zip(self.grid, self.kernel_size, self.dilation, self.is_causal):
            if c:
                # query at a sees min(a+1, k) keys within its dilation group; summed over the groups
                total = 0
                for r in range(min(d, n)):
                    lr = (n - r + d - 1) // d
                    total += sum(min(a + 1, k) for a in range(lr))
                frac *= total / (n * n)
            else:
                frac *= min(k, n) / n
        return frac

    def mask(self) -> NeighborhoodMask:
        """The block-sparse kernel's :class:`NeighborhoodMask` for these parameters."""
        from ..block_sparse.masks import NeighborhoodMask

        return NeighborhoodMask(grid=self.grid, kernel_size=self.kernel_size, dilation=self.dilation,
                                is_causal=self.is_causal, stride=self.stride)


def resolve_neighborhood(grid: Triple, kernel, stride, dilation, causal, *, clamp: bool = True,
                         owner: str = "neighborhood_attention", names=DIM_NAMES) -> ResolvedNeighborhood:
    """Neighbourhood parameters for ``grid = (frames, height, width)`` from normalised triples
    (:func:`normalize_params`).

    ``clamp=True`` (the method): a kernel at least as long as a non-causal dimension makes that dimension full; a
    causal kernel is cut to the length; ``kernel * dilation > length`` lowers the dilation to ``length // kernel``.
    ``clamp=False`` (strict, like NATTEN): those cases raise ``ValueError`` naming the dimension and the limit; only a
    dimension of length 1 or an unrestricted (``None``) kernel is full.
    """
    ks, ss, ds = [], [], []
    for dim, n in enumerate(grid):
        k, s, d, c = kernel[dim], stride[dim], dilation[dim], causal[dim]
        name = names[dim]
        if k is None or n == 1:
            ks.append(n), ss.append(1), ds.append(1)
            continue
        if not clamp:
            if k > n:
                raise ValueError(
                    f"{owner}: kernel_size for {name} is {k}, larger than the grid's {name} length {n}; it must be "
                    f"<= {n}."
                )
            if k * d > n:
                raise ValueError(
                    f"{owner}: kernel_size * dilation for {name} is {k} * {d} = {k * d}, larger than the grid's "
                    f"{name} length {n}; it must be <= {n} (dilation <= {n // k})."
                )
        if k >= n:
            k, d, s = n, 1, (1 if not c else min(s, n))
        elif k * d > n:
            d = max(1, n // k)
        ks.append(k), ss.append(min(s, k)), ds.append(d)
    return ResolvedNeighborhood(grid=tuple(grid), kernel_size=tuple(ks), stride=tuple(ss), dilation=tuple(ds),
                                is_causal=tuple(causal))
