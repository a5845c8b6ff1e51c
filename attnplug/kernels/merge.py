"""Exact merge of attention outputs computed over disjoint key sets, from their log-sum-exps (NATTEN's
``merge_attentions``; the flash-attention split-KV combine).

If ``o_i = softmax(s_i) V_i`` over key set ``i`` and ``l_i = logsumexp(s_i)``, attention over the union of the key
sets is ``sum_i exp(l_i - l) o_i`` with ``l = logsumexp_i l_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["merge_attentions"]


def merge_attentions(
    outputs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key sets.

    Args:
        outputs: partial outputs ``(..., N, D)`` (e.g. ``(B, H, N, D)``), all of one shape.
        lses: their log-sum-exps ``(..., N)`` (natural log; ``-inf`` where a query saw no key of that set).

    Returns:
        ``(output (..., N, D), lse (..., N))`` in float32. A query whose every set is empty (all ``-inf``) gets a zero
        output and ``lse = -inf``.
    """
    if len(outputs) != len(lses) or not outputs:
        raise ValueError(
            f"merge_attentions needs one log-sum-exp per output and at least one output, got {len(outputs)} outputs "
            f"and {len(lses)} lses."
        )
    for o, lse in zip(outputs, lses):
        if o.shape != outputs[0].shape or tuple(lse.shape) != tuple(o.shape[:-1]):
            raise ValueError(
                f"merge_attentions: outputs must share one shape (..., N, D) and each lse be (..., N); got output "
                f"{tuple(o.shape)} with lse {tuple(lse.shape)} (first output {tuple(outputs[0].shape)})."
            )
    stacked = torch.stack([lse.float() for lse in lses])  # (S, ..., N)
    lse = torch.logsumexp(stacked, dim=0)
    ref = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # all -inf: weights 0, output 0
    out = None
    for o, part in zip(outputs, stacked):
        w = torch.exp(part - ref).unsqueeze(-1)
        term = (w * o.float()).masked_fill_(w == 0, 0.0)  # an empty set's output may be NaN (softmax of all -inf)
        out = term if out is None else out.add_(term)
    return out, lse
