"""The hi-res recipe, :class:`HiResConfig`, with its per-family defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config import MethodConfig, help_field
from ...methods.base import AttentionMethod
from .._config import PipelineConfig

METHODS = ("auto", "hidiffusion", "coarse_to_fine")
LOCAL_ATTENTION = ("auto", "neighborhood", "window", "freeswim", "dense")
UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")
SHIFTS = ("cycle", "random", "none")
#: Coarse-to-fine defaults, tuned on shapes-dit with seeds 5000+ (disjoint from the benchmark's 1000+): re-noise
#: 0.4 for the first refinement stage and 0.3 for later ones (0.5 and more let the refinement re-tile the 4x canvas:
#: 50 % duplicated), and a low-pass of 0.5 source pixels on the upsampled latent (2x duplication 27 % -> 12 %: the
#: coarse stage's small specks are no longer enlarged into objects).
DEFAULT_STRENGTH = (0.4, 0.3)
DEFAULT_LOWPASS = 0.5


@dataclass(frozen=True)
class HiResConfig(PipelineConfig):
    """The hi-res recipe. ``"auto"`` choices and ``None`` fields take the per-family default chosen from the model
    (see ``docs/hires.md``)."""

    method: str = help_field(
        "auto", "'hidiffusion' (RAU-Net + shifted windows; U-Nets), 'coarse_to_fine' (generate at the training size, "
        "upsample, re-noise, refine; any family) or 'auto' (hidiffusion for U-Nets, coarse_to_fine for DiTs).",
        choices=METHODS,
    )
    raunet: bool = help_field(True, "HiDiffusion: use the resolution-aware U-Net in the early steps.")
    raunet_switch: tuple | None = help_field(
        None, "HiDiffusion: fractions of the steps at which the RAU-Net factor halves (the last one switches to the "
        "vanilla U-Net). Default: (0.4,) up to 2.5x (HiDiffusion's T1), (0.3, 0.7) above (its T2, T1).", min=0.0,
        max=1.0,
    )
    windows: bool = help_field(
        True, "HiDiffusion: shifted-window self-attention (MSW-MSA) in the highest-resolution attention blocks, "
        "windows of the training size."
    )
    window_shift: str = help_field("random", "MSW-MSA shift per step (see WindowConfig.shift).", choices=SHIFTS)
    strength: float | tuple | None = help_field(
        None, "Coarse-to-fine: re-noise strength of the refinement stages (fraction of the schedule re-run): one "
        "number, or one per stage (the last repeats). "
        "Default (0.4, 0.3).", min=0.05, max=1.0,
    )
    start_sigma: float | tuple | None = help_field(
        None, "Coarse-to-fine on flow-matching pipelines whose schedule shift grows with the resolution (Flux, "
        "Chroma, Qwen-Image, Flux 2, Z-Image; SD3 with dynamic shifting): the noise level sigma each refinement "
        "stage starts from, one number or one per stage (the last repeats). There a fraction of the steps means a "
        "higher noise level at a larger size (Flux 2048x2048: strength 0.4 starts at sigma 0.94). None = the sigma "
        "`strength` reaches at the training size.",
        min=0, max=1, min_open=True, max_open=True,
    )
    max_stage_scale: float = help_field(
        2.0, "Coarse-to-fine: largest upscale of one stage; larger targets go through intermediate sizes.",
        min=1.01, max=16.0,
    )
    upsample_mode: str = help_field("bicubic", "Coarse-to-fine: latent upsampling.", choices=UPSAMPLE_MODES)
    lowpass: float | None = help_field(
        None, "Coarse-to-fine: Gaussian low-pass of the upsampled latent, sigma in source pixels (0 = none): the "
        "refinement then redraws the fine detail instead of enlarging the coarse stage's specks. Default 0.5.",
        min=0.0, max=8.0,
    )
    local_attention: str = help_field(
        "auto", "Coarse-to-fine: self-attention of the refinement stages: 'neighborhood' (inward window of the "
        "training token grid), 'window' (shifted training-size windows), 'freeswim' (window + full-branch "
        "cross-attention), 'dense', or 'auto' (window for DiTs, neighborhood per level for U-Nets).",
        choices=LOCAL_ATTENTION,
    )
    attention: Any = help_field(
        None, "An attnplug method config (e.g. AgentConfig()) for the hi-res stage; replaces local_attention "
        "(coarse-to-fine) or the MSW-MSA windows (HiDiffusion)."
    )
    attention_scale: bool = help_field(
        False, "Grow the softmax scale by sqrt(log N / log N_train) in dense/global hi-res attention."
    )
    train_size_px: tuple | None = help_field(
        None, "Training resolution (height, width) in pixels; default read from the model / pipeline."
    )
    progress: bool = help_field(True, "Show a progress bar over the stages.")

    def __post_init__(self):
        super().__post_init__()
        if self.raunet_switch is not None:
            sw = tuple(self.raunet_switch)
            if not sw or any(not isinstance(x, (int, float)) or isinstance(x, bool) for x in sw) or any(
                b < a for a, b in zip(sw, sw[1:])
            ):
                raise ValueError(
                    f"HiResConfig.raunet_switch must be increasing fractions in [0, 1], got {self.raunet_switch!r}."
                )
            object.__setattr__(self, "raunet_switch", tuple(float(x) for x in sw))
        if isinstance(self.strength, (tuple, list)):
            st = tuple(self.strength)
            if not st or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.05 <= x <= 1 for x in st):
                raise ValueError(f"HiResConfig.strength entries must be in [0.05, 1], got {self.strength!r}.")
            object.__setattr__(self, "strength", tuple(float(x) for x in st))
        if isinstance(self.start_sigma, (tuple, list)):
            ss = tuple(self.start_sigma)
            if not ss or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1 for x in ss):
                raise ValueError(f"HiResConfig.start_sigma entries must be in (0, 1), got {self.start_sigma!r}.")
            object.__setattr__(self, "start_sigma", tuple(float(x) for x in ss))
        if self.train_size_px is not None:
            ts = tuple(self.train_size_px)
            if len(ts) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in ts):
                raise ValueError(
                    f"HiResConfig.train_size_px must be (height, width) in pixels, got {self.train_size_px!r}."
                )
            object.__setattr__(self, "train_size_px", ts)
        if self.attention is not None and not isinstance(self.attention, (MethodConfig, AttentionMethod)):
            raise TypeError(
                f"HiResConfig.attention must be an attnplug method config (e.g. attnplug.AgentConfig()), got "
                f"{type(self.attention).__name__}."
            )
