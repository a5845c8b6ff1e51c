"""Temporal window attention for long videos (FreeNoise's window fusion, arXiv 2310.15169, in full 3D attention).

A video longer than the model's training length ``L`` is covered by frame windows of ``L`` frames that slide by
``stride`` frames (the last window is moved back so it ends at the last frame). Inside each window, every query
attends to every key of the window's frames (all spatial positions): a training-length 3D attention, so the relative
temporal positions the model sees (its RoPE phases) stay within what it was trained on. A frame covered by several
windows gets the weighted mean of their outputs (``"pyramid"`` weights favour the window centre, ``"flat"`` weights
are equal), which is what keeps motion continuous across windows.

The global path keeps the video one scene: ``global_heads`` heads (by global head index) attend densely over the
whole video; dense first denoising steps (layout and motion are decided in the first steps) come from the
:class:`~attnplug.Schedule` the method is applied with (``warmup_steps``).
Text tokens of joint attention stay global: text queries attend to every key, image queries to their window plus
all text keys. A key-padding mask (padded prompt tokens) hides its keys everywhere.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from ...layout import TokenLayout
from ...methods.base import AttentionMethod, CallInfo, MethodWrapper
from ...methods.patterns.base import key_padding

WEIGHTINGS = ("pyramid", "flat")


def window_starts(frames: int, window: int, stride: int) -> list[int]:
    """First frame of each temporal window: ``0, stride, 2 * stride, ...``, plus a last window moved back to end at
    ``frames`` when the stride does not land there. One window ``[0]`` when ``frames <= window``."""
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1.")
    if stride > window:
        raise ValueError(f"stride ({stride}) must be <= window ({window}), or frames between windows get no output.")
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def frame_weights(window: int, weighting: str) -> torch.Tensor:
    """Per-frame fusion weights ``(window,)`` of one window: pyramid ``min(i + 1, window - i)`` or flat ones."""
    if weighting == "flat":
        return torch.ones(window)
    if weighting == "pyramid":
        i = torch.arange(window, dtype=torch.float32)
        return torch.minimum(i + 1, window - i)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")


def temporal_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    window: int,
    stride: int,
    weighting: str = "pyramid",
    scale: float | None = None,
    attend=None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Window-fused temporal attention on ``q, k, v`` of shape ``(B, H, N, D)`` with ``N = layout.num_tokens``.

    Image queries of window ``w`` attend to the image keys of ``w``'s frames (and all text keys); each frame's output
    is the ``weighting``-weighted mean over the windows that contain it. Text queries attend to all keys. ``keep``
    ``(B, N)`` bool (a key-padding mask in call order, e.g. HunyuanVideo's padded prompt) hides the keys it marks
    False from every query. Returns ``(B, H, N, D)``. ``attend(q, k, v, layout, mask)`` (default: SDPA) computes one
    window's attention, ``mask`` its keys' ``(B, 1, 1, n)`` bool key-padding mask or None, on its
    ``TokenLayout(window, height, width, text_tokens, text_first=False)``, e.g. a sparse video method: queries and keys
    are the window's image tokens followed by every text token, ``(B, H, w * h * w + T, D)``, so a joint-attention
    window is a complete self-attention call; only its image rows are used (text queries get the dense global
    output). ``attend`` returning None runs SDPA on that window.
    """
    layout.check(q.shape[-2])
    f, hw = layout.frames, layout.height * layout.width
    qi, qt = layout.split(q)
    ki, kt = layout.split(k)
    vi, vt = layout.split(v)
    keep_i, keep_t = layout.split(keep, dim=-1) if keep is not None else (None, None)
    starts = window_starts(f, window, stride)
    w = min(window, f)
    weights = frame_weights(w, weighting).to(device=q.device, dtype=torch.float32)
    acc = torch.zeros(qi.shape, device=q.device, dtype=torch.float32)
    total = torch.zeros(f, device=q.device, dtype=torch.float32)
    per_token = weights.repeat_interleave(hw).view(1, 1, -1, 1)
    for s in starts:
        sl = slice(s * hw, (s + w) * hw)
        kw, vw = ki[:, :, sl], vi[:, :, sl]
        if layout.text_tokens:
            kw, vw = torch.cat([kw, kt], dim=2), torch.cat([vw, vt], dim=2)
        km = None
        if keep is not None:
            km = torch.cat([keep_i[:, sl], keep_t], dim=-1)[:, None, None, :]  # (B, 1, 1, keys of the window)
        out = None
        if attend is not None:
            sub = TokenLayout(w, layout.height, layout.width, layout.text_tokens, text_first=False)
            qw = torch.cat([qi[:, :, sl], qt], dim=2) if layout.text_tokens else qi[:, :, sl]
            out = attend(qw, kw, vw, sub, km)
        if out is None:
            out = F.scaled_dot_product_attention(qi[:, :, sl], kw, vw, attn_mask=km, scale=scale)
        else:
            out = out[:, :, : w * hw]
        acc[:, :, sl] += per_token * out.float()
        total[s:s + w] += weights
    image = (acc / total.repeat_interleave(hw).view(1, 1, -1, 1)).to(q.dtype)
    if not layout.text_tokens:
        return image
    text = F.scaled_dot_product_attention(qt, k, v, attn_mask=None if keep is None else keep[:, None, None, :],
                                          scale=scale)
    return layout.merge(image, text)


class TemporalWindowMethod(MethodWrapper):
    """Attention method: :func:`temporal_window_attention` on video self-attention, with a dense global path.

    Args:
        window: frames per window (the training length in latent frames).
        stride: frames between window starts (``window // 2`` = FreeNoise's half-window overlap).
        weighting: ``"pyramid"`` or ``"flat"`` fusion weights.
        global_heads: heads (global index ``info.head_offset + h``) that attend densely over the whole video.
        inner: a method run on each window instead of SDPA (e.g. ``SparseVideoConfig(...).build()``), on the
            window's image tokens plus every text token of joint attention (text last); its output for the window's
            image queries is used; a hand-back (None) runs SDPA on that window and is counted by reason in
            :meth:`report`. ``inner`` is prepared on the window's layout before the first step.

    Calls whose video has at most ``window`` frames (or that are not video) run ``inner`` on the whole video, or
    are handed back to dense attention without one. Dense first steps come from the Schedule it is applied with.
    A boolean key-padding attention mask (HunyuanVideo's padded prompt) is honoured in every window, the global heads
    and the text queries; any other mask is handed back (``mask-not-key-padding``).
    """

    wrapper_supports_mask = True

    def __init__(self, window: int, stride: int, weighting: str = "pyramid", global_heads: int = 0,
                 inner: AttentionMethod | None = None):
        super().__init__(inner)
        window_starts(window + 1, window, stride)  # validates window / stride
        frame_weights(1, weighting)
        if global_heads < 0:
            raise ValueError(f"TemporalWindowMethod: global_heads must be >= 0, got {global_heads!r}.")
        self.window, self.stride, self.weighting, self.global_heads = window, stride, weighting, global_heads
        self.calls = {"window": 0, "short": 0, "whole": 0}
        self.inner_windows = {"given": 0, "ran": 0}
        self.inner_hand_backs: Counter = Counter()

    def __repr__(self) -> str:
        return (f"TemporalWindowMethod(window={self.window}, stride={self.stride}, weighting={self.weighting!r}, "
                f"global_heads={self.global_heads}, inner={self.inner!r})")

    def _window_layout(self, layout: TokenLayout) -> TokenLayout:
        """The layout ``inner`` sees in a window: one window of ``layout``'s frames, then its text tokens."""
        return TokenLayout(min(self.window, layout.frames), layout.height, layout.width, layout.text_tokens,
                           text_first=False)

    def prepare(self, layout: TokenLayout, info: CallInfo | None = None, device="cpu") -> None:
        super().prepare(layout if layout.frames <= self.window else self._window_layout(layout), info, device)

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if layout.frames <= self.window:
            if self.inner is None:
                self.calls["short"] += 1
                return self.hand_back("window-covers-video")
            self.calls["whole"] += 1  # one window covers the video: the inner method runs on all of it
            return self.inner(q, k, v, layout, mask, info)
        keep = None
        if mask is not None:
            keep = key_padding(mask, q.shape[0], q.shape[-2])
            if keep is None:
                return self.hand_back("mask-not-key-padding")
        info = info or CallInfo()
        self.calls["window"] += 1
        attend = None if self.inner is None else self._inner_attend(info)
        g = max(0, min(self.global_heads - info.head_offset, q.shape[1]))
        if g == 0:
            return temporal_window_attention(
                q, k, v, layout, self.window, self.stride, self.weighting, info.scale, attend, keep
            )
        dense_mask = None if keep is None else keep[:, None, None, :]
        dense = F.scaled_dot_product_attention(q[:, :g], k[:, :g], v[:, :g], attn_mask=dense_mask, scale=info.scale)
        if g == q.shape[1]:
            return dense
        local = temporal_window_attention(
            q[:, g:], k[:, g:], v[:, g:], layout, self.window, self.stride, self.weighting, info.scale, attend, keep
        )
        return torch.cat([dense, local], dim=1)

    def _inner_attend(self, info: CallInfo):
        """``attend(q, k, v, sub, mask)`` for :func:`temporal_window_attention`: ``inner`` on one window, or None
        (SDPA on that window), the inner's hand-back reason counted."""
        def attend(qw, kw, vw, sub, mask):
            self.last_reason()
            self.inner_windows["given"] += 1
            out = self.inner(qw, kw, vw, sub, mask, info)
            if out is None:
                self.inner_hand_backs[self.last_reason() or "handed-back"] += 1
            else:
                self.inner_windows["ran"] += 1
            return out

        return attend

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)
        self.inner_windows = dict.fromkeys(self.inner_windows, 0)
        self.inner_hand_backs.clear()
        super().reset()

    def report(self) -> dict:
        """The inner method's report, plus this method's calls by kind (``windows: window`` windowed calls,
        ``short`` handed back as no longer than a window, ``whole`` given whole to ``inner``) and, with ``inner``,
        the windows given to it (``windows: inner windows``), those it ran (``windows: inner ran``) and those it
        handed back, by reason (``windows: inner handed back (<reason>)``, run as SDPA)."""
        out = dict(super().report())
        out.update({f"windows: {kind}": n for kind, n in self.calls.items()})
        if self.inner is not None:
            out["windows: inner windows"] = self.inner_windows["given"]
            out["windows: inner ran"] = self.inner_windows["ran"]
        out.update({f"windows: inner handed back ({reason})": n for reason, n in self.inner_hand_backs.items()})
        return out
