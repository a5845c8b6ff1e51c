"""What hi-res needs to know about each supported pipeline: :class:`Family` / :func:`detect_family` say which
pipeline this is, its denoiser, its training size and the size multiples the VAE, the patching and the U-Net's
downsamplers accept."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ...plugin import resolve_denoisers

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
    "ChromaPipeline": "chroma",
    "QwenImagePipeline": "qwen-image",
    "Flux2Pipeline": "flux2",
    "ZImagePipeline": "z-image",
    "WanPipeline": "wan",
}
UNET_FAMILIES = ("shapes-unet", "sd", "sdxl")
#: families whose pipelines pack the latent in 2 x 2 patches (``_pack_latents`` / ``_unpack_latents``)
PACKED_2X2 = ("flux", "chroma", "qwen-image")
#: families whose pipeline's default size is not the training size: that comes from attnplug's family registry
REGISTRY_TRAIN_SIZE = ("qwen-image", "z-image")


@dataclass(frozen=True)
class Family:
    """One supported pipeline family and its geometry."""

    name: str
    denoiser_attr: str  # the pipeline component, as attnplug.plugin.resolve_denoisers names it
    vae_factor: int  # pixels per latent pixel (1 for the pixel-space embedded models)
    input_multiple: int  # the latent side must be a multiple of this (patch, Flux packing, U-Net downsamplers)
    train_size: tuple[int, int]  # (height, width) in pixels

    def denoiser(self, pipe) -> torch.nn.Module:
        """The denoiser of ``pipe`` this family's geometry describes."""
        return getattr(pipe, self.denoiser_attr)

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


def signature_default(pipe, name: str):
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
    h, w = signature_default(pipe, "height"), signature_default(pipe, "width")
    if h and w:
        return h, w
    size = getattr(denoiser.config, "sample_size", None)
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is None:
        raise ValueError(
            f"Cannot tell the training resolution of {type(pipe).__name__}: give HiResConfig(train_size_px=(h, w))."
        )
    if isinstance(size, (tuple, list)):
        return int(size[0]) * vae_factor, int(size[1]) * vae_factor
    return int(size) * vae_factor, int(size) * vae_factor


def detect_family(pipe, train_size: tuple[int, int] | None = None) -> Family:
    """The :class:`Family` of ``pipe``; ``TypeError`` listing the supported pipelines otherwise."""
    name = _family_name(pipe)
    attr, denoiser = resolve_denoisers(pipe)[0][0]
    if name.startswith("shapes-"):
        vae_factor = 1
    elif name == "wan":
        vae_factor = int(getattr(pipe, "vae_scale_factor_spatial", 8))
    else:
        vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    cfg = denoiser.config
    if name in UNET_FAMILIES:
        input_multiple = 2 ** sum(1 for b in denoiser.down_blocks if getattr(b, "downsamplers", None))
    elif name in PACKED_2X2 or name in ("flux2", "z-image"):
        input_multiple = 2  # 2 x 2 packing (Flux 2: patchifying; Z-Image: its transformer's patches) of the latent
    elif name == "wan":
        input_multiple = int(cfg.patch_size[1])
    else:
        input_multiple = int(cfg.patch_size)
    if train_size is not None:
        size = tuple(train_size)
    elif name in REGISTRY_TRAIN_SIZE:
        from ...families import family_of

        # Qwen-Image: 1328 x 1328 (its pipeline defaults to 1024 x 1024); Z-Image's pipeline states no default
        size = family_of(denoiser).train_size
    else:
        size = _train_size(pipe, name, denoiser, vae_factor)
    return Family(name, attr, vae_factor, input_multiple, (int(size[0]), int(size[1])))
