"""Training-free long video (see :mod:`.api`): the recipe (:mod:`.config`), the entry point and its plan
(:mod:`.api`), and one module per technique: noise re-scheduling (:mod:`.noise`), temporal windows
(:mod:`.attention`), attention damping (:mod:`.damping`), temporal RoPE rescaling (:mod:`.rope`; RIFLEx's plan and
its published components in :mod:`.riflex`), VSTAR (:mod:`.vstar`)."""

from __future__ import annotations

from ...reasons import register

# the hand-back codes of the long-video methods (temporal windows, damping), registered before any of them loads
register("window-covers-video", "the temporal window covers the whole video: the windows would equal dense attention")
register("video-within-window", "every frame pair is within half the training length: no pair is damped")
register("keys-differ-from-queries", "keys and queries are different sequences, so there are no frame pairs to damp")

from .api import check_num_frames, describe, long_video, resolve_config  # noqa: E402 - after the codes
from .config import LongVideoConfig, LongVideoPlan  # noqa: E402

__all__ = ["LongVideoConfig", "LongVideoPlan", "check_num_frames", "describe", "long_video", "resolve_config"]
