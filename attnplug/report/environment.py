"""The environment of a run (versions, device, threads, load, kernel path) and how loaded the machine is."""

from __future__ import annotations

import os
import platform
from typing import Any

#: Load per core (1-minute load average / cores) above which timings are called noisy.
LOADED_PER_CORE = 0.5
#: Relative spread of repeated timings ((max - min) / median) above which they are called noisy.
NOISY_SPREAD = 0.2


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment(device="cpu") -> dict:
    """Versions, device, torch threads, load average and which block-sparse kernel path ``device`` takes."""
    import torch

    dev = torch.device(device)
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: _version(name) for name in
                     ("attnplug", "torch", "diffusers", "transformers", "accelerate", "triton", "torchmetrics",
                      "xformers")},
        "device": str(dev), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if dev.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(dev)
        env["capability"] = list(torch.cuda.get_device_capability(dev))
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    try:
        from ..kernels.block_sparse.dispatch import choose_backend

        q = torch.empty(1, 1, 1, 16, device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
        name, reason = choose_backend("auto", q)
        env["kernel_path"] = {"backend": name, "reason": reason}
    except Exception as exc:  # the dispatcher is optional for a report
        env["kernel_path"] = {"backend": None, "reason": f"{type(exc).__name__}: {exc}"}
    return env



def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def loaded(load: float | None = None, cores: int | None = None) -> bool:
    """Whether other work shares the machine: the 1-minute load above :data:`LOADED_PER_CORE` per core."""
    load = load_average() if load is None else load
    cores = cores or os.cpu_count() or 1
    return load is not None and load / cores > LOADED_PER_CORE


def noise_warning(loadavg: float | None, cores: int | None, spreads: list[float | None]) -> str | None:
    """A sentence saying why timings are unreliable (a loaded machine, a large spread of repeats), or None."""
    reasons = []
    if loadavg is not None and loaded(loadavg, cores):
        reasons.append(f"the machine was loaded (load average {loadavg:.1f} on {cores} cores)")
    worst = max((s for s in spreads if s is not None), default=None)
    if worst is not None and worst > NOISY_SPREAD:
        reasons.append(f"repeated runs differ by up to {worst:.0%} of their median")
    if not reasons:
        return None
    return ("timings are noisy: " + " and ".join(reasons) + "; rerun on an idle machine or with more --repeats "
            "before trusting the speed-ups.")
