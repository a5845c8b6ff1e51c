"""Kernels under concurrency and over many calls: two threads on different inputs give the single-thread results
exactly; no process-wide thread-count changes; caches stay bounded and memory flat."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from attnplug.kernels import BlockLUT, block_sparse_attention, neighborhood_attention
from attnplug.kernels.neighborhood import dispatch as nb_dispatch
from attnplug.kernels.neighborhood import tiles as nb_tiles
from attnplug.layout import TokenLayout
from attnplug.testing import run_concurrently

CALLS = 32


def _inputs(seed: int, grid, text: int):
    layout = TokenLayout(*grid, text_tokens=text)
    g = torch.Generator().manual_seed(seed)
    # (B, H, N, D) views of (B, N, H, D) tensors, as diffusers passes them
    q, k, v = (x.transpose(1, 2) for x in torch.randn(3, 1, layout.num_tokens, 4, 32, generator=g).unbind(0))
    return layout, q, k, v


def _run_two_threads(fn, jobs):
    """Runs ``fn(job)`` CALLS times for each job, one thread per job, started together; returns the outputs."""
    return dict(enumerate(run_concurrently([lambda job=job: [fn(job) for _ in range(CALLS)] for job in jobs])))


@pytest.mark.parametrize("backend", ["tiles", "torch"])
def test_neighborhood_two_threads_match_single_thread(backend):
    """Two threads on different inputs (same dtype, so any shared gather buffer would collide) give exactly the
    single-thread outputs on every one of their calls."""
    jobs = [(_inputs(1, (1, 24, 24), 3), (7, 7)), (_inputs(2, (1, 20, 28), 0), (5, 9))]

    def fn(job):
        (layout, q, k, v), kernel = job
        return neighborhood_attention(q, k, v, kernel, layout=layout, backend=backend, block_size=32)

    expected = [fn(job) for job in jobs]
    results = _run_two_threads(fn, jobs)
    for i, outs in results.items():
        wrong = sum(not torch.equal(o, expected[i]) for o in outs)
        assert wrong == 0, f"thread {i}: {wrong} of {len(outs)} calls differ from the single-thread result"


def test_block_sparse_torch_never_sets_the_process_thread_count(monkeypatch):
    """The CPU block-sparse path must not call torch.set_num_threads (process-wide: it races with other threads)."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    n = 1024
    mask = torch.rand(n // 64, n // 64, generator=torch.Generator().manual_seed(0)) < 0.3
    mask |= torch.eye(n // 64, dtype=torch.bool)
    lut = BlockLUT.from_block_mask(mask[None, None], 64, 64)
    q, k, v = torch.randn(3, 1, 2, n, 32).unbind(0)
    block_sparse_attention(q, k, v, lut, backend="torch")
    assert calls == []


def test_block_sparse_torch_two_threads_match_single_thread():
    n = 1024
    g = torch.Generator().manual_seed(1)
    jobs = []
    for density in (0.2, 0.5):
        mask = (torch.rand(n // 64, n // 64, generator=g) < density) | torch.eye(n // 64, dtype=torch.bool)
        lut = BlockLUT.from_block_mask(mask[None, None], 64, 64)
        jobs.append((lut, *torch.randn(3, 1, 2, n, 32, generator=g).unbind(0)))

    def fn(job):
        lut, q, k, v = job
        return block_sparse_attention(q, k, v, lut, backend="torch")

    expected = [fn(job) for job in jobs]
    for i, outs in _run_two_threads(fn, jobs).items():
        assert all(torch.equal(o, expected[i]) for o in outs), f"thread {i} differs"


def test_caches_bounded_and_memory_flat_over_1000_calls():
    """1000 calls over 100 distinct grids/windows (10 calls each, more than the caches hold): the plan and LUT
    caches stay at their bound and the process's resident memory stops growing once they are full."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    configs = [((1, 6 + i % 10, 6 + i // 10), 3 + 2 * (i % 2)) for i in range(100)]

    def call(i):
        grid, kernel = configs[i // 10]
        layout = TokenLayout(*grid, text_tokens=2)
        q = torch.randn(1, 1, layout.num_tokens, 8)
        neighborhood_attention(q, q, q, kernel, layout=layout, backend="tiles")
        if i % 10 == 0:
            neighborhood_attention(q, q, q, kernel, layout=layout, backend="torch", block_size=16)

    for i in range(300):  # fill the caches past their bound
        call(i)
    gc.collect()
    rss_warm = proc.memory_info().rss
    for i in range(300, 1000):
        call(i)
    gc.collect()
    growth = proc.memory_info().rss - rss_warm
    bound = nb_tiles.CACHE_ENTRIES
    assert len(nb_tiles._PLAN_CACHE) <= bound and len(nb_tiles._TILE_CACHE) <= bound
    assert len(nb_tiles._MASK_CACHE) <= bound and len(nb_dispatch._LUT_CACHE) <= bound
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 700 calls"


def test_worker_threads_are_single_threaded_and_the_caller_keeps_its_count():
    from attnplug.kernels._threads import worker_pool

    before = torch.get_num_threads()
    pool = worker_pool()
    if pool is None:
        pytest.skip("no per-thread OpenMP control in this torch build")
    assert pool.submit(torch.get_num_threads).result() == 1
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a new thread: the process default
    t.start()
    t.join()
    assert torch.get_num_threads() == before and seen == [before]


def _forked_call(conn):
    import attnplug.kernels.block_sparse.torch as bst

    # libgomp itself cannot run a parallel region in a forked child of a process that used one (plain SDPA hangs
    # too), so the child runs its own ops single-threaded (as DataLoader workers do) and asks for 2 kernel workers.
    torch.set_num_threads(1)
    bst.CPU_WORKERS = 2
    q, k, v = torch.randn(3, 1, 2, 1024, 32).unbind(0)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    out = block_sparse_attention(q, k, v, BlockLUT.from_block_mask(mask[None, None], 64, 64), backend="torch")
    conn.send(bool(torch.isfinite(out).all()))


def test_block_sparse_torch_works_in_a_forked_child():
    """A child forked after the parent used the worker pool runs the CPU path (its own pool, rebuilt after fork)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    q, k, v = torch.randn(3, 1, 2, 1024, 32).unbind(0)
    block_sparse_attention(q, k, v, BlockLUT.from_block_mask(torch.ones(1, 1, 16, 16, dtype=torch.bool).tril(),
                                                             64, 64), backend="torch")  # parent's pool is up
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_forked_call, args=(child,))
    proc.start()
    proc.join(60)
    alive = proc.is_alive()
    if alive:
        proc.kill()
    assert not alive and parent.poll(1) and parent.recv() is True
