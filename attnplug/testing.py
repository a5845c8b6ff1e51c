"""Tiny random-config diffusers denoisers for every supported family, built in code (no download).

Used by the tests and benchmarks: ``model, inputs = tiny_model("flux")`` then ``model(**inputs)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _unet(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=height, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    inputs = dict(
        sample=torch.randn(batch, 4, height, width), timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch, text, 16),
    )
    return model, inputs


def _animatediff(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import UNetMotionModel

    model = UNetMotionModel(
        sample_size=height, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        cross_attention_dim=16, num_attention_heads=2, norm_num_groups=8,
        motion_num_attention_heads=2, motion_max_seq_length=32, use_motion_mid_block=False,
    )
    inputs = dict(
        sample=torch.randn(batch, 4, frames, height, width), timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch * frames, text, 16),
    )
    return model, inputs


def _pixart(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, caption_channels=16, sample_size=height, patch_size=2, norm_num_groups=8,
    )
    inputs = dict(
        hidden_states=torch.randn(batch, 4, height, width), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    return model, inputs


def _sd3(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=height, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=32, pooled_projection_dim=16,
        pos_embed_max_size=32,
    )
    inputs = dict(
        hidden_states=torch.randn(batch, 4, height, width), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16), pooled_projections=torch.randn(batch, 16),
    )
    return model, inputs


def _flux(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6),
    )
    h, w = height // 2, width // 2
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    inputs = dict(
        hidden_states=torch.randn(batch, h * w, 16), encoder_hidden_states=torch.randn(batch, text, 16),
        pooled_projections=torch.randn(batch, 16), timestep=torch.tensor([0.5] * batch),
        img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3),
    )
    return model, inputs


def _wan(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    )
    inputs = dict(
        hidden_states=torch.randn(batch, 4, frames, height, width), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16),
    )
    return model, inputs


def _cogvideox(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=16, num_layers=1, sample_width=width, sample_height=height, sample_frames=frames,
        patch_size=2, temporal_compression_ratio=1, max_text_seq_length=text, use_rotary_positional_embeddings=False,
    )
    inputs = dict(
        hidden_states=torch.randn(batch, frames, 4, height, width), encoder_hidden_states=torch.randn(batch, text, 16),
        timestep=torch.tensor([500] * batch),
    )
    return model, inputs


def _hunyuanvideo(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    mask = torch.ones(batch, text, dtype=torch.long)
    mask[:, -2:] = 0  # padded text tokens: exercises the attention mask
    inputs = dict(
        hidden_states=torch.randn(batch, 4, frames, height, width), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16), pooled_projections=torch.randn(batch, 8),
        encoder_attention_mask=mask, guidance=torch.tensor([3.5] * batch),
    )
    return model, inputs


def _ltx(height: int, width: int, frames: int, text: int, batch: int):
    from diffusers import LTXVideoTransformer3DModel

    model = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=16,
    )
    h, w = height // 2, width // 2
    inputs = dict(
        hidden_states=torch.randn(batch, frames * h * w, 8), encoder_hidden_states=torch.randn(batch, text, 16),
        timestep=torch.tensor([500] * batch), encoder_attention_mask=torch.ones(batch, text, dtype=torch.long),
        num_frames=frames, height=h, width=w,
    )
    return model, inputs


_BUILDERS: dict[str, Callable] = {
    "unet": _unet, "animatediff": _animatediff, "pixart": _pixart, "sd3": _sd3, "flux": _flux, "wan": _wan,
    "cogvideox": _cogvideox, "hunyuanvideo": _hunyuanvideo, "ltx": _ltx,
}
#: the families :func:`tiny_model` builds, by their family row's name (:func:`attnplug.families.family_of` of each
#: model is the row of that name: ``tests/pipelines/test_family_facts.py``)
FAMILY_NAMES = tuple(_BUILDERS)


def tiny_model(
    family: str, *, height: int = 16, width: int = 16, frames: int = 3, text: int = 7, batch: int = 2, seed: int = 0
) -> tuple[torch.nn.Module, dict]:
    """A tiny random-weight denoiser of ``family`` (one of :data:`FAMILY_NAMES`) in eval mode, and keyword inputs
    for one forward call: latents of ``height x width`` (``frames`` for video), ``text`` text tokens, ``batch``."""
    if family not in _BUILDERS:
        raise ValueError(f"Unknown family {family!r}; choose one of {', '.join(FAMILY_NAMES)}.")
    torch.manual_seed(seed)
    model, inputs = _BUILDERS[family](height, width, frames, text, batch)
    return model.eval(), inputs


def sdxl_like_unet(seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A tiny U-Net shaped like SDXL's, with no attention at the latent resolution (first block ``DownBlock2D``),
    and inputs for one forward (16 x 16 latents, batch 1)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    ).eval()
    inputs = dict(sample=torch.randn(1, 4, 16, 16), timestep=torch.tensor(500),
                  encoder_hidden_states=torch.randn(1, 5, 16))
    return model, inputs


def run_concurrently(works: list[Callable[[], object]]) -> list[object]:
    """Run each callable of ``works`` in its own thread, all started together (a barrier), and return their results
    in order; an exception in a thread is raised here."""
    import threading

    results: list[object] = [None] * len(works)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(works))

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = works[i]()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def forward(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Run ``model(**inputs)`` without grad and return the output tensor."""
    with torch.no_grad():
        out = model(**inputs, return_dict=False)
    return out[0]


# ----------------------------------------------------------------------------------------------------
# Tiny full pipelines (random weights, local tokenizer): one per family group.

PIPELINE_NAMES = ("sd", "pixart", "wan", "animatediff")


def tiny_tokenizer(directory: str):
    """A byte-level ``CLIPTokenizer`` written to ``directory`` (514 tokens; no download)."""
    import json
    import os

    from transformers import CLIPTokenizer

    # GPT-2's reversible byte -> printable-unicode map, so every byte is one vocabulary symbol.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(
        os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"), model_max_length=77
    )


def tiny_pipeline(name: str, tmpdir: str, seed: int = 0):
    """A tiny random-weight diffusers pipeline: ``"sd"`` (StableDiffusionPipeline, U-Net), ``"pixart"``
    (PixArtAlphaPipeline, image DiT), ``"wan"`` (WanPipeline, video DiT) or ``"animatediff"`` (AnimateDiffPipeline,
    a U-Net with motion modules). ``tmpdir`` holds the tokenizer files."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    if name not in PIPELINE_NAMES:
        raise ValueError(f"Unknown tiny pipeline {name!r}; choose one of {', '.join(PIPELINE_NAMES)}.")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(tmpdir)
    def kl_vae():
        return diffusers.AutoencoderKL(
            block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        ).eval()

    def clip_text_encoder():
        return CLIPTextModel(CLIPTextConfig(
            vocab_size=514, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )).eval()

    if name == "sd":
        unet, _ = _unet(8, 8, 1, 1, 1)
        return diffusers.StableDiffusionPipeline(
            unet=unet.eval(), vae=kl_vae(), text_encoder=clip_text_encoder(), tokenizer=tokenizer,
            scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    if name == "animatediff":
        unet, _ = _unet(8, 8, 1, 1, 1)
        adapter = diffusers.MotionAdapter(
            block_out_channels=(16, 32), motion_layers_per_block=1, motion_num_attention_heads=2,
            motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False,
        )
        return diffusers.AnimateDiffPipeline(
            unet=unet.eval(), vae=kl_vae(), text_encoder=clip_text_encoder(), tokenizer=tokenizer,
            motion_adapter=adapter.eval(), scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False,
                                                                   beta_schedule="linear"),
        )
    if name == "pixart":
        transformer, _ = _pixart(8, 8, 1, 1, 1)
        vae = kl_vae()
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=514, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=513,
            eos_token_id=513, decoder_start_token_id=513,
        ))
        return diffusers.PixArtAlphaPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae, transformer=transformer.eval(),
            scheduler=diffusers.DPMSolverMultistepScheduler(),
        )
    transformer, _ = _wan(8, 8, 1, 1, 1)
    vae = diffusers.AutoencoderKLWan(
        base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=514, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=513,
        eos_token_id=513, decoder_start_token_id=513,
    ))
    return diffusers.WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), transformer=transformer.eval(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
