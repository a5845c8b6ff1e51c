"""CPU benchmark of neighbourhood attention: attnplug (tiles path and block-sparse kernel torch path) vs dense SDPA,
compiled FlexAttention with the same mask, and NATTEN where it runs; all in one run on the same inputs.

    .venv/bin/python benchmarks/neighborhood_bench.py [--quick] [--out benchmarks/results/neighborhood_cpu.json]

Every figure is a median over repeats; speedups are dense time / method time; ``flop_ratio`` = 1 / (fraction of
(query, key) pairs allowed), the ideal speedup. Targets: speedup >= 0.5 x flop_ratio for sliding windows (stride 1),
>= 0.8 x for strided/blocked, and faster than FlexAttention-CPU on the same mask.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnplug.kernels.block_sparse.masks import dim_window  # noqa: E402
from attnplug.kernels.neighborhood import neighborhood_attention, neighborhood_lut, tile_plan  # noqa: E402
from attnplug.layout import TokenLayout  # noqa: E402
from attnplug.methods.neighborhood import NeighborhoodConfig  # noqa: E402

HEADS, DIM = 4, 64

CASES = [
    # name, grid, kernel, stride
    ("2d-64x64-k13-s1", (1, 64, 64), 13, 1),
    ("2d-64x64-k13-s4", (1, 64, 64), 13, 4),
    ("2d-64x64-k13-s13", (1, 64, 64), 13, 13),
    ("2d-64x64-k31-s1", (1, 64, 64), 31, 1),
    ("2d-64x64-k31-s8", (1, 64, 64), 31, 8),
    ("2d-128x128-k13-s1", (1, 128, 128), 13, 1),
    ("2d-128x128-k13-s13", (1, 128, 128), 13, 13),
    ("2d-128x128-k31-s1", (1, 128, 128), 31, 1),
    ("2d-128x128-k31-s16", (1, 128, 128), 31, 16),
    ("3d-8x32x32-k3x13x13-s1", (8, 32, 32), (3, 13, 13), 1),
    ("3d-8x32x32-k3x13x13-s1x4x4", (8, 32, 32), (3, 13, 13), (1, 4, 4)),
]
QUICK = {"2d-64x64-k13-s1", "2d-64x64-k13-s13", "3d-8x32x32-k3x13x13-s1"}


def timeit(fn, reps: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def natten_mask_mod(res):
    """FlexAttention mask_mod with the kernel contract's neighbourhood semantics (row-major (t, y, x) tokens)."""
    f, h, w = res.grid

    def dim_ok(i, j, n, k, d, s, c):
        r, start, end = dim_window(i, n, k, d, s, c)  # the kernel's own formula (one definition)
        return (j % d == r) & (j // d >= start) & (j // d < end)

    def mask_mod(b, hh, q_idx, kv_idx):
        qt, qy, qx = q_idx // (h * w), (q_idx // w) % h, q_idx % w
        kt, ky, kx = kv_idx // (h * w), (kv_idx // w) % h, kv_idx % w
        ok = dim_ok(qt, kt, f, res.kernel_size[0], res.dilation[0], res.stride[0], res.is_causal[0])
        ok = ok & dim_ok(qy, ky, h, res.kernel_size[1], res.dilation[1], res.stride[1], res.is_causal[1])
        return ok & dim_ok(qx, kx, w, res.kernel_size[2], res.dilation[2], res.stride[2], res.is_causal[2])

    return mask_mod


def run_case(name, grid, kernel, stride, reps, args, flex_fn):
    layout = TokenLayout(*grid)
    n = layout.num_tokens
    torch.manual_seed(0)
    # (B, H, N, D) views of (B, N, H, D) tensors, as diffusers' processors pass them to SDPA.
    q, k, v = (x.transpose(1, 2) for x in torch.randn(3, 1, n, HEADS, DIM).unbind(0))
    res = NeighborhoodConfig(kernel_size=kernel, stride=stride).resolve(layout)
    row = {"case": name, "grid": grid, "kernel": res.kernel_size, "stride": res.stride, "tokens": n,
           "density": res.density(), "flop_ratio": 1 / res.density(), "reps": reps}
    t0 = time.perf_counter()
    plan = tile_plan(res)
    row["tiles_plan_s"] = time.perf_counter() - t0
    row["tiles_tile"] = plan.tile
    row["tiles_visited_ratio"] = n * n / plan.visited_pairs
    t0 = time.perf_counter()
    lut = neighborhood_lut(res, n, n, 64, 64, "cpu")
    row["kernel_lut_s"] = time.perf_counter() - t0
    row["kernel_lut_density"] = lut.density(n, n)

    dense = timeit(lambda: F.scaled_dot_product_attention(q, k, v), reps)
    row["dense_s"] = dense
    ref = F.scaled_dot_product_attention(q, k, v)

    def method(backend):
        return lambda: neighborhood_attention(q, k, v, res.kernel_size, res.stride, res.dilation, res.is_causal,
                                              layout=layout, backend=backend)

    row["tiles_s"] = timeit(method("tiles"), reps)
    if not args.skip_kernel:
        row["kernel_torch_s"] = timeit(method("torch"), reps)
        err = (method("torch")() - method("tiles")()).abs().max().item()
        row["tiles_vs_kernel_max_abs"] = err

    if flex_fn is not None:
        try:
            from torch.nn.attention.flex_attention import create_block_mask

            t0 = time.perf_counter()
            bm = create_block_mask(natten_mask_mod(res), None, None, n, n, device="cpu")
            row["flex_block_mask_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = flex_fn(q, k, v, block_mask=bm)
            row["flex_first_call_s"] = time.perf_counter() - t0
            row["flex_s"] = timeit(lambda: flex_fn(q, k, v, block_mask=bm), reps)
            row["flex_vs_tiles_max_abs"] = (out - method("tiles")()).abs().max().item()
        except Exception as e:  # noqa: BLE001 - report and go on
            row["flex_error"] = f"{type(e).__name__}: {e}"[:300]

    if args.natten:
        try:
            import natten

            spatial = [d for d, g in zip(range(3), grid) if g > 1]
            to_n = lambda x: x.reshape(1, HEADS, *[grid[d] for d in spatial], DIM).movedim(1, -2).contiguous()  # noqa: E731
            fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]
            kw = dict(kernel_size=tuple(res.kernel_size[d] for d in spatial),
                      stride=tuple(res.stride[d] for d in spatial))
            qn, kn, vn = to_n(q), to_n(k), to_n(v)
            # NATTEN's only CPU backend is FlexAttention; its compiled mode needs a CUDA device (compute capability
            # >= 70), so on a CPU-only machine NATTEN runs Flex eagerly (unfused: it materialises the scores).
            natten.allow_flex_compile(True)
            try:
                fn(qn, kn, vn, torch_compile=True, **kw)
                kw["torch_compile"] = True
                row["natten_mode"] = "flex compiled"
            except NotImplementedError:
                if n > args.natten_eager_max_tokens:
                    raise RuntimeError(f"compiled Flex unavailable on CPU; eager skipped above "
                                       f"{args.natten_eager_max_tokens} tokens (materialises N x N scores)") from None
                row["natten_mode"] = "flex eager (compiled Flex needs CUDA in NATTEN)"
            t0 = time.perf_counter()
            out = fn(qn, kn, vn, **kw)
            row["natten_first_call_s"] = time.perf_counter() - t0
            natten_reps = reps if kw.get("torch_compile") else 1  # eager Flex is orders of magnitude slower
            row["natten_s"] = timeit(lambda: fn(qn, kn, vn, **kw), natten_reps)
            out = out.movedim(-2, 1).reshape(1, HEADS, n, DIM)
            row["natten_vs_tiles_max_abs"] = (out - method("tiles")()).abs().max().item()
        except Exception as e:  # noqa: BLE001
            row["natten_error"] = f"{type(e).__name__}: {e}"[:300]

    for key in ("tiles", "kernel_torch", "flex", "natten"):
        if f"{key}_s" in row:
            row[f"{key}_speedup"] = dense / row[f"{key}_s"]
            row[f"{key}_of_flop_ratio"] = row[f"{key}_speedup"] / row["flop_ratio"]
    strided = any(s > 1 for s in res.stride)
    row["target_of_flop_ratio"] = 0.8 if strided else 0.5
    row["tiles_meets_flop_target"] = row["tiles_of_flop_ratio"] >= row["target_of_flop_ratio"]
    if "flex_s" in row:
        row["tiles_faster_than_flex"] = row["tiles_s"] < row["flex_s"]
    del ref
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="three small cases")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-flex", dest="flex", action="store_false")
    p.add_argument("--no-natten", dest="natten", action="store_false")
    p.add_argument("--skip-kernel", action="store_true", help="skip the block-sparse kernel's torch path")
    p.add_argument("--only", default=None, help="comma-separated case names")
    p.add_argument("--natten-eager-max-tokens", type=int, default=8192)
    p.add_argument("--merge", action="store_true", help="replace only the re-run cases' rows in an existing --out")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "neighborhood_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    flex_fn = None
    if args.flex:
        from torch.nn.attention.flex_attention import flex_attention

        # One compiled graph per shape and mask: raise dynamo's recompile limit (default 8), past which it would
        # silently fall back to eager (unfused) Flex.
        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.accumulated_recompile_limit = 4096
        flex_fn = torch.compile(flex_attention, dynamic=False)
    only = args.only.split(",") if args.only else None
    cases = [c for c in CASES if (not args.quick or c[0] in QUICK) and (only is None or c[0] in only)]
    rows, previous = [], []
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)["rows"]
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
            "machine": platform.machine(), "heads": HEADS, "dim": DIM, "batch": 1, "dtype": "float32",
            "loadavg_start": os.getloadavg()}
    for name, grid, kernel, stride in cases:
        reps = args.reps if grid[1] * grid[2] * grid[0] <= 8192 else max(1, args.reps - 1)
        try:
            row = run_case(name, grid, kernel, stride, reps, args, flex_fn)
        except Exception:  # noqa: BLE001
            row = {"case": name, "error": traceback.format_exc()[-800:]}
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        meta["loadavg_end"] = os.getloadavg()
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        done = {r["case"] for r in rows}
        merged = [r for r in previous if r["case"] not in done] + rows
        merged.sort(key=lambda r: [c[0] for c in CASES].index(r["case"]))
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": merged}, f, indent=1)
    print(table(merged))


def table(rows) -> str:
    """Markdown table of speedups over dense SDPA (and their fraction of the FLOP ratio)."""
    lines = ["| case | FLOP ratio | dense s | tiles (x, of FLOP ratio) | kernel torch | Flex compiled | NATTEN |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error | | | | | |")
            continue

        def cell(key, r=r):
            if f"{key}_speedup" not in r:
                return "n/a" if f"{key}_error" not in r else "failed"
            return f"{r[f'{key}_speedup']:.2f}x ({r[f'{key}_of_flop_ratio']:.2f})"

        lines.append(f"| {r['case']} | {r['flop_ratio']:.1f} | {r['dense_s']:.3f} | {cell('tiles')} | "
                     f"{cell('kernel_torch')} | {cell('flex')} | {cell('natten')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
