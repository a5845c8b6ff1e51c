"""Compile the block-sparse Triton kernel for every row of ARCH_CONFIGS without a GPU; report registers, spills, smem.

Usage: ``python benchmarks/kernel_compile_report.py [--quick]`` (TRITON_INTERPRET must be unset). Writes
``benchmarks/results/kernel_compile_report.json`` (one row per compiled variant, with the reason where a variant did
not compile) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnplug.kernels.block_sparse.arch_configs import ARCH_CONFIGS  # noqa: E402
from attnplug.kernels.block_sparse.compile_check import (  # noqa: E402
    compile_config,
    default_variants,
    table_variants,
)


def _precision(row: dict) -> str:
    if row["dtype"] != "float32":
        return "16bit"
    return "fp32" if row["ieee_dot"] else "tf32"


def _summary(rows: list[dict], seconds: float) -> dict:
    compiled = [r for r in rows if r["error"] is None]
    return {
        "table": [dict(arch=c.arch, precision=c.precision, max_tile_m=c.max_tile_m, max_tile_n=c.max_tile_n,
                       num_warps=c.num_warps, num_stages=c.num_stages) for c in ARCH_CONFIGS.values()],
        "compiles": len(rows),
        "failed": [{k: r[k] for k in ("arch", "dtype", "head_dim", "error")} for r in rows if r["error"]],
        "all_fit": all(r["fits"] for r in rows),
        "spilling": [{k: r[k] for k in ("arch", "dtype", "ieee_dot", "head_dim", "block_m", "block_n",
                                        "has_threshold", "spill_stores", "spill_loads")}
                     for r in compiled if r["spill_stores"] or r["spill_loads"]],
        "spill_free_16bit": all(not (r["spill_stores"] or r["spill_loads"]) for r in compiled
                                if r["dtype"] != "float32"),
        "max_registers": max((r["registers"] for r in compiled), default=None),
        "max_smem": max((r["smem"] for r in compiled), default=None),
        "seconds": round(seconds, 1),
    }


def _print_table(rows: list[dict]) -> None:
    print("| sm | precision | head dim | LUT block | tile | warps | stages | thr | regs | spills (B) | smem (KB) "
          "| note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spills = "-" if r["error"] else f"{r['spill_stores']}/{r['spill_loads']}"
        smem = "-" if r["error"] else f"{r['smem'] / 1024:.0f}"
        print(f"| {r['arch']} | {_precision(r)} ({r['dtype']}) | {r['head_dim']} | {r['block_m']}x{r['block_n']} | "
              f"{r['tile_m']}x{r['tile_n']} | {r['num_warps']} | {r['num_stages']} | {int(r['has_threshold'])} | "
              f"{r['registers'] if r['registers'] is not None else '-'} | {spills} | {smem} | {r['error'] or ''} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the representative default variants")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "kernel_compile_report.json"))
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the JIT functions that triton.compile needs.")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    variants = default_variants() if args.quick else table_variants()
    rows = []
    t0 = time.time()
    for v in variants:
        row = compile_config(v)
        rows.append(row)
        print(json.dumps(row), flush=True, file=sys.stderr)
    summary = _summary(rows, time.time() - t0)
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    _print_table(rows)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("spilling", "table")}), file=sys.stderr)


if __name__ == "__main__":
    main()
