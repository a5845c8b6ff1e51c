"""Tiny video-denoiser builders: ``builder(batch) -> (model, inputs)``, keyword inputs shaped as each pipeline passes
them. Latents give a 3 x 16 x 16 token grid (after patching); 7 text tokens, the last 2 padded where the pipeline
masks. Keys with a ``[variant]`` suffix are other configurations of the same class (Wan 2.2's I2V and TI2V-5B)."""

from __future__ import annotations

import diffusers
import torch

from .testing_families import tiny

TEXT, F, H, W = 7, 3, 32, 32  # latent frames and pixels; patch 2 gives a (3, 16, 16) token grid


def _mask(batch: int, padded: int = 2) -> torch.Tensor:
    mask = torch.ones(batch, TEXT, dtype=torch.long)
    mask[:, TEXT - padded:] = 0
    return mask


def _wan_inputs(batch: int, channels: int, **extra):
    return dict(hidden_states=torch.randn(batch, channels, F, H, W), timestep=torch.tensor([500] * batch),
                encoder_hidden_states=torch.randn(batch, TEXT, 16), **extra)


_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=32, ffn_dim=32,
            rope_max_seq_len=32)


def wan(batch: int):
    """Wan 2.1 / 2.2 T2V (both A14B experts have this config)."""
    return tiny(diffusers.WanTransformer3DModel, in_channels=4, out_channels=4, **_WAN), _wan_inputs(batch, 4)


def wan_i2v(batch: int):
    """Wan 2.2 I2V A14B: the image condition (mask + first-frame latents) concatenated along channels."""
    return tiny(diffusers.WanTransformer3DModel, in_channels=9, out_channels=4, **_WAN), _wan_inputs(batch, 9)


def wan21_i2v(batch: int):
    """Wan 2.1 I2V: channel-concatenated condition plus CLIP image tokens in cross-attention."""
    model = tiny(diffusers.WanTransformer3DModel, in_channels=9, out_channels=4, image_dim=8, added_kv_proj_dim=24,
                 **_WAN)
    return model, _wan_inputs(batch, 9, encoder_hidden_states_image=torch.randn(batch, 5, 8))


def wan_ti2v(batch: int):
    """Wan 2.2 TI2V-5B: 48 latent channels on a 16x VAE, a per-token timestep."""
    model = tiny(diffusers.WanTransformer3DModel, in_channels=12, out_channels=12, **_WAN)
    inputs = _wan_inputs(batch, 12)
    inputs["timestep"] = torch.full((batch, F * H * W // 4), 500.0)
    return model, inputs


def skyreels_v2(batch: int):
    return tiny(diffusers.SkyReelsV2Transformer3DModel, in_channels=4, out_channels=4, **_WAN), _wan_inputs(batch, 4)


def chronoedit(batch: int):
    return tiny(diffusers.ChronoEditTransformer3DModel, in_channels=4, out_channels=4, **_WAN), _wan_inputs(batch, 4)


def wan_vace(batch: int):
    model = tiny(diffusers.WanVACETransformer3DModel, in_channels=4, out_channels=4, num_layers=2, vace_layers=[0],
                 vace_in_channels=6, **_WAN)
    return model, _wan_inputs(batch, 4, control_hidden_states=torch.randn(batch, 6, F, H, W))


def hunyuan_video(batch: int):
    model = tiny(diffusers.HunyuanVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                 attention_head_dim=10, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
                 rope_axes_dim=(2, 4, 4))
    return model, dict(
        hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), pooled_projections=torch.randn(batch, 8),
        encoder_attention_mask=_mask(batch), guidance=torch.tensor([3500.0] * batch),
    )


def hunyuan_video15(batch: int):
    model = tiny(diffusers.HunyuanVideo15Transformer3DModel, in_channels=9, out_channels=4, num_attention_heads=2,
                 attention_head_dim=16, patch_size=2, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8,
                 rope_axes_dim=(4, 6, 6), task_type="t2v")
    return model, dict(
        hidden_states=torch.randn(batch, 9, F, H, W), timestep=torch.tensor([500.0] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch).float(),
        encoder_hidden_states_2=torch.randn(batch, 5, 8), encoder_attention_mask_2=torch.ones(batch, 5),
        image_embeds=torch.zeros(batch, 4, 8),
    )


def ltx(batch: int):
    model = tiny(diffusers.LTXVideoTransformer3DModel, in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                 num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, caption_channels=16)
    return model, dict(
        hidden_states=torch.randn(batch, F * 256, 8), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        timestep=torch.tensor([500] * batch), encoder_attention_mask=_mask(batch), num_frames=F, height=16, width=16,
    )


def ltx2(batch: int):
    model = tiny(diffusers.LTX2VideoTransformer3DModel, in_channels=8, out_channels=8, num_attention_heads=2,
                 attention_head_dim=8, cross_attention_dim=16, caption_channels=16, audio_in_channels=4,
                 audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
                 audio_cross_attention_dim=16)
    return model, dict(
        hidden_states=torch.randn(batch, F * 256, 8), audio_hidden_states=torch.randn(batch, 5, 4),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), audio_encoder_hidden_states=torch.randn(batch, TEXT, 16),
        timestep=torch.tensor([500.0] * batch), encoder_attention_mask=_mask(batch),
        audio_encoder_attention_mask=_mask(batch), num_frames=F, height=16, width=16, audio_num_frames=5,
    )


def _cogvideox_like(cls, batch: int):
    """A tiny CogVideoX-architecture model of ``cls`` (CogVideoX, ConsisID) and its inputs."""
    model = tiny(cls, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=4,
                 text_embed_dim=16, sample_width=W, sample_height=H, sample_frames=F, patch_size=2,
                 temporal_compression_ratio=1, max_text_seq_length=TEXT)
    return model, dict(hidden_states=torch.randn(batch, F, 4, H, W), timestep=torch.tensor([500] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def cogvideox(batch: int):
    return _cogvideox_like(diffusers.CogVideoXTransformer3DModel, batch)


def mochi(batch: int):
    model = tiny(diffusers.MochiTransformer3DModel, patch_size=2, num_attention_heads=2, attention_head_dim=8,
                 pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=4)
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch))


def unet_motion(batch: int):
    model = tiny(diffusers.UNetMotionModel, sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                 layers_per_block=1, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                 up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=16,
                 num_attention_heads=2, norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=32,
                 use_motion_mid_block=False)
    return model, dict(sample=torch.randn(batch, 4, F, 16, 16), timestep=torch.tensor(500),
                       encoder_hidden_states=torch.randn(batch * F, TEXT, 16))


def unet3d(batch: int):
    model = tiny(diffusers.UNet3DConditionModel, sample_size=16, in_channels=4, out_channels=4,
                 block_out_channels=(16, 32), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D",
                                                                                         "CrossAttnUpBlock3D"),
                 cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8)
    return model, dict(sample=torch.randn(batch, 4, F, 16, 16), timestep=torch.tensor(500),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def cosmos(batch: int):
    model = tiny(diffusers.CosmosTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                 attention_head_dim=12, text_embed_dim=16, adaln_lora_dim=4, max_size=(F, H, W),
                 patch_size=(1, 2, 2), concat_padding_mask=False)
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500.0] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16), fps=24)


def allegro(batch: int):
    model = tiny(diffusers.AllegroTransformer3DModel, patch_size=2, patch_size_t=1, num_attention_heads=2,
                 attention_head_dim=8, in_channels=4, out_channels=4, cross_attention_dim=16, sample_height=H,
                 sample_width=W, sample_frames=F, caption_channels=16)
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def latte(batch: int):
    model = tiny(diffusers.LatteTransformer3DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                 out_channels=8, num_layers=1, cross_attention_dim=16, sample_size=H, patch_size=2,
                 norm_type="ada_norm_single", caption_channels=16, video_length=F)
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def easyanimate(batch: int):
    model = tiny(diffusers.EasyAnimateTransformer3DModel, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                 out_channels=4, patch_size=2, sample_width=W, sample_height=H, num_layers=1, mmdit_layers=1,
                 time_embed_dim=8, text_embed_dim=16)
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def svd(batch: int):
    model = tiny(diffusers.UNetSpatioTemporalConditionModel, sample_size=16, in_channels=8, out_channels=4,
                 down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                 up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                 block_out_channels=(32, 64), addition_time_embed_dim=4, projection_class_embeddings_input_dim=12,
                 layers_per_block=1, cross_attention_dim=16, num_attention_heads=(2, 2), num_frames=F)
    return model, dict(sample=torch.randn(batch, F, 8, 16, 16), timestep=torch.tensor(500.0),
                       encoder_hidden_states=torch.randn(batch, 1, 16), added_time_ids=torch.randn(batch, 3))


def framepack(batch: int):
    model = tiny(diffusers.HunyuanVideoFramepackTransformer3DModel, in_channels=4, out_channels=4,
                 num_attention_heads=2, attention_head_dim=10, patch_size=2, patch_size_t=1, text_embed_dim=16,
                 pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None, has_image_proj=True,
                 image_proj_dim=8, has_clean_x_embedder=True)
    clean = torch.randn(batch, 4, 1, H, W)
    return model, dict(
        hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch),
        pooled_projections=torch.randn(batch, 8), image_embeds=torch.randn(batch, 4, 8),
        indices_latents=torch.arange(F), guidance=torch.tensor([3500.0] * batch),
        latents_clean=clean, indices_latents_clean=torch.tensor([F]),
        latents_history_2x=torch.randn(batch, 4, 2, H, W), indices_latents_history_2x=torch.tensor([F + 1, F + 2]),
        latents_history_4x=torch.randn(batch, 4, 4, H, W), indices_latents_history_4x=torch.arange(F + 3, F + 7),
    )


def i2vgen_xl(batch: int):
    model = tiny(diffusers.I2VGenXLUNet, sample_size=16, in_channels=4, out_channels=4,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D",
                                                                                         "CrossAttnUpBlock3D"),
                 block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                 attention_head_dim=8, num_attention_heads=None)
    return model, dict(sample=torch.randn(batch, 4, F, 16, 16), timestep=torch.tensor(500), fps=torch.tensor([16]),
                       image_latents=torch.randn(batch, 4, F, 16, 16), image_embeddings=torch.randn(batch, 16),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def motif_video(batch: int):
    model = tiny(diffusers.MotifVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                 attention_head_dim=16, patch_size=2, text_embed_dim=16, rope_axes_dim=(4, 6, 6))
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500.0] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch))


def consisid(batch: int):
    return _cogvideox_like(diffusers.ConsisIDTransformer3DModel, batch)


def anyflow(batch: int):
    model = tiny(diffusers.AnyFlowTransformer3DModel, in_channels=4, out_channels=4, patch_size=(1, 2, 2),
                 num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=32, ffn_dim=32,
                 rope_max_seq_len=32)
    inputs = _wan_inputs(batch, 4, r_timestep=torch.full((batch, F), 250.0))
    inputs["timestep"] = torch.full((batch, F), 500.0)  # one timestep per latent frame
    inputs["hidden_states"] = inputs["hidden_states"].transpose(1, 2)  # AnyFlow takes (B, F, C, H, W)
    return model, inputs


def joyimage_edit(batch: int):
    model = tiny(diffusers.JoyImageEditTransformer3DModel, patch_size=[1, 2, 2], in_channels=4, hidden_size=32,
                 num_attention_heads=2, text_dim=16, rope_dim_list=[4, 6, 6])
    return model, dict(hidden_states=torch.randn(batch, 4, F, H, W), timestep=torch.tensor([500.0] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


BUILDERS = {
    "AnyFlowTransformer3DModel": anyflow,
    "JoyImageEditTransformer3DModel": joyimage_edit,
    "ConsisIDTransformer3DModel": consisid,
    "I2VGenXLUNet": i2vgen_xl,
    "MotifVideoTransformer3DModel": motif_video,
    "AllegroTransformer3DModel": allegro,
    "CosmosTransformer3DModel": cosmos,
    "EasyAnimateTransformer3DModel": easyanimate,
    "HunyuanVideoFramepackTransformer3DModel": framepack,
    "LatteTransformer3DModel": latte,
    "UNetSpatioTemporalConditionModel": svd,
    "ChronoEditTransformer3DModel": chronoedit,
    "CogVideoXTransformer3DModel": cogvideox,
    "HunyuanVideo15Transformer3DModel": hunyuan_video15,
    "HunyuanVideoTransformer3DModel": hunyuan_video,
    "LTX2VideoTransformer3DModel": ltx2,
    "LTXVideoTransformer3DModel": ltx,
    "MochiTransformer3DModel": mochi,
    "SkyReelsV2Transformer3DModel": skyreels_v2,
    "UNet3DConditionModel": unet3d,
    "UNetMotionModel": unet_motion,
    "WanTransformer3DModel": wan,
    "WanTransformer3DModel[i2v]": wan_i2v,
    "WanTransformer3DModel[wan21-i2v]": wan21_i2v,
    "WanTransformer3DModel[ti2v]": wan_ti2v,
    "WanVACETransformer3DModel": wan_vace,
}
