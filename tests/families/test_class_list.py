"""The denoiser class list is computed from the installed diffusers, by a rule, not typed."""

import pytest

from attnplug.testing_families import denoiser_classes, excluded_classes, out_of_scope, tiny


def test_flagship_classes_are_listed_and_non_denoisers_are_not():
    names = {cls.__name__ for cls in denoiser_classes()}
    for name in ("FluxTransformer2DModel", "WanTransformer3DModel", "UNet2DConditionModel", "SD3Transformer2DModel"):
        assert name in names
    excluded = excluded_classes()
    assert excluded.get("UNet1DModel") == "1-D model"
    assert excluded.get("PriorTransformer") == "prior (embedding) model"
    assert excluded.get("MotionAdapter", "").startswith("adapter")
    assert excluded.get("StableAudioDiTModel") == "audio model"
    assert not names & set(excluded)


def test_every_listed_class_is_a_modelmixin_defined_in_the_model_packages():
    from diffusers.models.modeling_utils import ModelMixin

    classes = denoiser_classes()
    assert len(classes) >= 11
    for cls in classes:
        assert issubclass(cls, ModelMixin)
        assert cls.__module__.startswith(("diffusers.models.transformers.", "diffusers.models.unets."))
        assert out_of_scope(cls) is None


def test_tiny_sets_layer_counts_from_the_signature_and_rejects_unknown_arguments():
    import diffusers

    model = tiny(diffusers.PixArtTransformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                 out_channels=4, cross_attention_dim=16, caption_channels=8, sample_size=8, norm_num_groups=4)
    assert len(model.transformer_blocks) == 1  # num_layers from the signature, set to 1
    with pytest.raises(TypeError, match="PixArtTransformer2DModel.__init__ takes no not_an_argument"):
        tiny(diffusers.PixArtTransformer2DModel, not_an_argument=1)
