"""Sample grids (PNG) of the embedded models, for the docs and a quick visual check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import COLORS, DIRECTIONS, SHAPES, image_prompt, video_prompt


def tile(images: list[list[np.ndarray]], scale: int = 2, pad: int = 1) -> Image.Image:
    """Tile rows of ``(H, W, 3)`` float images in [0, 1] into one PIL image, upscaled ``scale`` x (nearest)."""
    rows = len(images)
    cols = max(len(r) for r in images)
    h, w = images[0][0].shape[:2]
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 0.5, dtype=np.float32)
    for i, row in enumerate(images):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = im
    pil = Image.fromarray((canvas * 255).round().astype(np.uint8))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def save_sample_grid(name: str | Path, path: str | Path, seed: int = 0) -> Path:
    """Draw a grid for model ``name`` (a model name or folder).

    Images: colours (rows) x shapes x 2 seeds; video: 6 prompts (rows) x frames.
    """
    from .loader import load_pipeline

    pipe = load_pipeline(name)
    rows = []
    if pipe.family == "video":
        dirs = list(DIRECTIONS)
        for i in range(6):
            prompt = video_prompt(COLORS[i], SHAPES[i % 3], dirs[i % 4])
            frames = pipe(prompt, generator=torch.Generator().manual_seed(seed + i), output_type="np").frames[0]
            rows.append(list(frames))
    else:
        for c in COLORS:
            prompts = [image_prompt(c, s) for s in SHAPES]
            out = pipe(prompts, num_images_per_prompt=2, generator=torch.Generator().manual_seed(seed),
                       output_type="np").images
            rows.append(list(out))
    path = Path(path)
    tile(rows).save(path, optimize=True)
    return path
