"""Each method call of the family matrix against the method's own exact reference, on the captured ``q, k, v``.

:class:`CallRecorder` wraps the applied method and keeps, for the first few calls the method computed (not those it
handed back), ``(q, k, v, layout, mask, info)`` and its output. :func:`reference_output` recomputes one captured call
independently of the method's kernels, in float64:

- ``neighborhood``: softmax over the NATTEN-semantics mask of :func:`~attnplug.kernels.neighborhood.neighborhood_mask`
  with the call's resolved kernel, stride, dilation and causality;
- ``freeswim``: the same, with FreeSwim's window (the call's training grid rounded up to odd);
- ``window``: softmax over the mask of :func:`~attnplug.kernels.window.window_mask_reference` at the call's shift
  (:func:`window_mask`, the same definition vectorised);
- ``sparse_video``: softmax over the token mask of the call's static plan (its block mask read through the plan's
  token order), in text-last order;
- ``agent``: :func:`~attnplug.kernels.agent.agent_attention_reference` with the call's agents and scales for the
  image queries, dense attention over every key for the text queries.

A boolean key-padding mask ``(B|1, 1, 1, N)`` excludes its padded keys in every reference (agent: any key mask with one
row, bool or additive). Tolerances (:data:`TOLERANCES`, fp32 calls): ``|out - ref| <= atol + rtol * |ref|``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .methods.base import AttentionMethod, MethodWrapper

#: ``method name -> (atol, rtol)`` of a captured fp32 call against its float64 reference.
TOLERANCES = {
    "neighborhood": (2e-5, 1e-4),
    "window": (2e-5, 1e-4),
    "sparse_video": (2e-5, 1e-4),
    "freeswim": (2e-5, 1e-4),
    "agent": (2e-5, 1e-4),
}
#: Captured calls per (model, method): enough to check a joint and a later layer, cheap on CPU.
CAPTURES = 2


@dataclasses.dataclass
class Captured:
    """One computed call: ``q (B, H, Nq, D)``, ``k, v (B, H, N, D)``, its layout, mask and info, and the output."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: object
    mask: torch.Tensor | None
    info: object
    out: torch.Tensor


class CallRecorder(MethodWrapper):
    """``inner`` unchanged, keeping the first ``limit`` calls it computed (see :class:`Captured`)."""

    def __init__(self, inner: AttentionMethod, limit: int = CAPTURES):
        super().__init__(inner)
        self.limit = limit
        self.calls: list[Captured] = []

    @property
    def supports_mask(self) -> bool:
        return self.inner.supports_mask

    def __call__(self, q, k, v, layout, mask=None, info=None):
        out = self.inner(q, k, v, layout, mask, info)
        if out is not None and len(self.calls) < self.limit:
            if info is not None and info.step_tensor is not None:  # updated in place by the step tracker
                info = dataclasses.replace(info, step_tensor=info.step_tensor.clone())
            self.calls.append(Captured(_clone(q), _clone(k), _clone(v), layout, _clone(mask), info, _clone(out)))
        return out


def _clone(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().clone()


def _key_bias(mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
    """A boolean key-padding mask -> additive float64 bias ``(B, 1, 1, N)`` (``-inf`` at padded keys), or None."""
    from .methods.patterns.base import key_padding

    if mask is None:
        return None
    keep = key_padding(mask, batch, n)
    if keep is None:
        raise ValueError(f"the reference takes a boolean key-padding mask only, got {mask.dtype} {tuple(mask.shape)}")
    return torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep.cpu(), -math.inf)[:, None, None, :]


def masked_reference(q, k, v, allowed: torch.Tensor | None, bias: torch.Tensor | None, scale: float | None):
    """float64 softmax attention of ``q (B, H, Nq, D)`` over ``k, v (B, H, N, D)`` restricted to ``allowed`` (bool
    ``(Nq, N)`` or ``(H, Nq, N)``, None = all) plus the additive key ``bias (B|1, H|1, 1, N)`` -> ``(B, H, Nq, D)``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q.double().cpu() @ k.double().cpu().transpose(-1, -2) * scale
    if allowed is not None:
        s = s.masked_fill(~allowed.cpu(), -math.inf)
    if bias is not None:
        s = s + bias.double().cpu()
    return torch.softmax(s, -1) @ v.double().cpu()


def _neighborhood(call: Captured, res) -> torch.Tensor:
    from .kernels.neighborhood import neighborhood_mask

    allowed = neighborhood_mask(call.layout, res.kernel_size, res.stride, res.dilation, res.is_causal)
    return masked_reference(call.q, call.k, call.v, allowed, _key_bias(call.mask, *call.q.shape[::2]),
                            call.info.scale)


def window_mask(layout, window: tuple[int, int, int], shift: tuple[int, int, int]) -> torch.Tensor:
    """:func:`~attnplug.kernels.window.window_mask_reference` without its Python loop over token pairs (the same
    definition: an image token sees the image tokens whose cyclically shifted coordinates fall in its window in every
    dimension, and all text; a text token sees everything): bool ``(N, N)`` in the layout's token order."""
    f, h, w = layout.grid
    coords = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    win = torch.stack([((coords[..., d] - shift[d]) % layout.grid[d]) // window[d] for d in range(3)], -1)
    win = win.reshape(-1, 3)
    mask = torch.ones(layout.num_tokens, layout.num_tokens, dtype=torch.bool)
    img = layout.image_slice()
    mask[img, img] = (win[:, None, :] == win[None, :, :]).all(-1)
    return mask


def _window(method, call: Captured) -> torch.Tensor:
    info = call.info
    step = int(info.step_tensor) if info.step_tensor is not None else info.step
    plan = method.config.plan(call.layout, step)
    allowed = window_mask(call.layout, plan.window, plan.shift)
    return masked_reference(call.q, call.k, call.v, allowed, _key_bias(call.mask, *call.q.shape[::2]),
                            call.info.scale)


def _sparse_video(method, call: Captured) -> torch.Tensor:
    layout = call.layout
    text_last = dataclasses.replace(layout, text_first=False)
    plan = method.pattern.plan(text_last, torch.device("cpu"))
    if plan.mask is None or plan.mask.dim() != 2:
        raise ValueError(f"the reference needs a static plan with one (M, M) block mask (pattern "
                         f"{method.config.pattern!r})")
    n = call.q.shape[-2]
    position = torch.arange(n) if plan.inv is None else plan.inv.cpu()
    block = position // plan.block
    allowed = plan.mask.cpu()[block][:, block]
    q, k, v = (layout.to_text_last(x) for x in (call.q, call.k, call.v))
    bias = _key_bias(call.mask, *call.q.shape[::2])
    bias = None if bias is None else layout.to_text_last(bias, dim=-1)
    return layout.from_text_last(masked_reference(q, k, v, allowed, bias, call.info.scale))


def _agent(method, call: Captured) -> torch.Tensor:
    from .kernels.agent import agent_attention_reference
    from .methods.agent import agent_grid, merge_agents, pool_agents

    cfg, layout, info = method.config, call.layout, call.info
    q, k, v = call.q, call.k, call.v
    scale = info.scale if info.scale is not None else q.shape[-1] ** -0.5
    bias = None
    if call.mask is not None:
        mask = call.mask.reshape((1,) * (4 - call.mask.dim()) + tuple(call.mask.shape))
        if mask.shape[-2] != 1:
            raise ValueError(f"the agent reference takes a key mask with one row, got {tuple(call.mask.shape)}")
        bias = mask.double().cpu() if mask.dtype != torch.bool else \
            torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask.cpu(), -math.inf)
    q_img, q_txt = layout.split(q)
    k_img, k_txt = layout.split(k)
    v_img, v_txt = layout.split(v)
    form = pool_agents if cfg.agent_source == "pool" else merge_agents
    agents = form(q_img, layout.grid, agent_grid(cfg, layout))
    img_bias, text_bias = layout.split(bias, dim=-1) if bias is not None and layout.text_tokens else (bias, None)
    out_img = agent_attention_reference(
        q_img.cpu(), k_img.cpu(), v_img.cpu(), agents.cpu(),
        cfg.gather_scale if cfg.gather_scale is not None else scale,
        cfg.broadcast_scale if cfg.broadcast_scale is not None else scale ** cfg.broadcast_scale_power,
        cfg.value_shortcut, key_bias=img_bias, text_k=k_txt.cpu() if layout.text_tokens else None,
        text_v=v_txt.cpu(), text_bias=text_bias, text_scale=scale,
    )
    if not layout.text_tokens:
        return out_img
    return layout.merge(out_img, masked_reference(q_txt, k, v, None, bias, scale))


def reference_output(name: str, method: AttentionMethod, call: Captured) -> torch.Tensor:
    """The float64 reference output ``(B, H, Nq, D)`` of the captured ``call`` of ``method`` (method ``name``)."""
    if name == "neighborhood":
        return _neighborhood(call, method.config.resolve(call.layout, call.info))
    if name == "freeswim":
        from .methods.freeswim import window_for
        from .methods.neighborhood_config import NeighborhoodConfig

        window = window_for(method.train_grid_at(call.layout, call.info), call.layout.grid)
        return _neighborhood(call, NeighborhoodConfig(kernel_size=window).resolve(call.layout, call.info))
    if name == "window":
        return _window(method, call)
    if name == "sparse_video":
        return _sparse_video(method, call)
    if name == "agent":
        return _agent(method, call)
    raise ValueError(f"no reference for method {name!r}; references exist for {', '.join(TOLERANCES)}")


def check_calls(name: str, recorder: CallRecorder) -> tuple[bool, str]:
    """Each captured call of ``recorder`` against :func:`reference_output` within :data:`TOLERANCES`: ``(ok, text)``,
    the text giving the calls checked and the largest error (``|out - ref| - rtol * |ref|``, over ``atol``)."""
    atol, rtol = TOLERANCES[name]
    worst = 0.0
    for call in recorder.calls:
        ref = reference_output(name, recorder.inner, call)
        excess = ((call.out.double().cpu() - ref).abs() - rtol * ref.abs()).max().item()
        worst = max(worst, excess)
        if not excess <= atol:  # NaN fails too
            return False, f"differs from its reference by {excess:.1e} > {atol:.0e} (+ {rtol:.0e}·|ref|)"
    return True, f"{len(recorder.calls)} calls within {atol:.0e} + {rtol:.0e}·|ref| (max {max(worst, 0):.1e})"
