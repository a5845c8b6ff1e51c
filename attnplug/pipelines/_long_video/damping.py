"""Attention damping beyond the training window (UltraViCo, Zhao et al., ICLR 2026, arXiv 2511.20123).

Beyond its training length a video DiT's attention disperses: keys from frames it never saw together with the query
take weight from the pattern it learned. UltraViCo suppresses them with a constant decay factor ``alpha < 1`` applied
to their attention scores. For the scaled scores ``s_ij = scale * q_i . k_j`` of image tokens in frames ``f_i`` and
``f_j``, with ``L`` the training length in latent frames::

    s'_ij = alpha * s_ij   if |f_i - f_j| > L / 2 and s_ij > 0     (the pair lies outside a training-length window
                                                                     centred on the query; a positive score)
    s'_ij = s_ij           otherwise (same window, a negative score, or a text token)
    out_i = sum_j softmax_j(s'_ij) v_j

Scaling only the positive scores lowers every out-of-window key's weight relative to the in-window keys (a negative
score scaled by ``alpha`` would rise). The window half-width ``L / 2``, ``alpha = 0.9`` and the positive-score rule are
those of the authors' Wan 2.1 release (thu-ml/DiT-Extrapolation, branch ultra-wan, whose kernel measures the distance
in flattened tokens, ``frame_tokens * L / 2``; here it is the exact frame distance). That release also keeps queries of
the first frame from attending to keys beyond the training length; this module does not. Text tokens of joint
attention are never damped. The model is unchanged: the method replaces only the intercepted self-attention call.

:class:`FrameDampingMethod` runs it dense over the whole video. :class:`DampedLongMethod` composes it with the
long-video sparse pattern (``SparseVideoConfig(pattern="long")``): the pattern's kept frame blocks only, with the
positive scores of the kept block pairs more than ``L / 2`` frames apart (anchor frames far from the query, the far
side of the window at the clamped ends of the video) multiplied by ``alpha`` inside the block-sparse kernels (every
backend).
"""

from __future__ import annotations

import threading

import torch

from ...layout import TokenLayout
from ...methods.base import AttentionMethod, CallInfo
from ...methods.patterns.long import LongPattern
from ...methods.sparse_video import SparseVideoConfig, SparseVideoMethod

#: Score elements per query chunk (``B * H * chunk * N``): bounds the memory of the dense scores.
_CHUNK_ELEMENTS = 1 << 24


def frame_of_tokens(layout: TokenLayout, device=None) -> torch.Tensor:
    """``(N,)`` int64: the frame of each token of ``layout`` in sequence order, ``-1`` for text tokens."""
    image = torch.arange(layout.frames, device=device).repeat_interleave(layout.height * layout.width)
    text = torch.full((layout.text_tokens,), -1, dtype=torch.long, device=device)
    return torch.cat([text, image] if layout.text_first else [image, text])


def far_pairs(layout: TokenLayout, window: float, device=None) -> torch.Tensor:
    """``(N, N)`` bool: image query/key pairs whose frames are more than ``window / 2`` apart."""
    f = frame_of_tokens(layout, device)
    image = f >= 0
    return ((f[:, None] - f[None, :]).abs() * 2 > window) & image[:, None] & image[None, :]


def damped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, far: torch.Tensor, factor: float,
                     scale: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention with the positive scores of ``far`` pairs multiplied by ``factor`` (see the module docstring).

    Args:
        q, k, v: ``(B, H, N, D)``.
        far: ``(N, N)`` bool, the pairs to damp (:func:`far_pairs`).
        factor: the decay factor ``alpha`` in ``[0, 1]``.
        scale: softmax scale (None = ``1 / sqrt(D)``).
        mask: SDPA-style mask broadcastable to ``(B, H, N, N)``: bool (True = attend) or additive float, or None.

    Returns:
        ``(B, H, N, D)`` in ``q``'s dtype; scores and softmax are computed in float32, in query chunks.
    """
    b, h, n, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    kf, vf = k.float(), v.float()
    if mask is not None:
        mask = mask.expand(b, h, n, k.shape[-2])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * k.shape[-2]))
    out = torch.empty(b, h, n, v.shape[-1], device=q.device, dtype=q.dtype)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        s = torch.matmul(q[:, :, rows].float(), kf.transpose(-1, -2)) * scale
        s = torch.where(far[rows] & (s > 0), s * factor, s)
        if mask is not None:
            m = mask[:, :, rows]
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
        out[:, :, rows] = torch.matmul(torch.softmax(s, dim=-1), vf).to(q.dtype)
    return out


class FrameDampingMethod(AttentionMethod):
    """Attention method: :func:`damped_attention` on video self-attention ``(B, H, N, D)``.

    Args:
        window: the training length ``L`` in latent frames; pairs more than ``L / 2`` frames apart are damped.
        factor: UltraViCo's decay factor ``alpha`` in ``(0, 1]`` (1 = no damping).

    Calls whose video has no pair farther apart than ``L / 2`` frames (``frames <= L / 2 + 1``), and calls with
    different query and key counts, are handed back to stock attention.
    """

    supports_mask = True
    uses_steps = False

    def __init__(self, window: int, factor: float = 0.9):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"FrameDampingMethod: window={window!r} must be a positive int (latent frames).")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ValueError(f"FrameDampingMethod: factor={factor!r} must be a number in (0, 1].")
        self.window, self.factor = window, float(factor)
        self._far: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def __repr__(self) -> str:
        return f"FrameDampingMethod(window={self.window}, factor={self.factor})"

    def _far_pairs(self, layout: TokenLayout, device: torch.device) -> torch.Tensor:
        key = (layout, str(device))
        far = self._far.get(key)
        if far is None:
            far = far_pairs(layout, self.window, device)
            with self._lock:
                self._far[key] = far
        return far

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if q.shape[-2] != k.shape[-2]:
            return self.hand_back("keys-differ-from-queries")
        if 2 * (layout.frames - 1) <= self.window:
            return self.hand_back("video-within-window")
        layout.check(q.shape[-2])
        self.calls += 1
        far = self._far_pairs(layout, q.device)
        return damped_attention(q, k, v, far, self.factor, info.scale if info else None, mask)

    def reset(self) -> None:
        self.calls = 0

    def report(self) -> dict:
        """Damped calls, the decay factor and the training window (latent frames)."""
        return {"damping: calls": self.calls, "damping: factor": self.factor, "damping: window": self.window}


class DampedLongMethod(SparseVideoMethod):
    """The long-video sparse pattern with UltraViCo damping on its kept far block pairs.

    Args:
        config: a ``SparseVideoConfig(pattern="long", ...)`` (its window, anchors and backend).
        window: the training length ``L`` in latent frames; kept frame pairs more than ``L / 2`` apart are damped.
        factor: UltraViCo's decay factor ``alpha`` in ``(0, 1]``.

    The result equals :func:`damped_attention` restricted to the pattern's token mask (text global). A video whose
    pattern keeps every pair is still run (damped) unless no kept pair is far; the other hand-backs are the sparse
    video method's. :meth:`report` is the pattern's report plus ``damping: calls`` / ``factor`` / ``window``.
    """

    def __init__(self, config: SparseVideoConfig, window: int, factor: float = 0.9, max_plans: int = 16):
        if not isinstance(config, SparseVideoConfig) or config.pattern != "long":
            raise ValueError(f"DampedLongMethod composes damping with SparseVideoConfig(pattern='long'), got "
                             f"{config!r}.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"DampedLongMethod: window={window!r} must be a positive int (latent frames).")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ValueError(f"DampedLongMethod: factor={factor!r} must be a number in (0, 1].")
        super().__init__(config, max_plans)
        self.window, self.factor = window, float(factor)
        self.pattern = LongPattern(config, damping=(window, self.factor))

    def __repr__(self) -> str:
        return f"DampedLongMethod(window={self.window}, factor={self.factor}, config={self.config!r})"

    def report(self) -> dict:
        """The long pattern's report (calls, density, plans with their damped block pairs) and the damping's."""
        out = super().report()
        return {**out, "damping: calls": out.get("sparse_calls", 0), "damping: factor": self.factor,
                "damping: window": self.window}
