"""Training-free long video: several times a video model's training length in one call.

``attnplug.pipelines.long_video(pipe, prompt, num_frames=...)`` runs ``pipe`` once with, as
:class:`LongVideoConfig` chooses:

- the **long sparse pattern** (``SparseVideoConfig(pattern="long")``, the default on video DiTs beyond the training
  length, ``sparse="auto"``): a training-length window of frames around every query frame plus anchor frames, over
  the whole video after dense first steps (``global_steps``, default three quarters), on the block-sparse kernel,
  applied with :func:`attnplug.apply`;
- **noise re-scheduling** (FreeNoise): the initial noise repeats shuffled windows of training-length noise
  (:mod:`.noise`), passed as ``latents=``;
- **temporal windows** (FreeNoise's window fusion in full 3D attention): self-attention restricted to
  training-length frame windows that slide with overlap, overlapping outputs fused, plus a dense global path
  (:mod:`.attention`), applied with :func:`attnplug.apply` (beyond 2x where the long pattern is not chosen);
- **attention damping** beyond the training window (UltraViCo) for video DiTs: the positive scores of query/key
  pairs farther apart than half the training length are scaled down (:mod:`.damping`), applied with
  :func:`attnplug.apply`: dense over the whole video, or on the kept blocks of the ``long`` sparse pattern;
- **temporal RoPE rescaling** for video DiTs: RIFLEx (lower the intrinsic frequency) or by-part position
  interpolation (:mod:`.rope`), a hook on the rotary-embedding module;
- **temporal attention regularisation** (VSTAR) for AnimateDiff motion modules (:mod:`.vstar`), with
  diffusers' own FreeNoise (``pipe.enable_free_noise``) for the windows and the noise of AnimateDiff.

Everything is undone when the call returns or raises: the model is stock again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from typing import Any

from ..._logging import log_once, scoped
from ...config import Schedule
from ...layout import _patch, family_of
from ...methods.sparse_video_config import SparseVideoConfig
from ...plugin import apply, method_of, remove, resolve_denoisers
from .attention import TemporalWindowMethod
from .config import GLOBAL_STEPS, LONG_GLOBAL_STEPS, LongVideoConfig, LongVideoPlan, default_position_scale
from .damping import DampedLongMethod, FrameDampingMethod
from .noise import is_stochastic_flow_scheduler, rescheduled_noise, rescheduled_step_noise
from .rope import (
    RiflexPlan,
    apply_riflex,
    plan_per_call,
    remove_riflex,
    riflex_plan,
    supported_families,
    windows_by_default,
)
from .vstar import TemporalBandMethod

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- frame arithmetic
def temporal_compression(pipe) -> int:
    """Video frames per latent frame of ``pipe``'s VAE (1 for pixel-space pipelines and AnimateDiff)."""
    for attr in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio"):
        value = getattr(pipe, attr, None)
        if isinstance(value, int) and value > 1:
            return value
    return 1


def latent_frames(num_frames: int, compression: int) -> int:
    """Latent frames of ``num_frames`` video frames (``(F - 1) / r + 1`` for a causal video VAE)."""
    return num_frames if compression == 1 else (num_frames - 1) // compression + 1


def check_num_frames(num_frames, compression: int, owner: str = "the pipeline") -> None:
    """``ValueError`` listing valid frame counts unless ``num_frames`` fits the temporal compression."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}.")
    if compression > 1 and (num_frames - 1) % compression:
        lo = (num_frames - 1) // compression * compression + 1
        near = sorted({max(1, lo - compression), lo, lo + compression, lo + 2 * compression})
        raise ValueError(
            f"num_frames={num_frames} does not fit {owner}'s temporal compression of {compression}: valid counts are "
            f"{compression}k + 1 (1, {compression + 1}, {2 * compression + 1}, ...), e.g. "
            f"{', '.join(map(str, near))}."
        )


def training_frames(pipe, model, family: str | None = None) -> int:
    """The model's training length in video frames: the pipeline's / model's config (``sample_defaults``,
    ``sample_frames``), else the family row's ``train_frames`` (:func:`attnplug.families.family_of`, which reads a
    checkpoint's own length, e.g. AnimateDiff's ``motion_max_seq_length``, Wan 2.2 TI2V-5B's 121 frames)."""
    defaults = getattr(pipe, "sample_defaults", None)
    if isinstance(defaults, dict) and isinstance(defaults.get("num_frames"), int):
        return defaults["num_frames"]
    sample = getattr(model.config, "sample_frames", None)
    if isinstance(sample, int) and sample > 1:
        return sample
    spec = family_of(model)
    if spec.train_frames is None:
        raise ValueError(
            f"The training length of the {family or spec.name} family is unknown; give "
            "LongVideoConfig(train_frames=...)."
        )
    return spec.train_frames


def resolve_config(pipe, num_frames: int, config: LongVideoConfig | None = None) -> LongVideoPlan:
    """The per-family defaults filled in (see ``docs/long_video.md``) and the frame count checked."""
    config = config or LongVideoConfig()
    params = inspect.signature(pipe.__call__).parameters
    if "num_frames" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"long_video needs a video pipeline; {type(pipe).__name__} makes images (its call takes no "
                         "num_frames): load a video model, or use attnplug.pipelines.hires for larger images.")
    model = resolve_denoisers(pipe)[0][0][1]
    family = family_of(model).name
    r = temporal_compression(pipe)
    check_num_frames(num_frames, r, type(pipe).__name__)
    train = config.train_frames or training_frames(pipe, model, family)
    train_latent = latent_frames(train, r) if (train - 1) % r == 0 else max(1, train // r)
    lat = latent_frames(num_frames, r)
    dit = family in supported_families()
    ext = lat / train_latent
    scale = config.position_scale if config.position_scale is not None else default_position_scale(ext)
    window_latent = (
        latent_frames(config.window_frames, r) if config.window_frames is not None else min(lat, train_latent)
    )
    stride_latent = (
        latent_frames(config.stride_frames, r) if config.stride_frames is not None else max(1, window_latent // 2)
    )
    rope, rope_plan, rope_note = _resolve_rope(model, config, dit, ext, train_latent, lat, scale)
    sparse, sparse_note = _resolve_sparse(model, config, family, dit, ext)
    damping = bool(config.damping)
    if damping and not dit:
        raise ValueError(f"LongVideoConfig.damping applies to video DiTs with temporal RoPE; the model is {family}.")
    long_sparse = sparse is not None and sparse.pattern == "long"
    if damping and (config.temporal_windows or (sparse is not None and not long_sparse)):
        raise ValueError(
            "LongVideoConfig.damping runs dense attention over the whole video, or composes with the long-video "
            "sparse pattern (sparse=SparseVideoConfig(pattern='long')), and does not combine with "
            f"temporal_windows={config.temporal_windows!r} or sparse={config.sparse!r}; set damping=False, or "
            "leave temporal_windows unset (or False) and give sparse=None or sparse=SparseVideoConfig(pattern='long')."
        )
    if long_sparse and config.temporal_windows:
        raise ValueError(
            "LongVideoConfig(sparse=SparseVideoConfig(pattern='long')) is itself a training-length window around "
            "every frame, over the whole video; it does not run inside temporal_windows=True: leave temporal_windows "
            "unset (or False), or choose another pattern for inside the windows."
        )
    if long_sparse and sparse.train_latent_frames is None and sparse.window_frames is None:
        sparse = dataclasses.replace(sparse, train_latent_frames=train_latent)  # the training length its window
    windows = config.temporal_windows
    if windows is None:
        windows = windows_by_default(family) and ext > 2 and not damping and not long_sparse
    if windows and window_latent >= lat:
        if config.temporal_windows:
            log_once(logger, logging.INFO, f"long_video: the temporal window ({window_latent} latent frames) covers "
                     f"the whole video ({lat}); attention stays dense")
        windows = False
    noise = config.noise_rescheduling
    if noise is None:
        noise = family == "animatediff" and ext > 1  # diffusers' FreeNoise recipe; it stops DiT motion here
    vstar = config.vstar if config.vstar is not None else family == "animatediff" and ext > 1
    if vstar and family != "animatediff":
        raise ValueError(f"LongVideoConfig.vstar applies to AnimateDiff motion modules; the model is {family}.")
    if stride_latent > window_latent:
        raise ValueError(
            f"LongVideoConfig.stride_frames={config.stride_frames} ({stride_latent} latent frames) must not exceed "
            f"the window ({window_latent} latent frames, window_frames={config.window_frames}); accepted: "
            f"stride_frames <= window_frames."
        )
    return LongVideoPlan(
        family=family, num_frames=num_frames, latent_frames=lat, train_latent=train_latent,
        temporal_compression=r, noise_rescheduling=bool(noise), temporal_windows=bool(windows),
        window=window_latent, stride=stride_latent, rope=rope, position_scale=float(scale), vstar=bool(vstar),
        global_steps=(_default_global_steps(windows, long_sparse) if config.global_steps is None
                      else config.global_steps),
        damping=damping, damping_factor=float(config.damping_factor), long_sparse=long_sparse, sparse=sparse,
        sparse_note=sparse_note,
        riflex_component=None if rope_plan is None else rope_plan.index,
        riflex_period=None if rope_plan is None else round(rope_plan.period, 3),
        riflex_lowered=rope != "none" and rope_plan is not None and rope_plan.lowered,
        riflex_source="" if rope_plan is None else rope_plan.source, rope_note=rope_note,
    )


def _default_global_steps(windows: bool, long_sparse: bool) -> float:
    """The dense first steps when ``global_steps`` is None: the windows and the long pattern run in the last quarter
    of the steps (``docs/long_video.md``), and nothing else needs any."""
    return GLOBAL_STEPS if windows else LONG_GLOBAL_STEPS if long_sparse else 0


def _temporal_window_fields(config: LongVideoConfig) -> list[str]:
    """The temporal-window fields ``config`` sets away from their defaults (they only shape the windows)."""
    defaults = {f.name: f.default for f in dataclasses.fields(LongVideoConfig)}
    return [f"{name}={getattr(config, name)!r}" for name in ("window_frames", "stride_frames", "weighting",
                                                              "global_heads")
            if getattr(config, name) != defaults[name]]


def _resolve_sparse(model, config: LongVideoConfig, family: str, dit: bool, ext: float
                    ) -> tuple[SparseVideoConfig | None, str]:
    """``(sparse, note)``: the sparse pattern the call runs (``config.sparse`` with ``"auto"`` resolved; the long
    pattern's window is filled in by the caller) and one sentence on which and why."""
    given = config.sparse
    if given is None:
        return None, "no sparse pattern (sparse=None)"
    if isinstance(given, SparseVideoConfig):
        where = ("over the whole video" if given.pattern == "long" else
                 "inside the temporal windows (on the whole video where none run)")
        return given, f"the {given.pattern!r} sparse pattern as given (sparse=SparseVideoConfig(...)), {where}"
    auto = "sparse='auto'"
    if not dit:
        return None, (f"no sparse pattern ({auto}: the long pattern is the default on the video DiTs long_video "
                      f"rescales RoPE for, {', '.join(f for f in supported_families() if windows_by_default(f))}; "
                      f"the model is {family})")
    if ext <= 1:
        return None, f"no sparse pattern ({auto}: the video is not longer than the training length)"
    if not windows_by_default(family):
        return None, (f"no sparse pattern ({auto}: {family} keeps its default of RoPE rescaling alone, without "
                      "temporal windows or a sparse pattern)")
    if config.temporal_windows:
        return None, f"no sparse pattern ({auto}: temporal_windows=True asks for the temporal windows)"
    reason = _long_pattern_blocker(model, config)
    if reason:
        return None, (f"no sparse pattern: {auto} keeps the recipe without it (temporal windows beyond 2x the "
                      f"training length) because {reason}")
    return SparseVideoConfig(pattern="long"), (
        f"the 'long' sparse pattern over the whole video after the dense first steps ({auto} on a video DiT at "
        f"{ext:.3g}x the training length: a training-length window of frames around every frame plus anchor frames; "
        "no temporal windows)")


def _long_pattern_blocker(model, config: LongVideoConfig) -> str:
    """Why ``sparse="auto"`` does not choose the long pattern on this video DiT ("" when it does): the config sets
    temporal-window fields (it asks for the windows), or the denoiser patches several latent frames into one token
    frame (CogVideoX 1.5), where the pattern's window, counted in token frames, would span a multiple of the training
    length."""
    fields = _temporal_window_fields(config)
    if fields:
        return (f"the config sets temporal-window fields ({', '.join(fields)}); give "
                "sparse=SparseVideoConfig(pattern='long') for the long pattern instead")
    pt = _patch(getattr(model, "config", None))[0]
    if pt > 1:
        return (f"the denoiser patches {pt} latent frames into one token frame (patch_size_t={pt}) and the long "
                f"pattern's window counts token frames: a training-length window would span {pt}x the training "
                "length")
    return ""


def _resolve_rope(model, config: LongVideoConfig, dit: bool, ext: float, train_latent: int, lat: int,
                  scale: float) -> tuple[str, RiflexPlan | None, str]:
    """``(rope, plan, note)``: the RoPE mode the call installs (``"none"`` when RoPE stays stock, also when the
    plan would change no frequency), the :class:`RiflexPlan` (None without temporal RoPE) and why."""
    rope = config.rope
    if rope == "auto":
        rope = "riflex" if dit and ext > 1 else "none"
    if not dit and rope == "none":
        return "none", None, "RoPE stays stock: the model has no temporal RoPE that attnplug rescales"
    mode = rope if rope != "none" else "riflex"
    try:
        plan = riflex_plan(model, train_latent, lat, config.riflex_margin, scale, mode)
    except NotImplementedError as exc:
        if rope != "none" and config.rope != "auto":
            raise  # names the family
        return "none", None, f"RoPE stays stock: {exc}"
    if rope == "none":
        why = "rope='none'" if config.rope == "none" else "the video is not longer than the training length"
        return "none", plan, f"RoPE stays stock ({why})"
    if not plan.changes_rope and not plan_per_call(plan.family):  # LTX (2) recompute the plan per call
        return "none", plan, plan.describe()
    return rope, plan, plan.describe()


# ---------------------------------------------------------------------------------------------- latents
def _call_default(pipe, name: str):
    defaults = getattr(pipe, "sample_defaults", None)
    if isinstance(defaults, dict) and name in defaults:
        return defaults[name]
    param = inspect.signature(pipe.__call__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        raise ValueError(f"Give {name}= for noise re-scheduling: {type(pipe).__name__} has no default for it.")
    return param.default


def _latent_shape(pipe, model, family: str, plan: LongVideoPlan, prompt, kwargs) -> tuple[tuple[int, ...], int]:
    """Shape of the initial noise ``pipe`` would draw, and its frame axis."""
    n_prompts = 1 if isinstance(prompt, str) else len(prompt)
    per = kwargs.get("num_videos_per_prompt", 1) or 1
    batch = n_prompts * per
    height = kwargs.get("height") or _call_default(pipe, "height")
    width = kwargs.get("width") or _call_default(pipe, "width")
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or 1
    channels = model.config.in_channels
    h, w = height // spatial, width // spatial
    if family in ("wan", "hunyuanvideo"):
        return (batch, channels, plan.latent_frames, h, w), 2
    if family == "cogvideox":
        return (batch, plan.latent_frames, channels, h, w), 1
    raise NotImplementedError(
        f"Noise re-scheduling is not supported for the {family} family (its latents are packed or drawn per "
        "frame by the pipeline); set LongVideoConfig(noise_rescheduling=False)."
    )


# ---------------------------------------------------------------------------------------------- entry point
@scoped
def long_video(pipe, prompt, *, num_frames: int, config: LongVideoConfig | None = None, **kwargs):
    """Generate a video of ``num_frames`` frames, longer than ``pipe``'s training length, training-free.

    Args:
        pipe: a diffusers video pipeline (Wan, HunyuanVideo, CogVideoX, LTX, AnimateDiff, the embedded
            ``shapes-video``).
        prompt: passed to ``pipe``.
        num_frames: video frames; must fit the VAE's temporal compression (Wan: ``4k + 1``).
        config: :class:`LongVideoConfig` (default: the family defaults).
        **kwargs: passed to ``pipe(...)`` (``generator``, ``num_inference_steps``, ``height``, ...).

    Returns:
        What ``pipe(...)`` returns (``.frames``). The model is stock again afterwards, also when the call raises.
    """
    config = config or LongVideoConfig()
    if not isinstance(config, LongVideoConfig):
        raise TypeError(f"config must be a LongVideoConfig, got {type(config).__name__}.")
    models = [model for _, model in resolve_denoisers(pipe)[0]]
    model = models[0]
    if any(method_of(m) is not None for m in models):
        raise ValueError(
            "long_video applies its own attention method; attnplug.remove(pipe) first (a sparse pattern goes in "
            "LongVideoConfig(sparse=...))."
        )
    plan = resolve_config(pipe, num_frames, config)
    logger.info("long_video: %s", plan)
    if plan.family == "animatediff":
        return _animatediff(pipe, prompt, plan, config, kwargs)
    if plan.noise_rescheduling:
        if kwargs.get("latents") is not None:
            raise ValueError("LongVideoConfig.noise_rescheduling draws the initial noise; do not also pass latents=.")
        shape, axis = _latent_shape(pipe, model, plan.family, plan, prompt, kwargs)
        window = min(plan.window, plan.train_latent) if plan.temporal_windows else plan.train_latent
        kwargs["latents"] = rescheduled_noise(shape, axis, window, kwargs.get("generator"), device=model.device)
    stochastic = is_stochastic_flow_scheduler(getattr(pipe, "scheduler", None))
    with contextlib.ExitStack() as stack:
        if plan.noise_rescheduling and stochastic:
            # A stochastic sampler re-noises every step: with i.i.d. noise the windows would share only the start.
            stack.enter_context(rescheduled_step_noise(pipe.scheduler, axis, window, kwargs.get("generator")))
        if plan.rope != "none":
            for expert in models:  # Wan 2.2: `transformer` and `transformer_2`
                stack.callback(remove_riflex, expert)
                apply_riflex(
                    expert, plan.train_latent, plan.latent_frames, config.riflex_margin, plan.position_scale, plan.rope
                )
        method = attention_method(model, plan, config)
        if method is not None:
            dense_damping = isinstance(method, FrameDampingMethod)  # every step, no dense first steps
            if not dense_damping:
                _warn_if_no_windowed_step(pipe, plan, kwargs)
                if stochastic:
                    log_once(logger, logging.WARNING, STOCHASTIC_LOCAL_ATTENTION_WARNING)
            stack.callback(remove, pipe)
            apply(pipe, method, schedule=Schedule() if dense_damping else Schedule(warmup_steps=plan.global_steps))
        return pipe(prompt=prompt, num_frames=num_frames, **kwargs)  # image-to-video pipelines take image first


def token_frames(latent: int, temporal_patch: int) -> int:
    """Token frames of ``latent`` latent frames under a temporal patch of ``temporal_patch`` (rounded up, as the
    denoisers pad: CogVideoX 1.5's 21 latent frames are 11 token frames)."""
    return -(-latent // temporal_patch)


def attention_method(model, plan: LongVideoPlan, config: LongVideoConfig):
    """The attention method ``long_video`` applies for ``plan`` on ``model`` (None for none): UltraViCo damping, the
    long pattern (damped or not), or the temporal windows (with ``plan.sparse`` inside them, or alone over the whole
    video). The windows and the damping distance see token frames, so on a denoiser with a temporal patch of ``p``
    latent frames (CogVideoX 1.5, ``p = 2``) the plan's latent-frame lengths are turned into ``ceil(n / p)`` token
    frames: a training-length window stays a training length."""
    pt = _patch(getattr(model, "config", None))[0]
    if plan.damping and not plan.long_sparse:
        return FrameDampingMethod(token_frames(plan.train_latent, pt), plan.damping_factor)
    if plan.long_sparse:  # over the whole video, the training length its window unless the config says
        # With damping: the pattern's kept block pairs beyond half the training length are damped in the kernel.
        return (DampedLongMethod(plan.sparse, plan.train_latent, plan.damping_factor) if plan.damping
                else plan.sparse)
    if plan.temporal_windows or plan.sparse is not None:
        inner = plan.sparse.build() if plan.sparse is not None else None
        window = token_frames(plan.window if plan.temporal_windows else plan.latent_frames, pt)
        stride = min(token_frames(plan.stride, pt), window)
        return TemporalWindowMethod(window=window, stride=stride, weighting=config.weighting,
                                    global_heads=config.global_heads, inner=inner)
    return None


def _num_steps(pipe, kwargs: dict) -> int | None:
    """The denoising steps the call will run: ``timesteps=`` / ``sigmas=`` / ``num_inference_steps=``, else the
    pipeline's default; None when unknown."""
    for name in ("timesteps", "sigmas"):
        if kwargs.get(name) is not None:
            return len(kwargs[name])
    n = kwargs.get("num_inference_steps")
    if n is None:
        try:
            n = _call_default(pipe, "num_inference_steps")
        except ValueError:
            return None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _dense_steps(global_steps: int | float, n: int) -> int:
    """Steps ``Schedule(warmup_steps=global_steps)`` keeps dense out of ``n`` (a fraction is rounded, like the
    Schedule does)."""
    return round(global_steps * n) if isinstance(global_steps, float) else int(global_steps)


STOCHASTIC_LOCAL_ATTENTION_WARNING = (
    "long_video: the scheduler draws fresh noise every step (stochastic_sampling=True), so the last steps, which "
    "attend locally (sparse pattern or temporal windows), redraw content instead of refining it; on shapes-video the "
    "long pattern lost 2-3 of 16 videos at 2x-4x this way (docs/long_video.md, 'Stochastic samplers'). "
    "LongVideoConfig(sparse=None, temporal_windows=False) keeps attention dense."
)


def _warn_if_no_windowed_step(pipe, plan: LongVideoPlan, kwargs: dict) -> None:
    """Warn (once per call, with the numbers) when ``global_steps`` keeps every denoising step dense, so the temporal
    windows (or the sparse pattern) never run. The recipe is not changed: the dense steps are what was asked for."""
    g, n = plan.global_steps, _num_steps(pipe, kwargs)
    if not g or n is None or n < 1 or _dense_steps(g, n) < n:
        return
    what = ("temporal windows" if plan.sparse is None else "temporal windows and the sparse pattern inside them"
            ) if plan.temporal_windows else "sparse pattern"
    need = next((m for m in range(n + 1, 100 * n + 2) if _dense_steps(g, m) < m), None)
    fix = f"num_inference_steps >= {need}" if need else "more steps"
    rounded = f" (round({g} x {n}) = {_dense_steps(g, n)})" if isinstance(g, float) else ""
    log_once(logger, logging.WARNING,
             f"long_video: global_steps={g!r} keeps {_dense_steps(g, n)} of the {n} denoising steps dense{rounded}, "
             f"so the {what} never run; give {fix}, or a smaller LongVideoConfig.global_steps.")


# ---------------------------------------------------------------------------------------------- AnimateDiff
def _disable_free_noise(pipe) -> None:
    try:
        pipe.disable_free_noise()
    except AttributeError:
        # diffusers <= 0.42 rebuilds a mid block without motion modules too; undo the blocks that have them.
        log_once(logger, logging.DEBUG, "disable_free_noise failed on a mid block without motion modules; "
                 "disabling the motion blocks one by one")
        pipe._free_noise_context_length = None
        for block in [*pipe.unet.down_blocks, pipe.unet.mid_block, *pipe.unet.up_blocks]:
            if hasattr(block, "motion_modules"):
                pipe._disable_free_noise_in_block(block)


def _animatediff(pipe, prompt, plan: LongVideoPlan, config: LongVideoConfig, kwargs: dict):
    """AnimateDiff: diffusers' FreeNoise gives the windows and the noise; attnplug adds the VSTAR band bias."""
    if not hasattr(pipe, "enable_free_noise"):
        raise TypeError(
            f"{type(pipe).__name__} has no enable_free_noise (diffusers' FreeNoise); use AnimateDiffPipeline."
        )
    user_free_noise = pipe.free_noise_enabled
    use_windows = plan.temporal_windows or plan.latent_frames > plan.train_latent
    with contextlib.ExitStack() as stack:
        if use_windows and not user_free_noise:
            stack.callback(_disable_free_noise, pipe)
            pipe.enable_free_noise(
                context_length=plan.train_latent, context_stride=max(1, plan.train_latent // 2),
                weighting_scheme=config.weighting,
                noise_type="shuffle_context" if plan.noise_rescheduling else "random",
            )
        if plan.vstar:
            # After enable_free_noise: FreeNoise rebuilds the motion blocks, so their attention modules are new.
            stack.callback(remove, pipe)
            apply(pipe, TemporalBandMethod(config.vstar_strength, config.vstar_sigma))
        return pipe(prompt, num_frames=plan.num_frames, **kwargs)


def describe(plan: LongVideoPlan) -> dict[str, Any]:
    """The plan as a plain dict (for reports)."""
    out = dataclasses.asdict(plan)
    out["extension"] = round(plan.extension, 3)
    return out


__all__ = ["LongVideoConfig", "LongVideoPlan", "check_num_frames", "long_video", "resolve_config"]
