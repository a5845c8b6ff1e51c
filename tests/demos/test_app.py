"""The web UI through its HTTP API: ``gradio_client`` against :mod:`attnplug.ui` served on localhost.

Results are checked against the library called directly (same model, method, seed), so a UI that drops an option,
swaps the outputs or mixes up two concurrent requests fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import attnplug
from attnplug.config import FieldSpec
from attnplug.models import load_pipeline

pytest.importorskip("gradio_client")

STEPS = 2


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server[1], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _library(model: str, config, seed: int, schedule=None, **kwargs) -> np.ndarray:
    """What the library gives for the same request: ``(H, W, 3)`` image or ``(F, H, W, 3)`` video in [0, 1]."""
    pipe = load_pipeline(model)
    if config is not None:
        attnplug.apply(pipe, config, schedule=schedule)
    out = pipe("red circle" if "video" not in model else "blue square moving left", num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
    return (out.images if hasattr(out, "images") else out.frames)[0]


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.int16)


def _calls(stats: dict) -> int:
    return stats["self"]["calls"] if isinstance(stats.get("self"), dict) else stats["calls"]


def test_image_with_dense_comparison(client):
    out = client.predict(prompt="red circle", steps=STEPS, seed=3, method="window", compare=True,
                         api_name="/generate")
    image, dense, video, dense_video, summary, stats = out
    assert video is None and dense_video is None
    got, got_dense = _png(image), _png(dense)
    assert got.shape == got_dense.shape == (16, 16, 3)
    assert np.abs(got - _u8(_library("shapes-unet", attnplug.WindowConfig(), 3))).max() <= 1
    assert np.abs(got_dense - _u8(_library("shapes-unet", None, 3))).max() <= 1
    for text in ("speed-up vs dense", "PSNR vs dense", "SSIM vs dense", "detector", "What the method did"):
        assert text in summary
    assert _calls(stats) > 0


def _centres(frames, size):
    """The pixel at the centre of each generated pixel of ``(F, H, W, 3)`` frames enlarged from ``size``."""
    (h, w), (n, m) = frames.shape[1:3], size
    rows, cols = ((np.arange(n) + 0.5) * h / n).astype(int), ((np.arange(m) + 0.5) * w / m).astype(int)
    return frames[:, rows][:, :, cols]


def test_short_video_plays_as_h264(client):
    import imageio_ffmpeg

    out = client.predict(model="shapes-video", task="video", prompt="blue square moving left", num_frames=4,
                         steps=STEPS, seed=1, method="sparse_video", default_schedule=False, compare=False,
                         api_name="/generate")
    image, dense, video, dense_video, summary, stats = out
    assert image is None and dense_video is None and video.endswith(".mp4")
    reader = imageio_ffmpeg.read_frames(video)
    meta = reader.__next__()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    ref = _library("shapes-video", attnplug.SparseVideoConfig(), 1, schedule=attnplug.Schedule(), num_frames=4)
    assert frames.shape[0] == 4 and min(h, w) >= 256  # enlarged for the browser
    centres = _centres(frames, ref.shape[1:3]).astype(np.float32) / 255
    assert np.abs(centres - ref).mean() < 0.03  # H.264 is lossy
    assert "one object in" in summary and "frames" in summary and _calls(stats) > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"height": 15}, "height=15"),
        ({"model_path": "no-such-folder/of/models"}, "no-such-folder/of/models"),
        ({"task": "video"}, "choose task 'image'"),
        ({"method": "sparse_video", "method__sparse_video__density": 2.0}, "method.sparse_video.density=2.0"),
        ({"method": "neighborhood", "method__neighborhood__kernel_size": "(4, 4)"}, "kernel_size"),
        ({"method__agent__agents": "(4,"}, "agents"),
        ({"default_schedule": False, "schedule__warmup_steps": -1}, "warmup_steps"),
        ({"default_schedule": False, "schedule__until_step": "1.5"}, "until_step"),
        ({"prompt": "  "}, "prompt is empty"),
    ],
)
def test_invalid_input_gives_its_message(client, overrides, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message.replace("(", r"\(")):
        client.predict(**{"steps": STEPS, "compare": False, **overrides}, api_name="/generate")


def test_serving_continues_after_errors_and_keeps_weights(client, server):
    from gradio_client.exceptions import AppError

    cache = server[0].model_cache
    with pytest.raises(AppError):
        client.predict(width=7, steps=STEPS, api_name="/generate")
    client.predict(steps=STEPS, method="agent", compare=False, api_name="/generate")
    loads = cache.loads
    out = client.predict(steps=STEPS, method="dense", compare=False, api_name="/generate")
    assert _png(out[0]).shape == (16, 16, 3)
    assert cache.loads == loads  # switching methods reused the loaded weights


def test_two_requests_at_once_get_their_own_results(server):
    from gradio_client import Client

    a, b = Client(server[1], verbose=False), Client(server[1], verbose=False)
    jobs = [a.submit(steps=STEPS, seed=5, method="agent", compare=False, api_name="/generate"),
            b.submit(steps=STEPS, seed=5, method="neighborhood", method__neighborhood__kernel_size="(3, 3)",
                     compare=False, api_name="/generate")]
    got = [_png(job.result(timeout=120)[0]) for job in jobs]
    refs = [attnplug.AgentConfig(), attnplug.NeighborhoodConfig(kernel_size=(3, 3))]
    for image, config in zip(got, refs):
        assert np.abs(image - _u8(_library("shapes-unet", config, 5))).max() <= 1


def test_default_form_gives_each_methods_default_config(app_module):
    values = app_module.default_inputs()
    assert app_module.parse_request(values).method == "agent"  # auto: the image task's default
    values.update(task="video", model="shapes-video")
    assert app_module.parse_request(values).method == "sparse_video"  # never agent, which wipes the object
    for name, cls in attnplug.config.method_configs().items():
        values = app_module.default_inputs()
        values["method"] = name
        req = app_module.parse_request(values)
        assert req.config == cls(), name
        assert req.schedule is None  # the method's default schedule
        values["default_schedule"] = False
        assert app_module.parse_request(values).schedule == attnplug.Schedule()


def test_form_widgets_follow_field_metadata(app_module):
    make = app_module.form_field
    choice = make("m", FieldSpec("mode", "str", "b", "help", choices=("a", "b")))
    assert choice.kind == "dropdown" and choice.default_ui == "b" and choice.parse("a") == "a"
    with pytest.raises(ValueError, match="m.mode='c'"):
        choice.parse("c")
    assert make("m", FieldSpec("n", "int", 2, "", min=1, max=8)).kind == "slider"
    assert make("m", FieldSpec("n", "int", 2, "", min=1)).kind == "number"
    assert make("m", FieldSpec("flag", "bool", True)).kind == "checkbox"
    literal = make("m", FieldSpec("grid", "int | tuple[int, int] | None", None))
    assert literal.kind == "literal" and literal.parse("[2, 3]") == (2, 3) and literal.parse("none") is None
    assert literal.parse("") is None
    with pytest.raises(ValueError, match="m.n=2.5 must be an integer"):
        make("m", FieldSpec("n", "int", 2, "", min=1, max=8)).parse(2.5)


def test_progress_counts_every_denoising_step(app_module, tmp_path):
    values = app_module.default_inputs()
    values.update(steps=3, method="window", compare=True)
    seen = []
    app_module.generate(app_module.parse_request(values), app_module.ModelCache(), lambda d, t: seen.append((d, t)),
                        out_dir=tmp_path)
    assert seen == [(i, 6) for i in range(1, 7)]  # dense then method, 3 steps each; the warm-up step is not shown


def test_hires_pipeline_matches_the_library(client, app_module):
    if "hi-res" not in app_module.available_pipelines("image"):
        pytest.skip("attnplug.pipelines.hires is not importable in this install")
    from attnplug.pipelines import HiResConfig, hires

    out = client.predict(prompt="red circle", height=32, width=32, steps=STEPS, seed=2, method="agent",
                         pipeline="hi-res", compare=False, api_name="/generate")
    pipe = load_pipeline("shapes-unet")
    ref = hires(pipe, "red circle", height=32, width=32, config=HiResConfig(attention=attnplug.AgentConfig(),
                                                                            progress=False),
                num_inference_steps=STEPS, generator=torch.Generator().manual_seed(2), output_type="np").images[0]
    got = _png(out[0])
    assert got.shape == (32, 32, 3) and np.abs(got - _u8(ref)).max() <= 1
    assert out[4].startswith("**hires HiDiffusion 2x: RAU-Net x2") and "agent attention" in out[4]


def test_long_video_pipeline_matches_the_library(client, app_module):
    if "long video" not in app_module.available_pipelines("video"):
        pytest.skip("attnplug.pipelines.long_video is not importable in this install")
    import imageio_ffmpeg

    from attnplug.pipelines import LongVideoConfig, long_video

    out = client.predict(model="shapes-video", task="video", prompt="blue square moving left", num_frames=24,
                         steps=STEPS, seed=4, method="sparse_video", pipeline="long video", compare=False,
                         api_name="/generate")
    reader = imageio_ffmpeg.read_frames(out[2])
    meta = reader.__next__()
    w, h = meta["size"]
    ref = long_video(load_pipeline("shapes-video"), "blue square moving left", num_frames=24,
                     config=LongVideoConfig(sparse=attnplug.SparseVideoConfig()), num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(4), output_type="np").frames[0]
    frames = _centres(np.stack([np.frombuffer(x, np.uint8).reshape(h, w, 3) for x in reader]), ref.shape[1:3]) / 255
    assert frames.shape == ref.shape and np.abs(frames - ref).mean() < 0.03  # H.264 is lossy
    assert "long video 24 frames (3x)" in out[4] and "default schedule" not in out[4]  # the plan that ran
    with pytest.raises(Exception, match="cannot run with it"):
        client.predict(model="shapes-video", task="video", prompt="blue square moving left", num_frames=24,
                       steps=STEPS, seed=4, method="agent", pipeline="long video", compare=False,
                       api_name="/generate")


@pytest.mark.parametrize(("overrides", "field"), [({"steps": 0}, "steps=0"), ({"height": -16}, "height=-16"),
                                                  ({"width": 4096}, "width=4096"), ({"guidance": 99.0}, "guidance=99"),
                                                  ({"seed": -1}, "seed=-1")])
def test_the_apps_own_check_answers_first_naming_the_field(client, capfd, overrides, field):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(**{"steps": STEPS, "compare": False, **overrides}, api_name="/generate")
    assert field in str(err.value) and "minimum value" not in str(err.value)
    assert "Traceback" not in capfd.readouterr().err  # a user error is no server failure


def test_video_model_starts_with_a_method_that_keeps_the_object(client):
    out = client.predict(model="shapes-video", task="video", prompt="blue square moving left", num_frames=4,
                         steps=STEPS, seed=1, compare=False, api_name="/generate")
    summary = out[4]
    assert summary.startswith("**sparse_video**") and "agent" not in summary.split("\n")[0]
    warned = client.predict(model="shapes-video", task="video", prompt="blue square moving left", num_frames=4,
                            steps=STEPS, seed=1, method="agent", compare=False, api_name="/generate")[4]
    assert "wipes the object" in warned


def test_summary_is_plain_language_with_a_noise_caveat(client):
    summary = client.predict(steps=STEPS, method="agent", compare=True, api_name="/generate")[4]
    assert "Schedule(" not in summary and "{" not in summary
    assert "where the method ran: the first 40% of the steps, every layer (the method's default schedule)" in summary
    assert "single runs" in summary and "attnplug bench --repeats" in summary
