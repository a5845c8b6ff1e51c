"""Every image/video denoiser class of the installed diffusers: Dense through attnplug equals stock within 1e-5 and
remove() is bit-identical; each method's defaults run on the self-attention calls, hand them back with a stated
reason, or are refused with a message naming the class; the calls a method computed equal the method's own
reference on the captured q/k/v; a class without a family row is refused at apply."""


import pytest
import torch

import attnplug
from attnplug.families import family_of, training_grid
from attnplug.testing_families import denoiser_classes, has_builder, tiny_denoiser
from attnplug.testing_matrix import DENSE_TOL, METHODS, class_keys, run_class
from attnplug.testing_reference import CAPTURES, TOLERANCES, CallRecorder, check_calls

# Hand-back reasons that are the method's documented behaviour on a tiny grid, not a silent failure.
EXPECTED_STOCK = {
    "window-covers-grid", "freeswim-full-branch", "level-above-max-level", "temporal-only-layout",
    "mask-unsupported", "mask-not-key-padding", "attention-mask",
}
# Temporal attention, or a config without a training size, has no training grid: FreeSwim hands it back.
UNKNOWN_TRAIN_GRID = {"train-grid-unknown"}
# Many attention calls per forward on CPU: in the slow run.
SLOW = {"UNetMotionModel", "UNet2DConditionModel", "WanVACETransformer3DModel"}
# Rows that are supported (dense exact, neighbourhood and window or sparse video running) and must stay so.
SUPPORTED = {
    "AllegroTransformer3DModel", "AnyFlowTransformer3DModel", "AuraFlowTransformer2DModel",
    "BriaFiboTransformer2DModel", "BriaTransformer2DModel", "ChromaTransformer2DModel",
    "ChronoEditTransformer3DModel", "CogVideoXTransformer3DModel", "CogView3PlusTransformer2DModel",
    "CogView4Transformer2DModel", "ConsisIDTransformer3DModel", "CosmosTransformer3DModel", "DiTTransformer2DModel",
    "EasyAnimateTransformer3DModel", "ErnieImageTransformer2DModel",
    "Flux2Transformer2DModel", "Flux3Transformer2DModel", "FluxTransformer2DModel", "GlmImageTransformer2DModel",
    "HiDreamImageTransformer2DModel", "HunyuanDiT2DModel", "HunyuanImageTransformer2DModel",
    "HunyuanVideo15Transformer3DModel", "HunyuanVideoTransformer3DModel", "I2VGenXLUNet",
    "JoyImageEditPlusTransformer3DModel",
    "JoyImageEditTransformer3DModel", "Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel",
    "Krea2Transformer2DModel", "LTX2VideoTransformer3DModel", "LTXVideoTransformer3DModel",
    "LatteTransformer3DModel", "LongCatImageTransformer2DModel", "Lumina2Transformer2DModel", "LuminaNextDiT2DModel",
    "MotifVideoTransformer3DModel", "OvisImageTransformer2DModel", "PixArtTransformer2DModel",
    "QwenImageTransformer2DModel", "SD3Transformer2DModel", "SkyReelsV2Transformer3DModel", "Transformer2DModel",
    "UNet2DConditionModel", "UNet2DModel", "UNet3DConditionModel", "UNetMotionModel",
    "UNetSpatioTemporalConditionModel", "UVit2DModel", "WanAnimateTransformer3DModel", "WanTransformer3DModel",
    "WanVACETransformer3DModel", "ZImageTransformer2DModel", "Kandinsky6Transformer3DModel[i2v]",
    "WanTransformer3DModel[i2v]", "WanTransformer3DModel[ti2v]", "WanTransformer3DModel[wan21-i2v]",
}
KEYS = class_keys()
BUILT = [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in KEYS if has_builder(k)]
UNBUILT = [k for k in KEYS if not has_builder(k)]


@pytest.mark.parametrize("key", BUILT)
def test_class_runs_or_is_refused(key):
    result = run_class(key)
    cls_name = key.split("[")[0]
    if result.dense.status == "refused":
        assert cls_name in result.dense.detail, result.dense.detail
        return
    assert result.dense.status == "runs", result.dense.detail
    assert key not in SUPPORTED or result.supported, f"{key} is no longer supported: {result.methods}"
    model, _ = tiny_denoiser(key)
    no_grid = family_of(model).temporal_modules or training_grid(model) is None
    expected = EXPECTED_STOCK | (UNKNOWN_TRAIN_GRID if no_grid else set())
    for name in METHODS:
        outcome = result.methods[name]
        assert outcome.status in ("runs", "stock", "refused"), f"{name}: {outcome.detail}"
        if outcome.status == "runs":  # its captured calls equal its own reference within the stated tolerance
            checked = int(outcome.reference.split(" calls within")[0]) if " calls within" in outcome.reference else 0
            assert 1 <= checked <= CAPTURES, f"{name}: {outcome.reference!r}"
        if "stock: " in outcome.detail:
            reasons = {part.split(" (")[0] for part in outcome.detail.split("stock: ")[1].split(", ")}
            assert reasons <= expected, f"{name}: {outcome.detail}"


@pytest.mark.parametrize("key", UNBUILT)
def test_class_without_a_row_is_refused_at_apply_naming_it(key):
    cls = next(c for c in denoiser_classes() if c.__name__ == key)
    bare = torch.nn.Module.__new__(cls)  # never built: the refusal reads only the class
    torch.nn.Module.__init__(bare)
    with pytest.raises(TypeError, match=key):
        attnplug.apply(bare)


def test_dense_tolerance_is_the_acceptance_one():
    assert DENSE_TOL == 1e-5


def test_the_dreamlite_transformer_is_refused_as_a_sub_block_of_the_refused_unet():
    model, _ = tiny_denoiser("DreamLiteTransformer2DModel")
    with pytest.raises(TypeError, match=r"DreamLiteTransformer2DModel: it is a sub-block of DreamLiteUNetModel"):
        attnplug.apply(model)


def test_every_method_has_a_stated_tolerance_within_fp32_accuracy():
    assert set(TOLERANCES) == set(METHODS)
    assert all(atol <= 1e-4 and rtol <= 1e-4 for atol, rtol in TOLERANCES.values())


@pytest.mark.parametrize("name", METHODS)
def test_a_call_that_is_not_the_method_fails_the_reference_check(name):
    """Dense attention passed off as each method's output (on a grid where each method restricts something) is
    caught: the reference check can fail."""
    from attnplug.config import config_from_options
    from attnplug.layout import TokenLayout
    from attnplug.methods.base import CallInfo
    from attnplug.testing_reference import Captured

    torch.manual_seed(0)
    layout = TokenLayout(2, 14, 14, text_tokens=3)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 16) for _ in range(3))
    options = {"freeswim": {"train_grid": (4, 4)}}.get(name, {})
    recorder = CallRecorder(config_from_options(name, options).build())
    info = CallInfo(step=0, scale=0.25)
    out = recorder(q, k, v, layout, None, info)
    assert out is not None
    ok, text = check_calls(name, recorder)
    assert ok, text
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
    recorder.calls = [Captured(q, k, v, layout, None, info, dense)]
    ok, text = check_calls(name, recorder)
    assert not ok and "differs from its reference" in text


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 2, 3)])
@pytest.mark.parametrize("text_first", [False, True])
def test_the_vectorised_window_mask_is_the_brute_force_reference(shift, text_first):
    from attnplug.kernels.window import window_mask_reference
    from attnplug.layout import TokenLayout
    from attnplug.testing_reference import window_mask

    layout = TokenLayout(2, 5, 7, text_tokens=3, text_first=text_first)
    assert torch.equal(window_mask(layout, (2, 2, 4), shift), window_mask_reference(layout, (2, 2, 4), shift))
