"""The family matrix: every image/video denoiser class of the installed diffusers, Dense through attnplug against
stock, ``remove`` against stock, and each method's default config on every self-attention call.

An outcome is one of ``runs`` (the method computed the selected self-attention calls, and the first ones it computed
equal its own reference on the captured q/k/v: :mod:`attnplug.testing_reference`), ``stock`` (applied, but
every call handed back, with the reasons), ``refused`` (``apply`` raised, with its message) or ``fails`` (anything
else: a bug). Used by ``tests/families/`` and ``scripts/families_matrix.py`` (which writes ``docs/families.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

METHODS = ("neighborhood", "window", "agent", "sparse_video", "freeswim")
DENSE_TOL = 1e-5


@dataclass
class Outcome:
    status: str  # "runs", "stock", "refused", "fails", "no-builder"
    detail: str = ""
    # a computed method's captured calls against its own reference (attnplug.testing_reference); "" = not checked
    reference: str = ""


@dataclass
class ClassResult:
    """What attnplug does on one denoiser class (``key`` is the class name, or ``Class[variant]``)."""

    key: str
    dense: Outcome
    methods: dict[str, Outcome] = field(default_factory=dict)

    @property
    def supported(self) -> bool:
        """Dense exact, neighbourhood running and one sparse method (window or sparse video) running."""
        sparse = any(self.methods.get(m, Outcome("")).status == "runs" for m in ("window", "sparse_video"))
        nbhd = self.methods.get("neighborhood", Outcome("")).status == "runs"
        return self.dense.status == "runs" and nbhd and sparse


def class_keys() -> list[str]:
    """Every class of :func:`~attnplug.testing_families.denoiser_classes`, then the builder variants."""
    from .testing_families import _builders, denoiser_classes

    names = [cls.__name__ for cls in denoiser_classes()]
    variants = sorted(k for k in _builders() if "[" in k and k.split("[")[0] in names)
    return names + variants


def _forward(model, inputs) -> torch.Tensor:
    import inspect

    plain = "return_dict" not in inspect.signature(model.forward).parameters  # e.g. UVit2D returns a tensor
    with torch.no_grad():
        out = model(**inputs) if plain else model(**inputs, return_dict=False)[0]
    return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


def _self_calls(stats: dict) -> tuple[int, int, dict]:
    s = stats.get("self", {})
    return s.get("calls", 0), s.get("method", 0), dict(s.get("reasons", {}))


def _refusal(model) -> str | None:
    from .families import family_of

    try:
        family_of(model)
    except TypeError as e:
        return str(e)
    return None


def dense_outcome(model, inputs, stock: torch.Tensor) -> Outcome:
    """Dense through attnplug within :data:`DENSE_TOL` of stock on every self-attention call; ``remove`` exact."""
    import attnplug

    try:
        attnplug.apply(model, attnplug.DenseConfig())
    except (TypeError, ValueError) as e:
        return Outcome("refused", str(e))
    try:
        out = _forward(model, inputs)
        calls, method, reasons = _self_calls(attnplug.stats(model))
    except Exception as e:  # noqa: BLE001 - a bug to report, not to hide
        attnplug.remove(model)
        return Outcome("fails", f"{type(e).__name__}: {e}")
    attnplug.remove(model)
    err = (out - stock).abs().max().item()
    if err > DENSE_TOL:
        return Outcome("fails", f"dense differs from stock by {err:.2e}")
    if not torch.equal(_forward(model, inputs), stock):
        return Outcome("fails", "remove() is not bit-identical")
    if calls == 0 or method != calls:
        return Outcome("fails", f"dense computed {method} of {calls} self-attention calls ({reasons})")
    return Outcome("runs", f"{calls} self-attention calls, max |diff| {err:.1e}")


def method_outcome(model, inputs, name: str, stock: torch.Tensor) -> Outcome:
    """``name``'s default config on every layer and step: runs, hands back (reasons), is refused or fails. The first
    :data:`~attnplug.testing_reference.CAPTURES` calls it computes are checked against its own reference (a
    mismatch fails)."""
    import attnplug

    from .config import config_from_options
    from .testing_reference import CallRecorder, check_calls

    try:
        recorder = CallRecorder(config_from_options(name).build())
        attnplug.apply(model, recorder, schedule=attnplug.Schedule())
    except (TypeError, ValueError) as e:
        return Outcome("refused", str(e))
    try:
        out = _forward(model, inputs)
        calls, method, reasons = _self_calls(attnplug.stats(model))
    except ValueError as e:  # the method's own check of the layout, at its first call
        return Outcome("refused", f"at the first call: {e}")
    except Exception as e:  # noqa: BLE001
        return Outcome("fails", f"{type(e).__name__}: {e}")
    finally:
        attnplug.remove(model)
    if not torch.isfinite(out).all():
        return Outcome("fails", "non-finite output")
    reference = ""
    if method > 0:
        ok, reference = check_calls(name, recorder)
        if not ok:
            return Outcome("fails", f"{method}/{calls} calls; a captured call {reference}", reference)
    if method == calls > 0:
        return Outcome("runs", f"{method}/{calls} calls", reference)
    why = ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items()))
    status = "runs" if method > 0 else "stock"
    return Outcome(status, f"{method}/{calls} calls; stock: {why}", reference)


def run_class(key: str, methods: tuple[str, ...] = METHODS) -> ClassResult:
    """The matrix row of one class key (see :func:`class_keys`)."""
    from .testing_families import has_builder, tiny_denoiser

    if not has_builder(key):
        return ClassResult(key, Outcome("no-builder", "no tiny builder yet"))
    try:
        model, inputs = tiny_denoiser(key)
        stock = _forward(model, inputs)
    except Exception as e:  # noqa: BLE001 - the builder does not fit this diffusers version
        return ClassResult(key, Outcome("no-builder", f"tiny builder failed: {type(e).__name__}: {e}"))
    refusal = _refusal(model)
    if refusal is not None:
        return ClassResult(key, Outcome("refused", refusal), {m: Outcome("refused", refusal) for m in methods})
    result = ClassResult(key, dense_outcome(model, inputs, stock))
    for name in methods:
        result.methods[name] = method_outcome(model, inputs, name, stock)
    return result


TEXT_INPUTS = ("encoder_hidden_states", "cap_feats", "text_bth", "encoder_hidden_states_t5",
               "encoder_hidden_states_llama3")


def text_rows(key: str, names: tuple[str, ...] = TEXT_INPUTS) -> tuple[set[int], set[int], tuple[int, int]]:
    """Check a family row's text position against the model: the query rows of each self-attention call that
    change when only the text input (or the inputs ``names``) changes, against the non-grid rows the layout names.

    Returns ``(changed rows, non-grid rows, (call index, n))`` for the first self-attention call with non-grid
    tokens (else the first call). Before any block mixes the streams, a grid token's query depends only on the
    latents (and timestep), so a grid row that changes means the layout put text in the grid.
    """
    def bump(inputs: dict) -> dict:
        return {k: (v + 1.0 if isinstance(v, torch.Tensor) else [x + 1.0 for x in v])
                for k, v in inputs.items() if k in names}

    return changed_rows(key, bump)


def changed_rows(key: str, change: Callable[[dict], dict]) -> tuple[set[int], set[int], tuple[int, int]]:
    """:func:`text_rows` for any change of the inputs: ``change(inputs)`` returns the inputs to replace."""
    import attnplug

    from .methods.dense import DenseMethod
    from .testing_families import tiny_denoiser

    class Recorder(DenseMethod):
        uses_steps = False

        def __init__(self):
            super().__init__()
            self.calls = []

        def __call__(self, q, k, v, layout=None, mask=None, info=None):
            self.calls.append((q.detach().clone(), layout))
            return super().__call__(q, k, v, layout, mask, info)

    model, inputs = tiny_denoiser(key)
    runs = []
    for changed in ({}, change(inputs)):
        recorder = Recorder()
        attnplug.apply(model, recorder)
        try:
            _forward(model, {**inputs, **changed})
        finally:
            attnplug.remove(model)
        runs.append(recorder.calls)
    call = next((i for i, (_, layout) in enumerate(runs[0]) if layout.text_tokens), 0)
    (q0, layout), (q1, _) = runs[0][call], runs[1][call]
    diff = (q0 - q1).abs().amax(dim=(0, 1, 3))  # per token
    rows = {int(i) for i in torch.nonzero(diff > 1e-6).flatten()}
    text = layout.text_slice()
    return rows, set(range(text.start, text.stop)), (call, q0.shape[-2])
