"""Long video end to end on the flagship video pipelines (tiny random-config builds of the real diffusers classes):
Wan 2.2 I2V (two experts, the image condition concatenated along channels), Wan 2.2 TI2V-5B (48 latent channels
on the 16x VAE, per-token timesteps) and HunyuanVideo 1.5 (its 16x VAE, a padded prompt). At 4x a small training
length, the defaults put RIFLEx on every denoiser's rotary module and the temporal windows on every denoiser during
the call, the video has the requested frames, and afterwards every denoiser is stock (no hook, no instance
``forward``, no attention method)."""

import inspect
import types

import diffusers
import diffusers.pipelines.wan.pipeline_wan_i2v as wan_i2v_module
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from transformers import UMT5Config, UMT5EncoderModel

import attnplug
from attnplug.pipelines import LongVideoConfig, long_video, long_video_plan
from attnplug.pipelines._long_video.rope import HOOK_NAME
from attnplug.testing import tiny_tokenizer
from attnplug.testing_families import tiny

TRAIN = 5  # video frames: 2 latent frames at the Wan VAE's 4x temporal compression
FRAMES = 29  # 8 latent frames: 4x the training length
STEPS = 4  # global_steps=0.75 keeps 3 dense: the last step runs the windows
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


def _left_behind(model) -> list[str]:
    """Modules of ``model`` that still carry a hook or an instance ``forward`` (the empty registry that diffusers'
    ``cache_context`` puts on the denoiser is the pipeline's own)."""
    return [name or "<root>" for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks or "forward" in m.__dict__]


BUILDS = {"wan22-i2v": _wan22_i2v, "wan22-ti2v-5b": _wan22_ti2v, "hunyuanvideo15": _hunyuan15}
FAMILY = {"wan22-i2v": "wan", "wan22-ti2v-5b": "wan", "hunyuanvideo15": "hunyuanvideo15"}


def _run(name, tmp_path, monkeypatch):
    """The pipeline, its denoisers, the video, and per step: (RIFLEx hook on the rotary module, attention method) of
    each denoiser, and the windowed self-attention calls so far (summed over the denoisers)."""
    if not hasattr(wan_i2v_module, "ftfy"):  # the I2V pipeline cleans prompts with ftfy unguarded; not installed here
        monkeypatch.setattr(wan_i2v_module, "ftfy", types.SimpleNamespace(fix_text=lambda s: s), raising=False)
    pipe, inputs = BUILDS[name](tmp_path)
    experts = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
    config = LongVideoConfig(train_frames=TRAIN)
    plan = long_video_plan(pipe, FRAMES, config)
    assert plan.family == FAMILY[name] and plan.train_latent == 2 and plan.latent_frames == 8
    assert plan.rope == "riflex" and plan.position_scale == pytest.approx(3.0)
    assert plan.temporal_windows and plan.window == 2 and plan.stride == 1 and plan.global_steps == 0.75
    seen, windowed = [], []

    def on_step(p, *rest):
        seen.append([(getattr(m.rope, "_diffusers_hook", None) is not None
                      and m.rope._diffusers_hook.get_hook(HOOK_NAME) is not None,
                      type(attnplug.method_of(m)).__name__) for m in experts])
        report = attnplug.stats(p)["method_report"]
        parts = list(report.values()) if len(experts) > 1 else [report]
        windowed.append(sum(r["windows: window"] for r in parts))
        return rest[-1] if rest else None  # callback_on_step_end(pipe, i, t, kwargs) returns the kwargs

    prompt = None if "prompt_embeds" in inputs else "red circle moving right"
    handle = None
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        inputs["callback_on_step_end"] = on_step
    else:  # HunyuanVideo 1.5 takes no step callback: observe after each (single-pass) denoiser call
        handle = pipe.transformer.register_forward_hook(lambda m, a, o: on_step(pipe))
    try:
        out = long_video(pipe, prompt, num_frames=FRAMES, config=config, num_inference_steps=STEPS,
                         output_type="pt", generator=torch.Generator().manual_seed(0), **inputs)
    finally:
        if handle is not None:
            handle.remove()
    return pipe, experts, out, seen, windowed


@pytest.mark.parametrize("name", list(BUILDS))
def test_defaults_at_4x_run_end_to_end_then_every_denoiser_is_stock(name, tmp_path, monkeypatch):
    pipe, experts, out, seen, windowed = _run(name, tmp_path, monkeypatch)
    assert out.frames.shape[:2] == (1, FRAMES)
    assert torch.isfinite(out.frames).all()
    assert len(seen) == STEPS and all(s == [(True, "TemporalWindowMethod")] * len(experts) for s in seen)
    assert windowed[STEPS - 2] == 0  # global_steps=0.75: the first three of the four steps run dense
    if len(experts) == 1:
        assert windowed[-1] > 0  # and the last one runs the windows
    for model in experts:
        assert attnplug.method_of(model) is None
        assert _left_behind(model) == []
    assert attnplug.method_of(pipe) is None


@pytest.mark.xfail(strict=True, reason="Wan 2.2 I2V (diffusers 0.42) gives its CacheContext no step_index, so each "
                   "expert counts the steps from its own first call: transformer_2 never reaches the dense phase's "
                   "end (step 3 of 4) and the windows never run")
def test_wan22_i2v_defaults_window_the_last_step(tmp_path, monkeypatch):
    *_, windowed = _run("wan22-i2v", tmp_path, monkeypatch)
    assert windowed[-1] > 0
