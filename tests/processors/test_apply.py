"""apply(): targets, schedules, bad input, standalone processors, and what users combine it with."""

import pytest
import torch

import attnplug
from attnplug.methods.base import AttentionMethod
from attnplug.methods.dense import dense_attention
from attnplug.plugin import attention_modules
from attnplug.testing import forward, tiny_model


class Tagged(AttentionMethod):
    """Exact attention that records (layer index, step) of every call it serves."""

    supports_mask = True

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, layout, mask=None, info=None):
        self.calls.append((info.layer_index, info.step))
        return dense_attention(q, k, v, mask, info.scale)


def test_unsupported_module_names_class_and_families():
    with pytest.raises(TypeError, match=r"Linear.*Supported denoisers:.*UNet2DConditionModel"):
        attnplug.apply(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pipeline"):
        attnplug.apply(object())
    with pytest.raises(TypeError, match="method config"):
        attnplug.apply(tiny_model("pixart")[0], "agent")


def test_layer_selection_out_of_range_says_range():
    model, _ = tiny_model("wan")  # 2 self-attention layers
    with pytest.raises(ValueError, match=r"\[5\] out of range.*2 self-attention layers.*0\.\.1"):
        attnplug.apply(model, layers=[0, 5])
    with pytest.raises(ValueError, match="matches none"):
        attnplug.apply(model, layers=r"^nothing$")
    with pytest.raises(ValueError, match="only 2 self-attention layers"):
        attnplug.apply(model, schedule=attnplug.Schedule(skip_first_layers=2, skip_last_layers=1))
    with pytest.raises(ValueError, match="not both"):
        attnplug.apply(model, schedule=attnplug.Schedule(), layers=[0])


def test_schedule_validation():
    with pytest.raises(ValueError, match="warmup_steps"):
        attnplug.Schedule(warmup_steps=-1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        attnplug.Schedule(until_step=1.5)
    with pytest.raises(ValueError, match="regular expression"):
        attnplug.Schedule(layers="(")
    with pytest.raises(ValueError, match=r"exceeds the 4 denoising steps.*0\.\.4"):
        attnplug.Schedule(warmup_steps=9).step_active(0, 4)
    with pytest.raises(ValueError, match=r"until_step=7 exceeds"):
        attnplug.Schedule(until_step=7).step_active(0, 4)


def test_layers_and_steps_select_calls():
    model, inputs = tiny_model("wan")
    method = Tagged()
    attnplug.apply(model, method, layers=[1], steps=(1, 3))
    for t in (900, 900, 600, 300, 100):  # the repeated timestep is a second guidance pass of step 0
        forward(model, {**inputs, "timestep": torch.tensor([t, t])})
    assert method.calls == [(1, 1), (1, 2)]
    stats = attnplug.stats(model)
    assert stats["method"] == 2 and stats["dense: step outside the schedule"] == 3
    assert stats["dense: layer not selected"] == 5


def test_layers_by_regex_and_skip_first_last():
    model, inputs = tiny_model("unet")
    method = Tagged()
    attnplug.apply(model, method, layers=r"^down_blocks")
    forward(model, inputs)
    assert {i for i, _ in method.calls} == {0, 1}  # two down-block self-attentions
    method2 = Tagged()
    attnplug.apply(model, method2, schedule=attnplug.Schedule(skip_first_layers=1, skip_last_layers=1))
    forward(model, inputs)
    n = attnplug.stats(model)["calls"] // 2  # half of the calls are cross-attention
    assert {i for i, _ in method2.calls} == set(range(1, n - 1))


def test_fraction_schedule_needs_pipeline_step_count():
    model, inputs = tiny_model("pixart")
    attnplug.apply(model, Tagged(), schedule=attnplug.Schedule(until_step=0.5))
    with pytest.raises(ValueError, match="number of denoising steps is unknown"):
        forward(model, inputs)


def test_standalone_processor_infers_square_grid_or_fails_clearly():
    model, inputs = tiny_model("pixart", height=16, width=16)
    stock = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(attnplug.DenseConfig()))
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)

    model, inputs = tiny_model("pixart", height=16, width=24)
    model.set_attn_processor(attnplug.AttnplugProcessor(Tagged()))
    with pytest.raises(ValueError, match="96 tokens: it is not a square"):
        forward(model, inputs)


def test_standalone_processor_keeps_rope_for_flux():
    model, inputs = tiny_model("flux")
    stock = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(attnplug.DenseConfig(), layout=attnplug.TokenLayout(
        1, 8, 8, text_tokens=7, text_first=True)))
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)


def test_replaced_processor_is_rewrapped():
    """diffusers' IP-adapter loading replaces processors after apply(); the next call wraps the new ones."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    model, inputs = tiny_model("unet")
    method = Tagged()
    attnplug.apply(model, method)
    model.set_attn_processor(AttnProcessor2_0())  # what a loader does
    forward(model, inputs)
    assert len(method.calls) > 0
    for _, module in attention_modules(model):
        assert isinstance(module.processor, attnplug.AttnplugProcessor)
        assert isinstance(module.processor.stock, AttnProcessor2_0)
    attnplug.remove(model)
    assert all(isinstance(m.processor, AttnProcessor2_0) for _, m in attention_modules(model))


def test_lora_loaded_after_apply():
    peft = pytest.importorskip("peft")
    model, inputs = tiny_model("unet")
    config = peft.LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    reference, _ = tiny_model("unet")
    reference.add_adapter(config)
    attnplug.apply(model, Tagged())
    model.add_adapter(config)
    model.load_state_dict(reference.state_dict())
    out = forward(model, inputs)
    ref = forward(reference, inputs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert attnplug.stats(model)["method"] > 0
    assert not torch.allclose(out, forward(tiny_model("unet")[0], inputs), atol=1e-3)  # LoRA had an effect


def test_accelerate_offload_hooks():
    from accelerate import cpu_offload_with_hook

    model, inputs = tiny_model("sd3")
    stock = forward(model, inputs)
    model, hook = cpu_offload_with_hook(model, execution_device="cpu")
    attnplug.apply(model, Tagged())
    out = forward(model, inputs)
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
    assert attnplug.stats(model)["method"] > 0
    hook.offload()
    attnplug.remove(model)


@pytest.mark.parametrize(
    "family", ["pixart", pytest.param("unet", marks=pytest.mark.slow), pytest.param("flux", marks=pytest.mark.slow)]
)
def test_torch_compile_same_output_and_graph_breaks_counted(family, capsys):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, inputs = tiny_model(family)
    stock = forward(model, inputs)
    attnplug.apply(model, attnplug.DenseConfig())
    compiled = torch.compile(model, backend="aot_eager")
    out = forward(compiled, inputs)
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
    assert attnplug.stats(model)["method"] > 0
    breaks = sum(counters["graph_break"].values())
    with capsys.disabled():
        reasons = sorted({r.splitlines()[0][:70] for r in counters["graph_break"]})
        print(f"\n[torch.compile {family}] graph breaks: {breaks} ({'; '.join(reasons)})")


def test_method_of_returns_applied_method():
    model, _ = tiny_model("pixart")
    assert attnplug.method_of(model) is None
    method = Tagged()
    attnplug.apply(model, method)
    assert attnplug.method_of(model) is method
    attnplug.remove(model)
    assert attnplug.method_of(model) is None
