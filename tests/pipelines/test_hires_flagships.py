"""Coarse-to-fine hi-res on tiny random-weight flagship image pipelines (Chroma, Qwen-Image, Flux 2, Z-Image): the
target shape, the attention method reaching every refinement call, the refinement starting at the noise level the
plan states, a stock denoiser afterwards. Qwen-Image, Flux 2 and Z-Image take the prompt as embeddings (their text
encoders are full vision-language / chat models); hi-res passes them to every stage."""

import numpy as np
import pytest
import torch

import attnplug
from attnplug.pipelines import HiResConfig, hires
from attnplug.pipelines._hires import plan

CFG = HiResConfig(progress=False)
PROMPT = "a red circle"


def _tiny_vae():
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, shift_factor=0.0,
    ).eval()


def _tiny_t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=514, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   pad_token_id=513, eos_token_id=513, decoder_start_token_id=513)).eval()


def _chroma(tmp_path):
    import diffusers

    from attnplug.testing import tiny_tokenizer
    from attnplug.testing_builders_image import chroma

    transformer, _ = chroma(1)
    pipe = diffusers.ChromaPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=_tiny_vae(),
        text_encoder=_tiny_t5(), tokenizer=tiny_tokenizer(str(tmp_path)), transformer=transformer.eval())
    return pipe, dict(prompt=PROMPT, max_sequence_length=24)  # the prompt is padded


def _qwen_image(tmp_path):
    """Qwen-Image with its video-shaped VAE; the prompt as embeddings (its text encoder is a Qwen2.5-VL)."""
    import diffusers

    from attnplug.testing_builders_image import qwen_image

    transformer, _ = qwen_image(1)
    vae = diffusers.AutoencoderKLQwenImage(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    pipe = diffusers.QwenImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae, text_encoder=None,
        tokenizer=None, transformer=transformer.eval())
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(1, 9, dtype=torch.long)
    mask[:, 6:] = 0  # padded text, as the pipeline pads a batch of prompts
    return pipe, dict(prompt=None, prompt_embeds=torch.randn(1, 9, 16, generator=g), prompt_embeds_mask=mask,
                      true_cfg_scale=1.0)


def _flux2(tmp_path):
    """Flux 2 with a tiny VAE whose batch norm has non-trivial statistics; the prompt as embeddings (its text
    encoder is a Mistral 3)."""
    import diffusers

    from attnplug.testing_builders_image import flux2

    transformer, _ = flux2(1)
    vae = diffusers.AutoencoderKLFlux2(
        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    g = torch.Generator().manual_seed(6)
    vae.bn.running_mean.copy_(torch.randn(16, generator=g))
    vae.bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
    pipe = diffusers.Flux2Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae, text_encoder=None,
        tokenizer=None, transformer=transformer.eval())
    return pipe, dict(prompt=None, prompt_embeds=torch.randn(1, 6, 16, generator=g))


def _z_image(tmp_path):
    """Z-Image; the prompt as embeddings (its text encoder is a Qwen 3), with a negative one for its CFG."""
    import diffusers

    from attnplug.testing_builders_image import z_image

    transformer, _ = z_image(1)
    pipe = diffusers.ZImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=_tiny_vae(),
        text_encoder=None, tokenizer=None, transformer=transformer.eval())
    g = torch.Generator().manual_seed(8)
    return pipe, dict(prompt=None, prompt_embeds=[torch.randn(5, 16, generator=g)],
                      negative_prompt_embeds=[torch.randn(3, 16, generator=g)])


#: name -> (builder of the tiny pipeline and its prompt arguments, tiny transformer builder of testing_builders_image)
#: and the training size in pixels the test gives it (a 4 x 4 token grid; the VAEs differ in factor)
BUILDERS = {"chroma": (_chroma, "chroma", 16), "qwen-image": (_qwen_image, "qwen_image", 64),
            "flux2": (_flux2, "flux2", 16), "z-image": (_z_image, "z_image", 16)}
#: pipeline arguments for one denoiser call per step
NO_CFG = {"chroma": {"guidance_scale": 1.0}, "qwen-image": {}, "flux2": {}, "z-image": {"guidance_scale": 0.0}}


@pytest.fixture(scope="module", params=list(BUILDERS))
def tiny(request, tmp_path_factory):
    torch.manual_seed(0)
    pipe, prompt = BUILDERS[request.param][0](tmp_path_factory.mktemp(request.param))
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe, prompt


def _train(tiny) -> int:
    return BUILDERS[tiny[0]][2]


def _run(tiny, config, **extra):
    """Hi-res at twice the test's training size."""
    _, pipe, prompt = tiny
    size = 2 * _train(tiny)
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    config = config.replace(train_size_px=(_train(tiny), _train(tiny)))
    return hires(pipe, height=size, width=size, config=config, **{**prompt, **kwargs, **extra}).images


def test_target_shape_and_the_refinement_attention(tiny):
    """The target shape; with the method set to Dense the result equals hi-res with stock attention, and the default
    local attention changes the image beyond float noise (it is not silently dense)."""
    out = _run(tiny, CFG)
    size = 2 * _train(tiny)
    assert out.shape == (1, size, size, 3) and np.isfinite(out).all()
    stock = _run(tiny, CFG.replace(local_attention="dense"))
    dense_method = _run(tiny, CFG.replace(attention=attnplug.DenseConfig()))
    np.testing.assert_allclose(dense_method, stock, atol=1e-5, rtol=0)
    noise = np.abs(dense_method - stock).max()
    assert np.abs(out - stock).max() > max(10 * noise, 1e-6)


def _expected_first_sigma(name, pipe, size, steps, start_sigma):
    """The first sigma of the target-size schedule at or below ``start_sigma``, built as the pipeline builds it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    seq = (size // pipe.vae_scale_factor // 2) ** 2
    c = sched.config
    sigmas = np.linspace(1.0, 1 / steps, steps)
    if name == "flux2":
        mu = compute_empirical_mu(seq, steps)
    else:
        mu = calculate_shift(seq, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    if name == "z-image":
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        sigmas = get_default_z_image_sigmas(steps)
    sched.set_timesteps(sigmas=sigmas, mu=mu)
    sigmas = sched.sigmas[:steps]
    return float(sigmas[(sigmas <= start_sigma).nonzero()[0]])


def test_the_refinement_starts_where_the_plan_says(tiny):
    name, pipe, _ = tiny
    steps, train = 8, _train(tiny)
    p = plan(pipe, 2 * train, 2 * train, CFG.replace(train_size_px=(train, train)), steps=steps)
    assert p.describe()["stages"][0]["starts_by"] == "sigma" and 0 < p.start_sigmas[0] < 1
    seen = []  # (token count, sigma) of every denoiser call

    def hook(module, args, kwargs):
        if name == "z-image":  # a list of (C, 1, h, w) latents and 1 - sigma, positionally
            seen.append((args[0][0].shape[-2] * args[0][0].shape[-1] // 4, 1 - float(args[1].flatten()[0])))
        else:  # 2 x 2 packed tokens and sigma
            seen.append((kwargs["hidden_states"].shape[1], float(kwargs["timestep"].flatten()[0])))

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _run(tiny, CFG, num_inference_steps=steps, **NO_CFG[name])
    finally:
        handle.remove()
    tokens = (train // pipe.vae_scale_factor // 2) ** 2  # 2 x 2 packed latent tokens at the training size
    coarse = [t for n, t in seen if n == tokens]
    fine = [t for n, t in seen if n == 4 * tokens]
    assert len(coarse) == steps and 0 < len(fine) < steps
    expected = _expected_first_sigma(name, pipe, 2 * train, steps, p.start_sigmas[0])
    assert fine[0] == pytest.approx(expected, abs=1e-5)
    assert expected <= p.start_sigmas[0]


def test_dropping_the_text_padding_is_exact(tiny):
    """Chroma: the refinement's denoiser calls without the padded text tokens give the image tokens of the padded
    call."""
    from attnplug.pipelines._hires.family import detect_family
    from attnplug.pipelines._hires.masks import drop_text_padding

    name, pipe, _ = tiny
    if name != "chroma":
        pytest.skip("only Chroma passes a square text-padding mask (Qwen-Image's is a key-padding mask)")
    torch.manual_seed(4)
    text, image = 12, 16
    mask = torch.ones(2, text + image, dtype=torch.bool)
    mask[0, 6:text] = False  # prompt 0 keeps 6 tokens, prompt 1 keeps 9: positions 9.. are cut, 6..8 stay masked
    mask[1, 9:text] = False
    inputs = dict(hidden_states=torch.randn(2, image, 16), encoder_hidden_states=torch.randn(2, text, 16),
                  timestep=torch.tensor([0.5, 0.5]), img_ids=torch.zeros(image, 3), txt_ids=torch.zeros(text, 3),
                  attention_mask=mask)
    seen = []

    def probe(module, args, kwargs):
        seen.append((kwargs["encoder_hidden_states"].shape[1], kwargs["attention_mask"] is None))

    with torch.no_grad():
        ref = pipe.transformer(**inputs, return_dict=False)[0]
        with drop_text_padding(detect_family(pipe, (16, 16)), pipe.transformer):
            handle = pipe.transformer.register_forward_pre_hook(probe, with_kwargs=True)  # runs after the cut
            try:
                cut = pipe.transformer(**inputs, return_dict=False)[0]
                inputs["attention_mask"] = mask.clone().fill_(True)
                inputs["attention_mask"][:, 9:text] = False
                pipe.transformer(**inputs, return_dict=False)
            finally:
                handle.remove()
    assert seen == [(9, False), (9, True)]  # cut to the kept positions; no mask once nothing is padded
    with drop_text_padding(detect_family(pipe, (16, 16)), pipe.transformer):
        with pytest.raises(TypeError, match="1 positional argument.*as keywords"):
            pipe.transformer(inputs.pop("hidden_states"), **inputs)
    torch.testing.assert_close(cut, ref, atol=1e-5, rtol=0)


def test_the_training_size_and_the_size_multiple(tiny):
    """Chroma's and Flux 2's training size is their pipeline's default (128 latent pixels: 1024 with their 8x VAE);
    Qwen-Image's is the registry's 1328 x 1328 (its pipeline defaults to 1024 x 1024), Z-Image's the registry's
    1024 x 1024. Sides must be multiples of the VAE factor x the 2 x 2 packing."""
    from attnplug.pipelines._hires.family import detect_family

    name, pipe, _ = tiny
    family = detect_family(pipe)
    chroma_default = 128 * pipe.vae_scale_factor  # the tiny VAE's factor is 2
    expected = {"chroma": (chroma_default,) * 2, "qwen-image": (1328, 1328), "flux2": (chroma_default,) * 2,
                "z-image": (1024, 1024)}[name]
    assert family.train_size == expected
    multiple = pipe.vae_scale_factor * 2
    assert family.pixel_multiple == multiple
    with pytest.raises(ValueError, match=rf"height={2 * _train(tiny) + 2} is not a multiple of {multiple}"):
        plan(pipe, 2 * _train(tiny) + 2, 2 * _train(tiny), CFG.replace(train_size_px=(_train(tiny),) * 2))


def test_flux2_latents_round_trip_and_upsample_in_the_vae_space(tiny):
    """Flux 2: packed tokens -> spatial latent -> the patchified ``latents=`` argument loses nothing, and upsampling
    undoes the per-patch-position batch norm first (a constant VAE latent stays constant)."""
    from types import SimpleNamespace

    from attnplug.pipelines._hires.family import detect_family
    from attnplug.pipelines._hires.latents import pipeline_latents, result_latents, upsample_latents

    name, pipe, _ = tiny
    if name != "flux2":
        pytest.skip("Flux 2 only: it takes patchified latents normalised per patch position")
    family = detect_family(pipe, (16, 16))
    g = torch.Generator().manual_seed(7)
    patches = torch.randn(1, 16, 4, 4, generator=g)  # (B, 4 C, h / 2, w / 2) at 16 px with the tiny 2x VAE
    tokens = pipe._pack_latents(patches)
    x = result_latents(family, pipe, SimpleNamespace(images=tokens), 16, 16)
    assert x.shape == (1, 4, 8, 8)
    torch.testing.assert_close(pipeline_latents(family, pipe, x), patches, rtol=0, atol=0)
    bn = pipe.vae.bn
    mean, std = bn.running_mean.view(1, -1, 1, 1), torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    value = torch.randn(1, 4, 1, 1, generator=g)  # one value per VAE channel
    constant = value.expand(1, 4, 8, 8).contiguous()
    normalised = pipe._unpatchify_latents((pipe._patchify_latents(constant) - mean) / std)
    up = upsample_latents(family, pipe, normalised, (16, 16), "bicubic", 0.5)
    expected = pipe._unpatchify_latents((pipe._patchify_latents(value.expand(1, 4, 16, 16).contiguous()) - mean) / std)
    torch.testing.assert_close(up, expected, rtol=0, atol=1e-5)


def _fingerprint(name, model):
    import attnplug.testing_builders_image as builders

    torch.manual_seed(3)
    _, inputs = getattr(builders, BUILDERS[name][1])(1)
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
        out = torch.stack(out) if isinstance(out, list) else out.clone()  # Z-Image returns a list per sample
    leftovers = [n for n, m in model.named_modules()
                 if "_attnplug" in m.__dict__ or "forward" in m.__dict__ or m._forward_pre_hooks or m._forward_hooks]
    processors = {n: type(m.processor) for n, m in model.named_modules() if hasattr(m, "processor")}
    return out, leftovers, processors


def test_the_denoiser_is_stock_afterwards(tiny):
    name, pipe, _ = tiny
    scheduler = pipe.scheduler
    ref = _fingerprint(name, pipe.transformer)
    _run(tiny, CFG)
    after = _fingerprint(name, pipe.transformer)
    assert torch.equal(after[0], ref[0]) and after[1] == [] and after[2] == ref[2]
    assert pipe.scheduler is scheduler
