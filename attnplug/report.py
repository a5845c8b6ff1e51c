"""Measure and report: timing (warm-up, interleaved, CUDA-synchronised), denoiser/attention time, peak memory,
fidelity to a dense reference (PSNR/SSIM with torchmetrics), the embedded detector's verdicts, and the writers
(media files, sidecar/record JSON, ``report.json`` and a self-contained ``report.html``).

Images are handled as float arrays in ``[0, 1]`` shaped ``(N, H, W, 3)``; videos ``(N, F, H, W, 3)``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD_MARK = "attnplug_record"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
UNAVAILABLE_NO_WEIGHTS = "unavailable (needs local weights)"


# ----------------------------------------------------------------------------------------------------------------
# Timing


def synchronize(device) -> None:
    """Wait for queued GPU work on ``device`` (no-op on CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds``; synchronises ``device`` before and after."""

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self):
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        return False


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 3,
                     device="cpu") -> dict[str, dict]:
    """Time each callable of ``fns`` after ``warmup`` untimed rounds, ``repeats`` rounds interleaved (every
    round runs all of them, in a rotating order, so a drifting machine load hits all alike).

    Returns ``{name: {"seconds": [...], "median": s, "min": s, "result": last return value}}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = {name: {"seconds": [], "result": None} for name in names}
    for r in range(max(1, repeats)):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            with Stopwatch(device) as sw:
                out[name]["result"] = fns[name]()
            out[name]["seconds"].append(sw.seconds)
    for entry in out.values():
        entry["median"] = _median(entry["seconds"])
        entry["min"] = min(entry["seconds"])
    return out


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def _attention_modules(model) -> list:
    try:
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_processor import Attention
        classes: tuple = (Attention, AttentionModuleMixin)
    except ImportError:  # pragma: no cover - older diffusers
        from diffusers.models.attention_processor import Attention
        classes = (Attention,)
    return [m for m in model.modules() if isinstance(m, classes)]


class BreakdownTimer:
    """Time spent in the denoiser and in its attention modules during a block, via forward hooks.

    On CUDA the hooks record CUDA events (no synchronisation inside the run); on CPU they read the clock.
    ``with BreakdownTimer(denoiser, device) as t: pipe(...)`` then ``t.denoiser_s``, ``t.attention_s``,
    ``t.attention_share`` (attention / denoiser).
    """

    def __init__(self, denoiser, device="cpu"):
        import torch

        self.denoiser = denoiser
        self.cuda = torch.device(device).type == "cuda"
        self.denoiser_s = 0.0
        self.attention_s = 0.0
        self._handles = []
        self._events: dict[str, list] = {"denoiser": [], "attention": []}

    def _mark(self, kind: str):
        import torch

        stack: list = []

        def pre(module, args, kwargs=None):
            if self.cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                stack.append(event)
            else:
                stack.append(time.perf_counter())

        def post(module, args, output, kwargs=None):
            start = stack.pop()
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._events[kind].append((start, end))
            elif kind == "denoiser":
                self.denoiser_s += time.perf_counter() - start
            else:
                self.attention_s += time.perf_counter() - start

        return pre, post

    def __enter__(self):
        if self.denoiser is None:
            return self
        for kind, modules in (("denoiser", [self.denoiser]), ("attention", _attention_modules(self.denoiser))):
            for module in modules:
                pre, post = self._mark(kind)
                self._handles.append(module.register_forward_pre_hook(pre))
                self._handles.append(module.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.denoiser_s = sum(a.elapsed_time(b) for a, b in self._events["denoiser"]) / 1000
            self.attention_s = sum(a.elapsed_time(b) for a, b in self._events["attention"]) / 1000
        return False

    @property
    def attention_share(self) -> float | None:
        return self.attention_s / self.denoiser_s if self.denoiser_s > 0 else None

    def as_dict(self) -> dict:
        return {"denoiser_s": self.denoiser_s, "attention_s": self.attention_s,
                "attention_share": self.attention_share}


# ----------------------------------------------------------------------------------------------------------------
# Memory


class PeakMemory:
    """Peak memory during a block: ``max_memory_allocated`` on CUDA; on CPU the process RSS, sampled by psutil
    every ``interval`` seconds (and the kernel's lifetime ``ru_maxrss`` for reference)."""

    def __init__(self, device="cpu", interval: float = 0.02):
        import torch

        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes: int | None = None
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "rss_sampled"

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        self._proc = psutil.Process()
        self.peak_bytes = self._proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval):
                self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
        return False

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "peak_mib": None if self.peak_bytes is None else self.peak_bytes / 2**20}
        if self.device.type != "cuda":
            import resource

            out["process_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out


# ----------------------------------------------------------------------------------------------------------------
# Media and metrics


def as_float_array(output):
    """A pipeline output (``.images`` or ``.frames``, PIL / numpy / torch) -> float32 numpy in ``[0, 1]``:
    ``(N, H, W, 3)`` images or ``(N, F, H, W, 3)`` videos."""
    import numpy as np

    if hasattr(output, "frames"):
        data = output.frames
        video = True
    elif hasattr(output, "images"):
        data = output.images
        video = False
    else:
        data, video = output, None
    if hasattr(data, "detach"):
        data = data.detach().float().cpu().numpy()
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], np.ndarray) and \
            not hasattr(data[0], "shape"):
        data = [np.stack([np.asarray(f) for f in item]) if isinstance(item, (list, tuple)) else np.asarray(item)
                for item in data]
    arr = np.asarray(data)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if video is None:
        video = arr.ndim == 5
    if not video and arr.ndim == 3:
        arr = arr[None]
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[-3] in (1, 3, 4):  # channels-first
        arr = np.moveaxis(arr, -3, -1)
    return np.clip(arr[..., :3], 0.0, 1.0)


def _to_nchw(arr):
    import torch

    t = torch.from_numpy(arr.reshape(-1, *arr.shape[-3:]).copy())
    return t.permute(0, 3, 1, 2).double()


def psnr(a, b) -> float:
    """PSNR (dB, data range 1) of arrays ``a`` vs reference ``b`` (same shape ``(..., H, W, 3)``), over all
    images/frames together; ``inf`` when identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}.")
    ta, tb = _to_nchw(a), _to_nchw(b)
    if bool((ta == tb).all()):
        return math.inf
    return float(peak_signal_noise_ratio(ta, tb, data_range=1.0))


def ssim(a, b) -> float:
    """Mean SSIM of ``a`` vs reference ``b`` (``(..., H, W, 3)``) with a Gaussian window fitted to small images."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {a.shape} and {b.shape}.")
    side = min(a.shape[-3], a.shape[-2])
    kernel = max(3, min(11, side if side % 2 else side - 1))
    sigma = 1.5 * kernel / 11
    return float(structural_similarity_index_measure(_to_nchw(a), _to_nchw(b), data_range=1.0,
                                                     kernel_size=kernel, sigma=sigma))


def _lpips_weights_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()


def fidelity(output, reference) -> dict:
    """Fidelity of ``output`` to ``reference`` (float arrays as from :func:`as_float_array`): ``psnr``, ``ssim``
    and, with local weights only, ``lpips``; ``clip`` and ``fid`` need weights and are reported unavailable."""
    result: dict[str, Any] = {"psnr": psnr(output, reference), "ssim": ssim(output, reference)}
    if _lpips_weights_available():
        from torchmetrics.functional.image.lpip import learned_perceptual_image_patch_similarity

        a, b = _to_nchw(output).float() * 2 - 1, _to_nchw(reference).float() * 2 - 1
        result["lpips"] = float(learned_perceptual_image_patch_similarity(a, b, net_type="alex"))
    else:
        result["lpips"] = UNAVAILABLE_NO_WEIGHTS
    result["clip"] = UNAVAILABLE_NO_WEIGHTS
    result["fid"] = UNAVAILABLE_NO_WEIGHTS
    return result


def judge(media, prompt: str | None = None) -> dict:
    """The embedded detector's verdict on ``media`` (one image ``(H, W, 3)`` or one video ``(F, H, W, 3)``):
    object count (duplication = 2 or more), and for video persistence, colour and direction."""
    from .models import detect, summarize_video

    words = (prompt or "").split()
    if media.ndim == 4:
        s = summarize_video(media)
        out = {"counts": s.counts, "persistent": s.persistent, "color": s.color, "direction": s.direction,
               "linearity": s.linearity, "duplicated": any(c >= 2 for c in s.counts)}
        if len(words) >= 4:
            out["color_ok"] = bool(s.persistent and s.color == words[0])
            out["direction_ok"] = bool(s.persistent and s.direction == words[-1])
        return out
    det = detect(media)
    out = {"count": det.count, "colors": det.colors(), "duplicated": det.count >= 2}
    if len(words) == 2:
        out["ok"] = bool(det.count == 1 and det.objects[0].color == words[0])
        out["shape_ok"] = bool(out["ok"] and det.objects[0].shape == words[1])
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename (an interrupted write leaves no
    half-written ``path``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (non-finite floats as strings ``"inf"``/``"nan"``)."""
    atomic_write_bytes(Path(path), (json.dumps(jsonable(obj), indent=1) + "\n").encode())


def jsonable(obj):
    """``obj`` with non-finite floats as strings and tuples/paths/dtypes as JSON types."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_media(array, stem: Path, *, video_format: str = "mp4", fps: int = 8) -> Path:
    """Save one image ``(H, W, 3)`` as PNG or one video ``(F, H, W, 3)`` as H.264/yuv420p MP4 (browser-playable)
    or GIF, in ``[0, 1]``, atomically; returns the path (``stem`` + extension)."""
    import numpy as np

    data = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    stem = Path(stem)
    if data.ndim == 3:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(data).save(buf, format="PNG")
        path = stem.with_suffix(".png")
        atomic_write_bytes(path, buf.getvalue())
        return path
    path = stem.with_suffix("." + video_format)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    if video_format == "gif":
        import imageio.v3 as iio

        iio.imwrite(tmp, data, extension=".gif", duration=1000 / fps, loop=0)
    elif video_format == "mp4":
        import imageio.v2 as iio2

        h, w = data.shape[1:3]
        if h % 2 or w % 2:  # yuv420p needs even sides
            data = np.pad(data, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        writer = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                                 macro_block_size=2, output_params=["-movflags", "+faststart", "-crf", "18"],
                                 ffmpeg_log_level="error")
        try:
            for frame in data:
                writer.append_data(frame)
        finally:
            writer.close()
    else:
        raise ValueError(f"video_format={video_format!r} must be 'mp4' or 'gif'.")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Environment and stats


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment(device="cpu") -> dict:
    """Versions, device, torch threads, load average and which block-sparse kernel path ``device`` takes."""
    import torch

    dev = torch.device(device)
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: _version(name) for name in
                     ("attnplug", "torch", "diffusers", "transformers", "accelerate", "triton", "torchmetrics",
                      "xformers")},
        "device": str(dev), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if dev.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(dev)
        env["capability"] = list(torch.cuda.get_device_capability(dev))
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    try:
        from .kernels.block_sparse.dispatch import choose_backend

        q = torch.empty(1, 1, 1, 16, device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
        name, reason = choose_backend("auto", q)
        env["kernel_path"] = {"backend": name, "reason": reason}
    except Exception as exc:  # the dispatcher is optional for a report
        env["kernel_path"] = {"backend": None, "reason": f"{type(exc).__name__}: {exc}"}
    return env


def summarize_stats(stats: dict) -> dict:
    """Flatten :func:`attnplug.stats` (new nested or older flat form) into ``self_calls``, ``method``, ``stock``,
    ``coverage`` (method / self calls), ``reasons``, ``cross_calls``, ``passthrough``, ``method_report``."""
    if not stats:
        return {"self_calls": 0, "method": 0, "stock": 0, "coverage": None, "reasons": {}, "cross_calls": 0,
                "passthrough": 0, "method_report": {}}
    if isinstance(stats.get("self"), dict):
        s = stats["self"]
        out = {"self_calls": s.get("calls", 0), "method": s.get("method", 0), "stock": s.get("stock", 0),
               "reasons": dict(s.get("reasons", {})), "cross_calls": stats.get("cross", {}).get("calls", 0),
               "passthrough": stats.get("passthrough", 0), "method_report": stats.get("method_report") or {}}
    else:
        reasons = {k.split(": ", 1)[1]: v for k, v in stats.items() if isinstance(k, str) and ": " in k}
        cross = reasons.pop("cross-attention", 0)
        calls = stats.get("calls", 0) - cross
        out = {"self_calls": calls, "method": stats.get("method", 0),
               "stock": stats.get("dense", stats.get("stock", 0)) - cross, "reasons": reasons, "cross_calls": cross,
               "passthrough": stats.get("passthrough", 0), "method_report": stats.get("method_report") or {}}
    out["coverage"] = out["method"] / out["self_calls"] if out["self_calls"] else None
    return out


def sparsity_of(method_report) -> float | None:
    """A density figure (fraction of attention computed) from a method report, when it has one."""
    if isinstance(method_report, dict):
        for key in ("density", "mean_density", "kept_fraction"):
            if isinstance(method_report.get(key), (int, float)):
                return float(method_report[key])
        values = [sparsity_of(v) for v in method_report.values() if isinstance(v, (dict, list))]
    elif isinstance(method_report, list):
        values = [sparsity_of(v) for v in method_report]
    else:
        return None
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------------------------------------------
# Records and report


def collect_records(directory: Path) -> list[dict]:
    """All record JSON files under ``directory`` (each holds ``"attnplug_record": 1``), sorted by id/method."""
    records = []
    for path in sorted(Path(directory).rglob("*.json")):
        if path.name.startswith(".") or path.name == REPORT_JSON:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get(RECORD_MARK):
            data["_path"] = str(path.relative_to(directory))
            records.append(data)
    records.sort(key=lambda r: (str(r.get("id")), str(r.get("method"))))
    return records


def _num(x) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x == "inf":
        return math.inf
    return None


def _mean(values: Iterable) -> float | None:
    values = [v for v in (_num(x) for x in values) if v is not None]
    if not values:
        return None
    if any(math.isinf(v) for v in values):
        return math.inf if all(v > 0 for v in values if math.isinf(v)) else None
    return sum(values) / len(values)


def summarize(records: list[dict]) -> list[dict]:
    """One row per method: items, median speed-up vs the reference, mean PSNR/SSIM, duplication rate, coverage,
    mean seconds and peak memory."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r.get("method_label") or r.get("method", "?"), []).append(r)
    rows = []
    order = sorted(by_method, key=lambda m: not any(r.get("reference") for r in by_method[m]))
    for method, rs in ((m, by_method[m]) for m in order):
        speedups = [_num(r.get("speedup")) for r in rs]
        speedups = [s for s in speedups if s is not None]
        dup = [r["detector"]["duplicated"] for r in rs if isinstance(r.get("detector"), dict)
               and "duplicated" in r["detector"]]
        rows.append({
            "method": method, "items": len(rs),
            "seconds_mean": _mean(r.get("seconds") for r in rs),
            "speedup_median": _median(speedups) if speedups else None,
            "psnr_mean": _mean((r.get("fidelity") or {}).get("psnr") for r in rs),
            "ssim_mean": _mean((r.get("fidelity") or {}).get("ssim") for r in rs),
            "attention_share_mean": _mean((r.get("timing") or {}).get("attention_share") for r in rs),
            "coverage_mean": _mean((r.get("stats") or {}).get("coverage") for r in rs),
            "density_mean": _mean(r.get("density") for r in rs),
            "duplication_rate": (sum(map(bool, dup)) / len(dup)) if dup else None,
            "peak_mib_max": max((m for m in ((r.get("memory") or {}).get("peak_mib") for r in rs)
                                 if isinstance(m, (int, float))), default=None),
        })
    return rows


def build_report(directory: Path) -> dict:
    """The merged report of every record under ``directory`` (all processes' outputs together)."""
    records = collect_records(directory)
    ids = [(r.get("id"), r.get("method_label") or r.get("method")) for r in records]
    duplicates = sorted({str(i) for i in ids if ids.count(i) > 1})
    envs = [r["environment"] for r in records if isinstance(r.get("environment"), dict)]
    return {
        "directory": str(directory), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kind": records[0].get("kind") if records else None,
        "items": len({r.get("id") for r in records}), "num_records": len(records), "duplicate_records": duplicates,
        "ranks": sorted({r.get("rank", 0) for r in records}),
        "environment": envs[0] if envs else environment("cpu"),
        "summary": summarize(records), "records": records,
    }


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


_HEADERS = {"speedup_median": "speed-up (median)", "seconds_mean": "s / run", "psnr_mean": "PSNR dB",
            "ssim_mean": "SSIM", "duplication_rate": "duplicated", "coverage_mean": "method calls",
            "density_mean": "density", "attention_share_mean": "attention share", "peak_mib_max": "peak MiB"}


def _table(rows: list[dict], columns: list[str], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(_HEADERS.get(c, c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def scatter_plots(records: list[dict]) -> list[tuple[str, str]]:
    """Speed-vs-quality scatter plots (speed-up vs PSNR, vs SSIM) as ``(title, base64 PNG)``; none when no record
    has a speed-up."""
    points = [r for r in records if _num(r.get("speedup")) is not None and r.get("fidelity")]
    if not points:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    for metric, label in (("psnr", "PSNR vs dense (dB)"), ("ssim", "SSIM vs dense")):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        methods = sorted({r.get("method_label") or r["method"] for r in points})
        finite_max = max((v for r in points if (v := _num(r["fidelity"].get(metric))) is not None
                          and math.isfinite(v)), default=1.0)
        for method in methods:
            xs, ys = [], []
            for r in points:
                if (r.get("method_label") or r["method"]) != method:
                    continue
                y = _num(r["fidelity"].get(metric))
                if y is None:
                    continue
                xs.append(_num(r["speedup"]))
                ys.append(finite_max * 1.05 if math.isinf(y) else y)  # identical to dense: drawn at the top
            ax.scatter(xs, ys, label=method, alpha=0.8)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("speed-up vs dense (same seed, interleaved)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        plots.append((f"Speed-up vs {metric.upper()}", base64.b64encode(buf.getvalue()).decode()))
    return plots


def _thumbnail(path: Path, max_side: int = 256) -> str | None:
    """A base64 PNG thumbnail of image ``path`` (upscaled by the browser when tiny)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return None
    return base64.b64encode(buf.getvalue()).decode()


def _media_html(directory: Path, rel: str, embed_limit: int = 1 << 20) -> str:
    path = directory / rel
    name = html.escape(rel)
    if not path.is_file():
        return f'<span class="missing">missing: {name}</span>'
    if path.suffix == ".png":
        data = _thumbnail(path)
        src = f"data:image/png;base64,{data}" if data else name
        return f'<img class="thumb" src="{src}" alt="{name}" title="{name}">'
    if path.suffix in (".gif",):
        src = name
        if path.stat().st_size <= embed_limit:
            src = "data:image/gif;base64," + base64.b64encode(path.read_bytes()).decode()
        return f'<img class="thumb" src="{src}" alt="{name}" title="{name}">'
    if path.suffix in (".mp4", ".webm"):
        src = name
        if path.stat().st_size <= embed_limit:
            src = f"data:video/{path.suffix[1:]};base64," + base64.b64encode(path.read_bytes()).decode()
        return f'<video class="thumb" src="{src}" title="{name}" controls loop muted autoplay playsinline></video>'
    return f'<a href="{name}">{name}</a>'


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.thumb{width:128px;image-rendering:pixelated;display:block}.missing{color:#b00}figure{display:inline-block;margin:4px}
figcaption{font-size:12px;color:#555}code{background:#f6f6f6;padding:1px 3px}"""


def render_html(report: dict, directory: Path) -> str:
    """The report as one self-contained HTML page: summary and per-record tables, scatter plots (base64 PNG),
    media side by side with the dense reference, environment."""
    directory = Path(directory)
    records = report["records"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>attnplug report</title><style>{_CSS}"
             "</style></head><body>", "<h1>attnplug report</h1>",
             f"<p>{report['items']} item(s), {report['num_records']} record(s) from process(es) "
             f"{', '.join(map(str, report['ranks']))}; created {html.escape(report['created'])}.</p>"]
    if report["duplicate_records"]:
        parts.append(f"<p class='missing'>Duplicate records: {html.escape(', '.join(report['duplicate_records']))}"
                     "</p>")
    parts.append("<h2>Summary by method</h2>")
    parts.append(_table(report["summary"], ["method", "items", "speedup_median", "seconds_mean", "psnr_mean",
                                             "ssim_mean", "duplication_rate", "coverage_mean", "density_mean",
                                             "attention_share_mean", "peak_mib_max"], "summary"))
    plots = scatter_plots(records)
    if plots:
        parts.append("<h2>Speed vs quality</h2>")
        for title, data in plots:
            parts.append(f"<figure><img class='plot' src='data:image/png;base64,{data}' alt='{html.escape(title)}'>"
                         f"<figcaption>{html.escape(title)} (one point per prompt x seed)</figcaption></figure>")
    rows = []
    for r in records:
        fid, st, det = r.get("fidelity") or {}, r.get("stats") or {}, r.get("detector") or {}
        rows.append({"id": r.get("id"), "method": r.get("method_label") or r.get("method"),
                     "prompt": r.get("prompt"), "seed": r.get("seed"), "seconds": _num(r.get("seconds")),
                     "speedup": _num(r.get("speedup")), "psnr": _num(fid.get("psnr")), "ssim": _num(fid.get("ssim")),
                     "lpips": fid.get("lpips") if isinstance(fid.get("lpips"), float) else
                     ("n/a" if fid else None),
                     "method calls": f"{st.get('method', 0)}/{st.get('self_calls', 0)}" if st else None,
                     "objects": det.get("count", det.get("counts")), "rank": r.get("rank")})
    parts.append("<h2>Records</h2>")
    parts.append(_table(rows, ["id", "method", "prompt", "seed", "seconds", "speedup", "psnr", "ssim", "lpips",
                               "method calls", "objects", "rank"], "records"))
    parts.append("<p>LPIPS, CLIP score and FID need network weights; without local weights they are marked "
                 "n/a.</p>")
    # media side by side: one row per item, the reference first
    by_id: dict[str, list[dict]] = {}
    for r in records:
        by_id.setdefault(str(r.get("id")), []).append(r)
    if by_id:
        parts.append("<h2>Outputs</h2><table class='media'>")
        for item_id, rs in by_id.items():
            rs = sorted(rs, key=lambda r: (not r.get("reference", False), str(r.get("method_label"))))
            cells = []
            for r in rs:
                media = "".join(_media_html(directory, rel) for rel in r.get("outputs", []))
                label = html.escape(str(r.get("method_label") or r.get("method")))
                cells.append(f"<td><b>{label}</b>{media}</td>")
            parts.append(f"<tr><th>{html.escape(item_id)}<br>{html.escape(str(rs[0].get('prompt')))}</th>"
                         f"{''.join(cells)}</tr>")
        parts.append("</table>")
    env = report["environment"]
    env_rows = [{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v} for k, v in env.items()]
    parts.append("<h2>Environment</h2>" + _table(env_rows, ["key", "value"], "environment"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: Path) -> tuple[Path, Path]:
    """Merge every record under ``directory`` into ``directory/report.json`` and ``directory/report.html``."""
    directory = Path(directory)
    report = build_report(directory)
    json_path, html_path = directory / REPORT_JSON, directory / REPORT_HTML
    write_json(json_path, report)
    atomic_write_bytes(html_path, render_html(report, directory).encode())
    return json_path, html_path


@contextlib.contextmanager
def measure(pipe, device="cpu"):
    """``with measure(pipe, device) as m: pipe(...)``: wall time (synchronised), denoiser/attention time and peak
    memory; afterwards ``m["seconds"]``, ``m["timing"]``, ``m["memory"]``."""
    from .loading import denoiser_of

    m: dict[str, Any] = {}
    with PeakMemory(device) as mem, BreakdownTimer(denoiser_of(pipe), device) as br, Stopwatch(device) as sw:
        yield m
    m["seconds"] = sw.seconds
    m["timing"] = br.as_dict()
    m["memory"] = mem.as_dict()
