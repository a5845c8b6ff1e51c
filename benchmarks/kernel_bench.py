"""Block-sparse attention vs dense SDPA (and compiled FlexAttention, xformers on CUDA) at several densities.

Usage::

    python benchmarks/kernel_bench.py                      # CPU: N in {4096, 16384}, a few minutes
    python benchmarks/kernel_bench.py --n 4096 --reps 3     # quicker
    python benchmarks/kernel_bench.py --device cuda         # GPU: Triton kernel vs SDPA / flex / xformers

Every figure is a ratio against dense ``F.scaled_dot_product_attention`` on the same input in the same run; each
timing is the median of ``--reps`` runs, sparse and dense interleaved. LUTs are random with a fixed number of key
blocks per query block (the diagonal block always included), shared by all heads. Writes
``benchmarks/results/kernel_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnplug.kernels import BlockLUT, block_sparse_attention  # noqa: E402


def random_lut(n: int, block: int, density: float, seed: int) -> BlockLUT:
    g = torch.Generator().manual_seed(seed)
    m = -(-n // block)
    per_row = max(1, round(density * m))
    mask = torch.zeros(m, m, dtype=torch.bool)
    for i in range(m):
        others = torch.randperm(m - 1, generator=g)[: per_row - 1]
        others = others + (others >= i).long()  # skip the diagonal, added below
        mask[i, others] = True
        mask[i, i] = True
    return BlockLUT.from_block_mask(mask[None, None], block, block)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn, *args, **kwargs) -> float:
    sync(device)
    t = time.perf_counter()
    fn(*args, **kwargs)
    sync(device)
    return (time.perf_counter() - t) * 1e3


def flex_fn(lut: BlockLUT, n: int, device: str):
    """Compiled flex_attention over the LUT's blocks, or None.

    The blocks are passed as partial blocks with no mask_mod (passing them as "full" blocks made the inductor CPU
    template fail to compile on torch 2.13).
    """
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except Exception:  # pragma: no cover - old torch
        return None
    mk = -(-n // lut.block_n)
    indices = torch.zeros(*lut.counts.shape, mk, dtype=torch.int32)
    indices[..., : lut.max_k_blocks] = lut.indices
    block_mask = BlockMask.from_kv_blocks(lut.counts.to(device), indices.to(device), BLOCK_SIZE=lut.block_m,
                                          seq_lengths=(n, n))
    compiled = flex_fn.compiled = getattr(flex_fn, "compiled", None) or torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def xformers_fn():
    try:
        import xformers.ops as xops
    except Exception:
        return None
    return lambda q, k, v: xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                           v.transpose(1, 2)).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--density", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default float32 on CPU, float16 on CUDA")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--flex-max-n", type=int, default=16384, help="skip flex above this N")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "kernel_bench.json"))
    args = parser.parse_args()
    device = args.device
    dtype = getattr(torch, args.dtype or ("float16" if device == "cuda" else "float32"))
    backend = "auto"
    load_start = os.getloadavg()
    rows = []
    for n in args.n:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, args.heads, n, args.dim, generator=g).to(device, dtype) for _ in range(3))
        dense = F.scaled_dot_product_attention
        timed(device, dense, q, k, v)  # warm-up
        for density in args.density:
            lut = random_lut(n, args.block, density, seed=int(density * 1000) + n)
            actual = lut.density(n, n)
            out = block_sparse_attention(q, k, v, lut, backend=backend)  # warm-up + check
            err = None
            if density >= 1.0:
                err = (out.float() - dense(q, k, v).float()).abs().max().item()
            dense_ms, sparse_ms = [], []
            for _ in range(args.reps):
                dense_ms.append(timed(device, dense, q, k, v))
                sparse_ms.append(timed(device, block_sparse_attention, q, k, v, lut, backend=backend))
            row = {
                "n": n, "density": density, "lut_density": round(actual, 4), "dense_ms": statistics.median(dense_ms),
                "sparse_ms": statistics.median(sparse_ms),
            }
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            row["target_speedup"] = 0.8 / actual
            row["meets_target"] = row["speedup"] >= row["target_speedup"]
            if err is not None:
                row["max_err_vs_dense"] = err
            if not args.no_flex and n <= args.flex_max_n:
                try:
                    fx = flex_fn(lut, n, device)
                    if fx is not None:
                        t0 = time.perf_counter()
                        fx(q, k, v)
                        row["flex_first_call_s"] = round(time.perf_counter() - t0, 2)
                        flex_ms = [timed(device, fx, q, k, v) for _ in range(max(2, args.reps // 2))]
                        row["flex_ms"] = statistics.median(flex_ms)
                        row["flex_speedup"] = row["dense_ms"] / row["flex_ms"]
                except Exception as exc:  # flex on CPU is version dependent: record, don't fail
                    row["flex_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            if device == "cuda" and density >= 1.0:
                xf = xformers_fn()
                if xf is not None:
                    row["xformers_ms"] = statistics.median([timed(device, xf, q, k, v) for _ in range(args.reps)])
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "device": device, "dtype": str(dtype), "heads": args.heads, "dim": args.dim, "block": args.block,
        "reps": args.reps, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "note": "median of reps, dense and sparse interleaved; speedup = dense_ms / sparse_ms",
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print("| N | density (LUT) | dense SDPA ms | block-sparse ms | speedup | target 0.8/d | flex ms | flex speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        flex = f"{r['flex_ms']:.0f} | {r['flex_speedup']:.2f}x" if "flex_ms" in r else "- | -"
        print(f"| {r['n']} | {r['lut_density']:.3f} | {r['dense_ms']:.0f} | {r['sparse_ms']:.0f} | "
              f"{r['speedup']:.2f}x | {r['target_speedup']:.1f}x | {flex} |")


if __name__ == "__main__":
    main()
