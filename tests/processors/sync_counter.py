"""Count the tensor operations that would synchronise the host with a CUDA device, on any device.

Tests run on CPU tensors, where nothing really waits for a device; the counter patches the operations that would
(reading a value into Python, data-dependent output shapes, device-to-host copies) and tallies each call made from
attnplug's own code, per call site (``file:line`` of the nearest attnplug frame) and per scope::

    with SyncCounter() as sync:
        sync.watch(model)                     # after attnplug.apply: scopes per attention module and denoiser call
        forward(model, inputs)                # warm-up: plans, tables, layouts are built here
        sync.clear()
        forward(model, inputs)
        assert sync.total("self-attention") == 0, sync.report()

Scopes: ``"self-attention"`` / ``"cross-attention"`` while an attention module that attnplug hooks runs its forward,
``"denoiser"`` for the rest of a denoiser call (step tracker, layout reader), ``"outside"`` otherwise; custom ones with
:meth:`SyncCounter.scope`. Calls whose nearest non-torch frame is not attnplug's (diffusers, the test) are kept apart
as *foreign* and left out of :meth:`SyncCounter.total` unless asked for. Every tally is a Python number.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import torch

ATTENTION_HOOK = "attnplug.attention"
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS_FILE = os.path.abspath(__file__)
_STDLIB_DIR = os.path.dirname(contextlib.__file__) + os.sep


def _attnplug_dir() -> str:
    import attnplug

    return os.path.dirname(os.path.abspath(attnplug.__file__)) + os.sep


def _to_targets_cpu(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the CPU by a string (``"cpu"``, ``device="cpu"``).

    A ``torch.device`` or tensor target is taken as following the data (``x.to(q.device)``: on CUDA runs q is on the
    device and the call copies nothing back), so it is not counted; ``Tensor.cpu()`` always is."""
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, str) and torch.device(target).type == "cpu"


def _repeats_unsized(repeats: tuple, kwargs: dict) -> bool:
    """Whether a ``repeat_interleave`` call takes its repeats from a tensor without being told the output size."""
    given = kwargs.get("repeats", repeats[0] if repeats else None)
    return isinstance(given, torch.Tensor) and kwargs.get("output_size") is None


def _has_bool_index(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    if isinstance(index, (tuple, list)):
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False


class SyncCounter:
    """Patches the would-sync operations while entered and counts their calls (see the module docstring).

    Counted: ``Tensor.item``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``, ``tolist``, ``numpy``,
    ``cpu``, ``to`` with ``"cpu"`` as its target, ``nonzero`` / ``argwhere`` / one-argument ``where``,
    boolean-mask indexing and assignment (``x[mask]``, ``x[mask] = v``), ``repeat_interleave`` without
    ``output_size``, ``unique`` / ``unique_consecutive``, ``masked_select``, ``bincount``, ``equal`` / ``allclose``."""

    def __init__(self):
        self.events: Counter = Counter()  # (scope, site, op, foreign) -> calls
        self.calls: Counter = Counter()  # scope -> times entered
        self._scopes: list[str] = []
        self._saved: list[tuple[object, str, object]] = []
        self._handles: list = []
        self._local = threading.local()
        self._package = _attnplug_dir()
        self._skip_files = (os.path.join(self._package, "testing.py"),)

    # ------------------------------------------------------------------ patching

    def __enter__(self) -> SyncCounter:
        _warm_dynamo_tables()
        tensor_methods = {
            "item": None, "__bool__": None, "__int__": None, "__float__": None, "__index__": None, "tolist": None,
            "numpy": None, "cpu": None, "nonzero": None, "argwhere": None, "masked_select": None, "unique": None,
            "unique_consecutive": None, "bincount": None, "equal": None, "allclose": None,
            "to": lambda args, kwargs: _to_targets_cpu(args, kwargs),
            "repeat_interleave": lambda args, kwargs: _repeats_unsized(args[:1], kwargs),
            "__getitem__": lambda args, kwargs: _has_bool_index(args[0]),
            "__setitem__": lambda args, kwargs: _has_bool_index(args[0]),
        }
        for name, when in tensor_methods.items():
            self._patch(torch.Tensor, name, self._method_wrapper(name, getattr(torch.Tensor, name), when))
        functions = {
            "nonzero": None, "argwhere": None, "masked_select": None, "unique": None, "unique_consecutive": None,
            "bincount": None, "equal": None, "allclose": None,
            "repeat_interleave": lambda args, kwargs: _repeats_unsized(args[1:2] or args[:1], kwargs),
            "where": lambda args, kwargs: len(args) + len(kwargs) == 1,
        }
        for name, when in functions.items():
            self._patch(torch, name, self._function_wrapper(name, getattr(torch, name), when))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._unpatch()
        finally:
            _clear_dynamo_tables()  # tables built while patched would name the wrappers, not torch's own methods

    def _unpatch(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()

    def _patch(self, owner, name: str, replacement) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, replacement)

    def _method_wrapper(self, name: str, original, when: Callable | None):
        counter = self
        label = _LABELS.get(name, name)

        def wrapper(self, *args, **kwargs):
            if when is None or when(args, kwargs):
                return counter._counted(label, original, self, *args, **kwargs)
            return original(self, *args, **kwargs)

        wrapper.__name__ = name
        return wrapper

    def _function_wrapper(self, name: str, original, when: Callable | None):
        def wrapper(*args, **kwargs):
            if when is None or when(args, kwargs):
                return self._counted(f"torch.{name}", original, *args, **kwargs)
            return original(*args, **kwargs)

        wrapper.__name__ = name
        return wrapper

    def _counted(self, op: str, original, *args, **kwargs):
        if getattr(self._local, "busy", False):  # an op counted already calls this one (e.g. Tensor.unique)
            return original(*args, **kwargs)
        self._local.busy = True
        try:
            self._record(op, sys._getframe(2))
            return original(*args, **kwargs)
        finally:
            self._local.busy = False

    def _record(self, op: str, frame) -> None:
        while frame is not None:
            path = frame.f_code.co_filename
            if not (path.startswith(_TORCH_DIR) or path.startswith(_STDLIB_DIR) or path == _THIS_FILE):
                break
            frame = frame.f_back
        if frame is None:
            return
        path = os.path.abspath(frame.f_code.co_filename)
        ours = path.startswith(self._package) and path not in self._skip_files
        where = os.path.relpath(path, os.path.dirname(self._package.rstrip(os.sep))) if ours else path
        scope = self._scopes[-1] if self._scopes else "outside"
        self.events[(scope, f"{where}:{frame.f_lineno}", op, not ours)] += 1

    # ------------------------------------------------------------------ scopes

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Count the calls made inside the block under ``name`` (and count the block as one call of ``name``)."""
        self._enter(name)
        try:
            yield
        finally:
            self._exit()

    def _enter(self, name: str) -> None:
        self._scopes.append(name)
        self.calls[name] += 1

    def _exit(self) -> None:
        self._scopes.pop()

    def watch(self, model: torch.nn.Module) -> SyncCounter:
        """Scope every call of ``model`` (``"denoiser"``) and of each attention module attnplug hooks in it
        (``"self-attention"`` / ``"cross-attention"``). Call after :func:`attnplug.apply`: the denoiser's scope is
        entered before attnplug's step tracker runs and left after its post-hook."""
        for module in model.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.hooks.get(ATTENTION_HOOK) if registry is not None else None
            if hook is None:
                continue
            kind = "cross-attention" if hook.site.is_cross else "self-attention"
            self._scope_module(module, kind, prepend=False)
        self._scope_module(model, "denoiser", prepend=True)
        return self

    def _scope_module(self, module: torch.nn.Module, name: str, prepend: bool) -> None:
        def enter(*_):
            self._enter(name)

        def leave(*_):
            self._exit()

        self._handles.append(module.register_forward_pre_hook(enter, prepend=prepend))
        self._handles.append(module.register_forward_hook(leave, always_call=True))

    # ------------------------------------------------------------------ reading

    def clear(self) -> None:
        """Forget every tally (e.g. after a warm-up call)."""
        self.events.clear()
        self.calls.clear()

    def sites(self, scope: str | None = None, foreign: bool = False) -> dict[str, int]:
        """``{"file:line op": calls}`` of ``scope`` (every scope when None), attnplug's own calls (or foreign)."""
        out: Counter = Counter()
        for (s, site, op, is_foreign), n in self.events.items():
            if (scope is None or s == scope) and is_foreign == foreign:
                out[f"{site} {op}"] += n
        return dict(sorted(out.items()))

    def total(self, scope: str | None = None, foreign: bool = False) -> int:
        """Counted calls in ``scope`` (every scope when None) from attnplug's code (or foreign code)."""
        return sum(self.sites(scope, foreign).values())

    def per_call(self, scope: str) -> float:
        """Counted calls in ``scope`` per time the scope was entered."""
        return self.total(scope) / max(1, self.calls[scope])

    def report(self, scope: str | None = None) -> str:
        """One line per call site, for assertion messages."""
        calls = ", ".join(f"{name}: {n}" for name, n in sorted(self.calls.items()))
        lines = [f"would-sync calls in {scope or 'all scopes'} (scopes entered: {calls or 'none'}):"]
        lines += [f"  {n:5d}  {site}" for site, n in self.sites(scope).items()] or ["  none"]
        return "\n".join(lines)


def _zero_block_sparse_fwd(*args, **kwargs):
    """Stands in for the kernel of ``torch.ops.attnplug.block_sparse_fwd``: the op's own fake implementation (its
    output shapes), filled with zeros."""
    from attnplug.kernels.block_sparse.triton import _block_sparse_fwd_op

    return tuple(t.zero_() for t in _block_sparse_fwd_op._abstract_fn(*args, **kwargs))


def _dynamo_table_builders():
    from torch._dynamo import trace_rules

    return [f for f in (getattr(trace_rules, "get_torch_obj_rule_map", None),
                        getattr(trace_rules, "get_tensor_method", None)) if f is not None]


def _warm_dynamo_tables() -> None:
    """Build dynamo's cached tables of torch functions before any method is patched (a compile inside the counted
    block, e.g. FlexAttention's, would otherwise cache the wrappers)."""
    for build in _dynamo_table_builders():
        build()


def _clear_dynamo_tables() -> None:
    for build in _dynamo_table_builders():
        if hasattr(build, "cache_clear"):
            build.cache_clear()


def use_fake_block_sparse_kernel(monkeypatch) -> None:
    """``backend="triton"`` on CPU tensors (the interpreter's switch) with the kernel op's implementation replaced by
    zeros: the op stays the registered ``torch.library`` op (traced as one op, its fake for shapes), and only the
    Python around the kernel runs."""
    from attnplug.kernels.block_sparse.triton import _block_sparse_fwd_op

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(_block_sparse_fwd_op._backend_fns, None, _zero_block_sparse_fwd)


_MISSING = object()
_LABELS = {"__getitem__": "x[bool_mask]", "__setitem__": "x[bool_mask]=", "to": "to(cpu)"}
