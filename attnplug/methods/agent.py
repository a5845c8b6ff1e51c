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

With agents = queries and a one-hot broadcast this is exactly dense attention, text included. The attention itself
(:func:`attnplug.kernels.agent.agent_attention`, beside its float64 reference) lives in :mod:`attnplug.kernels.agent`;
this module holds the config, the agent grids and agent formation, and the method (which layers, masks, text).

Steps and layers: the default schedule is AgentSD's, the first 40 % of the denoising steps
(:meth:`AgentConfig.default_schedule`); ``max_level=0`` keeps the method on the highest-resolution attention level
(``CallInfo.level``), as AgentSD/ToMeSD do.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..kernels.agent import agent_attention
from ..layout import TokenLayout
from ..reasons import register
from .agent_config import AGENT_SOURCES, UNEVEN_RULES, AgentConfig  # noqa: F401 - re-exported
from .base import AttentionMethod, CallInfo

logger = logging.getLogger(__name__)
register("temporal-only-layout", "a temporal-only layout (one token per frame) has no spatial grid to pool "
         "agents from")

# ----------------------------------------------------------------------------------------------------
# Agent grids and agent formation


def _grid_for_count(n: int, height: int, width: int) -> tuple[int, int]:
    """The ``(rows, cols)`` factorisation of ``n`` that fits ``height x width`` with the closest aspect ratio."""
    if n > height * width:
        raise ValueError(
            f"AgentConfig.agents={n} is more than the {height * width} image tokens per frame of this layer "
            f"({height}x{width}); use at most {height * width} agents, or restrict the layers (max_level)."
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
    # Destination = first token (lowest frame, row, col) of each cell, as local indices within its frame group.
    row_start = torch.div(torch.arange(ha, device=dev) * h, ha, rounding_mode="floor")
    col_start = torch.div(torch.arange(wa, device=dev) * w, wa, rounding_mode="floor")
    dst_local = (row_start[:, None] * w + col_start[None, :]).reshape(-1)  # within the first frame of the group
    out = q.new_empty(b, nh, fa * ha * wa, d)
    metric_all = q.permute(0, 2, 1, 3).reshape(b, n, nh * d).float()
    metric_all = metric_all / metric_all.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    hw = h * w
    for g in range(fa):
        f0, f1 = g * f // fa, (g + 1) * f // fa  # cell g: frames [floor(g f / fa), floor((g+1) f / fa))
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


# ----------------------------------------------------------------------------------------------------
# The method


class AgentMethod(AttentionMethod):
    """Agent attention on ``(B, H, N, D)`` self-attention calls. Stateless (safe to share between threads).

    Hands a call back (returns None) above ``max_level``, for temporal-only layouts, and for masks that are not key
    padding."""

    supports_mask = True

    def __init__(self, config: AgentConfig | None = None):
        self.config = config or AgentConfig()

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: TokenLayout,
        mask: torch.Tensor | None = None,
        info: CallInfo | None = None,
    ) -> torch.Tensor | None:
        """``q, k, v (B, H, N, D)`` of one self-attention call laid out as ``layout`` -> ``(B, H, N, D)``, or None to
        hand the call back (reason codes ``temporal-only-layout``, ``level-above-max-level``,
        ``mask-not-key-padding``)."""
        info = info or CallInfo()
        cfg = self.config
        layout.check(q.shape[-2])
        if layout.height == 1 and layout.width == 1:
            return self.hand_back("temporal-only-layout")  # no spatial grid to pool agents from
        if cfg.max_level is not None and info.level > cfg.max_level:
            return self.hand_back("level-above-max-level")
        grid = agent_grid(cfg, layout)
        img_bias, text_bias, text_rows_mask = None, None, None
        if mask is not None:
            split = _split_mask(mask, layout)
            if split is None:
                log_once(logger, logging.DEBUG, "agent attention: a mask that is not key padding; that call runs "
                         "stock attention")
                return self.hand_back("mask-not-key-padding")
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
    when the image queries' rows are not one row broadcast (size or stride 0 along the query dimension)."""
    if mask.ndim < 2:
        return None
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[-2] == 1:
        return mask, mask
    img_rows, txt_rows = layout.split(mask, dim=-2)
    # decided from the mask's shape and strides, never its values (reading them would wait for the device)
    if img_rows.shape[-2] > 1 and img_rows.stride(-2) != 0:
        return None
    return img_rows[..., :1, :], txt_rows
