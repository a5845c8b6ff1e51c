"""Sparse video attention for video DiTs: block-sparse patterns for full 3D attention over frames x height x width.

Every pattern ends in one call of :func:`attnplug.kernels.block_sparse_attention` with a :class:`BlockLUT`:

- ``tiles`` — sliding tile attention (STA): tokens permuted into tile-major order so a tile is one block; each query
  tile visits the key tiles of a 3D window (in tiles) around it. Every block is full or empty.
- ``heads`` — Sparse VideoGen: per head, a *spatial* mask (frames near the query's frames, frame-major order) or a
  *temporal* mask (spatial positions near the query's, token-major order so it is block-dense), chosen online per
  layer and step by sampling query rows and comparing each candidate's output with full attention on them.
- ``topk`` — dynamic selection of the key blocks with the largest mean-pooled Q/K scores (top-k per query block or a
  cumulative mass), with Rectified SpaAttn's rectification: kept blocks re-weighted by their estimated share of the
  mass and skipped blocks' estimated contribution added back where the pooling gain beats the pooling error.
- ``threshold`` — all blocks, with the kernel's in-flight score-threshold skipping (BLASST). ``threshold=`` also
  works on top of every other pattern.

Common: a density target, dense warm-up steps, dense first/last layers, text tokens always global (text is moved
last, its blocks visit and are visited by every block), a per-call report (:meth:`SparseVideoMethod.report`), and
determinism given ``seed``. Tensors are ``(B, H, N, D)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._logging import log_once
from ..config import MethodConfig, help_field
from ..layout import TokenLayout
from ..processors.wrapper import AttnplugProcessor
from .base import AttentionMethod, CallInfo
from .dense import dense_attention
from .patterns.common import add_global_blocks, block_token_mask, inverse_permutation, lut_from_block_mask
from .patterns.heads import band_block_mask, band_width_for_density, head_coords, head_permutation, profile_heads
from .patterns.threshold import DEFAULT_THRESHOLD, effective_density, locality_priority
from .patterns.tiles import fit_tile, tile_block_mask, tile_grid, tile_permutation, tile_window_for_density
from .patterns.topk import (
    apply_rectification,
    gapr_compensable,
    pool_blocks,
    pooled_block_probs,
    rectification_terms,
    select_blocks,
)

logger = logging.getLogger(__name__)

PATTERNS = ("tiles", "heads", "topk", "threshold")
VIDEO_PATTERNS = ("tiles", "heads")  # need frames > 1
RECTIFY_MODES = ("gapr", "all", "none")
TILE_FITS = ("error", "shrink")
KERNEL_BACKENDS = ("auto", "triton", "torch", "reference")


def _int_triple(name: str, value: Any) -> tuple[int, int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * 3
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 3
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value)
    ):
        raise ValueError(
            f"SparseVideoConfig.{name} must be a positive int or three positive ints (frames, height, width), "
            f"got {value!r}."
        )
    return tuple(value)


def _nonneg_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"SparseVideoConfig.{name} must be an int >= 0, got {value!r}.")


@dataclass(frozen=True)
class SparseVideoConfig(MethodConfig):
    """Block-sparse attention for video DiTs (sliding tiles, spatial/temporal heads, rectified top-k, threshold)."""

    name: ClassVar[str] = "sparse_video"

    pattern: str = help_field(
        "tiles",
        "Block pattern: 'tiles' (3D sliding tile attention), 'heads' (spatial/temporal heads chosen online), "
        "'topk' (pooled-score block selection with rectification) or 'threshold' (all blocks, in-kernel "
        "score-threshold skipping).",
    )
    density: float = help_field(
        0.25, "Target fraction of (query, key) image pairs attended, in (0, 1]; 1 = dense attention."
    )
    block_size: int = help_field(64, "Tokens per block for 'heads', 'topk' and 'threshold' ('tiles' uses the tile).")
    tile: tuple[int, int, int] = help_field((4, 4, 4), "Tile in tokens (frames, height, width): one kernel block.")
    window: tuple[int, int, int] | None = help_field(
        None, "'tiles': window in tiles (frames, height, width); None = chosen from `density`."
    )
    stride: tuple[int, int, int] = help_field(
        (1, 1, 1),
        "'tiles': GNA-style stride in tiles: query tiles of a stride group share their centre's window (a width "
        "stride makes consecutive rows identical, which the CPU kernel attends in one call). Clipped to the window.",
    )
    tile_fit: str = help_field(
        "error",
        "If the tile does not divide the token grid: 'error', or 'shrink' to the largest dividing tile per dimension.",
    )
    num_sampled_rows: int = help_field(64, "'heads': query rows sampled per call to choose each head's mask.")
    topk_mass: float | None = help_field(
        None, "'topk': keep blocks until this cumulative pooled mass (in (0, 1]), at most the density budget."
    )
    rectify: str = help_field(
        "gapr",
        "'topk' rectification: 'gapr' (compensate skipped blocks where the pooling gain beats the pooling error), "
        "'all' (compensate every skipped block) or 'none' (plain top-k).",
    )
    reorder: bool = help_field(
        True, "'topk'/'threshold': permute tokens tile-major (when the tile divides the grid) so blocks are local."
    )
    threshold: float | None = help_field(
        None,
        f"In-kernel skipping threshold in natural-log units (> 0) on top of any pattern; None = off "
        f"('threshold' pattern: {DEFAULT_THRESHOLD}).",
    )
    dense_warmup_steps: int = help_field(0, "Number of first denoising steps computed with dense attention.")
    dense_first_layers: int = help_field(0, "Number of first self-attention layers kept dense.")
    dense_last_layers: int = help_field(0, "Number of last self-attention layers kept dense.")
    seed: int = help_field(0, "Seed of the row sampling of 'heads' (results are deterministic given it).")
    backend: str = help_field("auto", "Block-sparse kernel backend: 'auto', 'triton', 'torch' or 'reference'.")

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"SparseVideoConfig.pattern must be one of {', '.join(map(repr, PATTERNS))}, got {self.pattern!r}."
            )
        d = self.density
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0.0 < d <= 1.0):
            raise ValueError(f"SparseVideoConfig.density must be a number in (0, 1], got {d!r}.")
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 1:
            raise ValueError(f"SparseVideoConfig.block_size must be a positive int, got {self.block_size!r}.")
        object.__setattr__(self, "tile", _int_triple("tile", self.tile))
        if self.window is not None:
            object.__setattr__(self, "window", _int_triple("window", self.window))
        object.__setattr__(self, "stride", _int_triple("stride", self.stride))
        if self.tile_fit not in TILE_FITS:
            raise ValueError(f"SparseVideoConfig.tile_fit must be one of {TILE_FITS}, got {self.tile_fit!r}.")
        if not isinstance(self.num_sampled_rows, int) or self.num_sampled_rows < 1:
            raise ValueError(f"SparseVideoConfig.num_sampled_rows must be an int >= 1, got {self.num_sampled_rows!r}.")
        m = self.topk_mass
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1.0):
            raise ValueError(f"SparseVideoConfig.topk_mass must be None or a number in (0, 1], got {m!r}.")
        if self.rectify not in RECTIFY_MODES:
            raise ValueError(f"SparseVideoConfig.rectify must be one of {RECTIFY_MODES}, got {self.rectify!r}.")
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf)):
            raise ValueError(f"SparseVideoConfig.threshold must be None or a finite number > 0, got {t!r}.")
        for name in ("dense_warmup_steps", "dense_first_layers", "dense_last_layers", "seed"):
            _nonneg_int(name, getattr(self, name))
        if self.backend not in KERNEL_BACKENDS:
            raise ValueError(f"SparseVideoConfig.backend must be one of {KERNEL_BACKENDS}, got {self.backend!r}.")

    @property
    def effective_threshold(self) -> float | None:
        """The threshold handed to the kernel (the ``threshold`` pattern defaults to :data:`DEFAULT_THRESHOLD`)."""
        if self.threshold is None and self.pattern == "threshold":
            return DEFAULT_THRESHOLD
        return self.threshold

    def build(self) -> SparseVideoMethod:
        return SparseVideoMethod(self)


@dataclass
class _Plan:
    """Static part of a pattern for one layout: token permutation (image part; text stays last), blocks, LUT."""

    perm: Tensor | None  # (N,) or None for identity
    inv: Tensor | None
    block: int
    mask: Tensor | None = None  # (1, 1, M, M) bool
    lut: Any = None
    density: float = 1.0
    dense: bool = False
    info: dict | None = None


def _key_padding(mask: Tensor, batch: int, n: int) -> Tensor | None:
    """``keep (B, N)`` bool from a boolean key-padding mask broadcastable to ``(B, 1, 1, N)``; None for other masks."""
    if mask.dtype != torch.bool or mask.shape[-1] != n or mask.dim() > 4:
        return None
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if m.shape[1] != 1 or m.shape[2] != 1 or m.shape[0] not in (1, batch):
        return None
    return m[:, 0, 0].expand(batch, n)


def _full_perm(image_perm: Tensor, n_total: int) -> Tensor:
    n_img = image_perm.numel()
    return torch.cat([image_perm, torch.arange(n_img, n_total, device=image_perm.device)])


def _take(x: Tensor, perm: Tensor | None) -> Tensor:
    return x if perm is None else x.index_select(2, perm)


def _pair_density(mask: Tensor, n: int, block: int) -> float:
    """Token-pair density of a bool block mask ``(..., M, M)`` over ``n`` tokens (partial last block counted)."""
    m = mask.shape[-1]
    sizes = torch.full((m,), float(block), dtype=torch.float64)
    sizes[-1] = n - (m - 1) * block
    pairs = (mask.to(torch.float64).cpu() * sizes[:, None] * sizes[None, :]).sum((-1, -2))
    return float(pairs.mean()) / (n * n)


class SparseVideoMethod(AttentionMethod):
    """Block-sparse video attention built from a :class:`SparseVideoConfig` (see the module docstring).

    ``method(q, k, v, layout, mask=None, info=None)`` with ``q, k, v (B, H, N, D)`` returns ``(B, H, N, D)``; calls
    with an attention mask or cross-attention shapes are handed back (``None``). Every call appends one record to
    :meth:`report`.
    """

    #: Boolean key-padding masks ``(B|1, 1, 1, N)`` on text tokens (HunyuanVideo's padded prompts) are honoured;
    #: other masks are handed back to dense attention.
    supports_mask = True

    def __init__(self, config: SparseVideoConfig | None = None):
        self.config = config or SparseVideoConfig()
        self._records: list[dict] = []
        self._plans: dict[tuple, _Plan] = {}

    # ------------------------------------------------------------------ report
    def report(self) -> list[dict]:
        """One dict per call since construction (or :meth:`clear_report`): ``step``, ``layer_index``, ``layer``,
        ``pattern``, ``density`` (fraction of token pairs in the LUT, text included; 1.0 for dense calls),
        ``effective_density`` (after threshold skipping), ``dense_reason`` (None for sparse calls) and
        pattern-specific details (``window``, ``temporal_heads``, ``compensated_fraction``...)."""
        return [dict(r) for r in self._records]

    def summary(self) -> dict:
        """Aggregates of :meth:`report`: call counts and mean densities, overall and per step / per layer."""
        recs = self._records
        out: dict[str, Any] = {"calls": len(recs), "sparse_calls": sum(r["dense_reason"] is None for r in recs)}
        if not recs:
            return out
        out["mean_density"] = sum(r["effective_density"] for r in recs) / len(recs)
        for key in ("step", "layer_index"):
            groups: dict[int, list[float]] = {}
            for r in recs:
                groups.setdefault(r[key], []).append(r["effective_density"])
            out[f"density_by_{key}"] = {g: sum(v) / len(v) for g, v in sorted(groups.items())}
        return out

    def clear_report(self) -> None:
        """Forget the recorded calls."""
        self._records.clear()

    def _record(self, info: CallInfo, density: float, eff: float | None = None, reason: str | None = None, **extra):
        self._records.append(
            dict(
                step=info.step, layer_index=info.layer_index, layer=info.layer_name, pattern=self.config.pattern,
                density=density, effective_density=density if eff is None else eff, dense_reason=reason, **extra,
            )
        )

    # ------------------------------------------------------------------ entry point
    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        layout: TokenLayout | None = None,
        mask: Tensor | None = None,
        info: CallInfo | None = None,
    ) -> Tensor | None:
        if k.shape[-2] != q.shape[-2]:
            return None
        cfg = self.config
        info = info or CallInfo()
        n = q.shape[-2]
        layout = layout if layout is not None else TokenLayout.square(n)
        layout.check(n)
        keep = None
        if mask is not None:
            keep = _key_padding(mask, q.shape[0], n)
            if keep is None or not bool(layout.split(keep[:, None], dim=-1)[0].all()):
                log_once(logger, logging.WARNING, "sparse_video: an attention mask other than a boolean key-padding "
                         "mask on text tokens was given; those calls run dense attention.")
                return None
            if bool(keep.all()):
                keep = None
        if cfg.pattern in VIDEO_PATTERNS and not layout.is_video:
            raise ValueError(
                f"SparseVideoConfig(pattern={cfg.pattern!r}) needs a video token layout (frames > 1), got {layout}. "
                "Use pattern='topk' or 'threshold' for single-frame layouts, or pass the video layout."
            )
        reason = self._dense_reason(info)
        if reason is None and cfg.pattern == "tiles":
            plan = self._static_plan(layout, q.device)
            if plan.dense and cfg.effective_threshold is None:
                reason = "window covers the whole grid"
        if reason is not None:
            log_once(logger, logging.DEBUG, f"sparse_video: dense attention ({reason})")
            self._record(info, 1.0, reason=reason)
            return dense_attention(q, k, v, mask, info.scale)
        scale = info.scale if info.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        qt, kt, vt = (layout.to_text_last(x) for x in (q, k, v))
        if keep is None:
            out, density, eff, extra = self._pattern(qt, kt, vt, layout, info, scale)
        else:
            out, density, eff, extra = self._padded(qt, kt, vt, layout, layout.to_text_last(keep, dim=-1), info,
                                                    scale)
        self._record(info, density, eff, **extra)
        return layout.from_text_last(out)

    def _pattern(self, q, k, v, layout, info, scale):
        """Run the configured pattern on text-last ``q, k, v (B, H, N, D)``: ``(out, density, effective, extra)``."""
        if self.config.pattern == "heads":
            return self._heads(q, k, v, layout, info, scale)
        if self.config.pattern == "topk":
            return self._topk(q, k, v, layout, info, scale)
        return self._static(q, k, v, layout, info, scale)

    def _padded(self, q, k, v, layout, keep, info, scale):
        """Key-padding masked call (text-last ``keep (B, N)``): per group of batch rows with the same kept tokens,
        the pattern runs on the kept tokens only (a layout with fewer text tokens); the padded text queries attend
        densely to the kept keys, exactly like masked SDPA."""
        out = torch.empty_like(q)
        groups: dict[tuple, list[int]] = {}
        for b, row in enumerate(keep.tolist()):
            groups.setdefault(tuple(row), []).append(b)
        dens, effs, extras = [], [], {}
        for row, members in groups.items():
            sel = torch.tensor(members, device=q.device)
            kept = torch.tensor([i for i, x in enumerate(row) if x], device=q.device)
            dropped = torch.tensor([i for i, x in enumerate(row) if not x], device=q.device)
            sub = TokenLayout(*layout.grid, text_tokens=kept.numel() - layout.image_tokens)
            qs, ks, vs = (x.index_select(0, sel).index_select(2, kept) for x in (q, k, v))
            o, d, e, extras = self._pattern(qs, ks, vs, sub, info, scale)
            full = torch.empty(len(members), *q.shape[1:], dtype=q.dtype, device=q.device)
            full[:, :, kept] = o
            if dropped.numel():
                qd = q.index_select(0, sel).index_select(2, dropped)
                full[:, :, dropped] = dense_attention(qd, ks, vs, None, scale)
            out[sel] = full
            dens += [d * len(members)]
            effs += [e * len(members)]
        b = q.shape[0]
        return out, sum(dens) / b, sum(effs) / b, extras

    def _dense_reason(self, info: CallInfo) -> str | None:
        cfg = self.config
        if cfg.density >= 1.0 and cfg.effective_threshold is None:
            return "density 1"
        if cfg.dense_warmup_steps:
            if info.step < 0:
                log_once(
                    logger, logging.WARNING,
                    "sparse_video: the denoising step is unknown (model called outside attnplug.apply on a "
                    "pipeline), so dense_warmup_steps cannot apply; running the sparse pattern.",
                )
            elif info.step < cfg.dense_warmup_steps:
                return "warm-up step"
        if info.layer_index < cfg.dense_first_layers:
            return "dense first layer"
        if info.layer_index >= info.num_layers - cfg.dense_last_layers:
            return "dense last layer"
        return None

    def _kernel(self, q: Tensor, k: Tensor, v: Tensor, lut, scale: float) -> tuple[Tensor, dict | None]:
        from ..kernels import block_sparse_attention

        thr = self.config.effective_threshold
        res = block_sparse_attention(
            q, k, v, lut, scale=scale, threshold=thr, backend=self.config.backend, return_stats=thr is not None
        )
        return res if thr is not None else (res, None)

    # ------------------------------------------------------------------ static patterns: tiles, threshold
    def _tile_for(self, layout: TokenLayout) -> tuple[int, int, int]:
        tile = self.config.tile
        if self.config.tile_fit == "shrink":
            fitted = fit_tile(layout.grid, tile)
            if fitted != tile:
                log_once(logger, logging.INFO, f"sparse_video: tile {tile} shrunk to {fitted} for grid {layout.grid}")
            return fitted
        tile_grid(layout.grid, tile)  # raises a ValueError naming the dimension
        return tile

    def _order(self, layout: TokenLayout, device) -> tuple[Tensor | None, tuple[int, int, int] | None]:
        """Image-token permutation for 'topk'/'threshold': tile-major when possible, else None (row-major)."""
        if not self.config.reorder:
            return None, None
        tile = fit_tile(layout.grid, self.config.tile) if self.config.tile_fit == "shrink" else self.config.tile
        if any(g % t for g, t in zip(layout.grid, tile)):
            log_once(logger, logging.DEBUG, f"sparse_video: tile {tile} does not divide {layout.grid}; row-major")
            return None, None
        return tile_permutation(layout.grid, tile, device=device), tile

    def _static_plan(self, layout: TokenLayout, device) -> _Plan:
        cfg = self.config
        key = (cfg.pattern, layout, str(device))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        n, n_img = layout.num_tokens, layout.image_tokens
        thr = cfg.effective_threshold
        if cfg.pattern == "tiles":
            tile = self._tile_for(layout)
            tiles = tile_grid(layout.grid, tile)
            if cfg.window is not None:
                window = tuple(min(w, t) for w, t in zip(cfg.window, tiles))
            else:
                window = tile_window_for_density(tiles, cfg.density, tile)
            stride = tuple(min(s_, w) for s_, w in zip(cfg.stride, window))
            block = math.prod(tile)
            m = math.ceil(n / block)
            mask = torch.zeros(m, m, dtype=torch.bool)
            t = math.prod(tiles)
            mask[:t, :t] = tile_block_mask(tiles, window, stride=stride)
            mask = add_global_blocks(mask, n_img, n, block)
            image_perm = tile_permutation(layout.grid, tile)
            priority = None
            if thr is not None:  # nearest tiles first (L1 distance in tile coordinates), text last
                c = torch.stack(torch.meshgrid(*(torch.arange(x) for x in tiles), indexing="ij"), -1).view(-1, 3)
                priority = torch.full((m, m), -1e6)
                priority[:t, :t] = -(c[:, None] - c[None, :]).abs().sum(-1).float()
            dense = all(w >= x for w, x in zip(window, tiles))
            extra = {"tile": tile, "window": window, "stride": stride, "tiles": tiles}
        else:  # threshold: every block, visited nearest first
            image_perm, tile = self._order(layout, device="cpu")
            block = cfg.block_size
            m = math.ceil(n / block)
            mask = torch.ones(m, m, dtype=torch.bool)
            priority = locality_priority(m)
            dense = False
            extra = {"tile": tile}
        perm = _full_perm(image_perm, n).to(device) if image_perm is not None else None
        lut = lut_from_block_mask(mask[None, None], block, None if priority is None else priority[None, None])
        plan = _Plan(
            perm=perm, inv=inverse_permutation(perm) if perm is not None else None, block=block,
            mask=mask[None, None], lut=lut.to(device), density=_pair_density(mask, n, block), dense=dense, info=extra,
        )
        self._plans[key] = plan
        logger.debug("sparse_video: %s plan for %s: block %d, density %.3f, %s", cfg.pattern, layout, block,
                     plan.density, extra)
        return plan

    def _static(self, q, k, v, layout, info, scale):
        plan = self._static_plan(layout, q.device)
        out, stats = self._kernel(_take(q, plan.perm), _take(k, plan.perm), _take(v, plan.perm), plan.lut, scale)
        return _take(out, plan.inv), plan.density, effective_density(plan.density, stats), dict(plan.info)

    # ------------------------------------------------------------------ heads (Sparse VideoGen)
    def _heads_plan(self, layout: TokenLayout, device) -> dict:
        key = ("heads", layout, str(device))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        cfg = self.config
        n, n_img, block = layout.num_tokens, layout.image_tokens, cfg.block_size
        kinds = {}
        for kind in ("spatial", "temporal"):
            coord = head_coords(layout.grid, kind)
            width = band_width_for_density(coord, block, cfg.density)
            mask = band_block_mask(coord, width, block, n)
            perm = _full_perm(head_permutation(layout.grid, kind), n)
            inv = inverse_permutation(perm)
            kinds[kind] = dict(
                width=width, mask=mask.to(device), perm=perm.to(device), inv=inv.to(device),
                density=_pair_density(mask, n, block),
            )
        plan = dict(kinds=kinds, n_img=n_img, block=block)
        self._plans[key] = plan
        logger.debug("sparse_video: heads plan for %s: widths spatial %d frames, temporal %d positions", layout,
                     kinds["spatial"]["width"], kinds["temporal"]["width"])
        return plan

    def _heads(self, q, k, v, layout, info, scale):
        from ..kernels import BlockLUT

        cfg = self.config
        plan = self._heads_plan(layout, q.device)
        kinds = [plan["kinds"]["spatial"], plan["kinds"]["temporal"]]
        block, n_img = plan["block"], plan["n_img"]
        # Deterministic row sample per (seed, layer, step).
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + info.layer_index * 10_007 + max(info.step, 0))
        s = min(cfg.num_sampled_rows, n_img)
        rows = torch.randperm(n_img, generator=gen)[:s].to(q.device)
        token_masks = []
        for kd in kinds:
            pos = kd["inv"]  # position of each original token in the permuted order
            token_masks.append(block_token_mask(kd["mask"], pos, block, rows))
        choice, err = profile_heads(q, k, v, token_masks, rows, scale)
        heads = q.shape[1]
        temporal = int(choice.sum())
        if temporal in (0, heads):
            kd = kinds[1 if temporal else 0]
            lut = lut_from_block_mask(kd["mask"][None, None], block)
            out, stats = self._kernel(_take(q, kd["perm"]), _take(k, kd["perm"]), _take(v, kd["perm"]), lut, scale)
            out = _take(out, kd["inv"])
            density = kd["density"]
        else:
            perms = torch.stack([kinds[int(c)]["perm"] for c in choice])  # (H, N)
            invs = torch.stack([kinds[int(c)]["inv"] for c in choice])
            masks = torch.stack([kinds[int(c)]["mask"] for c in choice])[None]  # (1, H, M, M)
            lut = BlockLUT.from_block_mask(masks, block, block)

            def gather(x, idx):
                return torch.gather(x, 2, idx[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1]))

            out, stats = self._kernel(gather(q, perms), gather(k, perms), gather(v, perms), lut, scale)
            out = gather(out, invs)
            density = sum(kinds[int(c)]["density"] for c in choice) / heads
        extra = dict(
            temporal_heads=temporal, spatial_heads=heads - temporal, widths=(kinds[0]["width"], kinds[1]["width"])
        )
        return out, density, effective_density(density, stats), extra

    # ------------------------------------------------------------------ topk (+ rectification)
    def _topk(self, q, k, v, layout, info, scale):
        cfg = self.config
        n, n_img, block = layout.num_tokens, layout.image_tokens, cfg.block_size
        key = ("topk-order", layout, str(q.device))
        if key not in self._plans:
            image_perm, tile = self._order(layout, device=q.device)
            perm = _full_perm(image_perm, n) if image_perm is not None else None
            self._plans[key] = (perm, inverse_permutation(perm) if perm is not None else None)
        perm, inv = self._plans[key]
        qp_, kp_, vp_ = _take(q, perm), _take(k, perm), _take(v, perm)
        qm, qdev, _ = pool_blocks(qp_, block)
        km, kdev, ksizes = pool_blocks(kp_, block)
        vm = pool_blocks(vp_, block, deviations=False)[0]
        probs = pooled_block_probs(qm, km, ksizes, scale)  # (B, H, M, M)
        m = probs.shape[-1]
        forced = torch.eye(m, dtype=torch.bool, device=q.device)
        forced = add_global_blocks(forced, n_img, n, block)
        budget = math.ceil(cfg.density * m)
        selected = select_blocks(probs, budget, forced, cfg.topk_mass)
        lut = lut_from_block_mask(selected, block, probs if cfg.effective_threshold is not None else None)
        out, stats = self._kernel(qp_, kp_, vp_, lut, scale)
        extra = {"budget_blocks": budget}
        if cfg.rectify != "none":
            comp = gapr_compensable(qm, qdev, km, kdev) if cfg.rectify == "gapr" else None
            r, c = rectification_terms(probs, selected, comp, vm)
            out = apply_rectification(out, r, c, block)
            skipped = (~selected).sum()
            compensated = (~selected & comp).sum() if comp is not None else skipped
            extra["compensated_fraction"] = float(compensated) / max(int(skipped), 1)
        density = _pair_density(selected, n, block)
        return _take(out, inv), density, effective_density(density, stats), extra


class SparseVideoProcessor(AttnplugProcessor):
    """Standalone processor: ``model.set_attn_processor(SparseVideoProcessor(SparseVideoConfig(...), layout=...))``.

    Runs diffusers' stock processor and routes its self-attention call to a :class:`SparseVideoMethod`. Standalone
    use knows neither the token grid (pass ``layout=TokenLayout(frames, height, width, text_tokens, text_first)``)
    nor the step or layer (warm-up and dense layers need :func:`attnplug.apply`). :meth:`report` gives the
    method's per-call records.
    """

    def __init__(self, config: SparseVideoConfig | SparseVideoMethod | None = None, stock=None, **kwargs):
        if config is None:
            config = SparseVideoConfig()
        if isinstance(config, SparseVideoConfig):
            method = config.build()
        elif isinstance(config, SparseVideoMethod):
            method = config
        else:
            raise TypeError(
                f"SparseVideoProcessor needs a SparseVideoConfig or SparseVideoMethod, got {type(config).__name__}."
            )
        super().__init__(method, stock, **kwargs)

    def report(self) -> list[dict]:
        """The per-call records of the method (see :meth:`SparseVideoMethod.report`)."""
        return self.method.report()
