"""Records and their merge: finding every record under a folder (one run or a parent of several), resolving each
record's media against its own folder, grouping them into items keyed by model and settings, and the per-method
summary with the noise and coverage flags."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

from .environment import noise_warning
from .labels import run_label
from .timing import median, spread

RECORD_MARK = "attnplug_record"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REFERENCE_LABELS = ("stock", "dense")


def collect_records(directory: Path) -> list[dict]:
    """All record JSON files under ``directory`` (each holds ``"attnplug_record": 1``), sorted; each gets ``_path``
    (its file, relative to ``directory``) and ``_run`` (the run folder it belongs to: the first folder of
    ``_path`` when ``directory`` holds several runs, else ``"."``)."""
    directory = Path(directory)
    records = []
    for path in sorted(directory.rglob("*.json")):
        if path.name.startswith(".") or path.name == REPORT_JSON:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get(RECORD_MARK):
            rel = path.relative_to(directory)
            data["_path"] = rel.as_posix()
            data["_run"] = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] != "media" else "."
            records.append(data)
    records.sort(key=lambda r: (str(r.get("model")), str(r.get("id")), str(r.get("method_label"))))
    return records


def media_path(directory: Path, record: dict, rel: str) -> Path | None:
    """The file of output ``rel`` of ``record``: relative to the record's own folder, or (records written before
    outputs were stored that way) to a folder above it, up to ``directory``; None when missing."""
    directory = Path(directory).resolve()
    folder = (directory / record.get("_path", "x")).parent.resolve()
    while True:
        candidate = folder / rel
        if candidate.is_file():
            return candidate
        if folder == directory or directory not in folder.parents:
            return None
        folder = folder.parent


def label_of(record: dict) -> str:
    """The row name of a record: its method label, or the hi-res / long-video plan it ran."""
    return run_label(record.get("method_label") or record.get("method") or "?", record.get("plan"),
                     record.get("hires_config"), record.get("long_video_config"))


def settings_text(record: dict) -> str:
    """The call settings that make items comparable: size, frames, steps and guidance."""
    s = record.get("settings") or {}
    size = f"{s.get('width')}x{s.get('height')}" if s.get("width") else "the model's size"
    frames = (f"x{s['frames']} frames" if s.get("width") else f", {s['frames']} frames") if s.get("frames") else ""
    steps = f", {s['steps']} steps" if s.get("steps") else ""
    guidance = f", guidance {s['guidance']:g}" if isinstance(s.get("guidance"), (int, float)) else ""
    return f"{size}{frames}{steps}{guidance}"


def item_key(record: dict) -> tuple[str, str, str]:
    """What makes two records comparable side by side: the model, the item (prompt x seed) and the settings."""
    return str(record.get("model")), str(record.get("id")), settings_text(record)


def label_records(records: list[dict]) -> None:
    """Set ``_label`` on every record: :func:`label_of`, plus the run folder where several runs give the same item
    the same name (so nothing is dropped as a duplicate)."""
    seen: dict[tuple, list[dict]] = {}
    for r in records:
        r["_label"] = label_of(r)
        seen.setdefault((*item_key(r), r["_label"]), []).append(r)
    for group in seen.values():
        if len({r["_run"] for r in group}) > 1:
            for r in group:
                r["_label"] = f"{r['_label']} ({r['_run']})"


def _num(x) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x == "inf":
        return math.inf
    return None


def _mean(values: Iterable) -> float | None:
    values = [v for v in (_num(x) for x in values) if v is not None]
    if not values:
        return None
    if any(math.isinf(v) for v in values):
        return math.inf if all(v > 0 for v in values if math.isinf(v)) else None
    return sum(values) / len(values)


def not_run(record: dict) -> bool:
    """Whether the record's method ran on none of the self-attention calls it was due to run (so its timing says
    nothing about the method)."""
    st = record.get("stats") or {}
    if record.get("reference") or label_of(record) in REFERENCE_LABELS or not st.get("self_calls"):
        return False
    return record.get("plan") is None and st.get("method", 0) == 0


def summarize(records: list[dict]) -> list[dict]:
    """One row per (model, method): items, median speed-up vs the reference (None with a ``flag`` when the method ran
    on 0 % of calls), spread of repeats, mean PSNR/SSIM, duplication and persistence rates, coverage, density,
    mean seconds and peak allocated memory."""
    if records and "_label" not in records[0]:
        label_records(records)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((str(r.get("model")), r["_label"]), []).append(r)
    order = sorted(groups, key=lambda k: (k[0], not any(r.get("reference") for r in groups[k])))
    rows = []
    for model, label in order:
        rs = groups[(model, label)]
        speedups = [s for s in (_num(r.get("speedup")) for r in rs) if s is not None]
        det = [r["detector"] for r in rs if isinstance(r.get("detector"), dict)]
        dup = [d["duplicated"] for d in det if "duplicated" in d]
        persistent = [d["persistent"] for d in det if "persistent" in d]
        flag = None
        if any(not_run(r) for r in rs):
            reasons = {}
            for r in rs:
                for reason, n in ((r.get("stats") or {}).get("reasons") or {}).items():
                    reasons[reason] = reasons.get(reason, 0) + n
            why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
            flag = f"ran on 0 % of calls ({why or 'every call handed back'}): no speed-up to report"
            speedups = []
        spreads = [spread(r.get("seconds_all") or []) for r in rs]
        rows.append({
            "model": model, "method": label, "items": len(rs),
            "seconds_mean": _mean(r.get("seconds") for r in rs),
            "speedup_median": median(speedups) if speedups else None,
            "spread_max": max((s for s in spreads if s is not None), default=None),
            "repeats": max((int(r.get("repeats") or 1) for r in rs), default=1),
            "psnr_mean": _mean((r.get("fidelity") or {}).get("psnr") for r in rs),
            "ssim_mean": _mean((r.get("fidelity") or {}).get("ssim") for r in rs),
            "attention_share_mean": _mean((r.get("timing") or {}).get("attention_share") for r in rs),
            "coverage_mean": _mean((r.get("stats") or {}).get("coverage") for r in rs),
            "density_mean": _mean(r.get("density") for r in rs),
            "duplication_rate": (sum(map(bool, dup)) / len(dup)) if dup else None,
            "persistence_rate": (sum(map(bool, persistent)) / len(persistent)) if persistent else None,
            "peak_mib_max": max((m for m in ((r.get("memory") or {}).get("peak_mib") for r in rs)
                                 if isinstance(m, (int, float))), default=None),
            "flag": flag,
        })
    return rows


def _distinct(values: Iterable) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def header(records: list[dict]) -> dict:
    """What the records were made with: models, settings, torch threads and the load average seen by each run."""
    envs = [r.get("environment") for r in records if isinstance(r.get("environment"), dict)]
    loads = [(e.get("loadavg") or [None])[0] for e in envs]
    cores = _distinct(e.get("cpu_count") for e in envs)
    load = max((x for x in loads if isinstance(x, (int, float))), default=None)
    return {
        "models": _distinct(r.get("model") for r in records),
        "settings": _distinct(settings_text(r) for r in records),
        "devices": _distinct(r.get("device") for r in records),
        "threads": _distinct(e.get("torch_threads") for e in envs),
        "load_max": load, "cores": cores[0] if cores else None,
    }


def build_report(directory: Path) -> dict:
    """The merged report of every record under ``directory`` (one run, several processes, or a parent of several
    runs): items keyed by model and settings, each record with its resolved label."""
    records = collect_records(directory)
    label_records(records)
    envs = [r["environment"] for r in records if isinstance(r.get("environment"), dict)]
    head = header(records)
    spreads = [spread(r.get("seconds_all") or []) for r in records]
    timed = any(r.get("kind") == "bench" for r in records)
    from .environment import environment

    return {
        "directory": str(directory), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kinds": _distinct(r.get("kind") for r in records),
        "items": len({item_key(r) for r in records}), "num_records": len(records),
        "runs": _distinct(r["_run"] for r in records), "ranks": sorted({int(r.get("rank") or 0) for r in records}),
        "header": head,
        "noise_warning": noise_warning(head["load_max"], head["cores"], spreads) if timed else None,
        "environment": envs[0] if envs else environment("cpu"),
        "summary": summarize(records), "records": records,
    }
