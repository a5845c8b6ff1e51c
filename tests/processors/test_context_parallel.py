"""Ulysses context parallelism (diffusers' enable_parallelism) with attnplug, in both orders, 2 gloo processes."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ulysses_matches_a_single_process_run(tmp_path):
    pytest.importorskip("diffusers.models._modeling_parallel")
    worker = Path(__file__).with_name("cp_worker.py")
    port, out = _free_port(), tmp_path / "cp.json"
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), "2", str(port), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    results = json.loads(out.read_text())
    assert set(results) == {"wan/cp_first", "wan/apply_first", "flux/cp_first", "flux/apply_first"}
    for case, r in results.items():
        assert r["method"] == r["calls"] > 0, (case, r)
        assert r["max_diff"] < 1e-5, (case, r)  # Flux's rank-interleaved joint sequence is put in canonical order
