"""Plain-language names of what ran, shared by the CLI, the report and the UI: a schedule in words, and the hi-res /
long-video plan a run followed (so such rows are never called plain "dense"). Imports no torch."""

from __future__ import annotations

import dataclasses
from typing import Any


def _as_dict(obj) -> dict[str, Any]:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj)


def _count(value) -> str:
    """Steps as written in a schedule: a fraction (``0.1`` -> ``10 % of the steps``) or a count."""
    if isinstance(value, float):
        return f"{value:.0%} of the steps"
    return f"{value} step{'s' if value != 1 else ''}"


def schedule_words(schedule) -> str:
    """A :class:`attnplug.Schedule` (or its dict; None = everywhere) in words, e.g. ``"the first 40 % of the
    steps, every layer"``."""
    s = _as_dict(schedule)
    warmup, until = s.get("warmup_steps") or 0, s.get("until_step")
    end = None if until is None else f"{until:.0%} of the steps" if isinstance(until, float) else f"step {until}"
    if warmup and end:
        when = f"after a dense warm-up of {_count(warmup)}, until {end}"
    elif warmup:
        when = f"every step after a dense warm-up of {_count(warmup)}"
    elif end:
        when = f"the first {end}" if isinstance(until, float) else f"the steps before {end}"
    else:
        when = "every step"
    first, last, layers = s.get("skip_first_layers") or 0, s.get("skip_last_layers") or 0, s.get("layers")
    if layers is not None:
        where = f"layers matching {layers!r}" if isinstance(layers, str) else f"layers {', '.join(map(str, layers))}"
    elif first or last:
        parts = ([f"the first {first}"] if first else []) + ([f"the last {last}"] if last else [])
        where = f"every layer but {' and '.join(parts)}"
    else:
        where = "every layer"
    return f"{when}, {where}"


def _fraction(value) -> str:
    return f"{value:.0%}" if isinstance(value, float) and value < 1 else f"{value} steps"


def hires_label(plan, config=None) -> str:
    """A hi-res plan (``HiResPlan`` or its dict) and its config as a row name, e.g. ``"hires HiDiffusion 2x:
    RAU-Net x2 until 40 %, MSW-MSA windows 16x16"``."""
    p, c = _as_dict(plan), _as_dict(config)
    sizes = [tuple(s) for s in p.get("sizes") or ()]
    train = tuple((p.get("family") or {}).get("train_size") or (sizes[0] if sizes else ()))
    scale = ""
    if sizes and train:
        sh, sw = sizes[-1][0] / train[0], sizes[-1][1] / train[1]
        scale = f" {sh:g}x" if sh == sw else f" {sh:g}x{sw:g}"
    attention = c.get("attention")
    attention_name = attention.get("name") or attention.get("method") if isinstance(attention, dict) else attention
    if p.get("method") == "hidiffusion":
        parts = []
        factors = [tuple(f) for f in p.get("raunet_factors") or ()]
        switch = list(p.get("raunet_switch") or ())
        if factors:
            steps = ", ".join(f"x{f[0] if f[0] == f[1] else f'{f[0]}x{f[1]}'} until {s:.0%}"
                              for f, s in zip(factors, switch))
            parts.append(f"RAU-Net {steps}" if steps else "RAU-Net")
        if attention_name:
            parts.append(f"{attention_name} attention")
        elif c.get("windows", True) and train:
            parts.append(f"MSW-MSA windows {train[1]}x{train[0]}")
        return f"hires HiDiffusion{scale}: " + (", ".join(parts) or "plain U-Net")
    stages = " -> ".join(f"{w}x{h}" for h, w in sizes)
    strengths = "/".join(f"{s:g}" for s in p.get("strengths") or ())
    local = attention_name or c.get("local_attention") or "auto"
    return f"hires coarse-to-fine{scale}: {stages}, re-noise {strengths}, {local} attention"


def long_video_label(plan, config=None) -> str:
    """A long-video plan (``LongVideoPlan`` or its dict) as a row name, e.g. ``"long video 32 frames (4x): windows
    2/1 latent frames, RIFLEx, position scale 4, global steps 75 %"`` or ``"long video 32 frames (4x): sparse_video
    long pattern over the whole video, RIFLEx RoPE, position scale 4"``. The sparse pattern is the plan's (what ran,
    ``sparse="auto"`` resolved); records from before the plan held it name the config's."""
    p, c = _as_dict(plan), _as_dict(config)
    ext = p["latent_frames"] / p["train_latent"] if p.get("train_latent") else None
    head = f"long video {p.get('num_frames')} frames" + (f" ({ext:g}x)" if ext else "")
    given = c.get("sparse")
    name = given.get("name", "sparse_video") if isinstance(given, dict) else "sparse_video"
    sparse = p["sparse"] if "sparse" in p else (given if isinstance(given, dict) else None)
    parts = []
    if p.get("temporal_windows"):
        parts.append(f"windows {p.get('window')}/{p.get('stride')} latent frames")
        parts.append(f"global steps {_fraction(p.get('global_steps'))}")
    elif p.get("long_sparse"):
        parts.append(f"{name} long pattern over the whole video")
        if p.get("global_steps"):
            parts.append(f"global steps {_fraction(p.get('global_steps'))}")
    else:
        parts.append("no windows")
    rope = p.get("rope")
    if rope and rope != "none":
        parts.append(f"{'RIFLEx' if rope == 'riflex' else rope} RoPE, position scale {p.get('position_scale'):g}")
    if p.get("noise_rescheduling"):
        parts.append("FreeNoise noise")
    if p.get("vstar"):
        parts.append("VSTAR")
    if sparse and not p.get("long_sparse"):
        parts.append(f"{name} inside the windows" if p.get("temporal_windows") else f"{name} on the whole video")
    return f"{head}: " + ", ".join(parts)


def run_label(method_label: str, plan: dict | None, hires_config=None, long_video_config=None) -> str:
    """The name of a run: the method label, or the hi-res / long-video plan it followed (with the method inside
    it when it is not dense)."""
    if plan and "raunet_factors" in plan:
        label = hires_label(plan, hires_config)
    elif plan and "temporal_windows" in plan:
        label = long_video_label(plan, long_video_config)
    else:
        return method_label
    if method_label in ("dense", "stock", None) or method_label.split("[")[0] in label:
        return label
    return f"{label} [{method_label}]"
