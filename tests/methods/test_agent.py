"""Agent attention method: exactness limits, the method against the float64 kernel reference, agent formation,
joint text handling, masks, families, levels, the default schedule, threads and input validation (the kernel's own
tests are in tests/kernels/test_agent_attention.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.kernels.agent import agent_attention_reference
from attnplug.layout import TokenLayout
from attnplug.methods.agent import AgentConfig, AgentMethod, agent_grid, merge_agents, pool_agents
from attnplug.methods.base import CallInfo
from attnplug.testing import FAMILY_NAMES, forward, run_concurrently, tiny_model

ATOL = 1e-5
EVERY_STEP = attnplug.Schedule()  # bare models have no step count: run on every step instead of the default 40 %
_MODELS: dict[str, tuple] = {}


def _tiny(family: str):
    """``(model, inputs, dense output)`` of a tiny ``family`` model, built once per test session (apply/remove are
    exact, so tests share it)."""
    if family not in _MODELS:
        size = dict(height=8, width=8, frames=2) if family in ("unet", "animatediff") else {}
        model, inputs = tiny_model(family, **size)
        _MODELS[family] = (model, inputs, forward(model, inputs))
    model, inputs, ref = _MODELS[family]
    attnplug.remove(model)
    return model, inputs, ref


def _qkv(layout: TokenLayout, batch=2, heads=3, dim=40, unit_q=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g) for _ in range(3))
    if unit_q:
        q = q / q.norm(dim=-1, keepdim=True)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _exact_config(layout: TokenLayout, **kw) -> AgentConfig:
    """Agents = queries (one agent per token) and a one-hot broadcast: agent attention must equal dense."""
    base = dict(
        agents=(layout.height, layout.width), broadcast_scale=1e4, value_shortcut=0.0, max_level=None,
    )
    base.update(kw)
    return AgentConfig(**base)


def naive_agent(q, k, v, agents, sg, sb, c=0.0):
    return agent_attention_reference(q, k, v, agents, sg, sb, c)


def _method_calls(model) -> int:
    return attnplug.stats(model)["self"]["method"]


# ----------------------------------------------------------------------------------------------------
# Exactness: agents = queries with a one-hot broadcast is dense attention.


@pytest.mark.parametrize("dim", [40, 64, 80])
@pytest.mark.parametrize(
    "layout",
    [
        TokenLayout(1, 5, 7),
        TokenLayout(1, 4, 5, text_tokens=7),
        TokenLayout(1, 3, 5, text_tokens=6, text_first=True),
        TokenLayout(3, 3, 4),
        TokenLayout(2, 3, 3, text_tokens=5, text_first=True),
    ],
    ids=str,
)
def test_agents_equal_queries_with_one_hot_broadcast_is_dense(layout, dim):
    q, k, v = _qkv(layout, dim=dim, unit_q=True)
    out = AgentMethod(_exact_config(layout))(q, k, v, layout)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("source", ["pool", "merge"])
def test_exactness_holds_for_both_agent_sources_and_a_key_padding_mask(source):
    layout = TokenLayout(1, 4, 6, text_tokens=5)
    q, k, v = _qkv(layout, unit_q=True, seed=1)
    mask = torch.ones(2, 1, 1, layout.num_tokens, dtype=torch.bool)
    mask[0, ..., -2:] = False  # padded text tokens of sample 0
    mask[1, ..., 3] = False  # and a masked image key in sample 1
    out = AgentMethod(_exact_config(layout, agent_source=source))(q, k, v, layout, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=0)


def test_exactness_needs_the_one_hot_broadcast():
    """The exactness check can fail: with the default (soft) broadcast the result is not dense."""
    layout = TokenLayout(1, 4, 4)
    q, k, v = _qkv(layout, unit_q=True)
    out = AgentMethod(_exact_config(layout, broadcast_scale=None))(q, k, v, layout)
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------
# The method against the kernel reference.


def test_method_uses_agentsd_scales_and_shortcut():
    """Default scales: gather at the call's scale s, broadcast at s ** 0.3, plus 0.075 * V."""
    layout = TokenLayout(1, 8, 8)
    q, k, v = _qkv(layout, dim=64)
    cfg = AgentConfig(agents=(2, 2))
    scale = 0.1
    out = AgentMethod(cfg)(q, k, v, layout, info=CallInfo(scale=scale))
    agents = q.reshape(2, 3, 2, 4, 2, 4, 64).mean(dim=(3, 5)).reshape(2, 3, 4, 64)
    ref = naive_agent(q, k, v, agents, scale, scale**0.3, 0.075)
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Agent formation.


def test_pool_agents_are_cell_means_per_frame():
    layout = TokenLayout(3, 4, 6)
    q, _, _ = _qkv(layout)
    grid = agent_grid(AgentConfig(agents=(2, 3)), layout)
    assert grid == (3, 2, 3)  # agents per frame
    agents = pool_agents(q, layout.grid, grid)
    x = q.reshape(2, 3, 3, 4, 6, 40)
    ref = torch.stack(
        [x[:, :, f, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean(dim=(2, 3)) for f in range(3) for r in range(2)
         for c in range(3)],
        dim=2,
    )
    torch.testing.assert_close(agents, ref, atol=1e-6, rtol=0)


def test_frame_stride_pools_over_frames():
    layout = TokenLayout(4, 2, 2)
    q, _, _ = _qkv(layout)
    grid = agent_grid(AgentConfig(agents=(1, 1), frame_stride=2), layout)
    assert grid == (2, 1, 1)
    agents = pool_agents(q, layout.grid, grid)
    ref = q.reshape(2, 3, 2, 8, 40).mean(dim=3)
    torch.testing.assert_close(agents, ref, atol=1e-6, rtol=0)


def test_uneven_grid_adaptive_cells_cover_every_token():
    layout = TokenLayout(1, 7, 5)
    q = torch.ones(1, 1, 35, 4)
    grid = agent_grid(AgentConfig(agents=(3, 2)), layout)
    assert grid == (1, 3, 2)
    torch.testing.assert_close(pool_agents(q, layout.grid, grid), torch.ones(1, 1, 6, 4))


def test_count_agents_follow_the_aspect_ratio():
    assert agent_grid(AgentConfig(agents=64), TokenLayout(1, 64, 64)) == (1, 8, 8)
    assert agent_grid(AgentConfig(agents=256), TokenLayout(1, 128, 128)) == (1, 16, 16)
    assert agent_grid(AgentConfig(agents=32), TokenLayout(1, 32, 64)) == (1, 4, 8)
    assert agent_grid(AgentConfig(), TokenLayout(2, 9, 16)) == (2, 3, 4)  # default: one agent per 4x4 cell


def test_merge_agents_identity_and_single_agent():
    layout = TokenLayout(2, 3, 4)
    q, _, _ = _qkv(layout)
    torch.testing.assert_close(merge_agents(q, layout.grid, (2, 3, 4)), q)
    one = merge_agents(q, layout.grid, (2, 1, 1))
    torch.testing.assert_close(one, q.reshape(2, 3, 2, 12, 40).mean(dim=3), atol=1e-6, rtol=0)


def test_merge_agents_average_tokens_into_the_most_similar_destination():
    # Frame 1x4, two agents: destinations are tokens 0 and 2; token 1 resembles token 2, token 3 resembles token 0.
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.1]])
    q = base.reshape(1, 1, 4, 2)
    agents = merge_agents(q, (1, 1, 4), (1, 1, 2))
    ref = torch.stack([(base[0] + base[3]) / 2, (base[1] + base[2]) / 2])[None, None]
    torch.testing.assert_close(agents, ref)


# ----------------------------------------------------------------------------------------------------
# Joint attention: text rows exact.


@pytest.mark.parametrize("text_first", [False, True])
def test_text_rows_are_exact_and_image_rows_approximate(text_first):
    layout = TokenLayout(1, 8, 8, text_tokens=11, text_first=text_first)
    q, k, v = _qkv(layout, dim=64)
    out = AgentMethod(AgentConfig(agents=(2, 2)))(q, k, v, layout)
    ref = F.scaled_dot_product_attention(q, k, v)
    out_img, out_txt = layout.split(out)
    ref_img, ref_txt = layout.split(ref)
    torch.testing.assert_close(out_txt, ref_txt, atol=ATOL, rtol=0)
    assert (out_img - ref_img).abs().max() > 1e-3


class _Spy(AgentMethod):
    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def __call__(self, q, k, v, layout, mask=None, info=None):
        out = super().__call__(q, k, v, layout, mask, info)
        if out is not None:
            self.calls.append((q, k, v, layout, mask, info, out))
        return out


@pytest.mark.parametrize("family", ["sd3", "flux", "cogvideox", "hunyuanvideo"])
def test_text_rows_exact_inside_joint_models(family):
    model, inputs, _ = _tiny(family)
    spy = _Spy(AgentConfig(agents=4))
    attnplug.apply(model, spy, schedule=EVERY_STEP)
    forward(model, inputs)
    assert spy.calls
    for q, k, v, layout, mask, info, out in spy.calls:
        assert layout.text_tokens > 0
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=info.scale)
        torch.testing.assert_close(layout.split(out)[1], layout.split(ref)[1], atol=ATOL, rtol=0)
        assert (layout.split(out)[0] - layout.split(ref)[0]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------------
# Families, dtypes, schedules, blocks.


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_families_run_agent_attention(family):
    model, inputs, ref = _tiny(family)
    attnplug.apply(model, AgentConfig(agents=4), schedule=EVERY_STEP)
    out = forward(model, inputs)
    stats = attnplug.stats(model)
    attnplug.remove(model)
    assert stats["self"]["method"] > 0, stats
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() > 1e-5


def test_video_uses_per_frame_agents():
    model, inputs, _ = _tiny("wan")
    spy = _Spy(AgentConfig(agents=(2, 2)))
    attnplug.apply(model, spy, schedule=EVERY_STEP)
    forward(model, inputs)
    q, k, v, layout, mask, info, out = spy.calls[0]
    assert layout.frames == 3
    assert agent_grid(spy.config, layout) == (3, 2, 2)  # 12 agents: 4 per frame
    agents = pool_agents(q, layout.grid, (3, 2, 2))
    ref = naive_agent(q, k, v, agents, info.scale or q.shape[-1] ** -0.5, (info.scale or q.shape[-1] ** -0.5) ** 0.3,
                      0.075)
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("text", [0, 5])
def test_low_precision_dtypes(dtype, text):
    layout = TokenLayout(1, 6, 6, text_tokens=text)
    q, k, v = _qkv(layout, dim=64)
    method = AgentMethod(AgentConfig(agents=9))
    out = method(q.to(dtype), k.to(dtype), v.to(dtype), layout)
    ref = method(q, k, v, layout)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_default_uses_only_the_finest_attention_level_of_a_unet():
    model, inputs, _ = _tiny("unet")
    spy = _Spy(AgentConfig(agents=4))
    attnplug.apply(model, spy, schedule=EVERY_STEP)
    forward(model, inputs)
    highest = _method_calls(model)
    levels = {info.level for *_, info, _ in spy.calls}
    attnplug.apply(model, AgentConfig(agents=4, max_level=None), schedule=EVERY_STEP)
    forward(model, inputs)
    every = _method_calls(model)
    # tiny U-Net: 8x8 blocks are down_blocks.0 (1 layer) and up_blocks.1 (2 layers); 4x4 has 4 more.
    assert (highest, every) == (3, 7) and levels == {0}


def _sdxl_like_unet():
    from attnplug.testing import sdxl_like_unet

    return sdxl_like_unet()


def test_sdxl_like_unet_runs_on_its_finest_attention_level():
    model, inputs = _sdxl_like_unet()
    ref = forward(model, inputs)
    spy = _Spy(AgentConfig(agents=4))
    with attnplug.applied(model, spy, schedule=EVERY_STEP):
        out = forward(model, inputs)
        stats = attnplug.stats(model)
    assert stats["self"]["method"] > 0 and (out - ref).abs().max() > 1e-5, stats
    assert {c[3].grid for c in spy.calls} == {(1, 8, 8)}  # the 8x8 blocks only, never the 4x4 ones


def test_level_comes_from_call_info_not_from_the_calls_seen():
    """``CallInfo.level`` decides, whatever grids came before: a coarse level seen first is still coarse."""
    method = AgentMethod(AgentConfig(agents=4))
    fine, coarse = TokenLayout(1, 8, 8), TokenLayout(1, 4, 4)
    qf, kf, vf = _qkv(fine)
    qc, kc, vc = _qkv(coarse)
    latent = (1, 16, 16)
    assert method(qc, kc, vc, coarse, info=CallInfo(latent_grid=latent, level=1)) is None
    assert method(qf, kf, vf, fine, info=CallInfo(latent_grid=latent, level=0)) is not None  # smaller than latent
    assert AgentMethod(AgentConfig(agents=4, max_level=1))(qc, kc, vc, coarse, info=CallInfo(level=1)) is not None
    assert AgentMethod(AgentConfig(agents=4, max_level=None))(qc, kc, vc, coarse, info=CallInfo(level=5)) \
        is not None


def test_default_schedule_is_the_first_40_percent_of_steps():
    schedule = AgentConfig().default_schedule()
    assert schedule == attnplug.Schedule(until_step=0.4)
    assert [schedule.step_active(s, 10) for s in range(10)] == [True] * 4 + [False] * 6
    assert "dense_after" not in {f.name for f in dataclasses.fields(AgentConfig)}
    # The method itself no longer looks at steps: the schedule is the only place for them.
    layout = TokenLayout(1, 4, 4)
    q, k, v = _qkv(layout)
    assert AgentMethod(AgentConfig(agents=4))(q, k, v, layout, info=CallInfo(step=9, num_steps=10)) is not None


def test_default_schedule_in_a_pipeline_run():
    """Through a denoising loop (known number of steps) agents run on the first 40 % of the steps only."""
    model, inputs, _ = _tiny("pixart")

    class Holder:  # a pipeline-like holder: attnplug reads the number of steps from its scheduler
        transformer = model
        scheduler = type("S", (), {"timesteps": torch.arange(10, 0, -1) * 90})()

    per_step = []
    with attnplug.applied(Holder(), AgentConfig(agents=4)):
        for t in Holder.scheduler.timesteps:
            attnplug.reset_stats(model)
            forward(model, {**inputs, "timestep": t.repeat(inputs["timestep"].shape[0])})
            per_step.append(_method_calls(model))
    assert [n > 0 for n in per_step] == [True] * 4 + [False] * 6, per_step


def test_two_threads_give_the_single_thread_results():
    method = AgentMethod(AgentConfig(agents=(2, 3), agent_source="merge"))
    layouts = [TokenLayout(1, 6, 9, text_tokens=5), TokenLayout(2, 4, 6)]
    inputs = [[_qkv(layouts[t], batch=1, heads=2, dim=16, seed=10 * t + i) for i in range(12)] for t in range(2)]
    expected = [[method(*x, layouts[t]) for x in inputs[t]] for t in range(2)]
    results = run_concurrently([lambda t=t: [method(*x, layouts[t]) for x in inputs[t]] for t in range(2)])
    for t in range(2):
        assert len(results[t]) == len(expected[t])
        assert all(torch.equal(a, b) for a, b in zip(results[t], expected[t]))


def test_temporal_layout_and_query_dependent_masks_go_dense():
    method = AgentMethod(AgentConfig(agents=1))
    q, k, v = _qkv(TokenLayout(5, 1, 1))
    assert method(q, k, v, TokenLayout(5, 1, 1)) is None
    layout = TokenLayout(1, 3, 3)
    q, k, v = _qkv(layout)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    assert method(q, k, v, layout, causal) is None


def test_standalone_processor():
    model, inputs = tiny_model("pixart")  # its own model: set_attn_processor is not undone by remove()
    ref = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(AgentConfig(agents=4)))
    out = forward(model, inputs)
    assert torch.isfinite(out).all() and (out - ref).abs().max() > 1e-5


def test_config_is_frozen_and_described():
    cfg = AgentConfig(agents=[8, 8])
    assert cfg.agents == (8, 8) and cfg.describe()["method"] == "agent"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agents = 4  # type: ignore[misc]
    assert all(f.metadata.get("help") for f in dataclasses.fields(cfg))
    from attnplug.config import config_from_options

    built = config_from_options("agent", {"agents": 64, "max_level": None})
    assert built == AgentConfig(agents=64, max_level=None)
    assert AgentConfig(pool_stride=2).pool_stride == (2, 2)  # an int means every dimension


# ----------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(agents=0), "agents must be in \\[1"),
        (dict(agents=(0, 4)), "agents for height must be >= 1"),
        (dict(agents=(4, 4, 4)), "agents must be an int, or a tuple of 2"),
        (dict(agents=True), "agents must be an int"),
        (dict(pool_stride=0), "pool_stride for height must be >= 1"),
        (dict(frame_stride=0), "frame_stride must be in"),
        (dict(frame_stride=1.5), "frame_stride must be an int"),
        (dict(agent_source="kmeans"), "agent_source must be one of 'pool', 'merge'"),
        (dict(uneven="pad"), "uneven must be one of"),
        (dict(gather_scale=-1.0), "gather_scale must be in"),
        (dict(broadcast_scale=-1.0), "broadcast_scale must be in"),
        (dict(broadcast_scale_power=math.nan), "broadcast_scale_power must be a finite number"),
        (dict(value_shortcut=math.inf), "value_shortcut must be a finite number"),
        (dict(max_level=-1), "max_level must be in"),
        (dict(max_level="highest"), "max_level must be an int"),
        (dict(chunk_size=0), "chunk_size must be in"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AgentConfig(**kwargs)


def test_more_agents_than_tokens():
    layout = TokenLayout(1, 4, 4)
    q, k, v = _qkv(layout)
    with pytest.raises(ValueError, match="more than the 16 image tokens"):
        AgentMethod(AgentConfig(agents=17))(q, k, v, layout)
    with pytest.raises(ValueError, match="more agents than tokens"):
        AgentMethod(AgentConfig(agents=(5, 2)))(q, k, v, layout)
    with pytest.raises(ValueError, match="cannot be arranged"):
        AgentMethod(AgentConfig(agents=7))(q, k, v, layout)


def test_grid_not_dividing_without_padding_rule():
    layout = TokenLayout(1, 6, 6)
    q, k, v = _qkv(layout)
    with pytest.raises(ValueError, match="does not divide the 6x6 token grid"):
        AgentMethod(AgentConfig(agents=(4, 4), uneven="error"))(q, k, v, layout)
    with pytest.raises(ValueError, match="pool_stride=\\(4, 4\\) does not divide"):
        AgentMethod(AgentConfig(uneven="error"))(q, k, v, layout)
    with pytest.raises(ValueError, match="frame_stride=2 does not divide the 3 frames"):
        agent_grid(AgentConfig(agents=(1, 1), frame_stride=2, uneven="error"), TokenLayout(3, 2, 2))
    # The same grids are fine under the adaptive rule.
    assert AgentMethod(AgentConfig(agents=(4, 4)))(q, k, v, layout).shape == q.shape
