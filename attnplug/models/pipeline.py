"""Diffusers pipelines for the embedded shape models (pixel space, rectified flow, classifier-free guidance).

Each is an ordinary :class:`diffusers.DiffusionPipeline` with components ``tokenizer``, ``text_encoder``,
``scheduler`` and the denoiser under its usual name (``unet`` for the U-Net, ``transformer`` for the DiTs), so
``attnplug.apply(pipe, ...)``, ``pipe.to(...)`` and ``pipe.components`` work as with any diffusers pipeline.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from PIL import Image

from .build import denoiser_forward

logger = logging.getLogger(__name__)
OUTPUT_TYPES = ("pil", "np", "pt")


class _ShapesPipelineBase(DiffusionPipeline):
    """Shared prompt encoding and sampling loop. Subclasses set ``family`` and ``_denoiser_name``."""

    family = ""
    _denoiser_name = ""
    _optional_components: list[str] = []

    #: Defaults (training size, steps, guidance) filled in by the loader from ``config.json["sample"]``.
    sample_defaults: dict = {}
    max_length = 8

    @property
    def denoiser(self) -> torch.nn.Module:
        """The U-Net or transformer."""
        return getattr(self, self._denoiser_name)

    def _default(self, key: str, value):
        if value is not None:
            return value
        if key not in self.sample_defaults:
            raise ValueError(f"{key} was not given and the model config has no default for it.")
        return self.sample_defaults[key]

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str], num_per_prompt: int = 1) -> torch.Tensor:
        """Text-encoder hidden states ``(B * num_per_prompt, L, C)`` for ``prompt`` (``""`` = unconditional)."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not all(isinstance(p, str) for p in prompt):
            raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}.")
        ids = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").input_ids.to(self.text_encoder.device)
        hidden = self.text_encoder(ids).last_hidden_state
        return hidden.repeat_interleave(num_per_prompt, dim=0)

    def _check_common(self, num_inference_steps: int, guidance_scale: float, output_type: str, sizes: dict) -> None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be a positive integer.")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r} must be a number >= 0 (1 or 0 disables guidance).")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; expected one of {OUTPUT_TYPES}.")
        multiple = self._size_multiple()
        for key, value in sizes.items():
            if not isinstance(value, int) or value < multiple or value % multiple:
                raise ValueError(f"{key}={value!r} must be a positive multiple of {multiple} for this model.")

    def _size_multiple(self) -> int:
        return 1

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...], prompt: str | list[str], num_inference_steps: int,
               guidance_scale: float, generator: torch.Generator | list[torch.Generator] | None = None,
               latents: torch.Tensor | None = None, num_per_prompt: int = 1) -> torch.Tensor:
        """Run the sampler and return clean samples in ``[-1, 1]`` with the given ``shape``.

        ``shape`` is ``(B, 3, H, W)`` for images or ``(B, 3, F, H, W)`` for video; ``B`` must equal
        ``len(prompt) * num_per_prompt``. Noise is drawn on the CPU from ``generator`` so results do not depend on
        the device.
        """
        model = self.denoiser
        device, dtype = model.device, model.dtype
        text = self.encode_prompt(prompt, num_per_prompt).to(dtype)
        if text.shape[0] != shape[0]:
            raise ValueError(f"batch size {shape[0]} does not match {text.shape[0]} prompts x images per prompt.")
        use_cfg = guidance_scale > 1.0
        if use_cfg:
            uncond = self.encode_prompt([""] * text.shape[0]).to(dtype)
            text = torch.cat([uncond, text])
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents has shape {tuple(latents.shape)}; expected {tuple(shape)}.")
        x = latents.to(device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        # A stochastic scheduler (e.g. FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)) draws fresh noise
        # every step: from ``generator``, so a seeded call stays reproducible.
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        for t in self.scheduler.timesteps:
            inp = torch.cat([x, x]) if use_cfg else x
            ts = t.expand(inp.shape[0]).to(device=device, dtype=dtype)
            v = denoiser_forward(model, self.family, inp.to(dtype), ts, text).float()
            if use_cfg:
                v_uncond, v_cond = v.chunk(2)
                v = v_uncond + guidance_scale * (v_cond - v_uncond)
            x = self.scheduler.step(v, t, x, return_dict=False, **step_kwargs)[0]
        return x.clamp(-1, 1)


def _num_prompts(prompt) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return len(prompt)
    raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")


def _to_images(x: torch.Tensor, output_type: str):
    """``(B, 3, H, W)`` in [-1, 1] -> PIL list, ``(B, H, W, 3)`` float array, or ``(B, 3, H, W)`` tensor in [0, 1]."""
    x = (x / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.permute(0, 2, 3, 1).float().cpu().numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


class _ShapesImagePipeline(_ShapesPipelineBase):
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        """Generate images of ``prompt`` (e.g. ``"red circle"``).

        Args:
            prompt: a string or a list of ``P`` strings.
            height, width: pixels; default the training size (32). Larger sizes are where attention matters.
            num_inference_steps: Euler steps (default from the config, 20).
            guidance_scale: classifier-free guidance (default from the config); ``<= 1`` disables it.
            num_images_per_prompt: images per prompt; the batch is ``B = P * num_images_per_prompt``.
            generator: CPU generator for the initial noise.
            latents: optional initial noise ``(B, 3, H, W)``.
            output_type: ``"pil"`` (list of images), ``"np"`` (``(B, H, W, 3)`` in [0, 1]) or ``"pt"``
                (``(B, 3, H, W)`` in [0, 1]).

        Returns:
            ``ImagePipelineOutput(images=...)`` or a 1-tuple when ``return_dict`` is false.
        """
        height, width = self._default("height", height), self._default("width", width)
        steps = self._default("num_inference_steps", num_inference_steps)
        guidance = self._default("guidance_scale", guidance_scale)
        self._check_common(steps, guidance, output_type, {"height": height, "width": width})
        n_prompts = _num_prompts(prompt)
        shape = (n_prompts * num_images_per_prompt, 3, height, width)
        x = self.sample(shape, prompt, steps, guidance, generator, latents, num_images_per_prompt)
        images = _to_images(x, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


class ShapesUNetPipeline(_ShapesImagePipeline):
    """Text-to-image with the embedded pixel-space ``UNet2DConditionModel`` (component ``unet``)."""

    family = "unet"
    _denoiser_name = "unet"
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, tokenizer, text_encoder, unet, scheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler)

    def _size_multiple(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)


class ShapesDiTPipeline(_ShapesImagePipeline):
    """Text-to-image with the embedded pixel-space ``PixArtTransformer2DModel`` (component ``transformer``)."""

    family = "dit"
    _denoiser_name = "transformer"
    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, tokenizer, text_encoder, transformer, scheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    def _size_multiple(self) -> int:
        return int(self.transformer.config.patch_size)


class ShapesVideoPipeline(_ShapesPipelineBase):
    """Text-to-video with the embedded pixel-space ``WanTransformer3DModel`` (component ``transformer``)."""

    family = "video"
    _denoiser_name = "transformer"
    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, tokenizer, text_encoder, transformer, scheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    def _size_multiple(self) -> int:
        return int(self.transformer.config.patch_size[1])

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, num_videos_per_prompt: int = 1,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "np", return_dict: bool = True):
        """Generate videos of ``prompt`` (e.g. ``"red circle moving right"``).

        Args:
            prompt: a string or a list of ``P`` strings.
            num_frames: frames ``F`` (default 8, the training length; more frames = a longer video).
            height, width: pixels (default: the training size in the model config).
            num_inference_steps, guidance_scale, generator: as for the image pipelines.
            num_videos_per_prompt: videos per prompt; ``B = P * num_videos_per_prompt``.
            latents: optional initial noise ``(B, 3, F, H, W)``.
            output_type: ``"np"`` (``(B, F, H, W, 3)`` in [0, 1]), ``"pt"`` (``(B, F, 3, H, W)``) or ``"pil"``
                (a list of ``B`` lists of ``F`` images).

        Returns:
            ``WanPipelineOutput(frames=...)`` or a 1-tuple when ``return_dict`` is false.
        """
        num_frames = self._default("num_frames", num_frames)
        height, width = self._default("height", height), self._default("width", width)
        steps = self._default("num_inference_steps", num_inference_steps)
        guidance = self._default("guidance_scale", guidance_scale)
        self._check_common(steps, guidance, output_type, {"height": height, "width": width})
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} must be a positive integer.")
        n_prompts = _num_prompts(prompt)
        shape = (n_prompts * num_videos_per_prompt, 3, num_frames, height, width)
        x = self.sample(shape, prompt, steps, guidance, generator, latents, num_videos_per_prompt)
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W)
        if output_type == "pt":
            frames = x
        else:
            arr = x.permute(0, 1, 3, 4, 2).float().cpu().numpy()
            frames = arr if output_type == "np" else [
                [Image.fromarray((f * 255).round().astype(np.uint8)) for f in video] for video in arr
            ]
        return WanPipelineOutput(frames=frames) if return_dict else (frames,)


PIPELINES = {"unet": ShapesUNetPipeline, "dit": ShapesDiTPipeline, "video": ShapesVideoPipeline}
