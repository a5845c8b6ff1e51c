"""Argument normalisation shared by every config and kernel: one int-or-tuple rule for the whole package.

The rule, everywhere: a scalar means that value for every dimension it covers, and a tuple lists the dimensions it
covers, last dimensions last. For an argument over a video grid ``(frames, height, width)`` that is *spatial*
(``spatial=2``), a scalar or a 2-tuple covers (height, width) and the frames dimension takes ``fill`` (for a window
size: ``None``, unrestricted; for a stride or dilation: 1; for causality: ``False``); only a 3-tuple sets frames.
An argument with ``spatial`` equal to its length (the default) spreads a scalar over all dimensions.

>>> as_tuple(7, 3, "kernel_size", "NeighborhoodConfig", spatial=2, fill=None, allow_none=True)
(None, 7, 7)
>>> as_tuple((3, 7, 7), 3, "kernel_size", "NeighborhoodConfig", spatial=2, fill=None, allow_none=True)
(3, 7, 7)
>>> as_tuple(16, 2, "agents", "AgentConfig")
(16, 16)
"""

from __future__ import annotations

from typing import Any

__all__ = ["DIM_NAMES", "as_tuple"]

DIM_NAMES = ("frames", "height", "width")

_NO_FILL = object()


def _dim_name(n: int, dim: int) -> str:
    names = DIM_NAMES[-n:] if n <= 3 else tuple(f"dim {i}" for i in range(n))
    return names[dim]


def _kind_ok(v: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if kind is float:
        return isinstance(v, (int, float))
    return isinstance(v, kind)


def as_tuple(
    value: Any,
    n: int,
    name: str,
    owner: str,
    *,
    kind: type = int,
    spatial: int | None = None,
    fill: Any = _NO_FILL,
    allow_none: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    min_exclusive: bool = False,
) -> tuple:
    """Normalise a scalar-or-tuple argument to an ``n``-tuple.

    Args:
        value: a scalar of ``kind`` or a tuple/list of ``n`` (or ``spatial``) of them.
        n: length of the result (e.g. 3 for ``(frames, height, width)``, 2 for ``(height, width)``).
        name, owner: used in error messages (``f"{owner}.{name}"``).
        kind: ``int``, ``float`` (ints accepted) or ``bool``; ``bool`` is never accepted as an ``int``.
        spatial: how many trailing dimensions a scalar covers (default ``n``); with ``spatial < n`` a
            ``spatial``-tuple is accepted too, and the leading dimensions take ``fill``.
        fill: value of the leading dimensions when ``spatial < n`` (required then).
        allow_none: ``None`` entries (and a ``None`` fill) are accepted and kept (e.g. "unrestricted").
        minimum, maximum: inclusive bounds for every non-``None`` entry (``minimum`` exclusive with ``min_exclusive``).

    Returns:
        A tuple of ``n`` values.

    Raises:
        TypeError: an entry is not of ``kind`` (or ``None`` where allowed).
        ValueError: wrong tuple length, or an entry out of bounds; the message names the argument, its value and what
            is accepted.
    """
    spatial = n if spatial is None else spatial
    if not 1 <= spatial <= n:
        raise ValueError(f"as_tuple: spatial must be in [1, {n}], got {spatial}.")
    if spatial < n and fill is _NO_FILL:
        raise ValueError("as_tuple: fill is required when spatial < n.")
    label = f"{owner}.{name}" if owner else name
    article = "an" if kind.__name__[0] in "aeiou" else "a"
    what = f"{article} {kind.__name__}{' or None' if allow_none else ''}"
    lengths = (n,) if spatial == n else (spatial, n)
    dims = ", ".join(DIM_NAMES[-n:]) if n <= 3 else f"{n} dims"
    accepted = f"{what}, or a tuple of " + " or ".join(str(m) for m in lengths) + f" of them ({dims})"

    if isinstance(value, (tuple, list)):
        if len(value) not in lengths:
            raise ValueError(f"{label} must be {accepted}, got {value!r}.")
        given = len(value)
        out = (fill,) * (n - given) + tuple(value)
    elif (value is None and allow_none) or _kind_ok(value, kind):
        given = spatial
        out = (fill,) * (n - spatial) + (value,) * spatial
    else:
        if isinstance(value, (int, float, bool)) or value is None:
            raise TypeError(f"{label} must be {accepted}, got {value!r} ({type(value).__name__}).")
        raise ValueError(f"{label} must be {accepted}, got {value!r}.")

    for dim, v in enumerate(out):
        if dim < n - given:  # filled by the caller's ``fill``, not checked
            continue
        if v is None:
            if allow_none:
                continue
            raise TypeError(f"{label} entries must be {kind.__name__}s, got {value!r}.")
        if not _kind_ok(v, kind):
            raise TypeError(f"{label} entries must be {kind.__name__}s{' or None' if allow_none else ''}, "
                            f"got {value!r}.")
        if kind is bool:
            continue
        where = f"{label} for {_dim_name(n, dim)}"
        if minimum is not None and (v <= minimum if min_exclusive else v < minimum):
            bound = f"> {minimum}" if min_exclusive else f">= {minimum}"
            raise ValueError(f"{where} must be {bound}, got {v} (in {value!r}).")
        if maximum is not None and v > maximum:
            raise ValueError(f"{where} must be <= {maximum}, got {v} (in {value!r}).")
    if kind is float:
        out = tuple(v if dim < n - given or v is None else float(v) for dim, v in enumerate(out))
    return out
