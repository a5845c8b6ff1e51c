"""The self-contained HTML report: header (model, size, steps, guidance, threads, load), the per-method summary,
scatter plots, the records table and the outputs side by side with their reference and difference maps."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from .plots import scatter_plots
from .records import REPORT_HTML, REPORT_JSON, _num, build_report, item_key, media_path
from .writers import atomic_write_bytes, write_json

EMBED_LIMIT = 4 << 20  # bytes of one video embedded in the page; larger ones are linked

_HEADERS = {"speedup_median": "speed-up (median)", "seconds_mean": "s / run", "psnr_mean": "PSNR dB",
            "ssim_mean": "SSIM", "duplication_rate": "duplicated", "persistence_rate": "persistent",
            "coverage_mean": "method calls", "density_mean": "density", "attention_share_mean": "attention share",
            "peak_mib_max": "peak MiB (allocated)", "spread_max": "spread of repeats"}

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.thumb{width:128px;image-rendering:pixelated;display:block}.missing,.warn{color:#b00}figure{display:inline-block;
margin:4px}figcaption{font-size:12px;color:#555}code{background:#f6f6f6;padding:1px 3px}.video{width:256px;
image-rendering:pixelated;display:block}.strip{height:48px;image-rendering:pixelated;display:block;margin-top:2px}
.diff{width:64px;image-rendering:pixelated;display:block;margin-top:2px}.cell{display:flex;gap:6px}"""


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞ (identical)"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _table(rows: list[dict], columns: list[str], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(_HEADERS.get(c, c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _read_image(path: Path):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError:
        return None


def _png_data(array) -> str:
    from .media import encode_png

    return "data:image/png;base64," + _b64(encode_png(array))


def _image_tag(path: Path, name: str, css: str = "thumb") -> str:
    array = _read_image(path)
    src = _png_data(array) if array is not None else html.escape(name)
    return f'<img class="{css}" src="{src}" alt="{html.escape(name)}" title="{html.escape(name)}">'


def _video_tag(path: Path, name: str, href: str) -> str:
    src = href
    if path.stat().st_size <= EMBED_LIMIT:
        src = f"data:video/{path.suffix[1:]};base64," + _b64(path.read_bytes())
    return (f'<video class="video" src="{html.escape(src)}" title="{html.escape(name)}" loop muted autoplay '
            "playsinline></video>")


def _display_files(directory: Path, record: dict, rel: str) -> tuple[Path | None, Path | None]:
    """The display copies of video output ``rel`` (enlarged preview, frame strip), when the run wrote them."""
    previews = (record.get("previews") or {}).get(rel) or {}
    found = [media_path(directory, record, previews[k]) if previews.get(k) else None for k in ("video", "strip")]
    return found[0], found[1]


def _media_html(directory: Path, record: dict, rel: str, reference: tuple[dict, str] | None) -> str:
    path = media_path(directory, record, rel)
    name = Path(rel).name
    if path is None:
        return f'<span class="missing">missing: {html.escape(rel)}</span>'
    href = html.escape(Path(path).relative_to(Path(directory).resolve()).as_posix())
    if path.suffix == ".png":
        own = path
        parts = [_image_tag(path, name)]
    elif path.suffix in (".mp4", ".webm", ".gif"):
        preview, strip = _display_files(directory, record, rel)
        shown = preview or path
        parts = [_video_tag(shown, name, href) if shown.suffix != ".gif" else _image_tag(shown, name, "video")]
        if strip is not None:
            parts.append(_image_tag(strip, name + " (frames)", "strip"))
        own = strip
    else:
        return f'<a href="{href}">{html.escape(name)}</a>'
    diff = _difference_html(directory, own, reference)
    return "<div>" + "".join(parts) + diff + "</div>"


def _difference_html(directory: Path, own: Path | None, reference: tuple[dict, str] | None) -> str:
    """A difference map of ``own`` (a PNG: the image or the frame strip) against the reference's, amplified 4x."""
    if own is None or reference is None:
        return ""
    ref_record, ref_rel = reference
    ref_path = media_path(directory, ref_record, ref_rel)
    if ref_path is not None and ref_path.suffix != ".png":
        ref_path = _display_files(directory, ref_record, ref_rel)[1]
    if ref_path is None or ref_path == own:
        return ""
    a, b = _read_image(own), _read_image(ref_path)
    if a is None or b is None or a.shape != b.shape:
        return ""
    from .metrics import difference_map

    diff = difference_map(a / 255.0, b / 255.0)
    css = "strip" if own.name.endswith(".strip.png") else "diff"
    return (f'<img class="{css}" src="{_png_data(diff)}" alt="difference" '
            'title="|output - reference| x 4 (black = identical)">')


def _objects(det: dict) -> str | None:
    if not det:
        return None
    if "counts" in det:
        counts = det["counts"] or []
        one = sum(1 for c in counts if c == 1)
        return f"one object in {one}/{len(counts)} frames"
    return str(det.get("count"))


def _direction(det: dict) -> str | None:
    if "counts" not in (det or {}):
        return None
    text = det.get("direction") or "none"
    if "direction_ok" in det:
        text += " (as prompted)" if det["direction_ok"] else " (not as prompted)"
    return text


def _record_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        fid, st, det = r.get("fidelity") or {}, r.get("stats") or {}, r.get("detector") or {}
        rows.append({"model": r.get("model"), "id": r.get("id"), "method": r["_label"], "prompt": r.get("prompt"),
                     "seed": r.get("seed"), "seconds": _num(r.get("seconds")), "speedup": _num(r.get("speedup")),
                     "psnr": _num(fid.get("psnr")), "ssim": _num(fid.get("ssim")),
                     "lpips": fid.get("lpips") if isinstance(fid.get("lpips"), float) else ("n/a" if fid else None),
                     "method calls": f"{st.get('method', 0)}/{st.get('self_calls', 0)}" if st else None,
                     "objects": _objects(det),
                     "persistent": None if "persistent" not in det else ("yes" if det["persistent"] else "no"),
                     "direction": _direction(det), "run": r.get("_run")})
    return rows


def _header_html(report: dict) -> str:
    h = report["header"]
    load = "-" if h["load_max"] is None else f"{h['load_max']:.1f}" + (f" on {h['cores']} cores" if h["cores"] else "")
    lines = [("model", ", ".join(map(str, h["models"]))), ("settings", "; ".join(h["settings"])),
             ("device", ", ".join(map(str, h["devices"]))), ("torch threads", ", ".join(map(str, h["threads"]))),
             ("load average (max)", load),
             ("records", f"{report['num_records']} record(s), {report['items']} item(s) from "
                         f"{len(report['runs'])} run folder(s)"),
             ("created", report["created"])]
    out = "<table class='header'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                             for k, v in lines) + "</table>"
    if report.get("noise_warning"):
        out += f"<p class='warn'>{html.escape(report['noise_warning'])}</p>"
    return out


def _summary_rows(summary: list[dict]) -> list[dict]:
    rows = []
    for row in summary:
        row = dict(row)
        if row["flag"]:
            row["speedup_median"] = row["flag"]
        elif row["speedup_median"] is not None:
            sp = f"{row['speedup_median']:.2f}x"
            if row["repeats"] > 1 and row["spread_max"] is not None:
                sp += f" (spread {row['spread_max']:.0%} over {row['repeats']} repeats)"
            row["speedup_median"] = sp
        rows.append(row)
    return rows


def _outputs_html(records: list[dict], directory: Path) -> str:
    by_item: dict[tuple, list[dict]] = {}
    for r in records:
        by_item.setdefault(item_key(r), []).append(r)
    parts = ["<h2>Outputs</h2><p>Under each output: a difference map against the first output of its row "
             "(|output - reference| x 4; black = identical).</p><table class='media'>"]
    for (model, item_id, settings), rs in by_item.items():
        rs = sorted(rs, key=lambda r: (not r.get("reference", False), r["_label"] not in ("stock", "dense"),
                                       r["_label"]))
        ref = rs[0] if rs[0].get("outputs") else None
        cells = []
        for r in rs:
            media = []
            for k, rel in enumerate(r.get("outputs", [])):
                reference = None
                if ref is not None and r is not ref and k < len(ref.get("outputs", [])):
                    reference = (ref, ref["outputs"][k])
                media.append(_media_html(directory, r, rel, reference))
            cells.append(f"<td><b>{html.escape(r['_label'])}</b>{''.join(media)}</td>")
        title = f"{model} · {item_id}<br>{html.escape(str(rs[0].get('prompt')))}<br>{html.escape(settings)}"
        parts.append(f"<tr><th>{title}</th>{''.join(cells)}</tr>")
    parts.append("</table>")
    return "".join(parts)


def render_html(report: dict, directory: Path) -> str:
    """The report as one self-contained HTML page (media embedded as base64)."""
    directory = Path(directory)
    records = report["records"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>attnplug report</title><style>{_CSS}"
             "</style></head><body>", "<h1>attnplug report</h1>", _header_html(report),
             "<h2>Summary by method</h2>",
             _table(_summary_rows(report["summary"]),
                    ["model", "method", "items", "speedup_median", "seconds_mean", "psnr_mean", "ssim_mean",
                     "duplication_rate", "persistence_rate", "coverage_mean", "density_mean",
                     "attention_share_mean", "peak_mib_max"], "summary")]
    plots = scatter_plots(records)
    if plots:
        parts.append("<h2>Speed vs quality</h2>")
        for title, data in plots:
            parts.append(f"<figure><img class='plot' src='data:image/png;base64,{data}' alt='{html.escape(title)}'>"
                         f"<figcaption>{html.escape(title)} (one point per prompt x seed)</figcaption></figure>")
    parts.append("<h2>Records</h2>")
    parts.append(_table(_record_rows(records), ["model", "id", "method", "prompt", "seed", "seconds", "speedup",
                                                 "psnr", "ssim", "lpips", "method calls", "objects", "persistent",
                                                 "direction", "run"], "records"))
    parts.append("<p>LPIPS, CLIP score and FID need network weights; without local weights they are marked n/a. "
                 "Peak memory is tensor memory allocated during the run (CUDA: max allocated; CPU: counted in an "
                 "untimed pass).</p>")
    if records:
        parts.append(_outputs_html(records, directory))
    env = report["environment"]
    env_rows = [{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v} for k, v in env.items()]
    parts.append("<h2>Environment</h2>" + _table(env_rows, ["key", "value"], "environment"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: Path) -> tuple[Path, Path]:
    """Merge every record under ``directory`` into ``directory/report.json`` and ``directory/report.html``."""
    directory = Path(directory)
    report = build_report(directory)
    json_path, html_path = directory / REPORT_JSON, directory / REPORT_HTML
    write_json(json_path, report)
    atomic_write_bytes(html_path, render_html(report, directory).encode())
    return json_path, html_path
