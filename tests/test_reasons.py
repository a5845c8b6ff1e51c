"""One registry of hand-back reason codes: the core's and every shipped method's codes are registered with a meaning,
and a method cannot hand back with a code nobody registered."""

import ast
from pathlib import Path

import pytest

import attnplug.methods  # noqa: F401 - the shipped methods register their codes on import
import attnplug.pipelines._long_video  # noqa: F401
from attnplug import reasons
from attnplug.methods.base import AttentionMethod
from attnplug.methods.patterns.base import HAND_BACK_REASONS
from attnplug.processors.stats import REASONS

PACKAGE = Path(__file__).resolve().parents[1] / "attnplug"


def _hand_back_codes() -> set[str]:
    """Every literal code passed to ``hand_back``/``_hand_back`` in the package source."""
    codes = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("hand_back", "_hand_back"):
                codes.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return codes


def test_every_code_in_the_source_is_registered_with_a_meaning():
    import importlib

    for module in ("agent", "freeswim", "neighborhood", "window", "sparse_video"):
        importlib.import_module(f"attnplug.methods.{module}")
    codes = _hand_back_codes() | set(HAND_BACK_REASONS) | set(REASONS)
    assert len(codes) > 10
    assert {c for c in codes if not reasons.is_registered(c)} == set()
    assert all(reasons.meaning(c) for c in codes)


def test_an_unregistered_code_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"'no-such-reason' is not registered.*attnplug.reasons.register"):
        AttentionMethod().hand_back("no-such-reason")


def test_register_refuses_a_second_meaning_and_bad_codes():
    reasons.register("test-only-code", "one meaning")
    reasons.register("test-only-code", "one meaning")  # the same again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        reasons.register("test-only-code", "another meaning")
    for bad in ("Not Kebab", "", "trailing-", 3):
        with pytest.raises(ValueError, match="kebab-case"):
            reasons.register(bad, "x")
    with pytest.raises(KeyError, match="unknown hand-back reason 'never-registered'"):
        reasons.meaning("never-registered")
