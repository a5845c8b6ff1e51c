import pytest

from attnplug.models.loader import MODELS_DIR

WEIGHTS = ["shapes-unet", "shapes-dit", "shapes-video"]


def pytest_collection_modifyitems(config, items):
    missing = [n for n in WEIGHTS if not (MODELS_DIR / n / "model.safetensors").is_file()]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"embedded weights not trained yet: {missing}")
    for item in items:
        if "needs_weights" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_weights: skipped until the embedded weights are trained")
