"""Long video end to end on the flagship video pipelines (tiny random-config builds of the real diffusers classes):
Wan 2.2 I2V (two experts, the image condition concatenated along channels), Wan 2.2 TI2V-5B (48 latent channels
on the 16x VAE, per-token timesteps), HunyuanVideo 1.5 (its 16x VAE, a padded prompt) and LTX-2 (video and audio
streams, text connectors). At 4x a small training length, the defaults put RIFLEx on every denoiser's rotary module
and (except on LTX-2) the long sparse pattern on every denoiser during the call, running in the last quarter of the
steps (the first three quarters dense, ``LONG_GLOBAL_STEPS``; with ``sparse=None`` the temporal windows, likewise),
the video has the requested frames, and afterwards every denoiser is stock (no hook, no instance
``forward``, no attention method)."""

import inspect
import types

import diffusers
import diffusers.pipelines.wan.pipeline_wan_i2v as wan_i2v_module
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from transformers import UMT5Config, UMT5EncoderModel

import attnplug
from attnplug.pipelines import LongVideoConfig, long_video, long_video_plan
from attnplug.pipelines._long_video.config import LONG_GLOBAL_STEPS
from attnplug.pipelines._long_video.rope import HOOK_NAME
from attnplug.testing import tiny_tokenizer
from attnplug.testing_families import tiny

TRAIN = 5  # video frames: 2 latent frames at a 4x temporal compression (3 at LTX-2's tiny VAE's 2x)
# global_steps=0.75 (the windows and the long pattern) keeps 3 dense: the last step runs them
STEPS = 4
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=32, ffn_dim=32,
            num_layers=1, rope_max_seq_len=32)


def _text_encoder():
    return UMT5EncoderModel(UMT5Config(
        vocab_size=514, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=513, eos_token_id=513,
        decoder_start_token_id=513,
    )).eval()


def _wan22_i2v(tmp_path):
    """Wan 2.2 I2V A14B: two experts split at ``boundary_ratio``, no image encoder (the A14B experts take no CLIP
    tokens); the transformer input is noise (z) + the 4-frame mask (r) + the first frame's latents (z)."""
    torch.manual_seed(0)
    z = 4
    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * z,
                                     latents_std=[1.0] * z).eval()
    experts = [diffusers.WanTransformer3DModel(in_channels=2 * z + 4, out_channels=z, **_WAN).eval() for _ in "ab"]
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=tiny_tokenizer(str(tmp_path)), text_encoder=_text_encoder(), vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=experts[0],
        transformer_2=experts[1], boundary_ratio=0.9,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(image=torch.rand(3, 16, 16), height=16, width=16)


def _wan22_ti2v(tmp_path):
    """Wan 2.2 TI2V-5B: one transformer on the 2.2 VAE (z_dim 48, patch 2, 16x spatial compression, residual
    blocks), ``expand_timesteps`` (a timestep per latent token)."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1],
                                     num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                                     in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                                     latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    pipe = diffusers.WanPipeline(
        tokenizer=tiny_tokenizer(str(tmp_path)), text_encoder=_text_encoder(), vae=vae,
        transformer=diffusers.WanTransformer3DModel(in_channels=48, out_channels=48, **_WAN).eval(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0), expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(height=32, width=32)


def _hunyuan15(tmp_path):
    """HunyuanVideo 1.5 T2V: the 16x VAE, the transformer's input the noise + zero image-condition latents + a mask
    channel, the prompt as embeddings of both text encoders (a padded first one), one pass per step (guidance 1)."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8,) * 5,
                                                layers_per_block=1).eval()
    transformer = tiny(diffusers.HunyuanVideo15Transformer3DModel, in_channels=9, out_channels=4,
                       num_attention_heads=2, attention_head_dim=16, patch_size=1, text_embed_dim=16,
                       text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(4, 6, 6), task_type="t2v").eval()
    pipe = diffusers.HunyuanVideo15Pipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None, tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=1.0),
    )
    pipe.set_progress_bar_config(disable=True)
    mask = torch.ones(1, 7)
    mask[:, 5:] = 0
    return pipe, dict(height=32, width=32, prompt_embeds=torch.randn(1, 7, 16), prompt_embeds_mask=mask,
                      prompt_embeds_2=torch.randn(1, 5, 8), prompt_embeds_mask_2=torch.ones(1, 5))


def _ltx2(tmp_path):
    """LTX-2 (video and audio streams): the video VAE (2x temporal compression at this size), the audio VAE and
    vocoder, the text connectors fed Gemma-like stacked hidden states (2 layers of 32, a left-padded prompt), one
    pass per step (every guidance off)."""
    torch.manual_seed(0)
    transformer = diffusers.LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, qk_norm="rms_norm_across_heads",
        caption_channels=32, rope_double_precision=False, rope_type="split").eval()
    connectors = LTX2TextConnectors(
        caption_channels=32, text_proj_in_factor=2, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split").eval()
    vae = diffusers.AutoencoderKLLTX2Video(
        latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,), layers_per_block=(1,),
        decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False), downsample_type=("spatial",), upsample_residual=(False,),
        upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
        decoder_causal=False).eval()
    audio_vae = diffusers.AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", mid_block_add_attention=False,
        sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8).eval()
    vocoder = LTX2Vocoder(in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          output_sampling_rate=16000).eval()
    pipe = diffusers.LTX2Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None,
        tokenizer=None, connectors=connectors, transformer=transformer, vocoder=vocoder,
    )
    pipe.set_progress_bar_config(disable=True)
    mask = torch.ones(1, 8)
    mask[:, :2] = 0
    off = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0,
               audio_stg_scale=0.0, audio_modality_scale=1.0, audio_guidance_rescale=0.0,
               spatio_temporal_guidance_blocks=None, use_cross_timestep=False)
    return pipe, dict(height=32, width=32, frame_rate=25.0, prompt_embeds=torch.randn(1, 8, 64),
                      prompt_attention_mask=mask, **off)


def _left_behind(model) -> list[str]:
    """Modules of ``model`` that still carry a hook or an instance ``forward`` (the empty registry that diffusers'
    ``cache_context`` puts on the denoiser is the pipeline's own)."""
    return [name or "<root>" for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks or "forward" in m.__dict__]


BUILDS = {"wan22-i2v": _wan22_i2v, "wan22-ti2v-5b": _wan22_ti2v, "hunyuanvideo15": _hunyuan15, "ltx2": _ltx2}
# name -> (family, video frames at 4x TRAIN, training latent frames, whether the family's default recipe runs the
# long pattern, or without it (sparse=None) the temporal windows)
SPEC = {"wan22-i2v": ("wan", 29, 2, True), "wan22-ti2v-5b": ("wan", 29, 2, True),
        "hunyuanvideo15": ("hunyuanvideo15", 29, 2, True), "ltx2": ("ltx2", 23, 3, False)}


def _run(name, tmp_path, monkeypatch, sparse="auto"):
    """The pipeline, its denoisers, the video, the plan, and per step: (RIFLEx hook on the rotary module, attention
    method) of each denoiser, the windowed self-attention calls so far and the long pattern's sparse calls so far
    (each summed over the denoisers), and the self-attention calls each denoiser's method ran so far."""
    if not hasattr(wan_i2v_module, "ftfy"):  # the I2V pipeline cleans prompts with ftfy unguarded; not installed here
        monkeypatch.setattr(wan_i2v_module, "ftfy", types.SimpleNamespace(fix_text=lambda s: s), raising=False)
    pipe, inputs = BUILDS[name](tmp_path)
    experts = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
    family, frames, train_latent, default_on = SPEC[name]
    config = LongVideoConfig(train_frames=TRAIN, sparse=sparse)
    plan = long_video_plan(pipe, frames, config)
    assert plan.family == family and plan.train_latent == train_latent and plan.latent_frames == 4 * train_latent
    assert plan.rope == "riflex" and plan.position_scale == pytest.approx(4.0)  # the extension
    # LTX and LTX-2 keep both off by default
    assert plan.long_sparse is (default_on and sparse == "auto")
    assert plan.temporal_windows is (default_on and sparse is None)
    if plan.temporal_windows:
        assert plan.window == train_latent and plan.stride == 1 and plan.global_steps == 0.75
    if plan.long_sparse:
        assert plan.global_steps == LONG_GLOBAL_STEPS and plan.sparse.train_latent_frames == train_latent
    seen, windowed, sparse_calls, ran = [], [], [], []

    def on_step(p, *rest):
        seen.append([(getattr(m.rope, "_diffusers_hook", None) is not None
                      and m.rope._diffusers_hook.get_hook(HOOK_NAME) is not None,
                      type(attnplug.method_of(m)).__name__) for m in experts])
        report = attnplug.stats(p).get("method_report", {})
        parts = list(report.values()) if len(experts) > 1 else [report]
        windowed.append(sum(r.get("windows: window", 0) for r in parts))
        sparse_calls.append(sum(r.get("sparse_calls", 0) for r in parts if r.get("pattern") == "long"))
        ran.append([attnplug.stats(m).get("self", {}).get("method", 0) for m in experts])
        return rest[-1] if rest else None  # callback_on_step_end(pipe, i, t, kwargs) returns the kwargs

    prompt = None if "prompt_embeds" in inputs else "red circle moving right"
    handle = None
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        inputs["callback_on_step_end"] = on_step
    else:  # HunyuanVideo 1.5 takes no step callback: observe after each (single-pass) denoiser call
        handle = pipe.transformer.register_forward_hook(lambda m, a, o: on_step(pipe))
    try:
        out = long_video(pipe, prompt, num_frames=frames, config=config, num_inference_steps=STEPS,
                         output_type="pt", generator=torch.Generator().manual_seed(0), **inputs)
    finally:
        if handle is not None:
            handle.remove()
    return pipe, experts, out, seen, windowed, sparse_calls, frames, plan, ran


def _check_stock_after(pipe, experts) -> None:
    for model in experts:
        assert attnplug.method_of(model) is None
        assert _left_behind(model) == []
    assert attnplug.method_of(pipe) is None


@pytest.mark.parametrize("name", list(BUILDS))
def test_defaults_at_4x_run_end_to_end_then_every_denoiser_is_stock(name, tmp_path, monkeypatch):
    pipe, experts, out, seen, windowed, sparse_calls, frames, plan, ran = _run(name, tmp_path, monkeypatch)
    assert out.frames.shape[:2] == (1, frames)
    assert torch.isfinite(out.frames).all()
    method = "SparseVideoMethod" if plan.long_sparse else "NoneType"
    assert len(seen) == STEPS and all(s == [(True, method)] * len(experts) for s in seen)
    assert not any(windowed)  # no temporal windows
    if plan.long_sparse:
        dense = round(LONG_GLOBAL_STEPS * STEPS)  # rounded like Schedule(warmup_steps=LONG_GLOBAL_STEPS)
        assert 0 < dense < STEPS
        # the dense first steps: no denoiser ran the pattern
        assert not any(sparse_calls[:dense]) and all(r == [0] * len(experts) for r in ran[:dense])
        # then the pattern on every later step
        assert all(sparse_calls[i] > sparse_calls[i - 1] for i in range(dense, STEPS))
    else:
        assert not any(sparse_calls)
    _check_stock_after(pipe, experts)


@pytest.mark.parametrize("name", [name for name, spec in SPEC.items() if spec[3] and name != "wan22-i2v"])
def test_without_the_pattern_the_windows_run_the_last_step_then_every_denoiser_is_stock(name, tmp_path, monkeypatch):
    pipe, experts, out, seen, windowed, sparse_calls, frames, plan, _ = _run(name, tmp_path, monkeypatch, sparse=None)
    assert out.frames.shape[:2] == (1, frames) and torch.isfinite(out.frames).all()
    assert len(seen) == STEPS and all(s == [(True, "TemporalWindowMethod")] * len(experts) for s in seen)
    assert windowed[STEPS - 2] == 0 and windowed[-1] > 0  # global_steps=0.75: the last of the four steps windowed
    assert not any(sparse_calls)
    _check_stock_after(pipe, experts)


def test_wan22_i2v_windows_reach_the_last_step(tmp_path, monkeypatch):
    """Wan 2.2 I2V (diffusers 0.42) gives its CacheContext no step_index: the experts follow the pipeline's one step
    count, so with the windows (sparse=None) transformer_2 (the low-noise steps) reaches the dense phase's end (step 3
    of 4) and runs them; both experts carry the window method on every step, and are stock afterwards."""
    pipe, experts, _, seen, windowed, _, _, _, ran = _run("wan22-i2v", tmp_path, monkeypatch, sparse=None)
    assert len(seen) == STEPS and all(s == [(True, "TemporalWindowMethod")] * 2 for s in seen)
    assert windowed[STEPS - 2] == 0 and windowed[-1] > 0
    assert ran[STEPS - 2] == [0, 0] and ran[-1][0] == 0 and ran[-1][1] > 0  # the last step: transformer_2's
    _check_stock_after(pipe, experts)
