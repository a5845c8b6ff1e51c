"""Ahead-of-time compilation of the Triton kernel per ``ARCH_CONFIGS`` row (no GPU needed) and the committed report.

Compiles run in a subprocess because this test process may have TRITON_INTERPRET=1 set (conftest.py), which replaces
the JIT functions that ``triton.compile`` needs. The full matrix (``-m slow``) is what
benchmarks/kernel_compile_report.py writes to benchmarks/results/kernel_compile_report.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from attnplug.kernels.block_sparse.arch_configs import ARCH_CONFIGS
from attnplug.kernels.block_sparse.compile_check import KernelVariant, table_variants

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(ROOT, "benchmarks", "results", "kernel_compile_report.json")
SCRIPT = """
import json, sys
from attnplug.kernels.block_sparse.compile_check import compile_config, default_variants, table_variants
for variant in (default_variants() if sys.argv[1] == "default" else table_variants()):
    print(json.dumps(compile_config(variant)), flush=True)
"""
_FIELDS = [f.name for f in dataclasses.fields(KernelVariant)]


def _compile(which: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, which], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _check_16bit(rows: list[dict]) -> None:
    """16-bit variants that compiled: no spills, smem within the arch's limit, <= 255 registers."""
    assert rows
    for r in rows:
        if r["error"] is not None or r["dtype"] == "float32":
            continue
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert 0 < r["smem"] <= r["smem_limit"], r
        assert r["registers"] <= 255, r


def _key(row: dict) -> tuple:
    return tuple(row[f] for f in _FIELDS)


def test_representative_configs_compile_without_spills_and_pipeline_kv():
    rows = _compile("default")
    assert {r["arch"] for r in rows} == {80, 90} and all(r["error"] is None for r in rows)
    _check_16bit(rows)
    for r in rows:
        if r["dtype"] == "float32" or r["has_threshold"]:  # the threshold branch keeps V loads conditional
            continue
        q, kv = r["tile_m"] * r["d_pad"] * 2, r["tile_n"] * r["d_pad"] * 2
        assert r["smem"] >= q + 2 * 2 * kv, r  # K and V tiles at least double-buffered: the loop is pipelined


def test_committed_report_covers_every_table_row():
    with open(REPORT) as f:
        report = json.load(f)
    rows = report["rows"]
    assert sorted(map(_key, rows)) == sorted(_key(dataclasses.asdict(v)) for v in table_variants())
    for (arch, precision), cfg in ARCH_CONFIGS.items():
        mine = [r for r in rows if r["arch"] == arch and (r["dtype"] != "float32") == (precision == "16bit")
                and (precision != "tf32") == r["ieee_dot"]]
        assert mine, (arch, precision)
        assert all((r["num_warps"], r["num_stages"]) == (cfg.num_warps, cfg.num_stages) for r in mine)
        assert all(r["tile_m"] <= max(cfg.max_tile_m, r["block_m"] if r["has_threshold"] else 0) for r in mine)
    for r in rows:  # every variant compiled, or says why not
        assert (r["error"] is None) == (r["registers"] is not None), r
        assert r["error"] is None or len(r["error"]) > 10, r
    _check_16bit(rows)


@pytest.mark.slow
def test_all_table_configs_compile_like_the_committed_report():
    rows = _compile("all")
    _check_16bit(rows)
    with open(REPORT) as f:
        committed = {_key(r): r for r in json.load(f)["rows"]}
    for r in rows:
        c = committed[_key(r)]
        assert (r["error"] is None) == (c["error"] is None) and r["spill_stores"] == c["spill_stores"], (r, c)


def test_a_failed_compile_is_reported_not_raised(monkeypatch):
    from attnplug.kernels.block_sparse import compile_check

    def fail(variant):
        raise RuntimeError("PTXAS error: Internal Triton PTX codegen error\nptxas fatal: Value 'sm_120a' is unknown")

    monkeypatch.setattr(compile_check, "_require_jit", lambda: None)
    monkeypatch.setattr(compile_check, "_compile", fail)
    row = compile_check.compile_config(table_variants()[-1])
    assert row["error"].startswith("RuntimeError: PTXAS error") and "sm_120a" in row["error"]
    assert row["fits"] is False and row["registers"] is None and row["arch"] == 120
