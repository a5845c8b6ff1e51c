"""HiDiffusion's RAU-Net (arXiv 2311.17528) as diffusers module hooks on a stock ``UNet2DConditionModel``.

During the early denoising steps the U-Net's first downsampler shrinks the feature map by ``2 * f`` instead of 2
(its own 3 x 3 weights as a convolution of stride ``2 f`` and dilation ``f``, the paper's resolution-aware
downsampler), so every deeper block sees the training-size feature map; the matching upsampler enlarges by ``2 f``
back to the skip connection's size (the resolution-aware upsampler). Later steps run the vanilla U-Net for detail.

Three hooks, all :class:`diffusers.hooks.ModelHook` in the modules' :class:`~diffusers.hooks.HookRegistry`:

- on the U-Net: :class:`attnplug._steps.StepHook`, the package's step tracker (the pipeline's ``CacheContext``, or
  the ``timestep`` argument: a repeated timestep is another pass of the same step), keeping the pipeline's
  (:func:`attnplug._steps.pipeline_steps`; the U-Net is its pipeline's one denoiser);
- on the first downsampler's ``conv``: the strided, dilated convolution while the factor is > 1;
- on the matching upsampler: a pre-forward hook that asks for the skip connection's size.

No diffusers forward is copied; with factor 1 (or after :func:`remove_raunet`) the modules run their own forwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from ..._hook_registry import register_hook, unregister_hook
from ..._steps import DenoisingSteps, StepHook

logger = logging.getLogger(__name__)

STEP_HOOK = "attnplug_hires_step"
DOWN_HOOK = "attnplug_hires_rau_down"
UP_HOOK = "attnplug_hires_rau_up"


@dataclass
class RAUState:
    """Shared state of one RAU-Net application: the denoising position (``steps``) and the factor schedule.

    ``factors[i]`` is the extra downsampling factor ``(fh, fw)`` used while ``step < switch_steps[i]``
    (``switch_steps`` increasing); after the last switch step the factor is 1 (vanilla U-Net)."""

    factors: tuple[tuple[int, int], ...]
    switch_fractions: tuple[float, ...]
    steps: DenoisingSteps = field(default_factory=DenoisingSteps)
    skip_size: tuple[int, int] | None = None
    calls: dict = field(default_factory=lambda: {"rau": 0, "vanilla": 0})

    def factor(self) -> tuple[int, int]:
        """The downsampling factor of the current step (``(1, 1)`` = vanilla)."""
        step, num_steps = self.steps.step, self.steps.num_steps
        if num_steps is None or step < 0:
            return self.factors[0] if self.factors else (1, 1)
        for f, frac in zip(self.factors, self.switch_fractions):
            if step < round(frac * num_steps):
                return f
        return (1, 1)


class _DownHook(ModelHook):
    """``new_forward`` of the first downsampler's ``nn.Conv2d``: stride ``2 f``, dilation ``f`` while ``f > 1``."""

    def __init__(self, state: RAUState):
        super().__init__()
        self.state = state

    def new_forward(self, module: torch.nn.Conv2d, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        fh, fw = self.state.factor()
        self.state.skip_size = tuple(x.shape[-2:])
        if fh == 1 and fw == 1:
            self.state.calls["vanilla"] += 1
            return self.fn_ref.original_forward(x, *args, **kwargs)
        self.state.calls["rau"] += 1
        sh, sw = module.stride
        ph, pw = module.padding
        return F.conv2d(x, module.weight, module.bias, stride=(sh * fh, sw * fw), padding=(ph * fh, pw * fw),
                        dilation=(fh, fw), groups=module.groups)


class _UpHook(ModelHook):
    """Pre-forward hook of the matching ``Upsample2D``: upsample to the recorded skip size while RAU is active."""

    def __init__(self, state: RAUState):
        super().__init__()
        self.state = state

    def pre_forward(self, module, *args, **kwargs):
        if self.state.factor() == (1, 1) or self.state.skip_size is None:
            return args, kwargs
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs.pop("output_size", None)
        return (hidden, self.state.skip_size, *args[2:]), kwargs


def raunet_sites(unet: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """``(first downsampler conv, matching upsampler, down-block index)`` of a ``UNet2DConditionModel``.

    The matching upsampler of ``down_blocks[i]``'s downsampler is ``up_blocks[n - 2 - i]``'s: the one whose output
    is concatenated with ``down_blocks[i]``'s resnet outputs."""
    downs, ups = list(unet.down_blocks), list(unet.up_blocks)
    for i, block in enumerate(downs):
        samplers = getattr(block, "downsamplers", None)
        if samplers:
            conv = getattr(samplers[0], "conv", None)
            if not isinstance(conv, torch.nn.Conv2d):
                raise TypeError(
                    f"RAU-Net needs a convolutional downsampler; down_blocks.{i}.downsamplers.0 of "
                    f"{type(unet).__name__} has {type(conv).__name__} (set HiResConfig(raunet=False))."
                )
            j = len(ups) - 2 - i
            up_samplers = getattr(ups[j], "upsamplers", None) if 0 <= j < len(ups) else None
            if not up_samplers:
                raise TypeError(f"up_blocks.{j} of {type(unet).__name__} has no upsampler to match down_blocks.{i}.")
            return conv, up_samplers[0], i
    raise TypeError(f"{type(unet).__name__} has no downsampler: RAU-Net does not apply (HiResConfig(raunet=False)).")


def apply_raunet(unet: torch.nn.Module, state: RAUState) -> None:
    """Register the step, downsampler and upsampler hooks on ``unet``; undo with :func:`remove_raunet`."""
    conv, up, _ = raunet_sites(unet)
    register_hook(unet, StepHook(state.steps), STEP_HOOK)
    register_hook(conv, _DownHook(state), DOWN_HOOK)
    register_hook(up, _UpHook(state), UP_HOOK)


def remove_raunet(unet: torch.nn.Module) -> None:
    """Remove the hooks of :func:`apply_raunet` (a no-op where absent); the modules' forwards are the stock ones."""
    try:
        conv, up, _ = raunet_sites(unet)
    except TypeError:
        conv = up = None
    for module, name in ((up, UP_HOOK), (conv, DOWN_HOOK), (unet, STEP_HOOK)):
        if module is not None:
            unregister_hook(module, name)
