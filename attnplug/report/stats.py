"""attnplug's attention counters as records keep them: one flat shape for every record."""

from __future__ import annotations


def summarize_stats(stats: dict) -> dict:
    """Flatten :func:`attnplug.stats` (new nested or older flat form) into ``self_calls``, ``method``, ``stock``,
    ``coverage`` (method / self calls), ``reasons``, ``cross_calls``, ``passthrough``, ``method_report``."""
    if not stats:
        return {"self_calls": 0, "method": 0, "stock": 0, "coverage": None, "reasons": {}, "cross_calls": 0,
                "passthrough": 0, "method_report": {}}
    if isinstance(stats.get("self"), dict):
        s = stats["self"]
        out = {"self_calls": s.get("calls", 0), "method": s.get("method", 0), "stock": s.get("stock", 0),
               "reasons": dict(s.get("reasons", {})), "cross_calls": stats.get("cross", {}).get("calls", 0),
               "passthrough": stats.get("passthrough", 0), "method_report": stats.get("method_report") or {}}
    else:
        reasons = {k.split(": ", 1)[1]: v for k, v in stats.items() if isinstance(k, str) and ": " in k}
        cross = reasons.pop("cross-attention", 0)
        calls = stats.get("calls", 0) - cross
        out = {"self_calls": calls, "method": stats.get("method", 0),
               "stock": stats.get("dense", stats.get("stock", 0)) - cross, "reasons": reasons, "cross_calls": cross,
               "passthrough": stats.get("passthrough", 0), "method_report": stats.get("method_report") or {}}
    out["coverage"] = out["method"] / out["self_calls"] if out["self_calls"] else None
    return out


def sparsity_of(method_report) -> float | None:
    """A density figure (fraction of attention computed) from a method report, when it has one."""
    if isinstance(method_report, dict):
        for key in ("density", "mean_density", "kept_fraction"):
            if isinstance(method_report.get(key), (int, float)):
                return float(method_report[key])
        values = [sparsity_of(v) for v in method_report.values() if isinstance(v, (dict, list))]
    elif isinstance(method_report, list):
        values = [sparsity_of(v) for v in method_report]
    else:
        return None
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None

