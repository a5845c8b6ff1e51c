"""Ahead-of-time compilation of the Triton kernel for sm_80 and sm_90 (no GPU needed): no spills, smem fits.

Runs in a subprocess because this test process may have TRITON_INTERPRET=1 set (conftest.py), which replaces the JIT
functions that ``triton.compile`` needs. The full matrix (``-m slow``) is what benchmarks/kernel_compile_report.py
reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import json, sys
from attnplug.kernels.block_sparse.compile_check import compile_config, default_variants, shipped_variants
which = sys.argv[1]
if which == "default":
    v = default_variants()
    jobs = [(v[0], 80), (v[0], 90), (v[1], 90), (v[2], 80)]
else:
    jobs = [(x, a) for x in shipped_variants() for a in (80, 90)]
for variant, arch in jobs:
    print(json.dumps(compile_config(variant, arch)), flush=True)
"""


def _compile(which: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, which], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _known_spill(r: dict) -> bool:
    """fp32 with the threshold branch and head dim > 64 spills ~350 B on sm_90 (reported in benchmarks/README.md)."""
    return r["dtype"] == "float32" and r["has_threshold"] and r["d_pad"] >= 128 and r["arch"] == 90


def _check(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        if not _known_spill(r):
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert 0 < r["smem"] <= r["smem_limit"], r
        assert r["registers"] <= 255, r


def test_representative_configs_compile_without_spills():
    rows = _compile("default")
    assert {r["arch"] for r in rows} == {80, 90}
    _check(rows)


@pytest.mark.slow
def test_all_shipped_configs_compile_without_spills():
    _check(_compile("all"))
