"""Training-free long video (see :mod:`.api`): the recipe (:mod:`.config`), the entry point and its plan
(:mod:`.api`), and one module per technique: noise re-scheduling (:mod:`.noise`), temporal windows
(:mod:`.attention`), attention damping (:mod:`.damping`), temporal RoPE rescaling (:mod:`.rope`), VSTAR
(:mod:`.vstar`)."""

from __future__ import annotations

from .api import check_num_frames, describe, long_video, resolve_config
from .config import LongVideoConfig, LongVideoPlan

__all__ = ["LongVideoConfig", "LongVideoPlan", "check_num_frames", "describe", "long_video", "resolve_config"]
