"""Build the components of an embedded model from its ``config.json`` (no weights, no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

DENOISER_CLASSES = ("UNet2DConditionModel", "PixArtTransformer2DModel", "WanTransformer3DModel")
FAMILIES = ("unet", "dit", "video")
REQUIRED_KEYS = ("name", "family", "denoiser_class", "denoiser", "text_encoder", "max_length", "scheduler", "sample")


def read_config(path: str | Path) -> dict:
    """Read and validate a model ``config.json``; errors name the file and the problem."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"Model config {path} does not exist.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Model config {path} could not be read as JSON: {exc}.") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"Model config {path} must be a JSON object, got {type(cfg).__name__}.")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"Model config {path} is missing the keys {missing}; required: {list(REQUIRED_KEYS)}.")
    if cfg["family"] not in FAMILIES:
        raise ValueError(f"Model config {path} has family={cfg['family']!r}; expected one of {FAMILIES}.")
    if cfg["denoiser_class"] not in DENOISER_CLASSES:
        raise ValueError(
            f"Model config {path} has denoiser_class={cfg['denoiser_class']!r}; expected one of {DENOISER_CLASSES}."
        )
    return cfg


def build_denoiser(cfg: dict) -> torch.nn.Module:
    """The (randomly initialised) diffusers denoiser named by ``cfg["denoiser_class"]``."""
    import diffusers

    cls = getattr(diffusers, cfg["denoiser_class"])
    kwargs = dict(cfg["denoiser"])
    if "patch_size" in kwargs and isinstance(kwargs["patch_size"], list):
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    return cls(**kwargs)


def build_text_encoder(cfg: dict) -> torch.nn.Module:
    """The (randomly initialised) tiny ``transformers.CLIPTextModel``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))


def build_scheduler(cfg: dict):
    """A ``FlowMatchEulerDiscreteScheduler`` (the models are trained with rectified flow, velocity target)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**cfg["scheduler"])


def denoiser_forward(denoiser: torch.nn.Module, family: str, x: torch.Tensor, timestep: torch.Tensor,
                     text: torch.Tensor) -> torch.Tensor:
    """One denoiser call, the same in training and sampling.

    Args:
        denoiser: the diffusers model.
        family: ``"unet"``, ``"dit"`` or ``"video"``.
        x: noisy sample, ``(B, 3, H, W)`` for images, ``(B, 3, F, H, W)`` for video.
        timestep: ``(B,)`` float timesteps in ``[0, 1000]``.
        text: ``(B, L, C)`` text-encoder hidden states.

    Returns:
        The predicted velocity ``noise - clean``, same shape as ``x``.
    """
    if family == "unet":
        return denoiser(x, timestep, encoder_hidden_states=text, return_dict=False)[0]
    if family == "dit":
        return denoiser(x, encoder_hidden_states=text, timestep=timestep, added_cond_kwargs={"resolution": None,
                        "aspect_ratio": None}, return_dict=False)[0]
    if family == "video":
        return denoiser(x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    raise ValueError(f"family={family!r} is not known; expected one of {FAMILIES}.")
