"""One generation request: the page's values checked by the app itself, each error naming its field (Gradio's own
range checks are kept out of the way so they never answer first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Schedule, config_from_options
from .forms import (
    AUTO,
    PIPELINE_TASK,
    PIPELINES,
    TASK_METHODS,
    TASKS,
    method_forms,
    pipeline_forms,
    schedule_form,
)

LIMITS = {"size": (4, 1024), "frames": (1, 256), "steps": (1, 200), "guidance": (0.0, 30.0)}
MAX_PIXELS = 1024 * 1024 * 16  # height x width x frames of one request
#: (task, method) pairs known to break the task, with what happens and what to pick instead
KNOWN_BAD = {("video", "agent"): "agent attention merges tokens across frames: on shapes-video it wipes the object "
                                 "after the first frame; sparse_video or dense keep it"}


@dataclass
class Request:
    """One generation request, already parsed and checked."""

    model: str
    task: str
    prompt: str
    negative_prompt: str
    height: int
    width: int
    num_frames: int
    steps: int
    guidance: float
    seed: int
    method: str
    config: Any  # attnplug MethodConfig
    schedule: Schedule | None  # None: the method's default schedule
    pipeline: str
    pipeline_options: dict = field(default_factory=dict)
    compare: bool = True
    notes: list[str] = field(default_factory=list)


def _int_in(name: str, value, lo: int, hi: int) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ValueError(f"{name}={value!r} must be an integer in [{lo}, {hi}].")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name}={int(value)} is out of range: accepted {lo}..{hi}.")
    return int(value)


def resolve_method(method, task: str) -> str:
    """The method a request runs: ``auto`` -> the task's default (:data:`TASK_METHODS`)."""
    return TASK_METHODS[task] if method in (AUTO, None, "") else method


def parse_request(values: dict) -> Request:
    """UI values (keys of :func:`attnplug.ui.forms.input_keys`) -> :class:`Request`; ``ValueError`` naming the input
    otherwise."""
    model = (values.get("model_path") or "").strip() or (values.get("model") or "").strip()
    if not model:
        raise ValueError("model is empty: choose an embedded model or type a local folder / hub id.")
    task = values["task"]
    if task not in TASKS:
        raise ValueError(f"task={task!r} must be one of {TASKS}.")
    prompt = values["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty: type what to generate (e.g. 'red circle').")
    lo, hi = LIMITS["size"]
    height, width = _int_in("height", values["height"], lo, hi), _int_in("width", values["width"], lo, hi)
    frames = _int_in("num_frames", values["num_frames"], *LIMITS["frames"]) if task == "video" else 1
    if height * width * frames > MAX_PIXELS:
        raise ValueError(f"height x width x frames = {height * width * frames} exceeds this server's {MAX_PIXELS}.")
    steps = _int_in("steps", values["steps"], *LIMITS["steps"])
    guidance = values["guidance"]
    glo, ghi = LIMITS["guidance"]
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not glo <= guidance <= ghi:
        raise ValueError(f"guidance={guidance!r} must be a number in [{glo}, {ghi}].")
    seed = _int_in("seed", values["seed"], 0, 2**63 - 1)
    method = resolve_method(values.get("method"), task)
    forms = method_forms()
    if method not in forms:
        raise ValueError(f"method={method!r} is not one of {[AUTO, *forms]}.")
    options = {ff.spec.name: ff.parse(values[ff.key]) for ff in forms[method]}
    config = config_from_options(method, options)
    schedule = Schedule(**{ff.spec.name: ff.parse(values[ff.key]) for ff in schedule_form()})
    if values.get("default_schedule", True):
        schedule = None
    pipeline = values["pipeline"]
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline={pipeline!r} must be one of {list(PIPELINES)}.")
    if pipeline != "standard" and PIPELINE_TASK[pipeline] != task:
        raise ValueError(f"pipeline={pipeline!r} makes {PIPELINE_TASK[pipeline]}s; the task is {task}.")
    pipe_opts = {ff.spec.name: ff.parse(values[ff.key]) for ff in pipeline_forms().get(pipeline, [])}
    notes = [f"{method} on a {task}: {KNOWN_BAD[(task, method)]}."] if (task, method) in KNOWN_BAD else []
    return Request(model, task, prompt.strip(), (values.get("negative_prompt") or "").strip(), height, width, frames,
                   steps, float(guidance), seed, method, config, schedule, pipeline, pipe_opts,
                   bool(values.get("compare")), notes)
