"""``apply`` / ``remove`` / ``applied`` / ``stats``: what users call (see :mod:`attnplug.plugin`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .._logging import log_scope
from .._steps import pipeline_steps
from ..config import MethodConfig, Schedule, config_from_options
from ..families import family_of
from ..methods.base import AttentionMethod
from ..methods.dense import DenseConfig
from ..processors.standalone import build_method
from ..processors.stats import merge_stats
from .denoisers import resolve_denoisers
from .install import applied_on, install, plan_installation, restore_standalone, standalone_processors, uninstall
from .schedule import resolve_schedule


def apply(target, config: MethodConfig | AttentionMethod | str | None = None, /, *, schedule: Schedule | None = None,
          layers=None, steps=None, **options):
    """Run the attention method ``config`` describes (default: dense) in every denoiser of ``target`` (a pipeline,
    or a denoiser model). ``config`` may be a config, a method name with its fields (``apply(pipe, "agent",
    agents=16)``) or an :class:`~attnplug.methods.AttentionMethod`.

    Self-attention only. ``schedule`` (or the ``layers=`` indices/regex and ``steps=(start, stop)`` shortcuts) says
    which layers and denoising steps use it; without one, the method's default schedule. The steps are the
    pipeline's: all its denoisers follow one step tracker (a two-expert pipeline's ``transformer_2`` continues the
    count of ``transformer``). Everything is validated before a previous application is replaced (idempotent); an
    error while installing takes off everything installed, leaving every denoiser stock. Returns ``target``."""
    if isinstance(config, str):
        config = config_from_options(config, options)
    elif options:
        raise TypeError(
            f"apply() got method fields {sorted(options)} but config is {type(config).__name__}; give the method "
            "by name (apply(pipe, 'agent', agents=16)) or put the fields in the config."
        )
    config = config if config is not None else DenseConfig()
    denoisers, pipe = resolve_denoisers(target)
    sched = resolve_schedule(config, schedule, layers, steps)
    is_default = schedule is None and layers is None and steps is None
    plans = [plan_installation(model, build_method(config), sched, pipe) for _, model in denoisers]
    # one step tracker for the pipeline: its experts (Wan 2.2's transformer, transformer_2) count one run's steps
    steps = pipeline_steps(pipe, family_of(denoisers[0][1]).timestep_rises)
    for _, model in denoisers:
        remove(model)
    try:
        for (label, _), plan in zip(denoisers, plans):
            install(plan, sched, pipe, label, is_default, steps)
    except BaseException:
        for _, model in denoisers:  # all or nothing: a failure midway leaves every denoiser stock
            uninstall(model, conclude=False)
        raise
    return target


def remove(target):
    """Undo :func:`apply` exactly: every attnplug hook comes off every denoiser; and undo the standalone form:
    every :class:`AttnplugProcessor` set with ``set_attn_processor`` is replaced by the stock processor it ran
    inside (the module's default), so ``set_default_attn_processor`` works again. A no-op when nothing is applied.
    Returns ``target``."""
    denoisers, _ = resolve_denoisers(target)
    for _, model in denoisers:
        uninstall(model)
        restore_standalone(model)
    return target


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


def stats(target) -> dict:
    """What ran in the attention calls since :func:`apply` (or :func:`reset_stats`), over every denoiser:

    ``{"self": {"calls", "method", "stock", "reasons": {code: n}}, "cross": {...}, "passthrough": n,
    "method_report": {...}}`` — ``method`` counts calls the method computed, ``stock`` calls that ran stock attention
    with the reason code of each (see :func:`attnplug.reasons.registered`, which methods extend), and
    ``passthrough`` calls whose processor made no attention call to intercept. Standalone
    :class:`AttnplugProcessor`\\ s are counted too. Empty when nothing is applied."""
    denoisers, _ = resolve_denoisers(target)
    parts, reports = [], []
    for _, model in denoisers:
        applied_ = applied_on(model)
        if applied_ is not None:
            parts.append(applied_.runtime.stats.as_dict())
            reports.append(_report(applied_.runtime.method))
        else:
            for proc in standalone_processors(model):
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
        applied_ = applied_on(model)
        if applied_ is not None:
            applied_.runtime.stats.clear()
        for proc in standalone_processors(model):
            proc.stats.clear()


def method_of(target) -> AttentionMethod | None:
    """The :class:`~attnplug.methods.AttentionMethod` applied to ``target`` (its first denoiser), or None."""
    model = resolve_denoisers(target)[0][0][1]
    applied_ = applied_on(model)
    return applied_.runtime.method if applied_ is not None else None
