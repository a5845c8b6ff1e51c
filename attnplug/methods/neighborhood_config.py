"""The neighbourhood method's config, importable without torch (the CLI lists and validates it before anything
loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .._args import as_tuple
from ..config import MethodConfig, help_field
from ..kernels.neighborhood.params import BACKENDS, normalize_params, resolve_neighborhood

if TYPE_CHECKING:
    from ..kernels.neighborhood.params import ResolvedNeighborhood
    from ..layout import TokenLayout
    from .base import CallInfo
    from .neighborhood import NeighborhoodMethod

NEIGHBORHOOD_BACKENDS = BACKENDS


@dataclass(frozen=True)
class NeighborhoodConfig(MethodConfig):
    """Neighbourhood attention (NATTEN/GNA semantics) over the (frames, height, width) token grid; text stays global.

    Sizes follow the package rule: an int or a 2-tuple is (height, width) and frames stay unrestricted; a 3-tuple is
    (frames, height, width). Kernel dimensions at least as long as the grid are unrestricted; a call whose window
    covers the whole grid is handed back to stock attention.
    """

    name: ClassVar[str] = "neighborhood"
    kernel_size: int | tuple = help_field(
        (13, 13), "Window size in tokens (NATTEN's name): int or (height, width) (frames unrestricted), or (frames, "
        "height, width); odd unless causal; None in a tuple = unrestricted dimension.", min=1,
    )
    stride: int | tuple = help_field(
        1, "GNA stride in tokens like kernel_size: 1 = sliding window, = kernel_size = blocked windows, in between = "
        "strided.",
        min=1,
    )
    dilation: int | tuple = help_field(1, "Dilation like kernel_size (a query sees keys of its residue class).", min=1)
    is_causal: bool | tuple = help_field(
        False, "Causal like kernel_size (a bool is height and width); (True, False, False): causal in frames."
    )
    scale_with_level: bool = help_field(
        False, "Halve the spatial kernel per 2x downsampling level of the call (U-Net levels below the finest "
        "attention grid), so the window covers the same image area at every level."
    )
    backend: str = help_field(
        "auto", "auto (tiles off CUDA, the block-sparse Triton kernel on CUDA), tiles, triton, torch, flex "
        "(FlexAttention), natten (NATTEN's fused kernels, when installed), or reference (fp32, O(N^2) memory).",
        choices=BACKENDS,
    )
    block_size: int = help_field(64, "Block-sparse kernel block size in tokens (queries and keys).", min=1)

    def __post_init__(self):
        for name in ("kernel_size", "stride", "dilation", "is_causal"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.params()  # shapes, types, odd kernels, stride <= kernel
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise TypeError(f"{type(self).__name__}.block_size must be an int, got {self.block_size!r}.")
        super().__post_init__()

    def params(self) -> tuple:
        """``(kernel, stride, dilation, causal)`` triples over (frames, height, width); a kernel ``None`` is
        unrestricted."""
        return normalize_params(self.kernel_size, self.stride, self.dilation, self.is_causal,
                                owner=type(self).__name__)

    @classmethod
    def from_training_resolution(
        cls,
        train_grid: tuple[int, int] | tuple[int, int, int],
        *,
        family: str | None = None,
        **kwargs,
    ) -> NeighborhoodConfig:
        """A config whose window is the training-resolution token grid (FreeSwim's receptive-field rule).

        Args:
            train_grid: ``(height, width)`` or ``(frames, height, width)`` of the *token* grid the model was trained
                at (latent size divided by the patch size for DiTs; the latent size for U-Nets). Even sizes round up
                to the next odd kernel (a centred window of ``2 * (n // 2) + 1``); frames are unrestricted unless
                given.
            family: optional family name (``unet``, ``animatediff``, ``unet3d`` scale the window per U-Net level).
            **kwargs: other :class:`NeighborhoodConfig` fields.

        When generating at (or below) the training resolution the window covers the grid and the calls are handed
        back to stock attention; above it every query sees a training-sized neighbourhood.
        """
        if not isinstance(train_grid, (tuple, list)):
            raise TypeError(f"{cls.__name__}.from_training_resolution: train_grid must be a tuple of 2 or 3 ints, "
                            f"got {train_grid!r}.")
        dims = as_tuple(tuple(train_grid), 3, "train_grid", f"{cls.__name__}.from_training_resolution", spatial=2,
                        fill=None, allow_none=True, minimum=1)
        kernel = tuple(None if n is None else 2 * (n // 2) + 1 for n in dims)
        if family in ("unet", "animatediff", "unet3d"):
            kwargs.setdefault("scale_with_level", True)
        return cls(kernel_size=kernel, **kwargs)

    def resolve(self, layout: TokenLayout, info: CallInfo | None = None) -> ResolvedNeighborhood:
        """Effective per-dimension parameters for one call's layout (kernels clamped to the grid).

        With ``scale_with_level`` the height/width kernel is divided by ``2 ** info.level`` (rounded up to odd)."""
        kernel, stride, dilation, causal = self.params()
        level = info.level if info is not None else 0
        if self.scale_with_level and level > 0:
            factor = 2 ** level
            scaled = [kernel[0]]
            for k in kernel[1:]:
                kk = None if k is None else max(1, math.ceil(k / factor))
                scaled.append(kk if kk is None or kk % 2 else kk + 1)
            kernel = tuple(scaled)
        return resolve_neighborhood(layout.grid, kernel, stride, dilation, causal, clamp=True,
                                    owner=type(self).__name__)

    def build(self) -> NeighborhoodMethod:
        from .neighborhood import NeighborhoodMethod

        return NeighborhoodMethod(self)
