"""The grid reader: the token grid ``(frames, height, width)`` of a denoiser call, from the model's config (patch
sizes) and the input its forward receives (latent shape, packed latents with position ids or ``img_shapes``).

Readers take ``(model, args, kwargs)`` of the denoiser's forward and return the grid in tokens; they raise
``ValueError`` naming the class and the missing input rather than guess. Which reader a class uses, and what else
attnplug knows per class, is in :mod:`attnplug.families`.
"""

from __future__ import annotations

from typing import Any

import torch


def _halvings(n: int) -> list[int]:
    """``[n, ceil(n/2), ceil(n/4), ..., 1]``: the side of a U-Net grid at each downsampling level."""
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def _tensor_arg(args: tuple, kwargs: dict, names: tuple[str, ...], model: Any = None) -> torch.Tensor:
    for name in names:
        if isinstance(kwargs.get(name), torch.Tensor):
            return kwargs[name]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    owner = f"{type(model).__name__} was" if model is not None else "The denoiser was"
    raise ValueError(f"{owner} called without the latent input ({' or '.join(names)}); cannot read the token grid.")


def _patch(config: Any, name: str = "patch_size") -> tuple[int, int, int]:
    """(temporal, spatial h, spatial w) patch size from a model config (``patch_size`` int or tuple, and
    ``patch_size_t``); 1 where the config has none."""
    p = getattr(config, name, None) or 1
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p) if len(p) == 3 else (1, int(p[0]), int(p[1]))
    pt = getattr(config, "patch_size_t", None) or 1
    return (int(pt), int(p), int(p))


def grid_image_4d(model, args, kwargs) -> tuple[int, int, int]:
    """``(B, C, H, W)`` latents patchified by ``config.patch_size``."""
    x = _tensor_arg(args, kwargs, ("hidden_states", "sample", "x"), model)
    _, ph, pw = _patch(model.config)
    return (1, x.shape[-2] // ph, x.shape[-1] // pw)


def grid_unet(model, args, kwargs) -> tuple[int, int, int]:
    """U-Net latents ``(B, C, H, W)`` or ``(B, C, F, H, W)``, one token per latent pixel at the finest level (or
    aMUSEd's token ids ``(B, H, W)``)."""
    x = _tensor_arg(args, kwargs, ("sample", "hidden_states", "input_ids"), model)
    frames = x.shape[2] if x.ndim == 5 else 1
    return (frames, x.shape[-2], x.shape[-1])


def grid_video_bcfhw(model, args, kwargs) -> tuple[int, int, int]:
    """Video latents ``(B, C, F, H, W)`` patchified by ``(patch_size_t, patch_size, patch_size)``."""
    x = _tensor_arg(args, kwargs, ("hidden_states",), model)
    pt, ph, pw = _patch(model.config)
    return (-(-x.shape[2] // pt), x.shape[3] // ph, x.shape[4] // pw)


def grid_video_bfchw(model, args, kwargs) -> tuple[int, int, int]:
    """Video latents ``(B, F, C, H, W)`` (CogVideoX's order) patchified by the config's patch sizes."""
    x = _tensor_arg(args, kwargs, ("hidden_states",), model)
    pt, ph, pw = _patch(model.config)
    return (-(-x.shape[1] // pt), x.shape[3] // ph, x.shape[4] // pw)


def grid_position_ids(model, args, kwargs) -> tuple[int, int, int]:
    """Packed latents ``(B, N, C)`` with per-token position ids ``img_ids`` ``(N, A)`` or ``(B, N, A)``: axes 1, 2
    are (row, column) with 3 axes (Flux, Chroma), axes 0..2 are (frame, row, column) with 4 (Flux 2). The grid is the
    id range, and it must account for every token (a packed sequence with gaps or extra ids is refused)."""
    ids = kwargs.get("img_ids")
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{type(model).__name__} was called without `img_ids`; cannot read the token grid.")
    flat = ids.reshape(-1, ids.shape[-1])
    return _grid_from_ids(model, flat[: ids.shape[-2]], "img_ids")


def grid_joint_position_ids(model, args, kwargs) -> tuple[int, int, int]:
    """Packed latents ``(B, N, C)`` with ``position_ids`` ``(L, 3)`` for the whole joint sequence, text first
    (Krea 2): the image's ids are the last ``N`` rows, axes 1, 2 (row, column), read as :func:`grid_position_ids`."""
    ids = kwargs.get("position_ids")
    x = _tensor_arg(args, kwargs, ("hidden_states",), model)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] < x.shape[1]:
        raise ValueError(
            f"{type(model).__name__} was called without `position_ids` (L, 3) covering its {x.shape[1]} image "
            "tokens; cannot read the token grid."
        )
    return _grid_from_ids(model, ids[ids.shape[0] - x.shape[1]:], "position_ids")


def _grid_from_ids(model, ids: torch.Tensor, name: str) -> tuple[int, int, int]:
    """The grid spanned by position ids ``(N, A)`` of the ``N`` image tokens (see :func:`grid_position_ids`)."""
    n = ids.shape[0]
    axes = ids[:, :3] if ids.shape[-1] >= 4 else ids[:, 1:3]
    lo, hi = torch.stack([axes.amin(dim=0), axes.amax(dim=0)]).tolist()  # one read of the values
    sides = tuple(int(b) - int(a) + 1 for a, b in zip(lo, hi))
    grid = sides if len(sides) == 3 else (1, *sides)
    if grid[0] * grid[1] * grid[2] != n:
        raise ValueError(
            f"{type(model).__name__}: the position ids `{name}` span the grid {grid} ({grid[0] * grid[1] * grid[2]} "
            f"positions) but describe {n} tokens, so the tokens are not one latent grid (reference images or "
            "conditioning tokens packed in); attnplug does not guess which are grid tokens."
        )
    return grid


def grid_img_shapes(model, args, kwargs) -> tuple[int, int, int]:
    """Packed latents with ``img_shapes``: per sample a list of ``(frames, height, width)`` token grids (Qwen-Image).
    One grid per sample is read; several (edit models' reference images) are refused, since only the first is
    the generated image and the others would be taken for grid tokens."""
    shapes = kwargs.get("img_shapes")
    if shapes is None:
        raise ValueError(f"{type(model).__name__} was called without `img_shapes`; cannot read the token grid.")
    first = shapes[0] if isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], list) else shapes
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], (list, tuple)):
        if len(first) != 1:
            raise ValueError(
                f"{type(model).__name__} was called with {len(first)} image grids per sample ({first}): reference "
                "images are packed beside the generated one, which attnplug does not treat as one token grid."
            )
        first = first[0]
    f, h, w = (int(v) for v in first)
    return (f, h, w)


def grid_size_kwargs(model, args, kwargs) -> tuple[int, int, int]:
    """Packed latents with the latent size as keyword inputs ``num_frames``, ``height``, ``width`` (LTX)."""
    try:
        f, h, w = (int(kwargs[k]) for k in ("num_frames", "height", "width"))
    except KeyError as e:
        raise ValueError(
            f"{type(model).__name__} was called without `{e.args[0]}`; cannot read the token grid."
        ) from None
    pt, ph, pw = _patch(model.config)
    return (-(-f // pt), h // ph, w // pw)


def grid_latent_list(model, args, kwargs) -> tuple[int, int, int]:
    """A list of per-sample latents ``(C, F, H, W)`` (Z-Image's ``x``) patchified by the forward's ``f_patch_size``
    and ``patch_size``. Samples of different sizes, or image conditions packed in (``siglip_feats``), are refused."""
    xs = kwargs.get("x", args[0] if args else None)
    if not isinstance(xs, (list, tuple)) or not xs or not all(isinstance(x, torch.Tensor) for x in xs):
        raise ValueError(f"{type(model).__name__} was called without its list of latents `x`; cannot read the grid.")
    if kwargs.get("siglip_feats") is not None:
        raise ValueError(
            f"{type(model).__name__} was called with image conditions (`siglip_feats`): conditioning images are "
            "packed in the sequence before the generated image, which attnplug does not treat as one token grid."
        )
    shapes = {tuple(x.shape[-3:]) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"{type(model).__name__} got latents of different sizes {sorted(shapes)} in one batch.")
    (f, h, w), p, pf = shapes.pop(), int(kwargs.get("patch_size", 2)), int(kwargs.get("f_patch_size", 1))
    return (-(-f // pf), h // p, w // p)


def grid_image_4d_equal_captions(model, args, kwargs) -> tuple[int, int, int]:
    """:func:`grid_image_4d` for models that pack each sample's valid caption tokens right before its image tokens
    (Lumina 2): the image starts at the same token for every sample only when the captions have equal valid
    lengths (``encoder_attention_mask`` sums), so other batches are refused rather than given a shifted grid."""
    mask = kwargs.get("encoder_attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[0] > 1:
        lengths = mask.reshape(mask.shape[0], -1).sum(dim=1)
        if bool((lengths != lengths[0]).any()):  # one read of the values per mask tensor
            raise ValueError(
                f"{type(model).__name__} was called with captions of different valid lengths "
                f"{lengths.tolist()} in one batch: its image tokens then start at a different position per sample, "
                "which one token layout cannot describe. Pad the prompts to one length, or run one prompt per batch."
            )
    return grid_image_4d(model, args, kwargs)


def grid_unet_bfchw(model, args, kwargs) -> tuple[int, int, int]:
    """U-Net video latents in ``(B, F, C, H, W)`` order (Stable Video Diffusion), one token per latent pixel."""
    x = _tensor_arg(args, kwargs, ("sample",), model)
    return (x.shape[1] if x.ndim == 5 else 1, x.shape[-2], x.shape[-1])


def grid_video_bthwc(model, args, kwargs) -> tuple[int, int, int]:
    """Channels-last video latents ``(B, T, H, W, C)`` (Kandinsky 5 / 6) patchified by the config's ``patch_size``
    ``(t, h, w)``. Kandinsky 5's NABLA sparse attention (``sparse_params``) reorders the tokens into 8 x 8 tiles and
    masks them with its own block mask, so such a call is refused."""
    if kwargs.get("sparse_params") is not None:
        raise ValueError(
            f"{type(model).__name__} was called with `sparse_params`: its NABLA attention reorders the tokens into "
            "8 x 8 tiles under its own sparse block mask, so the sequence is not in token-grid order and already "
            "sparse. Run the model with attention_type='regular' (sparse_params=None) to use attnplug."
        )
    x = _tensor_arg(args, kwargs, ("hidden_states",), model)
    pt, ph, pw = _patch(model.config)
    return (x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw)


def grid_video_bthwc_tail(model, args, kwargs) -> tuple[int, int, int]:
    """:func:`grid_video_bthwc` for Kandinsky 6, whose image-to-video pipeline appends the clean reference frame as
    the last latent frame, marked by a non-zero ``visual_token_type_ids`` ``(B, T)`` entry. Those trailing frames are
    conditioning tokens after the grid, not grid frames; marked frames anywhere else are refused. Reads the ids'
    values (once per ids tensor)."""
    f, h, w = grid_video_bthwc(model, args, kwargs)
    types = kwargs.get("visual_token_type_ids")
    if not isinstance(types, torch.Tensor):
        return (f, h, w)
    marked = (types.reshape(types.shape[0], -1) != 0).any(dim=0).tolist()  # one read of the values
    tail = len(marked) - next((i + 1 for i in range(len(marked) - 1, -1, -1) if not marked[i]), 0)
    if any(marked[: len(marked) - tail]) or (tail and _patch(model.config)[0] != 1):
        raise ValueError(
            f"{type(model).__name__} was called with conditioning frames (non-zero `visual_token_type_ids`) at "
            f"frames {[i for i, m in enumerate(marked) if m]} of {len(marked)}: only trailing frames with a temporal "
            "patch of 1 can be kept out of the token grid, so attnplug does not guess which tokens are grid tokens."
        )
    return (f - tail, h, w)


def grid_video_bcfhw_posed(model, args, kwargs) -> tuple[int, int, int]:
    """Wan Animate: latents ``(B, C, 1 + T, H, W)`` whose first frame is the reference-character image and whose
    other ``T`` frames are generated (they receive ``pose_hidden_states`` ``(B, C, T, H, W)``). The grid is the
    generated frames; the reference frame's tokens are conditioning tokens before them."""
    x = _tensor_arg(args, kwargs, ("hidden_states",), model)
    pose = kwargs.get("pose_hidden_states")
    pt, ph, pw = _patch(model.config)
    if not isinstance(pose, torch.Tensor) or pt != 1 or pose.shape[2] + 1 != x.shape[2]:
        raise ValueError(
            f"{type(model).__name__} was called without `pose_hidden_states` of one frame fewer than the latents "
            f"(latent frames {x.shape[2]}, temporal patch {pt}): the reference frame before the generated frames "
            "cannot be told apart, so attnplug does not read a token grid."
        )
    return (pose.shape[2], x.shape[3] // ph, x.shape[4] // pw)


def grid_first_shape(model, args, kwargs) -> tuple[int, int, int]:
    """Padded patch sequences with ``shape_list``: per sample a list of ``(frames, height, width)`` token grids, the
    generated image first and reference images after it (JoyImage Edit Plus). The grid is the first entry, which
    must be the same for every sample; the references, the padding and the text come after it."""
    shapes = kwargs.get("shape_list")
    if not isinstance(shapes, (list, tuple)) or not shapes or not all(s for s in shapes):
        raise ValueError(f"{type(model).__name__} was called without `shape_list`; cannot read the token grid.")
    firsts = {tuple(int(v) for v in sample[0]) for sample in shapes}
    if len(firsts) != 1:
        raise ValueError(
            f"{type(model).__name__} was called with generated images of different sizes {sorted(firsts)} in one "
            "batch, so the grid tokens do not line up; run one size per batch."
        )
    return firsts.pop()
