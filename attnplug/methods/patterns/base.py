"""The pattern protocol of the sparse video method, its plan type and the helpers every pattern shares.

A pattern turns a token layout into a :class:`Plan` once (:meth:`Pattern.plan`, cached per layout and device by
:class:`PlanCache`) and runs one call with it (:meth:`Pattern.run`). Patterns see *text-last* sequences
(:meth:`attnplug.TokenLayout.to_text_last`): the image grid first, in row-major ``frames x height x width`` order,
then the text tokens. Tensors are ``(B, H, N, D)``.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from ...layout import TokenLayout
from ..base import CallInfo
from ..dense import dense_attention

__all__ = [
    "CallSummary",
    "Pattern",
    "PatternOutput",
    "Plan",
    "PlanCache",
    "full_permutation",
    "key_padding",
    "effective_density",
    "pair_density",
    "run_block_sparse",
    "run_key_padded",
    "run_static",
    "take",
    "with_scale",
]


@dataclass(frozen=True)
class Plan:
    """What a pattern precomputes for one layout on one device (immutable, shared by threads).

    Attributes:
        layout: the (text-last) layout the plan is for.
        block: tokens per kernel block.
        perm: ``(N,)`` permutation of the text-last sequence into the pattern's order (``x[..., perm, :]``), or None
            for the identity; ``inv`` is its inverse.
        lut: the :class:`attnplug.kernels.BlockLUT` of a static pattern, None for a dynamic one.
        mask: bool block mask ``(M, M)`` the LUT lists (static patterns), None otherwise.
        density: fraction of token pairs in the LUT (text included); 1.0 when not known before the call.
        covers_all: the pattern visits every token pair, so the call is plain attention.
        details: what the report shows about the plan (tile, window, widths...).
        candidates: sub-plans a pattern chooses from per call (``heads``: ``{"spatial": Plan, "temporal": Plan}``).
    """

    layout: TokenLayout
    block: int
    perm: Tensor | None = None
    inv: Tensor | None = None
    lut: Any = None
    mask: Tensor | None = None
    density: float = 1.0
    covers_all: bool = False
    details: dict = field(default_factory=dict)
    candidates: dict[str, Plan] = field(default_factory=dict)


@dataclass(frozen=True)
class PatternOutput:
    """One call's result: ``out (B, H, N, D)`` in text-last order, the LUT density used, the density after threshold
    skipping, and per-call details for the report (e.g. ``temporal_heads``)."""

    out: Tensor
    density: float
    effective_density: float
    details: dict = field(default_factory=dict)


class Pattern(Protocol):
    """A block pattern: ``plan(layout, device) -> Plan`` once per layout, ``run(q, k, v, plan, info)`` per call.

    ``run`` takes text-last ``q, k, v (B, H, N, D)`` and a :class:`~attnplug.methods.CallInfo` whose ``scale`` is set;
    it returns a :class:`PatternOutput`. ``block_for(grid)`` gives the block size without building a plan (for the
    method's step-0 check) and raises ``ValueError`` (prefixed ``SparseVideoConfig.``) for a grid the config cannot
    handle; ``video_only`` says whether the pattern needs ``frames > 1``. A pattern holds its config, nothing else.
    """

    name: str
    video_only: bool

    def block_for(self, grid: tuple[int, int, int]) -> int: ...

    def plan(self, layout: TokenLayout, device: torch.device | str) -> Plan: ...

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo) -> PatternOutput: ...


class ConfiguredPattern:
    """What the patterns share: they hold their ``SparseVideoConfig``, and blocks are ``block_size`` tokens unless a
    pattern sizes them from the grid (tiles)."""

    def __init__(self, config):
        self.config = config

    def block_for(self, grid: tuple[int, int, int]) -> int:
        """Tokens per block (``block_size``)."""
        return self.config.block_size


class PlanCache:
    """Bounded, thread-safe LRU cache of plans keyed by ``(layout, device)``."""

    def __init__(self, maxsize: int = 16):
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, layout: TokenLayout, device, build: Callable[[TokenLayout, Any], Plan]) -> Plan:
        """The cached plan of ``(layout, device)``, built with ``build(layout, device)`` on a miss."""
        key = (layout, str(torch.device(device)))
        with self._lock:  # building under the lock: two threads never build the same plan twice
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plans[key] = build(layout, device)
                while len(self._plans) > self.maxsize:
                    self._plans.popitem(last=False)
            else:
                self._plans.move_to_end(key)
            return plan

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()


class CallSummary:
    """Bounded, thread-safe summary of a method's calls: counts and density sums per layer and per step, hand-back
    reasons, the details of up to ``max_plans`` plans. Its size depends on the model (layers, steps), not on the
    number of calls."""

    def __init__(self, max_plans: int = 16):
        self.max_plans = max_plans
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._counts: Counter = Counter()
            self._sums: Counter = Counter()
            self._by: dict[str, dict[int, list[float]]] = {"layer": {}, "step": {}}
            self._plans: dict[str, dict] = {}

    def add(self, info: CallInfo, plan: Plan | None, result: PatternOutput | None = None,
            reason: str | None = None) -> None:
        """Count one call: a sparse ``result`` of ``plan``, or a hand-back for ``reason``."""
        with self._lock:
            self._counts["calls"] += 1
            if result is None:
                self._counts[f"back:{reason}"] += 1
                return
            d, e = result.density, result.effective_density
            self._counts["sparse"] += 1
            self._sums.update(density=d, effective=e)
            for name, index in (("layer", info.layer_index), ("step", info.step)):
                g = self._by[name].setdefault(index, [0, 0.0, 0.0])
                g[0], g[1], g[2] = g[0] + 1, g[1] + d, g[2] + e
            grid = "x".join(map(str, plan.layout.grid))
            if grid in self._plans or len(self._plans) < self.max_plans:
                self._plans[grid] = {**plan.details, "block": plan.block, "lut_density": plan.density}
            det = result.details
            if "temporal_heads" in det:
                heads = det["temporal_heads"] + det["spatial_heads"]
                self._sums.update(temporal_heads=det["temporal_heads"], heads=heads)
            if "compensated_fraction" in det:
                self._counts["rectified"] += 1
                self._sums["compensated_fraction"] += det["compensated_fraction"]

    def as_dict(self) -> dict[str, Any]:
        """``calls``, ``sparse_calls``, ``handed_back`` ({reason: calls}), ``density`` / ``effective_density`` (means
        over the sparse calls; None without any), ``by_layer`` / ``by_step`` ({index: {calls, density,
        effective_density}}), ``plans`` ({"FxHxW": tile, window, block, lut_density...}) and, when they apply,
        ``temporal_head_fraction`` and ``compensated_fraction``."""
        with self._lock:
            c, s = self._counts, self._sums
            sparse = c["sparse"]
            out: dict[str, Any] = {
                "calls": c["calls"], "sparse_calls": sparse,
                "handed_back": {k[5:]: v for k, v in c.items() if k.startswith("back:")},
                "density": s["density"] / sparse if sparse else None,
                "effective_density": s["effective"] / sparse if sparse else None,
            }
            for name, groups in self._by.items():
                out[f"by_{name}"] = {
                    i: {"calls": int(g[0]), "density": g[1] / g[0], "effective_density": g[2] / g[0]}
                    for i, g in sorted(groups.items())
                }
            out["plans"] = {grid: dict(d) for grid, d in self._plans.items()}
            if s["heads"]:
                out["temporal_head_fraction"] = s["temporal_heads"] / s["heads"]
            if c["rectified"]:
                out["compensated_fraction"] = s["compensated_fraction"] / c["rectified"]
            return out


def check_kernel_blocks(block: int, tile: tuple | None, grid: tuple, device, config) -> None:
    """``ValueError`` (prefixed ``SparseVideoConfig.``) when the kernel backend chosen for ``device`` cannot run
    ``block``-token blocks (the Triton kernel needs multiples of 16 tokens; powers of two with a threshold)."""
    from ...kernels.block_sparse import choose_backend

    if choose_backend(config.backend, torch.empty(0, device=device))[0] != "triton":
        return
    from ...kernels.block_sparse.triton import kernel_config

    try:  # the head dim and dtype do not matter for the block sizes
        kernel_config(64, block, block, torch.float16, config.effective_threshold is not None)
    except ValueError as e:
        what = f"tile={tile}" if tile is not None else f"block_size={block}"
        raise ValueError(
            f"SparseVideoConfig.{what.split('=')[0]}: {what} on the token grid {tuple(grid)} gives {block}-token "
            f"blocks, which the Triton kernel cannot run ({e}). Choose a tile dividing the grid whose volume is a "
            "multiple of 16 (with a threshold: a power of two in [16, 64]), pattern='topk' or 'heads' with "
            "block_size=64, or backend='torch'."
        ) from None


def take(x: Tensor, perm: Tensor | None) -> Tensor:
    """``x (B, H, N, D)`` reordered along the tokens (``perm (N,)``), or ``x`` itself for ``None``."""
    return x if perm is None else x.index_select(2, perm)


def full_permutation(image_perm: Tensor, n_total: int) -> Tensor:
    """The ``(n_total,)`` permutation that applies ``image_perm`` to the image tokens and keeps the text last."""
    n_img = image_perm.numel()
    return torch.cat([image_perm, torch.arange(n_img, n_total, device=image_perm.device)])


def pair_density(mask: Tensor, n: int, block: int) -> float:
    """Token-pair density of a bool block mask ``(..., M, M)`` over ``n`` tokens (partial last block counted)."""
    m = mask.shape[-1]
    sizes = torch.full((m,), float(block), dtype=torch.float64)
    sizes[-1] = n - (m - 1) * block
    pairs = (mask.to(torch.float64).cpu() * sizes[:, None] * sizes[None, :]).sum((-1, -2))
    return float(pairs.mean()) / (n * n)


def run_block_sparse(q: Tensor, k: Tensor, v: Tensor, lut, scale: float, config) -> tuple[Tensor, dict | None]:
    """:func:`attnplug.kernels.block_sparse_attention` with the config's threshold and backend: ``(out, stats)``
    (``stats`` only with a threshold)."""
    from ...kernels import block_sparse_attention

    thr = config.effective_threshold
    res = block_sparse_attention(
        q, k, v, lut, scale=scale, threshold=thr, backend=config.backend, return_stats=thr is not None
    )
    return res if thr is not None else (res, None)


def effective_density(lut_density: float, stats: dict | None) -> float:
    """Density after threshold skipping: ``lut_density * (1 - skipped / visited)`` (blocks of equal size)."""
    if not stats or not stats.get("visited_blocks"):
        return lut_density
    return lut_density * (1.0 - stats.get("skipped_blocks", 0) / stats["visited_blocks"])


def run_static(q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, config) -> PatternOutput:
    """A static pattern's call: permute text-last ``q, k, v (B, H, N, D)``, run the plan's LUT, permute back."""
    out, stats = run_block_sparse(take(q, plan.perm), take(k, plan.perm), take(v, plan.perm), plan.lut, info.scale,
                                  config)
    return PatternOutput(take(out, plan.inv), plan.density, effective_density(plan.density, stats))


def key_padding(mask: Tensor, batch: int, n: int) -> Tensor | None:
    """``keep (B, N)`` bool from a boolean key-padding mask broadcastable to ``(B, 1, 1, N)``; None for other masks."""
    if mask.dtype != torch.bool or mask.shape[-1] != n or mask.dim() > 4:
        return None
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if m.shape[1] != 1 or m.shape[2] != 1 or m.shape[0] not in (1, batch):
        return None
    return m[:, 0, 0].expand(batch, n)


def run_key_padded(
    run: Callable[[Tensor, Tensor, Tensor, TokenLayout, CallInfo], PatternOutput],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: TokenLayout,
    keep: Tensor,
    info: CallInfo,
) -> PatternOutput:
    """A key-padding masked call on text-last ``q, k, v (B, H, N, D)`` and ``keep (B, N)``.

    Per group of batch rows with the same kept tokens, ``run(q, k, v, sub_layout, info)`` runs the pattern on the kept
    tokens only (a layout with fewer text tokens); the padded text queries attend densely to the kept keys, exactly
    like masked SDPA.
    """
    out = torch.empty_like(q)
    groups: dict[tuple, list[int]] = {}
    for b, row in enumerate(keep.tolist()):
        groups.setdefault(tuple(row), []).append(b)
    dens = eff = 0.0
    details: dict = {}
    for row, members in groups.items():
        sel = torch.tensor(members, device=q.device)
        kept = torch.tensor([i for i, x in enumerate(row) if x], device=q.device)
        dropped = torch.tensor([i for i, x in enumerate(row) if not x], device=q.device)
        sub = TokenLayout(*layout.grid, text_tokens=kept.numel() - layout.image_tokens)
        qs, ks, vs = (x.index_select(0, sel).index_select(2, kept) for x in (q, k, v))
        res = run(qs, ks, vs, sub, info)
        full = torch.empty(len(members), *q.shape[1:], dtype=q.dtype, device=q.device)
        full[:, :, kept] = res.out
        if dropped.numel():
            qd = q.index_select(0, sel).index_select(2, dropped)
            full[:, :, dropped] = dense_attention(qd, ks, vs, None, info.scale)
        out[sel] = full
        dens += res.density * len(members)
        eff += res.effective_density * len(members)
        details = res.details
    b = q.shape[0]
    return PatternOutput(out, dens / b, eff / b, details)


def with_scale(info: CallInfo | None, head_dim: int) -> CallInfo:
    """``info`` with its softmax ``scale`` resolved (``1 / sqrt(D)`` when None)."""
    info = info or CallInfo()
    return info if info.scale is not None else replace(info, scale=1.0 / math.sqrt(head_dim))
