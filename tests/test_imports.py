"""Imports go one way: layout/config -> kernels -> methods -> processors -> plugin -> pipelines -> loading, report,
cli. Checked from the source (every module-level and lazy relative import) and by importing each subpackage alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnplug"
# rank of each top-level part; a module may import only parts of lower or equal rank (every part is ranked)
LAYERS = {
    # bottom level: helpers without attnplug imports, the hand-back reasons, the layout and what it reads
    "_args": 0, "_cache": 0, "_hook_registry": 0, "_lazy": 0, "_logging": 0, "_memory": 0, "_optional": 0,
    "_steps": 0, "reasons": 0, "layout_reader": 0, "families_refused": 0, "families": 0, "layout": 0,
    "config": 1, "kernels": 2, "methods": 3, "processors": 4, "plugin": 5,
    "testing": 5, "testing_families": 5, "testing_builders_image": 5, "testing_builders_joint": 5,
    "testing_builders_video": 5, "testing_builders_video2": 5, "testing_matrix": 5, "testing_reference": 5,
    "models": 6, "pipelines": 6, "loading": 7, "report": 7, "cli": 8, "ui": 8, "__main__": 9, "__init__": 9,
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # how deep inside attnplug/ the module sits
    found = set()
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only, never executed
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1
            if up > depth:
                continue
            base = list(path.relative_to(PACKAGE).parts[:depth - up])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # "from . import x" at the package root
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnplug."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("attnplug."))
    return found


def test_every_part_is_ranked():
    parts = {_part(path) for path in PACKAGE.rglob("*.py")}
    assert parts - set(LAYERS) == set(), "rank the new top-level modules in LAYERS"


def test_imports_go_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        part = _part(path)
        for target in _imported_parts(path):
            if target != part and LAYERS.get(target, 0) > LAYERS[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("module", ["layout", "config", "kernels", "methods", "processors", "plugin", "pipelines",
                                    "models"])
def test_each_subpackage_imports_alone(module):
    code = f"import importlib, sys; importlib.import_module('attnplug.{module}')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
