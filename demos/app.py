"""attnplug web UI: pick a model and an attention method, generate an image or a video, compare with dense.

Start it with ``python demos/app.py [--host 127.0.0.1] [--port 7860] [--share]`` (or ``attnplug ui``). The method
forms are generated from the config dataclasses' field metadata (``attnplug.config.field_specs``), so every method
and option the library has appears here without UI code per method. ``build_app()`` returns the ``gr.Blocks``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import logging
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (also: the test machines are offline)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import attnplug  # noqa: E402
import attnplug.models  # noqa: E402
from attnplug.config import field_specs, method_configs  # noqa: E402

logger = logging.getLogger("attnplug.demos.app")

DEFAULT_MODEL = "shapes-unet"
TASKS = ("image", "video")
PIPELINES = {"standard": None, "hi-res": "hires", "long video": "long_video"}
PIPELINE_TASK = {"hi-res": "image", "long video": "video"}
LIMITS = {"size": (4, 1024), "frames": (1, 256), "steps": (1, 200), "guidance": (0.0, 30.0)}
MAX_PIXELS = 1024 * 1024 * 16  # height x width x frames of one request
QUEUE_SIZE = 16
CONCURRENCY = 2  # events at once; generations on one model are serialised by that model's lock
CSS = """
#out-image img, #dense-image img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}
#out-video video, #dense-video video {image-rendering: pixelated;}
"""  # tiny generated images are shown enlarged without smoothing; the files keep the generated size


# ---------------------------------------------------------------------------------------------------------------------
# What the library offers (optional parts are looked up once, at import)


def _optional(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


LOAD = _optional("attnplug.loading", "load")
PIPELINE_FNS = {label: _optional("attnplug.pipelines", fn) for label, fn in PIPELINES.items() if fn}
PIPELINE_CONFIGS = {
    "hi-res": _optional("attnplug.pipelines", "HiResConfig"),
    "long video": _optional("attnplug.pipelines", "LongVideoConfig"),
}
REPORT = importlib.util.find_spec("attnplug.report") is not None


def embedded_models() -> list[str]:
    """Names of the models shipped inside attnplug (offline)."""
    return attnplug.models.available_models()


def available_pipelines(task: str | None = None) -> list[str]:
    """Pipeline labels usable now (``standard`` plus the multi-pass techniques whose module is importable)."""
    names = ["standard"] + [k for k, fn in PIPELINE_FNS.items() if fn is not None]
    return [n for n in names if task is None or PIPELINE_TASK.get(n, task) == task]


# ---------------------------------------------------------------------------------------------------------------------
# Forms generated from config field metadata


@dataclass(frozen=True)
class FormField:
    """One generated form input: ``key`` in the request, the config field it fills and how it is shown."""

    key: str
    spec: Any  # attnplug.config.FieldSpec
    kind: str  # dropdown | checkbox | slider | number | text | literal
    choices: tuple[tuple[str, Any], ...] = ()

    @property
    def default_ui(self):
        d = self.spec.default
        if self.kind == "dropdown":
            return next((label for label, value in self.choices if value == d), self.choices[0][0])
        if self.kind == "literal":
            return repr(d)
        if self.kind == "text":
            return "" if d is None else str(d)
        return d

    def parse(self, raw):
        """The UI value -> the config value; ``ValueError`` naming the field when it is not accepted."""
        name, spec = self.key, self.spec
        if self.kind == "dropdown":
            for label, value in self.choices:
                if raw == label or raw == value:
                    return value
            raise ValueError(f"{name}={raw!r} is not one of {[label for label, _ in self.choices]}.")
        if self.kind == "checkbox":
            if not isinstance(raw, bool):
                raise ValueError(f"{name}={raw!r} must be true or false.")
            return raw
        if self.kind in ("slider", "number"):
            if raw is None or isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError(f"{name}={raw!r} must be a number.")
            if spec.type == "int":
                if float(raw) != int(raw):
                    raise ValueError(f"{name}={raw!r} must be an integer.")
                return int(raw)
            return float(raw)
        if self.kind == "text":
            return raw if raw != "" or spec.default is not None else None
        text = str(raw).strip()
        if text == "":
            return spec.default
        lowered = text.lower()
        if lowered in ("none", "true", "false"):
            return {"none": None, "true": True, "false": False}[lowered]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if "str" in spec.type:
                return text
            raise ValueError(
                f"{name}={text!r} is not a Python literal of type {spec.type} (e.g. {spec.default!r})."
            ) from None
        return tuple(value) if isinstance(value, list) else value


def _form_field(prefix: str, spec) -> FormField:
    key = f"{prefix}.{spec.name}"
    if spec.choices:
        return FormField(key, spec, "dropdown", tuple((c if isinstance(c, str) else repr(c), c) for c in spec.choices))
    if spec.type == "bool":
        return FormField(key, spec, "checkbox")
    if spec.type in ("int", "float"):
        bounded = spec.min is not None and spec.max is not None and math.isfinite(spec.min) and math.isfinite(spec.max)
        return FormField(key, spec, "slider" if bounded else "number")
    if spec.type == "str":
        return FormField(key, spec, "text")
    return FormField(key, spec, "literal")


def method_forms() -> dict[str, list[FormField]]:
    """Form fields of every registered method, by method name (keys ``method.<name>.<field>``)."""
    return {name: [_form_field(f"method.{name}", s) for s in field_specs(cls)]
            for name, cls in method_configs().items()}


def schedule_form() -> list[FormField]:
    """Form fields of :class:`attnplug.Schedule` (keys ``schedule.<field>``)."""
    return [_form_field("schedule", s) for s in field_specs(attnplug.Schedule)]


def pipeline_forms() -> dict[str, list[FormField]]:
    """Form fields of the multi-pass pipelines' configs, when those pipelines are installed."""
    out = {}
    for label, cls in PIPELINE_CONFIGS.items():
        if cls is not None and PIPELINE_FNS.get(label) is not None and dataclasses.is_dataclass(cls):
            out[label] = [_form_field(f"pipeline.{PIPELINES[label]}", s) for s in field_specs(cls)
                          if s.name not in PIPELINE_SET_BY_APP and s.type not in ("Any", "object")]
    return out


# Pipeline config fields the app fills itself: the method chosen above (``attention``) and no console progress bar.
PIPELINE_SET_BY_APP = ("attention", "progress")


def _component(ff: FormField) -> gr.components.Component:
    spec, info = ff.spec, (ff.spec.help or None)
    label = spec.name
    if ff.kind == "dropdown":
        return gr.Dropdown([c for c, _ in ff.choices], value=ff.default_ui, label=label, info=info)
    if ff.kind == "checkbox":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info)
    if ff.kind == "slider":
        step = 1 if spec.type == "int" else (spec.max - spec.min) / 100
        return gr.Slider(spec.min, spec.max, value=spec.default, step=step, label=label, info=info)
    if ff.kind == "number":
        return gr.Number(value=spec.default, label=label, info=info, minimum=spec.min, maximum=spec.max,
                         precision=0 if spec.type == "int" else None)
    placeholder = f"{spec.type}; default {spec.default!r}"
    return gr.Textbox(value=ff.default_ui, label=f"{label} ({spec.type})", info=info, placeholder=placeholder)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs: fixed fields, then the generated ones; the API endpoint takes them in this order


BASE_INPUTS: list[tuple[str, Any]] = [
    ("model", DEFAULT_MODEL),
    ("model_path", ""),
    ("task", "image"),
    ("prompt", "red circle"),
    ("negative_prompt", ""),
    ("height", 16),
    ("width", 16),
    ("num_frames", 8),
    ("steps", 20),
    ("guidance", 3.0),
    ("seed", 0),
    ("method", "agent"),
    ("default_schedule", True),
    ("pipeline", "standard"),
    ("compare", True),
]


def form_fields() -> list[FormField]:
    """Every generated field, in API order: method options, schedule, pipeline options."""
    fields = [ff for forms in method_forms().values() for ff in forms]
    fields += schedule_form()
    fields += [ff for forms in pipeline_forms().values() for ff in forms]
    return fields


def input_keys() -> list[str]:
    """Names of the ``/generate`` endpoint's inputs, in order."""
    return [k for k, _ in BASE_INPUTS] + [ff.key for ff in form_fields()]


def default_inputs() -> OrderedDict:
    """Every input with its default UI value (what the page shows first)."""
    values = OrderedDict(BASE_INPUTS)
    for ff in form_fields():
        values[ff.key] = ff.default_ui
    return values


def api_args(**overrides) -> list:
    """Positional arguments for ``Client.predict(..., api_name="/generate")``: defaults with ``overrides`` (keys as
    in :func:`input_keys`; dots may be written as ``__``, e.g. ``method__agent__agents="(4, 4)"``)."""
    values = default_inputs()
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if key not in values:
            raise KeyError(f"unknown input {key!r}; inputs: {list(values)}")
        values[key] = value
    return list(values.values())


# ---------------------------------------------------------------------------------------------------------------------
# Request -> what to run


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
    schedule: attnplug.Schedule | None  # None: the method's default schedule
    pipeline: str
    pipeline_options: dict = field(default_factory=dict)
    compare: bool = True


def _int_in(name: str, value, lo: int, hi: int) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ValueError(f"{name}={value!r} must be an integer in [{lo}, {hi}].")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name}={int(value)} is out of range: accepted {lo}..{hi}.")
    return int(value)


def parse_request(values: dict) -> Request:
    """UI values (keys of :func:`input_keys`) -> :class:`Request`; ``ValueError`` naming the input otherwise."""
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
    method = values["method"]
    forms = method_forms()
    if method not in forms:
        raise ValueError(f"method={method!r} is not one of {list(forms)}.")
    options = {ff.spec.name: ff.parse(values[ff.key]) for ff in forms[method]}
    config = attnplug.config.config_from_options(method, options)
    schedule = attnplug.Schedule(**{ff.spec.name: ff.parse(values[ff.key]) for ff in schedule_form()})
    if values.get("default_schedule", True):
        schedule = None
    pipeline = values["pipeline"]
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline={pipeline!r} must be one of {list(PIPELINES)}.")
    if pipeline != "standard":
        if PIPELINE_FNS.get(pipeline) is None:
            raise ValueError(f"pipeline={pipeline!r} is not installed here "
                             f"(attnplug.pipelines.{PIPELINES[pipeline]}).")
        if PIPELINE_TASK[pipeline] != task:
            raise ValueError(f"pipeline={pipeline!r} makes {PIPELINE_TASK[pipeline]}s; the task is {task}.")
    pipe_opts = {ff.spec.name: ff.parse(values[ff.key]) for ff in pipeline_forms().get(pipeline, [])}
    return Request(model, task, prompt.strip(), (values.get("negative_prompt") or "").strip(), height, width, frames,
                   steps, float(guidance), seed, method, config, schedule, pipeline, pipe_opts,
                   bool(values.get("compare")))


# ---------------------------------------------------------------------------------------------------------------------
# Models: a cache with one lock per loaded model


@dataclass
class LoadedModel:
    name: str
    pipe: Any
    lock: threading.Lock
    embedded: bool
    loader: str
    warm: bool = False


class ModelCache:
    """Loaded pipelines by (name, device, dtype), at most ``capacity``; switching methods reuses the weights."""

    def __init__(self, device: str | None = None, dtype: torch.dtype | None = None, capacity: int = 2):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or torch.float32
        self.capacity = capacity
        self._entries: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read (the cache's hit rate is visible in tests)

    def get(self, name: str) -> LoadedModel:
        key = (name, self.device, str(self.dtype))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            pipe, loader = _load_pipeline(name, self.device, self.dtype)
            self.loads += 1
            entry = LoadedModel(name, pipe, threading.Lock(), name in embedded_models(), loader)
            self._entries[key] = entry
            for old in list(self._entries)[:-1]:
                if len(self._entries) <= self.capacity:
                    break
                if self._entries[old].lock.acquire(blocking=False):  # never evict a model that is generating
                    self._entries.pop(old).lock.release()
            return entry


def _load_pipeline(name: str, device: str, dtype: torch.dtype):
    """Load ``name`` with ``attnplug.loading.load`` when installed, else the embedded-model loader (embedded names and
    folders in their format only). Weights are read from safetensors only, never pickle: diffusers folders and Hub
    ids are loaded with ``use_safetensors=True`` (a model without safetensors weights is refused)."""
    if LOAD is not None:
        if "use_safetensors" in inspect.signature(LOAD).parameters:
            return LOAD(name, device=device, dtype=dtype, use_safetensors=True), "attnplug.loading.load"
        source = attnplug.loading.resolve(name)
        if source.kind in ("embedded", "tiny"):
            return LOAD(name, device=device, dtype=dtype), "attnplug.loading.load"
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(source.path or source.name, torch_dtype=dtype,
                                                     use_safetensors=True)
        except OSError as exc:
            raise ValueError(f"model={name!r} could not be loaded with safetensors weights: {exc}") from None
        return pipe.to(device), "diffusers (safetensors only), resolved by attnplug.loading"
    if name in embedded_models() or (Path(name).is_dir() and (Path(name) / "config.json").is_file()):
        return attnplug.models.load_pipeline(name, device=device, dtype=dtype), "attnplug.models.load_pipeline"
    raise ValueError(
        f"model={name!r} cannot be loaded here: this install has no attnplug.loading, so only the embedded models "
        f"({', '.join(embedded_models())}) and folders in their format load."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Running a pipeline


def _call_params(fn) -> set[str] | None:
    """Names ``fn`` accepts, or None when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _accepts(fn, name: str) -> bool:
    params = _call_params(fn)
    return params is None or name in params


class _StepProgress:
    """Feeds ``report(done, total)`` from the pipeline's ``callback_on_step_end`` when it has one, else from a forward
    pre-hook on the denoiser (one call per step for batched classifier-free guidance)."""

    def __init__(self, pipe, total: int, report: Callable[[int, int], None]):
        self.pipe, self.total, self.report, self.done = pipe, total, report, 0
        self._handle = None

    def _tick(self):
        self.done += 1
        self.report(min(self.done, self.total), self.total)

    def kwargs(self, fn) -> dict:
        if _accepts(fn, "callback_on_step_end") and _call_params(fn) is not None:
            def on_step_end(pipe, step, timestep, callback_kwargs):
                self._tick()
                return callback_kwargs

            return {"callback_on_step_end": on_step_end}
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        if denoiser is not None:
            self._handle = denoiser.register_forward_pre_hook(lambda *_: self._tick())
        return {}

    def close(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@dataclass
class Run:
    """One pipeline run: ``frames`` ``(F, H, W, 3)`` floats in [0, 1] (``F = 1`` for an image), wall seconds."""

    frames: np.ndarray
    seconds: float
    notes: list[str] = field(default_factory=list)


def _as_frames(output, task: str) -> np.ndarray:
    """A pipeline output (images / frames as np, pt or PIL) -> ``(F, H, W, 3)`` float32 in [0, 1] of sample 0."""
    for attr in ("frames", "images"):
        if hasattr(output, attr):
            output = getattr(output, attr)
            break
    if isinstance(output, tuple):
        output = output[0]
    if isinstance(output, list):
        output = output[0]
    if isinstance(output, list):  # a list of PIL frames
        output = np.stack([np.asarray(f) for f in output])
    if isinstance(output, torch.Tensor):
        output = output.detach().float().cpu().numpy()
        if output.ndim >= 3 and output.shape[-3] == 3 and output.shape[-1] != 3:  # channels first
            output = np.moveaxis(output, -3, -1)
    arr = np.asarray(output)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    if task == "image":
        arr = arr[0] if arr.ndim == 4 else arr
        arr = arr[None]
    elif arr.ndim == 5:
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"the pipeline returned an array of shape {arr.shape}; expected RGB images or frames.")
    return np.clip(arr.astype(np.float32), 0, 1)


def _run(pipe, req: Request, technique: str, report: Callable[[int, int], None], progress_total: int,
         progress_offset: int) -> Run:
    """Generate once with whatever attention ``pipe`` has now; ``technique`` = ``standard`` or a pipeline label."""
    notes = []
    kwargs: dict[str, Any] = {
        "num_inference_steps": req.steps,
        "guidance_scale": req.guidance,
        "generator": torch.Generator("cpu").manual_seed(req.seed),
        "height": req.height,
        "width": req.width,
    }
    if technique == "standard":
        fn = pipe.__call__
        if req.task == "video":
            if not _accepts(fn, "num_frames"):
                raise ValueError(f"model {req.model!r} makes images ({type(pipe).__name__}); choose task 'image'.")
            kwargs["num_frames"] = req.num_frames
        elif _call_params(fn) is not None and "num_frames" in _call_params(fn):
            raise ValueError(f"model {req.model!r} makes videos ({type(pipe).__name__}); choose task 'video'.")
        if _accepts(fn, "output_type"):
            kwargs["output_type"] = "np"
        call = lambda **kw: pipe(req.prompt, **kw)  # noqa: E731
    else:
        fn = PIPELINE_FNS[technique]
        if req.task == "video":
            kwargs["num_frames"] = req.num_frames
            kwargs.pop("height"), kwargs.pop("width")
            if _accepts(fn, "height"):
                kwargs.update(height=req.height, width=req.width)
        if _accepts(pipe.__call__, "output_type"):
            kwargs["output_type"] = "np"
        cfg_cls = PIPELINE_CONFIGS.get(technique)
        if cfg_cls is not None and _accepts(fn, "config"):
            options = dict(req.pipeline_options)
            names = {f.name for f in dataclasses.fields(cfg_cls)}
            if "progress" in names:
                options["progress"] = False
            if "attention" in names and req.method != "dense":
                options["attention"] = req.config  # the technique applies the method in its hi-res stage
            if "sparse" in names and req.method != "dense":  # long video: its own windows, a sparse pattern inside
                if req.method != "sparse_video":
                    raise ValueError(f"the {technique} pipeline runs its own temporal-window attention; method "
                                     f"{req.method!r} cannot run with it: choose dense or sparse_video.")
                options["sparse"] = req.config
            kwargs["config"] = cfg_cls(**options)
        else:
            kwargs.update(req.pipeline_options)
        call = lambda **kw: fn(pipe, req.prompt, **kw)  # noqa: E731
    if req.negative_prompt:
        if _accepts(fn if technique == "standard" else pipe.__call__, "negative_prompt"):
            kwargs["negative_prompt"] = req.negative_prompt
        else:
            notes.append(f"{type(pipe).__name__} has no negative prompt: it was not used.")
    progress = _StepProgress(pipe, progress_total, report)
    progress.done = progress_offset
    kwargs.update(progress.kwargs(fn))
    start = time.perf_counter()
    try:
        output = call(**kwargs)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    return Run(_as_frames(output, req.task), seconds, notes)


# ---------------------------------------------------------------------------------------------------------------------
# Judging the result


def quality(frames: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``frames`` against ``reference``, both ``(F, H, W, 3)`` in [0, 1]; frames as a batch.
    Uses ``attnplug.report.psnr`` / ``ssim`` when installed (torchmetrics either way)."""
    if REPORT:
        from attnplug.report import psnr, ssim

        return {"psnr": psnr(frames, reference), "ssim": ssim(frames, reference)}
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    b = torch.from_numpy(reference).permute(0, 3, 1, 2).double()
    psnr = math.inf if bool((a == b).all()) else float(peak_signal_noise_ratio(a, b, data_range=1.0))
    side = min(a.shape[-2:])
    kernel = max(3, min(11, side if side % 2 else side - 1))  # odd, at most the image side
    ssim = float(structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=kernel,
                                                     sigma=1.5 * kernel / 11))
    return {"psnr": psnr, "ssim": ssim}


def describe_objects(frames: np.ndarray, task: str) -> str:
    """What the embedded models' detector sees: object count (duplication) and colours."""
    if task == "image":
        d = attnplug.models.detect(frames[0])
        colours = ", ".join(f"{o.color} {o.shape}" for o in d.objects) or "nothing"
        return f"{len(d.objects)} object(s): {colours}"
    s = attnplug.models.summarize_video(frames)
    counts = "/".join(str(c) for c in s.counts)
    return (f"objects per frame {counts}; persistent: {'yes' if s.persistent else 'no'}"
            f"{f' ({s.color})' if s.color else ''}; direction: {s.direction or '-'}")


def _stats_lines(stats: dict) -> list[str]:
    """Readable lines of ``attnplug.stats(pipe)`` (the nested ``self``/``cross`` layout or flat counters)."""
    lines = []
    for part in ("self", "cross"):
        s = stats.get(part)
        if isinstance(s, dict):
            reasons = ", ".join(f"{k}: {v}" for k, v in (s.get("reasons") or {}).items())
            lines.append(f"{part}-attention: {s.get('calls', 0)} calls, {s.get('method', 0)} ran the method, "
                         f"{s.get('stock', 0)} stock{f' ({reasons})' if reasons else ''}")
    if not lines and stats:
        lines.append(", ".join(f"{k}: {v}" for k, v in stats.items() if not isinstance(v, dict)))
    report = stats.get("method_report")
    if report:
        lines.append("method: " + ", ".join(f"{k}: {_fmt(v)}" for k, v in report.items()))
    return lines


def jsonable(value, depth: int = 0):
    """``value`` as plain JSON data (str keys; tensors, arrays and tuples as lists; other objects as text)."""
    if depth > 8:
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return jsonable(value.tolist(), depth + 1) if value.size == 1 or np.ndim(value) < 2 else str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------------
# Output files


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def save_image(frame: np.ndarray, directory: Path, name: str) -> str:
    """``(H, W, 3)`` in [0, 1] -> a PNG at the generated size (the page scales it up, pixelated)."""
    from PIL import Image

    path = directory / f"{name}.png"
    Image.fromarray(_to_uint8(frame)).save(path)
    return str(path)


def save_video(frames: np.ndarray, directory: Path, name: str, fps: int = 8, min_side: int = 256) -> str:
    """``(F, H, W, 3)`` in [0, 1] -> an H.264 / yuv420p MP4 that browsers play. Tiny frames are enlarged by an
    integer factor (nearest neighbour) to at least ``min_side`` pixels so the encoder's 2 x 2 chroma subsampling does
    not smear them; the pixels are the generated ones."""
    import imageio_ffmpeg

    video = _to_uint8(frames)
    factor = max(1, math.ceil(min_side / min(video.shape[1:3])))
    if factor > 1:
        video = video.repeat(factor, axis=1).repeat(factor, axis=2)
    h, w = video.shape[1:3]
    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # H.264 needs even sides
    path = directory / f"{name}.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (video.shape[2], video.shape[1]), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=2, quality=8,
                                         output_params=["-movflags", "+faststart"])
    writer.send(None)
    for frame in video:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# One generation


@dataclass
class Result:
    method_file: str
    dense_file: str | None
    summary: str
    stats: dict
    notes: list[str]


def generate(req: Request, cache: ModelCache, report: Callable[[int, int], None] = lambda done, total: None,
             out_dir: Path | None = None) -> Result:
    """Run ``req`` (and the stock dense pipeline when ``req.compare``) on the cached model, one at a time per model."""
    entry = cache.get(req.model)
    pipe = entry.pipe
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="attnplug-ui-"))
    total = req.steps * (2 if req.compare else 1)
    notes: list[str] = []
    if LOAD is None:
        notes.append(f"loaded with {entry.loader} (attnplug.loading is not installed)")
    with entry.lock:
        dense = None
        try:
            if not entry.warm:  # the first call on a model pays one-off costs; keep them out of the timings
                attnplug.remove(pipe)
                _run(pipe, dataclasses.replace(_dense_request(req), steps=1), "standard", lambda d, t: None, 1, 0)
                entry.warm = True
                notes.append("first generation on this model: one untimed dense warm-up step ran first")
            if req.compare:
                attnplug.remove(pipe)
                dense = _run(pipe, _dense_request(req), "standard", report, total, 0)
            if req.pipeline == "standard":
                attnplug.apply(pipe, req.config, schedule=req.schedule)
                attnplug.reset_stats(pipe)
            else:
                notes.append(f"dense = the stock pipeline at the same size, without the {req.pipeline} technique")
            if req.pipeline != "standard" and req.schedule is not None:
                notes.append(f"the schedule form applies to the standard pipeline; {req.pipeline} runs the method "
                             "with its own recipe")
            run = _run(pipe, req, req.pipeline, report, total, req.steps if req.compare else 0)
            stats = attnplug.stats(pipe)
        finally:
            attnplug.remove(pipe)
    notes += run.notes
    save = save_image if req.task == "image" else save_video
    method_file = save(run.frames[0] if req.task == "image" else run.frames, out_dir, f"{req.method}")
    dense_file = None
    rows = [("time (method)", f"{run.seconds:.2f} s")]
    if dense is not None:
        dense_file = save(dense.frames[0] if req.task == "image" else dense.frames, out_dir, "dense")
        rows.append(("time (dense)", f"{dense.seconds:.2f} s"))
        rows.append(("speed-up vs dense", f"{dense.seconds / run.seconds:.2f}x"))
        if dense.frames.shape == run.frames.shape:
            q = quality(run.frames, dense.frames)
            rows.append(("PSNR vs dense", f"{_fmt(q['psnr'])} dB"))
            rows.append(("SSIM vs dense", f"{q['ssim']:.4f}"))
    if entry.embedded:
        rows.append(("detector", describe_objects(run.frames, req.task)))
        if dense is not None:
            rows.append(("detector (dense)", describe_objects(dense.frames, req.task)))
    technique = "" if req.pipeline == "standard" else f" + {req.pipeline} pipeline"
    dtype = str(cache.dtype).removeprefix("torch.")
    lines = [f"**{req.method}**{technique} on `{req.model}` ({cache.device}, {dtype}), "
             f"{req.task} {req.width}x{req.height}" + (f"x{req.num_frames} frames" if req.task == "video" else "")
             + f", {req.steps} steps, seed {req.seed}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    sched = req.schedule if req.schedule is not None else req.config.default_schedule()
    lines += ["", f"schedule: {'method default: ' if req.schedule is None else ''}{sched or 'every step and layer'}"]
    did = _stats_lines(stats) or ["no attnplug counters were left on the pipeline after this run"]
    lines += ["", "**What the method did**", ""] + [f"- {line}" for line in did]
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    return Result(method_file, dense_file, "\n".join(lines), jsonable(stats), notes)


def _dense_request(req: Request) -> Request:
    return dataclasses.replace(req, pipeline="standard")


# ---------------------------------------------------------------------------------------------------------------------
# The page


def build_app(cache: ModelCache | None = None) -> gr.Blocks:
    """The Gradio app (queue set: bounded, ``CONCURRENCY`` events at once, one generation per model at a time)."""
    cache = cache or ModelCache()
    m_forms, s_form, p_forms = method_forms(), schedule_form(), pipeline_forms()
    comps: dict[str, gr.components.Component] = {}
    loader_note = ("Models load with `attnplug.loading.load` (local folders, hub ids; safetensors only)."
                   if LOAD is not None else
                   "`attnplug.loading` is not installed here: only the embedded models (and folders in their format) "
                   "load, with `attnplug.models.load_pipeline` (safetensors only).")
    with gr.Blocks(title="attnplug") as demo:
        gr.Markdown("# attnplug\nTraining-free attention methods on a diffusers pipeline, compared with dense. "
                    + loader_note)
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    comps["model"] = gr.Dropdown(embedded_models(), value=DEFAULT_MODEL, label="model",
                                                 info="Embedded models (tiny, offline).", elem_id="model")
                    comps["model_path"] = gr.Textbox(label="or a local folder / hub id", value="",
                                                     placeholder="overrides the dropdown when set",
                                                     elem_id="model-path")
                comps["task"] = gr.Radio(list(TASKS), value="image", label="task", elem_id="task")
                comps["prompt"] = gr.Textbox(value="red circle", label="prompt", elem_id="prompt")
                comps["negative_prompt"] = gr.Textbox(value="", label="negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    comps["height"] = gr.Number(16, label="height", precision=0, minimum=LIMITS["size"][0],
                                                maximum=LIMITS["size"][1], elem_id="height")
                    comps["width"] = gr.Number(16, label="width", precision=0, minimum=LIMITS["size"][0],
                                               maximum=LIMITS["size"][1], elem_id="width")
                    comps["num_frames"] = gr.Number(8, label="frames", precision=0, minimum=LIMITS["frames"][0],
                                                    maximum=LIMITS["frames"][1], visible=False, elem_id="frames")
                with gr.Row():
                    comps["steps"] = gr.Slider(*LIMITS["steps"], value=20, step=1, label="steps", elem_id="steps")
                    comps["guidance"] = gr.Slider(*LIMITS["guidance"], value=3.0, step=0.5, label="guidance",
                                                  elem_id="guidance")
                    comps["seed"] = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="seed")
                comps["method"] = gr.Dropdown(list(m_forms), value="agent", label="method", elem_id="method")
                groups = {}
                for name, forms in m_forms.items():
                    with gr.Group(visible=name == "agent") as groups[name]:
                        with gr.Accordion(f"{name} options", open=False):
                            for ff in forms:
                                comps[ff.key] = _component(ff)
                comps["default_schedule"] = gr.Checkbox(
                    True, label="method's default schedule", elem_id="default-schedule",
                    info="e.g. agent: first 40 % of the steps; untick to use the schedule below.")
                with gr.Accordion("schedule (where the method runs; elsewhere attention is dense)", open=False):
                    for ff in s_form:
                        comps[ff.key] = _component(ff)
                # Every pipeline is a valid API value (the request check matches it to the task); the page shows
                # the task's own through on_task at load and on each task change.
                comps["pipeline"] = gr.Radio(available_pipelines(), value="standard", label="pipeline",
                                             info="Hi-res / long-video techniques, when installed.",
                                             elem_id="pipeline")
                p_groups = {}
                for label, forms in p_forms.items():
                    with gr.Group(visible=False) as p_groups[label]:
                        with gr.Accordion(f"{label} options", open=True):
                            for ff in forms:
                                comps[ff.key] = _component(ff)
                comps["compare"] = gr.Checkbox(True, label="compare with dense", elem_id="compare")
                run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                with gr.Row():
                    out_image = gr.Image(label="method", type="filepath", format="png", height=256,
                                         elem_id="out-image", interactive=False)
                    dense_image = gr.Image(label="dense", type="filepath", format="png", height=256,
                                           elem_id="dense-image", interactive=False)
                with gr.Row(visible=False) as video_row:
                    out_video = gr.Video(label="method", height=256, elem_id="out-video", interactive=False,
                                         autoplay=True, loop=True)
                    dense_video = gr.Video(label="dense", height=256, elem_id="dense-video", interactive=False,
                                           autoplay=True, loop=True)
                summary = gr.Markdown("Press **Generate**.", elem_id="summary")
                stats_json = gr.JSON(label="attnplug.stats(pipe)", elem_id="stats")

        def on_method(name):
            return [gr.update(visible=n == name) for n in groups]

        comps["method"].change(on_method, comps["method"], list(groups.values()), api_name=False)

        def on_task(task, pipeline):
            choices = available_pipelines(task)
            pipeline = pipeline if pipeline in choices else "standard"
            return ([gr.update(visible=task == "video"), gr.update(visible=task == "image"),
                     gr.update(visible=task == "image"), gr.update(visible=task == "video"),
                     gr.update(choices=choices, value=pipeline)]
                    + [gr.update(visible=label == pipeline) for label in p_groups])

        comps["task"].change(on_task, [comps["task"], comps["pipeline"]],
                             [comps["num_frames"], out_image, dense_image, video_row, comps["pipeline"],
                              *p_groups.values()], api_name=False)
        demo.load(on_task, [comps["task"], comps["pipeline"]],
                  [comps["num_frames"], out_image, dense_image, video_row, comps["pipeline"], *p_groups.values()],
                  api_name=False)
        comps["pipeline"].change(lambda p: [gr.update(visible=label == p) for label in p_groups], comps["pipeline"],
                                 list(p_groups.values()), api_name=False)

        def on_model(name):
            video = "video" in name
            return gr.update(value="video" if video else "image"), gr.update(
                value="blue square moving left" if video else "red circle")

        comps["model"].change(on_model, comps["model"], [comps["task"], comps["prompt"]], api_name=False)

        keys = input_keys()

        def on_generate(*values, progress=gr.Progress()):  # noqa: B008 - Gradio's way to ask for a progress bar
            data = dict(zip(keys, values))
            try:
                req = parse_request(data)
                progress(0, desc="loading model")
                result = generate(req, cache, lambda done, total: progress((done, total), desc="denoising",
                                                                           unit="steps"))
            except gr.Error:
                raise
            except (ValueError, TypeError, KeyError, FileNotFoundError, OSError) as exc:
                logger.info("generate: rejected: %s", exc)
                raise gr.Error(str(exc), print_exception=False) from None
            except Exception as exc:  # any other failure: a message in the page, the details in the server log
                logger.exception("generate failed")
                raise gr.Error(f"generation failed: {type(exc).__name__}: {exc}", print_exception=False) from None
            image = req.task == "image"
            return (result.method_file if image else None, result.dense_file if image else None,
                    None if image else result.method_file, None if image else result.dense_file,
                    result.summary, result.stats)

        # Named parameters for the API page and gradio_client (``method__agent__agents=...``), in input order.
        on_generate.__signature__ = inspect.Signature(
            [inspect.Parameter(k.replace(".", "__"), inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in keys]
            + [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())]
        )
        run_btn.click(on_generate, [comps[k] for k in keys],
                      [out_image, dense_image, out_video, dense_video, summary, stats_json],
                      api_name="generate", concurrency_limit=CONCURRENCY)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    demo.model_cache = cache
    return demo


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Launch ``demo`` with the page's CSS; returns Gradio's ``(app, local_url, share_url)``."""
    return demo.launch(server_name=host, server_port=port, share=share, css=CSS, footer_links=["api"], **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="attnplug ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_app(ModelCache(args.device, getattr(torch, args.dtype)))
    serve(demo, args.host, args.port, args.share)


if __name__ == "__main__":
    main()
