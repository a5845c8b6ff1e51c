"""Synthetic, seeded training data: one coloured shape on a plain black background.

Images are float tensors in ``[-1, 1]`` with layout ``(B, 3, H, W)``; videos are ``(B, 3, F, H, W)`` (the layout
diffusers' video transformers take). Everything is generated on the fly from a ``torch.Generator`` so a training run
is reproducible from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

#: Colour name -> RGB in ``[0, 1]``. The detector classifies colours against this same palette.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.15, 0.35, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0),
}
BACKGROUND: tuple[float, float, float] = (0.0, 0.0, 0.0)

#: Every word a prompt may contain (the tokenizer vocabulary is built from this list).
WORDS: tuple[str, ...] = (*COLORS, *SHAPES, "moving", *DIRECTIONS, "a")


def image_prompt(color: str, shape: str) -> str:
    """Prompt for an image of one ``color`` ``shape``, e.g. ``"red circle"``."""
    return f"{color} {shape}"


def video_prompt(color: str, shape: str, direction: str) -> str:
    """Prompt for a video of one shape moving in ``direction``, e.g. ``"red circle moving right"``."""
    return f"{color} {shape} moving {direction}"


def shape_mask(shape: str, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, height: int, width: int,
               supersample: int = 4) -> torch.Tensor:
    """Anti-aliased coverage mask of one shape per batch element.

    Args:
        shape: one of :data:`SHAPES`.
        cx, cy, r: ``(B,)`` centre (pixels, x to the right, y down) and half-size (pixels).
        height, width: output size in pixels.
        supersample: sub-pixel samples per axis for anti-aliasing.

    Returns:
        ``(B, H, W)`` coverage in ``[0, 1]``.
    """
    s = supersample
    ys = (torch.arange(height * s, dtype=torch.float32) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float32) + 0.5) / s
    y = ys.view(1, -1, 1)
    x = xs.view(1, 1, -1)
    cx, cy, r = cx.view(-1, 1, 1), cy.view(-1, 1, 1), r.view(-1, 1, 1)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    elif shape == "square":
        half = r * 0.85  # same visual area scale as the circle
        inside = ((x - cx).abs() <= half) & ((y - cy).abs() <= half)
    elif shape == "triangle":
        # Apex up; base at cy + r; the apex at cy - r; half-width at the base r * 1.15.
        top, bottom, half_base = cy - r, cy + r, r * 1.15
        frac = (y - top) / (bottom - top)
        inside = (y >= top) & (y <= bottom) & ((x - cx).abs() <= frac * half_base)
    else:
        raise ValueError(f"shape={shape!r} is not a known shape; expected one of {SHAPES}.")
    inside = inside.float().view(-1, height, s, width, s)
    return inside.mean(dim=(2, 4))


def _render(shape_ids: torch.Tensor, color_ids: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor,
            height: int, width: int) -> torch.Tensor:
    """Render ``(B, 3, H, W)`` images in ``[0, 1]`` for per-element shapes/colours/positions."""
    b = shape_ids.shape[0]
    cover = torch.zeros(b, height, width)
    for i, shape in enumerate(SHAPES):
        sel = shape_ids == i
        if sel.any():
            cover[sel] = shape_mask(shape, cx[sel], cy[sel], r[sel], height, width)
    rgb = torch.tensor([PALETTE[c] for c in COLORS])[color_ids]  # (B, 3)
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    cover = cover.unsqueeze(1)
    return bg * (1 - cover) + rgb.view(b, 3, 1, 1) * cover


def sample_images(batch: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Random shape images and their prompts.

    Args:
        batch: number of images ``B``.
        size: side ``S`` in pixels (square images).
        generator: CPU ``torch.Generator`` (the only source of randomness).

    Returns:
        ``(images, prompts)``: images ``(B, 3, S, S)`` in ``[-1, 1]``, prompts a list of ``B`` strings.
    """
    shape_ids = torch.randint(len(SHAPES), (batch,), generator=generator)
    color_ids = torch.randint(len(COLORS), (batch,), generator=generator)
    r = size * (0.12 + 0.14 * torch.rand(batch, generator=generator))  # half-size 12%..26% of the side
    margin = r + 1.0
    cx = margin + (size - 2 * margin) * torch.rand(batch, generator=generator)
    cy = margin + (size - 2 * margin) * torch.rand(batch, generator=generator)
    images = _render(shape_ids, color_ids, cx, cy, r, size, size) * 2 - 1
    prompts = [image_prompt(COLORS[c], SHAPES[s]) for s, c in zip(shape_ids.tolist(), color_ids.tolist())]
    return images, prompts


@dataclass(frozen=True)
class MotionSpec:
    """Motion statistics of the training videos, as fractions of the frame side ``S``.

    ``radius``: range of the shape's half-size ``r``; ``speed``: range of the speed in pixels per frame;
    ``path_frames``: each video is a window of a straight path this many frames long that stays inside the frame
    (``None`` = the video's own length); ``extent``: the path keeps ``extent * r + 1`` pixels from the frame's edges
    (1.15 covers the triangle's base, so the border pixels stay background; the original statistics use 1);
    ``direction_weights``: relative frequencies of the directions in :data:`DIRECTIONS` order (right, left, down,
    up; ``None`` = uniform, the original draws).
    A path longer than the training clips is what lets a video several times the training length keep moving at
    a training speed without leaving the frame.
    """

    radius: tuple[float, float] = (0.12, 0.20)
    speed: tuple[float, float] = (0.035, 0.055)
    path_frames: int | None = None
    extent: float = 1.0
    direction_weights: tuple[float, float, float, float] | None = None

    def __post_init__(self):
        for name in ("radius", "speed"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"MotionSpec.{name}={getattr(self, name)!r} must be a range (lo, hi), 0 < lo <= hi.")
        if self.path_frames is not None and (isinstance(self.path_frames, bool) or self.path_frames < 1):
            raise ValueError(f"MotionSpec.path_frames={self.path_frames!r} must be a positive int or None.")
        if not self.extent > 0:
            raise ValueError(f"MotionSpec.extent={self.extent!r} must be > 0.")
        w = self.direction_weights
        if w is not None and (len(w) != len(DIRECTIONS) or min(w) < 0 or sum(w) <= 0):
            raise ValueError(f"MotionSpec.direction_weights={w!r} must be {len(DIRECTIONS)} non-negative weights "
                             f"(for {', '.join(DIRECTIONS)}) with a positive sum, or None.")

    @classmethod
    def from_config(cls, cfg: dict | None) -> MotionSpec:
        """The spec of a model config's ``"data"`` section (``None`` or missing keys: the original statistics)."""
        cfg = dict(cfg or {})
        accepted = [f.name for f in fields(cls)]
        unknown = set(cfg) - set(accepted)
        if unknown:
            raise ValueError(f"data section has unknown keys {sorted(unknown)}; accepted: {', '.join(accepted)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})

    def check(self, size: int, frames: int) -> int:
        """The path length in frames for clips of ``frames`` frames; ``ValueError`` if the fastest, largest shape's
        path cannot fit inside a ``size`` x ``size`` frame."""
        path = self.path_frames or frames
        if path < frames:
            raise ValueError(f"MotionSpec.path_frames={path} must be >= the clip length ({frames} frames).")
        travel = size * self.speed[1] * (path - 1)
        room = size - 2 * (self.extent * size * self.radius[1] + 1.0)
        if travel > room:
            raise ValueError(
                f"MotionSpec(speed={self.speed}, radius={self.radius}, path_frames={path}, extent={self.extent}) "
                "does not fit a "
                f"{size}-pixel frame: the fastest path travels {travel:.2f} px but only {room:.2f} px are free; "
                "lower the speed or the path length, or use a larger frame."
            )
        return path


#: The statistics of the original ``shapes-video`` (16 x 16, 8 frames; the path is the clip).
V1_MOTION = MotionSpec()


def sample_videos(batch: int, size: int, frames: int, generator: torch.Generator,
                  motion: MotionSpec | None = None) -> tuple[torch.Tensor, list[str]]:
    """Random videos of one shape moving with constant velocity, and their prompts.

    Args:
        batch: number of videos ``B``.
        size: frame side ``S`` in pixels.
        frames: number of frames ``F``.
        generator: CPU ``torch.Generator``.
        motion: size and speed statistics (default :data:`V1_MOTION`). With ``motion.path_frames > F`` each video is
            a random ``F``-frame window of a ``path_frames``-frame path that stays inside the frame.

    Returns:
        ``(videos, prompts)``: videos ``(B, 3, F, S, S)`` in ``[-1, 1]``; prompts like ``"red circle moving right"``.
    """
    motion = motion or V1_MOTION
    path = motion.check(size, frames)
    shape_ids = torch.randint(len(SHAPES), (batch,), generator=generator)
    color_ids = torch.randint(len(COLORS), (batch,), generator=generator)
    if motion.direction_weights is None:
        dir_ids = torch.randint(len(DIRECTIONS), (batch,), generator=generator)
    else:
        weights = torch.tensor(motion.direction_weights, dtype=torch.float64)
        dir_ids = torch.multinomial(weights, batch, replacement=True, generator=generator)
    (r_lo, r_hi), (s_lo, s_hi) = motion.radius, motion.speed
    r = size * (r_lo + (r_hi - r_lo) * torch.rand(batch, generator=generator))
    speed = size * (s_lo + (s_hi - s_lo) * torch.rand(batch, generator=generator))  # pixels per frame
    dirs = torch.tensor(list(DIRECTIONS.values()))[dir_ids]  # (B, 2)
    travel = speed * (path - 1)
    margin = motion.extent * r + 1.0
    # start so that the whole path stays inside the frame
    lo_x = margin + torch.clamp(-dirs[:, 0], min=0) * travel
    hi_x = size - margin - torch.clamp(dirs[:, 0], min=0) * travel
    lo_y = margin + torch.clamp(-dirs[:, 1], min=0) * travel
    hi_y = size - margin - torch.clamp(dirs[:, 1], min=0) * travel
    x0 = lo_x + (hi_x - lo_x).clamp(min=0) * torch.rand(batch, generator=generator)
    y0 = lo_y + (hi_y - lo_y).clamp(min=0) * torch.rand(batch, generator=generator)
    offset = torch.zeros(batch)
    if path > frames:  # the clip is a window of the path (drawn last: the original draws are unchanged)
        offset = torch.randint(path - frames + 1, (batch,), generator=generator).float()
    video = torch.empty(batch, 3, frames, size, size)
    for f in range(frames):
        cx = x0 + dirs[:, 0] * speed * (offset + f)
        cy = y0 + dirs[:, 1] * speed * (offset + f)
        video[:, :, f] = _render(shape_ids, color_ids, cx, cy, r, size, size) * 2 - 1
    names = list(DIRECTIONS)
    prompts = [
        video_prompt(COLORS[c], SHAPES[s], names[d])
        for s, c, d in zip(shape_ids.tolist(), color_ids.tolist(), dir_ids.tolist())
    ]
    return video, prompts


def all_image_prompts() -> list[str]:
    """Every image prompt the models were trained on (colour x shape)."""
    return [image_prompt(c, s) for c in COLORS for s in SHAPES]


def expected_speed_range(size: int, motion: MotionSpec | None = None) -> tuple[float, float]:
    """Range of per-frame speeds (pixels) used by :func:`sample_videos` for frame side ``size``."""
    lo, hi = (motion or V1_MOTION).speed
    return size * lo, size * hi


