"""Compile the block-sparse Triton kernel for sm_80 and sm_90 without a GPU; report registers, spills, shared memory.

Usage: ``python benchmarks/kernel_compile_report.py [--quick]`` (TRITON_INTERPRET must be unset). Writes
``benchmarks/results/kernel_compile_report.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnplug.kernels.block_sparse.compile_check import (  # noqa: E402
    SMEM_LIMITS,
    compile_config,
    default_variants,
    shipped_variants,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the three default variants")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "kernel_compile_report.json"))
    args = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    variants = default_variants() if args.quick else shipped_variants()
    rows = []
    t0 = time.time()
    for v in variants:
        for arch in sorted(SMEM_LIMITS):
            row = compile_config(v, arch)
            rows.append(row)
            print(json.dumps(row), flush=True, file=sys.stderr)
    summary = {
        "variants": len(variants),
        "compiles": len(rows),
        "all_fit": all(r["fits"] for r in rows),
        "spilling": [r for r in rows if r["spill_stores"] or r["spill_loads"]],
        "max_registers": max(r["registers"] for r in rows),
        "max_smem": max(r["smem"] for r in rows),
        "seconds": round(time.time() - t0, 1),
    }
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    print("| dtype | head dim | LUT block | tile | warps | stages | NA | thr | sm | regs | spills (B) | smem (KB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['head_dim']} | {r['block_m']}x{r['block_n']} | {r['tile_m']}x{r['tile_n']} | "
              f"{r['num_warps']} | {r['num_stages']} | {int(r['has_na'])} | {int(r['has_threshold'])} | {r['arch']} | "
              f"{r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['smem'] / 1024:.0f} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "spilling"}), file=sys.stderr)


if __name__ == "__main__":
    main()
