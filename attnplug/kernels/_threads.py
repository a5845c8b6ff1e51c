"""Worker threads whose torch ops run single-threaded, without touching the process-wide thread count.

Many small SDPA calls (the CPU block-sparse path) run fastest spread over worker threads that each run torch ops
single-threaded: with torch's intra-op threads every call ends in a thread barrier, and on a loaded machine one
descheduled thread stalls the barrier (measured on a 2-core CPU at load 10: 2.5-8x slower than workers).
``torch.set_num_threads`` cannot give that: it also sets the process-wide default (read by every thread that starts
torch work later) and races with other threads. Instead each worker thread of a persistent pool sets its *own*
OpenMP and MKL thread counts to 1 (``omp_set_num_threads`` and ``MKL_Set_Num_Threads_Local`` are per thread),
after torch's per-thread initialisation. Where those libraries are not found (non-OpenMP builds), :func:`worker_pool`
returns None and callers run their calls in the calling thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .._logging import log_once

__all__ = ["worker_pool"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, object] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # it may have been held by a thread that does not exist in the child
    _state.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _loaded_library(*names: str) -> str | None:
    """Path of an already loaded shared library whose file name contains one of ``names`` (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                base = os.path.basename(path)
                if path.startswith("/") and any(n in base for n in names):
                    return path
    except OSError:
        return None
    return None


def _thread_setters():
    """``[set_omp(n), set_mkl_local(n)]`` as ctypes functions, or None when OpenMP is not found."""
    if not torch.backends.openmp.is_available():
        return None
    torch.get_num_threads()  # make sure torch (and its OpenMP runtime) is initialised and loaded
    omp_path = _loaded_library("libgomp", "libiomp5", "libomp")
    if omp_path is None:
        return None
    try:
        setters = [ctypes.CDLL(omp_path).omp_set_num_threads]
    except (OSError, AttributeError):
        return None
    torch_cpu = _loaded_library("libtorch_cpu")
    if torch_cpu is not None and torch.backends.mkl.is_available():
        try:
            # the C entry point (``mkl_set_num_threads_local`` is an alias of the Fortran one, taking a pointer)
            setters.append(ctypes.CDLL(torch_cpu).MKL_Set_Num_Threads_Local)
        except (OSError, AttributeError):
            pass
    for fn in setters:
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return setters


def _init_worker(setters) -> None:
    torch.get_num_threads()  # torch's lazy per-thread init first: it would overwrite the counts set below
    for fn in setters:
        fn(1)


def worker_pool() -> ThreadPoolExecutor | None:
    """The process's pool of single-threaded torch workers (``os.cpu_count()`` threads, created on first use), or None
    where per-thread thread counts are not available. Shared by every caller (concurrent callers queue)."""
    pid = os.getpid()
    if _state.get("pid") == pid:  # a forked child must not reuse its parent's (dead) worker threads
        return _state["pool"]  # type: ignore[return-value]
    with _lock:
        if _state.get("pid") != pid:
            setters = _thread_setters()
            if setters is None:
                log_once(logger, logging.DEBUG, "kernels: no per-thread OpenMP control; CPU calls run in the caller")
                _state["pool"] = None
            else:
                _state["pool"] = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="attnplug-kernel",
                                                    initializer=_init_worker, initargs=(setters,))
            _state["pid"] = pid
    return _state["pool"]  # type: ignore[return-value]
