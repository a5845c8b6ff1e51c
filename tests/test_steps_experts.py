"""The step of a denoising run is the pipeline's, shared by its experts: on a Wan 2.2 two-expert pipeline
(``transformer`` for the high-noise steps, ``transformer_2`` for the low-noise ones, split at ``boundary_ratio``) the
second expert's calls continue the first one's step count, with or without a ``step_index`` in the pipeline's
``CacheContext`` (diffusers 0.42's Wan 2.2 I2V gives none; its T2V gives one), so a schedule of the last steps runs on
``transformer_2``; each expert's method starts every run afresh, once per run; and ``remove`` leaves nothing."""

from __future__ import annotations

import types
from dataclasses import dataclass

import diffusers
import diffusers.pipelines.wan.pipeline_wan_i2v as wan_i2v_module
import pytest
import torch
from transformers import UMT5Config, UMT5EncoderModel

import attnplug
from attnplug._steps import DenoisingSteps
from attnplug.config import MethodConfig
from attnplug.methods.dense import DenseMethod
from attnplug.testing import tiny_model, tiny_tokenizer

STEPS = 4
Z = 4  # latent channels
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=32, ffn_dim=32,
            num_layers=1, rope_max_seq_len=32)


class StepRecorder(DenseMethod):
    """Dense attention that records the step of each self-attention call and counts its per-run resets."""

    uses_steps = True

    def __init__(self):
        super().__init__()
        self.steps: list[int] = []
        self.resets = 0

    def __call__(self, q, k, v, layout=None, mask=None, info=None):
        self.steps.append(info.step)
        return super().__call__(q, k, v, layout, mask, info)

    def reset(self) -> None:
        self.resets += 1


@dataclass(frozen=True)
class RecorderConfig(MethodConfig):
    """A config: each denoiser gets its own :class:`StepRecorder`."""

    def build(self) -> StepRecorder:
        return StepRecorder()


def _two_experts(kind: str, tmp_path, monkeypatch):
    """A tiny Wan 2.2 two-expert pipeline (``"i2v"``: WanImageToVideoPipeline, no ``step_index`` in its
    CacheContext; ``"t2v"``: WanPipeline, which gives one; ``"t2v-no-step-index"``: WanPipeline whose experts' contexts
    carry only the name, as before diffusers 0.42) and its call inputs."""
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=514, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=513, eos_token_id=513,
        decoder_start_token_id=513)).eval()
    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * Z,
                                     latents_std=[1.0] * Z).eval()
    common = dict(tokenizer=tiny_tokenizer(str(tmp_path)), text_encoder=text_encoder, vae=vae,
                  scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), boundary_ratio=0.9)
    inputs = dict(height=16, width=16, num_frames=5, num_inference_steps=STEPS, output_type="latent")
    if kind == "i2v":
        if not hasattr(wan_i2v_module, "ftfy"):  # the I2V pipeline cleans prompts with ftfy unguarded
            monkeypatch.setattr(wan_i2v_module, "ftfy", types.SimpleNamespace(fix_text=lambda s: s), raising=False)
        experts = [diffusers.WanTransformer3DModel(in_channels=2 * Z + 4, out_channels=Z, **_WAN).eval()
                   for _ in "ab"]
        pipe = diffusers.WanImageToVideoPipeline(transformer=experts[0], transformer_2=experts[1], **common)
        inputs["image"] = torch.rand(3, 16, 16)
    else:
        experts = [diffusers.WanTransformer3DModel(in_channels=Z, out_channels=Z, **_WAN).eval() for _ in "ab"]
        pipe = diffusers.WanPipeline(transformer=experts[0], transformer_2=experts[1], **common)
        if kind == "t2v-no-step-index":
            for model in experts:
                original = model.cache_context
                monkeypatch.setattr(model, "cache_context", lambda name, _original=original, **_: _original(name),
                                    raising=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, inputs


def _left_behind(model) -> list[str]:
    """Modules with a hook, an instance ``forward`` or a torch hook left (the empty registry that diffusers'
    ``cache_context`` puts on the denoiser is the pipeline's own)."""
    return [name or "<root>" for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
            or "forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks]


def _call_steps(pipe, inputs, runs: int) -> list[list[tuple[str, int, int | None]]]:
    """Per run, per denoiser call: (expert, step, number of steps) of the applied tracker after the call."""
    seen: list = []

    def record(name):
        def hook(model, args, output):
            steps = model.__dict__["_attnplug"].runtime.state.steps
            seen.append((name, steps.step, steps.num_steps))
        return hook

    handles = [model.register_forward_hook(record(name))
               for name, model in (("transformer", pipe.transformer), ("transformer_2", pipe.transformer_2))]
    out = []
    try:
        for seed in range(runs):
            seen.clear()
            pipe(prompt="red circle", generator=torch.Generator().manual_seed(seed), **inputs)
            out.append(list(seen))
    finally:
        for handle in handles:
            handle.remove()
    return out


@pytest.mark.parametrize("kind", ["i2v", "t2v", "t2v-no-step-index"])
def test_the_second_expert_continues_the_first_experts_steps(kind, tmp_path, monkeypatch):
    pipe, inputs = _two_experts(kind, tmp_path, monkeypatch)
    recorder = StepRecorder()
    attnplug.apply(pipe, recorder, schedule=attnplug.Schedule(warmup_steps=STEPS - 1))  # the last step only
    runs = _call_steps(pipe, inputs, runs=2)
    stats = [attnplug.stats(m)["self"]["method"] for m in (pipe.transformer, pipe.transformer_2)]
    attnplug.remove(pipe)
    for calls in runs:  # two guidance passes per step; transformer first, then transformer_2 to the end
        names = [name for name, _, _ in calls]
        assert names == sorted(names) and set(names) == {"transformer", "transformer_2"}, names
        assert [(step, n) for _, step, n in calls] == [(i, STEPS) for i in range(STEPS) for _ in range(2)]
    assert stats[0] == 0 and stats[1] > 0  # the last step is transformer_2's: the method ran there only
    assert set(recorder.steps) == {STEPS - 1}
    assert recorder.resets == 2  # the instance both experts share starts each run once
    for model in (pipe.transformer, pipe.transformer_2):
        assert attnplug.method_of(model) is None and _left_behind(model) == []


@pytest.mark.parametrize("kind", ["i2v", "t2v"])
def test_each_experts_method_starts_every_run(kind, tmp_path, monkeypatch):
    """Each expert's own method is reset once per pipeline run, also the expert that never sees step 0."""
    pipe, inputs = _two_experts(kind, tmp_path, monkeypatch)
    attnplug.apply(pipe, RecorderConfig(), schedule=attnplug.Schedule())
    recorders = [attnplug.method_of(m) for m in (pipe.transformer, pipe.transformer_2)]
    assert recorders[0] is not recorders[1]
    runtimes = [m.__dict__["_attnplug"].runtime for m in (pipe.transformer, pipe.transformer_2)]
    assert runtimes[0].state.steps is runtimes[1].state.steps  # one tracker for the pipeline
    for seed in range(3):
        pipe(prompt="red circle", generator=torch.Generator().manual_seed(seed), **inputs)
        assert [r.resets for r in recorders] == [seed + 1] * 2
        assert sorted(set(recorders[0].steps)) + sorted(set(recorders[1].steps)) == list(range(STEPS))
    attnplug.remove(pipe)
    for model in (pipe.transformer, pipe.transformer_2):
        assert _left_behind(model) == []


def test_bare_models_keep_their_own_tracker():
    """Apply on a bare model: the model follows its own tracker, as before (apply on each expert separately: each its
    own; only apply on the pipeline knows the experts take turns in one run)."""
    first, inputs = tiny_model("wan")
    second, _ = tiny_model("wan")
    attnplug.apply(first, StepRecorder(), schedule=attnplug.Schedule())
    attnplug.apply(second, StepRecorder(), schedule=attnplug.Schedule())
    try:
        a, b = (m.__dict__["_attnplug"].runtime.state.steps for m in (first, second))
        assert isinstance(a, DenoisingSteps) and a is not b and a.num_steps_fn is None
        with torch.no_grad():
            for t in (900.0, 900.0, 500.0):
                first(**{**inputs, "timestep": torch.tensor([t])})
        assert (a.step, a.run, b.step) == (1, 1, -1)
    finally:
        attnplug.remove(first)
        attnplug.remove(second)


def test_a_shared_tracker_counts_runs_and_claims_once_per_run():
    steps = DenoisingSteps()
    assert steps.observe(900.0) and steps.run == 1
    assert steps.claim("m") and not steps.claim("m") and steps.claim("other")
    assert not steps.observe(900.0) and not steps.observe(400.0) and steps.run == 1  # a pass, then the next step
    assert steps.observe(1000.0) and steps.run == 2 and steps.claim("m")  # a new run: claimed afresh
    assert not steps.set_context(1, 4, "cond") and steps.run == 2
    assert steps.set_context(0, 4, "cond") and steps.run == 3
    steps.reset()
    assert steps.run == 3 and steps.observe(300.0) and steps.run == 4
