"""One call at a time on an applied denoiser: a second thread entering while a call is in flight is refused.

What attnplug keeps per denoiser (the step and grid of the running call, the layers' flags for that step, a method's
per-run caches) belongs to one denoising run, so two threads calling one applied pipeline at once would mix their
runs. :class:`CallGuard` makes that an error instead of a silently wrong image.
"""

from __future__ import annotations

import threading


class ConcurrentCallError(RuntimeError):
    """A denoiser with attnplug applied was called from a second thread while a call was running."""


class CallGuard:
    """Tracks which thread is inside the guarded model's forward (nested calls on that thread allowed).

    :meth:`enter` in the forward pre-hook, :meth:`exit` in a forward hook that also runs when the forward raises.
    A thread that died inside a call does not hold the model."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: threading.Thread | None = None
        self._depth = 0

    def __deepcopy__(self, memo):  # a copied model is free to run beside its original
        return CallGuard()

    def enter(self, model_name: str) -> None:
        me = threading.current_thread()
        with self._lock:
            owner = self._owner
            if owner is not me:
                if owner is not None and owner.is_alive():
                    raise ConcurrentCallError(
                        f"{model_name} (with attnplug applied) is already running a call on thread {owner.name!r}, "
                        f"and thread {me.name!r} called it too. An applied model serves one call at a time: its "
                        "step tracking, layouts and method state belong to one denoising run. Give each thread its "
                        "own pipeline (e.g. copy.deepcopy(pipe)) or serialise the calls with a lock."
                    )
                self._owner, self._depth = me, 0
            self._depth += 1

    def exit(self) -> bool:
        """Leave the call entered on this thread; False when this thread holds no call (e.g. it was refused)."""
        me = threading.current_thread()
        with self._lock:
            if self._owner is not me:
                return False
            self._depth -= 1
            if self._depth <= 0:
                self._owner, self._depth = None, 0
            return True

    @property
    def busy(self) -> bool:
        return self._owner is not None
