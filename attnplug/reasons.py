"""The one registry of hand-back reason codes: why an intercepted attention call ran stock attention.

A code is a short stable kebab-case string, a key of ``attnplug.stats(x)[kind]["reasons"]`` and of a method
report's ``handed_back``. The interception core registers its own codes here; each method module registers the codes
it hands back with (:func:`register`), and :meth:`attnplug.methods.AttentionMethod.hand_back` refuses a code nobody
registered, so every code a report shows has a stated meaning (:func:`meaning`, :func:`registered`).
"""

from __future__ import annotations

import re

_CODE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_REASONS: dict[str, str] = {}


def register(code: str, meaning: str) -> str:
    """Register hand-back reason ``code`` (kebab-case) with a one-line ``meaning``; returns ``code``.

    Registering a code again with the same meaning is a no-op (module reloads); another meaning is refused, so two
    methods cannot give one code two senses."""
    if not isinstance(code, str) or not _CODE.match(code):
        raise ValueError(f"reason code {code!r} must be a kebab-case string such as 'window-covers-grid'.")
    if not isinstance(meaning, str) or not meaning.strip():
        raise ValueError(f"reason {code!r}: meaning must be a non-empty string, got {meaning!r}.")
    known = _REASONS.get(code)
    if known is not None and known != meaning:
        raise ValueError(f"reason {code!r} is already registered as {known!r}; choose another code for {meaning!r}.")
    _REASONS[code] = meaning
    return code


def is_registered(code: str) -> bool:
    """Whether ``code`` is a registered reason."""
    return code in _REASONS


def meaning(code: str) -> str:
    """The meaning of registered reason ``code`` (``KeyError`` naming the registered codes otherwise)."""
    try:
        return _REASONS[code]
    except KeyError:
        raise KeyError(f"unknown hand-back reason {code!r}; registered: {', '.join(sorted(_REASONS))}.") from None


def registered() -> dict[str, str]:
    """Every registered code with its meaning (a copy)."""
    return dict(_REASONS)


#: Codes of the interception core (the processor decides these before any method runs) and of the generic
#: hand-backs that several methods share.
CORE = {
    "cross-attention": "cross-attention call (the method replaces self-attention only)",
    "layer-not-selected": "the schedule does not select this layer",
    "outside-schedule": "the denoising step is outside the schedule",
    "dropout-causal-gqa": "a dropout, causal or grouped-query call, which methods do not take",
    "mask-unsupported": "the call has an attention mask and the method takes none",
    "handed-back": "the method handed the call back without a reason",
    "attention-mask": "the call's attention mask is not one the method honours",
    "mask-not-key-padding": "the attention mask is not a key-padding mask on the image tokens",
    "requires-grad": "the inputs need a gradient, which the method's kernel does not give",
    "window-covers-grid": "the window covers the whole token grid: the method would equal dense attention",
    "level-above-max-level": "the call's attention level is coarser than the config's max_level",
    "other": "a reason without a slot of its own in a bounded counter",
}
for _code, _meaning in CORE.items():
    register(_code, _meaning)
