"""The pattern protocol of the sparse video method, its plan type and the helpers every pattern shares.

A pattern turns a token layout into a :class:`Plan` once (:meth:`Pattern.plan`, cached per layout and device by
:class:`PlanCache`) and runs one call with it (:meth:`Pattern.run`). Patterns see *text-last* sequences
(:meth:`attnplug.TokenLayout.to_text_last`): the image grid first, in row-major ``frames x height x width`` order,
then the text tokens. Tensors are ``(B, H, N, D)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ...kernels._cache import BoundedCache
from ...layout import TokenLayout
from ..base import CallInfo

__all__ = [
    "CallSummary",
    "Pattern",
    "PatternOutput",
    "Plan",
    "PlanCache",
    "full_permutation",
    "HAND_BACK_REASONS",
    "key_padding",
    "effective_density",
    "pair_density",
    "pattern_keep",
    "run_block_sparse",
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
        perm: ``(N_p,)`` gather index of the text-last sequence into the pattern's order (``x[..., perm, :]``), or
            None for the identity; ``N_p >= N`` when the pattern pads (slots that hold no token point at token 0 and
            are masked through ``keep``). ``inv`` ``(N,)``: the position of each token in that order.
        keep: bool ``(1, N_p)``: False at padding slots (keys left out), None when nothing is padded.
        lut: the :class:`attnplug.kernels.BlockLUT` of a static pattern, None for a dynamic one.
        mask: bool block mask ``(M, M)`` the LUT lists (static patterns), None otherwise.
        density: fraction of token pairs in the LUT (text included); 1.0 when not known before the call.
        covers_all: the pattern visits every token pair, so the call is plain attention.
        details: what the report shows about the plan (tile, window, widths...).
        candidates: sub-plans a pattern chooses from per call (``heads``: ``{"spatial": Plan, "temporal": Plan}``).
        tables: device tensors a dynamic pattern indexes per call (``heads``: the candidates' orders, tables and
            densities stacked along a leading kind dimension, and the seeded row order it samples from).
    """

    layout: TokenLayout
    block: int
    perm: Tensor | None = None
    inv: Tensor | None = None
    keep: Tensor | None = None
    lut: Any = None
    mask: Tensor | None = None
    density: float = 1.0
    covers_all: bool = False
    details: dict = field(default_factory=dict)
    candidates: dict[str, Plan] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PatternOutput:
    """One call's result: ``out (B, H, N, D)`` in text-last order, the LUT density used, the density after threshold
    skipping, and per-call details for the report (e.g. ``temporal_heads``). Densities and details are Python numbers
    or 0-d device tensors (read only when the report is)."""

    out: Tensor
    density: float | Tensor
    effective_density: float | Tensor
    details: dict = field(default_factory=dict)


class Pattern(Protocol):
    """A block pattern: ``plan(layout, device) -> Plan`` once per layout, ``run(q, k, v, plan, info)`` per call.

    ``run`` takes text-last ``q, k, v (B, H, N, D)``, a :class:`~attnplug.methods.CallInfo` whose ``scale`` is set and
    an optional key padding ``keep (B, N)`` (text-last); it returns a :class:`PatternOutput` and reads nothing back to
    the host. ``block_for(grid, device)`` gives the block size without building a plan (for the method's step-0
    check) and raises ``ValueError`` (prefixed ``SparseVideoConfig.``) for a grid the config cannot handle;
    ``video_only`` says whether the pattern needs ``frames > 1``. A pattern holds its config, nothing else.
    """

    name: str
    video_only: bool

    def block_for(self, grid: tuple[int, int, int], device="cpu") -> int: ...

    def plan(self, layout: TokenLayout, device: torch.device | str) -> Plan: ...

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, keep: Tensor | None = None
            ) -> PatternOutput: ...


class ConfiguredPattern:
    """What the patterns share: they hold their ``SparseVideoConfig``, and blocks are ``block_size`` tokens unless a
    pattern sizes them from the grid (tiles)."""

    def __init__(self, config):
        self.config = config

    def block_for(self, grid: tuple[int, int, int], device="cpu") -> int:
        """Tokens per block (``block_size``)."""
        return self.config.block_size


class PlanCache:
    """Bounded, thread-safe cache of plans keyed by ``(layout, device)``.

    A lookup is a plain dict read, which ``torch.compile`` traces without a graph break; a plan is built on a miss,
    outside any graph (:class:`attnplug.kernels._cache.BoundedCache`), so the first call on a new grid runs eagerly.
    """

    def __init__(self, maxsize: int = 16):
        self.maxsize = maxsize
        self._cache = BoundedCache(maxsize)

    def get(self, layout: TokenLayout, device, build: Callable[[TokenLayout, Any], Plan]) -> Plan:
        """The cached plan of ``(layout, device)``, built with ``build(layout, device)`` on a miss."""
        return self._cache.get_or_build((layout, str(device)), lambda: build(layout, device))

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()


#: Accumulator slots of :class:`CallSummary` (one float64 vector per device; float32 on MPS).
_SLOTS = ("calls", "sparse", "density", "effective", "temporal_heads", "heads", "rectified", "compensated")
#: Hand-back reasons with a slot of their own; any other reason is counted under "other".
HAND_BACK_REASONS = ("cross-attention", "density-1", "window-covers-grid", "mask-not-key-padding", "requires-grad",
                     "other")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class CallSummary:
    """Bounded, thread-safe summary of a method's calls: counts and density sums (overall, per layer and per step),
    hand-back reasons, the details of up to ``max_plans`` plans. Its size depends on the model, not on the number of
    calls.

    The sums are device tensors updated in place, so a call never reads a value back to the host and a compiled
    graph replays the updates (no Python number for it to guard on); :meth:`as_dict` turns them into numbers.
    The per-layer and per-step breakdowns and the plan details are kept for eager calls only.
    """

    def __init__(self, max_plans: int = 16):
        self.max_plans = max_plans
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._acc: dict[str, Tensor] = {}
            self._by: dict[str, dict[int, list]] = {"layer": {}, "step": {}}
            self._plans: dict[str, dict] = {}

    def _vector(self, device) -> Tensor:
        key = str(device)
        acc = self._acc.get(key)
        if acc is None:
            dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
            acc = self._acc[key] = torch.zeros(len(_SLOTS) + len(HAND_BACK_REASONS), dtype=dtype, device=device)
        return acc

    def add(self, info: CallInfo, plan: Plan | None, result: PatternOutput | None = None,
            reason: str | None = None, device: torch.device | str = "cpu") -> None:
        """Count one call on ``device``: a sparse ``result`` of ``plan``, or a hand-back for ``reason``."""
        if _compiling():  # no lock in a graph; the in-place updates are replayed by it
            self._add(info, plan, result, reason, device, eager=False)
            return
        with self._lock:
            self._add(info, plan, result, reason, device, eager=True)

    def add_plan(self, plan: Plan) -> None:
        """Remember the details of ``plan`` (up to ``max_plans`` grids)."""
        grid = "x".join(map(str, plan.layout.grid))
        if grid in self._plans or len(self._plans) < self.max_plans:
            self._plans[grid] = {**plan.details, "block": plan.block, "lut_density": plan.density}

    def _add(self, info, plan, result, reason, device, eager: bool) -> None:
        acc = self._vector(result.out.device if result is not None else device)
        acc[0] += 1
        if result is None:
            slot = HAND_BACK_REASONS.index(reason) if reason in HAND_BACK_REASONS else len(HAND_BACK_REASONS) - 1
            acc[len(_SLOTS) + slot] += 1
            return
        d, e, det = result.density, result.effective_density, result.details
        acc[1] += 1
        acc[2] += d
        acc[3] += e
        if "temporal_heads" in det:
            acc[4] += det["temporal_heads"]
            acc[5] += det["temporal_heads"] + det["spatial_heads"]
        if "compensated_fraction" in det:
            acc[6] += 1
            acc[7] += det["compensated_fraction"]
        if eager:
            for name, index in (("layer", info.layer_index), ("step", info.step)):
                g = self._by[name].setdefault(index, [0, 0.0, 0.0])
                g[0], g[1], g[2] = g[0] + 1, g[1] + d, g[2] + e
            self.add_plan(plan)

    def as_dict(self) -> dict[str, Any]:
        """``calls``, ``sparse_calls``, ``handed_back`` ({reason: calls}), ``density`` / ``effective_density`` (means
        over the sparse calls; None without any), ``by_layer`` / ``by_step`` ({index: {calls, density,
        effective_density}}, eager calls), ``plans`` ({"FxHxW": tile, window, block, lut_density...}) and, when they
        apply, ``temporal_head_fraction`` and ``compensated_fraction``. Reads the device sums (a host sync)."""
        with self._lock:
            total = [0.0] * (len(_SLOTS) + len(HAND_BACK_REASONS))
            for acc in self._acc.values():
                total = [a + b for a, b in zip(total, acc.tolist())]
            c = dict(zip(_SLOTS, total))
            reasons = dict(zip(HAND_BACK_REASONS, total[len(_SLOTS):]))
            sparse = int(c["sparse"])
            out: dict[str, Any] = {
                "calls": int(c["calls"]), "sparse_calls": sparse,
                "handed_back": {k: int(v) for k, v in reasons.items() if v},
                "density": c["density"] / sparse if sparse else None,
                "effective_density": c["effective"] / sparse if sparse else None,
            }
            for name, groups in self._by.items():
                out[f"by_{name}"] = {
                    i: {"calls": int(g[0]), "density": float(g[1]) / g[0], "effective_density": float(g[2]) / g[0]}
                    for i, g in sorted(groups.items())
                }
            out["plans"] = {grid: dict(d) for grid, d in self._plans.items()}
            if c["heads"]:
                out["temporal_head_fraction"] = c["temporal_heads"] / c["heads"]
            if c["rectified"]:
                out["compensated_fraction"] = c["compensated"] / c["rectified"]
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
            f"blocks, which the Triton kernel cannot run ({e}). Choose a block_size that is a multiple of 16 (with a "
            "threshold: a power of two in [16, 64]; 'tiles' with a threshold: a tile of at most 64 tokens), or "
            "backend='torch'."
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


def run_block_sparse(q: Tensor, k: Tensor, v: Tensor, lut, scale: float, config,
                     kv_keep: Tensor | None = None, damp: Tensor | None = None,
                     damp_factor: float = 1.0) -> tuple[Tensor, dict | None]:
    """:func:`attnplug.kernels.block_sparse_attention` with the config's threshold and backend: ``(out, stats)``
    (``stats`` only with a threshold); ``kv_keep (B|1, N)`` leaves out padded keys; ``damp`` (bool, shaped like
    ``lut.indices``) flags the LUT entries whose positive scores ``damp_factor`` multiplies (UltraViCo damping)."""
    from ...kernels import block_sparse_attention

    thr = config.effective_threshold
    extra = {} if damp is None else {"damp": damp, "damp_factor": damp_factor}
    res = block_sparse_attention(
        q, k, v, lut, scale=scale, threshold=thr, kv_keep=kv_keep, backend=config.backend,
        return_stats=thr is not None, **extra,
    )
    return res if thr is not None else (res, None)


def effective_density(lut_density: float | Tensor, stats: dict | None) -> float | Tensor:
    """Density after threshold skipping: ``lut_density * (1 - skipped / visited)`` (blocks of equal size); a device
    tensor when the statistics are."""
    if not stats:
        return lut_density
    visited = stats["visited_blocks"]
    return lut_density * (1.0 - stats["skipped_blocks"] / visited.clamp(min=1))


def pattern_keep(plan: Plan, keep: Tensor | None) -> Tensor | None:
    """Key validity ``(B|1, N_p)`` in the plan's order: the plan's padding slots and the text-last key padding ``keep
    (B, N)`` (None: no padding), combined on the device."""
    if keep is None:
        return plan.keep
    out = keep if plan.perm is None else keep.index_select(1, plan.perm)
    return out if plan.keep is None else out & plan.keep


def run_static(q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, config,
               keep: Tensor | None = None, damp_factor: float = 1.0) -> PatternOutput:
    """A static pattern's call: reorder text-last ``q, k, v (B, H, N, D)`` into the plan's order (with its padding
    slots), run the plan's LUT with ``keep (B, N)`` key padding (None: none), and return to text-last order. A plan
    whose ``tables`` hold ``"damp"`` (bool flags shaped like its LUT's indices) runs damped by ``damp_factor``."""
    out, stats = run_block_sparse(take(q, plan.perm), take(k, plan.perm), take(v, plan.perm), plan.lut, info.scale,
                                  config, pattern_keep(plan, keep), plan.tables.get("damp"), damp_factor)
    return PatternOutput(take(out, plan.inv), plan.density, effective_density(plan.density, stats))


def key_padding(mask: Tensor, batch: int, n: int) -> Tensor | None:
    """``keep (B, N)`` bool from a boolean key-padding mask broadcastable to ``(B, 1, 1, N)``; None for other masks
    (decided from the shape and dtype only)."""
    if mask.dtype != torch.bool or mask.shape[-1] != n or mask.dim() > 4:
        return None
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if m.shape[1] != 1 or m.shape[2] != 1 or m.shape[0] not in (1, batch):
        return None
    return m[:, 0, 0].expand(batch, n)


def with_scale(info: CallInfo | None, head_dim: int) -> CallInfo:
    """``info`` with its softmax ``scale`` resolved (``1 / sqrt(D)`` when None).

    Built field by field from the fields a pattern reads, not with ``dataclasses.replace``: copying every field would
    read the Python step, and a compiled graph would guard on it (a new graph per step)."""
    info = info or CallInfo()
    if info.scale is not None:
        return info
    step = -1 if info.step_tensor is not None and torch.compiler.is_compiling() else info.step
    return CallInfo(layer_index=info.layer_index, num_layers=info.num_layers, scale=1.0 / math.sqrt(head_dim),
                    step=step, step_tensor=info.step_tensor, level=info.level)
