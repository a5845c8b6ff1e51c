"""The prepared GPU benchmark (benchmarks/gpu_bench.py): its dry run on CPU, its runner and `bench --suite gpu`."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"
SECTIONS = ("kernels", "wan", "flux", "unet")
STATUSES = ("ok", "skipped", "error")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run in a subprocess (as CI runs it); returns the JSON it wrote."""
    out = tmp_path_factory.mktemp("gpu_bench")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_bench.json").read_text())


def entries(doc, section):
    return doc["sections"][section]["entries"]


def test_dry_run_has_every_section_and_no_failed_entry(dry_run):
    assert dry_run["finished"] is True
    env = dry_run["environment"]
    assert env["dry_run"] is True and env["device"] == "cpu"
    for key in ("device_name", "torch", "triton", "cuda", "diffusers"):
        assert key in env
    assert set(SECTIONS) <= set(dry_run["sections"])
    failed = {}
    for section in SECTIONS:
        assert entries(dry_run, section), f"section {section} has no entries"
        for name, entry in entries(dry_run, section).items():
            assert entry["status"] in STATUSES, (section, name, entry)
            if entry["status"] == "skipped":
                assert entry["reason"], (section, name)
            if entry["status"] == "error":
                failed[f"{section}/{name}"] = entry["error"]
    assert not failed, f"entries that neither ran nor were skipped with a reason: {failed}"


def test_dry_run_kernel_table(dry_run):
    kernels = entries(dry_run, "kernels")
    grids = dry_run["profile"]["grids"]
    for grid in grids:
        dense = kernels[f"{grid}/dense/auto"]
        assert dense["status"] == "ok" and dense["ms"] > 0 and dense["tflops"] > 0
        for forced in ("flash", "cudnn", "efficient"):
            assert kernels[f"{grid}/dense/{forced}"]["status"] in ("ok", "skipped")
        for name, entry in kernels.items():
            if name.startswith(f"{grid}/") and name.endswith("/triton"):
                assert entry["status"] == "skipped" and "CUDA" in entry["reason"]
    sparse = [e for n, e in kernels.items() if "/dense/" not in n and e["status"] == "ok"]
    assert any(e for n, e in kernels.items() if n.endswith("/random/0.25/torch") and e["status"] == "ok")
    assert any(e for n, e in kernels.items() if n.endswith("/tiles/torch") and e["status"] == "ok")
    for entry in sparse:
        assert 0 < entry["density"] <= 1
        assert entry["tflops"] > 0 and entry["fraction_of_bound"] > 0
        assert math.isclose(entry["bound_ms"], entry["dense_ms"] * entry["density"], rel_tol=1e-6)
        assert entry["sync"] == {"checked": False, "reason": entry["sync"]["reason"]}


def test_dry_run_denoising_steps(dry_run):
    for section, variants in (("wan", ("tiles", "heads", "topk", "threshold", "neighborhood")),
                              ("flux", ("neighborhood", "neighborhood_train_grid", "window_train_grid")),
                              ("unet", ("hires_window", "hires_refine_neighborhood"))):
        steps = entries(dry_run, section)
        assert steps["build"]["status"] == "ok" and steps["build"]["parameters"] > 0
        assert steps["dense"]["status"] == "ok" and steps["dense"]["finite"]
        for name in variants:
            step = steps[name]
            assert step["status"] == "ok", (section, name, step)
            assert step["self"]["calls"] > 0 and step["ms"] > 0
            assert 0 <= step["rel_l2"] < 1, (section, name, step["rel_l2"])
            if name != "hires_refine_neighborhood":  # that window covers the tiny grid: handed back, and said so
                assert step["method_ran"], (section, name, step["self"])
    assert entries(dry_run, "unet")["hires_window"]["self"]["reasons"].get("layer-not-selected", 0) > 0


def test_runner_records_errors_and_goes_on(tmp_path):
    gb = load_script()
    runner = gb.Runner(tmp_path / "r.json", budget_s=100.0, meta={"environment": {}})

    def boom():
        raise ValueError("no such backend")

    def skip():
        raise gb.Skip("needs CUDA")

    runner.run_section("s", [gb.Entry("a", boom), gb.Entry("b", skip), gb.Entry("c", lambda: {"ms": 1.0})])
    doc = json.loads((tmp_path / "r.json").read_text())
    got = doc["sections"]["s"]["entries"]
    assert got["a"]["status"] == "error" and "ValueError: no such backend" in got["a"]["error"]
    assert got["a"]["where"] and "boom" in got["a"]["where"][-1]
    assert got["b"] == {"status": "skipped", "reason": "needs CUDA", "wall_s": got["b"]["wall_s"]}
    assert got["c"]["status"] == "ok" and got["c"]["ms"] == 1.0
    assert doc["finished"] is False


def test_runner_budget_skips_the_rest_and_writes_after_each_entry(tmp_path):
    gb = load_script()
    now = [0.0]
    runner = gb.Runner(tmp_path / "r.json", budget_s=10.0, meta={}, clock=lambda: now[0])
    seen = []

    def slow():
        seen.append(json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else None)
        now[0] += 6.0
        return {}

    runner.run_section("first", [gb.Entry("a", slow), gb.Entry("b", slow)], share_end=0.5)
    runner.run_section("second", [gb.Entry("c", slow), gb.Entry("d", slow)], share_end=1.0)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["sections"]["first"]["entries"]["a"]["status"] == "ok"
    assert doc["sections"]["first"]["entries"]["b"] == {"status": "skipped", "reason": "budget"}
    assert doc["sections"]["second"]["entries"]["c"]["status"] == "ok"  # unused share passes on: 6 s < 10 s
    assert doc["sections"]["second"]["entries"]["d"] == {"status": "skipped", "reason": "budget"}
    assert seen[1]["sections"]["first"]["entries"]["a"]["status"] == "ok"  # partial JSON before the next entry


def test_neighborhood_for_hits_the_density():
    gb = load_script()
    for grid in ((21, 30, 52), (33, 45, 80), (1, 128, 128), (1, 256, 256)):
        for density in (0.1, 0.25, 0.5):
            mask = gb.neighborhood_for(grid, density)
            assert all(k % 2 == 1 or k == n for k, n in zip(mask.kernel_size, grid))
            assert abs(gb.element_density(mask) - density) / density < 0.15, (grid, density, mask.kernel_size)


def test_random_lut_density():
    gb = load_script()
    lut = gb.random_lut(4096, 128, 0.25, seed=0)
    assert lut.density(4096, 4096) == pytest.approx(0.25)
    assert bool((lut.indices[0, 0, :, :] == lut.indices.new_tensor(range(32))[:, None]).any(-1).all())  # diagonal


def test_bench_suite_gpu_runs_the_script_with_out(tmp_path, monkeypatch, capsys):
    from attnplug import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--suite", "gpu"]) == 2  # no checkout here: a clear error, nothing run
    assert "benchmarks/gpu_bench.py from a source checkout" in capsys.readouterr().err
    script = tmp_path / "benchmarks" / "gpu_bench.py"
    script.parent.mkdir()
    script.write_text("import json, sys\nopen('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n")
    assert cli.main(["bench", "--suite", "gpu"]) == 0
    assert json.loads((tmp_path / "argv.json").read_text()) == ["--out", str(Path("benchmarks/results/gpu"))]
    assert cli.main(["bench", "--suite", "gpu", "--out", "elsewhere"]) == 0
    assert json.loads((tmp_path / "argv.json").read_text()) == ["--out", "elsewhere"]
