"""Training-free high-resolution images: HiDiffusion for U-Nets, coarse-to-fine windowed refinement for DiTs.

``hires(pipe, prompt, height=2 * h, width=2 * w)`` generates above the model's training size ``h x w`` without
the object duplication plain sampling gives there, and faster than plain sampling at that size:

- **U-Nets** (SD 1.5, SDXL, the embedded ``shapes-unet``): HiDiffusion (arXiv 2311.17528). *RAU-Net*: in the early
  steps the first downsampler shrinks the feature map by ``2 f`` (its weights as a strided, dilated convolution) so
  the deep blocks work at the training size and lay out one composition; the matching upsampler restores the size;
  the late steps run the vanilla U-Net for detail (``raunet_switch``). *MSW-MSA*: the highest-resolution attention
  blocks attend inside shifted windows of the training size whose shift changes with the step
  (:class:`attnplug.WindowConfig` through :func:`attnplug.apply`). Module hooks only; at scale 1 the U-Net is stock.
- **DiTs** (PixArt, SD3, Flux, Chroma, Qwen-Image, Flux 2, Z-Image, the embedded ``shapes-dit``; Wan for
  single frames): coarse-to-fine. Generate at the training size, upsample the latent, re-noise it (to ``strength``
  of the schedule, or to a noise level where the schedule's shift grows with the size) and denoise the rest of the
  schedule at the target size with attention windows of the training receptive field (FreeSwim / DemoFusion route),
  through intermediate sizes of at most ``max_stage_scale`` (4x = 2x then 4x).

The pipeline's own ``__call__`` runs every stage; the denoiser is stock again after the call, also when it raises.
"""

from __future__ import annotations

from ..._logging import scoped
from .config import HiResConfig
from .family import detect_family
from .plan import HiResPlan, plan
from .run import run_coarse_to_fine, run_hidiffusion

__all__ = ["HiResConfig", "HiResPipeline", "HiResPlan", "hires", "plan"]


@scoped
def hires(pipe, prompt=None, *, height: int, width: int, config: HiResConfig | None = None, **kwargs):
    """Generate ``height x width`` images above ``pipe``'s training resolution.

    Args:
        pipe: a supported diffusers pipeline (see :func:`attnplug.pipelines._hires.family.supported_pipelines`):
            ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``PixArtAlphaPipeline``/``Sigma``,
            ``StableDiffusion3Pipeline``, ``FluxPipeline``, ``ChromaPipeline``, ``QwenImagePipeline``,
            ``Flux2Pipeline``, ``ZImagePipeline``, ``WanPipeline`` (single frames) or the embedded ``shapes-unet`` /
            ``shapes-dit``. Flux, Chroma, Qwen-Image, Flux 2, Z-Image (and SD3 with dynamic shifting) start each
            refinement at a noise level (``HiResConfig.start_sigma``), the others at a fraction of the steps.
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
    p = plan(pipe, height, width, config, steps=kwargs.get("num_inference_steps"))
    if p.method == "hidiffusion":
        return run_hidiffusion(pipe, prompt, p, config, kwargs)
    return run_coarse_to_fine(pipe, prompt, p, config, kwargs)


class HiResPipeline:
    """A diffusers-style wrapper: ``HiResPipeline.from_pipe(pipe)(prompt, height=..., width=...)`` runs
    :func:`hires` with this wrapper's :class:`HiResConfig`; other attributes are the wrapped pipeline's."""

    def __init__(self, pipe, config: HiResConfig | None = None):
        detect_family(pipe, config.train_size_px if config is not None else None)
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
