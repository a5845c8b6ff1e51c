"""Long video: frame-count checks, FreeNoise noise, the temporal-window method vs a masked dense reference, RIFLEx
hooks (applied per family, removed exactly), the model stock after a call that raised."""

import importlib
import logging

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods import AttentionMethod
from attnplug.pipelines import LongVideoConfig, long_video
from attnplug.pipelines._long_video.api import check_num_frames
from attnplug.pipelines._long_video.attention import frame_weights, temporal_window_attention, window_starts
from attnplug.pipelines._long_video.config import LONG_GLOBAL_STEPS
from attnplug.pipelines._long_video.noise import rescheduled_noise
from attnplug.pipelines._long_video.rope import apply_riflex, remove_riflex, riflex_plan
from attnplug.pipelines._long_video.vstar import TemporalBandMethod, band_bias
from attnplug.reasons import register
from attnplug.testing import forward, tiny_model


def test_invalid_frame_count_lists_valid_counts():
    with pytest.raises(ValueError, match=r"4k \+ 1.*29, 33"):
        check_num_frames(32, 4, "WanPipeline")
    check_num_frames(33, 4)
    check_num_frames(32, 1)


def test_noise_deterministic_and_windows_repeated():
    a = rescheduled_noise((2, 3, 20, 4, 4), 2, 8, [torch.Generator().manual_seed(s) for s in (0, 1)])
    b = rescheduled_noise((2, 3, 20, 4, 4), 2, 8, [torch.Generator().manual_seed(s) for s in (0, 1)])
    c = rescheduled_noise((2, 3, 20, 4, 4), 2, 8, [torch.Generator().manual_seed(s) for s in (2, 1)])
    assert torch.equal(a, b) and not torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    for video in a:
        base = video[:, :8]
        for start in (8, 16):
            block = video[:, start:start + 8]
            for i in range(block.shape[1]):  # every frame of a later block is one of the base frames
                assert sum(bool((block[:, i] == base[:, j]).all()) for j in range(8)) == 1
        assert not torch.equal(video[:, 8:16], base)  # shuffled, not a plain repeat


@pytest.mark.parametrize("frames,text", [(11, 0), (9, 3)])
def test_window_method_matches_masked_dense_reference(frames, text):
    torch.manual_seed(0)
    layout = TokenLayout(frames, 2, 3, text_tokens=text)
    q, k, v = (torch.randn(2, 3, layout.num_tokens, 8) for _ in range(3))  # fp32: fusion accumulates in fp32
    out = temporal_window_attention(q, k, v, layout, window=4, stride=2, weighting="pyramid")
    hw = 6
    acc = torch.zeros(2, 3, frames * hw, 8, )
    total = torch.zeros(frames * hw, 1, )
    w = frame_weights(4, "pyramid")
    for s in window_starts(frames, 4, 2):
        keep = torch.zeros(layout.num_tokens, dtype=torch.bool)
        keep[s * hw:(s + 4) * hw] = True
        keep[frames * hw:] = True  # text keys stay visible
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.expand(layout.num_tokens, -1))
        wt = torch.zeros(frames * hw, 1, )
        wt[s * hw:(s + 4) * hw, 0] = w.repeat_interleave(hw)
        acc += wt * ref[:, :, :frames * hw]
        total += wt
    expected = acc / total
    torch.testing.assert_close(out[:, :, :frames * hw], expected, atol=2e-6, rtol=1e-5)  # fp32 summation order
    if text:
        dense = F.scaled_dot_product_attention(q, k, v)
        torch.testing.assert_close(out[:, :, frames * hw:], dense[:, :, frames * hw:])


@pytest.mark.parametrize("family", ["wan", "hunyuanvideo", "cogvideox", "ltx", "pixart"])
def test_riflex_hook_per_family_and_exact_removal(family):
    model, inputs = tiny_model(family, frames=3)
    if family in ("pixart", "cogvideox"):  # the tiny CogVideoX has no rotary embeddings
        with pytest.raises(NotImplementedError, match=f"(?i){family}"):
            apply_riflex(model, 2, 8)
        return
    before = forward(model, inputs)
    beyond = int(riflex_plan(model, 2, 2).period) + 1  # longer than the intrinsic period: RIFLEx changes RoPE
    plan = apply_riflex(model, 2, beyond)
    assert plan.lowered and plan.new_omega < plan.omega
    changed = forward(model, inputs)
    assert not torch.equal(changed, before)
    remove_riflex(model)
    assert _left_behind(model) == []
    assert torch.equal(forward(model, inputs), before)


def test_riflex_on_cogvideox_rewrites_the_temporal_columns_of_image_rotary_emb():
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(0)
    frames, side, head_dim = 8, 8, 16  # 8 frames exceed the intrinsic period 2 pi: RIFLEx lowers it
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=head_dim, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=16, num_layers=1, sample_width=side, sample_height=side, sample_frames=frames, patch_size=2,
        temporal_compression_ratio=1, max_text_seq_length=3, use_rotary_positional_embeddings=True,
    ).eval()
    emb = get_3d_rotary_pos_embed(head_dim, ((0, 0), (side // 2, side // 2)), (side // 2, side // 2), frames)
    inputs = dict(hidden_states=torch.randn(1, frames, 4, side, side), encoder_hidden_states=torch.randn(1, 3, 16),
                  timestep=torch.tensor([500]), image_rotary_emb=emb)
    seen = []
    model.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["image_rotary_emb"]), with_kwargs=True)
    before = forward(model, inputs)
    plan = apply_riflex(model, 2, frames)
    changed = forward(model, inputs)
    cos, sin = seen[-1]
    p = torch.arange(frames, dtype=torch.float64).repeat_interleave((side // 2) ** 2)
    k = plan.index
    torch.testing.assert_close(cos[:, 2 * k], torch.cos(plan.new_omega * p).float())
    torch.testing.assert_close(sin[:, 2 * k + 1], torch.sin(plan.new_omega * p).float())
    kept = [c for c in range(head_dim) if c // 2 != k]
    assert torch.equal(cos[:, kept], emb[0][:, kept]) and torch.equal(sin[:, kept], emb[1][:, kept])
    assert not torch.equal(changed, before)
    remove_riflex(model)
    assert torch.equal(forward(model, inputs), before)


def test_riflex_on_ltx_follows_the_calls_rope_interpolation_scale():
    from attnplug.pipelines._long_video.rope import plan_for_frequencies

    model, inputs = tiny_model("ltx", frames=6)
    inputs = dict(inputs, rope_interpolation_scale=(8 / 25, 32.0, 32.0))
    outs = []
    model.rope.register_forward_hook(lambda m, a, out: outs.append(out))
    before = forward(model, inputs)
    apply_riflex(model, 2, 6, position_scale=1.5)
    changed = forward(model, inputs)
    (cos0, sin0), (cos, sin) = outs[-2], outs[-1]
    rope = model.rope
    a = 8 / 25 * rope.patch_size_t / rope.base_num_frames
    k = rope.dim // 6
    half = [rope.theta ** (j / (k - 1)) * torch.pi / 2 for j in range(k)]
    plan = plan_for_frequencies("ltx", [2 * a * w for w in half], 2, 6, 0.9, 1.5, "riflex")
    pad = rope.dim % 6
    hw = inputs["height"] * inputs["width"]
    c = (torch.arange(6, dtype=torch.float64) * a).repeat_interleave(hw)
    temporal = set()
    for j, w_new in enumerate(plan.new_omegas):
        angle = w_new / (2 * a) * (2 * c - 1)
        torch.testing.assert_close(cos[0, :, pad + 6 * j], torch.cos(angle).float())
        torch.testing.assert_close(sin[0, :, pad + 6 * j + 1], torch.sin(angle).float())
        temporal |= {pad + 6 * j, pad + 6 * j + 1}
    kept = [i for i in range(rope.dim) if i not in temporal]
    assert torch.equal(cos[..., kept], cos0[..., kept]) and torch.equal(sin[..., kept], sin0[..., kept])
    assert not torch.equal(changed, before)
    remove_riflex(model)
    assert torch.equal(forward(model, inputs), before)


def test_vstar_bias_against_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 4) for _ in range(3))
    out = TemporalBandMethod(2.0, 0.5)(q, k, v, TokenLayout(6, 1, 1))
    logits = q @ k.transpose(-1, -2) / 2 + band_bias(6, 2.0, 3.0)
    torch.testing.assert_close(out, logits.softmax(-1) @ v, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def shapes():
    from attnplug.models import load_pipeline

    pipe = load_pipeline("shapes-video")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_stock_after_a_call_that_raised(shapes):
    gen = torch.Generator().manual_seed(0)
    stock = shapes("red circle moving left", num_frames=24, num_inference_steps=2, generator=gen,
                   output_type="pt").frames
    with pytest.raises(ValueError, match="num_inference_steps"):
        long_video(shapes, "red circle moving left", num_frames=24, num_inference_steps=0,
                   config=LongVideoConfig(rope="riflex", temporal_windows=True))
    assert attnplug.method_of(shapes) is None
    assert _left_behind(shapes.transformer) == []
    again = shapes("red circle moving left", num_frames=24, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert torch.equal(stock, again)


def test_long_video_runs_with_sparse_composition(shapes, monkeypatch):
    made = _record_methods(monkeypatch, "TemporalWindowMethod")
    sparse = attnplug.SparseVideoConfig(density=0.5)
    out = long_video(shapes, "blue square moving up", num_frames=32, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(1),
                     config=LongVideoConfig(noise_rescheduling=True, global_steps=0, sparse=sparse))
    size = shapes.sample_defaults
    assert out.frames.shape == (1, 32, size["height"], size["width"], 3)
    assert attnplug.method_of(shapes) is None
    assert made[-1].calls["window"] > 0
    # without windows (2x) the pattern runs on the whole video, and changes it
    args = dict(num_frames=16, num_inference_steps=2, config=LongVideoConfig(sparse=sparse))
    with_sparse = long_video(shapes, "blue square moving up", generator=torch.Generator().manual_seed(1), **args)
    assert made[-1].calls["whole"] > 0 and made[-1].calls["short"] == 0
    plain = long_video(shapes, "blue square moving up", num_frames=16, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(1), config=LongVideoConfig(sparse=None))
    assert not torch.equal(torch.as_tensor(with_sparse.frames), torch.as_tensor(plain.frames))


def _record_methods(monkeypatch, name: str) -> list:
    """Replace ``long_video``'s method class ``name`` by a subclass that records its instances (returned list)."""
    lv = importlib.import_module("attnplug.pipelines._long_video.api")
    made = []

    class Recording(getattr(lv, name)):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(lv, name, Recording)
    return made


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    from attnplug.testing import tiny_pipeline

    pipe = tiny_pipeline("animatediff", str(tmp_path_factory.mktemp("tok")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_animatediff_long_video_uses_free_noise_and_vstar_then_restores(animatediff, monkeypatch):
    lv = importlib.import_module("attnplug.pipelines._long_video.api")
    made = _record_methods(monkeypatch, "TemporalBandMethod")
    args = dict(num_inference_steps=2, height=8, width=8, output_type="pt")
    before = animatediff("red circle", num_frames=16, generator=torch.Generator().manual_seed(0), **args).frames
    plan = lv.resolve_config(animatediff, 64)
    assert plan.train_latent == 16 and plan.vstar  # min(16, motion_max_seq_length=32)
    seen = []
    enable = animatediff.enable_free_noise
    monkeypatch.setattr(animatediff, "enable_free_noise", lambda **kw: (seen.append(kw), enable(**kw))[1])
    out = long_video(animatediff, "red circle", num_frames=64, generator=torch.Generator().manual_seed(0), **args)
    assert out.frames.shape == (1, 64, 3, 8, 8)
    assert seen == [dict(context_length=16, context_stride=8, weighting_scheme="pyramid",
                         noise_type="shuffle_context")]
    assert made and made[0].calls > 0  # the band bias ran on the motion modules' frame attention
    plain = long_video(animatediff, "red circle", num_frames=64, generator=torch.Generator().manual_seed(0),
                       config=LongVideoConfig(vstar=False), **args)
    assert not torch.equal(plain.frames, out.frames)
    assert not animatediff.free_noise_enabled and attnplug.method_of(animatediff) is None
    again = animatediff("red circle", num_frames=16, generator=torch.Generator().manual_seed(0), **args).frames
    assert torch.equal(before, again)


def test_animatediff_keeps_a_users_free_noise(animatediff):
    animatediff.enable_free_noise(context_length=8, context_stride=4)
    try:
        long_video(animatediff, "red circle", num_frames=24, num_inference_steps=1, height=8, width=8,
                   output_type="pt")
        assert animatediff.free_noise_enabled and animatediff._free_noise_context_length == 8
    finally:
        importlib.import_module("attnplug.pipelines._long_video.api")._disable_free_noise(animatediff)


def test_defaults_on_shapes_video_follow_the_extension(shapes):
    lv = importlib.import_module("attnplug.pipelines._long_video.api")
    at4 = lv.resolve_config(shapes, 32)  # the long pattern over the whole video in the last quarter of the steps
    assert (at4.rope, at4.temporal_windows, at4.long_sparse, at4.noise_rescheduling) == ("riflex", False, True, False)
    assert at4.sparse == attnplug.SparseVideoConfig(pattern="long", train_latent_frames=8)
    assert at4.position_scale == pytest.approx(4.0)
    assert at4.global_steps == LONG_GLOBAL_STEPS  # the first three quarters of the steps dense
    first = lv.resolve_config(shapes, 32, LongVideoConfig(global_steps=0))  # the pattern from the first step
    assert first.long_sparse and first.global_steps == 0
    windows = lv.resolve_config(shapes, 32, LongVideoConfig(sparse=None))  # the recipe without a sparse pattern
    assert (windows.rope, windows.temporal_windows, windows.window, windows.stride, windows.noise_rescheduling) == (
        "riflex", True, 8, 4, False)
    assert windows.position_scale == at4.position_scale and windows.global_steps == 0.75 and windows.sparse is None
    at2 = lv.resolve_config(shapes, 16)
    assert not at2.temporal_windows and at2.position_scale == pytest.approx(2.0)
    assert at2.long_sparse and at2.global_steps == LONG_GLOBAL_STEPS
    assert not lv.resolve_config(shapes, 16, LongVideoConfig(sparse=None)).temporal_windows
    at1 = lv.resolve_config(shapes, 8)
    assert at1.rope == "none" and at1.sparse is None and not at1.temporal_windows
    with pytest.raises(ValueError, match=r"global_steps.*1\.5"):
        LongVideoConfig(global_steps=1.5)


def test_global_steps_keep_the_first_steps_dense(shapes, monkeypatch):
    made = _record_methods(monkeypatch, "TemporalWindowMethod")
    windows = {}
    for g in (0, 0.5, 4):
        long_video(shapes, "red circle moving up", num_frames=32, num_inference_steps=4,
                   generator=torch.Generator().manual_seed(0),
                   config=LongVideoConfig(rope="none", global_steps=g, sparse=None))
        windows[g] = made[-1].calls["window"]
    assert windows[0] > 0 and windows[0.5] * 2 == windows[0] and windows[4] == 0


def _tiny_wan22(tmp_path):
    """A tiny Wan 2.2 pipeline: two experts (``transformer`` for high noise, ``transformer_2`` for low noise)."""
    import diffusers

    from attnplug.testing import tiny_model, tiny_pipeline

    pipe = tiny_pipeline("wan", str(tmp_path))
    second, _ = tiny_model("wan")
    pipe = diffusers.WanPipeline(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, transformer=pipe.transformer,
        transformer_2=second.eval(), scheduler=pipe.scheduler, boundary_ratio=0.5,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _left_behind(model) -> list[str]:
    """Modules of ``model`` that still carry a hook or an instance ``forward`` (the empty registry that diffusers'
    ``cache_context`` puts on the denoiser is the pipeline's own)."""
    return [name or "<root>" for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks or "forward" in m.__dict__]


def test_two_expert_pipeline_gets_riflex_and_windows_on_both_experts_then_stock(tmp_path):
    from attnplug.pipelines._long_video.rope import HOOK_NAME

    pipe = _tiny_wan22(tmp_path)
    experts = (pipe.transformer, pipe.transformer_2)
    seen = []

    def on_step(p, i, t, kw):
        hooks = [getattr(m.rope, "_diffusers_hook", None) for m in experts]
        seen.append([(h is not None and h.get_hook(HOOK_NAME) is not None, type(attnplug.method_of(m)).__name__)
                     for h, m in zip(hooks, experts)])
        return kw

    config = LongVideoConfig(train_frames=5, rope="riflex", temporal_windows=True, window_frames=5, stride_frames=1,
                             global_steps=0)
    long_video(pipe, "red circle", num_frames=17, height=16, width=16, num_inference_steps=2, output_type="pt",
               callback_on_step_end=on_step, generator=torch.Generator().manual_seed(0), config=config)
    assert seen and all(s == [(True, "TemporalWindowMethod")] * 2 for s in seen)
    for model in experts:
        assert attnplug.method_of(model) is None
        assert _left_behind(model) == []


def test_a_bad_sparse_config_fails_before_the_first_step(shapes):
    done = []
    handle = shapes.transformer.register_forward_hook(lambda m, a, o: done.append(1))
    sparse = attnplug.SparseVideoConfig(tile=(3, 3, 3), tile_fit="error")  # 3 divides no side of the 8-frame window
    try:
        with pytest.raises(ValueError, match=r"SparseVideoConfig\.tile=\(3, 3, 3\)"):
            long_video(shapes, "red circle", num_frames=32, num_inference_steps=2,
                       config=LongVideoConfig(rope="none", global_steps=0.5, sparse=sparse))
    finally:
        handle.remove()
    assert done == []  # not one denoiser call ran (step 0 is dense, the windows start at step 1)
    assert attnplug.method_of(shapes) is None


register("inner-says-no", "test method: the inner method hands every call back")


class _HandsBack(AttentionMethod):
    """An inner method that hands every call back with its own reason."""

    calls = 0

    def __call__(self, q, k, v, layout, mask=None, info=None):
        self.calls += 1
        return self.hand_back("inner-says-no")

    def report(self):
        return {"inner calls": self.calls}


def test_window_method_passes_on_the_inner_protocol_and_counts_its_hand_backs():
    from attnplug.pipelines._long_video.attention import TemporalWindowMethod

    model, inputs = tiny_model("wan", frames=4)
    method = TemporalWindowMethod(window=2, stride=1, inner=_HandsBack())
    with attnplug.applied(model, method):
        out = forward(model, inputs)
        stats = attnplug.stats(model)
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1)):
        plain = forward(model, inputs)  # SDPA in every window: what the inner hand-backs fall back to
    torch.testing.assert_close(out, plain)
    report = stats["method_report"]
    assert report["inner calls"] == report["windows: inner handed back (inner-says-no)"] == 2 * 3  # 2 layers x 3
    assert report["windows: window"] == stats["self"]["method"] == 2
    # a video no longer than the window: the inner method runs on all of it, its hand-back counted with its reason
    short, short_inputs = tiny_model("wan", frames=2)
    with attnplug.applied(short, TemporalWindowMethod(window=2, stride=1, inner=_HandsBack())):
        forward(short, short_inputs)
        assert attnplug.stats(short)["self"]["reasons"] == {"inner-says-no": 2}


def test_every_call_logs_its_degraded_mode_once(shapes, caplog):
    """log_once remembers a message for one pipeline call, not for the process: the second call says it again."""
    config = LongVideoConfig(temporal_windows=True, window_frames=16, rope="none")  # the window covers all 16 frames
    with caplog.at_level(logging.INFO, logger="attnplug"):
        for _ in range(2):
            long_video(shapes, "red circle", num_frames=16, num_inference_steps=1, config=config)
    assert caplog.text.count("covers the whole video") == 2
