import json

import pytest

from attnplug.cli import main, parse_option
from attnplug.config import config_from_options, method_configs


def test_parse_option_literals():
    assert parse_option("kernel_size=3,13,13") == ("kernel_size", (3, 13, 13))
    assert parse_option("rectify=none") == ("rectify", None)
    assert parse_option("pattern=tiles") == ("pattern", "tiles")
    assert parse_option("flag=True") == ("flag", True)
    assert parse_option("density=0.25") == ("density", 0.25)


def test_unknown_method_and_field_errors():
    assert "dense" in method_configs()
    with pytest.raises(ValueError, match="Unknown method 'nope'; choose one of"):
        config_from_options("nope")
    with pytest.raises(ValueError, match=r"no field\(s\) \['bogus'\]; valid fields: backend"):
        config_from_options("dense", {"bogus": 1})


def test_generate_tiny_pipeline(tmp_path, capsys):
    out = tmp_path / "img"
    rc = main(["generate", "a red circle", "--model", "tiny-sd", "--height", "32", "--width", "32", "--steps", "2",
               "--out", str(out)])
    assert rc == 0
    assert "RANDOM weights" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["attention"]["calls"] > 0 and (tmp_path / "img.png").exists()


def test_cli_reports_bad_option(capsys):
    rc = main(["generate", "x", "--model", "tiny-sd", "--method", "dense", "-o", "backend=flash"])
    assert rc == 2
    assert "backend must be one of" in capsys.readouterr().err


def test_demo_runs_with_embedded_models(tmp_path, capsys):
    from attnplug.models import available_models

    assert main(["demo", "--no-methods", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for model in available_models():
        assert model in out
    assert list(tmp_path.glob("*.json")) and list(tmp_path.glob("*.png"))
