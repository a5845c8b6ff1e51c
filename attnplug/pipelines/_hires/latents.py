"""Latent I/O of the coarse-to-fine stages: a stage's result as a spatial latent ``(B, C, h, w)`` (``(B, C, F, h,
w)`` for Wan and Qwen-Image, whose VAE latents have one frame), upsampling it, and turning it back into the
``latents=`` argument of the pipeline (the family row's ``latent_packing``: Flux, Chroma and Qwen-Image pack their
latents in 2 x 2 patches; Flux 2 takes them patchified, normalised per patch position)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .family import Family


def stage_kwargs(family: Family, kwargs: dict, final: bool) -> dict:
    """Pipeline keyword arguments of one stage: the user's, plus what the family needs (intermediate stages return
    latents; PixArt's resolution binning would resize the hi-res result back to a training-size bin)."""
    out = dict(kwargs)
    for name, value in family.stage_defaults:  # PixArt: no resolution binning; Wan: one frame
        out.setdefault(name, value)
    if not final:
        out["output_type"] = "pt" if family.embedded else "latent"
        out["return_dict"] = True
    return out


def result_latents(family: Family, pipe, result, height: int, width: int) -> torch.Tensor:
    """A stage's output (``output_type`` latent, or ``"pt"`` for the embedded models) as a spatial latent
    ``(B, C, h, w)`` (Wan: ``(B, C, F, h, w)``; Qwen-Image: ``(B, C, 1, h, w)``) in the space the pipeline's
    ``latents=`` argument takes."""
    if family.embedded:
        return result.images * 2 - 1  # [0, 1] images -> the model's [-1, 1] pixel space
    if not hasattr(result, "images"):  # a video pipeline's output (Wan)
        return result.frames
    x = result.images
    if family.latent_packing == "2x2":
        x = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
    elif family.latent_packing == "patchify":  # Flux 2: (B, h w / 4, 4 C) tokens -> (B, 4 C, h / 2, w / 2)
        h2, w2 = height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2
        x = pipe._unpatchify_latents(x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], h2, w2))
    return x


def pipeline_latents(family: Family, pipe, x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`result_latents`: the ``latents=`` argument for a spatial latent ``x``; the 2 x 2 packed
    families take ``(B, h w / 4, 4 C)``."""
    if family.latent_packing == "2x2":
        b, c, h, w = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]  # Qwen-Image: (B, C, 1, h, w)
        return pipe._pack_latents(x, b, c, h, w)
    if family.latent_packing == "patchify":  # Flux 2 takes (B, 4 C, h / 2, w / 2) and packs it itself
        return pipe._patchify_latents(x)
    return x


def _flux2_bn(pipe, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(1, 4 C, 1, 1)`` of the Flux 2 VAE's batch norm over the patchified latent."""
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(x.device, x.dtype)
    return mean, std


def upsample_latents(family: Family, pipe, x: torch.Tensor, size: tuple[int, int], mode: str,
                     lowpass: float = 0.0) -> torch.Tensor:
    """:func:`upsample` of a stage's spatial latent ``x`` to ``size``. Flux 2's model latent is normalised per
    patch position (a batch norm over the 2 x 2 patchified channels): it is upsampled in the VAE's own latent space
    (normalisation undone, then redone at the new size), so neighbouring pixels with different statistics do not
    blend."""
    if family.latent_packing != "patchify":  # Flux 2's patchified latent is normalised per patch position
        return upsample(x, size, mode, lowpass)
    mean, std = _flux2_bn(pipe, x)
    vae_latent = pipe._unpatchify_latents(pipe._patchify_latents(x) * std + mean)
    y = pipe._patchify_latents(upsample(vae_latent, size, mode, lowpass))
    return pipe._unpatchify_latents((y - mean) / std)


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
