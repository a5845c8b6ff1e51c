"""``apply`` / ``remove`` / ``applied`` / ``stats``: put attnplug's hooks on every denoiser of a pipeline and take
them off exactly. No processor is replaced: the stock ones stay where they are (see :mod:`attnplug.processors`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ._logging import log_scope
from .config import MethodConfig, Schedule, config_from_options
from .layout import LayoutState, family_of, latent_level, training_grid
from .methods.base import AttentionMethod
from .methods.dense import DenseConfig
from .processors.core import Site, backend_name
from .processors.hooks import (
    ATTENTION_HOOK,
    METHOD_HOOK,
    AttentionHook,
    Runtime,
    StepTracker,
    bind_forward,
    registry,
)
from .processors.standalone import AttnplugProcessor, build_method, default_stock_processor
from .processors.stats import merge_stats

logger = logging.getLogger(__name__)

_DENOISER_ATTRS = ("transformer", "transformer_2", "unet", "unet_2", "prior", "decoder")
_CROSS_NAMES = ("attn2", "attn_cross", "cross_attn", "cross_attention")
# Processor classes that compute attention without scaled_dot_product_attention: nothing to intercept.
_NO_SDPA_PROCESSORS = ("AttnProcessor", "AttnAddedKVProcessor", "CustomDiffusionAttnProcessor")
_NO_SDPA_MARKERS = ("Sliced", "XFormers")


def _is_denoiser(obj) -> bool:
    if not isinstance(obj, torch.nn.Module):
        return False
    try:
        family_of(obj)
    except TypeError:
        return False
    return True


def resolve_denoisers(target) -> tuple[list[tuple[str, torch.nn.Module]], object | None]:
    """``([(component name, denoiser), ...], pipeline or None)`` for a pipeline (every denoiser component:
    ``transformer``, ``transformer_2``, ``unet``, ...) or for one denoiser model."""
    if isinstance(target, torch.nn.Module):
        family_of(target)  # TypeError naming the class and the supported ones
        return [("", target)], None
    found = []
    names = list(_DENOISER_ATTRS) + [n for n in getattr(target, "components", {}) or {} if n not in _DENOISER_ATTRS]
    for name in names:
        model = getattr(target, name, None)
        if _is_denoiser(model) and all(model is not m for _, m in found):
            found.append((name, model))
    if not found:
        raise TypeError(
            f"attnplug.apply expects a diffusers pipeline with a denoiser (`transformer`, `transformer_2`, `unet`) "
            f"of a supported family, or a denoiser model, got {type(target).__name__}."
        )
    return found, target


def resolve_denoiser(target) -> tuple[torch.nn.Module, object | None]:
    """``(first denoiser, pipeline or None)``; see :func:`resolve_denoisers`."""
    found, pipe = resolve_denoisers(target)
    return found[0][1], pipe


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """All diffusers attention modules (those with a settable processor) of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def is_cross_attention_module(name: str, module: torch.nn.Module) -> bool:
    """Whether an attention module attends from image tokens to a separate (text/image-prompt) sequence."""
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return bool(flag)
    return name.rsplit(".", 1)[-1] in _CROSS_NAMES


def _makes_no_sdpa_call(processor) -> bool:
    name = type(processor).__name__
    return name in _NO_SDPA_PROCESSORS or any(marker in name for marker in _NO_SDPA_MARKERS)


def _schedule(config, schedule: Schedule | None, layers, steps) -> Schedule:
    if schedule is not None and (layers is not None or steps is not None):
        raise ValueError("Give either schedule=Schedule(...) or the layers=/steps= shortcuts, not both.")
    if schedule is not None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an attnplug.Schedule, got {type(schedule).__name__}.")
        return schedule
    if layers is None and steps is None:
        if isinstance(config, AttentionMethod):  # a method instance: its config's default, if it has one
            config = getattr(config, "config", None)
        default = config.default_schedule() if isinstance(config, MethodConfig) else None
        return default if default is not None else Schedule()
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
        if stop is not None and not isinstance(stop, float) and stop <= start:
            raise ValueError(f"steps=({start}, {stop}) selects no step: stop must be greater than start.")
        kwargs.update(warmup_steps=int(start), until_step=stop)
    return Schedule(**kwargs)


def _num_steps_fn(pipe):
    if pipe is None or getattr(pipe, "scheduler", None) is None:
        return None

    def num_steps():
        scheduler = pipe.scheduler
        n = getattr(scheduler, "num_inference_steps", None)
        if isinstance(n, int) and n > 0:
            return n
        timesteps = getattr(scheduler, "timesteps", None)
        # second-order schedulers repeat timesteps; a step is a distinct timestep
        return None if timesteps is None else len(set(torch.as_tensor(timesteps).tolist()))

    return num_steps


@dataclass
class _Installation:
    """What :func:`apply` will install on one denoiser, computed (and validated) before anything changes."""

    model: torch.nn.Module
    method: AttentionMethod
    sites: list  # (module, Site, selected, level, train_grid)
    num_layers: int


def _installation(model: torch.nn.Module, method: AttentionMethod, sched: Schedule) -> _Installation:
    family = family_of(model)
    modules = attention_modules(model)
    if not modules:
        raise TypeError(f"{type(model).__name__} has no diffusers attention modules to patch.")
    is_cross = [is_cross_attention_module(n, m) for n, m in modules]
    excluded = [any(part in n for part in family.exclude_modules) for n, _ in modules]
    self_names = [n for (n, _), c, e in zip(modules, is_cross, excluded) if not c and not e]
    selected = iter(sched.select_layers(self_names))
    levels = {n: latent_level(model, n) for n in self_names}
    finest = min((lv for lv in levels.values() if lv is not None), default=0)
    sites, index = [], 0
    for (name, module), cross, skip in zip(modules, is_cross, excluded):
        if skip:
            continue
        temporal = any(part in name for part in family.temporal_modules)
        lv = levels.get(name)
        level = (lv - finest) if lv is not None else 0
        grid = training_grid(model, lv or 0) if not temporal else None
        if cross:
            sites.append((module, Site(name, -1, True, temporal), False, level, grid))
        else:
            chosen = next(selected)
            sites.append((module, Site(name, index, False, temporal), chosen, level, grid))
            index += 1
    no_sdpa = sorted({type(m.processor).__name__ for m, site, chosen, *_ in sites if chosen
                      and _makes_no_sdpa_call(m.processor)})
    if no_sdpa:
        raise ValueError(
            f"{type(model).__name__} has selected attention modules whose processors ({', '.join(no_sdpa)}) make no "
            "scaled_dot_product_attention call (attention slicing, xformers or the legacy AttnProcessor), so "
            "attnplug's method could not run there. Call pipe.disable_attention_slicing() / "
            "disable_xformers_memory_efficient_attention() or model.set_attn_processor(AttnProcessor2_0()) first."
        )
    return _Installation(model, method, sites, len(self_names))


def apply(target, config: MethodConfig | AttentionMethod | str | None = None, /, *, schedule: Schedule | None = None,
          layers=None, steps=None, **options):
    """Run the attention method ``config`` describes (default: dense) in every denoiser of ``target`` (a pipeline,
    or a denoiser model). ``config`` may be a config, a method name with its fields (``apply(pipe, "agent",
    agents=16)``) or an :class:`~attnplug.methods.AttentionMethod`.

    Self-attention only. ``schedule`` (or the ``layers=`` indices/regex and ``steps=(start, stop)`` shortcuts) says
    which layers and denoising steps use it; without one, the method's default schedule. Everything is validated
    before a previous application is replaced (idempotent); an error while installing takes off everything installed,
    leaving every denoiser stock. Returns ``target``."""
    if isinstance(config, str):
        config = config_from_options(config, options)
    elif options:
        raise TypeError(
            f"apply() got method fields {sorted(options)} but config is {type(config).__name__}; give the method "
            "by name (apply(pipe, 'agent', agents=16)) or put the fields in the config."
        )
    config = config if config is not None else DenseConfig()
    denoisers, pipe = resolve_denoisers(target)
    sched = _schedule(config, schedule, layers, steps)
    is_default = schedule is None and layers is None and steps is None
    plans = [_installation(model, build_method(config), sched) for _, model in denoisers]
    for _, model in denoisers:
        remove(model)
    try:
        for (label, _), plan in zip(denoisers, plans):
            _install(plan, sched, pipe, label, is_default)
    except BaseException:
        for _, model in denoisers:  # all or nothing: a failure midway leaves every denoiser stock
            _uninstall(model, conclude=False)
        raise
    return target


def _install(plan: _Installation, sched: Schedule, pipe, label: str, default_schedule: bool = False) -> None:
    """Register ``plan``'s hooks on its denoiser. Each one is recorded in the denoiser's ``_Applied`` as soon as it is
    registered, so :func:`_uninstall` can take off a partial installation."""
    model, method = plan.model, plan.method
    family = family_of(model)
    uses_steps = bool(sched.warmup_steps or sched.until_step is not None or method.uses_steps)
    runtime = Runtime(method=method, schedule=sched, state=LayoutState(family, num_steps_fn=_num_steps_fn(pipe)),
                      num_layers=plan.num_layers, uses_steps=uses_steps, default_schedule=default_schedule)
    runtime.tracker = StepTracker(runtime, model)
    done = model.__dict__["_attnplug"] = _Applied(runtime)
    for module, site, chosen, level, grid in plan.sites:
        hook = AttentionHook(runtime, site, chosen, level, grid)
        _register(done, module, hook, ATTENTION_HOOK)
        bind_forward(module)
        runtime.hooks.append(hook)
        logger.debug("%s -> %s (selected=%s, level=%d)", site.name, type(method).__name__, chosen, level)
    model.register_forward_pre_hook(runtime.tracker, with_kwargs=True, prepend=True)
    model.register_forward_hook(runtime.tracker.after)
    method_hook = method.model_hook()
    if method_hook is not None:
        _register(done, model, method_hook, METHOD_HOOK)
    if hasattr(model, "_diffusers_hook"):
        registry(model).invalidate_child_registries_cache()
    runtime.update()
    _log_backends(model, plan)
    logger.info(
        "%s on %d of %d self-attention layers of %s%s (%s family)",
        type(method).__name__, sum(chosen for _, _, chosen, _, _ in plan.sites), plan.num_layers,
        type(model).__name__, f" ({label})" if label else "", family.name,
    )


def _register(done: _Applied, module: torch.nn.Module, hook, name: str) -> None:
    registry(module).register_hook(hook, name)
    done.hooks.append((module, hook, name))


def _log_backends(model, plan: _Installation) -> None:
    """One log line when the method's layers bypass an attention backend the user chose."""
    backends = {backend_name(module.processor._attention_backend) for module, _, chosen, _, _ in plan.sites
                if chosen and hasattr(module.processor, "_attention_backend")}
    backends -= {None, "native"}
    if backends:
        logger.info(
            "attention backend %s bypassed in the selected layers of %s while the method runs (native SDPA there); "
            "every other call keeps it", ", ".join(sorted(backends)), type(model).__name__,
        )


@dataclass
class _Applied:
    """What :func:`apply` installed on one denoiser, recorded as it goes (:func:`remove` undoes exactly this)."""

    runtime: Runtime
    hooks: list = field(default_factory=list)  # (module, diffusers hook, name) in registration order


def _applied(model) -> _Applied | None:
    return model.__dict__.get("_attnplug")


def remove(target):
    """Undo :func:`apply` exactly: every attnplug hook comes off every denoiser; and undo the standalone form:
    every :class:`AttnplugProcessor` set with ``set_attn_processor`` is replaced by the stock processor it ran
    inside (the module's default), so ``set_default_attn_processor`` works again. A no-op when nothing is applied.
    Returns ``target``."""
    denoisers, _ = resolve_denoisers(target)
    for _, model in denoisers:
        _uninstall(model)
        _restore_standalone(model)
    return target


def _restore_standalone(model: torch.nn.Module) -> None:
    """Put back the stock processor each standalone :class:`AttnplugProcessor` on ``model`` ran inside."""
    for _, module in attention_modules(model):
        if isinstance(module.processor, AttnplugProcessor):
            module.set_processor(default_stock_processor(module))


def _uninstall(model: torch.nn.Module, conclude: bool = True) -> None:
    """Take off what :func:`_install` recorded on ``model`` (also a partial installation), visiting only the modules
    it hooked."""
    done = model.__dict__.pop("_attnplug", None)
    if done is None:
        return
    tracker = done.runtime.tracker
    if conclude:
        tracker.conclude(type(model).__name__)
    for key in [k for k, v in model._forward_pre_hooks.items() if v is tracker]:
        del model._forward_pre_hooks[key]
        model._forward_pre_hooks_with_kwargs.pop(key, None)
    for key in [k for k, v in model._forward_hooks.items() if getattr(v, "__self__", None) is tracker]:
        del model._forward_hooks[key]
    for module, hook, name in reversed(done.hooks):
        unregister_hook(module, name, hook)
    if hasattr(model, "_diffusers_hook"):
        registry(model).invalidate_child_registries_cache()


def unregister_hook(module: torch.nn.Module, name: str, hook=None) -> None:
    """Take the diffusers hook ``name`` (only if it is ``hook``, when given) off ``module`` (not its children), then
    :func:`release_registry`."""
    current = getattr(module, "_diffusers_hook", None) and module._diffusers_hook.get_hook(name)
    if current is not None and (hook is None or current is hook):
        module._diffusers_hook.remove_hook(name, recurse=False)
    release_registry(module)


def release_registry(module: torch.nn.Module) -> None:
    """Leave ``module`` as it was before its first diffusers hook when none is left: no empty ``HookRegistry`` and
    no instance ``forward`` (removing the last hook leaves the class's forward bound in the instance)."""
    module_reg = getattr(module, "_diffusers_hook", None)
    if module_reg is None or module_reg.hooks:
        return
    del module._diffusers_hook
    forward = module.__dict__.get("forward")
    cls_forward = getattr(type(module).forward, "__func__", type(module).forward)
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is cls_forward:
        del module.__dict__["forward"]


@contextlib.contextmanager
def applied(target, config: MethodConfig | str | None = None, **kwargs) -> Iterator:
    """Context manager: :func:`apply` on entry, :func:`remove` on exit (also when the body raises). A degraded mode is
    logged once per block (:func:`attnplug._logging.log_scope`)."""
    with log_scope():
        apply(target, config, **kwargs)
        try:
            yield target
        finally:
            remove(target)


def _standalone_processors(model) -> list[AttnplugProcessor]:
    seen = {}
    for _, module in attention_modules(model):
        if isinstance(module.processor, AttnplugProcessor):
            seen[id(module.processor)] = module.processor
    return list(seen.values())


def stats(target) -> dict:
    """What ran in the attention calls since :func:`apply` (or :func:`reset_stats`), over every denoiser:

    ``{"self": {"calls", "method", "stock", "reasons": {code: n}}, "cross": {...}, "passthrough": n,
    "method_report": {...}}`` — ``method`` counts calls the method computed, ``stock`` calls that ran stock attention
    with the reason code of each (see :data:`attnplug.processors.stats.REASONS`; methods add their own), and
    ``passthrough`` calls whose processor made no attention call to intercept. Standalone
    :class:`AttnplugProcessor`\\ s are counted too. Empty when nothing is applied."""
    denoisers, _ = resolve_denoisers(target)
    parts, reports = [], []
    for _, model in denoisers:
        applied_ = _applied(model)
        if applied_ is not None:
            parts.append(applied_.runtime.stats.as_dict())
            reports.append(_report(applied_.runtime.method))
        else:
            for proc in _standalone_processors(model):
                parts.append(proc.stats.as_dict())
                reports.append(_report(proc.method))
    if not parts:
        return {}
    out = merge_stats(parts)
    out["method_report"] = reports[0] if len(reports) == 1 else {f"denoiser_{i}": r for i, r in enumerate(reports)}
    return out


def _report(method) -> dict:
    report = getattr(method, "report", None)
    value = report() if callable(report) else {}
    return value if isinstance(value, dict) else {"records": value}


def reset_stats(target) -> None:
    """Zero the counters returned by :func:`stats`."""
    denoisers, _ = resolve_denoisers(target)
    for _, model in denoisers:
        applied_ = _applied(model)
        if applied_ is not None:
            applied_.runtime.stats.clear()
        for proc in _standalone_processors(model):
            proc.stats.clear()


def method_of(target) -> AttentionMethod | None:
    """The :class:`~attnplug.methods.AttentionMethod` applied to ``target`` (its first denoiser), or None."""
    model, _ = resolve_denoiser(target)
    applied_ = _applied(model)
    return applied_.runtime.method if applied_ is not None else None
