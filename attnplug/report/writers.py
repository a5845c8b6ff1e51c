"""JSON writers: atomic writes (an interrupted write leaves no half-written file) and JSON-safe values."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename (an interrupted write leaves no
    half-written ``path``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (non-finite floats as strings ``"inf"``/``"nan"``)."""
    atomic_write_bytes(Path(path), (json.dumps(jsonable(obj), indent=1) + "\n").encode())



def jsonable(obj, depth: int = 0):
    """``obj`` as plain JSON data: non-finite floats as strings (``"inf"``), tuples and sets as lists, numpy / torch
    scalars and small arrays as numbers and lists, other objects as text."""
    if depth > 8:
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v, depth + 1) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tolist") and hasattr(obj, "ndim"):  # numpy / torch values
        return jsonable(obj.tolist(), depth + 1) if obj.ndim < 2 else str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item(), depth + 1)
    return str(obj)
