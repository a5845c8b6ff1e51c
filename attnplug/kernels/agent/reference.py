"""Agent attention written out with explicit matrices and partition functions, in float64: the ground truth of
:func:`attnplug.kernels.agent.agent_attention` (readability over speed; forms every score matrix)."""

from __future__ import annotations

import torch

__all__ = ["agent_attention_reference"]


def agent_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    agents: torch.Tensor,
    gather_scale: float,
    broadcast_scale: float,
    value_shortcut: float = 0.0,
    key_bias: torch.Tensor | None = None,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    text_bias: torch.Tensor | None = None,
    text_scale: float | None = None,
) -> torch.Tensor:
    """Agent attention of ``q (B, H, N, D)`` over ``k, v (B, H, N, D)`` through ``agents (B, H, n, D)`` ->
    ``(B, H, N, D)`` float64; same arguments as :func:`attnplug.kernels.agent.agent_attention`::

        Z_a   = sum_j exp(s_g a . k_j + bias_j)            agent a's partition function over image keys
        V_A   = (exp(s_g A K^T + bias) / Z_a) V             agents gather
        P     = softmax(s_b Q A^T)                          queries read the agents
        img   = P V_A + c V
        Z_i   = sum_a P_ia Z_a                              image mass of query i (broadcast like the values)
        T_i   = sum_t exp(s_t q_i . k_t + text_bias_t)      exact text mass
        out_i = (Z_i img_i + T_i textattn_i) / (Z_i + T_i)
    """
    q, k, v, a = (x.double() for x in (q, k, v, agents))
    logits_g = a @ k.transpose(-1, -2) * gather_scale
    if key_bias is not None:
        logits_g = logits_g + key_bias.double()
    w_g = logits_g.exp()
    z_a = w_g.sum(-1)  # (B, H, n)
    agent_v = (w_g / z_a[..., None]) @ v
    p = torch.softmax(q @ a.transpose(-1, -2) * broadcast_scale, dim=-1)
    img = p @ agent_v + value_shortcut * v
    if text_k is None or text_k.shape[-2] == 0:
        return img
    text_scale = gather_scale if text_scale is None else text_scale
    z_i = (p * z_a[..., None, :]).sum(-1, keepdim=True)
    logits_t = q @ text_k.double().transpose(-1, -2) * text_scale
    if text_bias is not None:
        logits_t = logits_t + text_bias.double()
    w_t = logits_t.exp()
    t_i = w_t.sum(-1, keepdim=True)
    txt = (w_t / t_i.clamp_min(torch.finfo(torch.float64).tiny)) @ text_v.double()
    return (z_i * img + t_i * txt) / (z_i + t_i)
