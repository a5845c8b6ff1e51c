"""The resumable state of a training run in one safetensors file (no pickle): raw and EMA weights, AdamW moments,
the step, the random generators and the loss record.

A run cut off at any step and resumed from this file continues exactly as if it had not stopped (same batches, same
noise, same updates), up to floating-point thread nondeterminism when the thread count changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STATE_FILE = "train_state.safetensors"


def _module_tensors(prefix: str, modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}.{key}": value.detach().to(torch.float32).clone().contiguous()
        for name, module in modules.items() for key, value in module.state_dict().items()
    }


def save_state(path: Path, *, models: dict[str, torch.nn.Module], ema: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator], scalars: dict) -> None:
    """Write the training state to ``path`` atomically.

    Args:
        models: trained modules by name (``text_encoder``, ``denoiser``); their float32 state dicts are saved.
        ema: the EMA copies, by the same names.
        optimizer: an optimizer with per-parameter tensor state (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``).
        generators: CPU generators by name; their byte states are saved (the global CPU RNG as ``torch``).
        scalars: JSON-serialisable values (step, loss record, wall time, ...), stored in the file's metadata.
    """
    from safetensors.torch import save_file

    tensors = _module_tensors("model", models) | _module_tensors("ema", ema)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value.detach().clone().contiguous()
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state().clone()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"scalars": json.dumps(scalars)})
    tmp.replace(path)


def load_state(path: Path, *, models: dict[str, torch.nn.Module], ema: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator]) -> dict:
    """Restore what :func:`save_state` wrote into the given objects (built from the same config) and return the
    scalars. ``ValueError`` naming ``path`` when the file does not match them."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            scalars = json.loads((f.metadata() or {}).get("scalars", "null"))
    except Exception as exc:  # safetensors raises its own error types for corrupt or truncated files
        raise ValueError(f"Training state {path} is not readable ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(scalars, dict):
        raise ValueError(f"Training state {path} has no scalar record; it was not written by save_state.")
    for prefix, group in (("model", models), ("ema", ema)):
        for name, module in group.items():
            head = f"{prefix}.{name}."
            sd = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
            try:
                module.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"Training state {path} does not match the model config ({head}*): {exc}") from exc
    optim_sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    n_params = sum(len(g["params"]) for g in optim_sd["param_groups"])
    if state and set(state) != set(range(n_params)):
        raise ValueError(f"Training state {path} holds optimizer state for {len(state)} parameters; the model has "
                         f"{n_params}.")
    optim_sd["state"] = state
    optimizer.load_state_dict(optim_sd)
    for name, gen in generators.items():
        if f"rng.{name}" not in tensors:
            raise ValueError(f"Training state {path} has no state for the generator {name!r}.")
        gen.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors["rng.torch"])
    return scalars
