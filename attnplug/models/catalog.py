"""What attnplug knows about the models it ships or builds, without torch: the embedded models on disk and the size
and frame rules of every model a command line can check before loading (embedded and ``tiny-*`` pipelines)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MODELS_DIR", "TINY_PIPELINES", "WEIGHTS_FILE", "ModelRules", "available_models", "model_rules",
           "resolve_model_dir", "weights_digest"]

MODELS_DIR = Path(__file__).resolve().parent
WEIGHTS_FILE = "model.safetensors"


def _in_training(folder: Path) -> bool:
    """Whether the folder's training log says its run has not finished (its weights are a checkpoint)."""
    log = folder / "train_log.json"
    try:
        return log.is_file() and json.loads(log.read_text()).get("finished") is False
    except (OSError, ValueError):
        return False


def available_models() -> list[str]:
    """Names of the embedded models shipped with the package (folders holding ``config.json`` and weights). A model
    whose training has not finished is left out (it still loads by name, for evaluation and resumed training)."""
    return sorted(
        p.name for p in MODELS_DIR.iterdir()
        if p.is_dir() and (p / "config.json").is_file() and (p / WEIGHTS_FILE).is_file() and not _in_training(p)
    )


def resolve_model_dir(name: str | Path) -> Path:
    """The folder of model ``name``: an embedded model's name or a path to a folder with ``config.json``."""
    if not isinstance(name, (str, Path)):
        raise TypeError(f"name must be a model name or a folder path, got {type(name).__name__}.")
    if isinstance(name, str) and (MODELS_DIR / name / "config.json").is_file() and "/" not in name:
        return MODELS_DIR / name
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(
        f"name={str(name)!r} is not an embedded model nor a folder with a config.json; "
        f"available models: {available_models()}."
    )


def weights_digest(name: str | Path) -> str | None:
    """The first 16 hex digits of the SHA-256 of an embedded model's (or a model folder's) weights file; None for
    anything else (hub ids, ``tiny-*`` pipelines). Records carry it, so outputs of replaced weights never count as
    made by the current ones."""
    try:
        folder = resolve_model_dir(name)
    except (TypeError, ValueError):
        return None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        return None
    stat = weights.stat()
    return _file_digest(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file is hashed again
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelRules:
    """The sizes and lengths a model can generate, known before it loads.

    ``size_multiple``: height and width must be positive multiples of it (VAE scale x patch size).
    ``frame_period``: with a temporal VAE, frame counts are ``k * frame_period + 1`` (Wan: 4k + 1); None = any.
    ``max_frames``: the longest clip (a motion module's positional table); None = no limit.
    ``min_steps``: the fewest denoising steps its scheduler runs. ``defaults``: the call settings it runs at when
    the user gives none (used where the pipeline's own defaults do not fit the model). ``call``: extra pipeline
    arguments it needs (e.g. no PixArt resolution binning for a sample size outside the bins).
    """

    family: str
    video: bool = False
    size_multiple: int = 1
    frame_period: int | None = None
    max_frames: int | None = None
    min_steps: int = 1
    defaults: dict = field(default_factory=dict)
    call: dict = field(default_factory=dict)


#: The ``tiny-*`` random-weight pipelines of :func:`attnplug.testing.tiny_pipeline` (a test keeps the names equal).
TINY_PIPELINES: dict[str, ModelRules] = {
    "tiny-sd": ModelRules("unet", size_multiple=8, defaults={"height": 16, "width": 16}),
    "tiny-pixart": ModelRules("dit", size_multiple=8, min_steps=2, defaults={"height": 16, "width": 16},
                              call={"use_resolution_binning": False}),
    "tiny-wan": ModelRules("wan", video=True, size_multiple=16, frame_period=4,
                           defaults={"height": 16, "width": 16, "frames": 9}),
    "tiny-animatediff": ModelRules("animatediff", video=True, size_multiple=8, max_frames=32,
                                   defaults={"height": 16, "width": 16, "frames": 8}),
}


def _embedded_rules(folder: Path) -> ModelRules:
    cfg = json.loads((folder / "config.json").read_text())
    family, denoiser = cfg.get("family"), cfg.get("denoiser", {})
    if family == "unet":
        multiple = 2 ** (len(denoiser.get("block_out_channels", [0])) - 1)
    else:  # pixel-space DiTs: the patch (video: its spatial side)
        patch = denoiser.get("patch_size", 1)
        multiple = int(patch[1] if isinstance(patch, list) else patch)
    return ModelRules(family or "unknown", video=family == "video", size_multiple=multiple)


def model_rules(name: str, kind: str, path: str | None = None) -> ModelRules | None:
    """The rules of model ``name`` of :class:`attnplug.loading.ModelSource` ``kind`` (``embedded``, ``tiny``), or
    None when they are only known after loading (diffusers folders, Hub ids)."""
    if kind == "tiny":
        return TINY_PIPELINES.get(name)
    if kind == "embedded":
        return _embedded_rules(resolve_model_dir(path or name))
    return None
