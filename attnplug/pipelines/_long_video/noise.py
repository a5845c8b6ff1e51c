"""Noise re-scheduling for long videos (FreeNoise, Qiu et al., ICLR 2024, arXiv 2310.15169).

The initial noise of an ``F``-frame video is one window of ``window`` freshly drawn frames followed by shuffled copies
of that window (``[e_0 .. e_{L-1}, perm_1(e), perm_2(e), ...]`` cut to ``F`` frames): distant frames share noise, so
the windows of a long video start from related noise and tend to draw the same content. Everything is drawn from the
caller's generator (one per sample when a list is given), so the noise is deterministic per seed.
"""

from __future__ import annotations

import contextlib

import torch


def _generators(generator, batch: int) -> list[torch.Generator | None]:
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} generators but the batch has {batch} videos.")
        return list(generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, a list of them or None, got {type(generator).__name__}."
        )
    return [generator] * batch


def rescheduled_noise(
    shape: tuple[int, ...],
    frame_dim: int,
    window: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    shuffle: bool = True,
) -> torch.Tensor:
    """FreeNoise initial noise of ``shape`` (batch first; frames on axis ``frame_dim``, e.g. ``(B, C, F, H, W)`` with
    ``frame_dim=2``).

    Sample ``b`` draws a ``window``-frame block from its generator (``generator[b]`` for a list, else the shared one,
    on the generator's device), then ``ceil(F / window) - 1`` permutations of it (``torch.randperm``, same generator);
    block ``j`` of the result is the base block with its frames permuted (``shuffle=False``: repeated as is). Returns
    the noise on ``device`` in ``dtype``.
    """
    shape = tuple(int(s) for s in shape)
    if not 0 < frame_dim < len(shape):
        raise ValueError(f"frame_dim={frame_dim} must index a non-batch axis of shape {shape}.")
    frames = shape[frame_dim]
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}.")
    window = min(window, frames)
    gens = _generators(generator, shape[0])
    sample_shape = list(shape[1:])
    sample_shape[frame_dim - 1] = window
    axis = frame_dim - 1
    videos = []
    for g in gens:
        gen_device = g.device if g is not None else "cpu"
        base = torch.randn(sample_shape, generator=g, device=gen_device, dtype=torch.float32)
        blocks = [base]
        for _ in range(-(-frames // window) - 1):
            if shuffle:
                perm = torch.randperm(window, generator=g, device=gen_device)
                blocks.append(base.index_select(axis, perm))
            else:
                blocks.append(base)
        videos.append(torch.cat(blocks, dim=axis).narrow(axis, 0, frames))
    return torch.stack(videos).to(device=device, dtype=dtype)


def is_stochastic_flow_scheduler(scheduler) -> bool:
    """Whether ``scheduler`` re-noises from its own x0 prediction every step (diffusers'
    ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``): ``x' = (1 - s') x0 + s' n`` with fresh ``n``."""
    config = getattr(scheduler, "config", None)
    return bool(getattr(config, "stochastic_sampling", False)) and hasattr(scheduler, "sigmas")


@contextlib.contextmanager
def rescheduled_step_noise(scheduler, frame_dim: int, window: int, generator=None):
    """Within the block, a stochastic flow-match ``scheduler`` re-noises with FreeNoise noise
    (:func:`rescheduled_noise`, drawn from ``generator``) instead of fresh i.i.d. noise, so every step keeps the
    repeated-window structure of the initial noise, not only the first. ``scheduler.step`` is an instance attribute
    only inside the block.

    The update is the scheduler's own: ``x0 = x - s v``, ``x' = (1 - s') x0 + s' n`` for the sample ``x``
    ``(B, C, F, H, W)`` (frames on ``frame_dim``), velocity ``v``, and the sigmas ``s``, ``s'`` of the step taken.
    Per-token timesteps are left to the scheduler.
    """
    step = scheduler.step

    def structured_step(model_output, timestep, sample, *args, **kwargs):
        if kwargs.get("per_token_timesteps") is not None:
            return step(model_output, timestep, sample, *args, **kwargs)
        return_dict = kwargs.pop("return_dict", True)
        result = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        index = scheduler.step_index  # advanced by one: the step just taken is index - 1
        sigma, sigma_next = scheduler.sigmas[index - 1], scheduler.sigmas[index]
        x0 = sample.float() - sigma * model_output.float()
        noise = rescheduled_noise(sample.shape, frame_dim, window, generator, device=sample.device)
        result.prev_sample = ((1.0 - sigma_next) * x0 + sigma_next * noise).to(result.prev_sample.dtype)
        return result if return_dict else (result.prev_sample,)

    scheduler.step = structured_step
    try:
        yield scheduler
    finally:
        del scheduler.step
