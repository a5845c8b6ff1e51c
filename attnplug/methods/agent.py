"""Agent attention, training-free (Agent Attention / AgentSD, arXiv 2312.08874).

A small set of ``n`` agent tokens ``A``, pooled from the queries over the token grid, first gathers from the keys
and values, then broadcasts back to every query::

    V_A = softmax(A K^T * s_g) V                      (n x D)   agents gather
    out = softmax(Q A^T * s_b) V_A + c * V            (N x D)   queries read the agents (+ AgentSD's value shortcut)

which costs ``O(N n D)`` instead of ``O(N^2 D)`` and never forms an ``N x N`` matrix.

Joint attention (SD3, Flux, CogVideoX, HunyuanVideo: text tokens in the same sequence) is handled so that text is
exact: text queries run dense attention over all keys; an image query ``i`` mixes its agent read-out with exact
attention to the text keys, weighted by the attention mass each part would get in dense attention::

    Z_a     = sum_j exp(s_g a . k_j)                  over image keys j (agent a's partition function)
    log Z_i ~ logsumexp_a(log softmax(s_b q_i A^T)_a + log Z_a)   (broadcast like the values)
    T_i     = sum_t exp(s q_i . k_t)                  over text keys t (exact)
    out_i   = (Z_i * (agent read-out_i + c v_i) + T_i * textattn_i) / (Z_i + T_i)

With agents = queries and a one-hot broadcast this is exactly dense attention, text included.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..config import MethodConfig, help_field
from ..layout import TokenLayout
from ..processors.wrapper import AttnplugProcessor
from .base import AttentionMethod, CallInfo

logger = logging.getLogger(__name__)

AGENT_SOURCES = ("pool", "merge")
UNEVEN_RULES = ("adaptive", "error")


def _pair(value, name: str) -> tuple[int, int]:
    """``int`` or 2-sequence of ints -> ``(h, w)``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"AgentConfig.{name} must be a positive int or a pair of positive ints, got {value!r}.")
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    ):
        raise ValueError(f"AgentConfig.{name} must be a positive int or a pair of positive ints, got {value!r}.")
    if min(value) < 1:
        raise ValueError(f"AgentConfig.{name} must be >= 1 in every dimension, got {value!r}.")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class AgentConfig(MethodConfig):
    """Agent attention (training-free AgentSD): queries pooled into agents that gather from all keys and broadcast
    back. Defaults follow AgentSD on Stable Diffusion: one agent per 4x4 token cell, broadcast scale
    ``s ** 0.3``, value shortcut 0.075, highest-resolution U-Net blocks only, first 40 % of the denoising steps."""

    name: ClassVar[str] = "agent"

    agents: int | tuple[int, int] | None = help_field(
        None,
        "Agents per frame: an int count (arranged as the grid closest to the frame's aspect ratio, e.g. 64 -> 8x8) "
        "or a pooled grid (rows, cols), e.g. (16, 16). None: one agent per pool_stride cell.",
    )
    pool_stride: int | tuple[int, int] = help_field(
        4, "When agents is None: one agent per stride x stride cell of the token grid (AgentSD: 4)."
    )
    frame_stride: int = help_field(
        1, "Video: frames pooled into one agent group (1 = per-frame agents; >1 = 3D pooling over frames)."
    )
    agent_source: str = help_field(
        "pool",
        "How agents are formed from the queries: 'pool' (average over each grid cell) or 'merge' (token merging as "
        "in AgentSD/ToMe: the first token of each cell is a destination, every token is averaged into its most "
        "cosine-similar destination of the same frame group).",
    )
    uneven: str = help_field(
        "adaptive",
        "When the agent grid does not divide the token grid: 'adaptive' (cells of floor/ceil sizes, like adaptive "
        "average pooling) or 'error' (raise ValueError).",
    )
    gather_scale: float | None = help_field(
        None, "Softmax scale of agents -> keys (softmax(A K^T s_g)). None: the call's scale (1/sqrt(head dim))."
    )
    broadcast_scale: float | None = help_field(
        None, "Softmax scale of queries -> agents (softmax(Q A^T s_b)). None: s ** broadcast_scale_power."
    )
    broadcast_scale_power: float = help_field(
        0.3, "When broadcast_scale is None: s_b = s ** power with s the call's scale (AgentSD k_scale2 = 0.3)."
    )
    value_shortcut: float = help_field(0.075, "Weight c of the value shortcut out += c * V (AgentSD k_shortcut).")
    dense_after: float | int | None = help_field(
        0.4,
        "Agent attention for the first steps only: a fraction of the denoising steps in (0, 1] or a step index; "
        "later steps run dense. None: every step. Composes with attnplug.Schedule (both must allow a step).",
    )
    max_downsample: int | None = help_field(
        1,
        "Only attention layers whose token grid is at most this factor coarser than the model's finest "
        "self-attention grid (U-Nets: 1 = the highest-resolution attention blocks, as AgentSD/ToMeSD). None: every "
        "layer. Needs attnplug.apply (the latent shape); standalone processors use every layer they are set on.",
    )
    chunk_size: int = help_field(1024, "Queries per chunk on the joint (text) path: bounds its extra memory.")

    def __post_init__(self):
        if self.agents is not None:
            if isinstance(self.agents, int) and not isinstance(self.agents, bool):
                if self.agents < 1:
                    raise ValueError(f"AgentConfig.agents must be >= 1 (agents per frame), got {self.agents!r}.")
            else:
                object.__setattr__(self, "agents", _pair(self.agents, "agents"))
        object.__setattr__(self, "pool_stride", _pair(self.pool_stride, "pool_stride"))
        if not isinstance(self.frame_stride, int) or isinstance(self.frame_stride, bool) or self.frame_stride < 1:
            raise ValueError(f"AgentConfig.frame_stride must be an int >= 1, got {self.frame_stride!r}.")
        if self.agent_source not in AGENT_SOURCES:
            raise ValueError(f"AgentConfig.agent_source must be one of {AGENT_SOURCES}, got {self.agent_source!r}.")
        if self.uneven not in UNEVEN_RULES:
            raise ValueError(f"AgentConfig.uneven must be one of {UNEVEN_RULES}, got {self.uneven!r}.")
        for name in ("gather_scale", "broadcast_scale"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"AgentConfig.{name} must be a positive number or None, got {value!r}.")
        p = self.broadcast_scale_power
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
            raise ValueError(f"AgentConfig.broadcast_scale_power must be a finite number >= 0, got {p!r}.")
        c = self.value_shortcut
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"AgentConfig.value_shortcut must be a finite number, got {c!r}.")
        u = self.dense_after
        if u is not None:
            if isinstance(u, bool) or not isinstance(u, (int, float)):
                raise ValueError(f"AgentConfig.dense_after must be a float in (0, 1], an int >= 0 or None, got {u!r}.")
            if isinstance(u, float) and not 0.0 < u <= 1.0:
                raise ValueError(f"AgentConfig.dense_after as a fraction of the steps must be in (0, 1], got {u!r}.")
            if isinstance(u, int) and u < 0:
                raise ValueError(f"AgentConfig.dense_after as a step index must be >= 0, got {u!r}.")
        m = self.max_downsample
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise ValueError(f"AgentConfig.max_downsample must be an int >= 1 or None, got {m!r}.")
        if not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool) or self.chunk_size < 1:
            raise ValueError(f"AgentConfig.chunk_size must be an int >= 1, got {self.chunk_size!r}.")

    def build(self) -> AgentMethod:
        return AgentMethod(self)


# ----------------------------------------------------------------------------------------------------
# Agent grids and agent formation


def _grid_for_count(n: int, height: int, width: int) -> tuple[int, int]:
    """The ``(rows, cols)`` factorisation of ``n`` that fits ``height x width`` with the closest aspect ratio."""
    if n > height * width:
        raise ValueError(
            f"AgentConfig.agents={n} is more than the {height * width} image tokens per frame of this layer "
            f"({height}x{width}); use at most {height * width} agents, or restrict the layers (max_downsample)."
        )
    target = math.log(height / width)
    best = None
    for rows in range(1, n + 1):
        if n % rows:
            continue
        cols = n // rows
        if rows > height or cols > width:
            continue
        err = abs(math.log(rows / cols) - target)
        if best is None or err < best[0]:
            best = (err, rows, cols)
    if best is None:
        raise ValueError(
            f"AgentConfig.agents={n} cannot be arranged as a rows x cols grid inside the {height}x{width} token grid "
            f"of this layer; give the grid explicitly, e.g. agents=(rows, cols)."
        )
    return best[1], best[2]


def agent_grid(config: AgentConfig, layout: TokenLayout) -> tuple[int, int, int]:
    """The agent grid ``(frame groups, rows, cols)`` of ``config`` on the image grid of ``layout``.

    ``ValueError`` if there are more agents than tokens in a dimension, or if the grid does not divide the token
    grid and ``config.uneven == 'error'``."""
    f, h, w = layout.grid
    if config.agents is None:
        sh, sw = config.pool_stride
        if config.uneven == "error" and (h % sh or w % sw):
            raise ValueError(
                f"AgentConfig.pool_stride={config.pool_stride} does not divide the {h}x{w} token grid and "
                f"uneven='error'; use uneven='adaptive' or a stride that divides the grid."
            )
        rows, cols = -(-h // sh), -(-w // sw)
    elif isinstance(config.agents, int):
        rows, cols = _grid_for_count(config.agents, h, w)
    else:
        rows, cols = config.agents
        if rows > h or cols > w:
            raise ValueError(
                f"AgentConfig.agents={config.agents} asks for more agents than tokens: the token grid of this layer "
                f"is {h}x{w}; use an agent grid of at most ({h}, {w})."
            )
    if config.uneven == "error" and (h % rows or w % cols):
        raise ValueError(
            f"The agent grid {rows}x{cols} does not divide the {h}x{w} token grid and AgentConfig.uneven='error'; "
            f"use uneven='adaptive' (cells of floor/ceil sizes) or an agent grid that divides the token grid."
        )
    fs = min(config.frame_stride, f)
    if config.uneven == "error" and f % fs:
        raise ValueError(
            f"AgentConfig.frame_stride={config.frame_stride} does not divide the {f} frames and uneven='error'; use "
            "uneven='adaptive' or a frame stride that divides the number of frames."
        )
    return -(-f // fs), rows, cols


def _cell_index(length: int, cells: int, device) -> torch.Tensor:
    """For positions ``0..length-1``, the index of the cell (of ``cells`` floor-start cells) each falls in."""
    starts = torch.div(torch.arange(cells, device=device) * length, cells, rounding_mode="floor")
    return torch.searchsorted(starts, torch.arange(length, device=device), right=True) - 1


def pool_agents(q: torch.Tensor, grid: tuple[int, int, int], agents: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool image queries ``q (B, H, F*h*w, D)`` (frame-major, row-major ``grid = (F, h, w)``) into
    ``agents = (Fa, ha, wa)`` cells (adaptive average pooling) -> ``(B, H, Fa*ha*wa, D)``."""
    b, nh, n, d = q.shape
    f, h, w = grid
    if (f, h, w) == tuple(agents):
        return q
    x = q.reshape(b * nh, f, h, w, d).permute(0, 4, 1, 2, 3)  # (BH, D, F, h, w)
    if f == 1 and agents[0] == 1:
        pooled = F.adaptive_avg_pool2d(x[:, :, 0], agents[1:]).unsqueeze(2)
    else:
        pooled = F.adaptive_avg_pool3d(x, agents)
    return pooled.permute(0, 2, 3, 4, 1).reshape(b, nh, -1, d)


def merge_agents(q: torch.Tensor, grid: tuple[int, int, int], agents: tuple[int, int, int]) -> torch.Tensor:
    """Token-merging agents (AgentSD style) from image queries ``q (B, H, F*h*w, D)`` -> ``(B, H, Fa*ha*wa, D)``.

    The first token of each agent cell is a destination; every token of a frame group is averaged into the
    destination of that group whose query (all heads concatenated) is most cosine-similar. Destinations are their own
    match, so no agent is empty."""
    b, nh, n, d = q.shape
    f, h, w = grid
    fa, ha, wa = agents
    dev = q.device
    frame_cell = _cell_index(f, fa, dev)
    # Destination = first token (lowest frame, row, col) of each cell, as local indices within its frame group.
    row_start = torch.div(torch.arange(ha, device=dev) * h, ha, rounding_mode="floor")
    col_start = torch.div(torch.arange(wa, device=dev) * w, wa, rounding_mode="floor")
    dst_local = (row_start[:, None] * w + col_start[None, :]).reshape(-1)  # within the first frame of the group
    out = q.new_empty(b, nh, fa * ha * wa, d)
    metric_all = q.permute(0, 2, 1, 3).reshape(b, n, nh * d).float()
    metric_all = metric_all / metric_all.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    hw = h * w
    for g in range(fa):
        frames = (frame_cell == g).nonzero().flatten()
        f0, f1 = int(frames[0]), int(frames[-1]) + 1
        sl = slice(f0 * hw, f1 * hw)
        metric = metric_all[:, sl]  # (B, M, C)
        m = metric.shape[1]
        dst = metric[:, dst_local]  # (B, n_g, C)
        assign = (metric @ dst.transpose(1, 2)).argmax(dim=-1)  # (B, M)
        assign[:, dst_local] = torch.arange(ha * wa, device=dev)
        idx = assign[:, None, :, None].expand(b, nh, m, d)
        sums = q.new_zeros(b, nh, ha * wa, d, dtype=torch.float32).scatter_add_(2, idx, q[:, :, sl].float())
        counts = torch.zeros(b, ha * wa, device=dev).scatter_add_(1, assign, torch.ones(b, m, device=dev))
        out[:, :, g * ha * wa:(g + 1) * ha * wa] = (sums / counts[:, None, :, None]).to(q.dtype)
    return out


# ----------------------------------------------------------------------------------------------------
# The two-step attention


def _key_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A key mask (bool, True = attend; or additive float) -> additive float bias, or None."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -torch.inf)
    return mask.to(dtype)


def agent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    agents: torch.Tensor,
    *,
    gather_scale: float,
    broadcast_scale: float,
    value_shortcut: float = 0.0,
    key_bias: torch.Tensor | None = None,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    text_bias: torch.Tensor | None = None,
    text_scale: float | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Agent attention of image queries ``q (B, H, N, D)`` over image keys/values ``k, v (B, H, N, D)`` through
    ``agents (B, H, n, D)`` -> ``(B, H, N, D)``:
    ``softmax(q agents^T * broadcast_scale) softmax(agents k^T * gather_scale) v + value_shortcut * v``, the value
    shortcut pairing query ``i`` with value ``i``.

    ``key_bias`` (broadcastable to ``(B, H, 1, N)``, additive, ``-inf`` = masked) masks image keys. ``text_k, text_v
    (B, H, T, D)`` are keys attended exactly (scale ``text_scale``, bias ``text_bias`` broadcastable to
    ``(B, H, 1, T)``), mixed with the agent read-out by their attention mass (module docstring). Never forms an
    ``N x N`` matrix: ``O(N n D)`` time, ``O(chunk_size * (n + T))`` extra memory.
    """
    if agents.shape[-2] < 1:
        raise ValueError("agent_attention needs at least one agent, got agents with 0 tokens.")
    if text_k is None or text_k.shape[-2] == 0:
        # Plain two-step attention: two SDPA calls (flash/efficient kernels, no N x N matrix).
        agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=key_bias, scale=gather_scale)
        out = F.scaled_dot_product_attention(q, agents, agent_v, scale=broadcast_scale)
        return out.add_(v, alpha=value_shortcut) if value_shortcut else out
    shortcut = value_shortcut * v if value_shortcut else None

    # Joint path: agents' values and log partition functions over image keys, then mixed with exact text attention.
    dtype = torch.float32
    text_scale = gather_scale if text_scale is None else text_scale
    agent_v, agent_lse = _gather_with_lse(agents, k, v, gather_scale, key_bias, chunk_size)
    out = torch.empty_like(q)
    tk, tv = text_k.to(dtype), text_v.to(dtype)
    for s in range(0, q.shape[-2], chunk_size):
        qc = q[:, :, s:s + chunk_size].to(dtype)
        log_p = ((qc @ agents.to(dtype).transpose(-1, -2)) * broadcast_scale).log_softmax(dim=-1)  # (B, H, C, n)
        oc = log_p.exp() @ agent_v  # agent read-out
        if shortcut is not None:
            oc = oc + shortcut[:, :, s:s + chunk_size].to(dtype)
        log_z = (log_p + agent_lse.unsqueeze(-2)).logsumexp(dim=-1, keepdim=True)  # image mass, broadcast
        lt = (qc @ tk.transpose(-1, -2)) * text_scale  # (B, H, C, T)
        if text_bias is not None:
            lt = lt + text_bias.to(dtype)
        log_t = lt.logsumexp(dim=-1, keepdim=True)  # exact text mass (-inf when every text key is masked)
        text_out = (lt - torch.where(torch.isfinite(log_t), log_t, 0.0)).exp() @ tv
        w = torch.sigmoid(log_z - log_t)  # Z_i / (Z_i + T_i)
        oc = w * oc + (1 - w) * text_out
        out[:, :, s:s + chunk_size] = oc.to(q.dtype)
    return out


def _gather_with_lse(agents, k, v, scale, key_bias, chunk_size):
    """``softmax(agents k^T * scale) v`` (fp32) and its row log-sum-exp, chunked over agents."""
    dtype = torch.float32
    n = agents.shape[-2]
    rows = max(1, min(n, (chunk_size * 256) // max(1, k.shape[-2])))  # keep each score block ~chunk_size*256 floats
    kf, vf = k.to(dtype), v.to(dtype)
    values, lses = [], []
    for s in range(0, n, rows):
        logits = (agents[:, :, s:s + rows].to(dtype) @ kf.transpose(-1, -2)) * scale
        if key_bias is not None:
            logits = logits + key_bias.to(dtype)
        lse = logits.logsumexp(dim=-1, keepdim=True)
        values.append((logits - lse).exp() @ vf)
        lses.append(lse.squeeze(-1))
    return torch.cat(values, dim=-2), torch.cat(lses, dim=-1)


# ----------------------------------------------------------------------------------------------------
# The method


class AgentMethod(AttentionMethod):
    """Agent attention on ``(B, H, N, D)`` self-attention calls; hands a call back to dense (returns None) outside
    its blocks/steps, for temporal-only layouts, and for masks that are not key padding."""

    supports_mask = True

    def __init__(self, config: AgentConfig | None = None):
        self.config = config or AgentConfig()
        self._finest: dict[tuple[int, int, int], tuple[int, int]] = {}  # latent grid -> finest attention grid

    def reset(self) -> None:
        self._finest.clear()

    def _active(self, layout: TokenLayout, info: CallInfo) -> str | None:
        """Why this call goes dense, or None."""
        cfg = self.config
        if layout.height == 1 and layout.width == 1:
            return "temporal-only layout (no spatial grid to pool)"
        if cfg.max_downsample is not None and info.latent_grid is not None:
            # Reference: the finest self-attention grid seen for this latent shape (U-Nets run their finest
            # attention level first; SDXL-like models have none at the latent resolution itself).
            fh, fw = self._finest.get(info.latent_grid, (0, 0))
            fh, fw = max(fh, layout.height), max(fw, layout.width)
            self._finest[info.latent_grid] = (fh, fw)
            down = max(-(-fh // layout.height), -(-fw // layout.width))
            if down > cfg.max_downsample:
                return f"grid {layout.height}x{layout.width} is x{down} coarser than the finest attention grid " \
                    f"{fh}x{fw} > max_downsample={cfg.max_downsample}"
        u = cfg.dense_after
        if u is not None and info.step >= 0:
            if isinstance(u, float):
                if info.num_steps is not None and info.step >= round(u * info.num_steps):
                    return "step after dense_after"
            elif info.step >= u:
                return "step after dense_after"
        return None

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: TokenLayout,
        mask: torch.Tensor | None = None,
        info: CallInfo | None = None,
    ) -> torch.Tensor | None:
        """``q, k, v (B, H, N, D)`` of one self-attention call laid out as ``layout`` -> ``(B, H, N, D)`` or None."""
        info = info or CallInfo()
        cfg = self.config
        if q.shape[-2] != k.shape[-2]:
            return None  # not self-attention
        layout.check(q.shape[-2])
        reason = self._active(layout, info)
        if reason is not None:
            log_once(logger, logging.DEBUG, f"agent attention: dense in {info.layer_name or 'a layer'}: {reason}")
            return None
        grid = agent_grid(cfg, layout)
        img_bias, text_bias, text_rows_mask = None, None, None
        if mask is not None:
            split = _split_mask(mask, layout)
            if split is None:
                log_once(logger, logging.DEBUG, "agent attention: mask is not key padding; that call runs dense")
                return None
            key_bias, text_rows_mask = split
            key_bias = _key_bias(key_bias, torch.float32 if layout.text_tokens else q.dtype)
            img_bias, text_bias = layout.split(key_bias, dim=-1) if layout.text_tokens else (key_bias, None)

        scale = info.scale if info.scale is not None else q.shape[-1] ** -0.5
        gather_scale = cfg.gather_scale if cfg.gather_scale is not None else scale
        broadcast_scale = cfg.broadcast_scale if cfg.broadcast_scale is not None else scale**cfg.broadcast_scale_power

        q_img, q_txt = layout.split(q)
        k_img, k_txt = layout.split(k)
        v_img, v_txt = layout.split(v)
        form = pool_agents if cfg.agent_source == "pool" else merge_agents
        agents = form(q_img, layout.grid, grid)
        out_img = agent_attention(
            q_img, k_img, v_img, agents,
            gather_scale=gather_scale, broadcast_scale=broadcast_scale, value_shortcut=cfg.value_shortcut,
            key_bias=img_bias, text_k=k_txt if layout.text_tokens else None, text_v=v_txt, text_bias=text_bias,
            text_scale=scale, chunk_size=cfg.chunk_size,
        )
        if not layout.text_tokens:
            return out_img
        # Text queries: exact dense attention over every key.
        out_txt = F.scaled_dot_product_attention(q_txt, k, v, attn_mask=text_rows_mask, scale=scale)
        return layout.merge(out_img, out_txt)


def _split_mask(mask: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(key mask of the image queries (B|1, H|1, 1, N), mask rows of the text queries)`` from an SDPA mask, or None
    when image queries do not all share one key mask."""
    if mask.ndim < 2:
        return None
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[-2] == 1:
        return mask, mask
    img_rows, txt_rows = layout.split(mask, dim=-2)
    first = img_rows[..., :1, :]
    if not bool((img_rows == first).all()):
        return None
    return first, txt_rows


class AgentProcessor(AttnplugProcessor):
    """Standalone diffusers processor running agent attention:
    ``model.set_attn_processor(AgentProcessor(AgentConfig(agents=64)))``.

    Without :func:`attnplug.apply` there is no latent-shape hook: grids are taken as square (or ``layout=``), the
    latent grid and the step are unknown, so every self-attention layer it is set on uses agents at every step
    (set it only on the modules you want, e.g. through a dict for ``set_attn_processor``)."""

    def __init__(self, config: AgentConfig | None = None, stock=None, *, layout: TokenLayout | None = None, **kwargs):
        config = config if config is not None else AgentConfig()
        if not isinstance(config, AgentConfig):
            raise TypeError(f"AgentProcessor needs an AgentConfig, got {type(config).__name__}.")
        super().__init__(config, stock, layout=layout, **kwargs)
