"""Option parsing and every bad input the CLI must reject before a model loads (in-process: fast)."""

import json
import os

import pytest

from attnplug.cli import (
    UserError,
    build_config,
    coerce_options,
    main,
    parse_methods,
    parse_option,
    parse_seeds,
)


def test_parse_option_literals():
    assert parse_option("kernel_size=3,13,13") == ("kernel_size", (3, 13, 13))
    assert parse_option("rectify=none") == ("rectify", "none")  # the string, as enums spell it
    assert parse_option("pattern=tiles") == ("pattern", "tiles")
    assert parse_option("flag=True") == ("flag", True)
    assert parse_option("flag=false") == ("flag", False)
    assert parse_option("density=0.25") == ("density", 0.25)
    assert parse_option("layers=[1, 2]") == ("layers", (1, 2))


def test_none_follows_the_field():
    assert coerce_options("sparse_video", {"rectify": "none"}) == {"rectify": "none"}
    assert coerce_options("window", {"shift": "none"}) == {"shift": "none"}
    assert build_config("sparse_video", {"pattern": "topk", "rectify": "none"}).rectify == "none"
    # a field that takes None and has no 'none' choice
    assert coerce_options("agent", {"agents": "none"}) == {"agents": None}


def test_unknown_option_suggests_field_and_method():
    with pytest.raises(UserError, match=r"did you forget --method agent\?"):
        coerce_options("dense", {"agents": 64})
    with pytest.raises(UserError, match=r"Did you mean 'agents'\?"):
        coerce_options("agent", {"agnts": 64})
    with pytest.raises(UserError, match=r"unknown method 'agnt'; choose one of .*agent.*Did you mean 'agent'"):
        build_config("agnt", {})


def test_bad_value_names_choices_and_range():
    with pytest.raises(UserError, match="'gapr', 'all', 'none'"):
        build_config("sparse_video", {"rectify": "sideways"})
    with pytest.raises(UserError, match=r">= 1|must be in \["):
        build_config("agent", {"agents": 0})


def test_methods_and_seeds_syntax():
    assert parse_methods("dense,agent[agents=16;max_level=1],neighborhood") == [
        ("dense", "dense", {}), ("agent[agents=16;max_level=1]", "agent", {"agents": 16, "max_level": 1}),
        ("neighborhood", "neighborhood", {})]
    assert parse_seeds("0,2-4") == [0, 2, 3, 4]
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds("a,b")


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "x", "--method", "nope"], "unknown method 'nope'; choose one of agent, dense"),
    (["generate", "x", "-o", "agents=64"], "did you forget --method agent?"),
    (["generate", "x", "--method", "agent", "-o", "agnts=64"], "Did you mean 'agents'?"),
    (["generate", "x", "--method", "sparse_video", "-o", "rectify=sideways"], "'gapr', 'all', 'none'"),
    (["generate", "x", "--model", "./no/such/folder"], "model path './no/such/folder' does not exist"),
    (["generate", "x", "--model", "nosuchorg/nosuchmodel"], "HF_HUB_OFFLINE is set"),
    (["generate", "x", "--model", "tiny-nope"], "unknown tiny pipeline"),
    (["generate", "x", "--device", "cuda:99"], "device='cuda:99'"),
    (["generate", "x", "--dtype", "float8"], "dtype='float8' is not accepted"),
    (["generate", "x", "--frames", "4"], "--frames is for video models"),
    (["generate", "x", "--steps", "0"], "--steps=0 must be an integer >= 1"),
    (["generate", "--model", "shapes-unet"], "no prompt given"),
    (["bench", "--methods", "dense,nope", "--prompt", "x"], "unknown method 'nope'"),
    (["methods", "nope"], "unknown method 'nope'"),
])
def test_bad_inputs(capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, [*argv, "--out", str(tmp_path)] if argv[0] != "methods" else argv)
    assert message in err


def test_cuda_without_cuda(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "CUDA is not available" in _error(capsys, ["generate", "x", "--device", "cuda", "--out", str(tmp_path)])


def test_bad_prompt_file_lines(capsys, tmp_path):
    good = {"prompt": "red circle"}
    cases = {
        "broken.jsonl": (f"{json.dumps(good)}\n{{not json\n", ":2: not valid JSON"),
        "key.jsonl": (f"\n{json.dumps(good)}\n{json.dumps({'prompt': 'x', 'colour': 'red'})}\n", ":3: unknown key"),
        "value.jsonl": (f"{json.dumps({'prompt': 'x', 'steps': -1})}\n", ":1: steps=-1"),
        "noprompt.jsonl": ('{"steps": 2}\n', ":1: each line must be a JSON object"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert message in _error(capsys, ["generate", "--prompt-file", str(path), "--out", str(tmp_path / "o")])
    assert "does not exist" in _error(capsys, ["generate", "--prompt-file", str(tmp_path / "missing.txt")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.png").write_bytes(b"x")
    locked.chmod(0o500)
    try:
        assert "is not writable" in _error(capsys, ["generate", "x", "--out", str(locked / "sub")])
    finally:
        locked.chmod(0o700)
    assert (locked / "keep.png").read_bytes() == b"x"


def test_out_dir_that_is_a_file(capsys, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    assert "is not writable" in _error(capsys, ["generate", "x", "--out", str(target)])
    assert target.read_text() == "keep"


def test_methods_listing(capsys):
    assert main(["methods", "sparse_video", "-v"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sparse_video:") and "-o rectify=" in out and "'none'" in out
    assert "agent:" not in out and "default schedule: every step after a dense warm-up" in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "agent:" in out and "--warmup-steps" in out


def test_ui_runs_the_app_module_or_says_why_not(capsys, monkeypatch):
    import runpy

    import attnplug.cli.ui as cli

    seen = {}
    monkeypatch.setattr(runpy, "run_module", lambda name, run_name, alter_sys: seen.update(
        name=name, argv=list(cli.sys.argv)))
    assert main(["ui", "--port", "7999", "--share", "--device", "cpu"]) == 0
    assert seen["name"] == "attnplug.ui" and seen["argv"][1:] == ["--host", "127.0.0.1", "--port", "7999", "--share",
                                                                   "--device", "cpu"]
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)  # no Gradio
    assert main(["ui"]) == 2
    assert "needs Gradio" in capsys.readouterr().err
