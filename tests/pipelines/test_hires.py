"""attnplug.pipelines.hires on tiny pipelines and the embedded models at small sizes."""

import numpy as np
import pytest
import torch

import attnplug
from attnplug._steps import DenoisingSteps
from attnplug.pipelines import HiResConfig, HiResPipeline, hires
from attnplug.pipelines._hires import raunet as rau
from attnplug.testing import tiny_pipeline

FAST = HiResConfig(progress=False)


def _array(out):
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


@pytest.fixture(scope="module")
def shapes():
    from attnplug.models import load_pipeline

    return {name: load_pipeline(name) for name in ("shapes-unet", "shapes-dit")}


def _tiny_vae():
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, shift_factor=0.0,
    ).eval()


def _tiny_clip(hidden, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def _tiny_sd3_or_flux(name, tmp_path):
    """Tiny SD3 (two CLIPs, no T5) / Flux (CLIP + T5) pipelines around attnplug.testing's tiny transformers."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    from attnplug.testing import tiny_model, tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer(str(tmp_path))
    if name == "sd3":
        transformer, _ = tiny_model("sd3", height=8, width=8)
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_vae(),
            text_encoder=_tiny_clip(8, 8), tokenizer=tok, text_encoder_2=_tiny_clip(8, 8), tokenizer_2=tok,
            text_encoder_3=None, tokenizer_3=None)
    transformer, _ = tiny_model("flux")
    t5 = T5EncoderModel(T5Config(vocab_size=514, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 pad_token_id=513, eos_token_id=513, decoder_start_token_id=513)).eval()
    return diffusers.FluxPipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=_tiny_vae(), text_encoder=_tiny_clip(16), tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok)


def _tiny(name, tmp_path):
    pipe = _tiny_sd3_or_flux(name, tmp_path) if name in ("sd3", "flux") else tiny_pipeline(name, str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_kwargs(name):
    kw = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    if name != "sd":
        kw["max_sequence_length"] = 16
    return kw


def _fingerprint(model, inputs):
    """Stock-ness of a denoiser: its output on fixed inputs, and no hook / attnplug state left on any module."""
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0].clone()
    leftovers = [n for n, m in model.named_modules()
                 if "_diffusers_hook" in m.__dict__ or "_attnplug" in m.__dict__ or "forward" in m.__dict__
                 or m._forward_pre_hooks or m._forward_hooks]
    processors = {n: type(m.processor) for n, m in model.named_modules() if hasattr(m, "processor")}
    return out, leftovers, processors


def _unet_inputs(unet, size=32, batch=2):
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(batch, unet.config.in_channels, size, size, generator=g),
                timestep=torch.tensor([500.0] * batch),
                encoder_hidden_states=torch.randn(batch, 8, unet.config.cross_attention_dim, generator=g))


def _dit_inputs(dit, size=32, batch=2):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(batch, dit.config.in_channels, size, size, generator=g),
                timestep=torch.tensor([500.0] * batch),
                encoder_hidden_states=torch.randn(batch, 8, dit.config.cross_attention_dim, generator=g),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None})


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", ["sd", "pixart", "wan", "sd3", "flux"])
def test_tiny_pipelines_2x_shape(name, tmp_path):
    """The default hi-res run has the target shape; with the method set to Dense it equals hi-res with stock
    attention (the method reaches every hi-res attention call exactly), and the default local attention changes the
    image (it is not silently dense)."""
    pipe = _tiny(name, tmp_path)
    cfg = FAST.replace(train_size_px=(16, 16)) if name in ("wan", "flux") else FAST

    def run(config):
        return _array(hires(pipe, "a red circle", height=32, width=32, config=config, **_tiny_kwargs(name)))

    out = run(cfg)
    assert out.shape == ((1, 1, 32, 32, 3) if name == "wan" else (1, 32, 32, 3))
    stock = run(cfg.replace(windows=False) if name == "sd" else cfg.replace(local_attention="dense"))
    dense_method = run(cfg.replace(attention=attnplug.DenseConfig()))
    np.testing.assert_allclose(dense_method, stock, atol=1e-5, rtol=0)
    # tiny random models barely depend on their attention pattern: the change must stand clear of float noise
    noise = np.abs(dense_method - stock).max()
    assert np.abs(out - stock).max() > max(10 * noise, 1e-6)


@pytest.mark.parametrize("name", ["shapes-unet", "shapes-dit"])
def test_embedded_2x_and_4x_shapes(shapes, name):
    pipe = shapes[name]
    for size in (32, 64):
        out = hires(pipe, "red circle", height=size, width=size, config=FAST, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="np").images
        assert out.shape == (1, size, size, 3) and np.isfinite(out).all()


def test_non_square_target(shapes):
    out = hires(shapes["shapes-dit"], "red circle", height=32, width=48, config=FAST, num_inference_steps=3,
                output_type="pt").images
    assert out.shape == (1, 3, 32, 48)


# ------------------------------------------------------------------------------------------------ exactness


def test_scale_one_is_stock(shapes, tmp_path):
    for pipe in (shapes["shapes-unet"], shapes["shapes-dit"], _tiny("sd", tmp_path)):
        size = 16
        kw = dict(num_inference_steps=3, output_type="np")
        if hasattr(pipe, "vae"):
            kw["num_inference_steps"] = 2
        ref = _array(pipe("red circle", height=size, width=size, generator=torch.Generator().manual_seed(3), **kw))
        got = _array(hires(pipe, "red circle", height=size, width=size, config=FAST,
                           generator=torch.Generator().manual_seed(3), **kw))
        np.testing.assert_array_equal(got, ref)


def test_raunet_factor_one_is_exact(shapes):
    """The RAU-Net hooks with factor 1 leave the U-Net output bit-identical; with factor 2 they change it."""
    unet = shapes["shapes-unet"].unet
    inputs = _unet_inputs(unet)
    ref, _, _ = _fingerprint(unet, inputs)
    for factors, same in (((), True), (((2, 2),), False)):
        state = rau.RAUState(factors=factors, switch_fractions=(1.0,) * len(factors),
                             steps=DenoisingSteps(num_steps_fn=lambda: 10))
        rau.apply_raunet(unet, state)
        try:
            with torch.no_grad():
                out = unet(**inputs, return_dict=False)[0]
        finally:
            rau.remove_raunet(unet)
        assert torch.equal(out, ref) is same
        assert out.shape == ref.shape
    assert state.calls["rau"] == 1
    after, leftovers, _ = _fingerprint(unet, inputs)
    assert torch.equal(after, ref) and leftovers == []


def test_raunet_schedule_switches_to_vanilla(shapes):
    pipe = shapes["shapes-unet"]
    seen = []
    conv, _, _ = rau.raunet_sites(pipe.unet)
    handle = conv.register_forward_hook(lambda m, a, out: seen.append(out.shape[-1]))
    try:
        hires(pipe, "red circle", height=32, width=32, config=FAST.replace(raunet_switch=(0.5,)),
              num_inference_steps=4, guidance_scale=1.0)
    finally:
        handle.remove()
    assert seen == [8, 8, 16, 16]  # stride 4 (training-size deep blocks) for half the steps, then vanilla


def test_refine_stage_runs_strength_of_the_steps(shapes):
    pipe = shapes["shapes-dit"]
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append(tuple((a[0] if a else k["hidden_states"]).shape[-2:])), with_kwargs=True)
    try:
        hires(pipe, "red circle", height=32, width=32, config=FAST.replace(strength=0.5), num_inference_steps=10,
              guidance_scale=1.0)
    finally:
        handle.remove()
    assert calls.count((16, 16)) == 10 and calls.count((32, 32)) == 5


@pytest.mark.parametrize("name", ["shapes-unet", "shapes-dit"])
def test_model_stock_after_call_and_after_raise(shapes, name):
    pipe = shapes[name]
    model = pipe.unet if name == "shapes-unet" else pipe.transformer
    inputs = _unet_inputs(model) if name == "shapes-unet" else _dit_inputs(model)
    scheduler = pipe.scheduler
    ref = _fingerprint(model, inputs)
    hires(pipe, "red circle", height=32, width=32, config=FAST, num_inference_steps=3)
    after = _fingerprint(model, inputs)
    assert torch.equal(after[0], ref[0]) and after[1] == [] and after[2] == ref[2]
    assert pipe.scheduler is scheduler

    count = []

    def boom(module, args, kwargs):
        count.append(1)
        if len(count) == 3:  # in the middle of the hi-res denoising (one call per step)
            raise RuntimeError("boom")

    handle = model.register_forward_pre_hook(boom, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            hires(pipe, "red circle", height=32, width=32, config=FAST, num_inference_steps=4)
    finally:
        handle.remove()
    after = _fingerprint(model, inputs)
    assert torch.equal(after[0], ref[0]) and after[1] == [] and after[2] == ref[2]
    assert pipe.scheduler is scheduler


def test_composes_with_an_attention_method(shapes):
    pipe = shapes["shapes-dit"]
    cfg = FAST.replace(attention=attnplug.AgentConfig(agents=16))
    kw = dict(height=32, width=32, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0))
    out = hires(pipe, "red circle", config=cfg, **kw)
    dense = hires(pipe, "red circle", config=cfg.replace(attention=attnplug.DenseConfig()),
                  **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert out.images.shape == (1, 32, 32, 3)
    assert np.abs(out.images - dense.images).max() > 1e-4  # the agent attention ran in the hi-res stage
    assert "_attnplug" not in pipe.transformer.__dict__


def test_scaled_attention_keeps_the_methods_model_hook(shapes, monkeypatch):
    """attention_scale wraps the method; FreeSwim's full branch (its model hook) still runs."""
    from attnplug.methods.freeswim import FreeSwimMethod

    full = []  # full branches run so far, after each denoiser call (the report is cleared on remove)
    real = FreeSwimMethod.run

    def run(self, *args):
        out = real(self, *args)
        full.append(self.report().get("full branches", 0))
        return out

    monkeypatch.setattr(FreeSwimMethod, "run", run)
    cfg = FAST.replace(attention=attnplug.FreeSwimConfig(train_grid=8, refresh_every=1), attention_scale=True)
    hires(shapes["shapes-dit"], "red circle", height=32, width=32, config=cfg, num_inference_steps=3)
    assert full and full[-1] > 0
    assert "_attnplug" not in shapes["shapes-dit"].transformer.__dict__


@pytest.mark.parametrize("local", ["freeswim", "neighborhood"])
def test_unet_refinement_runs_the_local_attention_asked_for(shapes, monkeypatch, local):
    from attnplug.plugin import applied

    applied_methods = []
    monkeypatch.setattr("attnplug.pipelines._hires.run.applied",
                        lambda pipe, method, **kw: applied_methods.append(method) or applied(pipe, method, **kw))
    cfg = FAST.replace(method="coarse_to_fine", local_attention=local)
    hires(shapes["shapes-unet"], "red circle", height=32, width=32, config=cfg, num_inference_steps=3)
    expected = {"freeswim": "FreeSwimMethod", "neighborhood": "NeighborhoodMethod"}[local]
    assert [type(m).__name__ for m in applied_methods] == [expected]


def test_hires_pipeline_from_pipe(shapes):
    pipe = shapes["shapes-dit"]
    wrapped = HiResPipeline.from_pipe(pipe, progress=False, strength=0.5)
    assert wrapped.config.strength == 0.5 and wrapped.transformer is pipe.transformer
    out = wrapped("red circle", height=32, width=32, num_inference_steps=3, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_inputs(shapes):
    unet, dit = shapes["shapes-unet"], shapes["shapes-dit"]
    with pytest.raises(ValueError, match="at least the training size 16x16"):
        hires(dit, "red circle", height=8, width=16, config=FAST)
    with pytest.raises(ValueError, match="multiple of 2"):
        hires(dit, "red circle", height=33, width=32, config=FAST)
    with pytest.raises(ValueError, match="multiple of 8"):  # 4 (two downsamplers) x RAU-Net factor 2
        hires(unet, "red circle", height=36, width=32, config=FAST)
    with pytest.raises(TypeError, match="supported pipelines: ShapesUNetPipeline"):
        hires(object(), "red circle", height=32, width=32)
    with pytest.raises(TypeError, match="latents"):
        hires(dit, "red circle", height=32, width=32, config=FAST, latents=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="needs a U-Net"):
        hires(dit, "red circle", height=32, width=32, config=FAST.replace(method="hidiffusion"))
    with pytest.raises(ValueError, match="strength"):
        HiResConfig(strength=2.0)
    with pytest.raises(ValueError, match="method"):
        HiResConfig(method="magic")
    with pytest.raises(ValueError, match="raunet_switch"):
        HiResConfig(raunet_switch=(0.7, 0.3))
    with pytest.raises(TypeError, match="attention"):
        HiResConfig(attention="agent")


# ------------------------------------------------------------------------------------------------ quality


@pytest.mark.slow
def test_slow_2x_duplication_halved(shapes):
    """24 images at 2x: duplication at most half of stock's, one-object rate not below stock's (both models)."""
    from attnplug.models import detect

    colours = ("red", "green", "blue", "yellow", "cyan", "magenta")
    prompts = ([f"{c} {s}" for s in ("circle", "square", "triangle") for c in colours] * 2)[:24]
    for pipe in shapes.values():
        rates = {}
        for label, fn in (("stock", pipe), ("hires", lambda *a, p=pipe, **k: hires(p, *a, config=FAST, **k))):
            out = fn(prompts, height=32, width=32, generator=torch.Generator().manual_seed(7000),
                     output_type="np").images
            dets = [detect(img) for img in out]
            rates[label] = (np.mean([d.count >= 2 for d in dets]),
                            np.mean([d.count == 1 and d.objects[0].color == p.split()[0]
                                     for d, p in zip(dets, prompts)]))
        assert rates["hires"][0] <= rates["stock"][0] / 2
        assert rates["hires"][1] >= rates["stock"][1]
