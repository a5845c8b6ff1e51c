"""The long-video speed benchmark's quick mode runs end to end and writes what it reports (slow: ~20 s)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "longvideo_speed_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("longvideo_speed_bench_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_speedup_density_and_distance(tmp_path):
    out = tmp_path / "speed.json"
    _load().main(["--quick", "--layers", "1", "--rounds", "1", "--warmup", "0", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["token_grid"] == [16, 4, 6] and data["extension"] == 4.0
    assert data["plan"]["window_frames"] == 4 and data["plan"]["window_source"] == "train_latent_frames"
    assert 0.3 < data["density"] < 0.4 and data["sparse_calls"] == 1 and data["handed_back"] == {}
    assert data["speedup"] > 0 and data["self_attention_speedup"] > 0 and 0 < data["rel_l2_vs_dense"] < 0.1
    for name in ("dense", "long"):
        assert 0 < data["breakdown"][name]["self_attention_share"] < 1


@pytest.mark.slow
def test_window_frames_sets_the_long_patterns_window(tmp_path):
    out = tmp_path / "speed_w3.json"
    _load().main(["--quick", "--layers", "1", "--rounds", "1", "--warmup", "0", "--window-frames", "3",
                  "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["plan"]["window_frames"] == 3 and data["plan"]["window_source"] == "window_frames"
    assert data["config"]["window_frames"] == 3
    assert 0.2 < data["density"] < 0.3  # narrower than the training-length window's 0.3-0.4


def test_window_frames_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        _load().main(["--quick", "--window-frames", "0"])
    assert "--window-frames=0" in capsys.readouterr().err
