"""``attnplug bench`` + ``attnplug report``: records, and an HTML page with its tables, plots and media."""

import json
from html.parser import HTMLParser

from attnplug.cli import main


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.videos, self.headings = [], [], [], []
        self._cell = None
        self._heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"class": attrs.get("class"), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = ""
        elif tag == "img":
            self.imgs.append(attrs)
        elif tag == "video":
            self.videos.append(attrs)
        elif tag in ("h1", "h2"):
            self._heading = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(self._cell.strip())
            self._cell = None
        if tag in ("h1", "h2"):
            self._heading = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._heading:
            self.headings.append(data.strip())


def test_bench_then_report(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--model", "shapes-unet", "--methods", "dense,agent[agents=4],neighborhood[kernel_size=3]",
            "--prompt", "red circle", "--seeds", "0,1", "--steps", "2", "--warmup", "0", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "PSNR" in text
    records = [json.loads(p.read_text()) for p in (out / "media").rglob("*.json")]
    assert len(records) == 8  # stock, the reference, is added to the three entries
    by = {(r["id"], r["method_label"]): r for r in records}
    for seed in (0, 1):
        dense = by[(f"000-red-circle-s{seed}", "stock")]
        assert dense["reference"] and dense["fidelity"]["psnr"] == "inf" and dense["speedup"] == 1.0
        assert not by[(f"000-red-circle-s{seed}", "dense")]["reference"]
        for label in ("agent[agents=4]", "neighborhood[kernel_size=3]"):
            r = by[(f"000-red-circle-s{seed}", label)]
            psnr = r["fidelity"]["psnr"]
            assert isinstance(psnr, float) and 10 < psnr < 200
            assert 0 < r["fidelity"]["ssim"] <= 1
            assert r["fidelity"]["lpips"].startswith("unavailable") or isinstance(r["fidelity"]["lpips"], float)
            assert r["speedup"] > 0 and r["reference_seconds"] == dense["seconds"]
            assert r["stats"]["method"] > 0 and r["memory"]["peak_mib"] > 0
            assert r["memory"]["kind"] == "tensor_allocations" and "stats_raw" not in r
            assert 0 < r["timing"]["attention_share"] < 1
    # rerun: nothing to do, and `report` rebuilds the same page
    assert main(argv) == 0
    capsys.readouterr()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    page = _Page()
    page.feed((out / "report.html").read_text())
    classes = [t["class"] for t in page.tables]
    assert {"summary", "records", "media", "environment"} <= set(classes)
    summary = next(t for t in page.tables if t["class"] == "summary")["rows"]
    assert summary[0][:4] == ["model", "method", "items", "speed-up (median)"]
    assert [row[1] for row in summary[1:]] == ["stock", "agent[agents=4]", "dense", "neighborhood[kernel_size=3]"]
    assert {row[0] for row in summary[1:]} == {"shapes-unet"}
    plots = [i for i in page.imgs if i.get("class") == "plot"]
    assert len(plots) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in plots)
    thumbs = [i for i in page.imgs if i.get("class") == "thumb"]
    assert len(thumbs) == 8 and all(i["src"].startswith("data:image/png;base64,") for i in thumbs)
    diffs = [i for i in page.imgs if i.get("class") == "diff"]
    assert len(diffs) == 6  # a difference map beside every output but the reference's
    media = next(t for t in page.tables if t["class"] == "media")["rows"]
    assert len(media) == 2 and all(row[1].startswith("stock") for row in media)  # the reference first
    env = dict(r[:2] for r in next(t for t in page.tables if t["class"] == "environment")["rows"][1:])
    assert "kernel_path" in env and "torch" in env["versions"]
    report = json.loads((out / "report.json").read_text())
    assert report["items"] == 2 and report["num_records"] == 8


def test_report_of_an_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no attnplug records" in capsys.readouterr().err
