"""Merging long-video benchmark runs made side by side (one per frame count): each run's stock rows come along."""


def _run(frames, variants, tag):
    rows = [{"frames": 8, "variant": "stock", "tag": tag}]
    rows += [{"frames": frames, "variant": v, "tag": tag} for v in ("stock", *variants)]
    return {"rows": rows, "torch_threads": 1, "loadavg": [0, 0, 0]}


def test_merge_keeps_the_other_frame_count_and_takes_the_new_runs_stock(load_bench):
    bench = load_bench("longvideo_bench")
    merged = bench.merge(_run(16, ["defaults"], "a"), _run(32, ["defaults"], "b"), {"defaults"})
    got = [(r["frames"], r["variant"], r["tag"]) for r in merged["rows"]]
    assert got == [(8, "stock", "b"), (16, "stock", "a"), (16, "defaults", "a"), (32, "stock", "b"),
                   (32, "defaults", "b")]
    rerun = bench.merge(merged, _run(16, ["defaults", "interpolation"], "c"), {"interpolation"})
    got = [(r["frames"], r["variant"], r["tag"]) for r in rerun["rows"]]
    assert (16, "defaults", "a") in got and (16, "interpolation", "c") in got and (16, "stock", "c") in got
    assert len(rerun["reruns"]) == 2
