"""attnplug composed with what diffusers users combine it with, in both orders where both make sense."""

import logging

import pytest
import torch

import attnplug
from attnplug.plugin import attention_modules
from attnplug.testing import forward, tiny_model


def _ip_state_dict(unet, clip_dim=8, seed=0):
    """A random IP-adapter state dict in the original format, for diffusers' own loader."""
    g = torch.Generator().manual_seed(seed)
    cad = unet.config.cross_attention_dim
    image_proj = {"proj.weight": torch.randn(4 * cad, clip_dim, generator=g) * 0.1, "proj.bias": torch.zeros(4 * cad),
                  "norm.weight": torch.ones(cad), "norm.bias": torch.zeros(cad)}
    ip, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        ip[f"{key}.to_k_ip.weight"] = torch.randn(hidden, cad, generator=g) * 0.1
        ip[f"{key}.to_v_ip.weight"] = torch.randn(hidden, cad, generator=g) * 0.1
        key += 2
    return {"image_proj": image_proj, "ip_adapter": ip}


@pytest.mark.parametrize("order", ["ip_first", "apply_first"])
def test_ip_adapter_loaded_by_diffusers_in_both_orders(order, tagged):
    model, inputs = tiny_model("unet")
    inputs = {**inputs, "added_cond_kwargs": {"image_embeds": [torch.randn(2, 1, 8)]}}
    reference, _ = tiny_model("unet")
    reference._load_ip_adapter_weights(_ip_state_dict(reference))
    expected = forward(reference, inputs)
    if order == "apply_first":
        attnplug.apply(model, tagged)
        model._load_ip_adapter_weights(_ip_state_dict(model))
    else:
        model._load_ip_adapter_weights(_ip_state_dict(model))
        attnplug.apply(model, tagged)
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-5, rtol=1e-5)
    assert attnplug.stats(model)["self"]["method"] == 7
    names = {type(m.processor).__name__ for _, m in attention_modules(model)}
    assert "IPAdapterAttnProcessor2_0" in names
    model.disable_xformers_memory_efficient_attention()  # diffusers' reset path keeps the IP processors
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-5, rtol=1e-5)
    attnplug.remove(model)
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ["lora_first", "apply_first"])
def test_lora_load_fuse_unfuse(order, tagged):
    peft = pytest.importorskip("peft")
    model, inputs = tiny_model("unet")
    base = forward(model, inputs)
    config = peft.LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    reference, _ = tiny_model("unet")
    reference.add_adapter(config)
    expected = forward(reference, inputs)
    if order == "apply_first":
        attnplug.apply(model, tagged)
    model.add_adapter(config)
    model.load_state_dict(reference.state_dict())
    if order == "lora_first":
        attnplug.apply(model, tagged)
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, base, atol=1e-3)  # the LoRA has an effect
    model.fuse_lora()
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-4, rtol=1e-4)
    model.unfuse_lora()
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-4, rtol=1e-4)
    assert attnplug.stats(model)["self"]["method"] == 3 * 7


def test_fuse_qkv_projections_and_remove_stay_exact(tagged):
    model, inputs = tiny_model("unet")
    stock_classes = {n: type(m.processor) for n, m in attention_modules(model)}
    attnplug.apply(model, tagged)
    model.fuse_qkv_projections()
    fused = forward(model, inputs)
    model.unfuse_qkv_projections()
    attnplug.remove(model)
    assert {n: type(m.processor) for n, m in attention_modules(model)} == stock_classes
    torch.testing.assert_close(forward(model, inputs), fused, atol=1e-5, rtol=1e-5)
    assert len(tagged.calls) == 7


def _count_backends(monkeypatch):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    ran = {}
    for name, fn in list(_AttentionBackendRegistry._backends.items()):
        def counted(*args, _fn=fn, _name=name.value, **kwargs):
            ran[_name] = ran.get(_name, 0) + 1
            return _fn(*args, **kwargs)
        monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counted)
    return ran


@pytest.mark.parametrize("order", ["backend_first", "apply_first"])
def test_set_attention_backend_is_kept_where_the_method_does_not_run(order, monkeypatch, tagged, caplog):
    model, inputs = tiny_model("wan")
    stock = forward(model, inputs)
    ran = _count_backends(monkeypatch)
    if order == "apply_first":
        attnplug.apply(model, tagged, layers=[0])
        model.set_attention_backend("_native_math")
    else:
        model.set_attention_backend("_native_math")
        with caplog.at_level(logging.INFO, logger="attnplug"):
            attnplug.apply(model, tagged, layers=[0])
        assert "attention backend _native_math bypassed in the selected layers" in caplog.text
    ran.clear()
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)
    # layer 0 self-attention ran the method (caught before any backend); the other 3 calls kept the user's backend
    assert ran == {"_native_math": 3}, ran
    assert len(tagged.calls) == 1
    attnplug.remove(model)
    ran.clear()
    forward(model, inputs)
    assert ran == {"_native_math": 4}  # the user's choice survives remove
    model.reset_attention_backend()


def test_layer_skip_after_apply(tagged):
    from diffusers.hooks import LayerSkipConfig, apply_layer_skip

    model, inputs = tiny_model("pixart")
    reference, _ = tiny_model("pixart")
    apply_layer_skip(reference, LayerSkipConfig(indices=[0], fqn="transformer_blocks", skip_attention=True,
                                                skip_ff=False))
    expected = forward(reference, inputs)
    attnplug.apply(model, tagged)
    apply_layer_skip(model, LayerSkipConfig(indices=[0], fqn="transformer_blocks", skip_attention=True,
                                            skip_ff=False))
    torch.testing.assert_close(forward(model, inputs), expected, atol=1e-5, rtol=1e-5)
    assert len(tagged.calls) == 1  # block 0's self-attention was skipped by LayerSkip


@pytest.mark.parametrize("order", ["cache_first", "apply_first"])
@pytest.mark.parametrize("cache", ["pab", "first_block"])
def test_diffusers_caches_in_both_orders(cache, order, tagged):
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig

    def run(model, inputs):
        outs = []
        for i, t in enumerate((900, 600, 300)):
            model._current_t = t
            with model.cache_context("cond", step_index=i, num_inference_steps=3):
                outs.append(forward(model, {**inputs, "timestep": torch.tensor([t, t])}))
        return outs

    def config(model):
        if cache == "pab":
            return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                   spatial_attention_timestep_skip_range=(0, 1000),
                                                   current_timestep_callback=lambda: model._current_t)
        return FirstBlockCacheConfig(threshold=0.5)

    reference, inputs = tiny_model("wan")
    reference.enable_cache(config(reference))
    expected = run(reference, inputs)
    model, _ = tiny_model("wan")
    if order == "apply_first":
        attnplug.apply(model, attnplug.DenseConfig())
        model.enable_cache(config(model))
    else:
        model.enable_cache(config(model))
        attnplug.apply(model, attnplug.DenseConfig())
    for a, b in zip(run(model, inputs), expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert attnplug.stats(model)["self"]["method"] > 0
    attnplug.remove(model)
    model.disable_cache()


def test_group_offloading(tagged):
    model, inputs = tiny_model("wan")
    stock = forward(model, inputs)
    attnplug.apply(model, tagged)
    model.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)
    assert len(tagged.calls) == 2


def test_attention_slicing_is_refused_at_apply_and_warned_once_after(caplog, tagged):
    model, inputs = tiny_model("unet")
    model.set_attention_slice("max")
    with pytest.raises(ValueError, match="SlicedAttnProcessor.*disable_attention_slicing"):
        attnplug.apply(model, tagged)
    from diffusers.models.attention_processor import AttnProcessor2_0

    model.set_attn_processor(AttnProcessor2_0())
    attnplug.apply(model, tagged)
    model.set_attention_slice("max")
    with caplog.at_level(logging.WARNING, logger="attnplug"):
        forward(model, inputs)
        forward(model, inputs)
    warnings = [r for r in caplog.records if "makes no scaled_dot_product_attention call" in r.getMessage()]
    assert len(warnings) == 1  # once per processor class, not once per module
    assert attnplug.stats(model)["passthrough"] == 7 * 2 and not tagged.calls  # the 7 self-attention calls


def test_heun_scheduler_counts_steps_not_timesteps(tmp_path, tagged):
    """Second-order schedulers call the denoiser twice per step at a repeated timestep: a step is a step."""
    from diffusers import HeunDiscreteScheduler

    from attnplug.testing import tiny_pipeline

    pipe = tiny_pipeline("sd", str(tmp_path))
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    attnplug.apply(pipe, tagged, schedule=attnplug.Schedule(until_step=0.5))
    pipe("x", num_inference_steps=4, height=32, width=32, guidance_scale=1.0, output_type="pt")
    steps = sorted({(s, n) for *_, s, n in [(c[0], c[1], 4) for c in tagged.calls]})
    assert {s for s, _ in steps} == {0, 1}, steps  # the first half of 4 steps, not of 7 timesteps


def test_ring_context_parallelism_is_refused_clearly():
    from types import SimpleNamespace

    from attnplug.processors.core import context_parallel

    ring = SimpleNamespace(_parallel_config=SimpleNamespace(
        context_parallel_config=SimpleNamespace(ring_degree=2, ulysses_degree=1)))
    with pytest.raises(ValueError, match="supports Ulysses context parallelism only, got ring_degree=2"):
        context_parallel(ring)
    ulysses = SimpleNamespace(_parallel_config=SimpleNamespace(
        context_parallel_config=SimpleNamespace(ring_degree=1, ulysses_degree=2, _ulysses_local_rank=1)))
    assert context_parallel(ulysses) == (2, 1)


@pytest.mark.parametrize("text_first", [True, False])
def test_ulysses_token_order_round_trip(text_first):
    from attnplug.processors.core import from_canonical, to_canonical

    layout = attnplug.TokenLayout(1, 4, 4, text_tokens=6, text_first=text_first)
    world, t, i = 2, 3, 8
    canonical = torch.arange(layout.num_tokens, dtype=torch.float32).view(1, 1, -1, 1)
    text = canonical[:, :, :6] if text_first else canonical[:, :, 16:]
    image = canonical[:, :, 6:] if text_first else canonical[:, :, :16]
    ranks = [torch.cat([text[:, :, r * t:(r + 1) * t], image[:, :, r * i:(r + 1) * i]][:: 1 if text_first else -1],
                       dim=2) for r in range(world)]
    gathered = torch.cat(ranks, dim=2)  # what Ulysses' all-to-all hands the attention op
    assert torch.equal(to_canonical(gathered, layout, world), canonical)
    assert torch.equal(from_canonical(canonical, layout, world), gathered)


@pytest.mark.parametrize("order", ["lora_first", "apply_first"])
def test_pipeline_lora_loader_fuse_unfuse_unload(order, tmp_path, tagged):
    """diffusers' own pipeline LoRA loader (load_lora_weights / fuse_lora / unfuse_lora / unload_lora_weights)."""
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict

    from attnplug.testing import tiny_pipeline

    def images(pipe):
        return pipe("x", num_inference_steps=2, height=32, width=32, guidance_scale=1.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    pipe = tiny_pipeline("sd", str(tmp_path))
    donor = tiny_pipeline("sd", str(tmp_path / "donor")).unet
    donor.add_adapter(peft.LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      init_lora_weights=False))
    lora = {f"unet.{k}": v for k, v in get_peft_model_state_dict(donor).items()}
    def loaded_fused_unloaded(pipe, after_load=lambda: None):
        pipe.load_lora_weights(dict(lora))
        after_load()
        outs = [images(pipe)]
        pipe.fuse_lora()
        outs.append(images(pipe))
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        return outs + [images(pipe)]

    expected = loaded_fused_unloaded(tiny_pipeline("sd", str(tmp_path / "ref")))
    if order == "apply_first":
        attnplug.apply(pipe, tagged)
        got = loaded_fused_unloaded(pipe)
    else:
        got = loaded_fused_unloaded(pipe, after_load=lambda: attnplug.apply(pipe, tagged))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected[0], expected[2], atol=1e-3)  # the LoRA had an effect
    assert attnplug.stats(pipe)["self"]["method"] > 0
