"""Per-family facts live in one place, ``attnplug.families``: the pipelines read them from the denoiser's family row
(``family_of``) and keep no table of their own. Fails if a per-family table (training size or length, U-Net
families, latent packing, pipeline class -> family name) reappears in ``attnplug.pipelines``."""

import dataclasses
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import attnplug.pipelines
from attnplug import families
from attnplug.families import FAMILIES, family_of
from attnplug.pipelines import LongVideoConfig
from attnplug.pipelines._hires.family import Family, detect_family, supported_pipelines
from attnplug.pipelines._long_video import api as long_video_api
from attnplug.pipelines._long_video import rope

sys.path.insert(0, str(Path(__file__).parent))

NAMES = {spec.name for spec in FAMILIES.values()}
#: family-keyed call conventions of the pipelines themselves (how a pipeline builds its schedule, which pipeline
#: passes a square text-padding mask): not facts about the denoiser
PIPELINE_CONVENTIONS = {"PACKED_SHIFT", "TEXT_PADDING_FAMILIES"}


def _pipeline_modules():
    for info in pkgutil.walk_packages(attnplug.pipelines.__path__, "attnplug.pipelines."):
        yield importlib.import_module(info.name)


def _is_size_or_length(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)


def test_the_removed_copies_are_gone():
    from attnplug.pipelines._hires import family as hires_family
    from attnplug.pipelines._long_video import config as long_video_config

    assert not hasattr(long_video_config, "TRAIN_FRAMES")
    assert not hasattr(long_video_api, "TRAIN_FRAMES")
    for name in ("PIPELINE_FAMILIES", "UNET_FAMILIES", "PACKED_2X2", "REGISTRY_TRAIN_SIZE"):
        assert not hasattr(hires_family, name), name


def test_no_per_family_table_in_the_pipelines():
    """No module of attnplug.pipelines holds a table keyed by family names with sizes, lengths or family names as
    values, a table whose values are family names (pipeline class -> family), or a collection of family names
    (other than the pipelines' own call conventions)."""
    found = []
    for module in _pipeline_modules():
        for attr, value in vars(module).items():
            if attr.startswith("__") or attr in PIPELINE_CONVENTIONS:
                continue
            if isinstance(value, dict) and value:
                keys, values = {k for k in value if isinstance(k, str)}, list(value.values())
                if keys & NAMES and any(_is_size_or_length(v) for v in values):
                    found.append(f"{module.__name__}.{attr}: family -> size / length")
                if any(isinstance(v, str) and v in NAMES for v in values):
                    found.append(f"{module.__name__}.{attr}: -> family name")
            elif isinstance(value, (tuple, list, set, frozenset)) and value:
                if all(isinstance(v, str) for v in value) and len(set(value) & NAMES) >= 1 and set(value) <= NAMES:
                    found.append(f"{module.__name__}.{attr}: a collection of family names")
    assert not found, found


def test_the_rotary_adapters_are_keyed_by_family_rows():
    assert set(rope.supported_families()) <= NAMES
    assert {"wan", "hunyuanvideo", "cogvideox", "ltx", "hunyuanvideo15", "ltx2"} == set(rope.supported_families())
    assert not rope.windows_by_default("ltx") and not rope.windows_by_default("ltx2")
    assert rope.windows_by_default("wan") and rope.windows_by_default("animatediff")
    assert rope.plan_per_call("ltx") and rope.plan_per_call("ltx2") and not rope.plan_per_call("wan")


def test_the_tiny_model_names_are_family_rows():
    from attnplug.testing import FAMILY_NAMES, tiny_model

    assert set(FAMILY_NAMES) <= NAMES
    for name in FAMILY_NAMES:
        assert family_of(tiny_model(name, frames=2)[0]).name == name


# ------------------------------------------------------------------------------------------------ hi-res


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """One pipeline per supported class that builds without a download: the embedded models, tiny SD, PixArt, Wan,
    SD3, Flux, and the flagships Chroma, Qwen-Image, Flux 2, Z-Image."""
    from test_hires import _tiny
    from test_hires_flagships import BUILDERS

    from attnplug.models import load_pipeline

    out = {name: load_pipeline(name) for name in ("shapes-unet", "shapes-dit")}
    for name in ("sd", "pixart", "wan", "sd3", "flux"):
        out[name] = _tiny(name, tmp_path_factory.mktemp(name))
    for name, build in BUILDERS.items():
        out[name] = build[0](tmp_path_factory.mktemp(name))[0]
    return out


def test_every_supported_pipeline_reads_its_family_row(pipelines):
    """Name, U-Net and latent packing come from the denoiser's row; the training size is the embedded model's config,
    the family row's (where the pipeline's default is not the training size, or it states none), else the
    pipeline's own default size."""
    seen = set()
    for name, pipe in pipelines.items():
        seen |= {c.__name__ for c in type(pipe).__mro__} & set(supported_pipelines())
        family = detect_family(pipe)
        spec = family_of(family.denoiser(pipe))
        assert family.name == spec.name, name
        assert family.is_unet is spec.multiscale, name
        assert family.latent_packing == spec.latent_packing, name
        assert family.embedded is name.startswith("shapes-"), name
        if family.embedded:
            assert family.train_size == (pipe.sample_defaults["height"], pipe.sample_defaults["width"]), name
        elif spec.train_size is not None and (not spec.default_size_is_train_size or name in ("wan", "z-image")):
            assert family.train_size == spec.train_size, name
    assert {"StableDiffusionPipeline", "PixArtAlphaPipeline", "WanPipeline", "StableDiffusion3Pipeline",
            "FluxPipeline", "ChromaPipeline", "QwenImagePipeline", "Flux2Pipeline", "ZImagePipeline",
            "ShapesUNetPipeline", "ShapesDiTPipeline"} <= seen


def test_hires_follows_a_changed_family_row(pipelines, monkeypatch):
    """The training size is read from families.FAMILIES, not from a copy."""
    pipe = pipelines["qwen-image"]
    assert detect_family(pipe).train_size == (1328, 1328)
    key = "QwenImageTransformer2DModel"
    monkeypatch.setitem(FAMILIES, key, dataclasses.replace(FAMILIES[key], train_size=(1024, 768)))
    assert detect_family(pipe).train_size == (1024, 768)


def test_an_unsupported_pipeline_names_its_class_and_the_supported_ones():
    class MyPipeline:
        pass

    with pytest.raises(TypeError, match=r"does not support MyPipeline; supported pipelines: ShapesUNetPipeline.*"
                                        r"StableDiffusionPipeline.*WanPipeline"):
        detect_family(MyPipeline())


def test_a_hand_made_family_keeps_its_defaults():
    flux = Family("flux", "transformer", vae_factor=8, input_multiple=2, train_size=(1024, 1024))
    assert not flux.is_unet and flux.pixel_multiple == 16 and not flux.embedded


# ------------------------------------------------------------------------------------------------ long video


def test_the_training_length_is_the_family_rows(wan, monkeypatch):
    assert long_video_api.training_frames(wan, wan.transformer) == family_of(wan.transformer).train_frames == 81
    assert long_video_api.resolve_config(wan, 4 * 80 + 1).train_latent == 21
    key = "WanTransformer3DModel"
    monkeypatch.setitem(FAMILIES, key, dataclasses.replace(FAMILIES[key], train_frames=41))
    assert long_video_api.resolve_config(wan, 4 * 80 + 1).train_latent == 11
    assert long_video_api.resolve_config(wan, 4 * 80 + 1, LongVideoConfig(train_frames=81)).train_latent == 21


def test_a_checkpoint_states_its_own_length():
    """Wan 2.2 TI2V-5B's row variant (121 frames) and AnimateDiff's motion_max_seq_length reach long video through
    family_of."""
    from types import SimpleNamespace

    from attnplug.testing import tiny_model

    ti2v = type("WanTransformer3DModel", (), {})()  # family_of reads the class name and the config
    ti2v.config = SimpleNamespace(in_channels=48, out_channels=48)
    assert family_of(ti2v).train_frames == 121
    motion, _ = tiny_model("animatediff", frames=2)
    assert motion.config.motion_max_seq_length == 32 and family_of(motion).train_frames == 16
    motion.register_to_config(motion_max_seq_length=8)
    assert family_of(motion).train_frames == 8
    assert long_video_api.training_frames(SimpleNamespace(), motion) == 8


def test_families_holds_the_derived_length_table():
    assert families.TRAIN_FRAMES["wan"] == 81 and families.TRAIN_FRAMES["animatediff"] == 16
