"""One generation as the page shows it: the method run (and the stock run to compare with), the files, and a
plain-language summary that names what actually ran (the hi-res / long-video plan, the schedule in words)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..report import jsonable, psnr, run_label, save_media, schedule_words, ssim
from .models import ModelCache
from .requests import Request
from .running import StepProgress, run_once

NOISE_CAVEAT = ("Timings are single runs on a possibly shared machine: they vary from run to run. For speed-ups you "
                "can trust, use `attnplug bench --repeats 5`.")


@dataclass
class Result:
    """What the page shows: the output files, the summary (Markdown), the stats and the notes."""

    method_file: str
    dense_file: str | None
    summary: str
    stats: dict
    notes: list[str]


def save_output(media, directory: Path, name: str) -> str:
    """An image ``(H, W, 3)`` as a PNG at the generated size (the page enlarges it without smoothing), or a video
    ``(F, H, W, 3)`` as an H.264 / yuv420p MP4 enlarged (nearest neighbour) to at least 256 pixels."""
    return str(save_media(media, directory / name, min_side=256 if media.ndim == 4 else 0))


def describe_objects(frames, task: str) -> str:
    """What the embedded models' detector sees, in words."""
    from ..models import detect, summarize_video

    if task == "image":
        d = detect(frames[0])
        found = ", ".join(f"{o.color} {o.shape}" for o in d.objects) or "nothing"
        return f"{len(d.objects)} object(s): {found}"
    s = summarize_video(frames)
    one = sum(1 for c in s.counts if c == 1)
    kept = f"kept in every frame ({s.color})" if s.persistent else "lost in some frames"
    return f"one object in {one} of {len(s.counts)} frames, {kept}; moving {s.direction or 'nowhere clear'}"


def stats_lines(stats: dict) -> list[str]:
    """``attnplug.stats(pipe)`` in sentences."""
    lines = []
    for part in ("self", "cross"):
        s = stats.get(part)
        if isinstance(s, dict) and s.get("calls"):
            reasons = ", ".join(f"{n} because {k.replace('-', ' ')}" for k, n in (s.get("reasons") or {}).items())
            lines.append(f"{part}-attention: the method ran on {s.get('method', 0)} of {s.get('calls', 0)} calls"
                         + (f"; stock attention ran on {s.get('stock', 0)} ({reasons})" if s.get("stock") else ""))
    report = stats.get("method_report") or {}
    simple = {k: v for k, v in report.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if simple:
        lines.append("the method reports " + ", ".join(
            f"{k.replace('_', ' ')} {v:.3g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
            for k, v in simple.items()))
    return lines


def _what_ran(req: Request, run) -> str:
    """The schedule or plan that actually ran, in words."""
    if run.plan is not None:
        return "what ran: " + run_label(req.method, run.plan, run.pipeline_config, run.pipeline_config)
    if req.schedule is not None:
        return f"where the method ran: {schedule_words(req.schedule)} (your schedule)"
    return f"where the method ran: {schedule_words(req.config.default_schedule())} (the method's default schedule)"


def _fmt_db(value: float) -> str:
    return "identical (∞)" if math.isinf(value) else f"{value:.2f} dB"


def generate(req: Request, cache: ModelCache, report: Callable[[int, int], None] = lambda done, total: None,
             out_dir: Path | None = None) -> Result:
    """Run ``req`` (and the stock pipeline when ``req.compare``) on the cached model, one at a time per model."""
    import attnplug

    entry = cache.get(req.model)
    pipe = entry.pipe
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="attnplug-ui-"))
    total = req.steps * (2 if req.compare else 1)
    notes: list[str] = list(req.notes)
    with entry.lock:
        dense = None
        try:
            if not entry.warm:  # the first call on a model pays one-off costs; keep them out of the timings
                attnplug.remove(pipe)
                warm = dataclasses.replace(req, pipeline="standard", steps=1)
                run_once(pipe, warm, "standard", StepProgress(pipe, 1, lambda d, t: None))
                entry.warm = True
                notes.append("first generation on this model: one untimed warm-up step ran first")
            if req.compare:
                attnplug.remove(pipe)
                dense = run_once(pipe, dataclasses.replace(req, pipeline="standard"), "standard",
                                 StepProgress(pipe, total, report))
            if req.pipeline == "standard":
                attnplug.apply(pipe, req.config, schedule=req.schedule)
                attnplug.reset_stats(pipe)
            else:
                notes.append(f"dense = the stock pipeline at the same size, without the {req.pipeline} technique")
                if req.schedule is not None:
                    notes.append(f"the schedule form applies to the standard pipeline; {req.pipeline} schedules "
                                 "its own attention")
            run = run_once(pipe, req, req.pipeline, StepProgress(pipe, total, report, req.steps if req.compare else 0))
            stats = attnplug.stats(pipe)
        finally:
            attnplug.remove(pipe)
    notes += run.notes
    return Result(*_files_and_summary(req, cache, entry, run, dense, stats, notes, out_dir), jsonable(stats), notes)


def _files_and_summary(req, cache, entry, run, dense, stats, notes, out_dir) -> tuple[str, str | None, str]:
    video = req.task == "video"
    method_file = save_output(run.frames if video else run.frames[0], out_dir, req.method)
    dense_file = None
    rows = [("time (method)", f"{run.seconds:.2f} s")]
    if dense is not None:
        dense_file = save_output(dense.frames if video else dense.frames[0], out_dir, "dense")
        rows += [("time (dense)", f"{dense.seconds:.2f} s"),
                 ("speed-up vs dense", f"{dense.seconds / run.seconds:.2f}x (one run each: see the note)")]
        if dense.frames.shape == run.frames.shape:
            rows += [("PSNR vs dense", _fmt_db(psnr(run.frames, dense.frames))),
                     ("SSIM vs dense", f"{ssim(run.frames, dense.frames):.4f}")]
    if entry.embedded:
        rows.append(("detector", describe_objects(run.frames, req.task)))
        if dense is not None:
            rows.append(("detector (dense)", describe_objects(dense.frames, req.task)))
    name = run_label(req.method, run.plan, run.pipeline_config, run.pipeline_config)
    dtype = str(cache.dtype).removeprefix("torch.")
    size = f"{req.width}x{req.height}" + (f"x{req.num_frames} frames" if video else "")
    lines = [f"**{name}** on `{req.model}` ({cache.device}, {dtype}), {req.task} {size}, {req.steps} steps, "
             f"seed {req.seed}", "", _what_ran(req, run), "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    did = stats_lines(stats) or (["the pipeline applied and removed its own attention; its counters are not kept"]
                                 if run.plan else ["no attnplug counters were left on the pipeline after this run"])
    lines += ["", "**What the method did**", ""] + [f"- {line}" for line in did]
    lines += ["", "**Notes**", ""] + [f"- {n}" for n in [*notes, NOISE_CAVEAT]]
    return method_file, dense_file, "\n".join(lines)
