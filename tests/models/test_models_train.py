"""Training: a run stopped and resumed from its training state continues exactly as an uninterrupted one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from attnplug.models.train import train
from attnplug.models.train_state import STATE_FILE


def _tiny_config(tmp_path):
    cfg = {
        "name": "tiny-video", "family": "video", "pipeline": "ShapesVideoPipeline",
        "denoiser_class": "WanTransformer3DModel",
        "denoiser": {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 3,
                     "out_channels": 3, "text_dim": 16, "freq_dim": 16, "ffn_dim": 32, "num_layers": 1,
                     "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                     "rope_max_seq_len": 32},
        "text_encoder": {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "max_position_embeddings": 8, "pad_token_id": 0,
                         "bos_token_id": 0, "eos_token_id": 0},
        "max_length": 8, "scheduler": {"num_train_timesteps": 1000, "shift": 1.0},
        "sample": {"height": 8, "width": 8, "num_frames": 3, "num_inference_steps": 2, "guidance_scale": 3.0},
        "data": {"radius": [0.1, 0.12], "speed": [0.05, 0.06], "path_frames": 6},
        "train": {"seed": 3, "steps": 5, "batch_size": 2, "lr": 1e-3, "warmup": 2, "ema_decay": 0.9,
                  "cond_dropout": 0.5, "checkpoint_every": 2, "log_every": 1, "motion_loss": 1.0},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _losses(out):
    record = json.loads((out / "loss.json").read_text())
    return dict(zip(record["step"], record["loss"]))


def test_resume_continues_exactly(tmp_path, one_thread):
    config = _tiny_config(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    log = train("tiny-video", out_dir=whole, config=config)
    assert log["steps"] == 5 and log["finished"]
    assert train("tiny-video", steps=3, out_dir=cut, config=config)["steps"] == 3  # between checkpoints (2, 4)
    resumed = train("tiny-video", out_dir=cut, config=config, resume=True)
    assert resumed["steps"] == 5 and resumed["resumed_at"] == 3 and resumed["finished"]
    a, b = _losses(whole), _losses(cut)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in (4, 5):  # the steps after the resume
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7)
    wa, wb = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-6)


def test_resume_without_state_starts_from_scratch(tmp_path, one_thread):
    config = _tiny_config(tmp_path)
    log = train("tiny-video", steps=2, out_dir=tmp_path / "fresh", config=config, resume=True)
    assert log["steps"] == 2 and log["resumed_at"] is None
    assert (tmp_path / "fresh" / STATE_FILE).is_file()


def test_state_from_another_config_is_refused(tmp_path, one_thread):
    config = _tiny_config(tmp_path)
    out = tmp_path / "run"
    train("tiny-video", steps=2, out_dir=out, config=config)
    cfg = json.loads(config.read_text())
    cfg["denoiser"]["ffn_dim"] = 48
    other = tmp_path / "other.json"
    other.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match the model config"):
        train("tiny-video", out_dir=out, config=other, resume=True)


def _with_train(config, **train_keys):
    cfg = json.loads(config.read_text())
    cfg["train"].update(train_keys)
    path = config.parent / f"config-{len(list(config.parent.glob('config-*.json')))}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_init_from_starts_from_another_models_weights(tmp_path, one_thread):
    """``train.init_from`` loads that folder's EMA weights before the first step and records its SHA-256: with a
    learning rate of 0 the run's weights are the source's exactly; without it they are a fresh initialisation."""
    import hashlib

    config = _tiny_config(tmp_path)
    source = tmp_path / "source"
    train("tiny-video", steps=2, out_dir=source, config=config)
    frozen = _with_train(config, init_from=str(source), lr=0.0, ema_decay=0.0)
    log = train("tiny-video", steps=2, out_dir=tmp_path / "tuned", config=frozen)
    digest = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    assert log["init_from"] == {"name": "source", "sha256": digest, "steps": 2}
    a, b = load_file(str(source / "model.safetensors")), load_file(str(tmp_path / "tuned" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = train("tiny-video", steps=2, out_dir=tmp_path / "fresh", config=_with_train(config, lr=0.0, seed=9))
    c = load_file(str(tmp_path / "fresh" / "model.safetensors"))
    assert "init_from" not in fresh and not all(torch.equal(a[k], c[k]) for k in a)


def test_sigma_shift_moves_noise_levels_up():
    """``sigma_shift`` maps uniform levels through ``s u / (1 + (s - 1) u)``: endpoints fixed, more mass near 1."""
    from attnplug.models.train import _shift

    u = torch.linspace(0, 1, 101)
    assert torch.equal(_shift(u, 1.0), u)
    shifted = _shift(u, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and torch.all(shifted[1:-1] > u[1:-1])
    assert float((shifted > 0.9).float().mean()) > 2 * float((u > 0.9).float().mean())


def test_direction_separation_penalises_only_collapsed_directions():
    """The hinge is positive when the text encoder maps two directions of a prompt to the same output, zero when
    they are further apart than the margin, and ignores prompts without a direction (dropped prompts)."""
    from attnplug.models.data import WORDS
    from attnplug.models.text import build_vocab, make_tokenizer
    from attnplug.models.train import _direction_separation

    tokenizer = make_tokenizer(build_vocab(WORDS), 8)
    cfg = {"max_length": 8}
    prompts = ["red circle moving left", "", "blue square moving up"]

    class Encoder(torch.nn.Module):
        def __init__(self, gain):
            super().__init__()
            self.gain = gain

        def forward(self, ids):
            out = torch.nn.functional.one_hot(ids, 32).float() * self.gain
            return type("Out", (), {"last_hidden_state": out})()

    from attnplug.models.text import encode

    ids = encode(tokenizer, prompts, 8)
    collapsed = Encoder(0.0)
    assert float(_direction_separation(collapsed, tokenizer, cfg, prompts, collapsed(ids).last_hidden_state, 0,
                                       0.5)) == pytest.approx(0.5)
    apart = Encoder(10.0)
    assert float(_direction_separation(apart, tokenizer, cfg, prompts, apart(ids).last_hidden_state, 1, 0.5)) == 0
    assert float(_direction_separation(apart, tokenizer, cfg, [""], apart(ids[1:2]).last_hidden_state, 0, 0.5)) == 0


def test_samples_only_redraws_the_loss_curve_from_the_record(tmp_path, one_thread):
    from attnplug.models.train import main

    config, out = _tiny_config(tmp_path), tmp_path / "run"
    train("tiny-video", out_dir=out, config=config)
    (out / "loss.png").unlink()
    weights = (out / "model.safetensors").read_bytes()
    main(["tiny-video", "--out-dir", str(out), "--config", str(config), "--samples-only"])
    assert (out / "loss.png").stat().st_size > 0
    assert (out / "model.safetensors").read_bytes() == weights  # no training step ran
