"""Run a pipeline from an intermediate timestep without touching its ``__call__``: :func:`renoise` noises a clean
latent to the first timestep of the truncated schedule, and :func:`refine_schedule` gives the call a copy of the
scheduler whose ``set_timesteps`` keeps only the last ``strength`` part of the schedule (as diffusers' img2img
pipelines slice it)."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator

import numpy as np
import torch

from .family import Family, signature_default

#: families whose pipeline shifts the schedule by ``mu = calculate_shift(h w / 4)``, the token count of the latent
#: in 2 x 2 patches, and passes the sigmas ``linspace(1, 1 / steps, steps)``
PACKED_SHIFT = ("flux", "chroma", "qwen-image", "z-image")


def _schedule_kwargs(family: Family, pipe, steps: int, latent_hw: tuple[int, int], device,
                     mu_steps: int | None = None) -> dict:
    """The arguments the family's pipeline gives ``scheduler.set_timesteps`` for ``steps`` steps at this size.
    ``mu_steps``: the step count Flux 2's shift is computed for (default ``steps``; its shift depends on both)."""
    sched = pipe.scheduler
    if family.name == "flux2":
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        mu = compute_empirical_mu((latent_hw[0] // 2) * (latent_hw[1] // 2), mu_steps or steps)
        if sched.config.get("use_flow_sigmas", False):
            return {"num_inference_steps": steps, "device": device, "mu": mu}
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "device": device, "mu": mu}
    if family.name in PACKED_SHIFT:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                             sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
                             sched.config.get("max_shift", 1.15))
        # Chroma, Qwen-Image and Z-Image always pass their sigmas; Flux drops them for `use_flow_sigmas` schedulers
        flow_sigmas = family.name == "flux" and sched.config.get("use_flow_sigmas", False)
        sigmas = None if flow_sigmas else np.linspace(1.0, 1 / steps, steps)
        if family.name == "z-image":  # its float32 linspace, as the pipeline builds it
            sigmas = torch.linspace(1.0, 1 / steps, steps).tolist()
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


def sigma_start_index(sigmas: torch.Tensor, steps: int, start_sigma: float) -> int:
    """First of ``steps`` steps whose noise level ``sigmas[i]`` is at most ``start_sigma`` (the last step when none
    is: at least one step runs)."""
    below = (sigmas[:steps] <= start_sigma).nonzero()
    return min(int(below[0]) if len(below) else steps - 1, steps - 1)


def _first_step(sched, steps: int, strength: float, start_sigma: float | None) -> int:
    if start_sigma is None:
        return start_index(steps, strength)
    return sigma_start_index(sched.sigmas, steps, start_sigma)


def shifts_with_resolution(family: Family, pipe) -> bool:
    """Whether ``pipe``'s flow-matching schedule is shifted by the image size (Flux, Chroma, Qwen-Image, Flux 2,
    Z-Image; SD3 with dynamic shifting), so a fraction of the steps is a different noise level at each size and
    refinement starts from a sigma instead."""
    return family.name in PACKED_SHIFT or family.name == "flux2" or (family.name == "sd3" and bool(
        pipe.scheduler.config.get("use_dynamic_shifting", None)))


def train_size_sigma(family: Family, pipe, strength: float, resolution: int = 1000, steps: int | None = None) -> float:
    """The noise level at which re-noising to ``strength`` starts on a ``resolution``-step schedule at the family's
    training size: the default start sigma of :func:`shifts_with_resolution` pipelines. ``steps``: the call's step
    count, which Flux 2's shift depends on (default: the pipeline's default ``num_inference_steps``)."""
    sched = copy.deepcopy(pipe.scheduler)
    h, w = (s // family.vae_factor for s in family.train_size)
    mu_steps = None
    if family.name == "flux2":
        mu_steps = steps if steps is not None else signature_default(pipe, "num_inference_steps")
        if mu_steps is None:
            raise ValueError(f"Give num_inference_steps: {type(pipe).__name__} has no default for it and its "
                             "schedule shift depends on it.")
    sched.set_timesteps(**_schedule_kwargs(family, pipe, resolution, (h, w), "cpu", mu_steps=mu_steps))
    return float(sched.sigmas[start_index(resolution, strength)])


def renoise(family: Family, pipe, x0: torch.Tensor, steps: int, strength: float,
            generator, start_sigma: float | None = None) -> tuple[torch.Tensor, float]:
    """Noise the clean latent ``x0`` to the first timestep of the truncated schedule (see :func:`refine_schedule`),
    divided by the scheduler's ``init_noise_sigma`` (the pipeline multiplies it back). Returns the latents and that
    timestep. ``start_sigma``: start at the first step at or below this noise level instead of at ``strength``."""
    from diffusers.utils.torch_utils import randn_tensor

    sched = copy.deepcopy(pipe.scheduler)
    latent_hw = tuple(x0.shape[-2:])
    sched.set_timesteps(**_schedule_kwargs(family, pipe, steps, latent_hw, x0.device))
    _truncate(sched, _first_step(sched, steps, strength, start_sigma))
    t0 = sched.timesteps[:1].to(x0.device)
    noise = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    if hasattr(sched, "scale_noise"):
        noisy = sched.scale_noise(x0, t0, noise)
    else:
        noisy = sched.add_noise(x0, noise, t0)
    return noisy / getattr(sched, "init_noise_sigma", 1.0), float(t0[0])


@contextlib.contextmanager
def refine_schedule(pipe, strength: float, first_timestep: float | None = None,
                    start_sigma: float | None = None) -> Iterator[None]:
    """While active, ``pipe`` runs only the last ``strength`` part of its schedule (from the first step at or below
    ``start_sigma`` when given): its scheduler is a copy whose ``set_timesteps`` slices the schedule after building
    it. The user's scheduler is put back on exit.
    ``first_timestep``: the timestep the latents were noised for (:func:`renoise`); a pipeline that builds a different
    schedule raises instead of denoising from the wrong noise level."""
    original = pipe.scheduler
    sched = copy.deepcopy(original)
    build = sched.set_timesteps

    @functools.wraps(build)  # pipelines inspect its signature for `timesteps` / `sigmas` support
    def set_timesteps(*args, **kwargs):
        build(*args, **kwargs)
        steps = len(sched.timesteps) // int(getattr(sched, "order", 1) or 1)
        _truncate(sched, _first_step(sched, steps, strength, start_sigma))
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
