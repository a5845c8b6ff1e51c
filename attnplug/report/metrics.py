"""Metrics on generated media: conversion of pipeline outputs to float arrays, PSNR / SSIM / LPIPS against a reference,
difference maps, and the embedded detector's verdicts.

Images are float arrays in ``[0, 1]`` shaped ``(N, H, W, 3)``; videos ``(N, F, H, W, 3)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

UNAVAILABLE_NO_WEIGHTS = "unavailable (needs local weights)"


def as_float_array(output):
    """A pipeline output (``.images`` or ``.frames``, PIL / numpy / torch) -> float32 numpy in ``[0, 1]``:
    ``(N, H, W, 3)`` images or ``(N, F, H, W, 3)`` videos."""
    import numpy as np

    if hasattr(output, "frames"):
        data = output.frames
        video = True
    elif hasattr(output, "images"):
        data = output.images
        video = False
    else:
        data, video = output, None
    if hasattr(data, "detach"):
        data = data.detach().float().cpu().numpy()
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], np.ndarray) and \
            not hasattr(data[0], "shape"):
        data = [np.stack([np.asarray(f) for f in item]) if isinstance(item, (list, tuple)) else np.asarray(item)
                for item in data]
    arr = np.asarray(data)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if video is None:
        video = arr.ndim == 5
    if not video and arr.ndim == 3:
        arr = arr[None]
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[-3] in (1, 3, 4):  # channels-first
        arr = np.moveaxis(arr, -3, -1)
    return np.clip(arr[..., :3], 0.0, 1.0)


def _to_nchw(arr):
    import torch

    t = torch.from_numpy(arr.reshape(-1, *arr.shape[-3:]).copy())
    return t.permute(0, 3, 1, 2).double()


def psnr(a, b) -> float:
    """PSNR (dB, data range 1) of arrays ``a`` vs reference ``b`` (same shape ``(..., H, W, 3)``), over all
    images/frames together; ``inf`` when identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}.")
    ta, tb = _to_nchw(a), _to_nchw(b)
    if bool((ta == tb).all()):
        return math.inf
    return float(peak_signal_noise_ratio(ta, tb, data_range=1.0))


def ssim(a, b) -> float:
    """Mean SSIM of ``a`` vs reference ``b`` (``(..., H, W, 3)``) with a Gaussian window fitted to small images."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {a.shape} and {b.shape}.")
    side = min(a.shape[-3], a.shape[-2])
    kernel = max(3, min(11, side if side % 2 else side - 1))
    sigma = 1.5 * kernel / 11
    return float(structural_similarity_index_measure(_to_nchw(a), _to_nchw(b), data_range=1.0,
                                                     kernel_size=kernel, sigma=sigma))


def _lpips_weights_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()


def fidelity(output, reference) -> dict:
    """Fidelity of ``output`` to ``reference`` (float arrays as from :func:`as_float_array`): ``psnr``, ``ssim``
    and, with local weights only, ``lpips``; ``clip`` and ``fid`` need weights and are reported unavailable."""
    result: dict[str, Any] = {"psnr": psnr(output, reference), "ssim": ssim(output, reference)}
    if _lpips_weights_available():
        from torchmetrics.functional.image.lpip import learned_perceptual_image_patch_similarity

        a, b = _to_nchw(output).float() * 2 - 1, _to_nchw(reference).float() * 2 - 1
        result["lpips"] = float(learned_perceptual_image_patch_similarity(a, b, net_type="alex"))
    else:
        result["lpips"] = UNAVAILABLE_NO_WEIGHTS
    result["clip"] = UNAVAILABLE_NO_WEIGHTS
    result["fid"] = UNAVAILABLE_NO_WEIGHTS
    return result


def judge(media, prompt: str | None = None) -> dict:
    """The embedded detector's verdict on ``media`` (one image ``(H, W, 3)`` or one video ``(F, H, W, 3)``):
    object count (duplication = 2 or more), and for video persistence, colour and direction."""
    from ..models import detect, summarize_video

    words = (prompt or "").split()
    if media.ndim == 4:
        s = summarize_video(media)
        out = {"counts": s.counts, "persistent": s.persistent, "color": s.color, "direction": s.direction,
               "linearity": s.linearity, "duplicated": any(c >= 2 for c in s.counts)}
        if len(words) >= 4:
            out["color_ok"] = bool(s.persistent and s.color == words[0])
            out["direction_ok"] = bool(s.persistent and s.direction == words[-1])
        return out
    det = detect(media)
    out = {"count": det.count, "colors": det.colors(), "duplicated": det.count >= 2}
    if len(words) == 2:
        out["ok"] = bool(det.count == 1 and det.objects[0].color == words[0])
        out["shape_ok"] = bool(out["ok"] and det.objects[0].shape == words[1])
    return out


def difference_map(a, b, gain: float = 4.0):
    """``|a - b|`` averaged over colour, amplified by ``gain`` and clipped, as a grey ``(..., H, W, 3)`` array in
    ``[0, 1]`` (black = identical), for arrays of equal shape."""
    import numpy as np

    if a.shape != b.shape:
        raise ValueError(f"difference_map needs equal shapes, got {a.shape} and {b.shape}.")
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1, keepdims=True)
    return np.clip(diff * gain, 0, 1).repeat(3, axis=-1)
