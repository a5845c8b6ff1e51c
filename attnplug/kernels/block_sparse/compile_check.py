"""Ahead-of-time compilation of the Triton kernel for every row of ``ARCH_CONFIGS`` without a GPU.

``compile_config`` runs ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for one variant and
reads registers / spills from the log of the bundled ``ptxas -v`` that Triton runs (Triton picks its newer
``ptxas-blackwell`` for sm_100 / sm_120 when bundled) and the shared-memory size from Triton's metadata; a variant
that does not compile is returned with the reason. It must run in a process where ``TRITON_INTERPRET`` is unset (the
interpreter replaces JIT functions).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import asdict, dataclass

import torch

from .arch_configs import ARCH_CONFIGS, SMEM_LIMITS, kernel_config

__all__ = ["SMEM_LIMITS", "DampedKernelVariant", "KernelVariant", "compile_config", "damped_variants",
           "default_variants", "table_variants"]

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_PRECISION_DTYPES = {"16bit": ("float16", "bfloat16"), "fp32": ("float32",), "tf32": ("float32",)}
#: Head dims compiled per row: padded to 64 (40) and to 128 (96) with masked channels, and the plain powers of two.
REPORT_HEAD_DIMS = (40, 64, 96, 128)
#: LUT blocks compiled per row: the dispatcher's default 128 x 64 (tiles = the row's largest) and the threshold
#: blocks (tiles = LUT blocks; fp32 keeps 32 x 32 as its registers allow).
_LUT_BLOCKS = {"16bit": ((128, 64, False), (64, 64, True)), "fp32": ((128, 64, False), (32, 32, True)),
               "tf32": ((128, 64, False), (32, 32, True))}


@dataclass(frozen=True)
class KernelVariant:
    """One compiled variant: architecture, inputs dtype, head dim, LUT block sizes, launch options and features."""

    arch: int
    dtype: str
    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    has_na: bool = True
    has_keep: bool = True
    has_threshold: bool = False
    ieee_dot: bool = True  # fp32 only: False = TF32 dots (torch.backends.cuda.matmul.allow_tf32)

    def constexprs(self) -> dict:
        cfg = kernel_config(self.head_dim, self.block_m, self.block_n, _DTYPE_NAMES[self.dtype], self.has_threshold,
                            arch=self.arch, tf32=not self.ieee_dot)
        return dict(
            HEAD_DIM=self.head_dim, D_PAD=cfg["D_PAD"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            LUT_BM=self.block_m, LUT_BN=self.block_n, HAS_NA=self.has_na, CT=False, CY=False, CX=False, DIL=False,
            HAS_KEEP=self.has_keep, HAS_THRESHOLD=self.has_threshold,
            IEEE_DOT=self.dtype == "float32" and self.ieee_dot, ALIGN=_contiguous_alignment(self.head_dim),
            HAS_DAMP=getattr(self, "has_damp", False),
        )


@dataclass(frozen=True)
class DampedKernelVariant(KernelVariant):
    """A variant with the per-LUT-entry damping flags compiled in (``HAS_DAMP``, UltraViCo damping on the long-video
    pattern); a subclass so that the table's variants (and the committed report's keys) stay as they are."""

    has_damp: bool = True


def _contiguous_alignment(head_dim: int) -> int:
    """``stride_alignment`` of contiguous (B, H, N, D) inputs (every stride a multiple of D)."""
    align = 16
    while head_dim % align:
        align //= 2
    return align


def table_variants(head_dims: tuple[int, ...] = REPORT_HEAD_DIMS) -> list[KernelVariant]:
    """Every ``ARCH_CONFIGS`` row as launched: its dtypes x ``head_dims`` x {128 x 64 LUT without threshold,
    threshold LUT}, neighbourhood mask and ``kv_keep`` compiled in (the heaviest variant of each)."""
    out = []
    for (arch, precision), row in ARCH_CONFIGS.items():
        for dtype in _PRECISION_DTYPES[precision]:
            for head_dim in head_dims:
                for block_m, block_n, thr in _LUT_BLOCKS[precision]:
                    out.append(KernelVariant(arch, dtype, head_dim, block_m, block_n, row.num_warps, row.num_stages,
                                             True, True, thr, precision != "tf32"))
    return out


def default_variants() -> list[KernelVariant]:
    """Four representative variants for the fast test run: the sm_80 and sm_90 16-bit rows, fp32 on sm_80."""
    picks = {(80, "float16", 64, False), (90, "bfloat16", 128, False), (90, "float16", 64, True),
             (80, "float32", 40, False)}
    return [v for v in table_variants() if (v.arch, v.dtype, v.head_dim, v.has_threshold) in picks and v.ieee_dot]


def damped_variants() -> list[DampedKernelVariant]:
    """The sm_80 and sm_90 16-bit rows of :func:`default_variants` without a threshold, with damping compiled in
    (the long pattern runs no threshold; neighbourhood mask and ``kv_keep`` stay in: the heaviest variant)."""
    return [DampedKernelVariant(**asdict(v)) for v in default_variants()
            if v.dtype != "float32" and not v.has_threshold]


#: Integer arguments that equal 1 for contiguous inputs: Triton specialises them to the constant 1 at launch.
_UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_lk", "stride_cm", "stride_en",
                 "stride_dk")
#: Strides of q/k/v/out: multiples of the head dim for contiguous (B, H, N, D) inputs and (B, N, H, D) views, so
#: Triton's launch-time specialisation marks them divisible by 16 when the head dim is.
_QKVO_STRIDES = tuple(f"stride_{t}{d}" for t in "qkvo" for d in "bhn")


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
        elif name in ("KEEP", "DAMP"):
            sig[name] = "*u8"
            attrs[(i,)] = div16
        elif name in ("qk_scale", "thr", "damp_factor"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in _QKVO_STRIDES and variant.head_dim % 16 == 0:
                attrs[(i,)] = div16
    return sig, consts, attrs


def _compile(variant: KernelVariant) -> tuple[object, str]:
    """(compiled kernel, ptxas log) of ``variant`` for ``sm_<variant.arch>``."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .triton import _bsa_fwd_kernel

    sig, consts, attrs = _signature(_bsa_fwd_kernel, variant, variant.constexprs())
    src = ASTSource(_bsa_fwd_kernel, sig, consts, attrs)
    # Triton runs the bundled ptxas with -v; capture its log (registers, spills) for exactly this cubin.
    buf = io.StringIO()
    old = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True  # a cache hit would skip ptxas
    try:
        with contextlib.redirect_stdout(buf):
            kernel = triton.compile(src, target=GPUTarget("cuda", variant.arch, 32),
                                    options=dict(num_warps=variant.num_warps, num_stages=variant.num_stages))
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = old
    return kernel, buf.getvalue()


def _require_jit() -> None:
    from triton.runtime.jit import JITFunction

    from .triton import _bsa_fwd_kernel

    if not isinstance(_bsa_fwd_kernel, JITFunction):
        raise RuntimeError("compile_config needs TRITON_INTERPRET unset when attnplug's Triton module is imported.")


def _error_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: " + " | ".join(lines[:4])[:600]


def compile_config(variant: KernelVariant) -> dict:
    """Compiles ``variant`` for ``sm_<variant.arch>`` and returns its resource usage.

    Returns a dict with the variant's fields plus ``tile_m``, ``tile_n``, ``d_pad``, ``registers``,
    ``spill_stores``, ``spill_loads`` (bytes), ``smem`` (bytes of shared memory), ``smem_limit``, ``error`` (None, or
    why the variant did not compile) and ``fits`` (compiled, no spills, smem within the limit).
    """
    consts = variant.constexprs()
    row = asdict(variant)
    row.update(tile_m=consts["BLOCK_M"], tile_n=consts["BLOCK_N"], d_pad=consts["D_PAD"], registers=None,
               spill_stores=None, spill_loads=None, smem=None, smem_limit=SMEM_LIMITS[variant.arch], error=None,
               fits=False)
    _require_jit()
    try:
        kernel, log = _compile(variant)
    except Exception as exc:  # a toolchain that cannot target this arch: reported, not hidden
        row["error"] = _error_reason(exc)
        return row
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        row["error"] = "no ptxas -v resource line in the compile log: " + log.strip()[-300:]
        return row
    row.update(registers=int(regs.group(1)), spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)),
               smem=int(kernel.metadata.shared))
    row["fits"] = row["spill_stores"] == 0 and row["spill_loads"] == 0 and row["smem"] <= row["smem_limit"]
    return row
