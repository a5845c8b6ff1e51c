"""Training-free high-resolution images: HiDiffusion for U-Nets, coarse-to-fine windowed refinement for DiTs.

``hires(pipe, prompt, height=2 * h, width=2 * w)`` generates above the model's training size ``h x w`` without
the object duplication plain sampling gives there, and faster than plain sampling at that size:

- **U-Nets** (SD 1.5, SDXL, the embedded ``shapes-unet``): HiDiffusion (arXiv 2311.17528). *RAU-Net*: in the early
  steps the first downsampler shrinks the feature map by ``2 f`` (its weights as a strided, dilated convolution) so
  the deep blocks work at the training size and lay out one composition; the matching upsampler restores the size;
  the late steps run the vanilla U-Net for detail (``raunet_switch``). *MSW-MSA*: the highest-resolution attention
  blocks attend inside shifted windows of the training size whose shift changes with the step
  (:class:`attnplug.WindowConfig` through :func:`attnplug.apply`). Module hooks only; at scale 1 the U-Net is stock.
- **DiTs** (PixArt, SD3, Flux, the embedded ``shapes-dit``; Wan for single frames): coarse-to-fine. Generate at the
  training size, upsample the latent, re-noise it to ``strength`` and denoise the last part of the schedule at the
  target size with attention windows of the training receptive field (FreeSwim / DemoFusion route), through
  intermediate sizes of at most ``max_stage_scale`` (4x = 2x then 4x).

The pipeline's own ``__call__`` runs every stage; the denoiser is stock again after the call, also when it raises.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from .._logging import log_once, scoped
from ..config import MethodConfig, Schedule, help_field, validate_fields
from ..methods.base import AttentionMethod
from . import _hires_raunet as rau
from . import _hires_stages as stages
from ._hires_attention import LogScaledAttention

logger = logging.getLogger(__name__)

METHODS = ("auto", "hidiffusion", "coarse_to_fine")
LOCAL_ATTENTION = ("auto", "neighborhood", "window", "freeswim", "dense")
UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")
SHIFTS = ("cycle", "random", "none")
#: Coarse-to-fine defaults, tuned on shapes-dit with seeds 5000+ (disjoint from the benchmark's 1000+): re-noise
#: 0.4 for the first refinement stage and 0.3 for later ones (0.5 and more let the refinement re-tile the 4x canvas:
#: 50 % duplicated), and a low-pass of 0.5 source pixels on the upsampled latent (2x duplication 27 % -> 12 %: the
#: coarse stage's small specks are no longer enlarged into objects).
DEFAULT_STRENGTH = (0.4, 0.3)
DEFAULT_LOWPASS = 0.5


@dataclass(frozen=True)
class HiResConfig:
    """The hi-res recipe. ``None`` fields take the per-family default chosen from the model (see ``docs/hires.md``).
    """

    method: str = help_field(
        "auto", "'hidiffusion' (RAU-Net + shifted windows; U-Nets), 'coarse_to_fine' (generate at the training size, "
        "upsample, re-noise, refine; any family) or 'auto' (hidiffusion for U-Nets, coarse_to_fine for DiTs).",
        choices=METHODS,
    )
    raunet: bool = help_field(True, "HiDiffusion: use the resolution-aware U-Net in the early steps.")
    raunet_switch: tuple | None = help_field(
        None, "HiDiffusion: fractions of the steps at which the RAU-Net factor halves (the last one switches to the "
        "vanilla U-Net). Default: (0.4,) up to 2.5x (HiDiffusion's T1), (0.3, 0.7) above (its T2, T1).", min=0.0,
        max=1.0,
    )
    windows: bool = help_field(
        True, "HiDiffusion: shifted-window self-attention (MSW-MSA) in the highest-resolution attention blocks, "
        "windows of the training size."
    )
    window_shift: str = help_field("random", "MSW-MSA shift per step (see WindowConfig.shift).", choices=SHIFTS)
    strength: float | tuple | None = help_field(
        None, "Coarse-to-fine: re-noise strength of the refinement stages (fraction of the schedule re-run): one "
        "number, or one per stage (the last repeats). "
        "Default (0.4, 0.3).", min=0.05, max=1.0,
    )
    max_stage_scale: float = help_field(
        2.0, "Coarse-to-fine: largest upscale of one stage; larger targets go through intermediate sizes.",
        min=1.01, max=16.0,
    )
    upsample_mode: str = help_field("bicubic", "Coarse-to-fine: latent upsampling.", choices=UPSAMPLE_MODES)
    lowpass: float | None = help_field(
        None, "Coarse-to-fine: Gaussian low-pass of the upsampled latent, sigma in source pixels (0 = none): the "
        "refinement then redraws the fine detail instead of enlarging the coarse stage's specks. Default 0.5.",
        min=0.0, max=8.0,
    )
    local_attention: str = help_field(
        "auto", "Coarse-to-fine: self-attention of the refinement stages: 'neighborhood' (inward window of the "
        "training token grid), 'window' (shifted training-size windows), 'freeswim' (window + full-branch "
        "cross-attention), 'dense', or 'auto' (window for DiTs, neighborhood per level for U-Nets).",
        choices=LOCAL_ATTENTION,
    )
    attention: Any = help_field(
        None, "An attnplug method config (e.g. AgentConfig()) for the hi-res stage; replaces local_attention "
        "(coarse-to-fine) or the MSW-MSA windows (HiDiffusion)."
    )
    attention_scale: bool = help_field(
        False, "Grow the softmax scale by sqrt(log N / log N_train) in dense/global hi-res attention."
    )
    train_size: tuple | None = help_field(
        None, "Training resolution (height, width) in pixels; default read from the model / pipeline."
    )
    progress: bool = help_field(True, "Show a progress bar over the stages.")

    def __post_init__(self):
        validate_fields(self)
        if self.raunet_switch is not None:
            sw = tuple(self.raunet_switch)
            if not sw or any(not isinstance(x, (int, float)) or isinstance(x, bool) for x in sw) or any(
                b < a for a, b in zip(sw, sw[1:])
            ):
                raise ValueError(
                    f"HiResConfig.raunet_switch must be increasing fractions in [0, 1], got {self.raunet_switch!r}."
                )
            object.__setattr__(self, "raunet_switch", tuple(float(x) for x in sw))
        if isinstance(self.strength, (tuple, list)):
            st = tuple(self.strength)
            if not st or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.05 <= x <= 1 for x in st):
                raise ValueError(f"HiResConfig.strength entries must be in [0.05, 1], got {self.strength!r}.")
            object.__setattr__(self, "strength", tuple(float(x) for x in st))
        if self.train_size is not None:
            ts = tuple(self.train_size)
            if len(ts) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in ts):
                raise ValueError(f"HiResConfig.train_size must be (height, width) in pixels, got {self.train_size!r}.")
            object.__setattr__(self, "train_size", ts)
        if self.attention is not None and not isinstance(self.attention, (MethodConfig, AttentionMethod)):
            raise TypeError(
                f"HiResConfig.attention must be an attnplug method config (e.g. attnplug.AgentConfig()), got "
                f"{type(self.attention).__name__}."
            )

    def replace(self, **changes) -> HiResConfig:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HiResPlan:
    """A resolved recipe for one call (what :func:`hires` runs)."""

    family: stages.Family
    method: str
    sizes: tuple[tuple[int, int], ...]  # stage sizes in pixels, base first, target last
    raunet_factors: tuple[tuple[int, int], ...] = ()
    raunet_switch: tuple[float, ...] = ()
    strengths: tuple[float, ...] = DEFAULT_STRENGTH

    @property
    def scale(self) -> tuple[float, float]:
        (h0, w0), (h, w) = self.family.train_size, self.sizes[-1]
        return h / h0, w / w0


def _check_size(name: str, value, multiple: int, family: stages.Family) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int (pixels).")
    if value % multiple:
        lo, hi = value - value % multiple, value - value % multiple + multiple
        raise ValueError(
            f"{name}={value} is not a multiple of {multiple}, which {family.name} needs here (VAE factor "
            f"{family.vae_factor} x latent multiple {multiple // family.vae_factor}); e.g. {lo or multiple} or {hi}."
        )


def _raunet_schedule(config: HiResConfig, scale: tuple[float, float]) -> tuple[tuple, tuple]:
    kh, kw = max(1, round(scale[0])), max(1, round(scale[1]))
    if kh == 1 and kw == 1:
        return (), ()
    big = max(scale) > 2.5
    switch = config.raunet_switch or ((0.3, 0.7) if big else (0.4,))
    factors = [(kh, kw)]
    while len(factors) < len(switch):
        fh, fw = factors[-1]
        factors.append((max(1, fh // 2), max(1, fw // 2)))
    return tuple(factors), tuple(switch[: len(factors)])


def _stage_sizes(family: stages.Family, height: int, width: int, max_scale: float) -> tuple[tuple[int, int], ...]:
    h0, w0 = family.train_size
    m = family.pixel_multiple
    n = max(1, math.ceil(math.log(max(height / h0, width / w0)) / math.log(max_scale) - 1e-9))
    sizes = []
    for i in range(n + 1):
        f = i / n
        h = h0 * (height / h0) ** f
        w = w0 * (width / w0) ** f
        sizes.append((max(m, round(h / m) * m), max(m, round(w / m) * m)))
    sizes[0], sizes[-1] = (max(m, round(h0 / m) * m), max(m, round(w0 / m) * m)), (height, width)
    out = [sizes[0]]
    for s in sizes[1:]:
        if s != out[-1]:
            out.append(s)
    return tuple(out)


def plan(pipe, height: int, width: int, config: HiResConfig | None = None) -> HiResPlan:
    """Resolve ``config`` for ``pipe`` at ``height x width``: family, method, stage sizes, RAU-Net schedule.
    ``ValueError`` for a scale below 1 or a size the model cannot take; ``TypeError`` for an unsupported pipeline."""
    config = config if config is not None else HiResConfig()
    if not isinstance(config, HiResConfig):
        raise TypeError(f"config must be a HiResConfig, got {type(config).__name__}.")
    family = stages.detect_family(pipe, config.train_size)
    _check_size("height", height, family.pixel_multiple, family)
    _check_size("width", width, family.pixel_multiple, family)
    h0, w0 = family.train_size
    scale = (height / h0, width / w0)
    if min(scale) < 1:
        raise ValueError(
            f"hires needs a target at least the training size {h0}x{w0} of {family.name}; got {height}x{width} "
            f"(scale {scale[0]:.2f} x {scale[1]:.2f}): call the pipeline directly below it."
        )
    method = config.method
    if method == "auto":
        method = "hidiffusion" if family.is_unet else "coarse_to_fine"
    if method == "hidiffusion" and not family.is_unet:
        raise ValueError(
            f"HiResConfig(method='hidiffusion') needs a U-Net pipeline; {family.name} is a DiT: use 'coarse_to_fine'."
        )
    if method == "hidiffusion":
        factors, switch = _raunet_schedule(config, scale) if config.raunet else ((), ())
        if factors:
            fh, fw = factors[0]
            _check_size("height", height, family.pixel_multiple * fh, family)
            _check_size("width", width, family.pixel_multiple * fw, family)
        return HiResPlan(family, method, ((height, width),), factors, switch)
    strength = config.strength if config.strength is not None else DEFAULT_STRENGTH
    strength = strength if isinstance(strength, tuple) else (strength,)
    sizes = _stage_sizes(family, height, width, config.max_stage_scale)
    n = len(sizes) - 1
    return HiResPlan(family, method, sizes, strengths=tuple(strength[min(i, len(strength) - 1)] for i in range(n)))


# ------------------------------------------------------------------------------------------------ attention


def _unet_highest_attention(unet) -> tuple[str, int]:
    """Regex of the self-attention modules in the highest-resolution attention blocks, and their level."""
    for i, block in enumerate(unet.down_blocks):
        if getattr(block, "attentions", None):
            j = len(unet.up_blocks) - 1 - i
            return rf"^(down_blocks\.{i}|up_blocks\.{j})\.attentions\.\d+\..*attn1$", i
    raise TypeError(f"{type(unet).__name__} has no attention blocks for MSW-MSA (HiResConfig(windows=False)).")


def _wrap_scale(method, config: HiResConfig, family: stages.Family):
    if not config.attention_scale:
        return method
    h0, w0 = family.train_size
    p = family.vae_factor * (1 if family.is_unet else family.input_multiple)
    return LogScaledAttention(max(2, (h0 // p) * (w0 // p)), inner=method)


def _hidiffusion_attention(pipe, config: HiResConfig, family: stages.Family):
    """``(method or config, schedule)`` for the HiDiffusion stage, or None for stock attention."""
    if config.attention is not None:
        return _wrap_scale(config.attention if isinstance(config.attention, AttentionMethod)
                           else config.attention.build(), config, family), None
    if not config.windows:
        return (_wrap_scale(None, config, family), None) if config.attention_scale else None
    from ..methods.window import WindowConfig

    regex, level = _unet_highest_attention(pipe.unet)
    h0, w0 = family.train_size
    down = family.vae_factor * 2 ** level
    window = WindowConfig(window_size=(max(1, h0 // down), max(1, w0 // down)), shift=config.window_shift,
                          max_level=None)
    return _wrap_scale(window.build(), config, family), Schedule(layers=regex)


def _refine_attention(config: HiResConfig, family: stages.Family):
    if config.attention is not None:
        inner = config.attention if isinstance(config.attention, AttentionMethod) else config.attention.build()
        return _wrap_scale(inner, config, family)
    h0, w0 = family.train_size
    # the training grid of the denoiser input: the latent for U-Nets (methods scale it per level), patches for DiTs
    p = family.vae_factor * (1 if family.is_unet else family.input_multiple)
    grid = (max(1, h0 // p), max(1, w0 // p))
    kind = config.local_attention
    if kind == "auto":
        kind = "neighborhood" if family.is_unet else "window"
    if kind == "neighborhood":
        from ..methods.neighborhood import NeighborhoodConfig

        return NeighborhoodConfig.from_training_resolution(grid, family="unet" if family.is_unet else None).build()
    if kind == "window":
        from ..methods.window import WindowConfig

        return WindowConfig(window_size=grid, shift=config.window_shift, max_level=None).build()
    if kind == "freeswim":
        from ..methods.freeswim import FreeSwimConfig

        return FreeSwimConfig(train_grid=grid).build()
    return _wrap_scale(None, config, family) if config.attention_scale else None


class _Applied:
    """Apply an attention method to the pipeline for one stage; always removed (unless the user had one on)."""

    def __init__(self, pipe, method, schedule=None):
        self.pipe, self.method, self.schedule = pipe, method, schedule
        self.active = False

    def __enter__(self):
        if self.method is None:
            return self
        from ..plugin import apply

        apply(self.pipe, self.method, schedule=self.schedule)
        self.active = True
        return self

    def __exit__(self, *exc):
        if self.active:
            from ..plugin import remove

            remove(self.pipe)
        return False


def _user_attention_applied(denoiser) -> bool:
    from ..plugin import method_of

    return method_of(denoiser) is not None


# ------------------------------------------------------------------------------------------------ entry points


def _steps(pipe, kwargs: dict) -> int:
    steps = kwargs.get("num_inference_steps")
    if steps is None:
        steps = (getattr(pipe, "sample_defaults", None) or {}).get("num_inference_steps")
    if steps is None:
        steps = stages._signature_default(pipe, "num_inference_steps")
    if steps is None:
        raise ValueError("Give num_inference_steps: the pipeline has no default for it.")
    return int(steps)


@scoped
def hires(pipe, prompt=None, *, height: int, width: int, config: HiResConfig | None = None, **kwargs):
    """Generate ``height x width`` images above ``pipe``'s training resolution.

    Args:
        pipe: a supported diffusers pipeline (see :func:`attnplug.pipelines._hires_stages.supported_pipelines`):
            ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``PixArtAlphaPipeline``/``Sigma``,
            ``StableDiffusion3Pipeline``, ``FluxPipeline``, ``WanPipeline`` (single frames) or the embedded
            ``shapes-unet`` / ``shapes-dit``.
        prompt: as for ``pipe(...)``.
        height, width: target size in pixels (at least the training size; multiples the model accepts).
        config: the recipe (default: :class:`HiResConfig` with per-family defaults).
        **kwargs: passed to every ``pipe(...)`` call (``generator``, ``num_inference_steps``, ``guidance_scale``,
            ``negative_prompt``, ``output_type``, ...). Coarse-to-fine does not take ``latents``/``timesteps``/
            ``sigmas`` (it makes them).

    Returns:
        What ``pipe(...)`` returns for the target size (``.images``; ``.frames`` for Wan).
    """
    config = config if config is not None else HiResConfig()
    p = plan(pipe, height, width, config)
    denoiser = getattr(pipe, p.family.denoiser_attr)
    if p.method == "hidiffusion":
        return _run_hidiffusion(pipe, prompt, p, config, denoiser, kwargs)
    return _run_coarse_to_fine(pipe, prompt, p, config, denoiser, kwargs)


def _progress(total: int, config: HiResConfig, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not config.progress, leave=False)


def _run_hidiffusion(pipe, prompt, p: HiResPlan, config, unet, kwargs):
    height, width = p.sizes[-1]
    at_scale = max(p.scale) > 1
    attention = None
    if at_scale and not _user_attention_applied(unet):
        attention = _hidiffusion_attention(pipe, config, p.family)
    if _user_attention_applied(unet) and (config.windows or config.attention is not None):
        log_once(logger, logging.INFO, "hires: the pipeline already has an attnplug method applied; it is kept and "
                 "the MSW-MSA windows are not added.")
    state = None
    if p.raunet_factors:
        def num_steps():
            ts = getattr(pipe.scheduler, "timesteps", None)
            return None if ts is None else len(torch.unique_consecutive(ts))

        state = rau.RAUState(p.raunet_factors, p.raunet_switch, num_steps_fn=num_steps)
    method, schedule = attention if attention is not None else (None, None)
    with _progress(1, config, "hires (HiDiffusion)") as bar:
        try:
            if state is not None:
                rau.apply_raunet(unet, state)
            with _Applied(pipe, method, schedule):
                out = pipe(prompt, height=height, width=width, **stages.stage_kwargs(p.family, kwargs, final=True))
        finally:
            rau.remove_raunet(unet)
        bar.update(1)
    return out


def _run_coarse_to_fine(pipe, prompt, p: HiResPlan, config, denoiser, kwargs):
    for bad in ("latents", "timesteps", "sigmas"):
        if kwargs.get(bad) is not None:
            raise TypeError(f"hires (coarse-to-fine) makes its own `{bad}`; do not pass {bad}=.")
    family, steps = p.family, _steps(pipe, kwargs)
    generator = kwargs.get("generator")
    user_method = _user_attention_applied(denoiser)
    refine_method = None if user_method else _refine_attention(config, family)
    with _progress(len(p.sizes), config, "hires (coarse-to-fine)") as bar:
        (h, w) = p.sizes[0]
        final = len(p.sizes) == 1
        out = pipe(prompt, height=h, width=w, **stages.stage_kwargs(family, kwargs, final=final))
        bar.update(1)
        for i, (h1, w1) in enumerate(p.sizes[1:], start=1):
            final = i == len(p.sizes) - 1
            x = stages.result_latents(family, pipe, out, h, w)
            x = stages.upsample(x, (h1 // family.vae_factor, w1 // family.vae_factor), config.upsample_mode,
                                config.lowpass if config.lowpass is not None else DEFAULT_LOWPASS)
            strength = p.strengths[i - 1]
            x, t0 = stages.renoise(family, pipe, x, steps, strength, generator)
            stage_kw = stages.stage_kwargs(family, kwargs, final=final)
            stage_kw["latents"] = stages.pipeline_latents(family, pipe, x)
            with stages.refine_schedule(pipe, strength, t0), _Applied(pipe, refine_method):
                out = pipe(prompt, height=h1, width=w1, **stage_kw)
            h, w = h1, w1
            bar.update(1)
    return out


class HiResPipeline:
    """A diffusers-style wrapper: ``HiResPipeline.from_pipe(pipe)(prompt, height=..., width=...)`` runs
    :func:`hires` with this wrapper's :class:`HiResConfig`; other attributes are the wrapped pipeline's."""

    def __init__(self, pipe, config: HiResConfig | None = None):
        stages.detect_family(pipe, config.train_size if config is not None else None)
        self.pipe = pipe
        self.config = config if config is not None else HiResConfig()

    @classmethod
    def from_pipe(cls, pipe, config: HiResConfig | None = None, **changes) -> HiResPipeline:
        """Wrap ``pipe`` (components shared, nothing copied); ``changes`` are :class:`HiResConfig` fields."""
        config = config if config is not None else HiResConfig()
        return cls(pipe, config.replace(**changes) if changes else config)

    def __call__(self, prompt=None, *, height: int, width: int, **kwargs):
        return hires(self.pipe, prompt, height=height, width=width, config=self.config, **kwargs)

    def __getattr__(self, name: str):
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)
