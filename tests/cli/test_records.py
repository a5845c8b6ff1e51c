"""Records reproduce their item: the command carries every option, the record holds the resolved pipeline config,
and a different command into the same folder is refused naming what differs."""

import json
import shlex


def _one_record(out):
    (path,) = [p for p in out.glob("*.json") if p.name != "report.json"]
    return json.loads(path.read_text())


def test_hires_option_is_in_the_command_and_the_record(cli, tmp_path):
    out = tmp_path / "h"
    r = cli("generate", "red circle", "--model", "shapes-dit", "--hires", "--height", "32", "--width", "32",
            "--steps", "2", "--hires-option", "strength=0.5", "--out", out, "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    record = _one_record(out)
    assert "--hires-option strength=0.5" in record["command"]
    assert record["hires_config"]["strength"] == 0.5 and record["plan"] is not None
    # the record's command is the same recipe: rerunning it into the same folder finds the item done
    argv = shlex.split(record["command"])[1:]
    again = cli(*argv, "--no-progress", timeout=600)
    assert again.returncode == 0 and "0 generated" in again.stdout and "1 already done" in again.stdout, again.stderr
    # another recipe into the same folder is refused, naming the differing settings
    argv[argv.index("--hires-option") + 1] = "strength=0.6"
    refused = cli(*argv, timeout=600)
    assert refused.returncode == 2 and "hires_config.strength: 0.5 -> 0.6" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_long_video_option_is_in_the_command_and_the_record(cli, tmp_path):
    out = tmp_path / "lv"
    r = cli("generate", "red circle moving right", "--model", "shapes-video", "--long-video", "--frames", "12",
            "--steps", "1", "--long-video-option", "window_frames=8", "--out", out, "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    record = _one_record(out)
    assert "--long-video-option window_frames=8" in record["command"]
    assert record["long_video_config"]["window_frames"] == 8 and record["plan"]["window"] >= 1
    refused = cli("generate", "red circle moving right", "--model", "shapes-video", "--long-video", "--frames", "12",
                  "--steps", "2", "--long-video-option", "window_frames=8", "--out", out)
    assert refused.returncode == 2 and "call.steps: 1 -> 2" in refused.stderr, refused.stderr
