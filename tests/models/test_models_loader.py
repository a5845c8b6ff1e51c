"""Loader: the shipped models load offline as diffusers pipelines; bad files give clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

from attnplug.models import available_models, load_pipeline
from attnplug.models.loader import MODELS_DIR

NAMES = ["shapes-dit", "shapes-unet", "shapes-video"]
IN_TRAINING = ["shapes-video-v2"]  # loads by name, not offered until its training log says finished


def test_import_is_lazy():
    """``import attnplug.models`` loads none of its heavy submodules, transformers or safetensors (nor trains)."""
    code = (
        "import sys, attnplug; before = set(sys.modules); import attnplug.models; new = set(sys.modules) - before; "
        "heavy = [m for m in new if m.split('.')[0] in ('transformers', 'safetensors', 'tokenizers') "
        "or m in ('attnplug.models.train', 'attnplug.models.pipeline', 'attnplug.models.loader')]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_available_models_and_size_budget():
    assert available_models() == NAMES and not set(IN_TRAINING) & set(available_models())
    shipped = [p for p in MODELS_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.name != "train_state.safetensors"]
    total = sum(p.stat().st_size for p in shipped)
    assert total <= 20 * 2**20, f"embedded model files take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name, attr, cls", [
    ("shapes-unet", "unet", "UNet2DConditionModel"),
    ("shapes-dit", "transformer", "PixArtTransformer2DModel"),
    ("shapes-video", "transformer", "WanTransformer3DModel"),
])
def test_load_each(name, attr, cls):
    pipe = load_pipeline(name)
    assert isinstance(pipe, DiffusionPipeline)
    assert type(getattr(pipe, attr)).__name__ == cls
    assert set(pipe.components) == {"tokenizer", "text_encoder", attr, "scheduler"}
    assert not getattr(pipe, attr).training
    ids = pipe.tokenizer(["red circle moving right"], padding="max_length", max_length=8).input_ids[0]
    assert 1 not in ids  # no unknown words


def test_dtype_argument():
    pipe = load_pipeline("shapes-dit", dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype"):
        load_pipeline("shapes-dit", dtype=torch.int32)


def test_unknown_name():
    with pytest.raises(ValueError, match="shapes-nope.*available models.*shapes-dit"):
        load_pipeline("shapes-nope")


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "m"
    dst.mkdir()
    for f in ("config.json", "vocab.json", "model.safetensors"):
        shutil.copy(MODELS_DIR / "shapes-dit" / f, dst / f)
    return dst


def test_copy_loads_identically(model_copy):
    a = load_pipeline(model_copy).transformer.state_dict()
    b = load_pipeline("shapes-dit").transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _rewrite(path, fn):
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def test_missing_weights_file(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors does not exist"):
        load_pipeline(model_copy)


def test_corrupt_safetensors(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_pipeline(model_copy)


def test_truncated_safetensors(model_copy):
    path = model_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_pipeline(model_copy)


def test_wrong_shape(model_copy):
    key = "denoiser.proj_out.weight"
    _rewrite(model_copy / "model.safetensors", lambda t: t.__setitem__(key, torch.zeros(3, 5)))
    with pytest.raises(ValueError, match=r"tensor 'denoiser\.proj_out\.weight' has shape \(3, 5\)"):
        load_pipeline(model_copy)


def test_missing_key(model_copy):
    _rewrite(model_copy / "model.safetensors", lambda t: t.pop("denoiser.proj_out.weight"))
    with pytest.raises(ValueError, match=r"model\.safetensors is missing 1 tensor.*proj_out\.weight"):
        load_pipeline(model_copy)


def test_unexpected_key(model_copy):
    _rewrite(model_copy / "model.safetensors", lambda t: t.__setitem__("denoiser.extra", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"model\.safetensors has 1 tensor\(s\) the config does not define.*extra"):
        load_pipeline(model_copy)


def test_nan_weights(model_copy):
    def poison(t):
        t["denoiser.proj_out.bias"] = torch.full_like(t["denoiser.proj_out.bias"], float("nan"))

    _rewrite(model_copy / "model.safetensors", poison)
    with pytest.raises(ValueError, match="proj_out.bias' contains NaN"):
        load_pipeline(model_copy)


def test_config_from_other_model(model_copy):
    shutil.copy(MODELS_DIR / "shapes-unet" / "config.json", model_copy / "config.json")
    with pytest.raises(ValueError, match=r"model\.safetensors is missing"):
        load_pipeline(model_copy)


def test_bad_config_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json could not be read as JSON"):
        load_pipeline(model_copy)


def test_config_missing_key(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    del cfg["denoiser"]
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json is missing the keys \['denoiser'\]"):
        load_pipeline(model_copy)


def test_config_bad_family(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["family"] = "gan"
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"family='gan'"):
        load_pipeline(model_copy)


def test_bad_vocab(model_copy):
    (model_copy / "vocab.json").write_text(json.dumps(["red", "circle"]))
    with pytest.raises(ValueError, match=r"vocab\.json must be a JSON object"):
        load_pipeline(model_copy)
