"""``apply`` / ``remove`` / ``applied``: put attnplug's wrapping processors on a denoiser and take them off."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from .config import MethodConfig, Schedule
from .layout import LayoutState, family_of
from .methods.base import AttentionMethod
from .methods.dense import DenseConfig
from .processors.wrapper import AttnplugProcessor, Runtime

logger = logging.getLogger(__name__)

_DENOISER_ATTRS = ("transformer", "unet")
_CROSS_NAMES = ("attn2", "attn_cross", "cross_attn", "cross_attention")


def resolve_denoiser(target) -> tuple[torch.nn.Module, object | None]:
    """``(denoiser, pipeline or None)`` for a pipeline (its ``transformer``/``unet``) or a model."""
    if isinstance(target, torch.nn.Module):
        return target, None
    for attr in _DENOISER_ATTRS:
        model = getattr(target, attr, None)
        if isinstance(model, torch.nn.Module):
            return model, target
    raise TypeError(
        f"attnplug.apply expects a diffusers pipeline with a `transformer` or `unet`, or a denoiser model, "
        f"got {type(target).__name__}."
    )


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """All diffusers attention modules (those with a settable processor) of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def is_cross_attention_module(name: str, module: torch.nn.Module) -> bool:
    """Whether an attention module attends from image tokens to a separate (text/image-prompt) sequence."""
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return bool(flag)
    return name.rsplit(".", 1)[-1] in _CROSS_NAMES


def _schedule(schedule: Schedule | None, layers, steps) -> Schedule:
    if schedule is not None and (layers is not None or steps is not None):
        raise ValueError("Give either schedule=Schedule(...) or the layers=/steps= shortcuts, not both.")
    if schedule is not None:
        return schedule
    kwargs = {}
    if layers is not None:
        kwargs["layers"] = layers if isinstance(layers, str) else tuple(layers)
    if steps is not None:
        if isinstance(steps, range) and steps.step == 1:
            start, stop = steps.start, steps.stop
        elif isinstance(steps, (tuple, list)) and len(steps) == 2:
            start, stop = steps
        else:
            raise ValueError(f"steps must be range(start, stop) or (start, stop), got {steps!r}.")
        kwargs.update(warmup_steps=int(start), until_step=stop)
    return Schedule(**kwargs)


def _num_steps_fn(pipe):
    if pipe is None or getattr(pipe, "scheduler", None) is None:
        return None

    def num_steps():
        timesteps = getattr(pipe.scheduler, "timesteps", None)
        return None if timesteps is None else len(timesteps)

    return num_steps


def apply(
    target,
    config: MethodConfig | AttentionMethod | None = None,
    *,
    schedule: Schedule | None = None,
    layers=None,
    steps=None,
):
    """Replace the attention of ``target`` (a pipeline, its ``unet``/``transformer``, or a denoiser model) with the
    method ``config`` describes (default: dense). Self-attention only; ``schedule`` (or the ``layers=`` indices/regex
    and ``steps=(start, stop)`` shortcuts) says which layers and denoising steps use it. Idempotent: a previous
    application is removed first. Returns ``target``."""
    model, pipe = resolve_denoiser(target)
    family = family_of(model)
    remove(model)
    config = config if config is not None else DenseConfig()
    if isinstance(config, MethodConfig):
        method = config.build()
    elif isinstance(config, AttentionMethod):
        method, config = config, None
    else:
        raise TypeError(f"config must be an attnplug method config, got {type(config).__name__}.")
    sched = _schedule(schedule, layers, steps)

    modules = attention_modules(model)
    if not modules:
        raise TypeError(f"{type(model).__name__} has no diffusers attention modules to patch.")
    is_cross = [is_cross_attention_module(n, m) for n, m in modules]
    excluded = [any(part in n for part in family.exclude_modules) for n, _ in modules]
    self_names = [n for (n, _), c, e in zip(modules, is_cross, excluded) if not c and not e]
    selected = iter(sched.select_layers(self_names))

    runtime = Runtime(
        method=method,
        config=config,
        schedule=sched,
        state=LayoutState(family, num_steps_fn=_num_steps_fn(pipe)),
        num_layers=len(self_names),
    )
    index = 0
    wrappers = []
    for (name, module), cross, skip in zip(modules, is_cross, excluded):
        self_attn = not cross and not skip
        wrapper = AttnplugProcessor(
            method,
            module.processor,
            runtime=runtime,
            name=name,
            index=index if self_attn else -1,
            selected=next(selected) if self_attn else False,
            is_cross=cross,
        )
        index += self_attn
        module.set_processor(wrapper)
        wrappers.append((module, wrapper))
        logger.debug("attnplug: %s -> %s (selected=%s)", name, type(method).__name__, wrapper.selected)

    def pre_hook(mod, args, kwargs):
        was_step = runtime.state.step
        runtime.state.observe(mod, args, kwargs)
        if runtime.state.step == 0 and was_step != 0:
            method.reset()
        for module, wrapper in wrappers:
            if module.processor is not wrapper:
                # diffusers' loaders (IP-adapter, some LoRA paths) replace processors: wrap the new one.
                logger.info("attnplug: processor of a patched module was replaced; wrapping the new %s.",
                            type(module.processor).__name__)
                wrapper.set_stock(module.processor)
                module.set_processor(wrapper)

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    model._attnplug = _Applied(runtime, wrappers, handle)
    method.attach(model)
    logger.info(
        "attnplug: %s on %d of %d self-attention layers of %s (%s family)",
        type(method).__name__, sum(w.selected for _, w in wrappers), len(self_names), type(model).__name__,
        family.name,
    )
    return target


class _Applied:
    def __init__(self, runtime: Runtime, wrappers, handle):
        self.runtime, self.wrappers, self.handle = runtime, wrappers, handle


def remove(target):
    """Undo :func:`apply` exactly (the original processors are put back). A no-op when nothing is applied.
    Returns ``target``."""
    model, _ = resolve_denoiser(target)
    applied = model.__dict__.get("_attnplug")
    if applied is None:
        return target
    applied.runtime.method.detach(model)
    for module, wrapper in applied.wrappers:
        if module.processor is wrapper:
            module.set_processor(wrapper.stock)
    applied.handle.remove()
    del model.__dict__["_attnplug"]
    return target


@contextlib.contextmanager
def applied(target, config: MethodConfig | None = None, **kwargs) -> Iterator:
    """Context manager: :func:`apply` on entry, :func:`remove` on exit."""
    apply(target, config, **kwargs)
    try:
        yield target
    finally:
        remove(target)


def stats(target) -> dict[str, int]:
    """Counters of the applied model: attention ``calls`` intercepted, how many ran the ``method`` and how many ran
    ``dense``, and ``passthrough`` calls no SDPA could be intercepted from. Empty when nothing is applied."""
    model, _ = resolve_denoiser(target)
    applied_ = model.__dict__.get("_attnplug")
    return dict(applied_.runtime.stats) if applied_ is not None else {}


def reset_stats(target) -> None:
    """Zero the counters returned by :func:`stats`."""
    model, _ = resolve_denoiser(target)
    applied_ = model.__dict__.get("_attnplug")
    if applied_ is not None:
        applied_.runtime.stats.clear()


def method_of(target) -> AttentionMethod | None:
    """The :class:`AttentionMethod` applied to ``target`` (e.g. to read a sparsity report), or None."""
    model, _ = resolve_denoiser(target)
    applied_ = model.__dict__.get("_attnplug")
    return applied_.runtime.method if applied_ is not None else None
