"""RIFLEx's plan: which temporal RoPE component it lowers (the *intrinsic* component ``k``, per family), and the
frequencies that result (:class:`RiflexPlan`; the hooks that apply it are in :mod:`.rope`).

RIFLEx (Zhao et al., ICML 2025, arXiv 2502.15894) identifies ``k`` per model from the first latent frame at which a
too-long video repeats (the component whose period is closest to it) and publishes it 1-based: its code lowers
``freqs[k - 1]``. :data:`PUBLISHED_K` holds the published ``k`` of each family, with the temporal RoPE
(``dim``, ``theta``) it was published for; it applies to a model of that family whose temporal frequencies are those
(``theta ** (-2 j / dim)``), whatever its training length.

**Rule for a model without a published k** (another family, or a temporal RoPE of other dimension or theta): the
component whose period ``N_j = 2 pi / omega_j`` (in RoPE positions, latent frames for every supported family) is
the shortest one not below the training length ``L``. A component of shorter period was seen through whole cycles in
training; the repetition RIFLEx observes starts beyond ``L``, at the first period the model never saw complete, so
this is the component the paper's ``argmin_j |N_j - N_repeat|`` selects when the repetition frame is not measured.
When every period is shorter than ``L``, the longest one.

The rule and the table agree for HunyuanVideo (``L`` = 33: periods 6.3, 12.6, 25.1, 50.3 -> index 3) and CogVideoX-5b
(``L`` = 13: 6.3, 19.9 -> index 1); for Wan (``L`` = 21: periods 6.3, 9.6, 14.5, 22.1, 33.5, 50.9, ...) the rule gives
index 3 (period 22.1) where the published ``k = 6`` is index 5 (period 50.9), so the table decides.

No k is published for HunyuanVideo 1.5 or LTX-2, so they take the rule (the table is keyed by family: a published k
never carries over to another family, even one with the same temporal RoPE). HunyuanVideo 1.5 (dim 16, theta 256,
``L`` = 31 latent frames of its 121): periods 6.3, 12.6, 25.1, 50.3 -> index 3. LTX-2 (682 components at 24 fps,
periods ``120 / 10000 ** (j / 681)`` latent frames, ``L`` = 16 of its 121 frames): index 148 (period 16.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PUBLISHED_K", "PublishedK", "RiflexPlan", "intrinsic_component", "nearest_period_above",
           "plan_for_frequencies", "riflex_frequency"]


@dataclass(frozen=True)
class PublishedK:
    """A published intrinsic component: ``k`` 1-based as published, for the temporal RoPE of dimension ``dim``
    (``dim // 2`` components) and base ``theta``; ``source`` says where it is published."""

    k: int
    dim: int
    theta: float
    source: str

    @property
    def index(self) -> int:
        """``k`` 0-based (the component index attnplug uses)."""
        return self.k - 1

    def frequencies(self) -> list[float]:
        """The temporal RoPE frequencies ``(dim // 2,)`` it was published for: ``theta ** (-2 j / dim)``."""
        return [1.0 / self.theta ** (2 * j / self.dim) for j in range(self.dim // 2)]

    def matches(self, omegas) -> bool:
        """Whether ``omegas`` (radians per RoPE position) are the published model's temporal frequencies."""
        ref = self.frequencies()
        return len(ref) == len(omegas) and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(ref, omegas))


#: family -> the published intrinsic component (1-based k). The one place attnplug keeps them.
PUBLISHED_K: dict[str, PublishedK] = {
    "hunyuanvideo": PublishedK(4, 16, 256.0, "thu-ml/RIFLEx hunyuanvideo.py, k=4 (N_k=50)"),
    "cogvideox": PublishedK(2, 16, 10000.0, "thu-ml/RIFLEx cogvideox.py, k=2 (N_k=20), CogVideoX-5b"),
    "wan": PublishedK(6, 44, 10000.0, "VideoX-Fun riflex_k=6, Wan 2.1 / 2.2"),
}


def nearest_period_above(periods: list[float], train_frames: float) -> int:
    """Index of the shortest period ``>= train_frames`` (the longest period when all are shorter)."""
    if not periods:
        raise ValueError("nearest_period_above: no temporal RoPE components (periods is empty).")
    above = [j for j, n in enumerate(periods) if n >= train_frames]
    if not above:
        return max(range(len(periods)), key=periods.__getitem__)
    return min(above, key=periods.__getitem__)


def intrinsic_component(family: str, omegas, train_frames: float) -> tuple[int, str]:
    """``(index, source)``: the 0-based component RIFLEx lowers for temporal frequencies ``omegas`` (radians per RoPE
    position) of a ``family`` model trained on ``train_frames`` positions, and where the choice comes from
    (``"published k=4 (...)"`` or ``"rule: ..."``)."""
    omegas = [float(w) for w in omegas]
    published = PUBLISHED_K.get(family)
    if published is not None and published.matches(omegas):
        return published.index, f"published k={published.k} ({published.source})"
    periods = [2 * math.pi / w for w in omegas]
    j = nearest_period_above(periods, train_frames)
    why = ("the temporal RoPE differs from the published one" if published is not None else "no published k")
    return j, f"rule: shortest period >= the training length ({why})"


def riflex_frequency(omega: float, test_frames: int, margin: float) -> float:
    """The lowered intrinsic frequency: ``margin * 2 pi / test_frames``, never above the original ``omega``."""
    return min(omega, margin * 2 * math.pi / test_frames)


@dataclass(frozen=True)
class RiflexPlan:
    """What the hook changes: the temporal RoPE frequencies per RoPE position, ``omegas`` -> ``new_omegas``.
    ``index`` is the intrinsic component (0-based) and ``source`` where that choice comes from; ``train_frames`` /
    ``test_frames`` are in RoPE positions; ``position_scale`` divides every temporal position first (1 = none)."""

    family: str
    index: int
    omegas: tuple[float, ...]
    new_omegas: tuple[float, ...]
    train_frames: int
    test_frames: int
    position_scale: float = 1.0
    margin: float = 0.9
    mode: str = "riflex"
    source: str = ""

    @property
    def omega(self) -> float:
        return self.omegas[self.index]

    @property
    def new_omega(self) -> float:
        return self.new_omegas[self.index]

    @property
    def period(self) -> float:
        """The intrinsic component's stock period in RoPE positions."""
        return 2 * math.pi / self.omega

    @property
    def span(self) -> float:
        """The video's length in RoPE phase: ``test_frames / position_scale``."""
        return self.test_frames / self.position_scale

    @property
    def lowered(self) -> bool:
        """Whether RIFLEx lowers the intrinsic component (``mode="riflex"`` and ``span > period``)."""
        return self.mode == "riflex" and self.new_omega < self.omega / self.position_scale

    @property
    def changes_rope(self) -> bool:
        """Whether any temporal frequency changes (False: the hook would leave RoPE stock)."""
        return self.new_omegas != self.omegas

    def describe(self) -> str:
        """One sentence on what the plan does to RoPE and why."""
        k = f"component {self.index} ({self.source}; period {self.period:.1f})"
        interp = f"positions divided by {self.position_scale:g}; " if self.position_scale != 1 else ""
        if self.mode == "by_part":
            return (f"by-part interpolation: components with a period of at least {self.train_frames} divided by "
                    f"{self.position_scale:g}, shorter ones kept")
        if self.lowered:
            return (f"{interp}RIFLEx lowers {k} from {self.omega:.4g} to {self.new_omega:.4g} rad per frame: the "
                    f"video spans {self.span:.1f} frames in RoPE phase, beyond that period")
        if not self.changes_rope:
            return (f"RoPE stays stock: the video spans {self.span:.1f} frames in RoPE phase, within the period of "
                    f"RIFLEx's {k}, and position_scale is 1")
        return (f"{interp}RIFLEx keeps {k}: the video spans {self.span:.1f} frames in RoPE phase, within that "
                "period")


def plan_for_frequencies(family: str, omegas, train_frames: int, test_frames: int, margin: float = 0.9,
                         position_scale: float = 1.0, mode: str = "riflex") -> RiflexPlan:
    """The :class:`RiflexPlan` for a ``family`` model's temporal RoPE frequencies ``omegas`` (radians per RoPE
    position; ``train_frames`` / ``test_frames`` in RoPE positions); see :func:`.rope.riflex_plan`."""
    omegas = tuple(float(w) for w in omegas)
    periods = [2 * math.pi / w for w in omegas]
    k, source = intrinsic_component(family, omegas, train_frames)
    if mode == "by_part":
        scaled = [w if n < train_frames else w / position_scale for w, n in zip(omegas, periods)]
    else:
        scaled = [w / position_scale for w in omegas]
        span = test_frames / position_scale
        if span > periods[k]:  # the authors' condition: L_test > N_k
            scaled[k] = riflex_frequency(omegas[k], span, margin) / position_scale
    return RiflexPlan(family, k, omegas, tuple(scaled), train_frames, test_frames, position_scale, margin, mode,
                      source)
