"""Which modules attnplug works on: the denoisers of a pipeline (the one discovery function every part of attnplug
uses) and their attention modules."""

from __future__ import annotations

import torch

from ..families import family_of

_DENOISER_ATTRS = ("transformer", "transformer_2", "unet", "unet_2", "prior", "decoder")
_CROSS_NAMES = ("attn2", "attn_cross", "cross_attn", "cross_attention")


def _is_denoiser(obj) -> bool:
    if not isinstance(obj, torch.nn.Module):
        return False
    try:
        family_of(obj)
    except TypeError:
        return False
    return True


def resolve_denoisers(target) -> tuple[list[tuple[str, torch.nn.Module]], object | None]:
    """``([(component name, denoiser), ...], pipeline or None)`` for a pipeline (every denoiser component:
    ``transformer``, ``transformer_2``, ``unet``, ...) or for one denoiser model."""
    if isinstance(target, torch.nn.Module):
        family_of(target)  # TypeError naming the class and the supported ones
        return [("", target)], None
    found = []
    names = list(_DENOISER_ATTRS) + [n for n in getattr(target, "components", {}) or {} if n not in _DENOISER_ATTRS]
    for name in names:
        model = getattr(target, name, None)
        if _is_denoiser(model) and all(model is not m for _, m in found):
            found.append((name, model))
    if not found:
        raise TypeError(
            f"attnplug.apply expects a diffusers pipeline with a denoiser (`transformer`, `transformer_2`, `unet`) "
            f"of a supported family, or a denoiser model, got {type(target).__name__}."
        )
    return found, target


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """All diffusers attention modules (those with a settable processor) of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def is_cross_attention_module(name: str, module: torch.nn.Module) -> bool:
    """Whether an attention module attends from image tokens to a separate (text/image-prompt) sequence."""
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return bool(flag)
    return name.rsplit(".", 1)[-1] in _CROSS_NAMES
