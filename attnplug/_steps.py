"""Where a denoising loop is (step, number of steps, guidance pass): the one tracker the plugin's runtime, RAU-Net
and FreeSwim's dual path all read.

The step comes from diffusers' ``CacheContext`` when the pipeline sets one with a ``step_index``
(``model.cache_context("cond", step_index=i, ...)``; its name is the guidance pass), else from the denoiser call's
timestep, read once per call: a higher timestep than the last starts a new run, a lower one is the next step and the
same one is another pass of the same step (the unconditional guidance call, or a second-order scheduler's corrector).
Families whose pipeline passes a rising timestep (Lumina's ``1 - t / 1000``, ``FamilySpec.timestep_rises``) are
followed the other way round. The timestep is the denoiser's forward parameter named in :data:`TIMESTEP_NAMES`
(diffusers' names for it: ``timestep``, HiDream-I1's ``timesteps``, Z-Image's ``t``), by keyword or position
(:func:`timestep_input`). A denoiser without one (aMUSEd's ``UVit2DModel``) counts every call as the next step (its
pipelines make one call per step) and starts a new run after as many calls as its pipeline's scheduler has steps.

The step is the pipeline's: :func:`attnplug.apply` on a pipeline gives all its denoisers one tracker
(:func:`pipeline_steps`), so on a two-expert pipeline (Wan 2.2's ``transformer`` for the high-noise steps,
``transformer_2`` for the low-noise ones) a timestep seen by either expert advances the one count, and
``transformer_2``'s first call is the step after ``transformer``'s last, also when the pipeline's ``CacheContext``
has no ``step_index`` (Wan 2.2 I2V). Each follower of a shared tracker learns that a new run started from
:attr:`DenoisingSteps.run` (a counter); what is reset per run is reset once (:meth:`DenoisingSteps.claim`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

__all__ = ["TIMESTEP_NAMES", "DenoisingSteps", "StepHook", "TimestepInput", "pipeline_steps", "scheduler_steps",
           "timestep_input", "timestep_of"]


#: The forward parameter names diffusers' denoisers take their timestep in, in order of preference.
TIMESTEP_NAMES = ("timestep", "timesteps", "t")


@dataclass(frozen=True)
class TimestepInput:
    """Where a denoiser takes its timestep: the forward parameter ``name`` (None when it takes none), its index among
    the positional arguments of a call (None when keyword-only), and whether its pipeline passes a timestep that
    rises over a run (``FamilySpec.timestep_rises``)."""

    name: str | None = "timestep"
    position: int | None = 1
    rises: bool = False

    def read(self, args: tuple, kwargs: dict) -> float | None:
        """The call's timestep (:func:`timestep_of`), None when it has none."""
        return None if self.name is None else timestep_of(args, kwargs, self.name, self.position)


def timestep_input(model: torch.nn.Module) -> TimestepInput:
    """The :class:`TimestepInput` of ``model``: the parameter of its class's ``forward`` (the class's, so hooks that
    rewrite the instance's ``forward`` do not hide it) with the first name of :data:`TIMESTEP_NAMES` it has, and the
    direction its family's row in :mod:`attnplug.families` gives (falling for a class without a row)."""
    from .families import family_of

    try:
        params = list(inspect.signature(type(model).forward).parameters.values())[1:]  # without self
    except (TypeError, ValueError):
        params = []
    try:
        rises = family_of(model).timestep_rises
    except TypeError:
        rises = False
    names = [p.name for p in params]
    name = next((n for n in TIMESTEP_NAMES if n in names), None)
    if name is None:
        return TimestepInput(None, None, rises)
    index = names.index(name)
    positional = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params[: index + 1])
    return TimestepInput(name, index if positional else None, rises)


def timestep_of(args: tuple, kwargs: dict, name: str = "timestep", position: int | None = 1) -> float | None:
    """The timestep of a denoiser call ``forward(*args, **kwargs)`` as a float (the first entry of a per-sample
    tensor), from the keyword ``name`` or the positional argument ``position``; None when the call has none. A
    tensor costs one host copy: read it once per denoiser call."""
    t = kwargs.get(name)
    if t is None and position is not None and len(args) > position:
        t = args[position]
    if isinstance(t, torch.Tensor):
        return float(t.detach().reshape(-1)[0].item()) if t.numel() else None
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return float(t)
    return None


def scheduler_steps(pipe) -> Callable[[], int | None] | None:
    """A callable giving the number of denoising steps ``pipe``'s scheduler is set for (None before
    ``set_timesteps``), or None without a pipeline. Second-order schedulers repeat timesteps: a step is a run of
    equal timesteps."""
    if pipe is None or getattr(pipe, "scheduler", None) is None:
        return None

    def num_steps() -> int | None:
        scheduler = pipe.scheduler
        n = getattr(scheduler, "num_inference_steps", None)
        if isinstance(n, int) and n > 0:
            return n
        timesteps = getattr(scheduler, "timesteps", None)
        return None if timesteps is None else len(torch.unique_consecutive(torch.as_tensor(timesteps)))

    return num_steps


@dataclass
class DenoisingSteps:
    """The position in the denoising loop: ``step`` (-1 before the first call), ``num_steps`` (None when unknown),
    ``guidance`` (the ``CacheContext`` name, None without one) and ``pass_index`` (0 for the first denoiser call of a
    step, 1 for the next, ...). ``rises``: the observed timesteps rise over a run (:class:`TimestepInput`). ``run``
    counts the runs started: whoever follows a tracker that others keep current (the experts of one pipeline) sees a
    new run as a new ``run``."""

    step: int = -1
    num_steps: int | None = None
    guidance: str | None = None
    pass_index: int = 0
    last_timestep: float | None = None
    num_steps_fn: Callable[[], int | None] | None = field(default=None, repr=False)
    rises: bool = False
    run: int = 0
    _claims: dict = field(default_factory=dict, repr=False, compare=False)  # key -> the run it was claimed in

    def claim(self, key) -> bool:
        """True the first time ``key`` (e.g. ``id`` of a method several denoisers share) asks in the current run:
        what is reset once per run is reset once, by whichever follower sees the run first."""
        if self._claims.get(key) == self.run:
            return False
        self._claims[key] = self.run
        return True

    def observe(self, timestep: float | None) -> bool:
        """Follow a denoiser call with ``timestep`` (:func:`timestep_of`); True when a new run starts (step 0).

        None (a model without a timestep) is the next step, one call per step: a run ends after the number of steps
        ``num_steps_fn`` gives (the pipeline's scheduler), and never when that is unknown."""
        last, new_run = self.last_timestep, False
        if timestep is None:
            n = self.num_steps_fn() if self.num_steps_fn is not None else None
            self.step = 0 if n is not None and self.step + 1 >= n else self.step + 1
            self.pass_index, new_run = 0, self.step == 0
        elif last is None or (timestep < last if self.rises else timestep > last):
            self.step, self.pass_index, new_run = 0, 0, True  # a new run starts at the highest noise level
        elif timestep != last:
            self.step, self.pass_index = self.step + 1, 0
        else:
            self.pass_index += 1
        self.last_timestep = timestep
        self.num_steps = self.num_steps_fn() if self.num_steps_fn is not None else None
        self.guidance = None
        self.run += int(new_run)
        return new_run

    def set_context(self, step: int, num_steps: int | None, guidance: str | None) -> bool:
        """Take the position from a pipeline's ``CacheContext``; True when a new run starts (step 0)."""
        new_run = step == 0 and (self.step != 0 or self.guidance == guidance)
        same_step = step == self.step and not new_run
        self.pass_index = self.pass_index + 1 if same_step else 0
        self.step, self.num_steps, self.guidance = step, num_steps, guidance
        self.last_timestep = None
        self.run += int(new_run)
        return new_run

    def reset(self) -> None:
        """Forget the position (the next call starts a run); ``run`` keeps counting."""
        self.step, self.num_steps, self.guidance, self.pass_index, self.last_timestep = -1, None, None, 0, None


def pipeline_steps(pipe, rises: bool = False) -> DenoisingSteps:
    """The one tracker of a pipeline's denoising runs, for all its denoisers (``pipe`` None: a bare model's): its
    number of steps comes from the pipeline's scheduler (:func:`scheduler_steps`)."""
    return DenoisingSteps(num_steps_fn=scheduler_steps(pipe), rises=rises)


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class ContextListener(StateManager):
    """A ``StateManager`` kept only to hear the pipeline's ``CacheContext``: diffusers hands the context to every
    ``StateManager`` attribute of a stateful hook (``_is_stateful``), and ``None`` when the block ends."""

    def __init__(self, on_context: Callable):
        super().__init__(_NoState)
        self._on_context = on_context

    def set_context(self, context) -> None:
        super().set_context(context)
        self._on_context(context)


class StepHook(ModelHook):
    """A diffusers hook on a denoiser that keeps a :class:`DenoisingSteps` current: from the ``CacheContext`` when
    the pipeline sets one with a step, else from the timestep before each call. ``on_new_run()`` is called when a
    run starts."""

    _is_stateful = True

    def __init__(self, steps: DenoisingSteps, on_new_run: Callable[[], None] | None = None):
        super().__init__()
        self.steps, self.on_new_run = steps, on_new_run
        self.context = ContextListener(self._on_context)
        self.timestep = TimestepInput()
        self._from_context = False

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.timestep = timestep_input(module)
        self.steps.rises = self.timestep.rises
        return module

    def _on_context(self, context) -> None:
        step = getattr(context, "step_index", None)
        self._from_context = step is not None
        if step is not None and self.steps.set_context(step, getattr(context, "num_inference_steps", None),
                                                       context.name):
            self._new_run()

    def _new_run(self) -> None:
        if self.on_new_run is not None:
            self.on_new_run()

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        if not self._from_context and self.steps.observe(self.timestep.read(args, kwargs)):
            self._new_run()
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.steps.reset()
        self._from_context = False
        return module
