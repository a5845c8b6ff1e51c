"""torch.compile over whole denoising loops: fullgraph, same output as eager, a bounded number of graphs."""

import contextlib
import os
import sys

import pytest
import torch

import attnplug
from attnplug.testing import tiny_model

sys.path.insert(0, os.path.dirname(__file__))  # sync_counter (tests run in importlib mode)
from sync_counter import use_fake_block_sparse_kernel  # noqa: E402

STEPS = 10


def _loop(model, inputs, call):
    """A 10-step loop over the denoiser, in a pipeline's cache context where the model has one."""
    outs = []
    key = "timestep"
    for i, t in enumerate(torch.linspace(999, 50, STEPS)):
        timestep = t.expand(inputs[key].shape) if inputs[key].ndim else t
        ctx = (model.cache_context("cond", step_index=i, num_inference_steps=STEPS)
               if hasattr(model, "cache_context") else contextlib.nullcontext())
        with ctx, torch.no_grad():
            outs.append(call(**{**inputs, key: timestep}, return_dict=False)[0])
    return outs


def _unique_graphs():
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("method", ["dense", "neighborhood"])
@pytest.mark.parametrize("family", ["flux", "wan", "unet"])
def test_fullgraph_compile_over_a_denoising_loop(family, method):
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    model, inputs = tiny_model(family, batch=1)
    config = attnplug.DenseConfig() if method == "dense" else attnplug.NeighborhoodConfig(kernel_size=3)
    attnplug.apply(model, config)
    eager = _loop(model, inputs, model)  # Flux reads its grid from img_ids in this eager pass
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    outs = _loop(model, inputs, compiled)
    for a, b in zip(outs, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert _unique_graphs() <= 2, dict(counters["stats"])
    st = attnplug.stats(model)["self"]
    assert st["calls"] == 2 * STEPS * (st["calls"] // (2 * STEPS)) and st["method"] + st["stock"] == st["calls"]
    assert st["method"] > 0


def test_regional_compile_uses_one_graph_for_all_blocks():
    from diffusers import WanTransformer3DModel

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=10, rope_max_seq_len=32,
    ).eval()
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 16, 16), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 7, 16))
    attnplug.apply(model, attnplug.NeighborhoodConfig(kernel_size=3), layers=list(range(1, 10)))
    eager = _loop(model, inputs, model)
    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    outs = _loop(model, inputs, model)
    for a, b in zip(outs, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # block 0 does not run the method (layers=1..9): one graph for it, one shared by the other nine blocks
    assert _unique_graphs() <= 2, dict(counters["stats"])
    assert attnplug.stats(model)["self"]["method"] == 9 * STEPS * 2


METHOD_CASES = [
    ("wan", "neighborhood"),
    ("flux", "neighborhood"),
    ("wan", "neighborhood-flex"),
    ("wan", "window"),
    ("flux", "window"),
    ("wan", "window-random"),
    ("wan", "agent"),
    ("flux", "agent"),
    *(("wan", f"sparse-{p}") for p in ("tiles", "heads", "topk", "threshold")),
    *(("flux", f"sparse-{p}") for p in ("topk", "threshold")),
]


def _method_config(case: str):
    """The config of a compile case, and the schedule it runs under (None: the method's default)."""
    if case.startswith("neighborhood"):  # the block-sparse path (the GPU one), not the CPU tiles
        backend = case.partition("-")[2] or "triton"
        try:
            return attnplug.NeighborhoodConfig(kernel_size=3, backend=backend), None
        except ValueError as e:
            pytest.skip(str(e))
    if case.startswith("window"):
        return attnplug.WindowConfig(shift="random" if case.endswith("random") else "cycle"), None
    if case == "agent":  # AgentSD's default schedule: the method in the first 40 % of the steps, stock after
        return attnplug.AgentConfig(agents=4), None
    return attnplug.SparseVideoConfig(pattern=case.removeprefix("sparse-"), backend="triton"), attnplug.Schedule()


@pytest.mark.parametrize(("family", "case"), METHOD_CASES)
def test_methods_compile_once_over_a_denoising_loop(family, case, monkeypatch):
    """fullgraph, at most 2 graphs over 10 steps (a step-dependent shift or schedule makes no graph per step), the
    eager output, and the method counted in the compiled calls."""
    use_fake_block_sparse_kernel(monkeypatch)  # the block-sparse kernel: zeros, the Python around it traced
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    model, inputs = tiny_model(family, frames=4, batch=1)
    config, schedule = _method_config(case)
    attnplug.apply(model, config, schedule=schedule)
    eager = _loop(model, inputs, model)
    ran_eager = attnplug.stats(model)["self"]["method"]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    outs = _loop(model, inputs, compiled)
    for a, b in zip(outs, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert _unique_graphs() <= 2, dict(counters["stats"])
    assert ran_eager > 0
    assert attnplug.stats(model)["self"]["method"] == 2 * ran_eager  # the compiled calls ran it as often
