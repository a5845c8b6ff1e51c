"""The method protocol: ``out = method(q, k, v, layout, mask, info)`` on ``(B, H, N, D)`` tensors."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..layout import TokenLayout
from ..reasons import is_registered

if TYPE_CHECKING:
    from diffusers.hooks import ModelHook

#: The reason code of the latest :meth:`AttentionMethod.hand_back` on each thread (one generation per thread).
_HAND_BACK = threading.local()


@dataclass(frozen=True)
class CallInfo:
    """What a method may know about one intercepted self-attention call besides its tensors."""

    layer_name: str = ""
    layer_index: int = 0
    num_layers: int = 1
    step: int = -1  # denoising step index, -1 when unknown (model called outside a tracked run)
    num_steps: int | None = None
    scale: float | None = None  # softmax scale given to SDPA (None = 1/sqrt(D))
    latent_grid: tuple[int, int, int] | None = None  # full-resolution token grid of the denoiser input
    # 2x downsamplings of this call's grid below the finest self-attention grid of the model (0 = finest attention
    # level; U-Nets only, 0 for DiTs). Computed once by the layout layer; methods never re-derive it.
    level: int = 0
    # token grid (frames, height, width) the model was trained at, at this call's level; None when unknown.
    train_grid: tuple[int, int, int] | None = None
    head_offset: int = 0  # global index of this call's first head (Ulysses context parallelism splits heads)
    guidance: str | None = None  # guidance pass ("cond" / "uncond") when the pipeline names it
    # the same step as a 0-d int64 tensor on the model's device, updated in place, or None (standalone calls): read it
    # rather than `step` inside compiled graphs, which would otherwise be specialised (and recompiled) per step
    step_tensor: torch.Tensor | None = field(default=None, compare=False, repr=False)


class AttentionMethod:
    """Base class of attention methods.

    ``__call__(q, k, v, layout, mask=None, info=None)`` takes ``q`` of shape ``(B, H, Nq, D)`` and ``k, v`` of shape
    ``(B, H, Nk, D)`` and returns ``(B, H, Nq, D)``; or ``None`` to hand the call back to dense attention (for a
    layout or mask the method does not cover; the wrapper then runs stock SDPA and counts it).
    Methods never touch diffusers modules.
    """

    #: Whether the method honours a non-None attention mask; if False, calls with a mask go to dense attention.
    supports_mask: bool = False
    #: Whether the method reads the denoising step (``info.step``) or keeps per-run state reset at step 0. A method
    #: that does not (dense, neighbourhood) runs under a step-free schedule with no step tracking at all, so a
    #: compiled model never reads the timestep.
    uses_steps: bool = True

    def hand_back(self, reason: str) -> None:
        """Hand the current call back to stock attention, saying why: ``return self.hand_back("window-covers-grid")``.

        ``reason`` is a short stable code registered in :mod:`attnplug.reasons` (``reasons.register(code, meaning)``
        at the method module's import; an unregistered code is a ``ValueError``), a key of
        ``attnplug.stats(x)["self"]["reasons"]``. It is recorded for the calling thread only (concurrent generations on
        other threads keep their own) and read once by the interception core through :meth:`last_reason`. Returns
        ``None``, the hand-back value.
        """
        if not is_registered(reason):
            raise ValueError(f"{type(self).__name__}.hand_back: reason {reason!r} is not registered; register it with "
                             f"attnplug.reasons.register({reason!r}, meaning) where the method is defined.")
        _HAND_BACK.reason = reason
        return None

    def last_reason(self) -> str | None:
        """The reason code of the latest :meth:`hand_back` on this thread, or None; reading clears it.

        The interception core calls it after a method returned ``None`` (and may call it before a call to drop a
        stale code). A method that wraps another (e.g. FreeSwim's window) sees the inner method's code here too."""
        reason = getattr(_HAND_BACK, "reason", None)
        _HAND_BACK.reason = None
        return reason

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: TokenLayout,
        mask: torch.Tensor | None = None,
        info: CallInfo | None = None,
    ) -> torch.Tensor | None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget per-run state (caches), called when a new denoising run starts."""

    def prepare(self, layout: TokenLayout, info: CallInfo | None = None, device: torch.device | str = "cpu") -> None:
        """Check the method against the denoiser's token grid before anything runs: called at the first call with a
        new latent grid, also when the schedule keeps that step stock, so an impossible config raises (a
        ``ValueError`` naming the field) before any denoising step. ``layout`` holds the image grid only. Default:
        nothing to check."""

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, info: CallInfo
    ) -> torch.Tensor | None:
        """Optional hook for cross-attention calls (``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)``) within the schedule:
        return an output to replace the stock one, or None (the default) to keep the stock call."""
        return None

    def model_hook(self) -> ModelHook | None:
        """A diffusers ``ModelHook`` for the denoiser's forward, or None (the default: no model-level behaviour).

        :func:`attnplug.apply` registers the returned hook on the denoiser's ``HookRegistry`` under the name
        ``"attnplug.method"`` and :func:`attnplug.remove` removes it; each call returns a new hook. A hook sees only
        what it is given (the method it was built with and the denoiser call's arguments); e.g. FreeSwim's hook runs
        a second, full-attention branch of the denoiser before the windowed one."""
        return None

    def report(self) -> dict[str, Any]:
        """What the method did beyond the per-call counters (e.g. FreeSwim's full-branch passes), as plain numbers
        and strings; shown as ``attnplug.stats(x)["method_report"]``. Default: ``{}``."""
        return {}


class MethodWrapper(AttentionMethod):
    """An attention method built around another one, ``inner`` (e.g. a softmax-scale change, temporal windows).

    The whole method protocol reaches ``inner``: :meth:`reset`, :meth:`prepare`, :meth:`cross_attention`,
    :meth:`model_hook`, :meth:`report`, ``supports_mask``, ``uses_steps``, and its hand-back reasons (an inner
    ``hand_back`` is read by the core through the wrapper's :meth:`last_reason`, one thread-local slot). Subclasses
    override ``__call__`` (``(B, H, N, D)`` in and out) and extend the rest with ``super()``. Without an ``inner``
    the wrapper stands alone with its own flags.
    """

    #: Whether the wrapper's own ``__call__`` honours an attention mask (it also needs ``inner``'s support).
    wrapper_supports_mask: bool = False
    #: Whether the wrapper's own ``__call__`` reads the step (``inner``'s need is added).
    wrapper_uses_steps: bool = False

    def __init__(self, inner: AttentionMethod | None = None):
        if inner is not None and not isinstance(inner, AttentionMethod):
            raise TypeError(
                f"{type(self).__name__}: inner must be an attnplug AttentionMethod (e.g. SparseVideoConfig().build()) "
                f"or None, got {type(inner).__name__}."
            )
        self.inner = inner

    @property
    def supports_mask(self) -> bool:
        return self.wrapper_supports_mask and (self.inner is None or self.inner.supports_mask)

    @property
    def uses_steps(self) -> bool:
        return self.wrapper_uses_steps or (self.inner is not None and self.inner.uses_steps)

    def reset(self) -> None:
        if self.inner is not None:
            self.inner.reset()

    def prepare(self, layout: TokenLayout, info: CallInfo | None = None, device: torch.device | str = "cpu") -> None:
        if self.inner is not None:
            self.inner.prepare(layout, info, device)

    def cross_attention(self, q, k, v, mask, info):
        return None if self.inner is None else self.inner.cross_attention(q, k, v, mask, info)

    def model_hook(self) -> ModelHook | None:
        return None if self.inner is None else self.inner.model_hook()

    def report(self) -> dict[str, Any]:
        return {} if self.inner is None else self.inner.report()
