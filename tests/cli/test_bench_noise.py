"""``attnplug bench`` says what its timings are worth: a method that ran on 0 % of calls is flagged, not given a
speed-up; its warning is said once per entry; repeats give a median and a spread; a loaded machine or a large
spread is warned about; the default thread count backs off on a loaded machine."""

import json
import re

import pytest
from cli_testutil import run_cli

from attnplug.cli.runner import default_threads
from attnplug.report import noise_warning


@pytest.fixture(scope="module")
def never_ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # at the 16-px training size the default 7x7 neighbourhood covers every grid: it runs on no call
    r = run_cli("bench", "--model", "shapes-unet", "--methods", "neighborhood,agent", "--prompt", "red circle",
                "--seeds", "0,1", "--steps", "2", "--warmup", "1", "--repeats", "2", "--out", out, "--no-progress",
                timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r


def test_a_method_that_ran_on_no_call_is_flagged_not_timed(never_ran):
    _, r = never_ran
    line = next(line for line in r.stdout.splitlines() if line.strip().startswith("neighborhood"))
    assert "ran on 0 % of calls" in line and "window-covers-grid" in line
    assert not re.search(r"\d\.\d\dx", line)  # no speed-up figure
    assert any(line.strip().startswith("agent") and "speed-up" in line for line in r.stdout.splitlines())


def test_the_warning_is_said_once_per_entry(never_ran):
    _, r = never_ran
    # 1 warm-up + 2 items x 2 repeats + 2 memory passes: seven runs of the entry, one warning
    assert r.stderr.count("NeighborhoodMethod was due to run") == 1


def test_repeats_give_median_and_spread(never_ran):
    out, r = never_ran
    records = [json.loads(p.read_text()) for p in (out / "media").rglob("*.json")]
    for rec in records:
        assert len(rec["seconds_all"]) == 2 and rec["seconds"] == pytest.approx(sum(rec["seconds_all"]) / 2)
        assert rec["spread"] >= 0
    assert "spread" in r.stdout
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert next(row for row in summary if row["method"] == "neighborhood")["speedup_median"] is None


def test_noise_warning_names_load_and_spread():
    assert "load average 3.0 on 2 cores" in noise_warning(3.0, 2, [0.05])
    assert "differ by up to 50%" in noise_warning(0.1, 2, [0.5, None])
    assert noise_warning(0.1, 2, [0.05, None]) is None


def test_default_threads_back_off_on_a_loaded_machine():
    assert default_threads(2, 0.3) is None  # idle: torch's own
    assert default_threads(2, 1.8) == 1
    assert default_threads(2, 6.0) == 1
    assert default_threads(16, 4.0) is None  # a quarter loaded: still all cores
    assert default_threads(16, 12.0) == 4
