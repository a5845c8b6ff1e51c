"""The stock video benchmark: its failure analysis on hand-made detections, and a small run end to end (slow)."""

import json

import pytest

from attnplug.models.detector import DetectedObject, Detection


def _obj(x, y, size):
    return DetectedObject(bbox=(0, 0, 1, 1), centroid=(x, y), size=size, color="red", shape="circle",
                          mean_rgb=(1.0, 0.0, 0.0), fill=1.0)


def test_failures_are_sorted_by_kind_and_the_second_objects_distance_is_measured_along_the_motion(load_bench):
    bench = load_bench("video_stock_bench")
    assert bench.failure_kind([1, 2, 1]) == "second object"
    assert bench.failure_kind([1, 0, 2]) == "no object"
    assert bench.failure_kind([1, 1, 1]) == "colour change"
    frames = [Detection([_obj(5, 4, 12)], 20, 20), Detection([_obj(5, 4, 12), _obj(6, 15, 7)], 20, 20)]
    (vertical,) = bench.second_object_offsets(frames, vertical=True)
    assert vertical == {"along": 11, "across": 1, "size": 7}
    (horizontal,) = bench.second_object_offsets(frames, vertical=False)
    assert horizontal == {"along": 1, "across": 11, "size": 7}
    rows = [{"videos": 96, "persistent": 84}, {"videos": 96, "persistent": 90}]
    pooled = bench.pooled(rows, "persistent")
    assert pooled["count"] == 174 and pooled["videos"] == 192
    assert pooled["share"] == pytest.approx(174 / 192) and 0.02 < pooled["stderr"] < 0.03
    failures = [{"prompt": "red circle moving up", "direction": "up", "counts": [1, 2], "kind": "second object",
                 "offsets": [vertical]},
                {"prompt": "red circle moving left", "direction": "left", "counts": [0, 1], "kind": "no object",
                 "offsets": []}]
    summary = bench.describe(failures, {"up": 48, "left": 48})
    assert summary["by_direction"] == {"up": 1, "left": 1} and summary["by_kind"]["no object"] == 1
    assert summary["videos_per_direction"] == {"up": 48, "left": 48}
    assert summary["second_object"]["frames"] == 1
    assert summary["second_object"]["distance_median_px"] == pytest.approx((11**2 + 1) ** 0.5)


@pytest.mark.slow
def test_a_small_run_writes_rows_the_pooled_share_and_each_failure(tmp_path, load_bench):
    out = tmp_path / "stock.json"
    load_bench("video_stock_bench").main(["--prompts", "4", "--seeds", "1", "--bases", "2000", "40000",
                                          "--threads", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [r["base"] for r in data["rows"]] == [2000, 40000] and all(r["videos"] == 4 for r in data["rows"])
    assert data["pooled"]["persistent"]["videos"] == 8
    assert data["pooled"]["persistent"]["count"] == sum(r["persistent"] for r in data["rows"])
    assert len(data["failed_videos"]) == 8 - data["pooled"]["persistent"]["count"]
    assert data["weights"] and data["frames"] == 8
    assert data["failures"]["videos_per_direction"] == {"right": 2, "left": 2, "down": 2, "up": 2}


def _part(bench, base, persistent, failed, stochastic=True, weights="w"):
    rows = [{"base": base, "videos": 4, "persistent": persistent, "steady": persistent}]
    fails = [{"seed": base + i, "prompt": "red circle moving up", "direction": "up", "counts": [1, 2, 1],
              "kind": "second object", "offsets": [{"along": 3.0, "across": 4.0, "size": 5}]} for i in range(failed)]
    settings = {"model": "m", "weights": weights, "frames": 8, "prompts": 4, "seeds": 1, "steps": 20,
                "stochastic_sampling": stochastic, "loadavg": [1.0, 1.0, 1.0]}
    return bench.with_summary(settings, rows, fails)


def test_runs_side_by_side_merge_into_one_pooled_share(load_bench):
    bench = load_bench("video_stock_bench")
    data = bench.merged([_part(bench, 2000, 3, 1), _part(bench, 40000, 2, 2)])
    assert [r["base"] for r in data["rows"]] == [2000, 40000]
    assert data["pooled"]["persistent"]["count"] == 5 and data["pooled"]["persistent"]["videos"] == 8
    assert data["failures"]["by_direction"] == {"up": 3} and len(data["failed_videos"]) == 3
    assert data["failures"]["videos_per_direction"] == {"right": 2, "left": 2, "down": 2, "up": 2}
    assert data["stochastic_sampling"] is True and len(data["loadavg"]) == 2
    with pytest.raises(ValueError, match="share seed bases"):
        bench.merged([_part(bench, 2000, 3, 1), _part(bench, 2000, 3, 1)])
    with pytest.raises(ValueError, match="stochastic_sampling differ"):
        bench.merged([_part(bench, 2000, 3, 1), _part(bench, 40000, 3, 1, stochastic=False)])
