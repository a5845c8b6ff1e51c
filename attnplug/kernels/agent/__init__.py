"""Agent attention (Agent Attention / AgentSD): ``softmax(Q A^T s_b) softmax(A K^T s_g) V + c V`` through ``n``
agent tokens ``A``, ``O(N n D)``.

Layout: ``reference.py`` (float64 formula with explicit matrices, the ground truth), ``torch.py`` (the fast path:
two SDPA calls, or a chunked log-sum-exp merge when text keys are attended exactly).
"""

from .reference import agent_attention_reference
from .torch import agent_attention, gather_with_lse

__all__ = ["agent_attention", "agent_attention_reference", "gather_with_lse"]
