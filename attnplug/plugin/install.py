"""Install and uninstall attnplug's hooks on one denoiser. What will be installed is planned (and validated) first;
each hook is recorded as soon as it is registered, so a failure midway can be taken off exactly."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .._hook_registry import register_hook, registry, unregister_hook
from .._logging import log_once
from .._steps import TIMESTEP_NAMES, DenoisingSteps, pipeline_steps, scheduler_steps, timestep_input
from ..config import Schedule
from ..families import family_of, latent_level, training_grid
from ..layout import LayoutState
from ..methods.base import AttentionMethod
from ..processors.core import Site, backend_name
from ..processors.hooks import ATTENTION_HOOK, METHOD_HOOK, AttentionHook, Runtime, StepTracker, bind_forward
from ..processors.standalone import AttnplugProcessor, default_stock_processor
from .denoisers import attention_modules, is_cross_attention_module

logger = logging.getLogger(__name__)

# Processor classes that compute attention without scaled_dot_product_attention: nothing to intercept.
_NO_SDPA_PROCESSORS = ("AttnProcessor", "AttnAddedKVProcessor", "CustomDiffusionAttnProcessor")


_NO_SDPA_MARKERS = ("Sliced", "XFormers")


def _makes_no_sdpa_call(processor) -> bool:
    name = type(processor).__name__
    return name in _NO_SDPA_PROCESSORS or any(marker in name for marker in _NO_SDPA_MARKERS)


@dataclass
class _Installation:
    """What :func:`apply` will install on one denoiser, computed (and validated) before anything changes."""

    model: torch.nn.Module
    method: AttentionMethod
    sites: list  # (module, Site, selected, level, train_grid)
    num_layers: int


def plan_installation(model: torch.nn.Module, method: AttentionMethod, sched: Schedule, pipe=None) -> _Installation:
    family = family_of(model)
    _check_steps_known(model, sched, pipe)
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


def _check_steps_known(model: torch.nn.Module, sched: Schedule, pipe) -> None:
    """A denoiser that takes no timestep is followed one call per step, a run being as many calls as its pipeline's
    scheduler has steps. Without such a pipeline: ``ValueError`` for a schedule that counts steps (it could never
    follow a run), else one log line that every call is the next step of one run."""
    if timestep_input(model).name is not None or scheduler_steps(pipe) is not None:
        return
    name = type(model).__name__
    if not (sched.warmup_steps or sched.until_step is not None):
        log_once(logger, logging.INFO, f"{name} takes no timestep and no pipeline gives its number of steps: every "
                 "call counts as the next step of one run (apply attnplug to its pipeline to follow its runs).")
        return
    raise ValueError(
        f"{name} takes no timestep (its forward has no {' / '.join(TIMESTEP_NAMES)} parameter), so attnplug cannot "
        "tell which denoising step a call is or where a run starts, and the schedule counts steps "
        f"(warmup_steps={sched.warmup_steps!r}, until_step={sched.until_step!r}; the method's default schedule when "
        "none is given). Apply it to its pipeline (whose scheduler names the steps: one call per step), or pass "
        "schedule=attnplug.Schedule() to run the method at every step."
    )


def install(plan: _Installation, sched: Schedule, pipe, label: str, default_schedule: bool = False,
            steps: DenoisingSteps | None = None) -> None:
    """Register ``plan``'s hooks on its denoiser. Each one is recorded in the denoiser's ``Applied`` as soon as it is
    registered, so :func:`uninstall` can take off a partial installation. ``steps``: the step tracker the denoiser
    follows, the one its pipeline's denoisers share (:func:`attnplug._steps.pipeline_steps`; default: its own)."""
    model, method = plan.model, plan.method
    family = family_of(model)
    uses_steps = bool(sched.warmup_steps or sched.until_step is not None or method.uses_steps)
    if steps is None:
        steps = pipeline_steps(pipe, family.timestep_rises)
    state = LayoutState(family, steps=steps)
    runtime = Runtime(method=method, schedule=sched, state=state,
                      num_layers=plan.num_layers, uses_steps=uses_steps, default_schedule=default_schedule)
    runtime.tracker = StepTracker(runtime, model)
    done = model.__dict__["_attnplug"] = Applied(runtime)
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
        bind_steps = getattr(method_hook, "bind_steps", None)
        if callable(bind_steps):  # a model hook that follows the steps reads this runtime's tracker
            bind_steps(runtime.state.steps)
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


def _register(done: Applied, module: torch.nn.Module, hook, name: str) -> None:
    register_hook(module, hook, name)
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
class Applied:
    """What :func:`apply` installed on one denoiser, recorded as it goes (:func:`remove` undoes exactly this)."""

    runtime: Runtime
    hooks: list = field(default_factory=list)  # (module, diffusers hook, name) in registration order


def applied_on(model) -> Applied | None:
    return model.__dict__.get("_attnplug")


def uninstall(model: torch.nn.Module, conclude: bool = True) -> None:
    """Take off what :func:`install` recorded on ``model`` (also a partial installation), visiting only the modules
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


def restore_standalone(model: torch.nn.Module) -> None:
    """Put back the stock processor each standalone :class:`AttnplugProcessor` on ``model`` ran inside."""
    for _, module in attention_modules(model):
        if isinstance(module.processor, AttnplugProcessor):
            module.set_processor(default_stock_processor(module))


def standalone_processors(model) -> list[AttnplugProcessor]:
    seen = {}
    for _, module in attention_modules(model):
        if isinstance(module.processor, AttnplugProcessor):
            seen[id(module.processor)] = module.processor
    return list(seen.values())
