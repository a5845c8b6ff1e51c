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


def test_records_carry_the_weights_digest(tmp_path):
    """An embedded model's record holds its weights' digest, so outputs of replaced weights are never taken for the
    current ones: a copy of the folder with one byte of the weights changed has another digest and recipe key."""
    import shutil
    from types import SimpleNamespace

    from attnplug.cli.items import Item
    from attnplug.cli.records import recipe, recipe_key
    from attnplug.models.catalog import MODELS_DIR, weights_digest

    folder = tmp_path / "copy"
    shutil.copytree(MODELS_DIR / "shapes-dit", folder)
    args = SimpleNamespace(model=str(folder), dtype="float32", hires=False, long_video=False, video_format="mp4",
                           fps=8)
    item = Item(index=0, prompt="red circle", seed=0, call={})
    before = recipe(args, item, None, None, {})
    assert before["weights"] == weights_digest(MODELS_DIR / "shapes-dit") and len(before["weights"]) == 16
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    after = recipe(args, item, None, None, {})
    assert after["weights"] != before["weights"] and recipe_key(after) != recipe_key(before)
    assert weights_digest("tiny-sd") is None and weights_digest("org/hub-model") is None
