"""No host synchronisation in steady state: after a model's first denoiser call (plans, tables and layouts are built
there), an attention call makes no operation that would wait for a CUDA device, and the step tracker reads the
timestep at most once per denoiser call (never when the pipeline passes the step index).

The block-sparse kernel op is replaced by a stand-in that returns zeros, so only the Python around it runs; the
counter (:mod:`sync_counter`) counts the would-sync operations of attnplug's own code on CPU tensors.
"""

import contextlib
import os
import sys

import pytest
import torch

import attnplug
from attnplug.testing import tiny_model

sys.path.insert(0, os.path.dirname(__file__))  # sync_counter (tests run in importlib mode)
from sync_counter import SyncCounter, use_fake_block_sparse_kernel  # noqa: E402

CALLS = 4  # denoiser calls: the first builds everything, the other three are counted
FAMILIES = ("wan", "hunyuanvideo")  # Wan passes its step index; HunyuanVideo a key-padding mask on every call
PATTERNS = ("tiles", "heads", "topk", "threshold", "long")


@pytest.fixture
def fake_kernel(monkeypatch):
    use_fake_block_sparse_kernel(monkeypatch)


def _config(name: str):
    """The method config of a test case; skipped where its backend does not exist (yet)."""
    method, _, backend = name.partition("/")
    try:
        if method == "neighborhood":
            return attnplug.NeighborhoodConfig(kernel_size=3, backend=backend)
        if method.startswith("sparse-"):
            return attnplug.SparseVideoConfig(pattern=method.removeprefix("sparse-"), backend=backend)
    except ValueError as e:
        pytest.skip(f"{name}: {e}")
    if method == "window":
        return attnplug.WindowConfig(shift=backend or "cycle")
    if method == "agent":
        return attnplug.AgentConfig(agent_source=backend or "pool")
    raise AssertionError(name)


CASES = [
    "neighborhood/triton",
    "neighborhood/flex",
    "window",
    "window/random",
    "agent",
    "agent/merge",
    *(f"sparse-{p}/triton" for p in PATTERNS),
    *(f"sparse-{p}/flex" for p in PATTERNS),
]


def _denoise(model, inputs, family: str, calls: int, sync: SyncCounter | None = None) -> None:
    """``calls`` denoiser calls at falling timesteps; Wan in a pipeline's cache context with the step index,
    HunyuanVideo without (its pipeline passes none). ``sync`` is cleared after the first call."""
    for i, t in enumerate(torch.linspace(999, 100, calls)):
        timestep = t.to(inputs["timestep"].dtype).expand(inputs["timestep"].shape)
        context = (model.cache_context("cond", step_index=i, num_inference_steps=calls) if family == "wan"
                   else contextlib.nullcontext())
        with context, torch.no_grad():
            model(**{**inputs, "timestep": timestep}, return_dict=False)
        if i == 0 and sync is not None:
            sync.clear()


def _applied(family: str, config):
    model, inputs = tiny_model(family, frames=4, batch=2)  # (4, 8, 8) token grid: whole 64-token tiles
    attnplug.apply(model, config, schedule=attnplug.Schedule(warmup_steps=0))
    return model, inputs


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_no_host_sync_per_attention_call_after_the_first(family, case, fake_kernel):
    config = _config(case)
    model, inputs = _applied(family, config)
    with SyncCounter() as sync:
        sync.watch(model)
        _denoise(model, inputs, family, CALLS, sync)
    assert sync.calls["self-attention"] > 0
    for scope in ("self-attention", "cross-attention"):
        assert sync.total(scope) == 0, sync.report(scope)
    st = attnplug.stats(model)["self"]
    if family == "wan" or type(config.build()).supports_mask:
        assert st["method"] >= (CALLS - 1) * sync.calls["self-attention"] // CALLS, st  # it ran, it was counted
    else:  # HunyuanVideo's mask: handed back, which must be sync-free too
        assert st["method"] == 0 and {"mask-unsupported", "attention-mask"} & set(st["reasons"]), st


@pytest.mark.parametrize("family", FAMILIES)
def test_step_tracker_reads_the_timestep_at_most_once_per_denoiser_call(family):
    model, inputs = _applied(family, attnplug.WindowConfig())  # window reads the step: the tracker follows it
    with SyncCounter() as sync:
        sync.watch(model)
        _denoise(model, inputs, family, CALLS, sync)
    denoiser_calls = sync.calls["denoiser"]
    assert denoiser_calls == CALLS - 1
    if family == "wan":  # the step index comes with the cache context: nothing to read
        assert sync.total() == 0, sync.report()
    else:
        assert sync.total("denoiser") <= denoiser_calls, sync.report("denoiser")
        assert sync.total() == sync.total("denoiser"), sync.report()


def test_flux_reads_its_token_grid_from_img_ids_once():
    model, inputs = tiny_model("flux", batch=1)
    attnplug.apply(model, attnplug.NeighborhoodConfig(kernel_size=3))
    with SyncCounter() as sync:
        sync.watch(model)
        with torch.no_grad():
            model(**inputs, return_dict=False)
            assert 0 < sync.total("denoiser") <= 1, sync.report("denoiser")  # one read of the img_ids values
            sync.clear()
            model(**inputs, return_dict=False)  # the same img_ids tensor: the grid is known
        assert sync.total() == 0, sync.report()
        inputs = {**inputs, "img_ids": inputs["img_ids"].clone()}
        with torch.no_grad():
            model(**inputs, return_dict=False)  # a new img_ids tensor is read again
        assert sync.total("denoiser") == 1, sync.report("denoiser")
    assert attnplug.stats(model)["self"]["method"] > 0


def test_counter_counts_each_would_sync_operation_at_its_call_site():
    x = torch.arange(6.0)
    index = torch.tensor(2)
    with SyncCounter() as sync:
        x[0].item(), bool(x.any()), int(x[0]), float(x[1]), x[:index], x.tolist(), x.numpy(), x.cpu()
        x.to("cpu"), x.to(device="cpu"), x.nonzero(), torch.nonzero(x), x[x > 2], torch.where(x > 2)
        x.repeat_interleave(torch.ones(6, dtype=torch.long)), torch.unique(x), x.masked_select(x > 1)
        y = x.clone()
        y[y > 3] = 0
        # none of these would sync (x.to(q.device) follows q: no copy back to the host on CUDA runs)
        x.to(torch.float64), x.to(x.device), x.repeat_interleave(2), torch.where(x > 2, x, 0.0), x[index], x + 1
        x.repeat_interleave(torch.ones(6, dtype=torch.long), output_size=6)
    sites = sync.sites(foreign=True)
    assert sync.total() == 0  # nothing came from attnplug's code
    assert sum(sites.values()) == 18, sites
    assert all(site.startswith(f"{__file__}:") for site in sites), sites
    assert {"x[bool_mask]", "x[bool_mask]=", "to(cpu)", "__index__"} <= {s.rsplit(" ", 1)[1] for s in sites}
    assert torch.Tensor.item is torch._C.TensorBase.item  # everything put back


def test_counter_attributes_calls_to_the_attnplug_frame_and_scope():
    from attnplug.layout import TokenLayout

    with SyncCounter() as sync, sync.scope("mine"):
        TokenLayout.square(torch.tensor(9))  # math.isqrt(tensor) and a tensor comparison, inside attnplug
    sites = sync.sites("mine")
    assert sites and all(site.startswith("attnplug/layout.py:") for site in sites), sites
    assert sync.calls["mine"] == 1 and sync.total("outside") == 0
