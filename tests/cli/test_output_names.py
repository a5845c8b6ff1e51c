"""Bench sweeps over one option's values: every entry gets its own file (slug + config hash), images and videos."""

import json

import numpy as np
import pytest


def _bench_records(out):
    """Every bench record, with ``_file``: its output's path (outputs are named relative to the record's folder)."""
    records = []
    for path in (out / "media").rglob("*.json"):
        record = json.loads(path.read_text())
        record["_file"] = path.parent / record["outputs"][0]
        records.append(record)
    return records


@pytest.mark.parametrize(("model", "methods", "extra"), [
    ("shapes-unet", "dense,agent[value_shortcut=0.1],agent[value_shortcut=0.9]", []),
    ("shapes-video", "dense,sparse_video[density=0.3;tile=2],sparse_video[density=0.5;tile=2]", ["--frames", "4"]),
])
def test_sweep_entries_never_share_a_file(cli, tmp_path, model, methods, extra):
    out = tmp_path / "sweep"
    r = cli("bench", "--model", model, "--methods", methods, "--prompt", "red circle", "--seeds", "0", "--steps",
            "2", "--warmup", "0", "--out", out, "--no-progress", *extra, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    records = _bench_records(out)
    assert len(records) == 4  # with stock, the reference
    outputs = [rec["_file"] for rec in records]
    assert len(set(outputs)) == 4, outputs
    assert all(path.is_file() for path in outputs)
    import imageio.v3 as iio

    arrays = {rec["method_label"]: np.asarray(iio.imread(rec["_file"])) for rec in records}
    a, b = (label for label in arrays if label not in ("dense", "stock"))
    assert not np.array_equal(arrays[a], arrays[b]), "two entries wrote the same picture"


def test_entries_that_are_the_same_run_are_refused_when_planned(cli, tmp_path):
    r = cli("bench", "--methods", "dense,agent[max_level=1],agent[max_level= 1]", "--prompt", "x", "--out", tmp_path)
    assert r.returncode == 2 and "are the same run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.json"))
