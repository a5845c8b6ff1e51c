"""``attnplug report PARENT/`` over several run folders (image, hi-res, video), through the real entry point: media
found beside each record, items keyed by model and settings, hi-res / long-video rows named by their plan, video
previews a browser shows, and the header and columns a reader needs."""

import json
import re
from html.parser import HTMLParser

import pytest
from cli_testutil import run_cli

from attnplug.models.build import read_config
from attnplug.models.catalog import MODELS_DIR

RUNS = {
    "image": ["generate", "red circle", "--model", "shapes-unet", "--height", "32", "--width", "32", "--method",
              "agent"],
    "hires": ["generate", "red circle", "--model", "shapes-unet", "--hires", "--height", "32", "--width", "32"],
    "video": ["generate", "blue square moving left", "--model", "shapes-video", "--long-video", "--frames", "24"],
}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.tables, self._cell = [], {}, None
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("class")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for name, argv in RUNS.items():
        results[name] = run_cli(*argv, "--steps", "2", "--seeds", "0", "--out", root / name, timeout=600)
        assert results[name].returncode == 0, results[name].stderr[-2000:]
    report = run_cli("report", root, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    page = _Page()
    page.feed((root / "report.html").read_text())
    return root, results, report, page


def test_report_over_run_folders_finds_every_medium_and_keys_by_model(parent):
    root, _, report, page = parent
    html = (root / "report.html").read_text()
    assert "missing:" not in html and "Duplicate" not in html and "Duplicate" not in report.stdout + report.stderr
    records = page.tables["records"]
    head = records[0]
    assert head[:3] == ["model", "id", "method"]
    assert {row[0] for row in records[1:]} == {"shapes-unet", "shapes-video"}
    merged = json.loads((root / "report.json").read_text())
    assert merged["num_records"] == 3 and sorted(merged["runs"]) == ["hires", "image", "video"]
    media = page.tables["media"]
    # the image and the hi-res run of shapes-unet share an item (same model and settings); the video is its own
    assert len(media) == 2 and any(row[0].startswith("shapes-video") for row in media)
    thumbs = [a for t, a in page.tags if t == "img" and a.get("class") == "thumb"]
    assert len(thumbs) == 2 and all(a["src"].startswith("data:image/png;base64,") for a in thumbs)


def test_hires_and_long_video_rows_are_named_by_their_plan(parent):
    _, results, _, page = parent
    labels = [row[2] for row in page.tables["records"][1:]]
    assert any(re.match(r"hires HiDiffusion 2x: RAU-Net x2 until \d+%, MSW-MSA windows 16x16$", label)
               for label in labels), labels
    # the default at 3x: the long sparse pattern over the whole video from the first step (no windows)
    assert any(label.startswith("long video 24 frames (3x): sparse_video long pattern over the whole video")
               and "RIFLEx" in label and "windows" not in label for label in labels), labels
    assert "dense" not in labels
    assert "hires HiDiffusion 2x" in results["hires"].stdout and "/ dense:" not in results["hires"].stdout
    assert "long video 24 frames" in results["video"].stdout


def test_report_videos_are_enlarged_previews_with_frame_strips(parent, tmp_path):
    import base64

    import imageio_ffmpeg

    root, _, _, page = parent
    videos = [a for t, a in page.tags if t == "video"]
    assert len(videos) == 1 and "controls" not in videos[0]
    data = base64.b64decode(videos[0]["src"].split(",", 1)[1])
    (tmp_path / "v.mp4").write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    meta = reader.__next__()
    w, h = meta["size"]
    assert meta["pix_fmt"].startswith("yuv420p") and min(w, h) >= 256 and w % 2 == 0 and h % 2 == 0
    strips = [a for t, a in page.tags if t == "img" and a.get("class") == "strip"]
    assert strips
    # generate's own output keeps the generated size
    own = next((root / "video").glob("*-s0.mp4"))
    size = imageio_ffmpeg.read_frames(str(own)).__next__()["size"]
    side = read_config(MODELS_DIR / "shapes-video" / "config.json")["sample"]["height"]
    assert tuple(size) == (side, side)


def test_report_header_and_video_columns(parent):
    root, _, _, page = parent
    header = dict(row[:2] for row in page.tables["header"])
    assert "shapes-unet" in header["model"] and "shapes-video" in header["model"]
    assert "32x32" in header["settings"] and "2 steps" in header["settings"]
    assert header["torch threads"] and header["load average (max)"]
    records = page.tables["records"]
    col = {name: i for i, name in enumerate(records[0])}
    video = next(row for row in records[1:] if row[0] == "shapes-video")
    assert video[col["persistent"]] in ("yes", "no")
    assert video[col["direction"]] not in ("", "-")
    assert "frames" in video[col["objects"]] and "[" not in video[col["objects"]]


def test_hires_bar_never_writes_to_a_log(parent, tmp_path):
    _, results, _, _ = parent
    assert "hires (" not in results["hires"].stderr  # stderr is a pipe here, not a terminal

    r = run_cli(*RUNS["hires"], "--steps", "2", "--no-progress", "--out", tmp_path / "h", timeout=600)
    assert r.returncode == 0 and "hires (" not in r.stderr and "it/s" not in r.stderr


def test_identical_outputs_are_a_labelled_marker_not_a_number():
    from attnplug.report.plots import plot_points

    records = [{"_label": "stock", "speedup": 1.0, "fidelity": {"psnr": "inf", "ssim": 1.0}},
               {"_label": "agent", "speedup": 1.5, "fidelity": {"psnr": 30.0, "ssim": 0.9}}]
    points = plot_points(records, "psnr")
    assert points["stock"] == {"finite": [], "identical": [1.0]}
    assert points["agent"] == {"finite": [(1.5, 30.0)], "identical": []}
