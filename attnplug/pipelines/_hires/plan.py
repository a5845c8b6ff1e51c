"""A :class:`HiResConfig` resolved for one pipeline and target size: family, method, stage sizes, RAU-Net
schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import DEFAULT_STRENGTH, HiResConfig
from .family import Family, detect_family
from .schedule import shifts_with_resolution, train_size_sigma


@dataclass(frozen=True)
class HiResPlan:
    """A resolved recipe for one call (what :func:`hires` runs)."""

    family: Family
    method: str
    sizes: tuple[tuple[int, int], ...]  # stage sizes in pixels, base first, target last
    raunet_factors: tuple[tuple[int, int], ...] = ()
    raunet_switch: tuple[float, ...] = ()
    strengths: tuple[float, ...] = DEFAULT_STRENGTH
    # per refinement stage: the noise level it starts from (pipelines whose shift grows with size), else None
    start_sigmas: tuple[float | None, ...] = ()

    def describe(self) -> dict:
        """The resolved recipe as plain values: family, method, stage sizes, and per refinement stage the re-noise
        ``strength`` or ``start_sigma`` that decides where it starts."""
        out = {"family": self.family.name, "method": self.method, "sizes": [list(s) for s in self.sizes],
               "scale": [round(x, 3) for x in self.scale]}
        if self.method == "hidiffusion":
            out.update(raunet_factors=[list(f) for f in self.raunet_factors], raunet_switch=list(self.raunet_switch))
            return out
        out["stages"] = [{"size": list(size), "strength": st, "start_sigma": sg, "starts_by": "sigma" if sg is not None
                          else "strength"}
                         for size, st, sg in zip(self.sizes[1:], self.strengths,
                                                 self.start_sigmas or (None,) * len(self.strengths))]
        return out

    @property
    def scale(self) -> tuple[float, float]:
        (h0, w0), (h, w) = self.family.train_size, self.sizes[-1]
        return h / h0, w / w0


def _check_size(name: str, value, multiple: int, family: Family) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int (pixels).")
    if value % multiple:
        lo, hi = value - value % multiple, value - value % multiple + multiple
        raise ValueError(
            f"{name}={value} is not a multiple of {multiple}, which {family.name} needs here (VAE factor "
            f"{family.vae_factor} x latent multiple {multiple // family.vae_factor}); e.g. {lo or multiple} or {hi}."
        )


def _raunet_schedule(config: HiResConfig, scale: tuple[float, float]) -> tuple[tuple, tuple]:
    kh, kw = max(1, round(scale[0])), max(1, round(scale[1]))
    if kh == 1 and kw == 1:
        return (), ()
    big = max(scale) > 2.5
    switch = config.raunet_switch or ((0.3, 0.7) if big else (0.4,))
    factors = [(kh, kw)]
    while len(factors) < len(switch):
        fh, fw = factors[-1]
        factors.append((max(1, fh // 2), max(1, fw // 2)))
    return tuple(factors), tuple(switch[: len(factors)])


def _stage_sizes(family: Family, height: int, width: int, max_scale: float) -> tuple[tuple[int, int], ...]:
    h0, w0 = family.train_size
    m = family.pixel_multiple
    n = max(1, math.ceil(math.log(max(height / h0, width / w0)) / math.log(max_scale) - 1e-9))
    sizes = []
    for i in range(n + 1):
        f = i / n
        h = h0 * (height / h0) ** f
        w = w0 * (width / w0) ** f
        sizes.append((max(m, round(h / m) * m), max(m, round(w / m) * m)))
    sizes[0], sizes[-1] = (max(m, round(h0 / m) * m), max(m, round(w0 / m) * m)), (height, width)
    out = [sizes[0]]
    for s in sizes[1:]:
        if s != out[-1]:
            out.append(s)
    return tuple(out)


def plan(pipe, height: int, width: int, config: HiResConfig | None = None, steps: int | None = None) -> HiResPlan:
    """Resolve ``config`` for ``pipe`` at ``height x width``: family, method, stage sizes, RAU-Net schedule.
    ``steps``: the call's ``num_inference_steps`` (Flux 2's schedule shift, hence its start sigmas, depends on it).
    ``ValueError`` for a scale below 1 or a size the model cannot take; ``TypeError`` for an unsupported pipeline."""
    config = config if config is not None else HiResConfig()
    if not isinstance(config, HiResConfig):
        raise TypeError(f"config must be a HiResConfig, got {type(config).__name__}.")
    family = detect_family(pipe, config.train_size_px)
    _check_size("height", height, family.pixel_multiple, family)
    _check_size("width", width, family.pixel_multiple, family)
    h0, w0 = family.train_size
    scale = (height / h0, width / w0)
    if min(scale) < 1:
        raise ValueError(
            f"hires needs a target at least the training size {h0}x{w0} of {family.name}; got {height}x{width} "
            f"(scale {scale[0]:.2f} x {scale[1]:.2f}): call the pipeline directly below it."
        )
    method = config.method
    if method == "auto":
        method = "hidiffusion" if family.is_unet else "coarse_to_fine"
    if method == "hidiffusion" and not family.is_unet:
        raise ValueError(
            f"HiResConfig(method='hidiffusion') needs a U-Net pipeline; {family.name} is a DiT: use 'coarse_to_fine'."
        )
    if method == "hidiffusion":
        factors, switch = _raunet_schedule(config, scale) if config.raunet else ((), ())
        if factors:
            fh, fw = factors[0]
            _check_size("height", height, family.pixel_multiple * fh, family)
            _check_size("width", width, family.pixel_multiple * fw, family)
        return HiResPlan(family, method, ((height, width),), factors, switch)
    strength = config.strength if config.strength is not None else DEFAULT_STRENGTH
    strength = strength if isinstance(strength, tuple) else (strength,)
    sizes = _stage_sizes(family, height, width, config.max_stage_scale)
    n = len(sizes) - 1
    strengths = tuple(strength[min(i, len(strength) - 1)] for i in range(n))
    return HiResPlan(family, method, sizes, strengths=strengths,
                     start_sigmas=_start_sigmas(pipe, family, config, strengths, steps))


def _start_sigmas(pipe, family: Family, config: HiResConfig, strengths: tuple[float, ...],
                  steps: int | None = None) -> tuple:
    """Per refinement stage, the noise level it starts from on a pipeline whose shift grows with the size
    (``config.start_sigma``, else what the stage's strength reaches at the training size); ``()`` elsewhere."""
    if not shifts_with_resolution(family, pipe):
        if config.start_sigma is not None:
            raise ValueError(
                f"HiResConfig.start_sigma={config.start_sigma!r} applies to flow-matching pipelines whose schedule "
                f"shift grows with the image size (flux, chroma, qwen-image, flux2, z-image; sd3 with dynamic "
                f"shifting); {family.name} starts each refinement by `strength`."
            )
        return ()
    given = config.start_sigma
    if given is None:
        return tuple(train_size_sigma(family, pipe, st, steps=steps) for st in strengths)
    given = given if isinstance(given, tuple) else (given,)
    return tuple(float(given[min(i, len(given) - 1)]) for i in range(len(strengths)))


