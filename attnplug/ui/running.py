"""One pipeline run for a request: the standard pipeline with the applied method, or the hi-res / long-video
pipeline with its config; progress fed from the pipeline's step callback or the denoiser's calls."""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .forms import PIPELINES, pipeline_config
from .requests import Request


def _call_params(fn) -> set[str] | None:
    """Names ``fn`` accepts, or None when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes keyword ``name``."""
    params = _call_params(fn)
    return params is None or name in params


class StepProgress:
    """Feeds ``report(done, total)`` from the pipeline's ``callback_on_step_end`` when it has one, else from a forward
    pre-hook on the denoiser (one call per step for batched classifier-free guidance)."""

    def __init__(self, pipe, total: int, report: Callable[[int, int], None], done: int = 0):
        self.pipe, self.total, self.report, self.done = pipe, total, report, done
        self._handles = []

    def _tick(self):
        self.done += 1
        self.report(min(self.done, self.total), self.total)

    def kwargs(self, fn) -> dict:
        if accepts(fn, "callback_on_step_end") and _call_params(fn) is not None:
            def on_step_end(pipe, step, timestep, callback_kwargs):
                self._tick()
                return callback_kwargs

            return {"callback_on_step_end": on_step_end}
        from ..loading import denoisers_of

        # every expert of a two-expert pipeline ticks (each denoising step calls one of them)
        self._handles = [d.register_forward_pre_hook(lambda *_: self._tick()) for d in denoisers_of(self.pipe)]
        return {}

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass
class Run:
    """One pipeline run: ``frames`` ``(F, H, W, 3)`` floats in [0, 1] (``F = 1`` for an image), wall seconds, and the
    hi-res / long-video plan it followed (a dict, or None)."""

    frames: Any
    seconds: float
    notes: list[str] = field(default_factory=list)
    plan: dict | None = None
    pipeline_config: dict | None = None


def _frames(output, task: str):
    from ..report import as_float_array

    arr = as_float_array(output)[0]
    return arr[None] if task == "image" else arr


def _technique(pipe, req: Request, technique: str, kwargs: dict):
    """The call, config and plan of a hi-res / long-video run."""
    import attnplug.pipelines as pipelines

    fn = getattr(pipelines, PIPELINES[technique])
    if req.task == "video":
        kwargs["num_frames"] = req.num_frames
        kwargs.pop("height"), kwargs.pop("width")
        if accepts(fn, "height"):
            kwargs.update(height=req.height, width=req.width)
    options = dict(req.pipeline_options, progress=False) if technique == "hi-res" else dict(req.pipeline_options)
    if technique == "hi-res" and req.method != "dense":
        options["attention"] = req.config  # the technique applies the method in its hi-res stage
    if technique == "long video" and req.method != "dense":  # its own attention; the pattern is its `sparse`
        if req.method != "sparse_video":
            raise ValueError(f"the {technique} pipeline runs its own attention (the long sparse pattern or temporal "
                             f"windows); method {req.method!r} cannot run with it: choose dense or sparse_video.")
        options["sparse"] = req.config
    config = pipeline_config(technique)(**options)
    if technique == "hi-res":
        plan = pipelines.hires_plan(pipe, req.height, req.width, config)
    else:
        plan = pipelines.long_video_plan(pipe, req.num_frames, config)
    kwargs["config"] = config
    return fn, dataclasses.asdict(plan), config


def run_once(pipe, req: Request, technique: str, progress: StepProgress) -> Run:
    """Generate once with whatever attention ``pipe`` has now; ``technique`` = ``standard`` or a pipeline label."""
    import torch

    notes, plan, config = [], None, None
    kwargs: dict[str, Any] = {"num_inference_steps": req.steps, "guidance_scale": req.guidance,
                              "generator": torch.Generator("cpu").manual_seed(req.seed), "height": req.height,
                              "width": req.width}
    if technique == "standard":
        fn = pipe.__call__
        if req.task == "video":
            if not accepts(fn, "num_frames"):
                raise ValueError(f"model {req.model!r} makes images ({type(pipe).__name__}); choose task 'image'.")
            kwargs["num_frames"] = req.num_frames
        elif _call_params(fn) is not None and "num_frames" in _call_params(fn):
            raise ValueError(f"model {req.model!r} makes videos ({type(pipe).__name__}); choose task 'video'.")
        call = lambda **kw: pipe(req.prompt, **kw)  # noqa: E731
    else:
        fn, plan, config = _technique(pipe, req, technique, kwargs)
        call = lambda **kw: fn(pipe, req.prompt, **kw)  # noqa: E731
    if accepts(pipe.__call__, "output_type"):
        kwargs["output_type"] = "np"
    if req.negative_prompt:
        if accepts(pipe.__call__, "negative_prompt"):
            kwargs["negative_prompt"] = req.negative_prompt
        else:
            notes.append(f"{type(pipe).__name__} takes no negative prompt: it was not used.")
    kwargs.update(progress.kwargs(fn))
    start = time.perf_counter()
    try:
        output = call(**kwargs)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    described = None if config is None else {
        k: v for k, v in dataclasses.asdict(config).items() if k not in ("attention", "sparse")}
    for key in ("attention", "sparse"):  # the method inside the technique, by name ("auto": the plan says)
        value = getattr(config, key, None)
        if described is not None and value is not None:
            described[key] = value if isinstance(value, str) else {"name": req.method}
    return Run(_frames(output, req.task), seconds, notes, plan, described)
