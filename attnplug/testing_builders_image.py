"""Tiny image-denoiser builders: ``builder(batch) -> (model, inputs)``, keyword inputs shaped as each pipeline passes
them. Latents give a 16 x 16 token grid (after patching, wider than
the methods' default windows); 7 text tokens, the last 2 padded where the pipeline masks."""

from __future__ import annotations

import diffusers
import torch

from .testing_families import tiny

TEXT = 7
S = 16  # token grid side; latents are 2 * S for patch-2 models


def _ids(h: int, w: int, axes: int = 3, frame_axis: bool = False) -> torch.Tensor:
    """Flux-style position ids ``(h*w, axes)``: (0, row, col) with 3 axes, (t=0, row, col, 0) with 4."""
    ids = torch.zeros(h, w, axes)
    ids[..., 1 if axes == 3 else 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(-1, axes)


def _mask(batch: int, padded: int = 2) -> torch.Tensor:
    mask = torch.ones(batch, TEXT, dtype=torch.long)
    mask[:, TEXT - padded:] = 0
    return mask


def flux(batch: int):
    model = tiny(diffusers.FluxTransformer2DModel, in_channels=16, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
    return model, dict(
        hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        pooled_projections=torch.randn(batch, 16), timestep=torch.tensor([0.5] * batch),
        img_ids=_ids(S, S), txt_ids=torch.zeros(TEXT, 3),
    )


def chroma(batch: int):
    model = tiny(diffusers.ChromaTransformer2DModel, in_channels=16, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=16, axes_dims_rope=(4, 6, 6), approximator_num_channels=8,
                 approximator_hidden_dim=16, approximator_layers=1)
    return model, dict(
        hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        timestep=torch.tensor([0.5] * batch), img_ids=_ids(S, S), txt_ids=torch.zeros(TEXT, 3),
    )


def flux2(batch: int):
    model = tiny(diffusers.Flux2Transformer2DModel, in_channels=16, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=16, timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4))
    return model, dict(
        hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        timestep=torch.tensor([0.5] * batch), guidance=torch.tensor([3.5] * batch),
        img_ids=_ids(S, S, axes=4).expand(batch, -1, -1), txt_ids=torch.zeros(batch, TEXT, 4),
    )


def qwen_image(batch: int):
    model = tiny(diffusers.QwenImageTransformer2DModel, in_channels=16, out_channels=4, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6))
    return model, dict(
        hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        encoder_hidden_states_mask=_mask(batch), timestep=torch.tensor([0.5] * batch),
        img_shapes=[[(1, S, S)]] * batch,
    )


def z_image(batch: int):
    model = tiny(diffusers.ZImageTransformer2DModel, in_channels=4, dim=32, n_heads=2, n_kv_heads=2,
                 cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
    return model, dict(
        x=[torch.randn(4, 1, 2 * S, 2 * S) for _ in range(batch)], t=torch.tensor([0.5] * batch),
        cap_feats=[torch.randn(TEXT - i, 16) for i in range(batch)],
    )


def pixart(batch: int):
    model = tiny(diffusers.PixArtTransformer2DModel, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                 out_channels=8, cross_attention_dim=32, caption_channels=16, sample_size=2 * S, patch_size=2,
                 norm_num_groups=8)
    return model, dict(
        hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def sd3(batch: int):
    model = tiny(diffusers.SD3Transformer2DModel, sample_size=2 * S, patch_size=2, in_channels=4, out_channels=4,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=32,
                 pooled_projection_dim=16, pos_embed_max_size=32)
    return model, dict(
        hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), pooled_projections=torch.randn(batch, 16),
    )


def dit(batch: int):
    model = tiny(diffusers.DiTTransformer2DModel, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                 out_channels=8, sample_size=2 * S, patch_size=2, norm_num_groups=8, num_embeds_ada_norm=10)
    return model, dict(hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), timestep=torch.tensor([500] * batch),
                       class_labels=torch.tensor([1] * batch))


def unet2d_condition(batch: int):
    model = tiny(diffusers.UNet2DConditionModel, sample_size=S, in_channels=4, out_channels=4,
                 block_out_channels=(16, 32), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                 attention_head_dim=8, norm_num_groups=8)
    return model, dict(sample=torch.randn(batch, 4, S, S), timestep=torch.tensor(500),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def _flux_like(cls, batch: int, pooled: bool = False, **config):
    """A Flux-derived class (double + single stream blocks, packed latents with 3-axis ids)."""
    model = tiny(cls, in_channels=16, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                 axes_dims_rope=(4, 6, 6), **config)
    inputs = dict(hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
                  timestep=torch.tensor([0.5] * batch), img_ids=_ids(S, S), txt_ids=torch.zeros(TEXT, 3))
    if pooled:
        inputs["pooled_projections"] = torch.randn(batch, 16)
    return model, inputs


def bria(batch: int):
    return _flux_like(diffusers.BriaTransformer2DModel, batch, pooled=True, pooled_projection_dim=16)


def longcat_image(batch: int):
    return _flux_like(diffusers.LongCatImageTransformer2DModel, batch, pooled_projection_dim=16)


def ovis_image(batch: int):
    return _flux_like(diffusers.OvisImageTransformer2DModel, batch, out_channels=16)


def _image_4d(batch: int, channels: int = 4) -> torch.Tensor:
    return torch.randn(batch, channels, 2 * S, 2 * S)


def hunyuan_image(batch: int):
    model = tiny(diffusers.HunyuanImageTransformer2DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                 attention_head_dim=16, patch_size=(2, 2), text_embed_dim=16, rope_axes_dim=(8, 8))
    return model, dict(hidden_states=_image_4d(batch), timestep=torch.tensor([500.0] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch))


def _cogview_inputs(batch: int) -> dict:
    size = torch.tensor([[2 * S * 8, 2 * S * 8]] * batch, dtype=torch.float32)
    return dict(hidden_states=_image_4d(batch), encoder_hidden_states=torch.randn(batch, TEXT, 16),
                timestep=torch.tensor([500] * batch), original_size=size, target_size=size,
                crop_coords=torch.zeros(batch, 2))


def cogview4(batch: int):
    model = tiny(diffusers.CogView4Transformer2DModel, in_channels=4, out_channels=4, attention_head_dim=16,
                 num_attention_heads=2, text_embed_dim=16, time_embed_dim=8, condition_dim=4, rope_axes_dim=(4, 4))
    return model, _cogview_inputs(batch)


def cogview3plus(batch: int):
    model = tiny(diffusers.CogView3PlusTransformer2DModel, in_channels=4, out_channels=4, attention_head_dim=16,
                 num_attention_heads=2, text_embed_dim=16, time_embed_dim=8, condition_dim=4, sample_size=2 * S)
    return model, _cogview_inputs(batch)


def auraflow(batch: int):
    model = tiny(diffusers.AuraFlowTransformer2DModel, sample_size=2 * S, in_channels=4, out_channels=4,
                 num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=16, caption_projection_dim=32, pos_embed_max_size=S * S)
    return model, dict(hidden_states=_image_4d(batch), encoder_hidden_states=torch.randn(batch, TEXT, 16),
                       timestep=torch.tensor([500] * batch))


def lumina2(batch: int):
    model = tiny(diffusers.Lumina2Transformer2DModel, sample_size=2 * S, in_channels=4, hidden_size=32,
                 num_attention_heads=2, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6),
                 axes_lens=(64, 64, 64), cap_feat_dim=16)
    return model, dict(hidden_states=_image_4d(batch), timestep=torch.tensor([0.5] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_attention_mask=_mask(batch).bool())


def unet2d(batch: int):
    model = tiny(diffusers.UNet2DModel, sample_size=S, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                 down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
                 layers_per_block=1, attention_head_dim=8, norm_num_groups=8)
    return model, dict(sample=torch.randn(batch, 3, S, S), timestep=torch.tensor([500] * batch))


def transformer2d(batch: int):
    model = tiny(diffusers.Transformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=16,
                 norm_num_groups=8, cross_attention_dim=16)
    return model, dict(hidden_states=torch.randn(batch, 16, S, S), encoder_hidden_states=torch.randn(batch, TEXT, 16))


def prx(batch: int):
    model = tiny(diffusers.PRXTransformer2DModel, in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32,
                 num_heads=2, depth=1, axes_dim=(8, 8))
    return model, dict(hidden_states=_image_4d(batch), timestep=torch.tensor([0.5] * batch),
                       encoder_hidden_states=torch.randn(batch, TEXT, 16))


def hunyuan_dit(batch: int):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    model = tiny(diffusers.HunyuanDiT2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                 patch_size=2, sample_size=2 * S, hidden_size=16, cross_attention_dim=16, cross_attention_dim_t5=16,
                 pooled_projection_dim=8, text_len=TEXT, text_len_t5=TEXT)
    rope = get_2d_rotary_pos_embed(8, ((0, 0), (S, S)), (S, S))
    return model, dict(
        hidden_states=_image_4d(batch), timestep=torch.tensor([500.0] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), text_embedding_mask=_mask(batch).float(),
        encoder_hidden_states_t5=torch.randn(batch, TEXT, 16), text_embedding_mask_t5=_mask(batch).float(),
        image_meta_size=torch.tensor([[2 * S * 8, 2 * S * 8, 2 * S * 8, 2 * S * 8, 0, 0]] * batch).float(),
        style=torch.zeros(batch, dtype=torch.long), image_rotary_emb=rope,
    )


def dreamlite_transformer(batch: int):
    model = tiny(diffusers.DreamLiteTransformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=16,
                 norm_num_groups=8, cross_attention_dim=16)
    return model, dict(hidden_states=torch.randn(batch, 16, S, S), encoder_hidden_states=torch.randn(batch, TEXT, 16))


def bria_fibo(batch: int):
    model, inputs = _flux_like(diffusers.BriaFiboTransformer2DModel, batch, pooled=True, pooled_projection_dim=16,
                               text_encoder_dim=16)
    n_layers = len(model.caption_projection)
    inputs["text_encoder_layers"] = [torch.randn(batch, TEXT, 16) for _ in range(n_layers)]
    return model, inputs


BUILDERS = {
    "BriaFiboTransformer2DModel": bria_fibo,
    "DreamLiteTransformer2DModel": dreamlite_transformer,
    "HunyuanDiT2DModel": hunyuan_dit,
    "PRXTransformer2DModel": prx,
    "AuraFlowTransformer2DModel": auraflow,
    "BriaTransformer2DModel": bria,
    "CogView3PlusTransformer2DModel": cogview3plus,
    "CogView4Transformer2DModel": cogview4,
    "HunyuanImageTransformer2DModel": hunyuan_image,
    "LongCatImageTransformer2DModel": longcat_image,
    "Lumina2Transformer2DModel": lumina2,
    "OvisImageTransformer2DModel": ovis_image,
    "Transformer2DModel": transformer2d,
    "UNet2DModel": unet2d,
    "ChromaTransformer2DModel": chroma,
    "DiTTransformer2DModel": dit,
    "Flux2Transformer2DModel": flux2,
    "FluxTransformer2DModel": flux,
    "PixArtTransformer2DModel": pixart,
    "QwenImageTransformer2DModel": qwen_image,
    "SD3Transformer2DModel": sd3,
    "UNet2DConditionModel": unet2d_condition,
    "ZImageTransformer2DModel": z_image,
}
