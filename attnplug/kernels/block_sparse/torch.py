"""CPU/MPS block-sparse attention that really skips work.

One call per query block (consecutive query blocks with identical LUT rows are merged into one call); for each,
only the listed key blocks are gathered (a zero-copy slice when they are contiguous) and attended with one
``F.scaled_dot_product_attention`` call batched over the LUT's broadcast batch/head dimensions; long unmasked rows
on the CPU go in key chunks merged by log-sum-exp (see ``CHUNK_ABOVE_KEYS``). On the CPU the calls run on a few
worker threads whose torch ops are single-threaded (:func:`attnplug.kernels._threads.worker_pool`: per-thread
OpenMP/MKL counts, never the process-wide ``torch.set_num_threads``), one cost-balanced share of query blocks per
worker, as many workers as the caller's ``torch.get_num_threads()``. An element mask is built only when the
neighbourhood or key padding actually masks something in the gathered keys.

Measured on the project's 2-core CPU (see ``benchmarks/README.md``): this plain per-query-block SDPA beat batched and
padded variants and reaches ``0.8 / density`` or better at 16k tokens for densities 0.1-1 (95 % of it at 0.05);
compiled FlexAttention is 5-55 % faster on an idle machine, after a 20-30 s compile per shape.

``threshold`` uses the kernels' rule exactly (LUT order, running row max = exclusive cumulative max of the block row
maxima); the CPU path still computes all ``Q K^T`` products of the listed blocks and drops the skipped blocks from the
softmax and ``P V`` (on the CPU the saving is small: threshold skipping is a GPU feature).

``kv_keep`` (bool ``(B|1, N_k)``, key padding) joins the element mask of every query block whose gathered keys it
restricts; a query row left without any allowed key is zero.

``damp`` (bool flags shaped like the LUT's indices, UltraViCo damping): rows without a flagged entry run the plain
path unchanged. A query block whose row flags some entries attends its unflagged key blocks with the CPU flash kernel
in key chunks (which returns the log-sum-exp; explicit float32 scores when an element mask applies or off the CPU)
and its flagged ones with explicit float32 scores whose positive values are multiplied by ``damp_factor`` (query rows
in chunks of at most ``DAMP_CHUNK_ELEMENTS`` scores); the two parts are merged exactly by log-sum-exp. With a
threshold the whole row takes explicit scores anyway, and the flagged keys are damped before the test.

Host synchronisation (this is the CPU path; on CPU tensors these are plain reads): ``lut.indices.tolist()`` and
``lut.counts.tolist()`` (and ``damp.tolist()`` when given) once per call to build the job list; per job,
``bool(mask.all())`` to drop an element mask that masks nothing (neighbourhood and/or ``kv_keep``); with
``threshold``, ``int(key_block.max())`` and the skipped count ``int((~keep).sum())`` per job. Nothing else reads
tensor values on the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._threads import worker_pool
from .lut import BlockLUT
from .masks import NeighborhoodMask

__all__ = ["CPU_WORKERS", "block_sparse_torch"]


def _gather(x: Tensor, row: list[int], block: int, n: int) -> Tensor:
    """Keys/values of the listed blocks of ``x`` ``(b, h, n, d)`` -> ``(b, h, <= len(row) * block, d)``.

    Contiguous ascending rows are sliced without a copy; the last block is cut at ``n`` (no padding).
    """
    first, last = row[0], row[-1]
    if last - first + 1 == len(row) and all(row[i + 1] == row[i] + 1 for i in range(len(row) - 1)):
        return x[:, :, first * block: min(n, (last + 1) * block)]
    full = n // block
    if max(row) < full:  # whole blocks only: copy 'block'-row chunks (10x faster than a token-level index)
        blocks = x[:, :, : full * block].unflatten(2, (full, block))
        return blocks.index_select(2, torch.tensor(row, device=x.device)).flatten(2, 3)
    index = torch.cat([torch.arange(j * block, min(n, (j + 1) * block)) for j in row]).to(x.device)
    return x.index_select(2, index)


def _key_indices(row: list[int], block: int, n: int, device: torch.device) -> Tensor:
    first, last = row[0], row[-1]
    if last - first + 1 == len(row) and all(row[i + 1] == row[i] + 1 for i in range(len(row) - 1)):
        return torch.arange(first * block, min(n, (last + 1) * block), device=device)
    return torch.cat([torch.arange(j * block, min(n, (j + 1) * block), device=device) for j in row])


def _attend_threshold(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_block: Tensor, n_blocks: int,
                      scale: float, threshold: float, damp_keys: Tensor | None = None, factor: float = 1.0
                      ) -> tuple[Tensor, int]:
    """One query block against its gathered keys with the kernels' threshold rule; returns (out, skipped blocks).
    ``damp_keys`` (bool ``(K,)``): keys whose positive scores are multiplied by ``factor`` first."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (b, h, M, K)
    if damp_keys is not None:
        s = torch.where(damp_keys & (s > 0), s * factor, s)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    # Row max of every listed block (key_block[j] = position of key j's block in the LUT row).
    s_blk = torch.full((*s.shape[:-1], n_blocks), -math.inf, dtype=s.dtype, device=s.device)
    s_blk = s_blk.scatter_reduce(-1, key_block.expand_as(s), s, reduce="amax", include_self=True)
    running = torch.cummax(s_blk, dim=-1).values
    m_prev = torch.cat([torch.full_like(running[..., :1], -math.inf), running[..., :-1]], dim=-1)
    keep = (s_blk > m_prev - threshold).any(dim=-2)  # (b, h, n_blocks): some row of the block needs it
    skipped = int((~keep).sum())
    if skipped:
        s = s.masked_fill(~keep[..., key_block].unsqueeze(-2), -math.inf)
    row_max = s.amax(-1, keepdim=True)
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
    p = torch.exp(s - row_max)
    denom = p.sum(-1, keepdim=True)
    out = torch.matmul(p, v.float()) / torch.where(denom == 0, torch.ones_like(denom), denom)
    return out.to(q.dtype), skipped


#: Unmasked rows longer than this many keys are attended in chunks of ``CHUNK_KEYS`` merged by log-sum-exp on the
#: CPU: a chunk's keys stay in cache across the SDPA kernel's 32-row query splits (measured at 16k tokens, 8192 keys
#: per 128-query block: 75 -> 82 GFLOP/s on one core).
CHUNK_ABOVE_KEYS = 2048
CHUNK_KEYS = 1024


def _sdpa_chunked(q: Tensor, k: Tensor, v: Tensor, row: list[int], block: int, n_k: int, scale: float) -> Tensor:
    """Unmasked attention of ``q`` over the listed key blocks, gathered and attended ``CHUNK_KEYS`` at a time.

    Chunks are merged exactly with the log-sum-exp the CPU flash kernel returns; computed in float32.
    """
    return _flash_chunks(q, k, v, row, block, n_k, scale)[0].to(q.dtype)


def _flash_chunks(q: Tensor, k: Tensor, v: Tensor, row: list[int], block: int, n_k: int, scale: float
                  ) -> tuple[Tensor, Tensor]:
    """:func:`_sdpa_chunked` in float32 with its log-sum-exp ``(..., M, 1)`` (CPU tensors)."""
    step = max(1, CHUNK_KEYS // block)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    acc = lse = None
    qf = q.float()
    for c in range(0, len(row), step):
        part = row[c: c + step]
        kc, vc = _gather(k, part, block, n_k), _gather(v, part, block, n_k)
        o, l_c = flash(qf, kc.float(), vc.float(), 0.0, False, scale=scale)
        o, l_c = o.float(), l_c.unsqueeze(-1)
        if acc is None:
            acc, lse = o, l_c
            continue
        merged = torch.logaddexp(lse, l_c)
        acc = acc.mul_(torch.exp(lse - merged)).add_(o.mul_(torch.exp(l_c - merged)))
        lse = merged
    return acc, lse


#: Score elements per explicit-score chunk of a damped job (``b * h * rows * keys`` float32 values).
DAMP_CHUNK_ELEMENTS = 1 << 24


def _explicit_lse(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, factor: float | None
                  ) -> tuple[Tensor, Tensor]:
    """Float32 attention of ``q (b, h, M, D)`` over gathered ``k, v`` with explicit scores, the positive ones
    multiplied by ``factor`` (None: undamped), ``mask`` (bool, broadcastable to ``(b, h, M, K)``) excluding keys;
    returns ``(out, lse (b, h, M, 1))``, ``lse = -inf`` (and out 0) on rows without an allowed key. Query rows go in
    chunks of at most :data:`DAMP_CHUNK_ELEMENTS` scores."""
    b, h, m, _ = q.shape
    n = k.shape[-2]
    kf, vf = k.float(), v.float()
    out = torch.empty(b, h, m, v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.empty(b, h, m, 1, dtype=torch.float32, device=q.device)
    rows = max(1, DAMP_CHUNK_ELEMENTS // max(1, b * h * n))
    for lo in range(0, m, rows):
        hi = min(m, lo + rows)
        s = torch.matmul(q[:, :, lo:hi].float(), kf.transpose(-1, -2)) * scale
        if factor is not None:
            s = torch.where(s > 0, s * factor, s)
        if mask is not None:
            s = s.masked_fill(~mask[..., lo:hi, :] if mask.shape[-2] != 1 else ~mask, -math.inf)
        l_c = torch.logsumexp(s, -1, keepdim=True)
        p = torch.exp(s - torch.where(torch.isneginf(l_c), torch.zeros_like(l_c), l_c))
        out[:, :, lo:hi] = torch.matmul(p, vf)
        lse[:, :, lo:hi] = l_c
    return out, lse


def _merge_lse(acc: Tensor | None, lse: Tensor | None, o: Tensor, l_c: Tensor) -> tuple[Tensor, Tensor]:
    """Exact merge of two normalised partial outputs by their log-sum-exps; rows empty in both stay 0 / -inf."""
    if acc is None:
        return o, l_c
    top = torch.maximum(lse, l_c)
    top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    wa, wb = torch.exp(lse - top), torch.exp(l_c - top)
    denom = wa + wb
    merged = (acc * wa + o * wb) / torch.where(denom == 0, torch.ones_like(denom), denom)
    return merged, top + torch.log(denom)


#: Worker threads for the CPU path (None = the caller's ``torch.get_num_threads()``). Each worker runs whole
#: query-block calls single-threaded, so no per-call thread barrier: on a loaded machine (a 2-core box at load 10)
#: barriers made this path 2.5-8x slower than with workers.
CPU_WORKERS: int | None = None


def block_sparse_torch(q: Tensor, k: Tensor, v: Tensor, lut: BlockLUT, *, neighborhood: NeighborhoodMask | None,
                       scale: float, threshold: float | None, kv_keep: Tensor | None = None,
                       damp: Tensor | None = None, damp_factor: float = 1.0) -> tuple[Tensor, int]:
    """Block-sparse attention on any torch device (inputs already validated by the dispatcher).

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``; lut: on the CPU, broadcast over B/H.
        kv_keep: optional bool ``(B|1, N_k)`` on ``k``'s device; False keys are excluded for every query.
        damp: optional bool flags shaped like ``lut.indices``, on the CPU: the positive scores of a flagged entry's
            key block are multiplied by ``damp_factor``.

    Returns:
        ``(out (B, H, N_q, D) in q.dtype, number of threshold-skipped blocks)``.

    Thread-safe: no shared mutable state and no process-wide settings (concurrent callers share the worker pool).
    """
    n_q = q.shape[2]
    n_k = k.shape[2]
    bm, bn = lut.block_m, lut.block_n
    mq = lut.num_q_blocks
    lb, lh = lut.counts.shape[:2]
    indices = lut.indices.tolist()
    counts = lut.counts.tolist()
    flags = None if damp is None else damp.tolist()
    out = torch.zeros_like(q)
    jobs = []  # (batch slice, head slice, first query block, end query block, LUT row[, damp flags of the row])
    for b in range(lb):
        bsl = slice(None) if lb == 1 else slice(b, b + 1)
        for h in range(lh):
            hsl = slice(None) if lh == 1 else slice(h, h + 1)
            rows = [indices[b][h][i][: counts[b][h][i]] for i in range(mq)]
            frows = None if flags is None else [flags[b][h][i][: counts[b][h][i]] for i in range(mq)]
            i = 0
            while i < mq:
                row = rows[i]
                j = i + 1
                if threshold is None:  # merge consecutive query blocks with identical rows into one call
                    while j < mq and rows[j] == row and (frows is None or frows[j] == frows[i]):
                        j += 1
                if row:  # an empty row leaves zeros
                    if frows is not None and any(frows[i]):
                        jobs.append((bsl, hsl, i, j, row, frows[i]))
                    else:
                        jobs.append((bsl, hsl, i, j, row))
                i = j

    def run(job) -> int:
        bsl, hsl, i, j, row = job[:5]
        q_lo, q_hi = i * bm, min(n_q, j * bm)
        q_blk = q[bsl, hsl, q_lo:q_hi]
        unmasked = neighborhood is None and kv_keep is None
        if len(job) > 5:  # a row with damped entries
            return _run_damped(q_blk, k[bsl, hsl], v[bsl, hsl], q_lo, q_hi, row, job[5], bsl, job_out=out[bsl, hsl],
                               neighborhood=neighborhood, kv_keep=kv_keep, bn=bn, n_k=n_k, scale=scale,
                               threshold=threshold, factor=damp_factor)
        if q.device.type == "cpu" and unmasked and threshold is None and len(row) * bn > CHUNK_ABOVE_KEYS:
            out[bsl, hsl, q_lo:q_hi] = _sdpa_chunked(q_blk, k[bsl, hsl], v[bsl, hsl], row, bn, n_k, scale)
            return 0
        k_blk, v_blk = _gather(k[bsl, hsl], row, bn, n_k), _gather(v[bsl, hsl], row, bn, n_k)
        mask = None
        if not unmasked:
            key_idx = _key_indices(row, bn, n_k, q.device)
            if neighborhood is not None:
                q_idx = torch.arange(q_lo, q_hi, device=q.device)
                mask = neighborhood.allowed(q_idx[:, None], key_idx[None, :])  # (M, K)
            if kv_keep is not None:
                keep = (kv_keep if kv_keep.shape[0] == 1 else kv_keep[bsl])[:, None, None, key_idx]  # (b, 1, 1, K)
                mask = keep if mask is None else mask & keep
            if bool(mask.all()):
                mask = None
        n_skip = 0
        if threshold is not None:
            key_block = _key_indices(row, bn, n_k, q.device) // bn
            position = torch.empty(int(key_block.max()) + 1, dtype=torch.long, device=q.device)
            position[torch.tensor(row, device=q.device)] = torch.arange(len(row), device=q.device)
            o, n_skip = _attend_threshold(q_blk, k_blk, v_blk, mask, position[key_block], len(row), scale, threshold)
        else:
            o = _sdpa(q_blk, k_blk, v_blk, mask, scale)
        out[bsl, hsl, q_lo:q_hi] = o
        return n_skip

    pool = worker_pool() if q.device.type == "cpu" and len(jobs) > 1 else None
    workers = 1 if pool is None else max(1, min(len(jobs), CPU_WORKERS or torch.get_num_threads()))
    if workers == 1:
        return out, sum(run(job) for job in jobs)
    shares = _balanced_shares(jobs, workers, bm, bn)
    futures = [pool.submit(lambda share=share: sum(run(job) for job in share)) for share in shares]
    return out, sum(f.result() for f in futures)


def _element_mask(row: list[int], q_lo: int, q_hi: int, bsl: slice, neighborhood: NeighborhoodMask | None,
                  kv_keep: Tensor | None, bn: int, n_k: int, device: torch.device) -> Tensor | None:
    """The neighbourhood / key-padding mask of ``row``'s gathered keys for queries ``[q_lo, q_hi)``; None when it
    masks nothing."""
    if neighborhood is None and kv_keep is None:
        return None
    key_idx = _key_indices(row, bn, n_k, device)
    mask = None
    if neighborhood is not None:
        q_idx = torch.arange(q_lo, q_hi, device=device)
        mask = neighborhood.allowed(q_idx[:, None], key_idx[None, :])  # (M, K)
    if kv_keep is not None:
        keep = (kv_keep if kv_keep.shape[0] == 1 else kv_keep[bsl])[:, None, None, key_idx]  # (b, 1, 1, K)
        mask = keep if mask is None else mask & keep
    return None if bool(mask.all()) else mask


def _run_damped(q_blk: Tensor, k: Tensor, v: Tensor, q_lo: int, q_hi: int, row: list[int], frow: list[bool],
                bsl: slice, *, job_out: Tensor, neighborhood: NeighborhoodMask | None, kv_keep: Tensor | None, bn: int,
                n_k: int, scale: float, threshold: float | None, factor: float) -> int:
    """One job whose LUT row flags some entries for damping; writes ``job_out[:, :, q_lo:q_hi]`` and returns the
    threshold-skipped blocks. Without a threshold the unflagged key blocks run the plain path (the CPU flash kernel
    with its log-sum-exp when nothing is masked), the flagged ones explicit damped scores, merged by log-sum-exp."""
    device = q_blk.device
    if threshold is not None:  # explicit scores for the whole row anyway: damp the flagged keys in place
        k_blk, v_blk = _gather(k, row, bn, n_k), _gather(v, row, bn, n_k)
        mask = _element_mask(row, q_lo, q_hi, bsl, neighborhood, kv_keep, bn, n_k, device)
        key_block = _key_indices(row, bn, n_k, device) // bn
        position = torch.empty(max(row) + 1, dtype=torch.long, device=device)
        position[torch.tensor(row, device=device)] = torch.arange(len(row), device=device)
        pos = position[key_block]
        damp_keys = torch.tensor(frow, dtype=torch.bool, device=device)[pos]
        o, n_skip = _attend_threshold(q_blk, k_blk, v_blk, mask, pos, len(row), scale, threshold, damp_keys, factor)
        job_out[:, :, q_lo:q_hi] = o
        return n_skip
    acc = lse = None
    plain = [j for j, f in zip(row, frow) if not f]
    far = [j for j, f in zip(row, frow) if f]
    for part, part_factor in ((plain, None), (far, factor)):
        if not part:
            continue
        mask = _element_mask(part, q_lo, q_hi, bsl, neighborhood, kv_keep, bn, n_k, device)
        if part_factor is None and mask is None and device.type == "cpu":
            o, l_c = _flash_chunks(q_blk, k, v, part, bn, n_k, scale)
        else:
            o, l_c = _explicit_lse(q_blk, _gather(k, part, bn, n_k), _gather(v, part, bn, n_k), mask, scale,
                                   part_factor)
        acc, lse = _merge_lse(acc, lse, o, l_c)
    job_out[:, :, q_lo:q_hi] = acc.to(q_blk.dtype)
    return 0


def _balanced_shares(jobs: list, workers: int, bm: int, bn: int) -> list[list]:
    """Splits ``jobs`` into ``workers`` lists of about equal cost (query rows x keys), largest first.

    One task per worker instead of one per query block: per-call tasks cost ~50 us each in executor hand-offs and
    GIL traffic (measured: 128 SDPA calls on 2 threads, 79 ms as tasks vs 73 ms as two static shares).
    """
    def cost(job) -> int:
        _, _, i, j, row = job[:5]
        return (j - i) * bm * len(row) * bn

    shares: list[list] = [[] for _ in range(workers)]
    loads = [0] * workers
    for job in sorted(jobs, key=cost, reverse=True):
        w = loads.index(min(loads))
        shares[w].append(job)
        loads[w] += cost(job)
    return shares


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """SDPA that returns zeros (not NaN) for query rows whose mask row is all False."""
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale).to(q.dtype)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if mask is not None:
        o = o.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return o
