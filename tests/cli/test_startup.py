"""Start-up: help, version, listing, typos and validation answer without importing torch or diffusers."""

import json
import subprocess
import sys

import pytest
from cli_testutil import ROOT, cli_env

HEAVY = ("torch", "diffusers", "transformers", "accelerate")

# Runs the real entry point, then reports which heavy modules the process imported.
PROBE = """
import json, sys
from attnplug.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as exc:
    rc = exc.code
heavy = [m for m in {heavy!r} if m in sys.modules]
open(sys.argv[1], "w").write(json.dumps({{"rc": rc, "heavy": heavy}}))
"""


def _probe(tmp_path, *argv):
    marker = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), str(marker), *argv], capture_output=True,
                       text=True, timeout=120, env=cli_env(), cwd=ROOT)
    return json.loads(marker.read_text()), r


@pytest.mark.parametrize("argv", [
    ["--help"], ["--version"], ["methods"], ["methods", "agent"], ["generat", "x"], ["generate", "--help"],
    ["ui", "--help"], [],
    ["generate", "x", "--method", "agnet"],
    ["generate", "x", "--method", "agent", "-o", "agnts=1"],
    ["generate", "x", "--method", "neighborhood", "-o", "kernel_size=4"],
    ["generate", "x", "--method", "sparse_video", "-o", "density=2"],
    ["generate", "x", "--model", "shapes-unet", "--height", "30"],
    ["generate", "x", "--model", "tiny-wan", "--frames", "8"],
    ["bench", "--methods", "dense,window[shift=sideways]", "--prompt", "x"],
])
def test_no_torch_before_work_starts(tmp_path, argv):
    result, r = _probe(tmp_path, *argv, *(["--out", str(tmp_path / "o")] if argv[:1] in (["generate"], ["bench"])
                                          and "--help" not in argv else []))
    assert result["heavy"] == [], (argv, result, r.stderr[-1000:])
    assert result["rc"] in (0, 2), r.stderr


def test_import_attnplug_is_lazy_and_every_name_still_works():
    code = ("import sys, attnplug; assert 'torch' not in sys.modules; c = attnplug.SparseVideoConfig(density=0.5); "
            "assert 'torch' not in sys.modules; from attnplug.config import method_configs; "
            "assert sorted(method_configs()) == ['agent', 'dense', 'freeswim', 'neighborhood', 'sparse_video', "
            "'window'], method_configs(); "
            "assert callable(attnplug.apply) and attnplug.testing.PIPELINE_NAMES and attnplug.kernels.na2d; "
            "assert 'torch' in sys.modules; "
            "from attnplug.methods.sparse_video import SparseVideoConfig; assert SparseVideoConfig is type(c); "
            "import attnplug.methods as m; assert m.WindowMethod and m.AgentConfig is attnplug.AgentConfig; "
            "print(sorted(set(attnplug.__all__) - set(dir(attnplug))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=cli_env(),
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_torch_free_constants_match_their_sources():
    from attnplug.methods.patterns import PATTERNS
    from attnplug.methods.patterns.threshold import DEFAULT_THRESHOLD
    from attnplug.methods.sparse_video_config import DEFAULT_THRESHOLD as CONFIG_THRESHOLD
    from attnplug.methods.sparse_video_config import PATTERN_NAMES
    from attnplug.models.catalog import TINY_PIPELINES
    from attnplug.testing import PIPELINE_NAMES

    assert tuple(PATTERNS) == PATTERN_NAMES and DEFAULT_THRESHOLD == CONFIG_THRESHOLD
    assert sorted(TINY_PIPELINES) == sorted(f"tiny-{n}" for n in PIPELINE_NAMES)


def test_no_command_prints_help_and_typos_suggest(cli):
    r = cli()
    assert r.returncode == 0 and "usage: attnplug" in r.stdout and "generate" in r.stdout
    r = cli("generat", "x")
    assert r.returncode == 2 and r.stderr.strip().endswith("Did you mean 'generate'?"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("methods", "sparse-video")
    assert r.returncode == 2 and "Did you mean 'sparse_video'?" in r.stderr
    r = cli("generate", "x", "--method", "sparse-video")
    assert r.returncode == 2 and "Did you mean 'sparse_video'?" in r.stderr


def test_every_option_has_help_and_its_default(cli):
    text = " ".join(cli("generate", "--help").stdout.split()).split("options:", 1)[1]
    for flag in ("--height HEIGHT", "--width WIDTH", "--steps STEPS", "--frames FRAMES"):
        assert "default: the model's own" in text.split(flag, 1)[1][:200], flag
    assert "(default: none)" in text.split("--negative-prompt NEGATIVE_PROMPT", 1)[1][:200]
    for flag, default in (("--fps FPS", "(default: 8)"), ("--model MODEL", "(default: shapes-unet)"),
                          ("--out OUT", "(default: outputs/generate)"), ("--method METHOD", "(default: dense)")):
        assert default in text.split(flag, 1)[1][:400], flag
    assert "--dtype {float32,float16,bfloat16}" in text and "sparse_video" in text.split("--method METHOD", 1)[1]
    ui = " ".join(cli("ui", "--help").stdout.split()).split("options:", 1)[1]
    for flag in ("--host HOST", "--port PORT", "--share", "--device DEVICE", "--dtype DTYPE"):
        after = ui.split(flag, 1)[1].lstrip()
        assert not after.startswith("--") and not after.startswith("-v"), (flag, ui)
    assert "(default: 7860)" in ui
