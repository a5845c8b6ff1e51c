"""``attnplug generate`` end to end on the embedded models at tiny sizes (subprocesses where the process matters)."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_testutil import ROOT, cli_env

from attnplug.cli import main
from attnplug.models.build import read_config
from attnplug.models.catalog import MODELS_DIR


def _records(out):
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "report.json"}


def test_prompt_file_jsonl_with_overrides(cli, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "red circle"}\n# a comment\n{"prompt": "blue square", "seeds": [5], '
                       '"height": 32, "width": 32}\n')
    out = tmp_path / "out"
    r = cli("generate", "--prompt-file", prompts, "--model", "shapes-unet", "--steps", "2", "--seeds", "0,1",
            "--method", "agent", "-o", "agents=4", "--out", out, "-v", "--no-progress")
    assert r.returncode == 0, r.stderr
    records = _records(out)
    assert sorted(records) == ["000-red-circle-s0", "000-red-circle-s1", "001-blue-square-s5"]
    big = records["001-blue-square-s5"]
    assert big["call"]["height"] == 32 and big["seed"] == 5 and big["source"].endswith("prompts.jsonl:3")
    from PIL import Image

    assert Image.open(out / big["outputs"][0]).size == (32, 32)
    for rec in records.values():
        assert rec["config"]["method"] == "agent" and rec["config"]["agents"] == 4
        assert rec["call"]["num_inference_steps"] == 2
        assert rec["stats"]["self_calls"] > 0 and rec["stats"]["method"] > 0
        assert rec["environment"]["versions"]["torch"] and rec["device"] == "cpu"
        assert rec["command"].startswith("attnplug generate") and "-o agents=4" in rec["command"]
        assert rec["detector"]["count"] >= 0
    # the summary line carries the call counts; log lines have one prefix only
    assert "self-attention calls:" in r.stdout and "method" in r.stdout
    assert "attnplug.plugin: attnplug:" not in r.stderr
    assert "should be kept in float32" not in r.stderr
    assert (out / "report.json").is_file() and (out / "report.html").is_file()


def test_sidecar_reproduces_the_output(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["generate", "green triangle", "--model", "shapes-dit", "--steps", "2", "--seeds", "3",
                 "--out", str(out), "--no-progress"]) == 0
    (record,) = _records(out).values()
    import shlex

    argv = shlex.split(record["command"])[1:]
    out2 = tmp_path / "b"
    argv[argv.index("--out") + 1] = str(out2)
    assert main(argv) == 0
    (again,) = _records(out2).values()
    from PIL import Image

    a = np.asarray(Image.open(out / record["outputs"][0]))
    b = np.asarray(Image.open(out2 / again["outputs"][0]))
    assert np.array_equal(a, b) and again["key"] == record["key"]


def test_video_is_browser_mp4(tmp_path):
    import imageio_ffmpeg

    out = tmp_path / "v"
    assert main(["generate", "red circle moving right", "--model", "shapes-video", "--frames", "4", "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    (record,) = _records(out).values()
    path = out / record["outputs"][0]
    assert path.suffix == ".mp4"
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = list(reader)
    assert meta["codec"] == "h264" and "yuv420p" in meta["pix_fmt"]
    side = read_config(MODELS_DIR / "shapes-video" / "config.json")["sample"]["height"]
    assert len(frames) == 4 and tuple(meta["size"]) == (side, side)
    assert "counts" in record["detector"] and len(record["detector"]["counts"]) == 4
    page = (out / "report.html").read_text()
    assert '<video class="video" src="data:video/mp4;base64,' in page  # the enlarged preview


def test_tiny_video_pipeline_and_images_per_prompt(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["generate", "x", "--model", "tiny-wan", "--frames", "5", "--steps", "1", "--height", "16",
                 "--width", "16", "--out", str(out), "--no-progress"]) == 0
    (record,) = _records(out).values()
    assert record["outputs"][0].endswith(".mp4") and record["call"]["num_frames"] == 5
    assert record["random_weights"] and record["detector"] is None
    out = tmp_path / "s"
    assert main(["generate", "x", "--model", "tiny-sd", "--steps", "1", "--height", "16", "--width", "16",
                 "--negative-prompt", "blurry", "--guidance", "3", "--num-images", "2", "--video-format", "gif",
                 "--out", str(out), "--no-progress"]) == 0
    (record,) = _records(out).values()
    assert len(record["outputs"]) == 2 and record["call"]["negative_prompt"] == "blurry"
    assert record["call"]["num_images_per_prompt"] == 2 and record["call"]["guidance_scale"] == 3
    assert "RANDOM weights" in capsys.readouterr().out


def test_kill_mid_batch_then_resume(tmp_path):
    out = tmp_path / "batch"
    prompts = tmp_path / "p.txt"
    words = [f"{c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]
    total = len(words)
    prompts.write_text("\n".join(words) + "\n")
    argv = [sys.executable, "-m", "attnplug", "generate", "--prompt-file", str(prompts), "--model", "shapes-unet",
            "--steps", "4", "--height", "32", "--width", "32", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(argv, env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob("0*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    n_done = len([n for n in done if n.endswith(".json")])
    assert 0 < n_done < total, (n_done, proc.stderr.read().decode()[-2000:])
    # nothing half-written under a final name: every record's outputs are complete images
    from PIL import Image

    for name in done:
        if name.endswith(".png"):
            Image.open(out / name).load()
    r = subprocess.run(argv, env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{n_done} already done" in r.stdout
    records = _records(out)
    assert len(records) == total
    for name, mtime in done.items():
        if name.endswith(".json") and not name.startswith("report"):
            assert (out / name).stat().st_mtime_ns == mtime, f"{name} was regenerated"
            for rel in records[name[:-5]]["outputs"]:
                assert (out / rel).stat().st_mtime_ns == done[rel], f"{rel} was regenerated"
    assert not list(out.glob(".*.part.*"))
    report = json.loads((out / "report.json").read_text())
    assert report["items"] == report["num_records"] == total  # every item once


def test_local_save_pretrained_folder_loads_by_path(tmp_path, capsys):
    import torch

    from attnplug.testing import tiny_pipeline

    folder = tmp_path / "tiny-sd-local"
    tiny_pipeline("sd", str(tmp_path / "tok")).save_pretrained(folder)
    out = tmp_path / "o"
    assert main(["generate", "a red circle", "--model", str(folder), "--steps", "1", "--height", "16", "--width",
                 "16", "--out", str(out), "--no-progress"]) == 0
    (record,) = _records(out).values()
    assert record["model_kind"] == "folder" and record["stats"]["self_calls"] > 0
    assert (out / record["outputs"][0]).is_file()
    # the embedded model's own folder is accepted too
    from attnplug.loading import load
    from attnplug.models.loader import MODELS_DIR

    pipe = load(str(MODELS_DIR / "shapes-unet"), dtype="float32")
    assert pipe.unet.dtype == torch.float32 and pipe.attnplug_source.kind == "embedded"


def test_tiny_pipeline_leaves_no_temp_dir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    from attnplug.loading import load

    load("tiny-sd")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("attnplug-tiny-")]


def test_user_error_in_a_subprocess(cli, tmp_path):
    (tmp_path / "keep.png").write_bytes(b"x")
    r = cli("generate", "x", "-o", "agents=64", "--out", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("attnplug generate: error: method 'dense' has no option 'agents'; its options: "
                                "backend. 'agents' is an option of agent: did you forget --method agent?")
    assert (tmp_path / "keep.png").read_bytes() == b"x"


def test_help_example_is_valid(capsys):
    from attnplug.cli import build_parser, parse_option

    text = " ".join(build_parser().format_help().split())
    assert "--method agent -o agents=16" in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--method agent -o agents=64" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("attnplug ")
    assert parse_option("agents=64") == ("agents", 64)


def test_demo_runs_with_embedded_models(tmp_path, capsys, monkeypatch):
    from attnplug import loading
    from attnplug.models import available_models

    loads = []
    real = loading.load
    monkeypatch.setattr(loading, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    assert main(["demo", "--no-methods", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for model in available_models():
        assert model in out
    assert sorted(loads) == sorted(set(loads))  # one load per model
    assert list(tmp_path.glob("*.json")) and list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.mp4"))


def test_hires_through_the_cli(tmp_path, capsys):
    out = tmp_path / "h"
    assert main(["generate", "red circle", "--model", "shapes-unet", "--hires", "--height", "32", "--width", "32",
                 "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    (record,) = _records(out).values()
    from PIL import Image

    assert record["hires"] and Image.open(out / record["outputs"][0]).size == (32, 32)
    assert "--hires" in record["command"]
    assert main(["generate", "x", "--hires", "--hires-option", "bogus=1", "--height", "32", "--width", "32",
                 "--out", str(out)]) == 2
    assert "HiResConfig has no field 'bogus'" in capsys.readouterr().err
    assert main(["generate", "x", "--hires", "--out", str(out)]) == 2
    assert "--hires needs --height and --width" in capsys.readouterr().err


def test_long_video_through_the_cli_takes_a_sparse_pattern_inside(tmp_path, capsys, monkeypatch):
    import importlib

    seen = []
    real = importlib.import_module("attnplug.pipelines").long_video
    monkeypatch.setattr(importlib.import_module("attnplug.pipelines"), "long_video",
                        lambda *a, **k: seen.append(k.get("config")) or real(*a, **k))
    out = tmp_path / "lv"
    assert main(["generate", "red circle moving right", "--model", "shapes-video", "--long-video", "--frames", "24",
                 "--steps", "2", "--method", "sparse_video", "-o", "density=0.5", "--out", str(out),
                 "--no-progress"]) == 0
    (record,) = _records(out).values()
    assert record["long_video"] and record["outputs"][0].endswith(".mp4")
    assert seen[-1].sparse is not None and seen[-1].sparse.density == 0.5
    assert "not kept by --long-video" in capsys.readouterr().out
    for extra, message in ((["--method", "agent"], "--method agent cannot run with it"),
                           (["--warmup-steps", "2"], "schedule flags cannot be combined")):
        assert main(["generate", "x", "--model", "shapes-video", "--long-video", "--frames", "24", *extra,
                     "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err


def test_missing_pipeline_extension_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import attnplug.pipelines

    monkeypatch.delattr(attnplug.pipelines, "long_video", raising=False)
    monkeypatch.setitem(sys.modules, "attnplug.pipelines._long_video", None)  # as if not installed
    assert main(["generate", "x", "--model", "shapes-video", "--long-video", "--frames", "16",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--long-video needs attnplug.pipelines.long_video" in err and "Traceback" not in err
