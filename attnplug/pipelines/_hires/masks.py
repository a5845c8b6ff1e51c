"""Text padding of joint-attention pipelines, removed before the refinement's local attention sees it.

Chroma passes its transformer a key-padding mask over ``[text, image]`` tokens, which the transformer turns into a
square ``(B, 1, N, N)`` mask: local attention methods take key-padding masks only, so every refinement call would
run stock attention. Padded text tokens are excluded as keys from every query and the transformer returns only the
image tokens, so dropping them is exact: :func:`drop_text_padding` cuts the trailing text positions padded in
every prompt of the batch and removes the mask when nothing is padded any more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .family import Family

#: families whose transformer takes a text-padding ``attention_mask`` over ``[text, image]`` tokens
TEXT_PADDING_FAMILIES = ("chroma",)


def _drop(module, args, kwargs):
    if args:
        raise TypeError(
            f"hires: {type(module).__name__} was called with {len(args)} positional argument(s); the text-padding "
            "cut of the refinement reads `encoder_hidden_states`, `txt_ids` and `attention_mask` as keywords, as "
            "the pipeline passes them."
        )
    mask = kwargs.get("attention_mask")
    text = kwargs.get("encoder_hidden_states")
    if mask is None or text is None:  # nothing padded
        return None
    t = text.shape[1]
    if mask.ndim != 2 or mask.shape[1] <= t:
        raise ValueError(
            f"hires: attention_mask of shape {tuple(mask.shape)} is not the (B, text + image) key-padding mask "
            f"{type(module).__name__} takes with {t} text tokens."
        )
    used = mask[:, :t].bool().any(dim=0).nonzero()  # text positions some prompt of the batch keeps
    kept = int(used[-1]) + 1 if len(used) else 1  # trailing positions padded in every prompt are cut
    out = dict(kwargs)
    out["encoder_hidden_states"] = text[:, :kept]
    ids = kwargs.get("txt_ids")
    if ids is not None:
        out["txt_ids"] = ids[..., :kept, :]
    rest = torch.cat([mask[:, :kept], mask[:, t:]], dim=1)
    out["attention_mask"] = None if bool(rest.bool().all()) else rest
    return args, out


@contextlib.contextmanager
def drop_text_padding(family: Family, denoiser: torch.nn.Module) -> Iterator[None]:
    """While active, calls of ``denoiser`` (``encoder_hidden_states (B, T, D)``, ``txt_ids (T, 3)``,
    ``attention_mask (B, T + N)``) get the text cut to its kept tokens and no mask when none is left padded; a no-op
    for families without a text-padding mask."""
    if family.name not in TEXT_PADDING_FAMILIES:
        yield
        return
    handle = denoiser.register_forward_pre_hook(_drop, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
