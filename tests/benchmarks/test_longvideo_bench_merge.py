"""Merging long-video benchmark runs made side by side (one per frame count): each run's stock rows come along."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("longvideo_bench_under_test", BENCH / "longvideo_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _run(frames, variants, tag):
    rows = [{"frames": 8, "variant": "stock", "tag": tag}]
    rows += [{"frames": frames, "variant": v, "tag": tag} for v in ("stock", *variants)]
    return {"rows": rows, "torch_threads": 1, "loadavg": [0, 0, 0]}


def test_merge_keeps_the_other_frame_count_and_takes_the_new_runs_stock():
    bench = _load()
    merged = bench.merge(_run(16, ["defaults"], "a"), _run(32, ["defaults"], "b"), {"defaults"})
    got = [(r["frames"], r["variant"], r["tag"]) for r in merged["rows"]]
    assert got == [(8, "stock", "b"), (16, "stock", "a"), (16, "defaults", "a"), (32, "stock", "b"),
                   (32, "defaults", "b")]
    rerun = bench.merge(merged, _run(16, ["defaults", "interpolation"], "c"), {"interpolation"})
    got = [(r["frames"], r["variant"], r["tag"]) for r in rerun["rows"]]
    assert (16, "defaults", "a") in got and (16, "interpolation", "c") in got and (16, "stock", "c") in got
    assert len(rerun["reruns"]) == 2
