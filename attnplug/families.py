"""Everything attnplug knows per denoiser class that the generic grid reader (:mod:`attnplug.layout_reader`) cannot
see: which reader fits its input, where text or other non-grid tokens sit in joint attention, attention modules
that never see the image grid, U-Net levels and temporal modules, training size and length, how the pipeline packs
the latent, and the denoising-step conventions; the classes refused, with their reason, are in
:mod:`attnplug.families_refused`. The pipelines (:mod:`attnplug.pipelines`) read these rows through
:func:`family_of` (hi-res: training size, U-Net or not, latent packing; long video: training length) and key their
own per-family code (the long-video rotary adapters) by the row's ``name``; they hold no copy of these facts.

A class is looked up by its MRO, so a subclass of a supported class is supported. A class that is neither supported
nor refused here is refused at ``apply`` with a message naming it and what is unknown.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .families_refused import REFUSED
from .layout_reader import (
    _halvings,
    _patch,
    grid_first_shape,
    grid_image_4d,
    grid_image_4d_equal_captions,
    grid_img_shapes,
    grid_joint_position_ids,
    grid_latent_list,
    grid_position_ids,
    grid_size_kwargs,
    grid_unet,
    grid_unet_bfchw,
    grid_video_bcfhw,
    grid_video_bcfhw_posed,
    grid_video_bfchw,
    grid_video_bthwc,
    grid_video_bthwc_tail,
)

TextPosition = Literal["none", "first", "last"]
MaskForm = Literal["outer-key-padding"]
LatentPacking = Literal["2x2", "patchify"]


@dataclass(frozen=True)
class FamilySpec:
    """One model family: how its token grid follows from the denoiser input, and its attention conventions.

    ``text_position`` says where the non-grid tokens (text, registers, conditioning frames) of a joint-attention
    sequence sit relative to the grid tokens; ``train_size`` is the training size in pixels ``(height, width)`` and
    ``train_frames`` the training length in video frames, where the family publishes them;
    ``default_size_is_train_size=False``: the family's pipeline defaults to another size than ``train_size``
    (Qwen-Image: 1024 x 1024, trained at 1328 x 1328), so ``train_size`` wins over the pipeline's default.
    ``multiscale`` marks a U-Net (HiDiffusion's RAU-Net runs on it). ``latent_packing``: how the family's pipeline
    hands the latent to the denoiser, ``"2x2"`` packed tokens ``(B, h w / 4, 4 C)`` (``_pack_latents``) or
    ``"patchify"`` patches ``(B, 4 C, h / 2, w / 2)`` (Flux 2's ``_patchify_latents``); None: the latent itself.
    ``timestep_rises``: the
    family's pipeline passes the flow time ``1 - t / 1000`` (rising from 0 to 1 over a run) instead of the falling
    timestep, so the step tracker (:mod:`attnplug._steps`) starts a run at a lower timestep, not a higher one.
    ``mask_form="outer-key-padding"``: the processor masks its joint self-attention with a ``(B, 1, N, N)`` mask
    ``keep[i] & keep[j]`` (padded prompt tokens masked as keys and as queries), which the interception core runs as
    the ``(B, 1, 1, N)`` key mask (:mod:`attnplug.processors.mask_forms`)."""

    name: str
    grid: Callable[[Any, tuple, dict], tuple[int, int, int]]
    text_position: TextPosition = "none"
    non_grid: str = "text"  # what the non-grid tokens of self-attention are ("text", or conditioning frames)
    multiscale: bool = False  # U-Net: attention at every downsampling level (ceil-halved grids)
    temporal_modules: tuple[str, ...] = ()  # name fragments of attention modules that attend over frames only
    frames_in_batch: bool = False  # spatial attention sees one frame at a time (frames folded into the batch)
    exclude_modules: tuple[str, ...] = ()  # attention modules that never see the image grid (e.g. text refiners)
    grid_reads_values: bool = False  # the grid comes from tensor values (Flux's img_ids), not only from shapes
    value_inputs: tuple[str, ...] = ()  # the keyword inputs whose values the grid reader reads
    train_size: tuple[int, int] | None = None  # pixels (height, width)
    default_size_is_train_size: bool = True  # False: the pipeline's default size is not train_size (Qwen-Image)
    pixels_per_token: int = 16  # image pixels per token side (VAE factor x patch or packing)
    train_frames: int | None = None  # video frames
    latent_packing: LatentPacking | None = None  # how the pipeline packs the latent for the denoiser
    variant: Callable[[Any], dict] | None = None  # config -> fields that differ for this checkpoint
    timestep_rises: bool = False  # the pipeline passes a timestep that grows over a run (1 - t / 1000: Lumina)
    mask_form: MaskForm | None = None  # a self-attention mask the core reduces (attnplug.processors.mask_forms)


def _wan_variant(config) -> dict:
    """Wan 2.2 TI2V-5B: 48-channel latents of a 16x VAE, trained at 704 x 1280, 121 frames."""
    if getattr(config, "in_channels", None) == 48 or getattr(config, "out_channels", None) == 48:
        return dict(train_size=(704, 1280), pixels_per_token=32, train_frames=121)
    return {}


def _animatediff_variant(config) -> dict:
    """AnimateDiff: the motion modules' positional table (``motion_max_seq_length``) bounds the 16-frame training
    length."""
    n = getattr(config, "motion_max_seq_length", None)
    return dict(train_frames=int(n)) if isinstance(n, int) and 0 < n < 16 else {}


def _without(name: str, what: str) -> Callable:
    """Wrap a grid reader so that it refuses a call where the keyword input ``name`` is given: the model then packs
    ``what`` into its joint sequence on the other side of the grid from the text, which one layout cannot hold."""

    def wrap(reader: Callable) -> Callable:
        def grid(model, args, kwargs):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{type(model).__name__} was called with `{name}`: it packs {what}, so the non-grid tokens sit "
                    "on both sides of the grid, which attnplug's token layout (text on one side) cannot describe."
                )
            return reader(model, args, kwargs)

        grid.__doc__ = reader.__doc__
        return grid

    return wrap


_IDS = dict(grid=grid_position_ids, grid_reads_values=True, value_inputs=("img_ids",))

FAMILIES: dict[str, FamilySpec] = {
    "UNet2DConditionModel": FamilySpec("unet", grid_unet, multiscale=True),
    "UNetMotionModel": FamilySpec(
        "animatediff", grid_unet, multiscale=True, temporal_modules=("motion_modules",), frames_in_batch=True,
        train_frames=16, variant=_animatediff_variant,
    ),
    "UNet3DConditionModel": FamilySpec(
        "unet3d", grid_unet, multiscale=True, temporal_modules=("temp_attentions", "transformer_in"),
        frames_in_batch=True,
    ),
    "PixArtTransformer2DModel": FamilySpec("pixart", grid_image_4d),
    "DiTTransformer2DModel": FamilySpec("dit", grid_image_4d),
    "SD3Transformer2DModel": FamilySpec("sd3", grid_image_4d, text_position="last"),
    "FluxTransformer2DModel": FamilySpec(
        "flux", text_position="first", train_size=(1024, 1024), latent_packing="2x2", **_IDS
    ),
    "WanTransformer3DModel": FamilySpec(
        "wan", grid_video_bcfhw, train_size=(480, 832), train_frames=81, variant=_wan_variant
    ),
    "CogVideoXTransformer3DModel": FamilySpec(
        "cogvideox", grid_video_bfchw, text_position="first", train_frames=49
    ),
    "ConsisIDTransformer3DModel": FamilySpec("consisid", grid_video_bfchw, text_position="first", train_frames=49),
    "HunyuanVideoTransformer3DModel": FamilySpec(
        "hunyuanvideo", grid_video_bcfhw, text_position="last", exclude_modules=("context_embedder",),
        train_size=(720, 1280), train_frames=129,
    ),
    "LTXVideoTransformer3DModel": FamilySpec(
        "ltx", grid_size_kwargs, train_size=(512, 768), pixels_per_token=32, train_frames=121
    ),
    # image transformers with joint (text + image) attention
    "ChromaTransformer2DModel": FamilySpec(
        "chroma", text_position="first", train_size=(1024, 1024), latent_packing="2x2", **_IDS
    ),
    "Flux2Transformer2DModel": FamilySpec(
        "flux2", text_position="first", train_size=(1024, 1024), pixels_per_token=16, latent_packing="patchify", **_IDS
    ),
    # Qwen-Image: trained at 1328 x 1328; its pipeline defaults to 1024 x 1024
    "QwenImageTransformer2DModel": FamilySpec(
        "qwen-image", grid_img_shapes, text_position="first", train_size=(1328, 1328),
        default_size_is_train_size=False, pixels_per_token=16, latent_packing="2x2",
    ),
    # Z-Image: image tokens (padded to a multiple of 32) then caption; the refiners see one modality each
    "ZImageTransformer2DModel": FamilySpec(
        "z-image", grid_latent_list, text_position="last", exclude_modules=("context_refiner", "siglip_refiner"),
        train_size=(1024, 1024), pixels_per_token=16, timestep_rises=True,
    ),
    "AuraFlowTransformer2DModel": FamilySpec("auraflow", grid_image_4d, text_position="first"),  # + registers
    "BriaTransformer2DModel": FamilySpec("bria", text_position="first", train_size=(1024, 1024), **_IDS),
    "BriaFiboTransformer2DModel": FamilySpec("bria-fibo", text_position="first", train_size=(1024, 1024), **_IDS),
    "LongCatImageTransformer2DModel": FamilySpec(
        "longcat-image", text_position="first", train_size=(1024, 1024), **_IDS
    ),
    "OvisImageTransformer2DModel": FamilySpec("ovis-image", text_position="first", train_size=(1024, 1024), **_IDS),
    # Flux 3: the text and reference-image mode blocks never see the generated grid; joint blocks are [text, image]
    # (reference images, when given, are appended after the image: refused by the reader)
    "Flux3Transformer2DModel": FamilySpec(
        "flux3", text_position="first", exclude_modules=("txt_mode_blocks", "mode_blocks.image_cond"),
        grid=_without("image_cond_hidden_states", "reference-image tokens after the image tokens")(grid_position_ids),
        grid_reads_values=True, value_inputs=("img_ids",),
    ),
    # Krea 2: [text, image], position ids over the whole sequence; the text fusion blocks see only text
    "Krea2Transformer2DModel": FamilySpec(
        "krea2", grid_joint_position_ids, text_position="first", exclude_modules=("text_fusion",),
        grid_reads_values=True, value_inputs=("position_ids",),
    ),
    # ERNIE-Image: [image, text] (sequence-first inside the blocks), padded text masked as keys
    "ErnieImageTransformer2DModel": FamilySpec("ernie-image", grid_image_4d, text_position="last"),
    # GLM-Image: [glyph text, image]; an image-editing run attends to cached condition-image keys as well (more keys
    # than queries: cross-attention to attnplug, run stock)
    "GlmImageTransformer2DModel": FamilySpec("glm-image", grid_image_4d, text_position="first"),
    # HiDream-I1: [image, (padding up to max_resolution for non-square latents), text]; no attention mask
    "HiDreamImageTransformer2DModel": FamilySpec(
        "hidream-image", grid_image_4d, text_position="last", train_size=(1024, 1024),
    ),
    "CogView3PlusTransformer2DModel": FamilySpec("cogview3plus", grid_image_4d, text_position="first"),
    "CogView4Transformer2DModel": FamilySpec("cogview4", grid_image_4d, text_position="first"),
    "HunyuanImageTransformer2DModel": FamilySpec(
        "hunyuanimage", grid_image_4d, text_position="last", exclude_modules=("context_embedder",),
        train_size=(2048, 2048), pixels_per_token=32,
    ),
    "Lumina2Transformer2DModel": FamilySpec(
        "lumina2", grid_image_4d_equal_captions, text_position="first", exclude_modules=("context_refiner",),
        grid_reads_values=True, value_inputs=("encoder_attention_mask",), timestep_rises=True,
    ),
    # Lumina-Next: image-only self-attention; the text enters through a gated cross-attention
    "LuminaNextDiT2DModel": FamilySpec("lumina-next", grid_image_4d, timestep_rises=True),
    "Transformer2DModel": FamilySpec("transformer2d", grid_image_4d),
    "HunyuanDiT2DModel": FamilySpec("hunyuandit", grid_image_4d),
    "UNet2DModel": FamilySpec("unet2d", grid_unet, multiscale=True),
    # aMUSEd: VQ token ids (B, H, W); self-attention only in the transformer layers, after an optional 2x downsample
    "UVit2DModel": FamilySpec("amused", grid_unet, multiscale=True),
    # video transformers
    "WanVACETransformer3DModel": FamilySpec(
        "wan", grid_video_bcfhw, train_size=(480, 832), train_frames=81, variant=_wan_variant
    ),
    "AnyFlowTransformer3DModel": FamilySpec("anyflow", grid_video_bfchw, train_size=(480, 832), train_frames=81),
    "JoyImageEditTransformer3DModel": FamilySpec("joyimage-edit", grid_video_bcfhw, text_position="last"),
    # JoyImage Edit Plus: [generated image, reference images, padding, text]: everything after the grid is non-grid
    "JoyImageEditPlusTransformer3DModel": FamilySpec("joyimage-edit-plus", grid_first_shape, text_position="last"),
    "SkyReelsV2Transformer3DModel": FamilySpec(
        "skyreels-v2", grid_video_bcfhw, train_size=(544, 960), train_frames=97
    ),
    "ChronoEditTransformer3DModel": FamilySpec(
        "chronoedit", grid_video_bcfhw, train_size=(480, 832), train_frames=81
    ),
    "HunyuanVideo15Transformer3DModel": FamilySpec(
        "hunyuanvideo15", grid_video_bcfhw, text_position="last", exclude_modules=("context_embedder",),
        train_size=(720, 1280), train_frames=121, mask_form="outer-key-padding",
    ),
    # LTX-2: the audio stream's self-attention and the audio <-> video attentions never see the video grid
    "LTX2VideoTransformer3DModel": FamilySpec(
        "ltx2", grid_size_kwargs, exclude_modules=("audio",), train_size=(512, 768), pixels_per_token=32,
        train_frames=121,
    ),
    "UNetSpatioTemporalConditionModel": FamilySpec(
        "svd", grid_unet_bfchw, multiscale=True, temporal_modules=("temporal_transformer_blocks",),
        frames_in_batch=True, train_size=(576, 1024), pixels_per_token=8, train_frames=14,
    ),
    "LatteTransformer3DModel": FamilySpec(
        "latte", grid_video_bcfhw, temporal_modules=("temporal_transformer_blocks",), frames_in_batch=True,
        train_frames=16,
    ),
    "AllegroTransformer3DModel": FamilySpec("allegro", grid_video_bcfhw, train_frames=88),
    "EasyAnimateTransformer3DModel": FamilySpec("easyanimate", grid_video_bcfhw, text_position="first"),
    "I2VGenXLUNet": FamilySpec(
        "i2vgen-xl", grid_unet, multiscale=True, frames_in_batch=True,
        temporal_modules=("temp_attentions", "transformer_in", "image_latents_temporal_encoder"),
    ),
    "MotifVideoTransformer3DModel": FamilySpec("motif-video", grid_video_bcfhw, text_position="last"),
    # Kandinsky 5: the text encoder blocks never see the video; video self-attention holds only grid tokens
    "Kandinsky5Transformer3DModel": FamilySpec(
        "kandinsky5", grid_video_bthwc, exclude_modules=("text_transformer_blocks",),
    ),
    # Kandinsky 6: as Kandinsky 5, plus the audio stream and the audio <-> video attentions; an image-to-video
    # reference frame sits after the grid frames (conditioning tokens last)
    "Kandinsky6Transformer3DModel": FamilySpec(
        "kandinsky6", grid_video_bthwc_tail, text_position="last", non_grid="reference frame",
        exclude_modules=("text_transformer_blocks", "audio_dec_block", "va_cross_attention", "av_cross_attention"),
        grid_reads_values=True, value_inputs=("visual_token_type_ids",),
    ),
    # Wan Animate: [reference-character frame, generated frames] in one self-attention; the face adapter attends
    # from each frame to motion tokens
    "WanAnimateTransformer3DModel": FamilySpec(
        "wan-animate", grid_video_bcfhw_posed, text_position="first", non_grid="reference frame",
        exclude_modules=("face_adapter",), train_size=(720, 1280), train_frames=77,
    ),
    "CosmosTransformer3DModel": FamilySpec("cosmos", grid_video_bcfhw, train_size=(704, 1280), train_frames=121),
}

#: family name -> training length in video frames, for long video.
TRAIN_FRAMES: dict[str, int] = {s.name: s.train_frames for s in FAMILIES.values() if s.train_frames}


def family_of(model: torch.nn.Module) -> FamilySpec:
    """The :class:`FamilySpec` of a denoiser; ``TypeError`` naming the class and why it is not supported."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            spec = FAMILIES[cls.__name__]
            changes = spec.variant(model.config) if spec.variant is not None else {}
            return dataclasses.replace(spec, **changes) if changes else spec
        if cls.__name__ in REFUSED:
            raise TypeError(f"attnplug does not run on {type(model).__name__}: {REFUSED[cls.__name__]}")
    raise TypeError(
        f"attnplug does not know the model class {type(model).__name__}: how its token grid follows from its input "
        f"and where non-grid tokens sit in its attention are unknown. Supported denoisers: "
        f"{', '.join(sorted(FAMILIES))}. Pass a pipeline holding one of them as `unet`/`transformer`, or the model."
    )


_UNET_BLOCK = re.compile(r"(?:^|\.)(down_blocks|up_blocks)\.(\d+)\.|(?:^|\.)mid_block\.")


def latent_level(model: torch.nn.Module, module_name: str) -> int | None:
    """How many 2x downsamplings below the latent grid a U-Net attention module works at, read from its place in
    the block structure (``down_blocks.i`` -> i, ``mid_block`` -> last, ``up_blocks.j`` -> mirrored); None for
    models without levels or modules outside the blocks."""
    if not family_of(model).multiscale:
        return None
    match = _UNET_BLOCK.search(module_name)
    if match is None:
        return None
    n_down = len(getattr(model, "down_blocks", ()))
    if match.group(1) is None:
        return max(n_down - 1, 0)
    index = int(match.group(2))
    if match.group(1) == "down_blocks":
        return index
    return max(len(getattr(model, "up_blocks", ())) - 1 - index, 0)


def training_grid(model: torch.nn.Module, level: int = 0) -> tuple[int, int, int] | None:
    """The token grid ``(frames, height, width)`` the model was trained at, at ``level`` 2x downsamplings below the
    latent grid: from ``config.sample_size`` (or ``sample_height`` / ``sample_width``) and the patch size, else from
    the family's published training size; None when neither says. Frames are 1: only the spatial grid is known."""
    fam = family_of(model)
    size = getattr(model.config, "sample_size", None)
    if size is None:
        sh, sw = getattr(model.config, "sample_height", None), getattr(model.config, "sample_width", None)
        if isinstance(sh, int) and isinstance(sw, int):
            _, ph, pw = _patch(model.config)
            return (1, sh // ph, sw // pw)
        if fam.train_size is not None:
            return (1, fam.train_size[0] // fam.pixels_per_token, fam.train_size[1] // fam.pixels_per_token)
        return None
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if fam.multiscale:
        hs, ws = _halvings(h), _halvings(w)
        return (1, hs[min(level, len(hs) - 1)], ws[min(level, len(ws) - 1)])
    _, ph, pw = _patch(model.config)
    if fam.grid in (grid_image_4d, grid_image_4d_equal_captions):
        return (1, h // ph, w // pw)
    return None
