"""The image/video denoiser classes of the installed diffusers, computed, and a tiny random-weight builder for each.

:func:`denoiser_classes` walks ``diffusers.models.transformers`` and ``diffusers.models.unets`` for subclasses of
``ModelMixin`` defined there and drops, by the rule in :func:`out_of_scope`, the audio, 1-D, prior and
adapter/sub-block classes. :func:`tiny_denoiser` builds one class from a tiny config and returns keyword inputs as its
pipeline would pass them (masks, position ids, conditioning inputs); the builders live in
:mod:`attnplug.testing_builders_image` and :mod:`attnplug.testing_builders_video`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable

import torch

#: Name fragments (lower case) of the modules/classes that are not image or video denoisers.
_AUDIO = ("audio", "music", "acestep", "ace_step", "t5_film", "t5film")
_ONE_D = ("1d",)
_PRIOR = ("prior",)
_ADAPTER = ("adapter", "transformer_temporal", "temporalmodel", "dual_transformer", "controlnet")
_NOT_IMAGE = ("proteina",)  # protein structure generation: no image or video latent
_SUBMODULE_CLASSES = ("Cosmos3OmniTransformer",)  # an omni (text+image+audio) language model backbone


def out_of_scope(cls: type) -> str | None:
    """Why ``cls`` is not an image/video denoiser (audio, 1-D, prior, adapter/sub-block, not an image model), or
    None when it is one."""
    text = f"{cls.__module__.rsplit('.', 1)[-1]} {cls.__name__}".lower()
    for fragments, reason in (
        (_AUDIO, "audio model"), (_ONE_D, "1-D model"), (_PRIOR, "prior (embedding) model"),
        (_ADAPTER, "adapter or sub-block, not a denoiser on its own"), (_NOT_IMAGE, "not an image or video model"),
    ):
        if any(f in text for f in fragments):
            return reason
    if cls.__name__ in _SUBMODULE_CLASSES:
        return "multimodal language-model backbone, not a latent denoiser"
    return None


def _candidate_classes() -> list[type]:
    import diffusers.models.transformers as transformers
    import diffusers.models.unets as unets
    from diffusers.models.modeling_utils import ModelMixin

    found = {}
    for package in (transformers, unets):
        for info in pkgutil.iter_modules(package.__path__):
            try:
                module = importlib.import_module(f"{package.__name__}.{info.name}")
            except Exception:  # an optional dependency missing: the class cannot be built here either
                continue
            for obj in vars(module).values():
                if inspect.isclass(obj) and issubclass(obj, ModelMixin) and obj.__module__ == module.__name__:
                    found[obj.__name__] = obj
    return [found[name] for name in sorted(found)]


def denoiser_classes() -> list[type]:
    """Every image/video denoiser class of the installed diffusers, sorted by name."""
    return [cls for cls in _candidate_classes() if out_of_scope(cls) is None]


def excluded_classes() -> dict[str, str]:
    """``{class name: reason}`` for the ModelMixin classes left out of :func:`denoiser_classes`."""
    return {cls.__name__: reason for cls in _candidate_classes() if (reason := out_of_scope(cls)) is not None}


def _builders() -> dict[str, Callable]:
    from .testing_builders_image import BUILDERS as image
    from .testing_builders_joint import BUILDERS as joint
    from .testing_builders_video import BUILDERS as video
    from .testing_builders_video2 import BUILDERS as video2

    return {**image, **joint, **video, **video2}


def has_builder(name: str) -> bool:
    """Whether :func:`tiny_denoiser` can build the class ``name``."""
    return name in _builders()


def tiny_denoiser(name: str, *, batch: int = 2, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A tiny random-weight ``name`` denoiser (a diffusers class name) in eval mode, and keyword inputs for one
    forward call as its pipeline makes them. ``KeyError`` when no builder exists for ``name``."""
    builders = _builders()
    if name not in builders:
        raise KeyError(f"No tiny builder for {name}; builders exist for {', '.join(sorted(builders))}.")
    torch.manual_seed(seed)
    model, inputs = builders[name](batch)
    return model.eval(), inputs


_LAYER_COUNT = re.compile(r"^(num|n)_(\w+_)?(layers|blocks)$")


def tiny(cls: type, **overrides) -> torch.nn.Module:
    """``cls`` built tiny: every layer/block count of its ``__init__`` signature set to 1, then ``overrides`` (the
    widths), checked against the signature so a renamed argument in another diffusers version fails loudly."""
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in overrides if k not in params]
    if unknown:
        raise TypeError(f"{cls.__name__}.__init__ takes no {', '.join(unknown)} in this diffusers version.")
    kwargs = {k: 1 for k, p in params.items() if _LAYER_COUNT.match(k) and isinstance(p.default, int)}
    kwargs.update(overrides)
    return cls(**kwargs)
