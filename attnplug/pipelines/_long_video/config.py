"""The long-video recipe (:class:`LongVideoConfig`) and its resolution for one call (:class:`LongVideoPlan`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Schedule, help_field
from ...methods.sparse_video import SparseVideoConfig
from .._config import PipelineConfig
from .attention import WEIGHTINGS

ROPE_CHOICES = ("auto", "riflex", "by_part", "none")
# Defaults fitted on shapes-video (benchmarks/longvideo_bench.py, docs/long_video.md): temporal positions divided by
# the extension (the video spans the training length in RoPE phase; refit at 2x and 4x, results/long_video_refit.json),
# so RIFLEx's intrinsic component is kept by default (lowered only when a smaller position_scale leaves the span beyond
# its period); on video DiTs beyond the training length, the long sparse pattern
# (sparse='auto'), and where it is not chosen, beyond 2x, training-length windows; either runs in the last quarter of
# the steps (the first three quarters dense).
POSITION_SCALE = 1.0


def default_position_scale(extension: float) -> float:
    """The default temporal position divisor for a video ``extension`` times the training length."""
    return max(1.0, POSITION_SCALE * extension)


#: Former field names -> the fields that replaced them (refused with the new name).
RENAMED = {"window": "window_frames", "stride": "stride_frames"}
GLOBAL_STEPS = 0.75
# With the long sparse pattern: the first three quarters of the steps dense (refit on the shapes-video weights before
# the shipped ones, 0.65-0.75 px/frame, positions divided by 3 at 4x, seeds 9000+,
# benchmarks/results/long_video_refit.json: with the first half dense the object persisted in 33 % of 4x videos,
# with three quarters in 67 %, moving steadily in 33 %, in 0.89x of stock's time; at 2x 100 % and 83 % steady).
LONG_GLOBAL_STEPS = 0.75
#: ``LongVideoConfig.sparse``'s family default: the long pattern on video DiTs beyond the training length.
SPARSE_AUTO = "auto"


@dataclass(frozen=True)
class LongVideoConfig(PipelineConfig):
    """Which long-video techniques :func:`long_video` uses. ``"auto"`` choices and ``None`` fields take the family
    default (:func:`resolve_config`); frame counts are video frames (before the VAE's temporal compression)."""

    noise_rescheduling: bool | None = help_field(
        None, "FreeNoise initial noise: shuffled repeats of one training-length window (None = family default)."
    )
    temporal_windows: bool | None = help_field(
        None, "Self-attention in sliding training-length frame windows with fused overlaps (None = family default)."
    )
    window_frames: int | None = help_field(
        None, "Temporal window length in video frames (None = the training length).", min=1
    )
    stride_frames: int | None = help_field(
        None, "Video frames between temporal window starts (None = half the window).", min=1
    )
    weighting: str = help_field("pyramid", "Fusion weights of overlapping windows.", choices=WEIGHTINGS)
    global_heads: int = help_field(0, "Heads per layer that attend densely over the whole video (global path).", min=0)
    global_steps: int | float | None = help_field(
        None, "First denoising steps with dense attention for all heads (global path) before the windows or the long "
        "sparse pattern run: a number of steps, or a fraction of the steps in [0, 1) (None = 0.75 when the windows "
        "or the long pattern run, else 0); when they cover every step of a call, long_video warns that the "
        "windows or the pattern never run.", min=0
    )
    rope: str = help_field(
        "auto",
        "Temporal RoPE rescaling for video DiTs: 'riflex' (divide positions by `position_scale`, then lower the "
        "intrinsic frequency, the family's published RIFLEx k, if the video still spans more than its period), "
        "'by_part' (interpolate "
        "the long-period components by `position_scale`, keep the short ones), 'none', or 'auto' (family default: "
        "'riflex' on RoPE families).",
        choices=ROPE_CHOICES,
    )
    position_scale: float | None = help_field(
        None, "Temporal position divisor for the RoPE rescaling (None = the extension, at least 1; 1 = no "
        "interpolation).", min=1
    )
    riflex_margin: float = help_field(0.9, "RIFLEx: the video spans this fraction of one period.", min=0.01, max=1)
    vstar: bool | None = help_field(
        None, "VSTAR band bias on temporal attention (AnimateDiff motion modules; None = family default)."
    )
    vstar_strength: float = help_field(1.0, "VSTAR: bias added on the diagonal of the temporal logits.", min=0)
    vstar_sigma: float = help_field(0.25, "VSTAR: band width as a fraction of the frames attended.", min=0.01, max=4)
    damping: bool | None = help_field(
        None, "UltraViCo attention damping: positive attention scores of frame pairs more than half the training "
        "length apart are multiplied by `damping_factor`, over the whole video and every step (None = off; replaces "
        "the default temporal windows when on). On the long pattern's kept frame pairs (its far anchors and clamped "
        "ends) where that pattern runs (sparse='auto' on video DiTs, or sparse=SparseVideoConfig(pattern='long')), "
        "else dense; refused with temporal_windows=True or another sparse pattern.",
    )
    damping_factor: float = help_field(0.9, "Damping: UltraViCo's decay factor (1 = no damping).", min=0.01, max=1)
    train_frames: int | None = help_field(
        None, "Training length in video frames (None = from the model config or the family row, attnplug.families).",
        min=1
    )
    sparse: SparseVideoConfig | str | None = help_field(
        "auto", "A sparse video pattern (attnplug.SparseVideoConfig): the 'long' pattern runs over the whole video "
        "after the dense first steps (global_steps; a training-length window of frames around every frame plus "
        "anchor frames, so the temporal windows stay off); any other pattern runs inside each temporal window, on "
        "the window's image tokens and every text token of joint attention. 'auto' (family default): the long "
        "pattern on video DiTs beyond the training length (not on LTX / LTX-2, nor where the config asks for the "
        "temporal windows; the plan's sparse_note says what was chosen and why); None: no sparse pattern (the recipe "
        "before 'auto')."
    )

    def __new__(cls, *args, **kwargs):
        for old, new in RENAMED.items():  # a clear error for the names before the unit was in them
            if old in kwargs:
                raise TypeError(f"LongVideoConfig({old}={kwargs[old]!r}): the field is now {new!r} (video frames); "
                                f"give LongVideoConfig({new}={kwargs[old]!r}) (docs/migration.md).")
        return super().__new__(cls)

    def __post_init__(self):
        super().__post_init__()
        if self.global_steps is not None:
            try:  # the same rule as the Schedule it becomes
                Schedule(warmup_steps=self.global_steps)
            except ValueError as exc:
                raise ValueError(f"LongVideoConfig.global_steps={self.global_steps!r}: {exc}") from None
        if isinstance(self.sparse, str):
            if self.sparse != SPARSE_AUTO:
                raise ValueError(f"LongVideoConfig.sparse={self.sparse!r} is not accepted: give {SPARSE_AUTO!r} (the "
                                 "family default), None (no sparse pattern) or an attnplug.SparseVideoConfig.")
        elif self.sparse is not None and not isinstance(self.sparse, SparseVideoConfig):
            raise TypeError(f"LongVideoConfig.sparse must be {SPARSE_AUTO!r}, None or a SparseVideoConfig, got "
                            f"{self.sparse!r}.")


@dataclass(frozen=True)
class LongVideoPlan:
    """A :class:`LongVideoConfig` resolved for one pipeline and frame count (``num_frames`` in video frames, every
    other count in latent frames). ``riflex_component`` is the temporal RoPE component RIFLEx lowers (0-based; None
    without temporal RoPE), ``riflex_period`` its stock period, ``riflex_lowered`` whether this video lowers it,
    ``riflex_source`` where the component comes from (the published k or the rule) and ``rope_note`` one sentence on
    what happens to RoPE and why (also when it stays stock). ``sparse`` is the sparse pattern the call runs
    (``LongVideoConfig.sparse`` with ``"auto"`` resolved, the long pattern's window filled in; None for none),
    ``long_sparse`` whether it is the long pattern over the whole video, and ``sparse_note`` one sentence on which
    pattern runs and why."""

    family: str
    num_frames: int
    latent_frames: int
    train_latent: int
    temporal_compression: int
    noise_rescheduling: bool
    temporal_windows: bool
    window: int
    stride: int
    rope: str
    position_scale: float
    vstar: bool
    global_steps: int | float = 0
    damping: bool = False
    damping_factor: float = 0.9
    long_sparse: bool = False  # the 'long' sparse pattern over the whole video (instead of temporal windows)
    sparse: SparseVideoConfig | None = None  # the pattern that runs ('auto' resolved, the long pattern's window set)
    sparse_note: str = ""
    riflex_component: int | None = None
    riflex_period: float | None = None
    riflex_lowered: bool = False
    riflex_source: str = ""
    rope_note: str = ""

    @property
    def extension(self) -> float:
        return self.latent_frames / self.train_latent
