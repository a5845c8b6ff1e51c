"""The hi-res stages, run in order: HiDiffusion (RAU-Net hooks and MSW-MSA windows around one pipeline call) and
coarse-to-fine (a training-size call, then per stage: upsample the latent, re-noise, refine with local attention).
The denoiser is stock again after each stage, also when it raises."""

from __future__ import annotations

import contextlib
import logging

from ..._logging import log_once
from ..._steps import pipeline_steps
from ...plugin import applied, method_of
from . import raunet as rau
from .attention import hidiffusion_attention, refine_attention
from .config import DEFAULT_LOWPASS, HiResConfig
from .family import signature_default
from .latents import pipeline_latents, result_latents, stage_kwargs, upsample_latents
from .masks import drop_text_padding
from .plan import HiResPlan
from .schedule import refine_schedule, renoise

logger = logging.getLogger(__name__)




def _steps(pipe, kwargs: dict) -> int:
    steps = kwargs.get("num_inference_steps")
    if steps is None:
        steps = (getattr(pipe, "sample_defaults", None) or {}).get("num_inference_steps")
    if steps is None:
        steps = signature_default(pipe, "num_inference_steps")
    if steps is None:
        raise ValueError("Give num_inference_steps: the pipeline has no default for it.")
    return int(steps)


def _progress(total: int, config: HiResConfig, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not config.progress, leave=False)


def _stage_attention(pipe, method, schedule=None):
    """Apply ``method`` for one stage (removed after it), or nothing when it is None."""
    return applied(pipe, method, schedule=schedule) if method is not None else contextlib.nullcontext()


def run_hidiffusion(pipe, prompt, p: HiResPlan, config: HiResConfig, kwargs: dict):
    """One pipeline call at the target size with the RAU-Net hooks on the U-Net and the MSW-MSA windows applied."""
    height, width = p.sizes[-1]
    unet = p.family.denoiser(pipe)
    user_method = method_of(pipe) is not None
    attention = None
    if max(p.scale) > 1 and not user_method:
        attention = hidiffusion_attention(unet, config, p.family)
    if user_method and (config.windows or config.attention is not None):
        log_once(logger, logging.INFO, "hires: the pipeline already has an attnplug method applied; it is kept and "
                 "the MSW-MSA windows are not added.")
    state = None
    if p.raunet_factors:
        # RAU-Net hooks the U-Net, its pipeline's one denoiser: its tracker is that pipeline's step tracker
        state = rau.RAUState(p.raunet_factors, p.raunet_switch, steps=pipeline_steps(pipe))
    method, schedule = attention if attention is not None else (None, None)
    with _progress(1, config, "hires (HiDiffusion)") as bar:
        try:
            if state is not None:
                rau.apply_raunet(unet, state)
            with _stage_attention(pipe, method, schedule):
                out = pipe(prompt, height=height, width=width, **stage_kwargs(p.family, kwargs, final=True))
        finally:
            rau.remove_raunet(unet)
        bar.update(1)
    return out


def run_coarse_to_fine(pipe, prompt, p: HiResPlan, config: HiResConfig, kwargs: dict):
    """The training-size call, then one refinement call per larger stage size."""
    for bad in ("latents", "timesteps", "sigmas"):
        if kwargs.get(bad) is not None:
            raise TypeError(f"hires (coarse-to-fine) makes its own `{bad}`; do not pass {bad}=.")
    family, steps = p.family, _steps(pipe, kwargs)
    generator = kwargs.get("generator")
    refine_method = None if method_of(pipe) is not None else refine_attention(config, family)
    with _progress(len(p.sizes), config, "hires (coarse-to-fine)") as bar:
        (h, w) = p.sizes[0]
        final = len(p.sizes) == 1
        out = pipe(prompt, height=h, width=w, **stage_kwargs(family, kwargs, final=final))
        bar.update(1)
        for i, (h1, w1) in enumerate(p.sizes[1:], start=1):
            final = i == len(p.sizes) - 1
            x = result_latents(family, pipe, out, h, w)
            lowpass = config.lowpass if config.lowpass is not None else DEFAULT_LOWPASS
            x = upsample_latents(family, pipe, x, (h1 // family.vae_factor, w1 // family.vae_factor),
                                 config.upsample_mode, lowpass)
            strength = p.strengths[i - 1]
            sigma = p.start_sigmas[i - 1] if p.start_sigmas else None
            x, t0 = renoise(family, pipe, x, steps, strength, generator, start_sigma=sigma)
            stage_kw = stage_kwargs(family, kwargs, final=final)
            stage_kw["latents"] = pipeline_latents(family, pipe, x)
            with (refine_schedule(pipe, strength, t0, start_sigma=sigma), _stage_attention(pipe, refine_method),
                  drop_text_padding(family, family.denoiser(pipe))):
                out = pipe(prompt, height=h1, width=w1, **stage_kw)
            h, w = h1, w1
            bar.update(1)
    return out
