"""What hi-res needs to know about each supported pipeline, and the coarse-to-fine stage mechanics.

- :class:`Family` / :func:`detect_family`: which pipeline this is, its denoiser, its training size and the size
  multiples the VAE, the patching and the U-Net's downsamplers accept.
- Latent I/O: a stage's result as a spatial latent ``(B, C, h, w)`` (``(B, C, F, h, w)`` for Wan), upsampling it,
  and turning it back into the ``latents=`` argument of the pipeline (Flux packs its latents).
- :func:`refine_schedule`: run a pipeline from an intermediate timestep without touching its ``__call__``: the call
  gets a copy of the scheduler whose ``set_timesteps`` keeps only the last ``strength`` part of the schedule (as
  diffusers' img2img pipelines slice it), and the re-noised latents for that schedule's first timestep.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: pipeline class name -> family name, in lookup order (subclasses first).
PIPELINE_FAMILIES = {
    "ShapesUNetPipeline": "shapes-unet",
    "ShapesDiTPipeline": "shapes-dit",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionPipeline": "sd",
    "PixArtSigmaPipeline": "pixart",
    "PixArtAlphaPipeline": "pixart",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
}
UNET_FAMILIES = ("shapes-unet", "sd", "sdxl")


@dataclass(frozen=True)
class Family:
    """One supported pipeline family and its geometry."""

    name: str
    denoiser_attr: str  # "unet" or "transformer"
    vae_factor: int  # pixels per latent pixel (1 for the pixel-space embedded models)
    input_multiple: int  # the latent side must be a multiple of this (patch, Flux packing, U-Net downsamplers)
    train_size: tuple[int, int]  # (height, width) in pixels

    @property
    def is_unet(self) -> bool:
        return self.name in UNET_FAMILIES

    @property
    def embedded(self) -> bool:
        return self.name.startswith("shapes-")

    @property
    def pixel_multiple(self) -> int:
        return self.vae_factor * self.input_multiple


def supported_pipelines() -> list[str]:
    """Names of the pipeline classes hi-res supports."""
    return list(PIPELINE_FAMILIES)


def _family_name(pipe) -> str:
    names = [c.__name__ for c in type(pipe).__mro__]
    for cls_name, family in PIPELINE_FAMILIES.items():
        if cls_name in names:
            return family
    raise TypeError(
        f"attnplug.pipelines.hires does not support {type(pipe).__name__}; supported pipelines: "
        f"{', '.join(PIPELINE_FAMILIES)}."
    )


def _signature_default(pipe, name: str):
    try:
        param = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    value = None if param is None else param.default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _train_size(pipe, name: str, denoiser, vae_factor: int) -> tuple[int, int]:
    defaults = getattr(pipe, "sample_defaults", None) or {}
    if "height" in defaults and "width" in defaults:
        return int(defaults["height"]), int(defaults["width"])
    h, w = _signature_default(pipe, "height"), _signature_default(pipe, "width")
    if h and w:
        return h, w
    size = getattr(denoiser.config, "sample_size", None)
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is None:
        raise ValueError(
            f"Cannot tell the training resolution of {type(pipe).__name__}: give HiResConfig(train_size=(h, w))."
        )
    if isinstance(size, (tuple, list)):
        return int(size[0]) * vae_factor, int(size[1]) * vae_factor
    return int(size) * vae_factor, int(size) * vae_factor


def detect_family(pipe, train_size: tuple[int, int] | None = None) -> Family:
    """The :class:`Family` of ``pipe``; ``TypeError`` listing the supported pipelines otherwise."""
    name = _family_name(pipe)
    attr = "unet" if name in UNET_FAMILIES else "transformer"
    denoiser = getattr(pipe, attr, None)
    if not isinstance(denoiser, torch.nn.Module):
        raise TypeError(f"{type(pipe).__name__} has no `{attr}` model.")
    if name.startswith("shapes-"):
        vae_factor = 1
    elif name == "wan":
        vae_factor = int(getattr(pipe, "vae_scale_factor_spatial", 8))
    else:
        vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    cfg = denoiser.config
    if name in UNET_FAMILIES:
        input_multiple = 2 ** sum(1 for b in denoiser.down_blocks if getattr(b, "downsamplers", None))
    elif name == "flux":
        input_multiple = 2  # 2 x 2 packing of the latent
    elif name == "wan":
        input_multiple = int(cfg.patch_size[1])
    else:
        input_multiple = int(cfg.patch_size)
    size = tuple(train_size) if train_size is not None else _train_size(pipe, name, denoiser, vae_factor)
    return Family(name, attr, vae_factor, input_multiple, (int(size[0]), int(size[1])))


# ------------------------------------------------------------------------------------------------ latent I/O


def stage_kwargs(family: Family, kwargs: dict, final: bool) -> dict:
    """Pipeline keyword arguments of one stage: the user's, plus what the family needs (intermediate stages return
    latents; PixArt's resolution binning would resize the hi-res result back to a training-size bin)."""
    out = dict(kwargs)
    if family.name == "pixart":
        out.setdefault("use_resolution_binning", False)
    if family.name == "wan":
        out.setdefault("num_frames", 1)
    if not final:
        out["output_type"] = "pt" if family.embedded else "latent"
        out["return_dict"] = True
    return out


def result_latents(family: Family, pipe, result, height: int, width: int) -> torch.Tensor:
    """A stage's output (``output_type`` latent, or ``"pt"`` for the embedded models) as a spatial latent
    ``(B, C, h, w)`` (Wan: ``(B, C, F, h, w)``) in the space the pipeline's ``latents=`` argument takes."""
    if family.embedded:
        return result.images * 2 - 1  # [0, 1] images -> the model's [-1, 1] pixel space
    if family.name == "wan":
        return result.frames
    x = result.images
    if family.name == "flux":
        x = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
    return x


def pipeline_latents(family: Family, pipe, x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`result_latents`: the ``latents=`` argument for a spatial latent ``x``."""
    if family.name == "flux":
        b, c, h, w = x.shape
        return pipe._pack_latents(x, b, c, h, w)
    return x


def gaussian_blur(x: torch.Tensor, sigma: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian low-pass of ``(N, C, H, W)`` with per-axis ``sigma`` in pixels (reflect padding)."""
    out = x
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        radius = max(1, math.ceil(3 * s))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1) if axis == 0 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, radius, radius) if axis == 0 else (radius, radius, 0, 0)
        c = out.shape[1]
        out = F.conv2d(F.pad(out, pad, mode="reflect"), k.expand(c, 1, *k.shape[2:]), groups=c)
    return out


def upsample(x: torch.Tensor, size: tuple[int, int], mode: str, lowpass: float = 0.0) -> torch.Tensor:
    """Resize the last two dims of ``x`` (``(B, C, h, w)`` or ``(B, C, F, h, w)``) to ``size``; ``lowpass`` > 0
    blurs the result with a Gaussian of that many *source* pixels, so the coarse stage hands on only its low
    frequencies and the refinement draws the fine ones (the low-frequency guidance of DiffuseHigh / FreeScale)."""
    kw = {} if mode == "nearest" else {"align_corners": False}
    y = x.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1], *x.shape[-2:]) if x.ndim == 5 else x
    h, w = y.shape[-2:]
    y = F.interpolate(y.float(), size=size, mode=mode, **kw)
    if lowpass > 0:
        y = gaussian_blur(y, (lowpass * size[0] / h, lowpass * size[1] / w))
    y = y.to(x.dtype)
    if x.ndim == 5:
        b, c, f = x.shape[:3]
        return y.reshape(b, f, c, *size).permute(0, 2, 1, 3, 4)
    return y


# ------------------------------------------------------------------------------------------------ schedules


def _schedule_kwargs(family: Family, pipe, steps: int, latent_hw: tuple[int, int], device) -> dict:
    """The arguments the family's pipeline gives ``scheduler.set_timesteps`` for ``steps`` steps at this size."""
    sched = pipe.scheduler
    if family.name == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                             sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
                             sched.config.get("max_shift", 1.15))
        sigmas = None if sched.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        if sigmas is None:
            return {"num_inference_steps": steps, "device": device, "mu": mu}
        return {"sigmas": sigmas, "device": device, "mu": mu}
    if family.name == "sd3" and sched.config.get("use_dynamic_shifting", None):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        patch = pipe.transformer.config.patch_size
        seq = (latent_hw[0] // patch) * (latent_hw[1] // patch)
        mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                             sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
                             sched.config.get("max_shift", 1.16))
        return {"num_inference_steps": steps, "device": device, "mu": mu}
    return {"num_inference_steps": steps, "device": device}


def _truncate(sched, start: int) -> None:
    order = int(getattr(sched, "order", 1) or 1)
    n = len(sched.timesteps)
    cut = start * order
    sched.timesteps = sched.timesteps[cut:]
    sigmas = getattr(sched, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) >= n:
        sched.sigmas = sigmas[cut:]
    if hasattr(sched, "_step_index"):
        sched._step_index = None
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)


def start_index(steps: int, strength: float) -> int:
    """First step kept when re-noising to ``strength`` (fraction of the ``steps`` that run, at least one)."""
    return steps - min(steps, max(1, round(steps * strength)))


def renoise(family: Family, pipe, x0: torch.Tensor, steps: int, strength: float,
            generator) -> tuple[torch.Tensor, float]:
    """Noise the clean latent ``x0`` to the first timestep of the truncated schedule (see :func:`refine_schedule`),
    divided by the scheduler's ``init_noise_sigma`` (the pipeline multiplies it back). Returns the latents and that
    timestep."""
    from diffusers.utils.torch_utils import randn_tensor

    sched = copy.deepcopy(pipe.scheduler)
    latent_hw = tuple(x0.shape[-2:])
    sched.set_timesteps(**_schedule_kwargs(family, pipe, steps, latent_hw, x0.device))
    _truncate(sched, start_index(steps, strength))
    t0 = sched.timesteps[:1].to(x0.device)
    noise = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    if hasattr(sched, "scale_noise"):
        noisy = sched.scale_noise(x0, t0, noise)
    else:
        noisy = sched.add_noise(x0, noise, t0)
    return noisy / getattr(sched, "init_noise_sigma", 1.0), float(t0[0])


@contextlib.contextmanager
def refine_schedule(pipe, strength: float, first_timestep: float | None = None) -> Iterator[None]:
    """While active, ``pipe`` runs only the last ``strength`` part of its schedule: its scheduler is a copy whose
    ``set_timesteps`` slices the schedule after building it. The user's scheduler is put back on exit.
    ``first_timestep``: the timestep the latents were noised for (:func:`renoise`); a pipeline that builds a different
    schedule raises instead of denoising from the wrong noise level."""
    original = pipe.scheduler
    sched = copy.deepcopy(original)
    build = sched.set_timesteps

    @functools.wraps(build)  # pipelines inspect its signature for `timesteps` / `sigmas` support
    def set_timesteps(*args, **kwargs):
        build(*args, **kwargs)
        steps = len(sched.timesteps) // int(getattr(sched, "order", 1) or 1)
        _truncate(sched, start_index(steps, strength))
        t0 = float(sched.timesteps[0])
        if first_timestep is not None and abs(t0 - first_timestep) > 1e-3 * max(1.0, abs(first_timestep)):
            raise RuntimeError(
                f"hires: {type(pipe).__name__} built a schedule starting at t={t0:.4f}, not the "
                f"t={first_timestep:.4f} the latents were noised for (its set_timesteps arguments differ from the "
                "expected ones)."
            )

    sched.set_timesteps = set_timesteps
    pipe.scheduler = sched
    try:
        yield
    finally:
        pipe.scheduler = original
