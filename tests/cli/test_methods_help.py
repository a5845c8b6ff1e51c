"""``attnplug methods`` through the real entry point: complete first sentences, each method's default schedule,
one accepted range per field, and the hi-res / long-video options."""

import re

import pytest
from cli_testutil import run_cli


@pytest.fixture(scope="module")
def listing():
    r = run_cli("methods")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_first_lines_are_whole_sentences_and_methods_are_apart(listing):
    heads = [line for line in listing.splitlines() if re.match(r"^[a-z_]+: ", line)]
    assert {h.split(":")[0] for h in heads} >= {"agent", "dense", "neighborhood", "sparse_video", "window"}
    for head in heads:
        assert head.rstrip().endswith((".", ")")), head
        assert "``" not in head and ":func:" not in head
    assert "\n\nwindow: " in listing and "\n\nsparse_video: " in listing


def test_each_method_shows_its_default_schedule(listing):
    blocks = {b.split(":")[0]: b for b in listing.split("\n\n")}
    assert "default schedule: the first 40% of the steps" in blocks["agent"]
    assert "default schedule: every step after a dense warm-up of 10% of the steps" in blocks["sparse_video"]
    assert "default schedule: every step, every layer" in blocks["neighborhood"]


def test_one_range_per_field():
    r = run_cli("methods", "sparse_video")
    density = next(line for line in r.stdout.splitlines() if "-o density=" in line)
    assert len(re.findall(r"\bin [\[(]", density)) == 1 and "(0, 1]" in density


@pytest.mark.parametrize(("name", "flag", "field"), [("hires", "--hires-option", "strength"),
                                                     ("long_video", "--long-video-option", "window_frames")])
def test_hires_and_long_video_options_are_listed(listing, name, flag, field):
    assert f"attnplug methods {name}" in listing
    r = run_cli("methods", name)
    assert r.returncode == 0, r.stderr
    assert any(line.strip().startswith(f"{flag} {field}=") for line in r.stdout.splitlines())
    assert r.stdout.splitlines()[0].startswith(f"{name} (")


def test_the_method_docs_name_only_real_fields():
    """Every field a ``| field | default | meaning |`` table in docs/methods/ documents exists in a method config."""
    import dataclasses
    from pathlib import Path

    from attnplug.config import method_configs

    fields = {f.name for cls in method_configs().values() for f in dataclasses.fields(cls)}
    docs = Path(__file__).resolve().parents[2] / "docs" / "methods"
    for path in docs.glob("*.md"):
        in_table = False
        for line in path.read_text().splitlines():
            if line.startswith("| field |"):
                in_table = True
            elif not line.startswith("|"):
                in_table = False
            elif in_table and (m := re.match(r"\| `(\w+)` \|", line)):
                assert m.group(1) in fields, f"{path.name} documents {m.group(1)!r}, which no config has"
