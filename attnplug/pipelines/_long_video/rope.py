"""RoPE length extrapolation for video DiTs: RIFLEx (Zhao et al., ICML 2025, arXiv 2502.15894).

Each temporal RoPE component ``j`` rotates by ``omega_j * p`` at RoPE position ``p`` (the latent frame, divided by
the temporal patch size), with period ``N_j = 2 pi / omega_j``. RIFLEx lowers one *intrinsic* component ``k`` (the
published one for the family, else the shortest period not below the training length ``L``: :mod:`.riflex_k`) to
``margin * 2 pi / L_test``, so that over the extended length ``L_test`` it stays within one period (no repetition),
and only when ``L_test > N_k`` (as the authors' code does): a video within that period keeps RoPE stock. All other
components are kept.

Applied by a diffusers :class:`~diffusers.hooks.ModelHook` on the model's rotary-embedding module, which rewrites
the temporal columns of the ``(cos, sin)`` it returns; :func:`remove_riflex` takes the hook off (the module's output
is then bit-identical to stock). One adapter per family knows where the temporal columns are:

- Wan (``WanRotaryPosEmbed``, ``transformer.rope``): columns ``[0, t_dim)``, theta 10000;
- HunyuanVideo (``HunyuanVideoRotaryPosEmbed``): columns ``[0, rope_dim[0])``, ``module.theta``;
- CogVideoX: the pipeline computes the embedding and passes it as ``image_rotary_emb``; a pre-forward hook on the
  transformer rewrites that argument (columns ``[0, head_dim // 4)``, theta 10000;
- LTX (``LTXVideoRotaryPosEmbed``): normalised temporal coordinates scaled per call (``rope_interpolation_scale``
  or ``video_coords``), so the plan is recomputed for each call's scale;
- HunyuanVideo 1.5 (``HunyuanVideo15RotaryPosEmbed``): computed as HunyuanVideo's, so HunyuanVideo's adapter under
  the family name ``hunyuanvideo15`` (no published k: the rule picks the component);
- LTX-2 (``LTX2AudioVideoRotaryPosEmbed``, video self-attention): temporal coordinates in seconds from each call's
  ``coords``, the plan recomputed per call (:mod:`.rope_adapters2`).

Families with no temporal rotary embedding get a ``NotImplementedError`` naming the family.
"""

from __future__ import annotations

import logging

import torch
from diffusers.hooks import ModelHook

from ..._hook_registry import register_hook, unregister_everywhere
from ..._logging import log_once
from .riflex import RiflexPlan, plan_for_frequencies, riflex_frequency  # noqa: F401 - re-exported
from .rope_adapters2 import LTX2Adapter, call_plan, ltx_frequencies, rewrite_components, write_interleaved

logger = logging.getLogger(__name__)

HOOK_NAME = "attnplug_riflex"


def _rope_freqs(dim: int, theta: float) -> list[float]:
    """diffusers' ``get_1d_rotary_pos_embed`` frequencies: ``theta ** -(2 j / dim)``."""
    return [1.0 / theta ** (2 * j / dim) for j in range(dim // 2)]


def _rewrite(cos: torch.Tensor, sin: torch.Tensor, frames: int, plan: RiflexPlan, col0: int = 0):
    """New ``cos, sin`` whose temporal column pairs ``col0 + 2 j, col0 + 2 j + 1`` (interleaved) hold
    ``new_omegas[j] * p`` for the latent frame ``p`` of each token, for every ``j`` the plan changes. Tokens are
    frame-major (``N / frames`` per frame); shapes ``(..., N, ..., D)`` with the token axis the only other
    non-singleton one."""
    d = cos.shape[-1]
    n = cos.numel() // d
    p = torch.arange(frames, device=cos.device, dtype=torch.float64).repeat_interleave(n // frames)
    out = []
    for t, fn in ((cos, torch.cos), (sin, torch.sin)):
        new = t.clone()
        flat = new.view(n, d)
        for j, (w, w_new) in enumerate(zip(plan.omegas, plan.new_omegas)):
            if w_new == w:
                continue
            value = fn(w_new * p).to(t.dtype)
            flat[:, col0 + 2 * j] = value
            flat[:, col0 + 2 * j + 1] = value
        out.append(new)
    return out[0], out[1]


class _RiflexHook(ModelHook):
    """Post-forward hook on a rotary module (pre-forward on a CogVideoX transformer) applying a :class:`RiflexPlan`."""

    def __init__(self, adapter: _Adapter, plan: RiflexPlan):
        super().__init__()
        self.adapter, self.plan = adapter, plan
        self._call = None  # what pre_forward read from the call, for post_forward (adapter-specific)

    def pre_forward(self, module, *args, **kwargs):
        return self.adapter.pre_forward(self, module, args, kwargs)

    def post_forward(self, module, output):
        return self.adapter.post_forward(self, module, output)


class _Adapter:
    family = ""  # the family registry's name (set per instance by _adapter_for; it keys PUBLISHED_K)
    per_call = False  # True: the plan is recomputed for each call (hooked even when the reference plan is stock)
    temporal_windows = True  # long_video's default: training-length temporal windows beyond 2x the training length

    def find(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def components(self, model: torch.nn.Module, target: torch.nn.Module) -> list[float]:
        """Temporal RoPE frequencies per RoPE position."""
        raise NotImplementedError

    def temporal_patch(self, model: torch.nn.Module, target: torch.nn.Module) -> int:
        """Latent frames per RoPE position (the temporal patch size)."""
        return 1

    def pre_forward(self, hook: _RiflexHook, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        hook._call = self.latent_frames(module, x)
        return args, kwargs

    def latent_frames(self, module, x: torch.Tensor) -> int:
        raise NotImplementedError

    def post_forward(self, hook: _RiflexHook, module, output):
        cos, sin = output
        return _rewrite(cos, sin, hook._call, hook.plan)


class _WanAdapter(_Adapter):
    family = "wan"

    def find(self, model):
        return model.rope

    def components(self, model, target):
        return _rope_freqs(target.t_dim, 10000.0)

    def temporal_patch(self, model, target):
        return int(target.patch_size[0])

    def latent_frames(self, module, x):
        return x.shape[2] // module.patch_size[0]


class _HunyuanAdapter(_Adapter):
    family = "hunyuanvideo"

    def find(self, model):
        return model.rope

    def components(self, model, target):
        return _rope_freqs(target.rope_dim[0], float(target.theta))

    def temporal_patch(self, model, target):
        return int(target.patch_size_t)

    def latent_frames(self, module, x):
        return x.shape[2] // module.patch_size_t


class _CogVideoXAdapter(_Adapter):
    """The rotary embedding arrives as the transformer's ``image_rotary_emb`` argument."""

    family = "cogvideox"

    def find(self, model):
        if not model.config.use_rotary_positional_embeddings:
            raise NotImplementedError(
                "RIFLEx is not supported for this CogVideoX model: it has no rotary positional embeddings "
                "(config.use_rotary_positional_embeddings is False)."
            )
        return model

    def components(self, model, target):
        return _rope_freqs(model.config.attention_head_dim // 4, 10000.0)

    def temporal_patch(self, model, target):
        return int(model.config.patch_size_t or 1)

    def pre_forward(self, hook, module, args, kwargs):
        emb = kwargs.get("image_rotary_emb")
        if emb is not None:
            x = args[0] if args else kwargs["hidden_states"]  # (B, F, C, H, W)
            pt = module.config.patch_size_t or 1
            frames = -(-x.shape[1] // pt)
            kwargs = dict(kwargs, image_rotary_emb=_rewrite(*emb, frames, hook.plan))
        return args, kwargs

    def post_forward(self, hook, module, output):
        return output


class _LTXAdapter(_Adapter):
    """LTX (``LTXVideoRotaryPosEmbed``, ``transformer.rope``). A token of latent frame ``p`` has the temporal
    coordinate ``c = a p`` with ``a = rope_interpolation_scale[0] * patch_size_t / base_num_frames`` (``a = 1``
    without a scale; ``c`` is read from ``video_coords`` when given), and component ``j`` the angle ``w_j (2 c - 1)``
    with ``w_j = theta ** (j / (K - 1)) * pi / 2``, ``K = dim // 6``: ``2 a w_j`` radians per latent frame. Its
    columns are ``pad + 6 j`` and ``pad + 6 j + 1`` after ``pad = dim % 6`` padding columns. ``a`` comes with each
    call (the pipeline passes ``vae_temporal_compression / frame_rate``), so the plan is recomputed for each ``a``;
    the plan :func:`riflex_plan` returns assumes LTXPipeline's default (compression 8, 25 fps)."""

    family = "ltx"
    per_call = True
    temporal_windows = False  # long_video keeps the temporal windows off by default on LTX
    reference_scale = 8 / 25

    def find(self, model):
        return model.rope

    def _frequencies(self, target, a: float) -> list[float]:
        return ltx_frequencies(target, a)

    def components(self, model, target):
        return self._frequencies(target, self.reference_scale * target.patch_size_t / target.base_num_frames)

    def pre_forward(self, hook, module, args, kwargs):
        names = ("hidden_states", "num_frames", "height", "width", "rope_interpolation_scale", "video_coords")
        call = dict(zip(names, args), **kwargs)
        coords = call.get("video_coords")
        if coords is not None:
            c = coords[:, 0].double() / module.base_num_frames  # (B, N)
            steps = torch.unique(c)
            a = float((steps[1:] - steps[:-1]).min()) if steps.numel() > 1 else 1.0
        else:
            scale = call.get("rope_interpolation_scale")
            a = 1.0 if scale is None else float(scale[0]) * module.patch_size_t / module.base_num_frames
            frames, hw = int(call["num_frames"]), int(call["height"]) * int(call["width"])
            c = (torch.arange(frames, dtype=torch.float64) * a).repeat_interleave(hw).unsqueeze(0)
        hook._call = (c, a)
        return args, kwargs

    def post_forward(self, hook, module, output):
        c, a = hook._call
        plan = call_plan(self.family, module, hook.plan, a)
        if not plan.changes_rope:
            return output
        c = c.to(output[0].device).expand(output[0].shape[0], -1)
        pad = module.dim % 6
        return rewrite_components(output, plan, c, a,
                                  lambda t, j, value: write_interleaved(t, j, pad, value.to(t.dtype)))


#: The long-video rotary adapter of each family with a temporal RoPE, keyed by the family row's name
#: (:func:`attnplug.families.family_of`; ``tests/pipelines/test_family_facts.py`` checks every key is one). The
#: training length and every other per-family fact come from that row; this table holds only how long video hooks
#: the family's rotary module (and its per-family defaults: :attr:`_Adapter.per_call`,
#: :attr:`_Adapter.temporal_windows`).
_ADAPTERS: dict[str, type[_Adapter]] = {
    "wan": _WanAdapter,
    "hunyuanvideo": _HunyuanAdapter,
    "cogvideox": _CogVideoXAdapter,
    "ltx": _LTXAdapter,
    "hunyuanvideo15": _HunyuanAdapter,  # HunyuanVideo15RotaryPosEmbed computes as HunyuanVideoRotaryPosEmbed
    "ltx2": LTX2Adapter,
}


def supported_families() -> tuple[str, ...]:
    """Families whose temporal RoPE RIFLEx can hook."""
    return tuple(_ADAPTERS)


def plan_per_call(family: str) -> bool:
    """Whether the family's RIFLEx plan is recomputed for each call (LTX, LTX-2: the call carries its frame rate)."""
    return family in _ADAPTERS and _ADAPTERS[family].per_call


def windows_by_default(family: str) -> bool:
    """Whether long video's default recipe runs temporal windows on the family beyond 2x its training length (every
    family but LTX and LTX-2)."""
    return family not in _ADAPTERS or _ADAPTERS[family].temporal_windows


def _adapter_for(model: torch.nn.Module) -> _Adapter:
    from ...layout import family_of

    try:
        family = family_of(model).name
    except TypeError:
        family = type(model).__name__
    if family not in _ADAPTERS:
        raise NotImplementedError(
            f"RIFLEx is not supported for the {family} family ({type(model).__name__}): it has no temporal rotary "
            f"embedding module to hook. Supported families: {', '.join(_ADAPTERS)}."
        )
    adapter = _ADAPTERS[family]()
    adapter.family = family  # a shared adapter plans under its own family (published k or the rule)
    return adapter


ROPE_MODES = ("riflex", "by_part")


def riflex_plan(
    model: torch.nn.Module,
    train_frames: int,
    test_frames: int,
    margin: float = 0.9,
    position_scale: float = 1.0,
    mode: str = "riflex",
) -> RiflexPlan:
    """The :class:`RiflexPlan` for ``model`` (``train_frames`` / ``test_frames`` in latent frames, turned into RoPE
    positions by the model's temporal patch size).

    ``mode="riflex"``: every temporal frequency is divided by ``position_scale = s`` (position interpolation; 1 =
    none), so the video spans ``test_frames / s`` positions in RoPE phase; if that exceeds the period of the
    intrinsic component (:func:`.riflex_k.intrinsic_component`: the family's published k, else the shortest period
    not below the training length), that component is lowered for the span (RIFLEx), else it is kept.
    ``mode="by_part"``: components whose period is shorter than ``train_frames`` (seen through whole cycles in
    training) are kept and only the longer-period ones are divided by ``s`` (YaRN's by-part interpolation, arXiv
    2309.00071, on the temporal axis).
    """
    if not isinstance(train_frames, int) or not isinstance(test_frames, int) or min(train_frames, test_frames) < 1:
        raise ValueError(f"train_frames ({train_frames!r}) and test_frames ({test_frames!r}) must be ints >= 1.")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin!r}.")
    if not position_scale >= 1:
        raise ValueError(f"position_scale must be >= 1, got {position_scale!r}.")
    if mode not in ROPE_MODES:
        raise ValueError(f"mode must be one of {ROPE_MODES}, got {mode!r}.")
    adapter = _adapter_for(model)
    target = adapter.find(model)
    pt = max(1, adapter.temporal_patch(model, target))
    return plan_for_frequencies(adapter.family, adapter.components(model, target), -(-train_frames // pt),
                                -(-test_frames // pt), margin, position_scale, mode)


def apply_riflex(
    model: torch.nn.Module,
    train_frames: int,
    test_frames: int,
    margin: float = 0.9,
    position_scale: float = 1.0,
    mode: str = "riflex",
) -> RiflexPlan:
    """Hook ``model``'s rotary embedding with RIFLEx for ``test_frames`` latent frames (see :func:`riflex_plan`);
    returns the plan. A plan that changes no frequency installs nothing (RoPE stays stock; logged once), except on
    LTX and LTX-2, whose plan is recomputed for each call's scale. ``NotImplementedError`` naming the family when it
    has no temporal rotary embedding to hook."""
    plan = riflex_plan(model, train_frames, test_frames, margin, position_scale, mode)
    adapter = _adapter_for(model)
    target = adapter.find(model)
    remove_riflex(model)
    if not plan.changes_rope and not adapter.per_call:
        log_once(logger, logging.INFO, f"RIFLEx on {plan.family}: {plan.describe()}; no hook installed")
        return plan
    hook = _RiflexHook(adapter, plan)
    register_hook(target, hook, HOOK_NAME)
    logger.debug("RIFLEx on %s: component %d, omega %.4g -> %.4g", plan.family, plan.index, plan.omega,
                 plan.new_omega)
    return plan


def remove_riflex(model: torch.nn.Module) -> None:
    """Take the RIFLEx hook off ``model`` (a no-op when none is registered)."""
    unregister_everywhere(model, HOOK_NAME)
