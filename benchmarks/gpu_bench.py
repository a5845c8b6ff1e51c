"""One prepared GPU benchmark on real architectures: attention kernels at flagship token grids, then one denoising
step of real-config Wan 2.1 1.3B, Flux and SDXL denoisers (random weights) with dense and sparse attention.

Usage::

    python benchmarks/gpu_bench.py                     # CUDA, bf16, 8-minute budget -> benchmarks/results/gpu/
    python benchmarks/gpu_bench.py --out DIR --budget-s 300
    python benchmarks/gpu_bench.py --dry-run --out /tmp/x   # the same code at tiny sizes on CPU (CI)
    attnplug bench --suite gpu                          # runs this script

Sections (``sections`` in the JSON, one entry per measurement):

- ``kernels``: at the token grids of Wan 480p/720p, HunyuanVideo 720p and Flux 2048²/4096² (1 x 24 heads x 128):
  dense SDPA (torch's pick, then flash / cuDNN / efficient forced), and at densities 0.1 / 0.25 / 0.5 a random
  block LUT and a neighbourhood window through ``attnplug.kernels.block_sparse_attention`` (``flex``, ``triton``),
  the neighbourhood through NATTEN where installed, and ``SparseVideoConfig()``'s tiles on the video grids. Each
  sparse entry has ``tflops`` (useful FLOPs: ``4 B H N² D x density`` per second) and ``fraction_of_bound`` (the
  FLOP bound ``best dense ms x density`` over the entry's ms).
- ``wan``, ``flux``, ``unet``: one transformer / U-Net forward at the pipeline's shapes, dense vs each method applied
  with ``attnplug.apply(model, config, schedule=Schedule())`` (every step and layer sparse); ``stats`` says what ran,
  ``rel_l2`` is the output's relative L2 distance to dense.

Every sparse entry runs one warmed-up call under ``torch.cuda.set_sync_debug_mode("error")`` (``sync.error``: did it
synchronise the host, and where) and once under ``"warn"`` (``sync.sites``: every synchronising line). An entry that
raises records its error and the run goes on; the clock is checked before each entry (each section may run until its
share of the budget, unused time passes on), later entries say ``"status": "skipped", "reason": "budget"``; the JSON
is rewritten after every entry.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__" and "--dry-run" in sys.argv[1:]:
    # Tiny shapes: FlexAttention runs uncompiled (compiling takes 20-30 s per shape on a CPU). Read at import.
    os.environ.setdefault("ATTNPLUG_FLEX_EAGER", "1")

try:  # a package that does not import still gives a JSON: every entry that needs it records the error
    import attnplug
    from attnplug.kernels import BlockLUT, NeighborhoodMask, block_sparse_attention

    IMPORT_ERROR = None
except Exception as _exc:  # pragma: no cover - only while the package is broken
    IMPORT_ERROR = f"import attnplug failed: {type(_exc).__name__}: {_exc}"

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu"
RESULT_NAME = "gpu_bench.json"
SECTION_SHARES = {"kernels": 0.45, "wan": 0.65, "flux": 0.85, "unet": 1.0}  # cumulative fractions of the budget
SDPA_FORCED = ("flash", "cudnn", "efficient")

# Published configs (random weights are drawn here; no hub access needed).
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, down_block_types=(
    "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), up_block_types=(
    "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(320, 640, 1280), layers_per_block=2,
    cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)


@dataclass
class Profile:
    """Sizes of one run: the GPU benchmark, or the tiny CPU dry run that walks the same code."""

    device: str
    dtype: torch.dtype
    heads: int
    head_dim: int
    grids: dict[str, tuple[int, int, int]]
    densities: tuple[float, ...]
    lut_block: int
    kernel_backends: tuple[str, ...]
    kernel_reps: tuple[int, int]  # (warm-up calls after the first, timed repeats)
    step_reps: tuple[int, int]
    wan: dict
    wan_latent: tuple[int, int, int, int]
    wan_text: tuple[int, int]  # (tokens, dim)
    flux: dict
    flux_tokens: tuple[int, int]  # packed latent (height, width)
    flux_text: int
    unet: dict
    unet_latent: int  # latent side at the benchmarked size
    unet_train_latent: int  # latent side at the training size (hi-res windows are this size at their level)
    neighborhood_kernel: tuple[int, int] = (13, 13)  # NeighborhoodConfig's default
    info: dict = field(default_factory=dict)


def full_profile() -> Profile:
    """The GPU benchmark: bf16 on CUDA at the published sizes."""
    return Profile(
        device="cuda", dtype=torch.bfloat16, heads=24, head_dim=128,
        grids={"wan-480p": (21, 30, 52), "wan-720p": (21, 45, 80), "hunyuan-720p": (33, 45, 80),
               "flux-2048": (1, 128, 128), "flux-4096": (1, 256, 256)},
        densities=(0.1, 0.25, 0.5), lut_block=128, kernel_backends=("flex", "triton"), kernel_reps=(1, 3),
        step_reps=(1, 3), wan=WAN_1_3B, wan_latent=(16, 21, 60, 104), wan_text=(512, 4096), flux=FLUX_DEV,
        flux_tokens=(128, 128), flux_text=512, unet=SDXL_UNET, unet_latent=256, unet_train_latent=128,
    )


def dry_profile() -> Profile:
    """The dry run: the same code at tiny sizes on CPU in float32 (``torch`` stands in for CUDA-only backends)."""
    return Profile(
        device="cpu", dtype=torch.float32, heads=2, head_dim=64,
        grids={"video-tiny": (4, 8, 8), "image-tiny": (1, 16, 16)}, densities=(0.25,), lut_block=64,
        kernel_backends=("torch", "flex", "triton"), kernel_reps=(0, 1), step_reps=(0, 1),
        wan=dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4, text_dim=32,
                 freq_dim=32, ffn_dim=64, num_layers=1),
        wan_latent=(4, 4, 16, 16), wan_text=(8, 32),
        flux=dict(FLUX_DEV, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                  axes_dims_rope=(16, 24, 24)),
        flux_tokens=(16, 16), flux_text=8,
        unet=dict(SDXL_UNET, sample_size=16, block_out_channels=(32, 128, 128), layers_per_block=1,
                  cross_attention_dim=32, transformer_layers_per_block=(1, 1, 1), attention_head_dim=(2, 2, 2),
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8),
        unet_latent=32, unet_train_latent=16, neighborhood_kernel=(5, 5),
    )


# ------------------------------------------------------------------------------------------------ recording


class Skip(Exception):
    """Raised by an entry that cannot run here; its message is the reason recorded in the JSON."""


@dataclass
class Entry:
    """One measurement: ``run()`` returns the fields recorded beside ``"status": "ok"``."""

    name: str
    run: Callable[[], dict]


class Runner:
    """Runs entries section by section under the budget and rewrites the JSON after each one."""

    def __init__(self, path: Path, budget_s: float, meta: dict, clock: Callable[[], float] = time.perf_counter):
        self.path, self.budget_s, self.clock = path, budget_s, clock
        self.start = clock()
        self.doc = {**meta, "budget_s": budget_s, "finished": False, "elapsed_s": 0.0, "sections": {}}
        path.parent.mkdir(parents=True, exist_ok=True)

    def run_section(self, name: str, entries: list[Entry], share_end: float = 1.0,
                    cleanup: Callable[[], None] | None = None) -> dict:
        """Run ``entries`` in order; an entry starts only before ``share_end`` of the budget has passed."""
        results = self.doc["sections"].setdefault(name, {"entries": {}})["entries"]
        deadline = self.budget_s * share_end
        try:
            for entry in entries:
                if self.clock() - self.start >= deadline:
                    results[entry.name] = {"status": "skipped", "reason": "budget"}
                else:
                    results[entry.name] = run_entry(entry)
                self.write()
        finally:
            if cleanup is not None:
                cleanup()
            release_memory()
        return results

    def write(self, finished: bool = False) -> None:
        """Write the JSON now (atomically: a temporary file renamed over the old one)."""
        self.doc["elapsed_s"] = round(self.clock() - self.start, 3)
        self.doc["finished"] = finished
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(jsonable(self.doc), indent=1))
        os.replace(tmp, self.path)


def run_entry(entry: Entry) -> dict:
    """``{"status": "ok", **fields}``, ``{"status": "skipped", "reason"}`` or ``{"status": "error", "error",
    "where"}``; never raises (except KeyboardInterrupt)."""
    t0 = time.perf_counter()
    try:
        if IMPORT_ERROR is not None and not entry.name.endswith(tuple(f"/dense/{w}" for w in ("auto", *SDPA_FORCED))):
            raise RuntimeError(IMPORT_ERROR)
        out = {"status": "ok", **entry.run()}
    except Skip as exc:
        out = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000], "where": frames_of(exc)}
        release_memory()
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out


def frames_of(exc: BaseException, limit: int = 4) -> list[str]:
    """The innermost ``limit`` frames of ``exc``'s traceback, as ``path:line in function`` (attnplug and diffusers
    frames first when there are any)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "attnplug" in f.filename or "diffusers" in f.filename] or list(frames)
    return [f"{short_path(f.filename)}:{f.lineno} in {f.name}" for f in ours[-limit:]]


def short_path(filename: str) -> str:
    """``filename`` from its package folder on (``attnplug/...``, ``diffusers/...``, ``torch/...``)."""
    parts = Path(filename).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("attnplug", "diffusers", "torch", "benchmarks"):
            return "/".join(parts[i:])
    return filename


def jsonable(obj):
    """Plain JSON values: tensors become numbers or lists, tuples lists, dtypes and devices strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def release_memory() -> None:
    """Free what the last entry left (Python garbage and the CUDA cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(prof: Profile, dry_run: bool) -> dict:
    """Device name, capability, torch / triton / CUDA / diffusers / NATTEN versions, the profile's sizes."""
    env = {"dry_run": dry_run, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "attnplug": IMPORT_ERROR or attnplug.__version__, "device": prof.device,
           "dtype": str(prof.dtype).replace("torch.", ""), "heads": prof.heads, "head_dim": prof.head_dim}
    for name in ("triton", "diffusers", "natten"):
        env[name] = module_version(name)
    if prof.device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["capability"] = list(torch.cuda.get_device_capability())
        env["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["torch_threads"] = torch.get_num_threads()
        env["flex_eager"] = os.environ.get("ATTNPLUG_FLEX_EAGER")
    return env


def module_version(name: str) -> str | None:
    """The module's ``__version__`` if it imports, else None."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return str(getattr(__import__(name), "__version__", "unknown"))
    except Exception as exc:
        return f"import fails: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------ timing and syncs


def time_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> dict:
    """First call (wall, includes compiles), ``warmup`` more, then ``repeats`` timed calls (CUDA events on CUDA)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": median(times), "ms_all": [round(t, 4) for t in times], "first_call_ms": round(first, 3)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def sync_check(fn: Callable[[], object], device: str) -> dict:
    """Run ``fn`` (warmed up) once under ``set_sync_debug_mode("error")`` and once under ``"warn"``:
    ``{"raised": bool, "where": [...], "sites": {"path:line": count}}``; on CPU not checked (a CUDA facility)."""
    if device != "cuda":
        return {"checked": False, "reason": "set_sync_debug_mode checks CUDA host syncs; none on CPU"}
    out: dict = {"checked": True, "raised": False, "where": None}
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        fn()
    except Exception as exc:  # a sync raises RuntimeError; anything else is recorded as what it is
        is_sync = "synchroniz" in str(exc)
        out["raised"], out["where"] = is_sync, frames_of(exc)
        out["message" if is_sync else "other_error"] = f"{type(exc).__name__}: {exc}"[:400]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.cuda.set_sync_debug_mode("warn")
            fn()
        except Exception as exc:
            out["warn_pass_error"] = f"{type(exc).__name__}: {exc}"[:400]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = Counter(f"{short_path(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    out["sites"] = dict(sites)
    out["syncs"] = sum(sites.values())
    return out


# ------------------------------------------------------------------------------------------------ kernels


def random_lut(n: int, block: int, density: float, seed: int) -> BlockLUT:
    """A LUT with ``round(density x blocks)`` random key blocks per query block, the diagonal always included."""
    m = math.ceil(n / block)
    per_row = min(m, max(1, round(density * m)))
    scores = torch.rand(m, m, generator=torch.Generator().manual_seed(seed))
    scores.diagonal().fill_(2.0)
    mask = torch.zeros(m, m, dtype=torch.bool)
    mask.scatter_(1, scores.topk(per_row, dim=1).indices, True)
    return BlockLUT.from_block_mask(mask[None, None], block, block)


def odd_at_most(value: float, n: int) -> int:
    """The odd window size nearest ``value`` in ``[1, n]`` (``n`` itself when the window would cover ``n``)."""
    k = max(1, 2 * round((value - 1) / 2) + 1)
    return n if k >= n else k


def neighborhood_for(grid: tuple[int, int, int], density: float) -> NeighborhoodMask:
    """A neighbourhood window covering about ``density`` of the grid (each side scaled alike, the last side fitted)."""
    dims = [d for d in range(3) if grid[d] > 1]
    side = density ** (1 / len(dims))
    kernel = [1, 1, 1]
    for d in dims[:-1]:
        kernel[d] = odd_at_most(side * grid[d], grid[d])
    last = dims[-1]
    rest = math.prod(kernel[d] for d in dims[:-1])
    kernel[last] = odd_at_most(density * math.prod(grid) / rest, grid[last])
    return NeighborhoodMask(grid=grid, kernel_size=tuple(kernel))


def element_density(mask: NeighborhoodMask) -> float:
    """Fraction of (query, key) pairs a NATTEN-style window keeps (windows shift at borders: always full)."""
    return math.prod(mask.kernel_size) / mask.num_grid_tokens


class KernelInputs:
    """q, k, v ``(1, H, N, D)`` for one grid at a time (the previous grid's tensors are freed)."""

    def __init__(self, prof: Profile):
        self.prof, self.grid, self.qkv = prof, None, None
        self.dense: dict[str, float] = {}

    def get(self, grid):
        if grid != self.grid:
            self.qkv, self.dense = None, {}
            release_memory()
            p, n = self.prof, math.prod(grid)
            gen = torch.Generator(device=p.device).manual_seed(0)
            self.qkv = tuple(torch.randn(1, p.heads, n, p.head_dim, device=p.device, dtype=p.dtype, generator=gen)
                             for _ in range(3))
            self.grid = grid
        return self.qkv

    def clear(self) -> None:
        self.grid, self.qkv, self.dense = None, None, {}

    def best_dense(self) -> tuple[str, float] | None:
        return min(self.dense.items(), key=lambda kv: kv[1]) if self.dense else None


def dense_entry(inputs: KernelInputs, grid, which: str) -> dict:
    """Dense SDPA: ``auto`` = torch's pick, else the named backend forced (unavailable: skipped, with torch's why)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = inputs.get(grid)
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    ctx = contextlib.nullcontext() if which == "auto" else sdpa_kernel(backends[which])
    with ctx, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), inputs.prof.device, *inputs.prof.kernel_reps)
        except RuntimeError as exc:
            why = "; ".join(str(w.message) for w in caught)[:600]
            raise Skip(f"unavailable: {exc}" + (f" ({why})" if why else "")) from None
    inputs.dense[which] = t["ms"]
    return {**t, "tflops": flops(grid, inputs.prof) / t["ms"] / 1e9}


def flops(grid, prof: Profile, density: float = 1.0) -> float:
    """Useful FLOPs of one attention call: ``4 B H N² D`` (QKᵀ and PV) times the density."""
    n = math.prod(grid)
    return 4.0 * prof.heads * n * n * prof.head_dim * density


def rate_fields(inputs: KernelInputs, grid, density: float, ms: float) -> dict:
    """``tflops`` and ``fraction_of_bound`` (bound = best dense ms x density), with the dense figures used."""
    best = inputs.best_dense()
    out = {"tflops": flops(grid, inputs.prof, density) / ms / 1e9, "density": density}
    if best is not None:
        out.update(bound_ms=best[1] * density, fraction_of_bound=best[1] * density / ms, dense_ref=best[0],
                   dense_ms=best[1], speedup_vs_dense=best[1] / ms)
    return out


def backend_usable(backend: str, device: str) -> None:
    """Skip what cannot run on ``device`` (the Triton kernel needs CUDA; NATTEN needs its package)."""
    if backend == "triton" and device != "cuda":
        raise Skip("needs CUDA: the Triton kernel does not run on CPU (the torch backend stands in)")
    if backend == "natten" and importlib.util.find_spec("natten") is None:
        raise Skip("natten is not installed")


def block_sparse_entry(inputs: KernelInputs, grid, kind: str, density: float, backend: str) -> dict:
    """``block_sparse_attention`` with a random LUT (``kind="random"``) or a neighbourhood window (``"neighborhood"``;
    ``backend="natten"`` goes through ``attnplug.kernels.neighborhood_attention``)."""
    prof = inputs.prof
    backend_usable(backend, prof.device)
    q, k, v = inputs.get(grid)
    n = q.shape[2]
    extra: dict = {}
    if kind == "random":
        lut = random_lut(n, prof.lut_block, density, seed=int(density * 1000))
        actual = lut.density(n, n)
        lut = lut.to(prof.device)
        fn = lambda: block_sparse_attention(q, k, v, lut, backend=backend)  # noqa: E731
        extra["block"] = prof.lut_block
    else:
        mask = neighborhood_for(grid, density)
        actual = element_density(mask)
        extra["kernel_size"] = list(mask.kernel_size)
        if backend == "natten":
            layout = attnplug.TokenLayout(*grid)
            fn = lambda: attnplug.kernels.neighborhood_attention(  # noqa: E731
                q, k, v, mask.kernel_size, layout=layout, backend="natten")
        else:
            fn = lambda: block_sparse_attention(q, k, v, neighborhood=mask, backend=backend)  # noqa: E731
    t = time_ms(fn, prof.device, *prof.kernel_reps)
    return {**t, **extra, **rate_fields(inputs, grid, actual, t["ms"]), "target_density": density,
            "sync": sync_check(fn, prof.device)}


def tiles_entry(inputs: KernelInputs, grid, backend: str) -> dict:
    """``SparseVideoConfig()``'s default tiles pattern (backend forced) called as a method on the grid's layout."""
    prof = inputs.prof
    backend_usable(backend, prof.device)
    q, k, v = inputs.get(grid)
    method = attnplug.SparseVideoConfig(backend=backend).build()
    layout = attnplug.TokenLayout(*grid)

    def fn():
        out = method(q, k, v, layout)
        if out is None:
            raise RuntimeError(f"SparseVideoConfig() handed the call back ({method.last_reason()})")
        return out

    t = time_ms(fn, prof.device, *prof.kernel_reps)
    report = method.report()
    density = report.get("density")
    density = float(density) if density is not None else attnplug.SparseVideoConfig().density
    return {**t, **rate_fields(inputs, grid, density, t["ms"]), "plans": report.get("plans"),
            "sync": sync_check(fn, prof.device)}


def kernel_entries(prof: Profile, inputs: KernelInputs) -> list[Entry]:
    """Per grid: dense SDPA (auto + forced), then each density x kind x backend, then tiles on video grids."""
    entries = []
    for gname, grid in prof.grids.items():
        for which in ("auto", *SDPA_FORCED):
            entries.append(Entry(f"{gname}/dense/{which}", lambda g=grid, w=which: dense_entry(inputs, g, w)))
        for density in prof.densities:
            for kind in ("random", "neighborhood"):
                for backend in prof.kernel_backends + (("natten",) if kind == "neighborhood" else ()):
                    entries.append(Entry(f"{gname}/{kind}/{density}/{backend}",
                                         lambda g=grid, kd=kind, d=density, b=backend:
                                         block_sparse_entry(inputs, g, kd, d, b)))
        if grid[0] > 1:
            for backend in prof.kernel_backends:
                entries.append(Entry(f"{gname}/tiles/{backend}", lambda g=grid, b=backend: tiles_entry(inputs, g, b)))
    return entries


# ------------------------------------------------------------------------------------------------ denoising steps


@dataclass
class ModelSpec:
    """A real-config denoiser: its diffusers class, config, inputs and the methods compared with dense."""

    name: str
    cls_name: str
    config: dict
    inputs: Callable[[Profile], dict]
    variants: Callable[[Profile, torch.nn.Module], dict[str, tuple]]  # name -> (config, Schedule)
    variant_names: tuple[str, ...]  # the keys of ``variants``, listed before the model exists
    shapes: dict


def randn(prof: Profile, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=prof.device, dtype=prof.dtype)


def wan_inputs(prof: Profile) -> dict:
    tokens, dim = prof.wan_text
    return {"hidden_states": randn(prof, 1, *prof.wan_latent), "encoder_hidden_states": randn(prof, 1, tokens, dim),
            "timestep": torch.full((1,), 500.0, device=prof.device)}


def wan_variants(prof: Profile, model) -> dict[str, tuple]:
    """Each sparse video pattern's default config, and the neighbourhood (NeighborhoodConfig's default window)."""
    out = {p: (attnplug.SparseVideoConfig(pattern=p), attnplug.Schedule())
           for p in ("tiles", "heads", "topk", "threshold")}
    out["neighborhood"] = (attnplug.NeighborhoodConfig(kernel_size=prof.neighborhood_kernel), attnplug.Schedule())
    return out


def flux_inputs(prof: Profile) -> dict:
    h, w = prof.flux_tokens
    ids = torch.zeros(h, w, 3, device=prof.device)
    ids[..., 1] = torch.arange(h, device=prof.device)[:, None]
    ids[..., 2] = torch.arange(w, device=prof.device)[None, :]
    cfg = prof.flux
    return {"hidden_states": randn(prof, 1, h * w, cfg["in_channels"]),
            "encoder_hidden_states": randn(prof, 1, prof.flux_text, cfg["joint_attention_dim"]),
            "pooled_projections": randn(prof, 1, cfg["pooled_projection_dim"]),
            "timestep": torch.full((1,), 0.5, device=prof.device, dtype=prof.dtype),
            "guidance": torch.full((1,), 3.5, device=prof.device, dtype=prof.dtype),
            "img_ids": ids.reshape(h * w, 3).to(prof.dtype),
            "txt_ids": torch.zeros(prof.flux_text, 3, device=prof.device, dtype=prof.dtype)}


def flux_variants(prof: Profile, model) -> dict[str, tuple]:
    """NeighborhoodConfig's default window, and hi-res's DiT attention at 2x: windows of the training grid (half
    the benchmarked grid per side) as a neighbourhood and as shifted windows."""
    train = (prof.flux_tokens[0] // 2, prof.flux_tokens[1] // 2)
    return {
        "neighborhood": (attnplug.NeighborhoodConfig(kernel_size=prof.neighborhood_kernel), attnplug.Schedule()),
        "neighborhood_train_grid": (attnplug.NeighborhoodConfig.from_training_resolution(train), attnplug.Schedule()),
        "window_train_grid": (attnplug.WindowConfig(window_size=train, shift="random", max_level=None),
                              attnplug.Schedule()),
    }


def unet_inputs(prof: Profile) -> dict:
    cfg, side = prof.unet, prof.unet_latent
    time_dims = 6 * cfg["addition_time_embed_dim"]
    px = float(side * 8)
    return {"sample": randn(prof, 1, cfg["in_channels"], side, side), "timestep": torch.full((1,), 500.0,
                                                                                             device=prof.device),
            "encoder_hidden_states": randn(prof, 1, 77, cfg["cross_attention_dim"]),
            "added_cond_kwargs": {
                "text_embeds": randn(prof, 1, cfg["projection_class_embeddings_input_dim"] - time_dims),
                "time_ids": torch.tensor([[px, px, 0.0, 0.0, px, px]], device=prof.device, dtype=prof.dtype)}}


def unet_variants(prof: Profile, model) -> dict[str, tuple]:
    """Hi-res on U-Nets (HiDiffusion's MSW-MSA, as ``attnplug.pipelines.hires`` applies it): shifted windows of the
    training size in the highest-resolution attention blocks; and the training-grid neighbourhood hi-res uses when
    refining a U-Net coarse-to-fine."""
    level = next(i for i, b in enumerate(model.down_blocks) if getattr(b, "attentions", None))
    up = len(model.up_blocks) - 1 - level
    side = max(1, prof.unet_train_latent // 2**level)
    layers = rf"^(down_blocks\.{level}|up_blocks\.{up})\.attentions\.\d+\..*attn1$"
    train = (prof.unet_train_latent, prof.unet_train_latent)
    return {
        "hires_window": (attnplug.WindowConfig(window_size=(side, side), shift="random", max_level=None),
                         attnplug.Schedule(layers=layers)),
        "hires_refine_neighborhood": (attnplug.NeighborhoodConfig.from_training_resolution(train, family="unet"),
                                      attnplug.Schedule()),
    }


def model_specs(prof: Profile) -> list[ModelSpec]:
    """Wan 2.1 1.3B at 480p x 81, Flux at 2048², the SDXL U-Net at 2048² (or their tiny dry-run versions)."""
    fh, fw = prof.flux_tokens
    return [
        ModelSpec("wan", "WanTransformer3DModel", prof.wan, wan_inputs, wan_variants,
                  ("tiles", "heads", "topk", "threshold", "neighborhood"),
                  {"latent": prof.wan_latent, "text": prof.wan_text}),
        ModelSpec("flux", "FluxTransformer2DModel", prof.flux, flux_inputs, flux_variants,
                  ("neighborhood", "neighborhood_train_grid", "window_train_grid"),
                  {"packed_tokens": (fh, fw), "text": prof.flux_text}),
        ModelSpec("unet", "UNet2DConditionModel", prof.unet, unet_inputs, unet_variants,
                  ("hires_window", "hires_refine_neighborhood"),
                  {"latent": (prof.unet["in_channels"], prof.unet_latent, prof.unet_latent), "text": 77}),
    ]


def build_model(spec: ModelSpec, prof: Profile) -> torch.nn.Module:
    """The diffusers model from its config, random weights drawn on the device directly in the benchmark dtype; the
    modules diffusers keeps in float32 when loading (``_keep_in_fp32_modules``) are float32 here too."""
    import diffusers

    cls = getattr(diffusers, spec.cls_name)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(prof.dtype)
        with torch.device(prof.device):
            model = cls(**spec.config)
    finally:
        torch.set_default_dtype(previous)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            fp32 = any(k in name.split(".") for k in keep)
            tensor.data = tensor.data.to(torch.float32 if fp32 else prof.dtype)
    return model.eval().requires_grad_(False)


def forward_fn(model, inputs: dict) -> Callable[[], torch.Tensor]:
    """One denoiser call (no autograd) returning its output tensor."""

    def fn():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    return fn


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``|out - ref| / |ref|`` in float32."""
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def stats_summary(model) -> dict:
    """What ``attnplug.stats`` says ran in the last forward: self-attention calls (method / stock / reasons),
    cross-attention calls and the method report's scalars."""
    st = attnplug.stats(model)
    self_ = st.get("self", {})
    report = st.get("method_report") or {}
    scalars = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool, torch.Tensor)) or v is None}
    return {"self": {k: self_.get(k) for k in ("calls", "method", "stock", "reasons")},
            "cross_calls": st.get("cross", {}).get("calls"), "method_ran": bool(self_.get("method")),
            "report": scalars}


def build_entry(spec: ModelSpec, prof: Profile, state: dict) -> dict:
    t0 = time.perf_counter()
    model = build_model(spec, prof)
    state["model"], state["inputs"] = model, spec.inputs(prof)
    state["fn"] = forward_fn(model, state["inputs"])
    return {"class": spec.cls_name, "parameters": sum(p.numel() for p in model.parameters()),
            "build_s": round(time.perf_counter() - t0, 3), "config": spec.config, "shapes": spec.shapes}


def need(state: dict, key: str, what: str):
    if key not in state:
        raise Skip(f"no {what} (an earlier entry of this section did not run)")
    return state[key]


def dense_step_entry(prof: Profile, state: dict) -> dict:
    """Stock attention: the time and output every method is compared with; the same sync check as the methods."""
    fn = need(state, "fn", "model")
    t = time_ms(fn, prof.device, *prof.step_reps)
    ref = fn().float()
    state["ref"], state["dense_ms"] = ref, t["ms"]
    return {**t, "finite": bool(torch.isfinite(ref).all()), "sync": sync_check(fn, prof.device)}


def sparse_step_entry(prof: Profile, state: dict, config, schedule) -> dict:
    """``attnplug.apply(model, config, schedule)``, timed; ``stats`` of one forward; distance to dense; syncs."""
    model, fn = need(state, "model", "model"), state["fn"]
    ref = need(state, "ref", "dense reference")
    attnplug.apply(model, config, schedule=schedule)
    try:
        t = time_ms(fn, prof.device, *prof.step_reps)
        attnplug.reset_stats(model)
        out = fn()
        summary = stats_summary(model)
        fields = {**t, "speedup_vs_dense": state["dense_ms"] / t["ms"], "rel_l2": rel_l2(out, ref),
                  "config": config.describe(), "schedule": repr(schedule), **summary}
        del out
        fields["sync"] = sync_check(fn, prof.device)
        return fields
    finally:
        attnplug.remove(model)


def model_entries(spec: ModelSpec, prof: Profile, state: dict) -> list[Entry]:
    """Build, dense, then one entry per variant (variants are listed after the build: hi-res reads the model)."""
    entries = [Entry("build", lambda: build_entry(spec, prof, state)),
               Entry("dense", lambda: dense_step_entry(prof, state))]
    for name in spec.variant_names:
        def run(name=name):
            variants = spec.variants(prof, need(state, "model", "model"))
            return sparse_step_entry(prof, state, *variants[name])
        entries.append(Entry(name, run))
    return entries


# ------------------------------------------------------------------------------------------------ main


def describe(prof: Profile) -> dict:
    """The profile's sizes for the JSON."""
    return {"grids": prof.grids, "densities": prof.densities, "lut_block": prof.lut_block,
            "kernel_backends": prof.kernel_backends, "kernel_reps": prof.kernel_reps, "step_reps": prof.step_reps}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"output folder for {RESULT_NAME} (default {DEFAULT_OUT}; "
                        "the dry run defaults to a new temporary folder)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="total seconds; no entry starts after it (default 480: 8 minutes)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code at tiny sizes on CPU (no GPU needed; CI runs it)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prof = dry_profile() if args.dry_run else full_profile()
    if args.dry_run:  # tiny ops: one thread avoids OpenMP barriers stalling on a shared, busy CPU
        torch.set_num_threads(1)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; nothing was run (use --dry-run for the CPU check).", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="gpu_bench_")) if args.dry_run
                                           else DEFAULT_OUT)
    runner = Runner(out / RESULT_NAME, args.budget_s,
                    {"benchmark": "gpu_bench", "environment": environment(prof, args.dry_run),
                     "profile": describe(prof)})
    runner.write()
    inputs = KernelInputs(prof)
    runner.run_section("kernels", kernel_entries(prof, inputs), SECTION_SHARES["kernels"],
                       cleanup=inputs.clear)
    for spec in model_specs(prof):
        state: dict = {}
        runner.run_section(spec.name, model_entries(spec, prof, state), SECTION_SHARES[spec.name],
                           cleanup=state.clear)
    runner.write(finished=True)
    counts = Counter(e["status"] for s in runner.doc["sections"].values() for e in s["entries"].values())
    print(f"gpu_bench: {dict(counts)} in {runner.doc['elapsed_s']:.1f} s -> {runner.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
