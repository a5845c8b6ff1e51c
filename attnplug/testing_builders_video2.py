"""Tiny builders for the newer video denoisers: ``builder(batch) -> (model, inputs)``, keyword inputs shaped as each
pipeline passes them. Latents give a 3 x 16 x 16 token grid; 7 text tokens. Keys with a ``[variant]`` suffix are
other inputs of the same class (Kandinsky 6 image-to-video: a reference frame appended after the frames)."""

from __future__ import annotations

import diffusers
import torch

from .testing_builders_video import TEXT, F, H, W
from .testing_families import tiny


def _kandinsky_rope(frames: int) -> list[torch.Tensor]:
    return [torch.arange(frames), torch.arange(H // 2), torch.arange(W // 2)]


def kandinsky5(batch: int):
    """Kandinsky 5 T2V: channels-last latents ``(B, T, H, W, C)``, text encoder blocks, video self-attention."""
    model = tiny(diffusers.Kandinsky5Transformer3DModel, in_visual_dim=4, out_visual_dim=4, in_text_dim=16,
                 in_text_dim2=8, time_dim=16, model_dim=32, ff_dim=32, axes_dims=(4, 6, 6), visual_cond=True)
    return model, dict(
        hidden_states=torch.randn(batch, F, H, W, 9), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        timestep=torch.tensor([500.0] * batch), pooled_projections=torch.randn(batch, 8),
        visual_rope_pos=_kandinsky_rope(F), text_rope_pos=torch.arange(TEXT),
    )


def _kandinsky6_model():
    return tiny(diffusers.Kandinsky6Transformer3DModel, in_visual_dim=4, out_visual_dim=4, in_text_dim=16,
                in_text_dim2=8, time_dim=16, model_dim=32, ff_dim=32, axes_dims=(4, 6, 6), visual_cond=True,
                in_audio_dim=4, out_audio_dim=4, text_token_padding=True, ca_rope=True, cross_gates=True,
                fix_modulation=True, visual_token_type_num_embeddings=2)


def _kandinsky6_inputs(batch: int, frames: int) -> dict:
    mask = torch.ones(batch, TEXT, dtype=torch.bool)
    mask[:, TEXT - 2:] = False
    return dict(
        hidden_states=torch.randn(batch, frames, H, W, 9), encoder_hidden_states=torch.randn(batch, TEXT, 16),
        pooled_projections=torch.randn(batch, 8), timestep=torch.tensor([500.0] * batch),
        audio_hidden_states=torch.randn(batch, 5, 4), encoder_attention_mask=mask,
    )


def kandinsky6(batch: int):
    """Kandinsky 6 text-to-video-and-audio: video and audio streams, a padded prompt."""
    return _kandinsky6_model(), _kandinsky6_inputs(batch, F)


def kandinsky6_i2v(batch: int):
    """Kandinsky 6 image-to-video: the clean reference frame appended as a last frame of token type 1 that reuses
    the first frame's rotary position."""
    inputs = _kandinsky6_inputs(batch, F + 1)
    types = torch.zeros(batch, F + 1, dtype=torch.long)
    types[:, -1] = 1
    rope = _kandinsky_rope(F)
    rope[0] = torch.cat([rope[0], torch.zeros(1, dtype=torch.long)])
    return _kandinsky6_model(), dict(inputs, visual_token_type_ids=types, visual_rope_pos=tuple(rope))




def wan_animate(batch: int):
    """Wan 2.2 Animate: the reference-character latent frame first, then the generated frames (which get the pose
    latents); noisy latents, conditioning latents and a 4-channel mask concatenated along channels."""
    model = tiny(diffusers.WanAnimateTransformer3DModel, patch_size=(1, 2, 2), num_attention_heads=2,
                 attention_head_dim=12, in_channels=12, latent_channels=4, out_channels=4, text_dim=16, freq_dim=32,
                 ffn_dim=32, image_dim=8, rope_max_seq_len=32, motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8},
                 motion_encoder_size=16, motion_style_dim=8, motion_dim=4, motion_encoder_dim=8,
                 face_encoder_hidden_dim=8, face_encoder_num_heads=2, inject_face_latents_blocks=1,
                 motion_encoder_batch_size=4)
    return model, dict(
        hidden_states=torch.randn(batch, 12, F + 1, H, W), timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_hidden_states_image=torch.randn(batch, 5, 8),
        pose_hidden_states=torch.randn(batch, 4, F, H, W), face_pixel_values=torch.randn(batch, 3, 4 * F - 3, 16, 16),
    )


def joyimage_edit_plus(batch: int):
    """JoyImage Edit Plus: per sample the target patches, then one reference image's (a different size), padded to
    one length, ``(B, N, C, pt, ph, pw)``; a padded prompt."""
    shapes = [[(1, 16, 16), (1, 8, 12)] for _ in range(batch)]
    n = 16 * 16 + 8 * 12 + 4  # 4 padding patches
    mask = torch.ones(batch, TEXT)
    mask[:, TEXT - 2:] = 0
    model = tiny(diffusers.JoyImageEditPlusTransformer3DModel, patch_size=[1, 2, 2], in_channels=4, hidden_size=32,
                 num_attention_heads=2, text_dim=16, rope_dim_list=[4, 6, 6])
    return model, dict(
        hidden_states=torch.randn(batch, n, 4, 1, 2, 2), timestep=torch.tensor([500.0] * batch),
        encoder_hidden_states=torch.randn(batch, TEXT, 16), encoder_hidden_states_mask=mask, shape_list=shapes,
    )


BUILDERS = {
    "Kandinsky5Transformer3DModel": kandinsky5,
    "Kandinsky6Transformer3DModel": kandinsky6,
    "Kandinsky6Transformer3DModel[i2v]": kandinsky6_i2v,
    "WanAnimateTransformer3DModel": wan_animate,
    "JoyImageEditPlusTransformer3DModel": joyimage_edit_plus,
}
