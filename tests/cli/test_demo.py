"""``attnplug demo`` through the real entry point: it prints its prompts and writes a report and a contact sheet that
show the outputs enlarged, hi-res rows named by their plan."""

import json

from cli_testutil import run_cli
from PIL import Image


def test_demo_writes_a_report_and_a_contact_sheet(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", out, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "prompt: 'red circle'" in r.stdout
    assert f"report: {out / 'report.html'}" in r.stdout and f"contact sheet: {out / 'contact_sheet.png'}" in r.stdout
    report = json.loads((out / "report.json").read_text())
    labels = {rec["_label"] for rec in report["records"]}
    assert any(label.startswith("hires HiDiffusion 2x") for label in labels), labels
    assert "missing:" not in (out / "report.html").read_text()
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width >= 4 * 128 and sheet.height >= 128
    assert all(rec.get("command", "").startswith("attnplug generate") for rec in report["records"])
