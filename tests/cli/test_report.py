"""attnplug.report: metrics against their formulas, timing order, stats flattening, JSON safety."""

import json
import math

import numpy as np
import pytest

from attnplug import report


def test_psnr_matches_its_formula_and_ssim_its_bounds():
    rng = np.random.default_rng(0)
    ref = rng.random((2, 16, 16, 3)).astype(np.float32)
    noisy = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    mse = float(np.mean((noisy.astype(np.float64) - ref) ** 2))
    assert report.psnr(noisy, ref) == pytest.approx(10 * math.log10(1 / mse), abs=1e-5)
    assert report.psnr(ref, ref) == math.inf
    assert report.ssim(ref, ref) == pytest.approx(1.0, abs=1e-9)
    assert 0 < report.ssim(noisy, ref) < report.ssim(np.clip(ref + 0.001, 0, 1), ref) <= 1
    with pytest.raises(ValueError, match="equal shapes"):
        report.psnr(ref[:1], ref)
    fid = report.fidelity(noisy, ref)
    assert fid["clip"] == fid["fid"] == report.UNAVAILABLE_NO_WEIGHTS


def test_time_interleaved_rotates_and_warms_up():
    calls = []
    fns = {name: (lambda n=name: calls.append(n) or n) for name in ("a", "b", "c")}
    out = report.time_interleaved(fns, warmup=1, repeats=3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(v["seconds"]) == 3 and v["result"] == k for k, v in out.items())


def test_summarize_stats_both_forms():
    nested = {"self": {"calls": 10, "method": 4, "stock": 6, "reasons": {"max_level": 6}},
              "cross": {"calls": 10, "method": 0, "stock": 10, "reasons": {}}, "passthrough": 0,
              "method_report": {"density": 0.3}}
    s = report.summarize_stats(nested)
    assert (s["self_calls"], s["method"], s["stock"], s["coverage"], s["cross_calls"]) == (10, 4, 6, 0.4, 10)
    assert report.sparsity_of(s["method_report"]) == 0.3
    flat = {"calls": 20, "method": 4, "dense": 16, "dense: cross-attention": 10, "dense: handed back": 6}
    f = report.summarize_stats(flat)
    assert (f["self_calls"], f["method"], f["stock"], f["reasons"]) == (10, 4, 6, {"handed back": 6})
    assert report.summarize_stats({})["coverage"] is None


def test_json_is_strict_and_writes_are_atomic(tmp_path):
    path = tmp_path / "r.json"
    report.write_json(path, {"psnr": math.inf, "x": (1, 2), "nan": math.nan})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "psnr": "inf", "x": [1, 2], "nan": "nan"}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_peak_memory_counts_tensor_allocations_not_the_process():
    import torch

    big = np.ones(64 * 2**20 // 8)  # 64 MiB of numpy: process memory, not a tensor made inside the block
    with report.PeakMemory("cpu") as mem:
        block = torch.ones(2**20, dtype=torch.float32)  # 4 MiB
        del block
        torch.ones(2**18)  # 1 MiB, freed at once
    assert mem.as_dict()["kind"] == "tensor_allocations"
    assert mem.as_dict()["peak_mib"] == pytest.approx(4.0)
    assert big.size
