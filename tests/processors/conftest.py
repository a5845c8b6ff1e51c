import pytest
import torch.nn.functional as F

from attnplug.methods.base import AttentionMethod


class Tagged(AttentionMethod):
    """Exact attention that records (layer index, step, level, guidance) of every call it serves."""

    supports_mask = True

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, layout, mask=None, info=None):
        self.calls.append((info.layer_index, info.step, info.level, info.guidance))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=info.scale)


@pytest.fixture
def tagged():
    return Tagged()
