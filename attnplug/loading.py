"""Load any pipeline attnplug can run on: an embedded model, a local diffusers folder, a Hub id or a ``tiny-*``
random-weight test pipeline, with one :func:`load`. :func:`resolve` checks the name without loading anything, so a
command line can reject a bad name before spending seconds on a load.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny-"
DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to: ``kind`` is ``"embedded"`` (name or folder of an attnplug embedded model),
    ``"folder"`` (a diffusers ``save_pretrained`` folder), ``"hub"`` (a Hub id) or ``"tiny"`` (random weights)."""

    name: str
    kind: str
    path: str | None = None
    random_weights: bool = False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or "\\" in model


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - diffusers depends on huggingface_hub
        return False
    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)


def _check_hub(repo_id: str) -> None:
    """Raise a ``ValueError`` saying why Hub id ``repo_id`` cannot be loaded, or return if it can (cached or
    reachable)."""
    if _hub_cached(repo_id):
        return
    hint = ("pass a local folder instead (e.g. one written by `DiffusionPipeline.from_pretrained(...)"
            ".save_pretrained(DIR)` on a machine with network), or download it first with `hf download`")
    if _offline():
        raise ValueError(
            f"model={repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded; {hint}."
        )
    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise ValueError(f"model={repo_id!r} is not a model on the Hugging Face Hub (nor a local folder).") from None
    except Exception as exc:  # network errors come in many types (requests, httpx, OSError)
        raise ValueError(
            f"model={repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({type(exc).__name__}); {hint}."
        ) from None


def resolve(model: str, *, check_hub: bool = True) -> ModelSource:
    """What ``model`` names, checked without loading weights.

    Accepts an embedded model name (``shapes-unet``), the folder of one, a diffusers folder (with
    ``model_index.json``), ``tiny-sd`` / ``tiny-pixart`` / ``tiny-wan``, or a Hub id ``org/name`` (cached, or
    reachable unless ``HF_HUB_OFFLINE`` is set). ``ValueError`` naming the model and what is accepted otherwise.
    """
    from .models.catalog import TINY_PIPELINES, available_models

    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise ValueError(f"model={model!r} must be a non-empty name, folder or Hub id.")
    model = str(model)
    embedded = available_models()
    if model in embedded:
        return ModelSource(model, "embedded")
    if model.startswith(TINY_PREFIX):
        if model not in TINY_PIPELINES:
            raise ValueError(f"model={model!r}: unknown tiny pipeline; choose one of {', '.join(TINY_PIPELINES)}.")
        return ModelSource(model, "tiny", random_weights=True)
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return ModelSource(model, "folder", str(path.resolve()))
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return ModelSource(model, "embedded", str(path.resolve()))
        raise ValueError(
            f"model={model!r} is a folder but holds neither a diffusers pipeline (model_index.json, as written by "
            "save_pretrained) nor an attnplug embedded model (config.json + model.safetensors)."
        )
    if path.exists():
        raise ValueError(f"model={model!r} is a file; pass the folder of a diffusers pipeline instead.")
    parts = model.split("/")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ValueError(f"model path {model!r} does not exist (resolved: {path.resolve()}).")
    if _looks_like_path(model) or not all(parts):
        raise ValueError(
            f"model={model!r}: no such folder, and not an embedded model ({', '.join(embedded) or 'none installed'}), "
            f"a tiny test pipeline (tiny-sd, tiny-pixart, tiny-wan) or a Hub id like 'org/name'."
        )
    if check_hub:
        _check_hub(model)
    return ModelSource(model, "hub")


def parse_dtype(dtype):
    """``"bf16"`` / ``"float16"`` / ``torch.float16`` / None -> a ``torch.dtype`` or None (keep the model's)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key in ("auto", "none", ""):
        return None
    if key not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not accepted; choose one of auto, {', '.join(sorted(set(DTYPES)))}.")
    return getattr(torch, DTYPES[key])


def check_device(device) -> str:
    """Validate ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) against what this machine has; returns it."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ({exc}); use cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} but MPS is not available on this machine; use --device cpu.")
    return str(dev)


def _tiny(name: str):
    from .testing import tiny_pipeline

    # The tokenizer reads its files at construction, so the folder can go right after.
    with tempfile.TemporaryDirectory(prefix="attnplug-tiny-") as tmp:
        return tiny_pipeline(name.removeprefix(TINY_PREFIX), tmp)


def _to(pipe, device: str, dtype) -> None:
    """Move/cast ``pipe``'s modules only where that changes something (diffusers warns on every dtype cast)."""
    import torch

    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        params = next(component.parameters(), None)
        if params is None:
            continue
        if dtype is not None and params.dtype != dtype:
            if getattr(component, "_keep_in_fp32_modules", None):
                component.to(device=device, dtype=dtype)
            else:
                torch.nn.Module.to(component, device=device, dtype=dtype)
        elif params.device != torch.device(device):
            torch.nn.Module.to(component, device=device)


def load(model: str, *, device: str = "cpu", dtype=None, use_safetensors: bool | None = None):
    """Load ``model`` as a diffusers pipeline on ``device`` in ``dtype`` (None: the model's own, float32 for the
    embedded and tiny ones).

    ``model`` is anything :func:`resolve` accepts. Hub ids go through ``DiffusionPipeline.from_pretrained`` (with
    ``torch_dtype``); an id missing from the cache while offline raises a ``ValueError`` saying how to pass a local
    folder. ``use_safetensors=True`` refuses pickle weights (diffusers' own switch; the embedded and tiny models are
    safetensors or built in code anyway). The returned pipeline carries ``attnplug_source`` (the
    :class:`ModelSource`).
    """
    import torch

    source = resolve(model)
    device = check_device(device)
    dtype = parse_dtype(dtype)
    if source.kind == "embedded":
        from .models.loader import load_pipeline

        pipe = load_pipeline(source.path or source.name, device=device, dtype=dtype or torch.float32)
    elif source.kind == "tiny":
        pipe = _tiny(source.name)
        _to(pipe, device, dtype)
    else:
        from diffusers import DiffusionPipeline

        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        if use_safetensors is not None:
            kwargs["use_safetensors"] = use_safetensors
        try:
            pipe = DiffusionPipeline.from_pretrained(source.path or source.name, **kwargs)
        except OSError as exc:
            raise ValueError(f"model={model!r} could not be loaded: {exc}") from None
        _to(pipe, device, None)
    pipe.attnplug_source = source
    logger.debug("loaded %s (%s) on %s", model, source.kind, device)
    return pipe


def denoisers_of(pipe) -> list:
    """Every denoiser module of ``pipe`` (``transformer``, ``transformer_2``, ``unet``, ...), found the way
    :func:`attnplug.apply` finds them (:func:`attnplug.plugin.resolve_denoisers`); ``[]`` when it has none."""
    from .plugin import resolve_denoisers

    try:
        found, _ = resolve_denoisers(pipe)
    except TypeError:
        return []
    return [module for _, module in found]


def denoiser_of(pipe):
    """The first denoiser module of ``pipe`` (:func:`denoisers_of`), or None."""
    found = denoisers_of(pipe)
    return found[0] if found else None
