"""A small classical detector for the synthetic shape images: background subtraction + connected components.

Used to judge what the embedded models generate (one object? the prompted colour and shape? duplicated objects at
high resolution? the same object moving steadily through a video?). Pure numpy; no learned parts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .data import COLORS, PALETTE

_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


@dataclass(frozen=True)
class DetectedObject:
    """One connected foreground region.

    ``bbox`` is ``(x0, y0, x1, y1)`` in pixels, end-exclusive; ``centroid`` is ``(x, y)``; ``size`` is the number of
    foreground pixels; ``color`` the nearest palette colour name to the region's mean colour; ``shape`` a guess from
    its mask (see ``_classify_shape``); ``fill`` the fraction of its bounding box it covers.
    """

    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    size: int
    color: str
    shape: str
    mean_rgb: tuple[float, float, float]
    fill: float


@dataclass(frozen=True)
class Detection:
    """All objects found in one image, largest first."""

    objects: list[DetectedObject] = field(default_factory=list)
    height: int = 0
    width: int = 0

    @property
    def count(self) -> int:
        """Number of objects."""
        return len(self.objects)

    def colors(self) -> list[str]:
        """Colour names of the objects, largest first."""
        return [o.color for o in self.objects]


def _to_hwc_float(image) -> np.ndarray:
    """Accept PIL, numpy ``(H, W, 3)`` or torch ``(3, H, W)`` / ``(H, W, 3)``, uint8 or float in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        arr = np.asarray(image.convert("RGB"))
    elif hasattr(image, "detach"):  # torch
        arr = image.detach().float().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(1, 2, 0)
    else:
        arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be an RGB image of shape (H, W, 3) or (3, H, W); got shape {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels of a boolean ``(H, W)`` mask (0 = background), and the component count."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy, dx in _NEIGHBOURS:
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    queue.append((yy, xx))
    return labels, n


def nearest_color(rgb) -> str:
    """Name of the palette colour nearest (Euclidean, RGB in [0, 1]) to ``rgb`` after scaling its max to 1."""
    rgb = np.asarray(rgb, dtype=np.float32)
    rgb = rgb / max(float(rgb.max()), 1e-6)
    names = list(COLORS)
    ref = np.array([PALETTE[c] for c in names], dtype=np.float32)
    return names[int(np.argmin(((ref - rgb) ** 2).sum(axis=1)))]


def _classify_shape(mask: np.ndarray) -> str:
    """Guess the shape from a boolean ``(h, w)`` mask cropped to its bounding box.

    A triangle (apex up) has far less than half of its pixels in the upper half of its box; a square fills the
    corners of its box, a circle does not.
    """
    h, w = mask.shape
    area = mask.sum()
    top = mask[: h // 2].sum() + (mask[h // 2].sum() / 2 if h % 2 else 0)
    if top / area < 0.4:
        return "triangle"
    k = max(1, round(0.2 * min(h, w)))
    corners = np.concatenate([mask[:k, :k].ravel(), mask[:k, -k:].ravel(), mask[-k:, :k].ravel(),
                              mask[-k:, -k:].ravel()])
    return "square" if corners.mean() >= 0.75 else "circle"


def detect(image, threshold: float = 0.35, min_size: int | None = None) -> Detection:
    """Find the coloured objects in one image.

    Args:
        image: PIL image, numpy ``(H, W, 3)`` or torch ``(3, H, W)``; uint8 or float in ``[0, 1]``.
        threshold: a pixel is foreground when some channel differs from the background colour (median of the
            border pixels) by more than this.
        min_size: smallest region (pixels) counted as an object; default ``max(4, H * W // 1024)`` (4 at 32 x 32,
            16 at 128 x 128), so specks of noise are not objects.

    Returns:
        :class:`Detection` with the objects, largest first.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1).")
    img = _to_hwc_float(image)
    h, w, _ = img.shape
    if min_size is None:
        min_size = max(4, (h * w) // 1024)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    background = np.median(border, axis=0)
    diff = np.abs(img - background).max(axis=-1)
    labels, n = _label(diff > threshold)
    objects = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(labels == i)
        if ys.size < min_size:
            continue
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        pix = img[ys, xs]
        strength = diff[ys, xs]
        core = pix[strength >= 0.5 * strength.max()]
        mean = core.mean(axis=0)
        fill = ys.size / float((x1 - x0) * (y1 - y0))
        objects.append(DetectedObject(
            bbox=(x0, y0, x1, y1), centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5), size=int(ys.size),
            color=nearest_color(mean), shape=_classify_shape(labels[y0:y1, x0:x1] == i),
            mean_rgb=tuple(round(float(c), 3) for c in mean), fill=round(fill, 3),
        ))
    objects.sort(key=lambda o: -o.size)
    return Detection(objects=objects, height=h, width=w)


def detect_video(frames, threshold: float = 0.35, min_size: int | None = None) -> list[Detection]:
    """Detect objects frame by frame in ``frames``: numpy/torch ``(F, H, W, 3)`` or a list of images."""
    if hasattr(frames, "ndim") and frames.ndim != 4:
        raise ValueError(f"frames must have 4 dimensions (F, H, W, 3); got shape {tuple(frames.shape)}.")
    return [detect(f, threshold=threshold, min_size=min_size) for f in frames]


@dataclass(frozen=True)
class VideoSummary:
    """Object persistence and motion over a video.

    ``persistent`` is true when every frame has exactly one object of the same colour; ``velocity`` is the
    least-squares ``(dx, dy)`` pixels per frame of its centroid; ``direction`` the dominant axis direction
    (``"right"``, ``"left"``, ``"down"``, ``"up"``) or ``None``; ``linearity`` the R^2-like fraction of centroid
    motion explained by constant velocity (1 = perfectly steady).
    """

    counts: list[int]
    persistent: bool
    color: str | None
    velocity: tuple[float, float] | None
    direction: str | None
    linearity: float | None


def summarize_video(frames, threshold: float = 0.35, min_size: int | None = None,
                    min_speed: float = 0.2) -> VideoSummary:
    """Detect frame by frame and summarise persistence and motion (see :class:`VideoSummary`).

    ``min_speed`` (pixels per frame) is the speed below which no direction is reported.
    """
    dets = detect_video(frames, threshold=threshold, min_size=min_size)
    counts = [d.count for d in dets]
    colors = {d.objects[0].color for d in dets if d.count}
    persistent = all(c == 1 for c in counts) and len(colors) == 1
    color = next(iter(colors)) if len(colors) == 1 else None
    pts = [(i, d.objects[0].centroid) for i, d in enumerate(dets) if d.count >= 1]
    if len(pts) < 2:
        return VideoSummary(counts, persistent, color, None, None, None)
    t = np.array([p[0] for p in pts], dtype=np.float64)
    xy = np.array([p[1] for p in pts], dtype=np.float64)
    tc = t - t.mean()
    vel = (tc[:, None] * (xy - xy.mean(0))).sum(0) / max((tc**2).sum(), 1e-9)
    fit = xy.mean(0) + tc[:, None] * vel
    total = ((xy - xy.mean(0)) ** 2).sum()
    resid = ((xy - fit) ** 2).sum()
    linearity = float(1 - resid / total) if total > 1e-9 else None
    dx, dy = float(vel[0]), float(vel[1])
    direction = None
    if math.hypot(dx, dy) >= min_speed:
        direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    return VideoSummary(counts, persistent, color, (round(dx, 3), round(dy, 3)), direction, linearity)
