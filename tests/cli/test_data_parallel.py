"""Two CPU processes (torchrun) split prompts x seeds; one merged report holds every item exactly once."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_testutil import ROOT, cli_env


@pytest.mark.slow
def test_two_processes_one_merged_report(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "dp"
    prompts = ["red circle", "blue square", "green triangle"]
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "attnplug", "generate", *prompts,
                        "--model", "shapes-unet", "--steps", "2", "--seeds", "0,1", "--out", str(out),
                        "--no-progress"], env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    ids = [rec["id"] for rec in report["records"]]
    expected = sorted(f"{i:03d}-{p.replace(' ', '-')}-s{s}" for i, p in enumerate(prompts) for s in (0, 1))
    assert sorted(ids) == expected  # every prompt x seed exactly once
    assert report["ranks"] == [0, 1] and report["items"] == report["num_records"] == len(expected)
    assert {rec["rank"] for rec in report["records"]} == {0, 1}


@pytest.mark.slow
def test_accelerate_launch_bench_two_cpu_processes(tmp_path):
    """`accelerate launch --multi_gpu` on a CPU machine starts 2 processes; attnplug joins them with
    PartialState(cpu=True) (without it, each would run everything)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate launcher not installed")
    out = tmp_path / "bench"
    r = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "attnplug", "bench",
                        "--model", "shapes-unet", "--methods", "dense,agent", "--prompt", "red circle",
                        "--prompt", "blue square", "--seeds", "0,1", "--steps", "2", "--warmup", "0",
                        "--device", "cpu", "--out", str(out), "--no-progress"],
                       env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    pairs = sorted((rec["id"], rec["method"]) for rec in report["records"])
    ids = [f"{i:03d}-{p}-s{s}" for i, p in enumerate(["red-circle", "blue-square"]) for s in (0, 1)]
    assert pairs == sorted((i, m) for i in ids for m in ("stock", "dense", "agent"))
    assert report["ranks"] == [0, 1]
    for rec in report["records"]:
        assert rec["fidelity"]["ssim"] > 0
