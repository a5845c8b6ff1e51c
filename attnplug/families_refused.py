"""The denoiser classes attnplug refuses, each with why: their self-attention is not softmax attention over one
latent token grid with the non-grid tokens on one side (:mod:`attnplug.families` holds the supported ones)."""

from __future__ import annotations

#: class name -> why attnplug refuses it (its self-attention is not softmax attention over a latent token grid).
_LINEAR = (
    "its self-attention is linear (ReLU-kernel) attention, not softmax attention over the token grid, so a softmax "
    "method would replace attention it was not trained with."
)
REFUSED: dict[str, str] = {
    "SanaTransformer2DModel": _LINEAR,
    "SanaVideoTransformer3DModel": _LINEAR,
    "SanaWMTransformer3DModel": _LINEAR,
    "HunyuanVideoFramepackTransformer3DModel": (
        "it packs history latents (clean, 2x and 4x downsampled frames) before the generated frames and text after "
        "them, so the sequence is not one token grid with text on one side."
    ),
    "HeliosTransformer3DModel": (
        "it packs short, mid and long history latents beside the generated frames, so the sequence is not one "
        "token grid."
    ),
    "OmniGenTransformer2DModel": (
        "its sequence interleaves prompt tokens (input_ids) with conditioning image latents and the generated "
        "image, so the tokens are not one latent grid with text on one side."
    ),
    "PRXTransformer2DModel": (
        "its image queries attend to text and image keys in one call (more keys than queries), which is "
        "cross-attention to attnplug: it has no self-attention call over the token grid."
    ),
    "QwenImage21Transformer2DModel": (
        "its attention is block-causal over the vision-language sequence (text interleaved with condition images, "
        "the target image last): the target image's queries attend to the text and condition-image prefix and to "
        "themselves in one call with more keys than queries (QwenImage21AttnProcessor, and every KV-cached step), "
        "or in one flex_attention call under a block-causal BlockMask (QwenImage21FlexAttnProcessor); neither is a "
        "self-attention call over the token grid that attnplug's methods can replace."
    ),
    "Kandinsky6SRTransformer3DModel": (
        "it always runs NABLA sparse attention: the tokens are reordered into 8 x 8 spatial tiles under its own "
        "sliding-tile block mask, so its sequence is not in token-grid order and its attention is already sparse."
    ),
    "WanAnimate2Transformer3DModel": (
        "its generation pass packs the generated tokens into a buffer sized for the whole video and attends to them "
        "and to the reference stream's cached keys in one flex_attention call under its own BlockMask (more keys "
        "than queries), and its reference pass attends over the reference tokens only: neither is a self-attention "
        "call over the generated token grid."
    ),
    "DreamLiteUNetModel": (
        "its pipeline concatenates the conditioning image latents beside the generated latents along the width on "
        "every call, so each token row holds generated and conditioning tokens: not one latent grid with "
        "conditioning tokens on one side."
    ),
    "DreamLiteTransformer2DModel": (
        "it is a sub-block of DreamLiteUNetModel (the transformer inside its down, mid and up blocks), never a "
        "pipeline's denoiser on its own, and that U-Net is refused: its pipeline concatenates the conditioning image "
        "latents beside the generated latents along the width, so this block's tokens are not one latent grid either."
    ),
    "Ideogram4Transformer2DModel": (
        "its one packed sequence marks text and image tokens per position (`indicator` values) and attends under a "
        "(B, 1, L, L) block-diagonal segment mask built on every call, so where the grid tokens sit is known only "
        "from tensor values and every self-attention call carries a full attention mask."
    ),
    "Kandinsky3UNet": (
        "every attention module of its Kandinsky3AttentionBlocks, the image self-attention included, is built with a "
        "context dimension, so diffusers marks all of them is_cross_attention=True and attnplug cannot tell its "
        "self-attention modules from its cross-attention ones."
    ),
    "StableCascadeUNet": (
        "its image queries attend to the image tokens and the CLIP conditioning tokens in one call (keys = "
        "[image, conditioning], more keys than queries), which is cross-attention to attnplug: it has no "
        "self-attention call over the token grid."
    ),
    "BriaFibo2Transformer2DModel": (
        "its joint sequence puts the prompt's gist tokens before the image tokens, or after them when the batch pads "
        "gist tokens (a choice made from the prompt mask's values on every call), and context images after the "
        "image: the non-grid tokens change side per call or sit on both sides of the grid."
    ),
    "NucleusMoEImageTransformer2DModel": (
        "its image queries attend to image and text keys in one call (more keys than queries), which is "
        "cross-attention to attnplug: it has no self-attention call over the token grid."
    ),
    "MiniMaxH3Transformer3DModel": (
        "it scatters text, video and audio tokens into one packed sequence at positions given by index tensors "
        "(`text_indices`, `video_indices`, `audio_indices`), so where the grid tokens sit is known only from "
        "tensor values, not as one grid with the other tokens on one side."
    ),
    "AnyFlowFARTransformer3DModel": (
        "its self-attention is chunk-causal (FAR): the current chunk attends to KV-cached earlier chunks (full and "
        "compressed patches, more keys than queries) or the whole rollout runs under a causal flex BlockMask; "
        "neither is a bidirectional self-attention call over one token grid (AnyFlowTransformer3DModel is)."
    ),
    "SanaWMLTX2RefinerTransformer3DModel": (
        "its chunk-causal self-attention prepends a sliding-window KV cache (attention-sink frames and recent "
        "refined history) to the current block's keys (more keys than queries), so it has no self-attention call "
        "over one token grid."
    ),
    "MochiTransformer3DModel": (
        "its attention modules (MochiAttention) have no settable processor, so attnplug's hooks cannot run its "
        "attention call."
    ),
}
