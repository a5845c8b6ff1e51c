"""Ahead-of-time compilation of the Triton kernel for sm_80 / sm_90 without a GPU (tests and the compile report).

``compile_config`` runs ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for one shipped
configuration and reads registers / spills from the log of the bundled ``ptxas -v`` that Triton runs and the
shared-memory size from Triton's metadata. It must run in a process where ``TRITON_INTERPRET`` is unset (the
interpreter replaces JIT functions).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import asdict, dataclass

import torch

__all__ = ["SMEM_LIMITS", "KernelVariant", "compile_config", "default_variants", "shipped_variants"]

#: Usable shared memory per block (bytes): sm_80 (A100) 163 KB, sm_90 (H100) 227 KB.
SMEM_LIMITS = {80: 163 * 1024, 90: 227 * 1024}
_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class KernelVariant:
    """One compiled variant: inputs dtype, head dim, LUT block sizes and launch options."""

    dtype: str
    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    has_na: bool = True
    has_threshold: bool = False

    def constexprs(self) -> dict:
        from .triton import kernel_config

        cfg = kernel_config(self.head_dim, self.block_m, self.block_n, _DTYPE_NAMES[self.dtype], self.has_threshold)
        return dict(
            HEAD_DIM=self.head_dim, D_PAD=cfg["D_PAD"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            LUT_BM=self.block_m, LUT_BN=self.block_n, HAS_NA=self.has_na, CT=False, CY=False, CX=False, DIL=False,
            HAS_THRESHOLD=self.has_threshold, IEEE_DOT=self.dtype == "float32",
        )


def shipped_variants() -> list[KernelVariant]:
    """Every configuration the dispatcher launches with 64x64 and 128x64 LUT blocks and the (pruned) autotune space.

    dtypes x head dims {32, 40, 64, 80, 128} x {64x64 LUT (32x32 for fp32) with the threshold test, 128x64 LUT
    without} x the warps ``warps_for`` allows, neighbourhood mask compiled in (the heaviest variant of each).
    """
    from .triton import AUTOTUNE_CONFIGS, kernel_config, warps_for

    launch = sorted({(c.num_warps, c.num_stages) for c in AUTOTUNE_CONFIGS})
    out = []
    for dtype in ("float16", "bfloat16", "float32"):
        for head_dim in (32, 40, 64, 80, 128):
            thr_block = 32 if dtype == "float32" else 64
            for block_m, block_n, thr in ((thr_block, thr_block, True), (128, 64, False)):
                cfg = kernel_config(head_dim, block_m, block_n, _DTYPE_NAMES[dtype], thr)
                allowed = warps_for(cfg["BLOCK_M"], cfg["D_PAD"])
                for warps, stages in launch:
                    if warps in allowed:
                        out.append(KernelVariant(dtype, head_dim, block_m, block_n, warps, stages, True, thr))
    return out


def default_variants() -> list[KernelVariant]:
    """Three representative variants for the fast test run."""
    return [
        KernelVariant("float16", 64, 128, 64, 8, 2, True, False),
        KernelVariant("bfloat16", 128, 64, 64, 8, 2, True, True),
        KernelVariant("float32", 40, 128, 64, 8, 2, True, False),
    ]


#: Integer arguments that equal 1 for contiguous inputs: Triton specialises them to the constant 1 at launch.
_UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_lk", "stride_cm")
#: Row strides equal the head dim for contiguous inputs (divisible by 16 when the head dim is).
_ROW_STRIDES = ("stride_qn", "stride_kn", "stride_vn", "stride_on")


def _signature(fn, variant: KernelVariant, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as a launch with contiguous (B, H, N, D) inputs would specialise them."""
    ptr = _PTR[_DTYPE_NAMES[variant.dtype]]
    sig, consts, attrs = {}, dict(constexprs), {}
    div16 = [["tt.divisibility", 16]]
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _UNIT_STRIDES:
            sig[name] = "constexpr"
            consts[name] = 1
        elif name in ("Q", "K", "V", "Out"):
            sig[name] = ptr
            attrs[(i,)] = div16
        elif name in ("LUT_IDX", "LUT_CNT", "SKIP"):
            sig[name] = "*i32"
            attrs[(i,)] = div16
        elif name in ("qk_scale", "thr"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in _ROW_STRIDES and variant.head_dim % 16 == 0:
                attrs[(i,)] = div16
    return sig, consts, attrs


def compile_config(variant: KernelVariant, arch: int) -> dict:
    """Compiles ``variant`` for ``sm_<arch>`` and returns its resource usage.

    Returns a dict with the variant's fields plus ``arch``, ``registers``, ``spill_stores``, ``spill_loads`` (bytes),
    ``smem`` (bytes of dynamic shared memory), ``smem_limit`` and ``fits`` (no spills and smem within the limit).
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from .triton import _bsa_fwd_kernel

    if not isinstance(_bsa_fwd_kernel, JITFunction):
        raise RuntimeError("compile_config needs TRITON_INTERPRET unset when attnplug's Triton module is imported.")
    consts = variant.constexprs()
    sig, consts, attrs = _signature(_bsa_fwd_kernel, variant, consts)
    src = ASTSource(_bsa_fwd_kernel, sig, consts, attrs)
    # Triton runs the bundled ptxas with -v; capture its log (registers, spills) for exactly this cubin.
    buf = io.StringIO()
    old = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True  # a cache hit would skip ptxas
    try:
        with contextlib.redirect_stdout(buf):
            kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                    options=dict(num_warps=variant.num_warps, num_stages=variant.num_stages))
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = old
    log = buf.getvalue()
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    smem = int(kernel.metadata.shared)
    limit = SMEM_LIMITS[arch]
    row = asdict(variant)
    row.update(arch=arch, registers=regs, spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)),
               smem=smem, smem_limit=limit, tile_m=consts["BLOCK_M"], tile_n=consts["BLOCK_N"],
               d_pad=consts["D_PAD"])
    row["fits"] = row["spill_stores"] == 0 and row["spill_loads"] == 0 and smem <= limit
    return row
