"""Agent attention in plain torch: two SDPA calls, or, with exact text keys (joint attention), a chunked path that
merges the agent read-out and the text attention by their log-sum-exps. Never forms an ``N x N`` matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..merge import merge_attentions

__all__ = ["agent_attention", "gather_with_lse"]


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
    (B, H, T, D)`` are keys attended exactly (scale ``text_scale``, default ``gather_scale``; bias ``text_bias``
    broadcastable to ``(B, H, 1, T)``), mixed with the agent read-out by the attention mass each part would get in
    dense attention (see :func:`attnplug.kernels.agent.agent_attention_reference` for the formula).
    ``O(N n D)`` time, ``O(chunk_size * (n + T))`` extra memory.
    """
    if agents.shape[-2] < 1:
        raise ValueError("agent_attention needs at least one agent, got agents with 0 tokens.")
    if text_k is None or text_k.shape[-2] == 0:
        # Plain two-step attention: two SDPA calls (flash/efficient kernels, no N x N matrix).
        agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=key_bias, scale=gather_scale)
        out = F.scaled_dot_product_attention(q, agents, agent_v, scale=broadcast_scale)
        return out.add_(v, alpha=value_shortcut) if value_shortcut else out

    # Joint path: agents' values and log partition functions over image keys, merged with exact text attention.
    dtype = torch.float32
    text_scale = gather_scale if text_scale is None else text_scale
    agent_v, agent_lse = gather_with_lse(agents, k, v, gather_scale, key_bias, chunk_size)
    agents_t = agents.to(dtype).transpose(-1, -2)
    tk_t, tv = text_k.to(dtype).transpose(-1, -2), text_v.to(dtype)
    out = torch.empty_like(q)
    for s in range(0, q.shape[-2], chunk_size):
        qc = q[:, :, s:s + chunk_size].to(dtype)
        log_p = ((qc @ agents_t) * broadcast_scale).log_softmax(dim=-1)  # (B, H, C, n)
        img = log_p.exp() @ agent_v  # agent read-out
        if value_shortcut:
            img = img.add_(v[:, :, s:s + chunk_size].to(dtype), alpha=value_shortcut)
        log_z = (log_p + agent_lse.unsqueeze(-2)).logsumexp(dim=-1)  # image mass, broadcast like the values
        lt = (qc @ tk_t) * text_scale  # (B, H, C, T)
        if text_bias is not None:
            lt = lt + text_bias.to(dtype)
        log_t = lt.logsumexp(dim=-1)  # exact text mass (-inf when every text key is masked)
        txt = (lt - torch.where(torch.isfinite(log_t), log_t, 0.0).unsqueeze(-1)).exp() @ tv
        out[:, :, s:s + chunk_size] = merge_attentions([img, txt], [log_z, log_t])[0].to(q.dtype)
    return out


def gather_with_lse(
    agents: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    key_bias: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(agents k^T * scale + key_bias) v`` and its row log-sum-exp, in float32.

    Chunked over agents so each score block holds about ``chunk_size * 256`` floats. (PyTorch's CPU flash op also
    returns the log-sum-exp, but gave non-finite rows now and then on small head dims, so it is not used.)

    Args:
        agents: ``(B, H, n, D)``; k, v: ``(B, H, N, D)``; key_bias: additive, broadcastable to ``(B, H, 1, N)``.

    Returns:
        ``(values (B, H, n, D), lse (B, H, n))``.
    """
    dtype = torch.float32
    n = agents.shape[-2]
    rows = max(1, min(n, (chunk_size * 256) // max(1, k.shape[-2])))
    k_t, vf = k.to(dtype).transpose(-1, -2), v.to(dtype)
    values, lses = [], []
    for s in range(0, n, rows):
        logits = (agents[:, :, s:s + rows].to(dtype) @ k_t) * scale
        if key_bias is not None:
            logits = logits + key_bias.to(dtype)
        lse = logits.logsumexp(dim=-1, keepdim=True)
        values.append((logits - lse).exp() @ vf)
        lses.append(lse.squeeze(-1))
    return torch.cat(values, dim=-2), torch.cat(lses, dim=-1)
