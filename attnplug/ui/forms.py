"""The app's inputs: the fixed fields, and the forms generated from the config dataclasses' field metadata (method
options, schedule, hi-res / long-video options), in the order the ``/generate`` endpoint takes them. No Gradio here.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..config import Schedule, field_specs, method_configs

DEFAULT_MODEL = "shapes-unet"
TASKS = ("image", "video")
#: ``method`` value meaning "the task's default" (:data:`TASK_METHODS`)
AUTO = "auto"
#: the method a task starts with: agent on images; on video sparse_video (agent merges tokens across frames and
#: wipes the object after the first frame on shapes-video)
TASK_METHODS = {"image": "agent", "video": "sparse_video"}
PIPELINES = {"standard": None, "hi-res": "hires", "long video": "long_video"}
PIPELINE_TASK = {"hi-res": "image", "long video": "video"}
PIPELINE_CONFIGS = {"hi-res": "HiResConfig", "long video": "LongVideoConfig"}
# Pipeline config fields the app fills itself: the method chosen above (``attention``, ``sparse``) and no console
# progress bar.
PIPELINE_SET_BY_APP = ("attention", "sparse", "progress")


def pipeline_config(label: str):
    """The config class of pipeline ``label`` (``hi-res`` / ``long video``)."""
    import attnplug.pipelines as pipelines

    return getattr(pipelines, PIPELINE_CONFIGS[label])


def available_pipelines(task: str | None = None) -> list[str]:
    """Pipeline labels for ``task`` (all when None): ``standard`` and the multi-pass techniques."""
    return [n for n in PIPELINES if task is None or PIPELINE_TASK.get(n, task) == task]


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
            return self._number(raw)
        if self.kind == "text":
            return raw if raw != "" or spec.default is not None else None
        return self._literal(str(raw).strip())

    def _number(self, raw):
        name, spec = self.key, self.spec
        if raw is None or isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"{name}={raw!r} must be a number.")
        if spec.type == "int":
            if float(raw) != int(raw):
                raise ValueError(f"{name}={raw!r} must be an integer.")
            raw = int(raw)
        else:
            raw = float(raw)
        if not spec.accepts(raw):
            raise ValueError(f"{name}={raw!r} is out of range: accepted {spec.range_text()}.")
        return raw

    def _literal(self, text: str):
        spec = self.spec
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
                f"{self.key}={text!r} is not a Python literal of type {spec.type} (e.g. {spec.default!r})."
            ) from None
        return tuple(value) if isinstance(value, list) else value


def form_field(prefix: str, spec) -> FormField:
    """The :class:`FormField` of config field ``spec`` under ``prefix`` (how it is shown follows its metadata)."""
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
    return {name: [form_field(f"method.{name}", s) for s in field_specs(cls)]
            for name, cls in method_configs().items()}


def schedule_form() -> list[FormField]:
    """Form fields of :class:`attnplug.Schedule` (keys ``schedule.<field>``)."""
    return [form_field("schedule", s) for s in field_specs(Schedule)]


def pipeline_forms() -> dict[str, list[FormField]]:
    """Form fields of the multi-pass pipelines' configs (keys ``pipeline.<name>.<field>``)."""
    out = {}
    for label in PIPELINE_CONFIGS:
        cls = pipeline_config(label)
        if dataclasses.is_dataclass(cls):
            out[label] = [form_field(f"pipeline.{PIPELINES[label]}", s) for s in field_specs(cls)
                          if s.name not in PIPELINE_SET_BY_APP and s.type not in ("Any", "object")]
    return out


#: the fixed inputs, in API order, with the page's first values
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
    ("method", AUTO),
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
