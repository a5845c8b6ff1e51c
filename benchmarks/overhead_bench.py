"""Per-call overhead of attnplug's interception: a tiny denoiser, stock vs attnplug Dense (identical maths),
interleaved in one process, 1 thread.

Three copies of each model run in turn: stock, attnplug Dense (self-attention intercepted, cross-attention stays
stock) and attnplug with no layer selected (every call stays stock). The idle copy gives the cost of a call that
stays stock; the Dense copy, less that cost for its stock calls, gives the cost of an intercepted call. Each is the
median over rounds of the difference to stock within the round, in CPU time of the benchmark's thread (``wall_*``:
the same in wall-clock time, which other processes' time slices inflate on a shared machine). Timed twice: every
attention module of one forward called with the inputs it got there, ``--inner`` times per sample (the per-call
figures), and the whole forward (``forward_*``: the denoiser's pre-hook included, spread over its few calls).
``us_stock_hook_path``: the hook's own Python on a call that stays stock, timed with the module's forward a no-op.

    python benchmarks/overhead_bench.py [--repeats 300] [--label after] [--out benchmarks/results/overhead_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import torch

import attnplug
from attnplug.report import environment, time_interleaved
from attnplug.report.timing import median
from attnplug.testing import tiny_model

#: How each family's processor reaches its attention call.
ROUTE = {"unet": "function mode", "pixart": "function mode", "wan": "dispatch_attention_fn",
         "flux": "dispatch_attention_fn"}


def _deselect_all(model) -> None:
    """Keep attnplug on ``model`` with every layer unselected: every call stays stock."""
    runtime = model.__dict__["_attnplug"].runtime
    for hook in runtime.hooks:
        hook.selected = False
    runtime.update()


def _attention_inputs(model, inputs) -> dict[str, tuple]:
    """The ``(args, kwargs)`` each attention module of ``model`` receives in one forward, by module name."""
    seen: dict[str, tuple] = {}
    modules = {n: m for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")}
    handles = [m.register_forward_pre_hook(lambda mod, a, k, n=n: seen.setdefault(n, (a, k)), with_kwargs=True)
               for n, m in modules.items()]
    with torch.no_grad():
        model(**inputs, return_dict=False)
    for h in handles:
        h.remove()
    return {n: (modules[n], *seen[n]) for n in seen}


def _attention_calls(model, calls: dict, inner: int) -> Callable[[], None]:
    """``inner`` calls of every attention module of ``model`` with the inputs ``calls`` recorded (by module name)."""
    modules = dict(model.named_modules())
    bound = [(modules[n], a, k) for n, (_, a, k) in calls.items()]

    def run():
        with torch.no_grad():
            for _ in range(inner):
                for module, args, kwargs in bound:
                    module(*args, **kwargs)

    return run


def _split(seconds: dict[str, list[float]], total: int, intercepted: int) -> tuple[float, float, float]:
    """(dense - stock, cost of a call that stays stock, cost of an intercepted call) in seconds: the median over
    rounds of the difference to stock within a round (the copies ran back to back), so a load that drifts between
    rounds cancels out."""
    d_dense, d_idle = (median([x - y for x, y in zip(seconds[k], seconds["stock"])]) for k in ("attnplug", "idle"))
    stay_stock = d_idle / total
    return d_dense, stay_stock, (d_dense - (total - intercepted) * stay_stock) / intercepted


def _timed(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict[str, list[float]]]:
    """``time_interleaved`` over ``fns``, plus each call's CPU time on this thread (what other processes' time
    slices on a shared machine do not inflate), by name, in round order."""
    warmup = 10
    cpu: dict[str, list[float]] = {k: [] for k in fns}

    def measured(name, fn):
        def run():
            start = time.thread_time()
            fn()
            cpu[name].append(time.thread_time() - start)

        return run

    wall = time_interleaved({k: measured(k, fn) for k, fn in fns.items()}, warmup=warmup, repeats=repeats)
    return wall, {k: v[warmup:] for k, v in cpu.items()}


def _stock_hook_path(model, calls: dict) -> float:
    """Seconds the attention hook adds to a call that stays stock, its module's own forward replaced by a no-op
    (timeit, best of 5): the Python of the hook alone, free of the tensor work's noise."""
    name, (_, args, kwargs) = next(iter(calls.items()))
    module = dict(model.named_modules())[name]
    hook = module._diffusers_hook.hooks["attnplug.attention"]
    real, hook.fn_ref.original_forward = hook.fn_ref.original_forward, (lambda *a, **k: None)
    n = 20000
    try:
        hooked = min(timeit.repeat(lambda: module.forward(*args, **kwargs), number=n, repeat=5))
        bare = min(timeit.repeat(lambda: hook.fn_ref.original_forward(*args, **kwargs), number=n, repeat=5))
    finally:
        hook.fn_ref.original_forward = real
    return (hooked - bare) / n


def measure(family: str, repeats: int, inner: int) -> dict:
    stock, inputs = tiny_model(family, batch=1)
    dense, _ = tiny_model(family, batch=1)
    idle, _ = tiny_model(family, batch=1)
    attnplug.apply(dense, attnplug.DenseConfig())
    attnplug.apply(idle, attnplug.DenseConfig())
    _deselect_all(idle)

    def run(model):
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    run(dense)
    run(idle)  # the grid each copy's attention calls read
    counts = attnplug.stats(dense)
    total = counts["self"]["calls"] + counts["cross"]["calls"]
    intercepted = counts["self"]["method"] + counts["cross"]["method"]
    calls = _attention_inputs(stock, inputs)
    models = {"stock": stock, "attnplug": dense, "idle": idle}
    wall, cpu = _timed({k: _attention_calls(m, calls, inner) for k, m in models.items()}, repeats)
    _, stay, per_call = (x / inner for x in _split(cpu, total, intercepted))
    _, stay_wall, per_call_wall = (x / inner for x in _split({k: v["seconds"] for k, v in wall.items()}, total,
                                                             intercepted))
    hook_path = _stock_hook_path(idle, calls)
    forward, forward_cpu = _timed({k: (lambda m=m: run(m)) for k, m in models.items()}, repeats)
    d_forward, stay_forward, per_call_forward = _split(forward_cpu, total, intercepted)
    s, a = forward["stock"]["median"], forward["attnplug"]["median"]
    return {"family": family, "route": ROUTE.get(family, ""), "attention_calls": total,
            "intercepted_calls": intercepted, "us_per_intercepted_call": 1e6 * per_call,
            "us_per_stock_call": 1e6 * stay, "us_stock_hook_path": 1e6 * hook_path,
            "wall_us_per_intercepted_call": 1e6 * per_call_wall, "wall_us_per_stock_call": 1e6 * stay_wall,
            "attention_stock_ms": 1e3 * wall["stock"]["median"] / inner, "stock_ms": 1e3 * s, "attnplug_ms": 1e3 * a,
            "forward_overhead_us_per_call": 1e6 * d_forward / total,
            "forward_us_per_intercepted_call": 1e6 * per_call_forward,
            "forward_us_per_stock_call": 1e6 * stay_forward, "ratio": a / s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--inner", type=int, default=5, help="attention rounds per timed sample")
    parser.add_argument("--families", default="unet,pixart,wan,flux")
    parser.add_argument("--label", default=attnplug.__version__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = [measure(f, args.repeats, args.inner) for f in args.families.split(",")]
    for r in rows:
        print(f"{r['family']:8s} {r['intercepted_calls']:2d}/{r['attention_calls']:2d} intercepted: "
              f"{r['us_per_intercepted_call']:.1f} us/call, stays stock {r['us_per_stock_call']:.1f} us/call "
              f"(hook path {r['us_stock_hook_path']:.2f}); "
              f"forward {r['stock_ms']:.2f} -> {r['attnplug_ms']:.2f} ms ({r['forward_us_per_intercepted_call']:.1f} "
              f"/ {r['forward_us_per_stock_call']:.1f} us/call)")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    env = environment()
    env["loadavg_before"] = list(load_before)
    results[args.label] = {"environment": env, "repeats": args.repeats, "inner": args.inner, "rows": rows}
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
