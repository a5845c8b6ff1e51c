"""Self-attention masks a family declares (``FamilySpec.mask_form``) that the interception core runs as a key mask.

``"outer-key-padding"`` (HunyuanVideo 1.5): the processor pads its prompt and masks the joint ``[image, text]``
self-attention with a boolean ``(B, 1, N, N)`` mask ``keep[i] & keep[j]``: padded text tokens are masked as keys and,
as queries, their rows are fully masked. Every kept query row then equals the key mask ``keep``, so the method runs
with ``(B, 1, 1, N)`` (the mask's row of a grid token, which is always kept), and the padded query rows get what stock
attention gives for them: an SDPA call over the text query rows under their rows of the mask (a fully masked row is
zeros on PyTorch's SDPA; the call reproduces whatever the installed kernel gives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TokenLayout

MASK_FORMS = ("outer-key-padding",)


def is_outer_shaped(mask, query: torch.Tensor) -> bool:
    """Whether ``mask`` has the shape of an outer key-padding mask for ``query (B, H, N, D)``: boolean
    ``(B, 1, N, N)``. Decided from shape and dtype only."""
    b, _, n, _ = query.shape
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == (b, 1, n, n)


def outer_key_padding(mask: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(key_mask (B, 1, 1, N), kept_rows (B, 1, N, 1))`` of a boolean ``(B, 1, N, N)`` ``mask`` that is
    ``keep[i] & keep[j]`` with every grid token kept; None for any other mask.

    ``keep`` is the mask's row of the first grid token. The check is tensor ops and one host read of its verdict."""
    first_grid = layout.image_slice().start
    keep = mask[:, :, first_grid]  # (B, 1, N)
    outer = keep.unsqueeze(-1) & keep.unsqueeze(-2)
    ok = torch.logical_and((mask == outer).all(), keep[..., layout.image_slice()].all())
    if not bool(ok):
        return None
    return keep.unsqueeze(-2), keep.unsqueeze(-1)


def fill_masked_rows(out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     mask: torch.Tensor, kept_rows: torch.Tensor, layout: TokenLayout, scale) -> torch.Tensor:
    """``out (B, H, N, D)`` with the rows ``kept_rows (B, 1, N, 1)`` marks as padded replaced by stock attention's
    output for them: SDPA over the text query rows (where padding sits, the grid being kept) under their rows of the
    full ``mask (B, 1, N, N)``. Tensor ops only (no host read)."""
    text = layout.text_slice()
    if text.stop == text.start:
        return out
    stock = F.scaled_dot_product_attention(query[:, :, text], key, value, attn_mask=mask[:, :, text], scale=scale)
    rows = torch.where(kept_rows[:, :, text], out[:, :, text], stock.to(out.dtype))
    return torch.cat([out[:, :, : text.start], rows, out[:, :, text.stop:]], dim=2)
