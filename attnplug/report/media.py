"""Media writers: images as PNG, videos as H.264 / yuv420p MP4 (every browser plays it) or GIF, written atomically;
nearest-neighbour enlargement for display, and frame strips of videos.

Media are float arrays in ``[0, 1]``: one image ``(H, W, 3)`` or one video ``(F, H, W, 3)``.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from .writers import atomic_write_bytes

#: Shortest side of a video encoded for display (report, UI): yuv420p keeps colour per 2 x 2 pixels, so tiny frames
#: are enlarged first or their colours smear.
DISPLAY_MIN_SIDE = 256


def to_uint8(array):
    """``[0, 1]`` floats -> ``uint8``."""
    import numpy as np

    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def enlarge(array, min_side: int = DISPLAY_MIN_SIDE):
    """``array`` (``(..., H, W, C)``) repeated by the smallest integer factor (nearest neighbour) that makes its
    shorter side at least ``min_side``, then edge-padded to even sides (what yuv420p needs)."""
    import numpy as np

    h, w = array.shape[-3:-1]
    factor = max(1, math.ceil(min_side / max(1, min(h, w))))
    if factor > 1:
        array = array.repeat(factor, axis=-3).repeat(factor, axis=-2)
    h, w = array.shape[-3:-1]
    pad = [(0, 0)] * (array.ndim - 3) + [(0, h % 2), (0, w % 2), (0, 0)]
    return np.pad(array, pad, mode="edge") if h % 2 or w % 2 else array


def frame_strip(video, max_frames: int = 8):
    """Up to ``max_frames`` evenly spaced frames of ``video`` ``(F, H, W, 3)`` side by side, one pixel column of
    white between them: ``(H, k * (W + 1) - 1, 3)``."""
    import numpy as np

    f = video.shape[0]
    picks = sorted({round(i * (f - 1) / max(1, max_frames - 1)) for i in range(min(f, max_frames))})
    gap = np.ones((video.shape[1], 1, 3), dtype=video.dtype) * (255 if video.dtype == np.uint8 else 1.0)
    parts = []
    for i in picks:
        parts += [video[i], gap]
    return np.concatenate(parts[:-1], axis=1)


def encode_png(image) -> bytes:
    """One image ``(H, W, 3)`` in ``[0, 1]`` (or ``uint8``) as PNG bytes."""
    import numpy as np
    from PIL import Image

    data = image if image.dtype == np.uint8 else to_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="PNG")
    return buf.getvalue()


def save_media(array, stem: Path, *, video_format: str = "mp4", fps: int = 8, min_side: int = 0) -> Path:
    """Save one image ``(H, W, 3)`` as PNG or one video ``(F, H, W, 3)`` as H.264/yuv420p MP4 or GIF, in ``[0, 1]``,
    atomically; returns the path (``stem`` + extension). ``min_side`` > 0 enlarges a video first (nearest
    neighbour, :func:`enlarge`) for display; 0 keeps the generated size (odd sides are edge-padded for MP4)."""
    data = to_uint8(array)
    stem = Path(stem)
    if data.ndim == 3:
        path = stem.with_name(stem.name + ".png")
        atomic_write_bytes(path, encode_png(data))
        return path
    path = stem.with_name(f"{stem.name}.{video_format}")
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    if video_format == "gif":
        import imageio.v3 as iio

        iio.imwrite(tmp, data, extension=".gif", duration=1000 / fps, loop=0)
    elif video_format == "mp4":
        _write_mp4(tmp, enlarge(data, min_side) if min_side else enlarge(data, 1), fps)
    else:
        raise ValueError(f"video_format={video_format!r} must be 'mp4' or 'gif'.")
    os.replace(tmp, path)
    return path


def _write_mp4(path: Path, data, fps: int) -> None:
    """``uint8`` frames ``(F, H, W, 3)`` with even sides -> H.264 / yuv420p MP4 with the index up front."""
    import imageio.v2 as iio2

    writer = iio2.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                             macro_block_size=2, output_params=["-movflags", "+faststart", "-crf", "18"],
                             ffmpeg_log_level="error")
    try:
        for frame in data:
            writer.append_data(frame)
    finally:
        writer.close()


def save_previews(video, stem: Path, fps: int = 8) -> dict[str, Path]:
    """Display copies of one video ``(F, H, W, 3)`` beside ``stem``: ``stem.preview.mp4`` enlarged to at least
    :data:`DISPLAY_MIN_SIDE` pixels and ``stem.strip.png`` (lossless frame strip at the generated size)."""
    stem = Path(stem)
    preview = save_media(video, stem.with_name(stem.name + ".preview"), fps=fps, min_side=DISPLAY_MIN_SIDE)
    strip = stem.with_name(stem.name + ".strip.png")
    atomic_write_bytes(strip, encode_png(frame_strip(video)))
    return {"video": preview, "strip": strip}
