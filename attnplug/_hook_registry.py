"""The one helper for diffusers' ``HookRegistry``: register a hook on a module, take it off, and leave the module as
it was before its first hook (no empty registry, no instance ``forward``). Every part of attnplug that hooks a module
(the plugin, RAU-Net, RIFLEx) goes through it, so ``remove`` leaves nothing behind."""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

__all__ = ["register_hook", "registry", "release_registry", "unregister_everywhere", "unregister_hook"]


def registry(module: torch.nn.Module) -> HookRegistry:
    """``module``'s ``HookRegistry``, created when it has none."""
    return HookRegistry.check_if_exists_or_initialize(module)


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` on ``module`` under ``name``; ``ValueError`` (diffusers') when ``name`` is taken."""
    registry(module).register_hook(hook, name)


def unregister_hook(module: torch.nn.Module, name: str, hook: ModelHook | None = None) -> None:
    """Take the hook ``name`` (only if it is ``hook``, when given) off ``module`` (not its children), then
    :func:`release_registry`. A no-op where it is absent."""
    module_reg = module.__dict__.get("_diffusers_hook")
    current = module_reg.get_hook(name) if module_reg is not None else None
    if current is not None and (hook is None or current is hook):
        module_reg.remove_hook(name, recurse=False)
    release_registry(module)


def unregister_everywhere(model: torch.nn.Module, name: str) -> None:
    """:func:`unregister_hook` ``name`` on ``model`` and every submodule that has it."""
    for module in model.modules():
        module_reg = module.__dict__.get("_diffusers_hook")
        if module_reg is not None and module_reg.get_hook(name) is not None:
            unregister_hook(module, name)


def release_registry(module: torch.nn.Module) -> None:
    """Leave ``module`` as it was before its first diffusers hook when none is left: no empty ``HookRegistry`` and
    no instance ``forward`` (removing the last hook leaves the class's forward bound in the instance)."""
    module_reg = module.__dict__.get("_diffusers_hook")
    if module_reg is None or module_reg.hooks:
        return
    del module._diffusers_hook
    forward = module.__dict__.get("forward")
    cls_forward = getattr(type(module).forward, "__func__", type(module).forward)
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is cls_forward:
        del module.__dict__["forward"]
