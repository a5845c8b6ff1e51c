"""RIFLEx's rotary adapter for LTX-2 (``LTX2AudioVideoRotaryPosEmbed``, ``transformer.rope``: the video
self-attention RoPE), used by :mod:`.rope`.

The module takes patch-boundary coordinates ``(B, 3, N, 2)`` (``transformer.rope.prepare_video_coords``: pixel frames
of each patch divided by the call's ``fps``, the first latent frame clamped at 0 for the causal VAE) or their
midpoints ``(B, 3, N)``. A token whose temporal midpoint is ``t`` has ``c = t / base_num_frames`` and component ``j``
the angle ``w_j (2 c - 1)``, ``w_j = theta ** (j / (K - 1)) * pi / 2``, ``K = dim // 6``: with ``c`` advancing by
``a`` per RoPE position (``a = scale_factors[0] * patch_size_t / (fps * base_num_frames)``), that is ``2 a w_j``
radians per position. The columns of component ``j``:

- ``rope_type="interleaved"``: ``(B, N, dim)``, columns ``pad + 6 j`` and ``pad + 6 j + 1`` after ``pad = dim % 6``;
- ``rope_type="split"``: ``(B, heads, N, dim // 2 // heads)``, flat index ``pad + 3 j`` over ``(heads, cols)`` after
  ``pad = dim // 2 - 3 K``.

``a`` comes with each call (the pipeline's ``frame_rate``), so the plan is recomputed for each call's ``a``, read
from the coordinates as the largest step between consecutive temporal coordinates (the first latent frame's clamp
makes the first step shorter). The plan :func:`.rope.riflex_plan` returns assumes LTX2Pipeline's default of 24 fps.
The audio RoPE and the audio <-> video cross-attention RoPE are left stock.
"""

from __future__ import annotations

import math

import torch

from .riflex import plan_for_frequencies


def ltx_frequencies(target, a: float) -> list[float]:
    """Temporal angular frequencies (rad per RoPE position) of an LTX / LTX-2 rotary module ``target`` whose temporal
    coordinate advances by ``a`` per position: ``2 a theta^(j / (k - 1)) pi / 2`` for ``k = dim // 6`` components."""
    k = target.dim // 6
    exps = [j / (k - 1) for j in range(k)] if k > 1 else [0.0]
    return [2 * a * target.theta ** e * math.pi / 2 for e in exps]


def call_plan(family: str, target, base, a: float):
    """``base`` (the plan at the reference frame rate) recomputed for a call whose temporal coordinate advances by
    ``a`` per RoPE position on the LTX / LTX-2 rotary module ``target``."""
    return plan_for_frequencies(family, ltx_frequencies(target, a), base.train_frames, base.test_frames, base.margin,
                                base.position_scale, base.mode)


def rewrite_components(output: tuple, plan, c: torch.Tensor, a: float, write) -> tuple:
    """Copies of an LTX / LTX-2 rotary module's ``(cos, sin)`` output with each temporal component ``j`` that
    ``plan`` changes recomputed at its new frequency: ``angle = w_new_j / (2 a) * (2 c - 1)`` for the tokens'
    temporal coordinates ``c`` (``(B, N)`` or ``(1, N)``), stored by ``write(t, j, value)`` into the columns the
    module's layout gives component ``j``."""
    cos, sin = (t.clone() for t in output)
    for j, (w, w_new) in enumerate(zip(plan.omegas, plan.new_omegas)):
        if w_new == w:
            continue
        angle = w_new / (2 * a) * (2 * c - 1)
        for t, fn in ((cos, torch.cos), (sin, torch.sin)):
            write(t, j, fn(angle))
    return cos, sin


def write_interleaved(t: torch.Tensor, j: int, pad: int, value: torch.Tensor) -> None:
    """Store component ``j``'s ``value`` in an interleaved ``(B, N, dim)`` table: columns ``pad + 6 j``, ``+ 1``."""
    t[..., pad + 6 * j] = value
    t[..., pad + 6 * j + 1] = value


class LTX2Adapter:
    """LTX-2's adapter, of the shape of :class:`.rope._Adapter` (``per_call``: the plan is recomputed per call)."""

    family = "ltx2"
    per_call = True
    temporal_windows = False  # long_video keeps the temporal windows off by default on LTX-2, as on LTX
    reference_fps = 24.0  # LTX2Pipeline's default frame_rate

    def find(self, model):
        return model.rope

    def _frequencies(self, target, a: float) -> list[float]:
        return ltx_frequencies(target, a)

    def reference_step(self, target) -> float:
        """``a`` at :attr:`reference_fps`: the temporal coordinate's step per RoPE position."""
        return target.scale_factors[0] * target.patch_size_t / (self.reference_fps * target.base_num_frames)

    def components(self, model, target):
        return self._frequencies(target, self.reference_step(target))

    def temporal_patch(self, model, target):
        return int(target.patch_size_t)

    def pre_forward(self, hook, module, args, kwargs):
        coords = args[0] if args else kwargs["coords"]
        if coords.ndim == 4:  # patch boundaries [start, end): the module uses their midpoint
            coords = coords.double().mean(dim=-1)
        c = coords[:, 0].double() / module.base_num_frames  # (B, N)
        steps = torch.unique(c)
        a = float((steps[1:] - steps[:-1]).max()) if steps.numel() > 1 else self.reference_step(module)
        hook._call = (c, a)
        return args, kwargs

    def post_forward(self, hook, module, output):
        c, a = hook._call
        plan = call_plan(self.family, module, hook.plan, a)
        if not plan.changes_rope:
            return output
        k = module.dim // 6

        def write(t, j, value):
            value = value.to(device=t.device, dtype=t.dtype).expand(t.shape[0], -1)
            if module.rope_type == "split":
                per_head = t.shape[-1]
                idx = module.dim // 2 - 3 * k + 3 * j
                t[:, idx // per_head, :, idx % per_head] = value
            else:
                write_interleaved(t, j, module.dim % 6, value)

        return rewrite_components(output, plan, c, a, write)
