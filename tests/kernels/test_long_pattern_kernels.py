"""The ``long`` sparse video pattern through the GPU backends' path, on the CPU: the Triton kernel in the interpreter
(TRITON_INTERPRET=1, set by conftest.py) and FlexAttention uncompiled, on a tiny grid whose frames are padded to 16
slots, with text and key padding, against the dense masked SDPA of the pattern's frame rule (float32, 1e-4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testutil import prepare_backend

from attnplug import SparseVideoConfig, TokenLayout
from attnplug.methods.patterns import long_frame_mask

LAYOUT = TokenLayout(6, 3, 5, text_tokens=4, text_first=True)  # 15 tokens per frame: 16-slot frame blocks


def _dense_masked(q, k, v, keep):
    hw, n_text = LAYOUT.height * LAYOUT.width, LAYOUT.text_tokens
    frame = torch.cat([torch.full((n_text,), -1), torch.arange(LAYOUT.image_tokens) // hw])
    fm = long_frame_mask(LAYOUT.frames, 3, 2)
    img = frame >= 0
    f = frame.clamp(min=0)
    mask = (~img[:, None] | ~img[None, :] | fm[f][:, f])[None, None] & keep[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("backend", ["triton", "flex"])
def test_long_on_the_gpu_backends_matches_dense_masked(monkeypatch, backend):
    prepare_backend(backend, monkeypatch)
    method = SparseVideoConfig(pattern="long", window_frames=3, anchor_frames=2, backend=backend).build()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, LAYOUT.num_tokens, 16, generator=gen) for _ in range(3))
    keep = torch.ones(2, LAYOUT.num_tokens, dtype=torch.bool)
    keep[1, :2] = False  # two padded text keys in batch entry 1
    with torch.no_grad():
        out = method(q, k, v, LAYOUT, keep[:, None, None, :])
    plan = method._plan(LAYOUT, "cpu")
    assert plan.block == 16 and plan.details["padded_positions"] == 6
    torch.testing.assert_close(out, _dense_masked(q, k, v, keep), atol=1e-4, rtol=0)
