"""What hi-res needs to know about each supported pipeline: :class:`Family` / :func:`detect_family` say which
pipeline this is, its denoiser, its training size and the size multiples the VAE, the patching and the U-Net's
downsamplers accept.

The per-family facts (family name, training size, U-Net or not, latent packing) come from the denoiser's row in
:mod:`attnplug.families` (:func:`attnplug.families.family_of`); what is read here is the pipeline's own: which pipeline
classes hi-res drives, their VAE scale factor, their default size, and whether they work in pixel space (the
embedded models, whose training size is their config's ``sample`` section)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ...families import FamilySpec, family_of
from ...layout_reader import _patch
from ...plugin import resolve_denoisers

#: the pipeline classes hi-res drives (their call conventions: latents in and out, schedule), subclasses first;
#: the family of each comes from its denoiser.
SUPPORTED_PIPELINES = (
    "ShapesUNetPipeline", "ShapesDiTPipeline", "StableDiffusionXLPipeline", "StableDiffusionPipeline",
    "PixArtSigmaPipeline", "PixArtAlphaPipeline", "StableDiffusion3Pipeline", "FluxPipeline", "ChromaPipeline",
    "QwenImagePipeline", "Flux2Pipeline", "ZImagePipeline", "WanPipeline",
)


@dataclass(frozen=True)
class Family:
    """One supported pipeline and its geometry: ``name`` is the denoiser's family (:mod:`attnplug.families`),
    ``unet`` whether it is a U-Net, ``latent_packing`` how the pipeline packs its latent (the family row's fields),
    ``embedded`` a pixel-space pipeline of the embedded models (images out, no VAE), ``stage_defaults`` what each
    stage's call sets unless the user does (read from the pipeline's signature: PixArt's resolution binning off, so
    the hi-res result is not resized to a training-size bin; one frame on a video pipeline)."""

    name: str
    denoiser_attr: str  # the pipeline component, as attnplug.plugin.resolve_denoisers names it
    vae_factor: int  # pixels per latent pixel (1 for the pixel-space embedded models)
    input_multiple: int  # the latent side must be a multiple of this (patch, Flux packing, U-Net downsamplers)
    train_size: tuple[int, int]  # (height, width) in pixels
    unet: bool = False
    latent_packing: str | None = None
    embedded: bool = False
    stage_defaults: tuple[tuple[str, object], ...] = ()  # keyword arguments every stage's call gets unless given

    def denoiser(self, pipe) -> torch.nn.Module:
        """The denoiser of ``pipe`` this family's geometry describes."""
        return getattr(pipe, self.denoiser_attr)

    @property
    def is_unet(self) -> bool:
        return self.unet

    @property
    def pixel_multiple(self) -> int:
        return self.vae_factor * self.input_multiple


def supported_pipelines() -> list[str]:
    """Names of the pipeline classes hi-res supports."""
    return list(SUPPORTED_PIPELINES)


def _check_supported(pipe) -> None:
    names = {c.__name__ for c in type(pipe).__mro__}
    if not names & set(SUPPORTED_PIPELINES):
        raise TypeError(
            f"attnplug.pipelines.hires does not support {type(pipe).__name__}; supported pipelines: "
            f"{', '.join(SUPPORTED_PIPELINES)}."
        )


def signature_default(pipe, name: str):
    try:
        param = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    value = None if param is None else param.default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


#: keyword arguments a stage sets when the pipeline's call takes them: no resolution binning (PixArt's would resize
#: the hi-res result back to a training-size bin), one frame (a video pipeline, Wan, run for images)
_STAGE_DEFAULTS = (("use_resolution_binning", False), ("num_frames", 1))


def _stage_defaults(pipe) -> tuple[tuple[str, object], ...]:
    try:
        params = inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return ()
    return tuple((name, value) for name, value in _STAGE_DEFAULTS if name in params)


def _vae_factor(pipe) -> int:
    """Pixels per latent pixel of ``pipe``'s VAE (video pipelines name it ``vae_scale_factor_spatial``); 1 in pixel
    space (no VAE: the embedded models)."""
    if getattr(pipe, "vae", None) is None:
        return 1
    for attr in ("vae_scale_factor_spatial", "vae_scale_factor"):
        value = getattr(pipe, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 8


def _input_multiple(spec: FamilySpec, denoiser) -> int:
    """The latent side's multiple: the U-Net's downsamplers, the pipeline's 2 x 2 packing, or the patch size."""
    if spec.multiscale:
        return 2 ** sum(1 for b in denoiser.down_blocks if getattr(b, "downsamplers", None))
    if spec.latent_packing is not None:
        return 2  # 2 x 2 packing (Flux, Chroma, Qwen-Image) or patchifying (Flux 2) of the latent
    cfg = denoiser.config
    if getattr(cfg, "patch_size", None) is None and getattr(cfg, "all_patch_size", None):
        return int(cfg.all_patch_size[0])  # Z-Image: its transformer's own patches
    return _patch(cfg)[1]


def _train_size(pipe, spec: FamilySpec, denoiser, vae_factor: int) -> tuple[int, int]:
    """The embedded model's config, the family's training size where its pipeline defaults to another size, the
    pipeline's default size, the denoiser's ``sample_size``, the pipeline's ``default_sample_size``, else the
    family's training size."""
    defaults = getattr(pipe, "sample_defaults", None) or {}
    if "height" in defaults and "width" in defaults:
        return int(defaults["height"]), int(defaults["width"])
    if spec.train_size is not None and not spec.default_size_is_train_size:
        return spec.train_size  # Qwen-Image: 1328 x 1328 (its pipeline defaults to 1024 x 1024)
    h, w = signature_default(pipe, "height"), signature_default(pipe, "width")
    if h and w:
        return h, w
    size = getattr(denoiser.config, "sample_size", None)
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is None:
        if spec.train_size is not None:  # Z-Image: its pipeline states no default size
            return spec.train_size
        raise ValueError(
            f"Cannot tell the training resolution of {type(pipe).__name__}: give HiResConfig(train_size_px=(h, w))."
        )
    if isinstance(size, (tuple, list)):
        return int(size[0]) * vae_factor, int(size[1]) * vae_factor
    return int(size) * vae_factor, int(size) * vae_factor


def detect_family(pipe, train_size: tuple[int, int] | None = None) -> Family:
    """The :class:`Family` of ``pipe``; ``TypeError`` listing the supported pipelines otherwise."""
    _check_supported(pipe)
    attr, denoiser = resolve_denoisers(pipe)[0][0]
    spec = family_of(denoiser)
    vae_factor = _vae_factor(pipe)
    size = tuple(train_size) if train_size is not None else _train_size(pipe, spec, denoiser, vae_factor)
    return Family(spec.name, attr, vae_factor, _input_multiple(spec, denoiser), (int(size[0]), int(size[1])),
                  unet=spec.multiscale, latent_packing=spec.latent_packing,
                  embedded=getattr(pipe, "vae", None) is None, stage_defaults=_stage_defaults(pipe))
