"""Catch a processor's attention call at the one name it calls: a Python call per attention call, not per op.

A stock processor reaches attention through a global name of the module it is defined in:

- ``dispatch_attention_fn(query, key, value, ..., backend=..., parallel_config=...)`` on ``(B, N, H, D)`` tensors
  (Flux, Wan, LTX, HunyuanVideo, Qwen-Image, ...; bound in each module by ``from ..attention_dispatch import
  dispatch_attention_fn``);
- ``F.scaled_dot_product_attention(query, key, value, ...)`` on ``(B, H, N, D)`` tensors (``AttnProcessor2_0`` and
  the other processors of ``attention_processor.py``; ``F`` is ``torch.nn.functional``).

:func:`acquire` rebinds that name in the processor's module to a router (for ``F``: a stand-in module that is
``torch.nn.functional`` but for ``scaled_dot_product_attention``). The router hands the call to the interception
running on this thread (:data:`~.intercept.ACTIVE` ``.routed``) and passes every other call (other models, stock
layers, compiled graphs) to what it replaced, unchanged. :func:`release` binds the original again once no hook uses
the module (reference-counted per owner), so :func:`attnplug.remove` leaves diffusers exactly as it was. Owners are
held weakly: a model dropped without ``remove`` leaves its router bound (passing every call through) until the next
:func:`release`.
"""

from __future__ import annotations

import inspect
import threading
import types
import weakref

import torch
import torch.nn.functional

from .intercept import ACTIVE, SDPA_ARGS

_lock = threading.Lock()
_routes: dict[tuple[str, str], tuple] = {}  # (module, name) -> (namespace, original, router, owners)


def _dispatch_router(original):
    def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              enable_gqa=False, *args, **kwargs):
        if not torch.compiler.is_compiling():  # compiled graphs are caught by a mode traced into them
            call = ACTIVE.routed
            if call is not None:
                ACTIVE.hits += 1
                out = call[0].attend_dispatch(call, query, key, value, attn_mask, dropout_p, is_causal, scale,
                                              enable_gqa)
                if out is not None:
                    return out
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, *args, **kwargs)

    dispatch_attention_fn.__wrapped__ = original
    return dispatch_attention_fn


class _Functional(types.ModuleType):
    """``torch.nn.functional`` with ``scaled_dot_product_attention`` routed; every other name is the real one."""

    def __init__(self, functional: types.ModuleType):
        super().__init__(functional.__name__, functional.__doc__)
        self.__wrapped__ = functional
        sdpa = functional.scaled_dot_product_attention

        def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *,
                                         scale=None, enable_gqa=False):
            if not torch.compiler.is_compiling():
                call = ACTIVE.routed
                if call is not None:
                    ACTIVE.hits += 1
                    out = call[0].attend(call[1], call[2], 1, 0, query, key, value, attn_mask, dropout_p, is_causal,
                                         scale, enable_gqa)
                    if out is not None:
                        return out
            return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)

        self.scaled_dot_product_attention = scaled_dot_product_attention

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


def _takes_sdpa_arguments(fn) -> bool:
    """Whether ``fn`` takes SDPA's arguments first, in SDPA's order (what the router relies on)."""
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return names[: len(SDPA_ARGS)] == list(SDPA_ARGS)


def _routable(processor_cls: type) -> tuple[dict, str] | None:
    """``(namespace, name)``: the global through which ``processor_cls.__call__`` reaches attention, when it is one
    of the two known ones; None otherwise (the call is then caught by the function mode)."""
    call = next((vars(c)["__call__"] for c in processor_cls.__mro__ if "__call__" in vars(c)), None)
    code = getattr(call, "__code__", None)
    if code is None:
        return None
    namespace = call.__globals__
    if "dispatch_attention_fn" in code.co_names:
        fn = namespace.get("dispatch_attention_fn")
        entry = _routes.get((namespace.get("__name__"), "dispatch_attention_fn"))
        if fn is not None and (entry is not None and fn is entry[2] or _takes_sdpa_arguments(fn)):
            return namespace, "dispatch_attention_fn"
    if "F" in code.co_names and "scaled_dot_product_attention" in code.co_names:
        f = namespace.get("F")
        if f is torch.nn.functional or isinstance(f, _Functional):
            return namespace, "F"
    return None


def acquire(processor_cls: type, owner: object) -> bool:
    """Route ``processor_cls``'s attention call for ``owner`` (a hook); False when its class reaches attention some
    other way."""
    with _lock:
        found = _routable(processor_cls)
        if found is None:
            return False
        namespace, name = found
        key = (namespace.get("__name__"), name)
        entry = _routes.get(key)
        if entry is None or namespace.get(name) is not entry[2]:  # new, or rebound by someone else since
            original = namespace[name]
            if isinstance(original, _Functional):  # one left by an entry nobody released
                original = original.__wrapped__
            router = _Functional(original) if name == "F" else _dispatch_router(original)
            owners = entry[3] if entry is not None else weakref.WeakSet()
            entry = _routes[key] = (namespace, original, router, owners)
            namespace[name] = router
        entry[3].add(owner)
    return True


def release(owner: object) -> None:
    """Drop ``owner``'s use of every router; bind the original again where no owner is left."""
    with _lock:
        for key, (namespace, original, router, owners) in list(_routes.items()):
            owners.discard(owner)
            if owners:
                continue
            if namespace.get(key[1]) is router:  # not rebound by someone else since
                namespace[key[1]] = original
            del _routes[key]


def routed_names() -> list[tuple[str, str]]:
    """``(module, name)`` of every name routed now."""
    with _lock:
        return sorted(_routes)
