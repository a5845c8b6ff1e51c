"""Per-call overhead of attnplug's interception: a tiny denoiser's forward, stock vs attnplug Dense (identical
maths), interleaved in one process, 1 thread; the difference divided by the attention calls of one forward.

    python benchmarks/overhead_bench.py [--repeats 200] [--out benchmarks/results/overhead_cpu.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import attnplug
from attnplug.report import environment, time_interleaved
from attnplug.testing import tiny_model


def _calls(model, inputs) -> int:
    n = [0]
    modules = [m for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]
    handles = [m.register_forward_pre_hook(lambda *a: n.__setitem__(0, n[0] + 1)) for m in modules]
    with torch.no_grad():
        model(**inputs, return_dict=False)
    for h in handles:
        h.remove()
    return n[0]


def measure(family: str, repeats: int) -> dict:
    stock, inputs = tiny_model(family, batch=1)
    patched, _ = tiny_model(family, batch=1)
    attnplug.apply(patched, attnplug.DenseConfig())
    calls = _calls(stock, inputs)

    def run(model):
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    timed = time_interleaved({"stock": lambda: run(stock), "attnplug": lambda: run(patched)}, warmup=5,
                             repeats=repeats)
    s, a = timed["stock"]["median"], timed["attnplug"]["median"]
    return {"family": family, "attention_calls": calls, "stock_ms": 1e3 * s, "attnplug_ms": 1e3 * a,
            "overhead_us_per_call": 1e6 * (a - s) / calls, "ratio": a / s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--families", default="unet,pixart,wan,flux")
    parser.add_argument("--label", default=attnplug.__version__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(f, args.repeats) for f in args.families.split(",")]
    for r in rows:
        print(f"{r['family']:8s} {r['attention_calls']:3d} calls  stock {r['stock_ms']:.2f} ms  attnplug "
              f"{r['attnplug_ms']:.2f} ms  overhead {r['overhead_us_per_call']:.1f} us/call")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = {"environment": environment(), "rows": rows}
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
