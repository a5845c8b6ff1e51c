"""The documented tiny models run at their defaults; sizes and frame counts are checked before loading."""

import json

import pytest


def _one_record(out):
    (path,) = [p for p in out.glob("*.json") if p.name != "report.json"]
    return json.loads(path.read_text())


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-pixart"])
def test_tiny_models_run_at_their_defaults(cli, tmp_path, model):
    out = tmp_path / model
    r = cli("generate", "a cat", "--model", model, "--steps", "2", "--out", out, "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    record = _one_record(out)
    assert (out / record["outputs"][0]).is_file() and record["settings"]["height"] == 16
    if model == "tiny-wan":
        import imageio.v3 as iio

        frames = iio.imread(out / record["outputs"][0])
        assert frames.shape[0] == record["settings"]["frames"] == 9
    assert "loading " + model in r.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "tiny-wan", "--frames", "8"], "--frames 8 is not accepted by tiny-wan: its temporal VAE takes 4k + 1 "
                                               "frames; nearest: 5 or 9."),
    (["--model", "tiny-wan", "--height", "24"], "--height 24 is not accepted by tiny-wan: sizes must be multiples of "
                                                "16; nearest: 16 or 32."),
    (["--model", "shapes-unet", "--height", "30"], "--height 30 is not accepted by shapes-unet: sizes must be "
                                                   "multiples of 4; nearest: 28 or 32."),
    (["--model", "tiny-pixart", "--steps", "1"], "--steps 1 is not accepted by tiny-pixart"),
    (["--model", "tiny-animatediff", "--frames", "40"], "--frames 40 is more than tiny-animatediff can generate"),
])
def test_sizes_and_frames_are_checked_before_loading(cli, tmp_path, argv, message):
    r = cli("generate", "x", *argv, "--out", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == f"attnplug generate: error: {message}" or message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "loading" not in r.stderr


def test_pixel_space_video_takes_any_frame_count(cli, tmp_path):
    r = cli("generate", "red circle moving right", "--model", "shapes-video", "--frames", "3", "--steps", "1",
            "--out", tmp_path, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _one_record(tmp_path)["call"]["num_frames"] == 3
