"""Load an embedded model as a diffusers pipeline: config JSON + vocab JSON + safetensors, offline, no pickle."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .build import build_denoiser, build_scheduler, build_text_encoder, read_config
from .catalog import MODELS_DIR, WEIGHTS_FILE, available_models, resolve_model_dir  # noqa: F401 - re-exported
from .text import load_vocab, make_tokenizer

logger = logging.getLogger(__name__)
def load_weights(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load ``<prefix>.<key>`` tensors from the safetensors file ``path`` into ``modules`` (prefix -> module).

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``path`` and the problem: unreadable or corrupt file,
    missing or unexpected tensors, wrong shapes, non-finite values.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist; train it with `python -m attnplug.models.train {path.parent.name}`."
        )
    expected = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            expected[f"{prefix}.{key}"] = value
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing:
                raise ValueError(
                    f"Weights file {path} is missing {len(missing)} tensor(s) the config requires, e.g. {missing[:3]}."
                )
            if unexpected:
                raise ValueError(
                    f"Weights file {path} has {len(unexpected)} tensor(s) the config does not define, "
                    f"e.g. {unexpected[:3]}; does it belong to another model?"
                )
            loaded = {}
            for key, ref in expected.items():
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(ref.shape):
                    raise ValueError(
                        f"Weights file {path}: tensor {key!r} has shape {tuple(tensor.shape)}, but the config "
                        f"expects {tuple(ref.shape)}."
                    )
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise ValueError(f"Weights file {path}: tensor {key!r} contains NaN or infinite values.")
                loaded[key] = tensor
    except ValueError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers / truncated data
        raise ValueError(f"Weights file {path} is not a readable safetensors file ({type(exc).__name__}: {exc}).") \
            from exc
    for prefix, module in modules.items():
        n = len(prefix) + 1
        module.load_state_dict({k[n:]: v for k, v in loaded.items() if k.startswith(prefix + ".")}, strict=True)


def load_pipeline(name: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load an embedded model as a diffusers pipeline, offline.

    Args:
        name: one of :func:`available_models` (``"shapes-unet"``, ``"shapes-dit"``, ``"shapes-video"``) or a
            folder holding ``config.json``, ``vocab.json`` and ``model.safetensors``.
        device: where to put the modules.
        dtype: floating dtype of the modules (sampling arithmetic stays float32).

    Returns:
        A ``ShapesUNetPipeline`` (component ``unet``), ``ShapesDiTPipeline`` or ``ShapesVideoPipeline`` (component
        ``transformer``); all are ``diffusers.DiffusionPipeline`` subclasses. Images come out ``(B, 3, H, W)``
        at 16 x 16 by default; video ``(B, F, H, W, 3)`` at 8 x 16 x 16 (the training sizes in each config).
    """
    from .pipeline import PIPELINES

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype={dtype!r} must be a floating torch.dtype such as torch.float32.")
    model_dir = resolve_model_dir(name)
    cfg = read_config(model_dir / "config.json")
    vocab = load_vocab(model_dir / "vocab.json")
    vocab_size = cfg["text_encoder"].get("vocab_size")
    if vocab_size is not None and max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"Tokenizer vocabulary {model_dir / 'vocab.json'} has ids up to {max(vocab.values())}, but "
            f"{model_dir / 'config.json'} sets text_encoder.vocab_size={vocab_size}."
        )
    tokenizer = make_tokenizer(vocab, cfg["max_length"])
    text_encoder = build_text_encoder(cfg)
    denoiser = build_denoiser(cfg)
    load_weights(model_dir / WEIGHTS_FILE, {"text_encoder": text_encoder, "denoiser": denoiser})
    text_encoder.eval()
    denoiser.eval()
    cls = PIPELINES[cfg["family"]]
    denoiser_name = "unet" if cfg["family"] == "unet" else "transformer"
    pipe = cls(tokenizer=tokenizer, text_encoder=text_encoder, scheduler=build_scheduler(cfg),
               **{denoiser_name: denoiser})
    pipe.sample_defaults = dict(cfg["sample"])
    pipe.max_length = int(cfg["max_length"])
    pipe.model_name = cfg["name"]
    pipe.set_progress_bar_config(disable=True)
    # diffusers' ModelMixin.to warns whenever it gets a dtype (even with no fp32-only modules, as here), so the
    # modules are cast with torch's own Module.to, and only when that changes something.
    for module in (text_encoder, denoiser):
        if next(module.parameters()).dtype == dtype and torch.device(device) == torch.device("cpu"):
            continue
        if getattr(module, "_keep_in_fp32_modules", None):
            module.to(device=device, dtype=dtype)
        else:
            torch.nn.Module.to(module, device=device, dtype=dtype)
    logger.debug("loaded %s from %s on %s/%s", cfg["name"], model_dir, device, dtype)
    return pipe
