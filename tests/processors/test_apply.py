"""apply(): targets, name + fields, schedules and steps, validation before change, stats, standalone processors."""

import copy
import logging

import pytest
import torch

import attnplug
from attnplug.reasons import register
from attnplug.testing import forward, tiny_model

# the codes this file's own methods hand back with (a method registers its codes where it is defined)
register("grid-too-small", "test method: the grid is too small")
register("stale", "test method: a code left on the thread by an earlier call")


def test_unsupported_targets_and_configs_are_named():
    with pytest.raises(TypeError, match=r"Linear.*Supported denoisers:.*UNet2DConditionModel"):
        attnplug.apply(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pipeline"):
        attnplug.apply(object())
    model = tiny_model("pixart")[0]
    with pytest.raises(ValueError, match="Unknown method 'nope'; choose one of .*agent"):
        attnplug.apply(model, "nope")
    with pytest.raises(TypeError, match=r"the class AgentConfig; use AgentConfig\(\)"):
        attnplug.apply(model, attnplug.AgentConfig)
    with pytest.raises(TypeError, match="method fields"):
        attnplug.apply(model, attnplug.DenseConfig(), agents=4)


def test_method_by_name_with_fields():
    model, inputs = tiny_model("pixart")
    attnplug.apply(model, "neighborhood", kernel_size=3)
    assert type(attnplug.method_of(model)).__name__ == "NeighborhoodMethod"
    forward(model, inputs)
    assert attnplug.stats(model)["self"]["calls"] == 2


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
    with pytest.raises(ValueError, match=r"steps=\(5, 2\) selects no step"):
        attnplug.apply(model, steps=(5, 2))


def test_apply_validates_before_replacing_the_previous_application(tagged):
    model, inputs = tiny_model("wan")
    attnplug.apply(model, tagged)
    with pytest.raises(ValueError, match="out of range"):
        attnplug.apply(model, attnplug.DenseConfig(), layers=[9])
    assert attnplug.method_of(model) is tagged  # still applied, unchanged
    forward(model, inputs)
    assert len(tagged.calls) == 2


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
    with pytest.raises(ValueError, match=r"warmup_steps as a fraction must be in \[0, 1\), got 1.5"):
        attnplug.Schedule(warmup_steps=1.5)
    with pytest.raises(ValueError, match="warmup_steps is a fraction but the number of denoising steps is unknown"):
        attnplug.Schedule(warmup_steps=0.25).step_active(0, None)
    assert [attnplug.Schedule(warmup_steps=0.25).step_active(i, 8) for i in range(3)] == [False, False, True]


def test_a_fraction_default_schedule_on_a_bare_model_runs_every_step_and_says_so(caplog):
    """AgentSD's default (the first 40 % of the steps) needs the run's length; a model called without its pipeline
    has none, so the method runs at every step, with one warning (a schedule the caller gives still raises)."""
    from attnplug._logging import log_scope

    model, inputs = tiny_model("unet")
    with caplog.at_level(logging.WARNING, logger="attnplug"), log_scope():  # said once per scope
        attnplug.apply(model, "agent")
        forward(model, inputs)
    assert attnplug.stats(model)["self"]["method"] > 0
    assert "default schedule" in caplog.text and "runs at every step" in caplog.text
    attnplug.apply(model, "agent", schedule=attnplug.Schedule(until_step=0.4))
    with pytest.raises(ValueError, match="number of denoising steps is unknown"):
        forward(model, inputs)


def test_layers_and_steps_from_timesteps_with_reasons(tagged):
    model, inputs = tiny_model("wan")
    attnplug.apply(model, tagged, layers=[1], steps=(1, 3))
    for t in (900, 900, 600, 300, 100):  # the repeated timestep is a second guidance pass of step 0
        forward(model, {**inputs, "timestep": torch.tensor([t, t])})
    assert [(i, s) for i, s, *_ in tagged.calls] == [(1, 1), (1, 2)]
    st = attnplug.stats(model)["self"]
    assert st["calls"] == 10 and st["method"] == 2 and st["stock"] == 8
    assert st["reasons"] == {"layer-not-selected": 5, "outside-schedule": 3}


def test_steps_from_cache_context(tagged):
    """Pipelines that name the step (diffusers' CacheContext) are followed exactly, timestep ignored."""
    model, inputs = tiny_model("wan")
    attnplug.apply(model, tagged, steps=(1, 2))
    for i in range(3):
        for name in ("cond", "uncond"):
            with model.cache_context(name, step_index=i, num_inference_steps=3):
                forward(model, {**inputs, "timestep": torch.tensor([500, 500])})  # same timestep every step
    assert [(s, g) for _, s, _, g in tagged.calls] == [(1, "cond"), (1, "cond"), (1, "uncond"), (1, "uncond")]


def test_fraction_schedule_needs_pipeline_step_count(tagged):
    model, inputs = tiny_model("pixart")
    attnplug.apply(model, tagged, schedule=attnplug.Schedule(until_step=0.5))
    with pytest.raises(ValueError, match="number of denoising steps is unknown"):
        forward(model, inputs)


def test_unet_level_is_relative_to_the_finest_attention_level(tagged):
    """A U-Net without attention at the latent resolution (SDXL's layout) still has a level-0 attention layer."""
    from attnplug.testing import sdxl_like_unet

    model, inputs = sdxl_like_unet()
    attnplug.apply(model, tagged)
    forward(model, inputs)
    levels = [level for _, _, level, _ in tagged.calls]
    assert min(levels) == 0 and max(levels) == 1 and len(levels) == attnplug.stats(model)["self"]["calls"]


def test_a_method_that_ran_on_nothing_warns_once_with_the_reasons(caplog):
    from attnplug.methods.base import AttentionMethod

    class Never(AttentionMethod):
        def __call__(self, q, k, v, layout, mask=None, info=None):
            return self.hand_back("grid-too-small")

    model, inputs = tiny_model("pixart")
    attnplug.apply(model, Never(), steps=(1, 3))
    with caplog.at_level(logging.WARNING, logger="attnplug"):
        for t in (900, 600, 300):
            forward(model, {**inputs, "timestep": torch.tensor([t, t])})
        # the run's length is unknown (a bare model): judged when the run ends, here at remove
        assert not [r for r in caplog.records if "ran on none" in r.getMessage()]
        attnplug.remove(model)
    warnings = [r.getMessage() for r in caplog.records if "ran on none" in r.getMessage()]
    assert len(warnings) == 1 and "grid-too-small (4)" in warnings[0] and "outside-schedule (2)" in warnings[0]

    caplog.clear()
    wan, wan_inputs = tiny_model("wan")
    attnplug.apply(wan, Never(), schedule=attnplug.Schedule(warmup_steps=1))
    with caplog.at_level(logging.WARNING, logger="attnplug"):
        for i in range(3):  # a pipeline names its steps: judged at the last one, without remove
            with wan.cache_context("cond", step_index=i, num_inference_steps=3):
                forward(wan, wan_inputs)
            assert len([r for r in caplog.records if "ran on none" in r.getMessage()]) == (i == 2)


def test_stats_count_handbacks_with_the_methods_reason():
    from attnplug.methods.base import AttentionMethod

    class Never(AttentionMethod):
        def __call__(self, q, k, v, layout, mask=None, info=None):
            return self.hand_back("grid-too-small")

    class Silent(AttentionMethod):
        def __call__(self, q, k, v, layout, mask=None, info=None):
            return None

    model, inputs = tiny_model("pixart")
    Never().hand_back("stale")  # a code left on this thread by an earlier call is not reported
    attnplug.apply(model, Silent())
    forward(model, inputs)
    assert attnplug.stats(model)["self"]["reasons"] == {"handed-back": 2}
    attnplug.apply(model, Never())
    stock = forward(tiny_model("pixart")[0], inputs)
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)
    st = attnplug.stats(model)
    assert st["self"] == {"calls": 2, "method": 0, "stock": 2, "reasons": {"grid-too-small": 2}}
    attnplug.reset_stats(model)
    assert attnplug.stats(model)["self"]["calls"] == 0


def test_standalone_processor_counts_and_infers_square_grid_or_fails_clearly(tagged):
    model, inputs = tiny_model("pixart", height=16, width=16)
    stock = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(attnplug.DenseConfig()))
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)
    st = attnplug.stats(model)
    assert st["self"]["method"] == 2 and st["cross"]["stock"] == 2

    model, inputs = tiny_model("pixart", height=16, width=24)
    model.set_attn_processor(attnplug.AttnplugProcessor(tagged))
    with pytest.raises(ValueError, match="96 tokens: it is not a square"):
        forward(model, inputs)


def test_standalone_processor_keeps_rope_for_flux():
    model, inputs = tiny_model("flux")
    stock = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(attnplug.DenseConfig(), layout=attnplug.TokenLayout(
        1, 8, 8, text_tokens=7, text_first=True)))
    torch.testing.assert_close(forward(model, inputs), stock, atol=1e-5, rtol=1e-5)


def test_deepcopy_of_an_applied_model_is_independent(tagged):
    model, inputs = tiny_model("wan")
    attnplug.apply(model, tagged)
    clone = copy.deepcopy(model)
    forward(clone, inputs)
    assert len(tagged.calls) == 0  # the copy runs its own copy of the method
    assert attnplug.stats(model)["self"]["calls"] == 0
    assert attnplug.stats(clone)["self"]["calls"] == 2
    attnplug.remove(clone)
    forward(model, inputs)
    assert len(tagged.calls) == 2


def test_method_of_and_the_apply_log(tagged, caplog):
    model, _ = tiny_model("pixart")
    assert attnplug.method_of(model) is None
    with caplog.at_level(logging.INFO, logger="attnplug"):
        attnplug.apply(model, tagged)
    assert attnplug.method_of(model) is tagged
    assert "Tagged on 2 of 2 self-attention layers of PixArtTransformer2DModel" in caplog.text
    attnplug.remove(model)
    assert attnplug.method_of(model) is None


def test_every_denoiser_of_a_pipeline_is_patched(tmp_path, tagged):
    """Wan 2.2 pipelines hold two experts (transformer, transformer_2): both run the method."""
    from diffusers import WanPipeline

    from attnplug.testing import tiny_pipeline

    pipe = tiny_pipeline("wan", str(tmp_path))
    second = copy.deepcopy(pipe.transformer)
    pipe = WanPipeline(**{**pipe.components, "transformer_2": second}, boundary_ratio=0.5)
    attnplug.apply(pipe, tagged)
    assert attnplug.method_of(pipe.transformer) is attnplug.method_of(pipe.transformer_2) is tagged
    pipe("x", num_inference_steps=2, height=16, width=16, num_frames=5, output_type="pt", guidance_scale=1.0)
    per_model = [attnplug.stats(m)["self"]["method"] for m in (pipe.transformer, pipe.transformer_2)]
    assert all(n > 0 for n in per_model), per_model
    assert attnplug.stats(pipe)["self"]["method"] == sum(per_model)
    attnplug.remove(pipe)
    assert attnplug.method_of(pipe.transformer_2) is None


def _hooked(model) -> list[str]:
    """Modules of ``model`` with a diffusers hook, an instance ``forward`` or a torch hook left."""
    return [name or "<root>" for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
            or "forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize("where", ["attention", "model_hook"])
def test_a_failure_midway_through_apply_leaves_nothing_and_apply_works_again(monkeypatch, where):
    from attnplug.methods.base import AttentionMethod
    from attnplug.processors import hooks

    model, inputs = tiny_model("wan")  # 2 self- and 2 cross-attention modules
    stock = forward(model, inputs)
    if where == "attention":
        real, calls = hooks.bind_forward, []

        def failing(module):
            calls.append(module)
            if len(calls) == 3:
                raise RuntimeError("boom")
            real(module)

        monkeypatch.setattr("attnplug.plugin.install.bind_forward", failing)
    else:
        monkeypatch.setattr(AttentionMethod, "model_hook", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        attnplug.apply(model, "dense")
    assert attnplug.method_of(model) is None and _hooked(model) == []
    monkeypatch.undo()
    attnplug.apply(model, "dense")
    assert torch.equal(forward(model, inputs), stock)
    attnplug.remove(model)
    assert _hooked(model) == []


def test_remove_visits_only_the_installed_sites(monkeypatch):
    model, _ = tiny_model("unet")
    attnplug.apply(model, "dense")
    walks = []
    for name in ("modules", "named_modules"):
        real = getattr(torch.nn.Module, name)
        monkeypatch.setattr(torch.nn.Module, name, lambda self, *a, _real=real, **k: walks.append(self) or
                            _real(self, *a, **k))
    attnplug.remove(model)
    monkeypatch.undo()
    assert walks.count(model) <= 1  # at most the one look for denoisers; never once per hook
    assert attnplug.method_of(model) is None and _hooked(model) == []
