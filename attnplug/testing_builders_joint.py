"""Tiny builders for the newer joint-attention image denoisers: ``builder(batch) -> (model, inputs)``, keyword
inputs shaped as each pipeline passes them. Latents give a 16 x 16 token grid; 7 text tokens."""

from __future__ import annotations

import diffusers
import torch

from .testing_builders_image import TEXT, S, _ids, _mask
from .testing_families import tiny


def flux3(batch: int):
    """Flux 3: per-mode blocks (text, image), then joint blocks over [text, image]; ids ``(t, h, w, l)``."""
    model = tiny(diffusers.Flux3Transformer2DModel, in_channels=16, cond_in_channels=16, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=16, timestep_channels=16, axes_dims_rope=(4, 4, 4, 4))
    txt_ids = torch.zeros(TEXT, 4)
    txt_ids[:, 3] = torch.arange(TEXT)
    return model, dict(
        hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        timestep=torch.tensor([0.5] * batch), img_ids=_ids(S, S, axes=4), txt_ids=txt_ids,
    )


def hidream(batch: int):
    """HiDream-I1: square latents ``(B, C, H, W)``, T5 and per-block Llama-3 layers as text (image first)."""
    model = tiny(diffusers.HiDreamImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4,
                 attention_head_dim=16, num_attention_heads=2, caption_channels=[16, 8], text_emb_dim=8,
                 num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(4, 6, 6), max_resolution=(64, 64),
                 llama_layers=[0, 1])
    return model, dict(
        hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), timesteps=torch.tensor([500] * batch),
        encoder_hidden_states_t5=torch.randn(batch, TEXT, 16),
        encoder_hidden_states_llama3=torch.randn(2, batch, TEXT, 8), pooled_embeds=torch.randn(batch, 8),
    )


def lumina_next(batch: int):
    """Lumina-Next: ``(B, C, H, W)`` latents, image-only self-attention (an all-ones patch mask expanded to
    ``(B, heads, N, N)``), text through a gated cross-attention; proportional attention as the pipeline sets it."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    model = tiny(diffusers.LuminaNextDiT2DModel, sample_size=2 * S, patch_size=2, in_channels=4, hidden_size=32,
                 num_attention_heads=2, num_kv_heads=2, multiple_of=16, cross_attention_dim=16)
    return model, dict(
        hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), timestep=torch.tensor([0.5] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_mask=_mask(batch),
        image_rotary_emb=get_2d_rotary_pos_embed_lumina(16, 64, 64),
        cross_attention_kwargs={"base_sequence_length": S * S},
    )


def krea2(batch: int):
    """Krea 2: stacked text-encoder layers fused by its own text blocks, then [text, image] with position ids over the
    whole sequence and a padded prompt (key-padding mask)."""
    model = tiny(diffusers.Krea2Transformer2DModel, in_channels=16, attention_head_dim=16, num_attention_heads=2,
                 num_key_value_heads=1, intermediate_size=32, timestep_embed_dim=16, text_hidden_dim=16,
                 text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
                 axes_dims_rope=(4, 6, 6))
    ids = torch.cat([torch.zeros(TEXT, 3), _ids(S, S)])
    return model, dict(
        hidden_states=torch.randn(batch, S * S, 16), encoder_hidden_states=torch.randn(batch, TEXT, 1, 16),
        timestep=torch.tensor([0.5] * batch), position_ids=ids, encoder_attention_mask=_mask(batch).bool(),
    )


def ernie_image(batch: int):
    """ERNIE-Image: ``(B, C, H, W)`` latents, then [image, text], the padded text masked as keys (``text_lens``)."""
    model = tiny(diffusers.ErnieImageTransformer2DModel, hidden_size=32, num_attention_heads=2, ffn_hidden_size=32,
                 in_channels=4, out_channels=4, patch_size=2, text_in_dim=16, rope_axes_dim=(4, 6, 6))
    return model, dict(
        hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), timestep=torch.tensor([500.0] * batch),
        text_bth=torch.randn(batch, TEXT, 16), text_lens=torch.tensor([TEXT - 2 - i % 2 for i in range(batch)]),
    )


def glm_image(batch: int):
    """GLM-Image text-to-image: [glyph text, image], the autoregressive prior's tokens added to the image tokens."""
    model = tiny(diffusers.GlmImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4,
                 attention_head_dim=16, num_attention_heads=2, text_embed_dim=16, time_embed_dim=16, condition_dim=4,
                 prior_vq_quantizer_codebook_size=32)
    size = torch.tensor([[2 * S * 8, 2 * S * 8]] * batch, dtype=torch.float32)
    return model, dict(
        hidden_states=torch.randn(batch, 4, 2 * S, 2 * S), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        prior_token_id=torch.randint(0, 32, (batch, S * S)), prior_token_drop=torch.zeros(batch, S * S).bool(),
        timestep=torch.tensor([500.0] * batch), target_size=size, crop_coords=torch.zeros(batch, 2),
    )


def amused(batch: int):
    """aMUSEd (UVit2D): masked VQ token ids ``(B, H, W)`` passed positionally, downsampled 2x before the transformer
    layers (their self-attention sees a 16 x 16 grid); the U-ViT blocks attend to the text only."""
    model = tiny(diffusers.UVit2DModel, hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=4,
                 micro_cond_embed_dim=20, encoder_hidden_size=16, vocab_size=40, codebook_size=32, in_channels=16,
                 block_out_channels=16, downsample=True, upsample=True, block_num_heads=2, num_attention_heads=2,
                 intermediate_size=32, sample_size=2 * S)
    return model, dict(
        input_ids=torch.randint(0, 40, (batch, 2 * S, 2 * S)), micro_conds=torch.randn(batch, 5),
        pooled_text_emb=torch.randn(batch, 16), encoder_hidden_states=torch.randn(batch, TEXT, 16),
    )


BUILDERS = {
    "Flux3Transformer2DModel": flux3,
    "HiDreamImageTransformer2DModel": hidream,
    "LuminaNextDiT2DModel": lumina_next,
    "Krea2Transformer2DModel": krea2,
    "ErnieImageTransformer2DModel": ernie_image,
    "GlmImageTransformer2DModel": glm_image,
    "UVit2DModel": amused,
}
