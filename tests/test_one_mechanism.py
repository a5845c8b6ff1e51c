"""One of each mechanism: one step tracker, one denoiser discovery, one hook-registry helper, one bounded cache; and
``remove`` after hi-res, long video and RIFLEx leaves no hook registry and no instance ``forward`` on any module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import attnplug
from attnplug import _cache, _hook_registry, _logging, _steps
from attnplug.testing import tiny_model, tiny_pipeline

PACKAGE = Path(attnplug.__file__).parent
# the parts of the package that hook modules, track steps or find denoisers
MECHANISM_USERS = ["plugin", "pipelines", "methods", "layout.py"]


def _sources(parts=MECHANISM_USERS):
    for part in parts:
        path = PACKAGE / part
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def _calls(path: Path) -> set[str]:
    """Attribute and function names called in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_the_old_trackers_discoveries_and_registry_helpers_are_gone():
    from attnplug.layout import LayoutState
    from attnplug.methods.freeswim import FreeSwimMethod
    from attnplug.pipelines._hires import raunet

    assert not hasattr(LayoutState, "observe_timestep") and not hasattr(LayoutState, "set_context")
    assert not hasattr(FreeSwimMethod, "_begin_call")
    assert not hasattr(raunet, "_StepHook") and not hasattr(raunet.RAUState, "observe")
    for name in ("resolve_denoiser", "unregister_hook", "release_registry", "_num_steps_fn"):
        assert not hasattr(attnplug.plugin, name), name


def test_one_step_tracker():
    from attnplug.layout import LayoutState
    from attnplug.pipelines._hires.raunet import RAUState

    assert isinstance(LayoutState(attnplug.families.FAMILIES["PixArtTransformer2DModel"]).steps,
                      _steps.DenoisingSteps)
    assert isinstance(RAUState(((2, 2),), (0.5,)).steps, _steps.DenoisingSteps)
    timestep_readers = {p.relative_to(PACKAGE).as_posix() for p in _sources() if "item" in _calls(p)
                        and "timestep" in p.read_text()}
    assert not timestep_readers, f"read the timestep with attnplug._steps.timestep_of: {timestep_readers}"


def test_freeswim_reads_the_plugins_tracker():
    """FreeSwim's dual-path hook follows the very tracker the plugin's runtime keeps: the timestep is read once."""
    model, inputs = tiny_model("pixart", height=32, width=32)
    with attnplug.applied(model, attnplug.FreeSwimConfig(train_grid=(4, 4))):
        hook = model._diffusers_hook.get_hook("attnplug.method")
        runtime = model.__dict__["_attnplug"].runtime
        assert hook.steps is runtime.state.steps
        with torch.no_grad():
            model(**inputs)
            model(**inputs)  # the same timestep: a second guidance pass of step 0
        assert (hook.steps.step, hook.steps.pass_index) == (0, 1)


def test_one_steps_count_of_a_scheduler():
    class Scheduler:
        num_inference_steps = None
        timesteps = torch.tensor([900, 600, 600, 300, 300])  # a second-order scheduler repeats timesteps

    class Pipe:
        scheduler = Scheduler()

    assert _steps.scheduler_steps(Pipe())() == 3
    sources = [p for p in _sources() if "unique_consecutive" in p.read_text() or "len(set(" in p.read_text()]
    assert not sources, sources


def test_one_denoiser_discovery():
    from attnplug.pipelines import _hires
    from attnplug.pipelines._long_video import api as _long_video_api

    assert _hires.family.resolve_denoisers is attnplug.plugin.resolve_denoisers
    assert _long_video_api.resolve_denoisers is attnplug.plugin.resolve_denoisers
    finders = [p.relative_to(PACKAGE).as_posix() for p in _sources()
               if {"transformer_2", "unet_2"} & _string_constants(p)]
    assert finders == ["plugin/denoisers.py"], finders
    # nothing else looks a denoiser up by its component name (the UI, the reports and loading use loading.denoisers_of)
    lookups = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("testing", "models/")) or rel == "plugin/denoisers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in ("unet", "transformer", "transformer_2", "unet_2")):
                lookups.append(f"{rel}:{node.lineno}")
    assert lookups == [], lookups


def test_loading_finds_every_expert_of_a_two_expert_pipeline():
    from types import SimpleNamespace

    from attnplug.loading import denoiser_of, denoisers_of

    pipe = SimpleNamespace(transformer=tiny_model("wan")[0], transformer_2=tiny_model("wan")[0],
                           vae=torch.nn.Linear(1, 1))
    assert [id(m) for m in denoisers_of(pipe)] == [id(pipe.transformer), id(pipe.transformer_2)]
    assert denoiser_of(pipe) is pipe.transformer
    assert denoisers_of(object()) == [] and denoiser_of(object()) is None


def test_one_hook_registry_helper():
    users = {p.relative_to(PACKAGE).as_posix() for p in _sources()
             if {"check_if_exists_or_initialize", "remove_hook"} & _calls(p)}
    assert not users, f"register and remove hooks through attnplug._hook_registry: {users}"
    from attnplug.pipelines._hires import raunet
    from attnplug.pipelines._long_video import rope as _long_video_rope

    assert raunet.register_hook is _hook_registry.register_hook
    assert _long_video_rope.register_hook is _hook_registry.register_hook


def test_one_bounded_cache():
    from attnplug.kernels._cache import BoundedCache
    from attnplug.layout import LayoutState
    from attnplug.methods.freeswim import FreeSwimMethod

    assert BoundedCache is _cache.BoundedCache
    assert isinstance(_logging._seen, _cache.BoundedCache)
    assert isinstance(FreeSwimMethod()._windows, _cache.BoundedCache)
    assert isinstance(LayoutState(attnplug.families.FAMILIES["FluxTransformer2DModel"])._value_grids,
                      _cache.BoundedCache)
    users = [p.relative_to(PACKAGE).as_posix() for p in _sources() if "lru_cache" in p.read_text()]
    assert not users, users


def test_bounded_cache_keeps_the_newest_and_says_what_is_new():
    cache = _cache.BoundedCache(2)
    assert cache.add("a") and not cache.add("a")
    assert cache.get_or_build("b", lambda: 2) == 2 and cache.get_or_build("b", lambda: 3) == 2
    cache.add("c")
    assert "a" not in cache and len(cache) == 2 and cache.get("c") is True


def _left_behind(model: torch.nn.Module) -> list[str]:
    """Modules of ``model`` with a hook registry or an instance ``forward``. The root may keep the empty registry
    diffusers' ``cache_context`` creates (the pipeline's own, not attnplug's)."""
    out = []
    for name, module in model.named_modules():
        reg = module.__dict__.get("_diffusers_hook")
        if reg is not None and (reg.hooks or module is not model) or "forward" in module.__dict__:
            out.append(name or "<root>")
    return out


def test_the_registry_helper_leaves_the_module_as_it_was():
    from diffusers.hooks import ModelHook

    module = torch.nn.Linear(2, 2)
    _hook_registry.register_hook(module, ModelHook(), "a")
    assert "forward" in module.__dict__ and "_diffusers_hook" in module.__dict__
    _hook_registry.unregister_hook(module, "a")
    assert _left_behind(module) == []


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pipe = tiny_pipeline("sd", str(tmp_path_factory.mktemp("sd")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_hires_leaves_nothing_behind(sd):
    from attnplug.pipelines import HiResConfig, hires
    from attnplug.pipelines._hires.family import detect_family

    h, w = detect_family(sd).train_size
    config = HiResConfig(method="hidiffusion", progress=False)
    hires(sd, "red circle", height=2 * h, width=2 * w, config=config, num_inference_steps=2, output_type="np")
    assert attnplug.method_of(sd) is None
    assert _left_behind(sd.unet) == []


def test_long_video_and_riflex_leave_nothing_behind(tmp_path):
    from attnplug.pipelines import LongVideoConfig, long_video
    from attnplug.pipelines._long_video.rope import apply_riflex, remove_riflex

    pipe = tiny_pipeline("wan", str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    apply_riflex(pipe.transformer, 2, 8)  # 8 frames exceed the intrinsic period (2 pi): RIFLEx hooks RoPE
    assert _left_behind(pipe.transformer) != []
    remove_riflex(pipe.transformer)
    assert _left_behind(pipe.transformer) == []
    config = LongVideoConfig(train_frames=5, rope="riflex", temporal_windows=True, window_frames=5, stride_frames=1,
                             global_steps=0)
    long_video(pipe, "red circle", num_frames=17, height=16, width=16, num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0), config=config)
    assert attnplug.method_of(pipe) is None
    assert _left_behind(pipe.transformer) == []
