"""Token layouts: what the N tokens of an attention call are (frames x height x width image grid + text tokens).

The grid is never guessed from a sequence length alone: a forward pre-hook on the denoiser records the token grid read
from its input (:mod:`attnplug.layout_reader`, with the class's row in :mod:`attnplug.families`) and the denoising
step. A call's layout is then the candidate grid whose token count matches the call, plus the non-grid (text) tokens
of joint attention. Family and reader names are re-exported here.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass, field

import torch

from ._cache import BoundedCache
from ._steps import DenoisingSteps
from .families import FAMILIES, FamilySpec, TextPosition, family_of, latent_level, training_grid
from .layout_reader import _halvings, _patch

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILIES", "FamilySpec", "LayoutState", "TextPosition", "TokenLayout", "family_of", "latent_level",
    "training_grid", "_halvings", "_patch",
]


@dataclass(frozen=True)
class TokenLayout:
    """The tokens of one attention sequence: a ``frames x height x width`` grid (row-major, frame-major) of image
    tokens plus ``text_tokens`` text tokens placed before (``text_first``) or after the image tokens."""

    frames: int
    height: int
    width: int
    text_tokens: int = 0
    text_first: bool = False

    def __post_init__(self):
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenLayout.{name} must be a positive int, got {value!r}.")
        if not isinstance(self.text_tokens, int) or self.text_tokens < 0:
            raise ValueError(f"TokenLayout.text_tokens must be an int >= 0, got {self.text_tokens!r}.")

    @property
    def grid(self) -> tuple[int, int, int]:
        """``(frames, height, width)``."""
        return (self.frames, self.height, self.width)

    @property
    def image_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def is_video(self) -> bool:
        return self.frames > 1

    def image_slice(self) -> slice:
        """Slice of the image tokens in the sequence."""
        start = self.text_tokens if self.text_first else 0
        return slice(start, start + self.image_tokens)

    def text_slice(self) -> slice:
        """Slice of the text tokens in the sequence."""
        start = 0 if self.text_first else self.image_tokens
        return slice(start, start + self.text_tokens)

    def check(self, n: int) -> None:
        """Raise ``ValueError`` unless the layout describes exactly ``n`` tokens."""
        if n != self.num_tokens:
            raise ValueError(
                f"Token layout {self} describes {self.num_tokens} tokens "
                f"({self.image_tokens} image + {self.text_tokens} text) but the attention sequence has {n} tokens."
            )

    def split(self, x: torch.Tensor, dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
        """Split ``x`` (e.g. ``(B, H, N, D)`` along ``dim``) into ``(image, text)`` parts."""
        self.check(x.shape[dim])
        image = x.narrow(dim, self.image_slice().start, self.image_tokens)
        text = x.narrow(dim, self.text_slice().start, self.text_tokens)
        return image, text

    def merge(self, image: torch.Tensor, text: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        if self.text_tokens == 0:
            return image
        return torch.cat([text, image] if self.text_first else [image, text], dim=dim)

    def to_text_last(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Reorder ``x`` so the image grid comes first and text tokens last (the order kernels expect)."""
        if not self.text_first or self.text_tokens == 0:
            return x
        image, text = self.split(x, dim)
        return torch.cat([image, text], dim=dim)

    def from_text_last(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Inverse of :meth:`to_text_last`."""
        if not self.text_first or self.text_tokens == 0:
            return x
        image = x.narrow(dim, 0, self.image_tokens)
        text = x.narrow(dim, self.image_tokens, self.text_tokens)
        return torch.cat([text, image], dim=dim)

    @classmethod
    def square(cls, n: int) -> TokenLayout:
        """A single-frame square grid of ``n`` tokens; ``ValueError`` if ``n`` is not a perfect square."""
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"Cannot infer a token grid for a sequence of {n} tokens: it is not a square. Use attnplug.apply(...) "
                "so the grid is read from the latent shape, or pass layout=TokenLayout(frames, height, width, ...)."
            )
        return cls(1, side, side)


def _same_tensors(stamps: tuple, tensors: tuple) -> bool:
    """Whether ``tensors`` are the very tensors ``stamps`` recorded (alive, unmodified since)."""
    if not stamps or len(stamps) != len(tensors):
        return False
    return all(
        stamp is not None and stamp[0]() is x and x._version == stamp[1] for stamp, x in zip(stamps, tensors)
    )


@dataclass
class LayoutState:
    """Per-denoiser state: the latest token grid (recorded before each denoiser call) and where the denoising loop
    is, ``steps`` (:class:`attnplug._steps.DenoisingSteps`, the package's one step tracker; ``step``, ``num_steps``
    and ``guidance`` read it)."""

    family: FamilySpec
    grid: tuple[int, int, int] | None = None
    steps: DenoisingSteps = field(default_factory=DenoisingSteps)
    _value_grids: BoundedCache = field(default_factory=lambda: BoundedCache(64), repr=False)
    _value_sources: tuple = field(default=(), repr=False)  # (weakref, version) of the inputs last read

    @property
    def step(self) -> int:
        return self.steps.step

    @property
    def num_steps(self) -> int | None:
        return self.steps.num_steps

    @property
    def guidance(self) -> str | None:
        return self.steps.guidance

    def observe_grid(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Record the token grid of a denoiser call.

        Shapes only, so the call traces under ``torch.compile``; a family whose grid is read from tensor values
        (Flux's ``img_ids``) reads them in eager calls once per input tensor (pipelines pass the same ``img_ids`` at
        every step, so the host waits for the device once per run) and, while compiling, reuses the grid an eager
        call recorded for the same input shapes."""
        if not self.family.grid_reads_values:
            self.grid = self.family.grid(model, args, kwargs)
            return
        key = tuple(tuple(v.shape) for v in kwargs.values() if isinstance(v, torch.Tensor))
        if torch.compiler.is_compiling():
            if key not in self._value_grids:
                raise ValueError(
                    f"attnplug reads the {self.family.name} token grid from `img_ids`, which torch.compile cannot "
                    "trace: run the model once without compiling (same input shapes) before the compiled call."
                )
            self.grid = self._value_grids.get(key)
            return
        sources = tuple(kwargs.get(name) for name in self.family.value_inputs)
        if self.grid is not None and _same_tensors(self._value_sources, sources):
            return
        self.grid = self.family.grid(model, args, kwargs)
        self._value_grids.add(key, self.grid)
        self._value_sources = tuple(
            (weakref.ref(x), x._version) if isinstance(x, torch.Tensor) else None for x in sources
        )

    def reset(self) -> None:
        self.steps.reset()
        self._value_sources = ()

    def layout_for(self, n: int, module_name: str = "", temporal: bool | None = None) -> TokenLayout:
        """The layout of an ``n``-token self-attention sequence in module ``module_name``."""
        if self.grid is None:
            raise ValueError(
                "No latent shape has been recorded yet: the denoiser's forward pre-hook did not run before this "
                "attention call. Call the model (or pipeline) itself rather than its blocks."
            )
        f, h, w = self.grid
        fam = self.family
        if temporal is None:
            temporal = any(part in module_name for part in fam.temporal_modules)
        if temporal:
            if n <= f:  # all frames, or a window of them (diffusers' FreeNoise runs motion modules per window)
                return TokenLayout(n, 1, 1)
            raise ValueError(
                f"Temporal attention module {module_name!r} got {n} tokens but the latent has only {f} frames."
            )
        frames = 1 if fam.frames_in_batch else f
        candidates = [(frames, hh, ww) for hh, ww in zip(_halvings(h), _halvings(w))] if fam.multiscale else [
            (frames, h, w)
        ]
        for grid in candidates:
            image = grid[0] * grid[1] * grid[2]
            if n == image:
                return TokenLayout(*grid)
            if fam.text_position != "none" and n > image and not fam.multiscale:
                return TokenLayout(*grid, text_tokens=n - image, text_first=fam.text_position == "first")
        raise ValueError(
            f"The attention sequence in {module_name or 'this module'} has {n} tokens, which matches no token grid "
            f"of the {fam.name} latent {self.grid} (candidates: {', '.join(str(c) for c in candidates)}; "
            f"text position: {fam.text_position})."
        )
