"""A contact sheet: outputs side by side, enlarged without smoothing, each captioned, in one PNG."""

from __future__ import annotations

from pathlib import Path

from .media import frame_strip, to_uint8
from .writers import atomic_write_bytes

CELL = 128  # pixels of the shorter side of one enlarged output
CAPTION = 28  # pixels of caption under each output


def _enlarged(media, cell: int):
    """One image ``(H, W, 3)`` or a video's frame strip, in ``uint8``, enlarged by an integer factor to ``cell``."""
    image = frame_strip(media, max_frames=4) if media.ndim == 4 else media
    image = to_uint8(image)
    factor = max(1, cell // max(1, min(image.shape[:2])))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def contact_sheet(entries: list[tuple[str, object]], path: Path, columns: int = 4, cell: int = CELL) -> Path:
    """Write ``entries`` (caption, image ``(H, W, 3)`` or video ``(F, H, W, 3)`` in ``[0, 1]``) as one PNG grid at
    ``path``, ``columns`` per row; captions in up to two lines under each output."""
    from PIL import Image, ImageDraw

    tiles = [(caption, _enlarged(media, cell)) for caption, media in entries]
    width = max(t.shape[1] for _, t in tiles) + 8
    height = max(t.shape[0] for _, t in tiles) + CAPTION + 8
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (caption, tile) in enumerate(tiles):
        x, y = (i % columns) * width + 4, (i // columns) * height + 4
        sheet.paste(Image.fromarray(tile), (x, y))
        chars = max(8, width // 6)
        lines = [caption[k:k + chars] for k in range(0, len(caption), chars)][:2]
        draw.text((x, y + tile.shape[0] + 2), "\n".join(lines), fill=(20, 20, 20))
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
