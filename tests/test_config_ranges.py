"""Accepted ranges live in field metadata only (open or closed ends), and the validation, ``attnplug methods`` and
the UI form all read them from there."""

import re

import pytest

from attnplug.config import field_specs, method_configs
from attnplug.methods import SparseVideoConfig, WindowConfig

STATED_RANGE = re.compile(r"\bin [\[(][^\])]*[\])]")


def test_no_help_text_states_a_range():
    stated = [(name, s.name) for name, cls in method_configs().items() for s in field_specs(cls)
              if STATED_RANGE.search(s.help or "")]
    assert stated == []


@pytest.mark.parametrize(("cls", "field", "text"), [
    (SparseVideoConfig, "density", "(0, 1]"),
    (SparseVideoConfig, "threshold", "(0, inf)"),
    (SparseVideoConfig, "block_size", "[1, inf)"),
    (WindowConfig, "window_fraction", "(0, 1]"),
])
def test_range_text_states_the_open_ends(cls, field, text):
    spec = next(s for s in field_specs(cls) if s.name == field)
    assert spec.range_text() == text


@pytest.mark.parametrize(("cls", "kwargs"), [
    (SparseVideoConfig, dict(density=0.0)),
    (SparseVideoConfig, dict(topk_mass=0.0)),
    (SparseVideoConfig, dict(threshold=float("inf"))),
])
def test_an_open_end_is_refused_with_the_range(cls, kwargs):
    (field, value), = kwargs.items()
    spec = next(s for s in field_specs(cls) if s.name == field)
    with pytest.raises(ValueError, match=re.escape(spec.range_text())):
        cls(**kwargs)


def test_a_fraction_of_zero_is_refused_per_entry():
    with pytest.raises(ValueError, match=r"window_fraction for height must be > 0.0"):
        WindowConfig(window_fraction=(0.0, 0.5))


def test_closed_ends_are_accepted():
    assert SparseVideoConfig(density=1.0).density == 1.0
    assert WindowConfig(window_fraction=1.0).window_fraction == 1.0


def test_the_ui_form_refuses_an_open_end():
    from attnplug.ui.forms import method_forms

    density = next(f for f in method_forms()["sparse_video"] if f.spec.name == "density")
    with pytest.raises(ValueError, match=re.escape("(0, 1]")):
        density.parse(0.0)
    assert density.parse(0.5) == 0.5
