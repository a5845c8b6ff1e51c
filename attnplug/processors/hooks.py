"""diffusers hooks that put attnplug around a denoiser without replacing any of its processors.

- :class:`AttentionHook` (named ``"attnplug.attention"``) on each attention module: runs the module's own forward,
  and only when this call may run the method, inside the interception (:class:`~.core.Interception`).
- :class:`StepTracker`, a forward pre-hook on the denoiser: records the token grid before each call and tracks the
  denoising step. Whether each layer runs the method at this step is decided there, eagerly, and handed to the
  attention hooks as one bool, so a compiled graph specialises on nothing but that bool.

The step comes from diffusers' ``CacheContext`` (``model.cache_context("cond", step_index=..., ...)``, set by the
pipelines) when present, else from the timestep (a repeated timestep is another pass of the same step; the input and
its direction per family: :func:`attnplug._steps.timestep_input`). All denoisers of one pipeline follow one tracker
(:func:`attnplug._steps.pipeline_steps`): a two-expert pipeline's second expert continues the first one's count.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .._logging import log_once
from .._steps import timestep_input
from ..config import Schedule
from ..layout import LayoutState, TokenLayout
from ..methods.base import AttentionMethod, CallInfo
from . import route
from .core import Interception, Site
from .guard import CallGuard
from .stats import CallStats

logger = logging.getLogger(__name__)

ATTENTION_HOOK = "attnplug.attention"
METHOD_HOOK = "attnplug.method"
_LAYOUTS = 64  # cached layouts per denoiser: (grid, length, temporal) triples, a handful per image size


@dataclass
class Runtime:
    """Everything one applied denoiser shares: the method, its schedule, the layout/step state, the counters."""

    method: AttentionMethod
    schedule: Schedule
    state: LayoutState
    num_layers: int
    stats: CallStats = field(default_factory=CallStats)
    hooks: list = field(default_factory=list)  # the AttentionHooks, in module order
    uses_steps: bool = True
    default_schedule: bool = False  # the method's own default, not one the caller gave
    interception: Interception | None = None
    tracker: StepTracker | None = None
    step_tensor: torch.Tensor | None = None  # state.step on the model's device (CallInfo.step_tensor)
    layouts: dict = field(default_factory=dict, repr=False)  # (grid, n, temporal) -> TokenLayout, eager calls

    def __post_init__(self):
        self.interception = Interception(self.method, self.stats, self.layout, self.state.family.mask_form)

    def layout(self, site: Site, n: int) -> TokenLayout:
        """The layout of an ``n``-token self-attention call of ``site`` on the current grid (built and validated
        once per (grid, n, temporal))."""
        if torch.compiler.is_compiling():  # traced once; a dict the graph reads would be guarded on
            return self._read_layout(site, n)
        key = (self.state.grid, n, site.temporal)
        layout = self.layouts.get(key)
        if layout is None:
            layout = self._read_layout(site, n)
            if len(self.layouts) >= _LAYOUTS:
                self.layouts.clear()
            self.layouts[key] = layout
        return layout

    def _read_layout(self, site: Site, n: int) -> TokenLayout:
        # the module name only in the error: reading it in a compiled graph would specialise the graph per layer
        try:
            return self.state.layout_for(n, "", site.temporal)
        except ValueError as e:
            raise ValueError(f"{site.name}: {e}") from None

    def place_step(self, device: torch.device) -> None:
        """Keep :attr:`step_tensor` on ``device`` (the model's) and hand it to every hook's CallInfo."""
        if self.step_tensor is not None and self.step_tensor.device == device:
            return
        self.step_tensor = torch.full((), self.state.step, dtype=torch.int64, device=device)
        for hook in self.hooks:
            hook.info = dataclasses.replace(hook.info, step_tensor=self.step_tensor)

    def update(self) -> None:
        """Re-decide, for the current step, which hooks run the method and what their CallInfo says."""
        state = self.state
        if self.step_tensor is not None:
            self.step_tensor.fill_(state.step)  # in place: a kernel launch, no host copy; graphs read it as input
        try:
            active_step = self.schedule.step_active(state.step, state.num_steps)
        except ValueError:
            if not self.default_schedule or state.num_steps is not None:
                raise
            # a default schedule in fractions of a run whose length is unknown (a model called without its
            # pipeline): the method runs at every step, and says so once
            log_once(logger, logging.WARNING, f"{type(self.method).__name__}'s default schedule "
                     f"{self.schedule} needs the number of denoising steps, which is unknown here (the model is "
                     "called without its pipeline); the method runs at every step. Pass schedule=... to choose.")
            active_step = True
        for hook in self.hooks:
            hook.refresh(state, active_step)


class AttentionHook(ModelHook):
    """Around one attention module: stock forward, intercepted only when this call may run the method.

    Stateful for diffusers: the pipeline's ``CacheContext`` reaches it (and so the step tracker)."""

    _is_stateful = True

    def __init__(self, runtime: Runtime, site: Site, selected: bool, level: int, train_grid):
        super().__init__()
        self.runtime, self.site, self.selected = runtime, site, selected
        self.level, self.train_grid = level, train_grid
        self.active = False
        self.kind = "cross" if site.is_cross else "self"
        self.reason = "cross-attention" if site.is_cross else "layer-not-selected"
        self.info = CallInfo()
        self.context = _ContextListener(runtime.tracker.on_context)
        self._processor_cls: type | None = None  # the processor class last seen, and whether its call is routed
        self._routed = False

    def __getstate__(self):  # a deep copy acquires its own routes (this hook's end at its remove)
        state = self.__dict__.copy()
        state["_processor_cls"], state["_routed"] = None, False
        return state

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:  # diffusers' spelling
        route.release(self)
        return module

    deinitialize_hook = deinitalize_hook

    def refresh(self, state: LayoutState, active_step: bool) -> None:
        site, runtime = self.site, self.runtime
        if site.is_cross:
            self.active = runtime.interception.overrides_cross and active_step
            self.reason = "cross-attention"
        else:
            self.active = self.selected and active_step
            self.reason = "layer-not-selected" if not self.selected else "outside-schedule"
        self.info = CallInfo(
            layer_name=site.name,
            layer_index=site.index,
            num_layers=runtime.num_layers,
            step=state.step,
            num_steps=state.num_steps,
            latent_grid=state.grid,
            level=self.level,
            train_grid=self.train_grid,
            guidance=state.guidance,
            step_tensor=runtime.step_tensor,
        )

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        forward = self.fn_ref.original_forward
        runtime = self.runtime
        if not self.active:
            runtime.stats.record(self.kind, "stock", self.reason)
            return forward(*args, **kwargs)
        info = self.info
        processor = module.processor
        if torch.compiler.is_compiling():
            if info.latent_grid != runtime.state.grid:
                info = dataclasses.replace(info, latent_grid=runtime.state.grid)
            return runtime.interception.run(self.site, info, processor, forward, args, kwargs)
        if info.latent_grid != runtime.state.grid:  # the grid changed since the step began (a new size)
            info = self.info = dataclasses.replace(info, latent_grid=runtime.state.grid)
        return runtime.interception.run(self.site, info, processor, forward, args, kwargs, self._routes(processor))

    def _routes(self, processor) -> bool:
        """Whether ``processor``'s attention call is caught at the name it calls (:mod:`.route`; decided per
        class)."""
        cls = type(processor)
        if cls is not self._processor_cls:
            self._routed = route.acquire(cls, self)
            self._processor_cls = cls
        return self._routed

    def reset_state(self, module):
        self.runtime.tracker.reset()
        return module


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class _ContextListener(StateManager):
    """Receives the pipeline's ``CacheContext`` (diffusers hands it to every StateManager of a stateful hook)."""

    def __init__(self, on_context):
        super().__init__(_NoState)
        self._on_context = on_context

    def set_context(self, context) -> None:
        super().set_context(context)
        self._on_context(context)


class StepTracker:
    """The denoiser's forward pre-hook (a torch hook, outside the hooked ``forward``): records the token grid
    before each call, follows the step, and re-decides the attention hooks' flags when the step changes."""

    def __init__(self, runtime: Runtime, model: torch.nn.Module):
        self.runtime = runtime
        self.timestep = timestep_input(model)  # where the model takes its timestep (none: each call is a step)
        self.guard = CallGuard()
        # runs also when the forward raises, so a failed call does not hold the model; removed with the tracker
        model.register_forward_hook(self.release, always_call=True)
        self.has_context = False
        self._last_context = None
        self._owner = id(model)
        self._settled = False  # judged whether the method ran (and warned if it did not)
        self._due = False  # some call was due to run the method
        self._prepared = None  # the latent grid the method last checked itself against
        self._run = runtime.state.steps.run  # the run of the step tracker this denoiser last followed

    def on_context(self, context) -> None:
        if context is self._last_context:  # every attention hook hears the same context
            return
        self._last_context = context
        runtime = self.runtime
        step = getattr(context, "step_index", None)  # diffusers < 0.42 hands a bare name, without the step
        if step is None:
            self.has_context = False
            return
        self.has_context = True
        runtime.state.steps.set_context(step, getattr(context, "num_inference_steps", None), context.name)
        self._follow_run()
        runtime.update()

    @torch.compiler.disable
    def _observe_timestep(self, args, kwargs) -> None:
        self.runtime.state.steps.observe(self.timestep.read(args, kwargs))
        self._follow_run()
        self.runtime.update()

    def _follow_run(self) -> None:
        """When the (pipeline's shared) tracker started a run since this denoiser last looked: judge the last run
        and reset the method's per-run state, once per run for a method instance several denoisers share."""
        steps = self.runtime.state.steps
        if steps.run == self._run:
            return
        self._run = steps.run
        self.conclude()
        if steps.claim(id(self.runtime.method)):
            self.runtime.method.reset()

    def __call__(self, module, args, kwargs):
        if not torch.compiler.is_compiling():
            self.guard.enter(type(module).__name__)
        if id(module) != self._owner:  # a deep copy of the applied model: bind its hooks to its own modules
            self._adopt(module)
        runtime = self.runtime
        runtime.state.observe_grid(module, args, kwargs)
        if runtime.state.grid != self._prepared:
            self._prepare(module)
        if not self.has_context and runtime.uses_steps:
            self._observe_timestep(args, kwargs)

    @torch.compiler.disable
    def _prepare(self, module) -> None:
        grid = self.runtime.state.grid
        device = next(module.parameters(), torch.empty(0)).device
        self.runtime.method.prepare(TokenLayout(*grid), None, device)
        self.runtime.place_step(device)
        self._prepared = grid

    @torch.compiler.disable
    def _adopt(self, model: torch.nn.Module) -> None:
        for module in model.modules():
            if getattr(module, "_diffusers_hook", None) is not None and module is not model:
                rebuild_forward_chain(module)
        self._owner = id(model)

    def release(self, module, args, output):
        """Forward hook (always called): the call that entered :attr:`guard` on this thread is over."""
        if not torch.compiler.is_compiling():
            self.guard.exit()

    def after(self, module, args, output):
        """Forward hook: once the method was due to run and a run is over, warn if it ran on none of it.

        A method that reads no step is judged after its first call (every step is alike); one that does, at the
        last step of a run when the number of steps is known, else when the next run starts or at ``remove``."""
        if self._settled or torch.compiler.is_compiling():
            return None
        runtime, state = self.runtime, self.runtime.state
        if any(h.active for h in runtime.hooks if not h.site.is_cross):
            self._due = True
        last_step = state.num_steps is not None and state.step >= state.num_steps - 1
        if not runtime.uses_steps or last_step:
            self.conclude(type(module).__name__)
        return None

    def conclude(self, where: str = "the denoiser") -> None:
        """Warn if the method was due to run but ran on none of the self-attention calls so far (once per
        :func:`attnplug._logging.log_scope`: a pipeline call through attnplug's pipelines, an ``applied`` block, a
        bench entry)."""
        if self._settled or not self._due:
            return
        counts = self.runtime.stats.as_dict()["self"]
        self._settled = True
        if counts["method"] == 0 and counts["stock"]:
            reasons = ", ".join(f"{code} ({n})" for code, n in counts["reasons"].items())
            log_once(logger, logging.WARNING,
                     f"{type(self.runtime.method).__name__} was due to run in {where} but ran on none of its "
                     f"{counts['calls']} self-attention calls; they ran stock attention because: {reasons}. See "
                     "attnplug.stats(...) and the method's docs.")

    def reset(self) -> None:
        self.runtime.state.reset()
        self.has_context = False
        self._last_context = None


def _intercepted_forward(module, *args, **kwargs):
    return module._diffusers_hook.hooks[ATTENTION_HOOK].new_forward(module, *args, **kwargs)


def bind_forward(module: torch.nn.Module) -> None:
    """Where attnplug's hook is the outermost of a module's diffusers hooks, make ``module.forward`` a method bound
    to the module (the same call as diffusers' rewritten forward, which is a per-module ``functools.partial``):
    dynamo guards on a partial's identity, so every block would compile its own graph under regional compilation,
    while a bound method of one shared function lets all blocks of a shape share one graph."""
    reg = getattr(module, "_diffusers_hook", None)
    if reg is not None and reg._hook_order and reg._hook_order[-1] == ATTENTION_HOOK:
        module.forward = types.MethodType(_intercepted_forward, module)


def _run_hooked(fn_ref, module, *args, **kwargs):
    args, kwargs = fn_ref.pre_forward(module, *args, **kwargs)
    return fn_ref.post_forward(module, fn_ref.forward(*args, **kwargs))


def rebuild_forward_chain(module: torch.nn.Module) -> None:
    """Re-link a module's diffusers hook chain to the module itself. ``copy.deepcopy`` copies the hooks but leaves
    the rewritten ``forward`` calling the original module's chain (it lives in a closure); this rebuilds it."""
    reg = module._diffusers_hook
    if not reg._fn_refs:
        return
    first = reg._fn_refs[0]
    base = first.original_forward if first.original_forward is not None else first.forward
    if not (isinstance(base, types.MethodType) and base.__self__ is module):
        base = types.MethodType(type(module).forward, module)
    forward = base
    for name, fn_ref in zip(reg._hook_order, reg._fn_refs):
        hook = reg.hooks[name]
        fn_ref.pre_forward, fn_ref.post_forward = hook.pre_forward, hook.post_forward
        if hasattr(hook, "new_forward"):
            fn_ref.original_forward = forward
            fn_ref.forward = functools.partial(hook.new_forward, module)
        else:
            fn_ref.forward = forward
        hook.fn_ref = fn_ref
        forward = functools.partial(_run_hooked, fn_ref, module)
    module.forward = forward
    bind_forward(module)


def registry(module: torch.nn.Module) -> HookRegistry:
    return HookRegistry.check_if_exists_or_initialize(module)
