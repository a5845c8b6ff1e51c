"""The agent method's config, importable without torch (the CLI lists and validates it before anything loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .._args import as_tuple
from ..config import MethodConfig, Schedule, help_field

if TYPE_CHECKING:
    from .agent import AgentMethod

AGENT_SOURCES = ("pool", "merge")
UNEVEN_RULES = ("adaptive", "error")


@dataclass(frozen=True)
class AgentConfig(MethodConfig):
    """Agent attention (training-free AgentSD): queries pooled into agents that gather from all keys and broadcast
    back. Defaults follow AgentSD on Stable Diffusion: one agent per 4x4 token cell, broadcast scale
    ``s ** 0.3``, value shortcut 0.075, the highest-resolution attention level only, and (default schedule) the first
    40 % of the denoising steps."""

    name: ClassVar[str] = "agent"

    agents: int | tuple[int, int] | None = help_field(
        None,
        "Agents per frame: an int count (arranged as the grid closest to the frame's aspect ratio, e.g. 64 -> 8x8) "
        "or a pooled grid (rows, cols), e.g. (16, 16). None: one agent per pool_stride cell.",
        min=1,
    )
    pool_stride: int | tuple[int, int] = help_field(
        4, "When agents is None: one agent per cell of this many tokens (a stride in tokens), an int (both sides) or "
        "(rows, cols) (AgentSD: 4).", min=1,
    )
    frame_stride: int = help_field(
        1, "Video: frames pooled into one agent group (1 = per-frame agents; >1 = 3D pooling over frames).", min=1
    )
    agent_source: str = help_field(
        "pool",
        "How agents are formed from the queries: 'pool' (average over each grid cell) or 'merge' (token merging as "
        "in AgentSD/ToMe: the first token of each cell is a destination, every token is averaged into its most "
        "cosine-similar destination of the same frame group).",
        choices=AGENT_SOURCES,
    )
    uneven: str = help_field(
        "adaptive",
        "When the agent grid does not divide the token grid: 'adaptive' (cells of floor/ceil sizes, like adaptive "
        "average pooling) or 'error' (raise ValueError).",
        choices=UNEVEN_RULES,
    )
    gather_scale: float | None = help_field(
        None, "Softmax scale of agents -> keys (softmax(A K^T s_g)). None: the call's scale (1/sqrt(head dim)).",
        min=0.0,
    )
    broadcast_scale: float | None = help_field(
        None, "Softmax scale of queries -> agents (softmax(Q A^T s_b)). None: s ** broadcast_scale_power.", min=0.0
    )
    broadcast_scale_power: float = help_field(
        0.3, "When broadcast_scale is None: s_b = s ** power with s the call's scale (AgentSD k_scale2 = 0.3).",
        min=0.0,
    )
    value_shortcut: float = help_field(0.075, "Weight c of the value shortcut out += c * V (AgentSD k_shortcut).")
    max_level: int | None = help_field(
        0,
        "Only attention levels 0..max_level (0 = the model's highest-resolution attention blocks, as AgentSD/ToMeSD; "
        "1 = one 2x downsampling below, ...). None: every level.",
        min=0,
    )
    chunk_size: int = help_field(1024, "Queries per chunk on the joint (text) path: bounds its extra memory.", min=1)

    def __post_init__(self):
        owner = type(self).__name__
        if self.agents is not None and (isinstance(self.agents, bool) or not isinstance(self.agents, int)):
            # a grid (rows, cols); an int stays a count (validated by the field's min)
            object.__setattr__(self, "agents", as_tuple(self.agents, 2, "agents", owner, minimum=1))
        object.__setattr__(self, "pool_stride", as_tuple(self.pool_stride, 2, "pool_stride", owner, minimum=1))
        for name, optional in (("frame_stride", False), ("chunk_size", False), ("max_level", True)):
            value = getattr(self, name)
            if (value is None and not optional) or (value is not None and (isinstance(value, bool)
                                                                           or not isinstance(value, int))):
                raise TypeError(f"{owner}.{name} must be an int{' or None' if optional else ''}, got {value!r}.")
        for name, optional in (("gather_scale", True), ("broadcast_scale", True), ("broadcast_scale_power", False),
                               ("value_shortcut", False)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"{owner}.{name} must be a finite number{' or None' if optional else ''}, got {value!r}."
                )
        super().__post_init__()

    def default_schedule(self) -> Schedule:
        """AgentSD's step recipe: agent attention for the first 40 % of the denoising steps, stock after."""
        return Schedule(until_step=0.4)

    def build(self) -> AgentMethod:
        from .agent import AgentMethod

        return AgentMethod(self)
