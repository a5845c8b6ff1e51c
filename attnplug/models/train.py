"""Train one embedded model on synthetic shape data: ``python -m attnplug.models.train <name>``.

Rectified-flow objective (``x_t = (1 - s) x0 + s noise``, target ``noise - x0``, timestep ``1000 s``), matching
diffusers' ``FlowMatchEulerDiscreteScheduler`` used for sampling. The tiny CLIP text encoder is trained jointly; 10%
of prompts are dropped to ``""`` so classifier-free guidance works. Everything is seeded from ``config["train"]``;
the run writes EMA weights to ``<model dir>/model.safetensors`` and the whole training state to
``train_state.safetensors`` every ``checkpoint_every`` steps (so a cut-off run leaves usable weights, and ``--resume``
continues it exactly), the loss curve to ``loss.json`` / ``loss.png`` and a sample grid to ``samples.png``.

``--minutes`` caps the wall time (the step count reached is recorded in ``train_log.json``; rerunning with
``--steps`` equal to that count and no time cap reproduces the run, up to floating-point thread nondeterminism).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

from . import data
from .build import build_denoiser, build_text_encoder, denoiser_forward, read_config
from .text import build_vocab, encode, make_tokenizer
from .train_state import STATE_FILE, load_state, save_state

logger = logging.getLogger(__name__)
MODELS_DIR = Path(__file__).resolve().parent


def _batch(cfg: dict, batch: int, gen: torch.Generator,
           motion: data.MotionSpec | None = None) -> tuple[torch.Tensor, list[str]]:
    sample = cfg["sample"]
    if cfg["family"] == "video":
        return data.sample_videos(batch, sample["height"], sample["num_frames"], gen, motion)
    return data.sample_images(batch, sample["height"], gen)


def _shift(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Noise levels ``shift * u / (1 + (shift - 1) * u)`` for uniform ``u`` (SD3's timestep shift; 1 = uniform): a
    shift above 1 trains more at high noise, where a video's motion direction is decided from the prompt alone."""
    return u if shift == 1 else shift * u / (1 + (shift - 1) * u)


def _direction_separation(text_encoder, tokenizer, cfg: dict, prompts: list[str], text: torch.Tensor, step: int,
                          margin: float) -> torch.Tensor:
    """Hinge ``mean(relu(margin - rms(E(p) - E(p'))))`` over the video prompts ``p`` of the batch, ``p'`` the same
    prompt with another direction (turned by ``1 + step % 3`` places, no random draw) and ``E`` the text encoder's
    ``(B, L, C)`` output ``text``: keeps the direction words apart in the text encoding, which joint training
    otherwise collapses (``docs/models.md``)."""
    names = list(data.DIRECTIONS)
    rows, others = [], []
    for i, p in enumerate(prompts):
        words = p.split()
        if len(words) == 4 and words[-1] in names:
            turned = names[(names.index(words[-1]) + 1 + step % 3) % len(names)]
            rows.append(i)
            others.append(" ".join([*words[:-1], turned]))
    if not rows:
        return text.new_zeros(())
    other = text_encoder(encode(tokenizer, others, cfg["max_length"])).last_hidden_state
    rms = (text[rows] - other).pow(2).mean(dim=(1, 2)).sqrt()
    return torch.relu(margin - rms).mean()


def _init_from(source: str, models: dict, emas: dict) -> dict:
    """Load the EMA weights of model ``source`` (a folder under ``attnplug/models`` or a path) into ``models`` and
    ``emas`` (same architecture required); returns what the training log records: name, sha256, steps."""
    import hashlib

    from .loader import load_weights

    folder = Path(source) if Path(source).is_dir() else MODELS_DIR / source
    weights = folder / "model.safetensors"
    load_weights(weights, models)
    for key, module in models.items():
        emas[key].load_state_dict(module.state_dict())
    steps = json.loads((folder / "train_log.json").read_text()).get("steps") if (folder / "train_log.json").is_file() \
        else None
    return {"name": folder.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "steps": steps}


def save_weights(path: Path, text_encoder: torch.nn.Module, denoiser: torch.nn.Module, metadata: dict) -> None:
    """Write ``text_encoder.*`` and ``denoiser.*`` tensors to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for prefix, module in (("text_encoder.", text_encoder), ("denoiser.", denoiser)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().to(torch.float32).clone().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    tmp.replace(path)


def loss_title(name: str, steps: int, batch: int | None) -> str:
    """The title of a run's ``loss.png``: its name, steps and (when known) batch size."""
    return f"{name}: {steps} steps" + ("" if batch is None else f", batch {batch}")


def plot_loss(losses: list[tuple[int, float]], path: Path, title: str) -> None:
    """Save the loss curve (step, loss) as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.6), dpi=80)
    ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _video_loss(pred: torch.Tensor, target: torch.Tensor, motion_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective, velocity MSE)``. The objective adds ``motion_weight`` x the MSE of the frame differences of
    ``(B, C, F, H, W)`` predictions: it weights temporal change (where the prompted direction shows) more than the
    static content, without changing the minimiser."""
    mse = torch.nn.functional.mse_loss(pred, target)
    if motion_weight == 0 or pred.dim() != 5 or pred.shape[2] < 2:
        return mse, mse
    diff = torch.nn.functional.mse_loss(pred.diff(dim=2), target.diff(dim=2))
    return mse + motion_weight * diff, mse


def train(name: str, steps: int | None = None, minutes: float | None = None, out_dir: Path | None = None,
          resume: bool = False, config: Path | None = None) -> dict:
    """Train model ``name`` (a folder under ``attnplug/models``) and return its training log.

    ``resume`` continues from the last checkpoint: with a training state (:data:`~.train_state.STATE_FILE`, written
    with every checkpoint) exactly where it stopped (weights, EMA, optimizer, step, generators), ``steps`` being the
    total to reach; with only saved weights (older runs) from the EMA weights with a fresh optimizer and a short
    warm-up, ``steps`` then counting the new steps; with neither, from scratch.
    ``config`` reads another ``config.json`` than the model folder's (for experiments into ``out_dir``).
    """
    model_dir = MODELS_DIR / name
    config_path = Path(config) if config is not None else model_dir / "config.json"
    cfg = read_config(config_path)
    out_dir = Path(out_dir) if out_dir is not None else model_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != config_path.parent.resolve():
        (out_dir / "config.json").write_text(config_path.read_text())
    tcfg = cfg["train"]
    steps = int(steps if steps is not None else tcfg["steps"])
    seed = int(tcfg["seed"])
    log_every = int(tcfg.get("log_every", 25))
    motion_weight = float(tcfg.get("motion_loss", 0.0))
    sigma_shift = float(tcfg.get("sigma_shift", 1.0))
    direction_margin = float(tcfg.get("direction_margin", 0.0))
    motion = data.MotionSpec.from_config(cfg.get("data"))

    torch.manual_seed(seed)
    vocab = build_vocab(data.WORDS)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    tokenizer = make_tokenizer(vocab, cfg["max_length"])
    text_encoder = build_text_encoder(cfg)
    denoiser = build_denoiser(cfg)
    params = list(text_encoder.parameters()) + list(denoiser.parameters())
    ema_te, ema_dn = build_text_encoder(cfg), build_denoiser(cfg)
    ema_te.load_state_dict(text_encoder.state_dict())
    ema_dn.load_state_dict(denoiser.state_dict())
    ema_params = list(ema_te.parameters()) + list(ema_dn.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in params)
    logger.info("%s: %d parameters (%d denoiser)", name, n_params, sum(p.numel() for p in denoiser.parameters()))

    opt = torch.optim.AdamW(params, lr=tcfg["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    data_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    models = {"text_encoder": text_encoder, "denoiser": denoiser}
    emas = {"text_encoder": ema_te, "denoiser": ema_dn}
    generators = {"data": data_gen, "noise": noise_gen}
    batch = int(tcfg["batch_size"])
    losses: list[tuple[int, float]] = []
    running, count = 0.0, 0
    start = time.time()
    step = 0
    origin = 0  # the step the warm-up and the EMA ramp count from
    warmup = tcfg["warmup"]
    log = {}
    previous_seconds = 0.0
    state_path = out_dir / STATE_FILE
    previous_init = None
    if resume and (out_dir / "train_log.json").is_file():
        previous_init = json.loads((out_dir / "train_log.json").read_text()).get("init_from")
    if resume and state_path.is_file():
        scalars = load_state(state_path, models=models, ema=emas, optimizer=opt, generators=generators)
        step, previous_seconds = int(scalars["step"]), float(scalars["wall_seconds"])
        losses = [tuple(x) for x in scalars["losses"]]
        running, count = float(scalars["running"]), int(scalars["count"])
        logger.info("resuming %s at step %d from %s", name, step, state_path)
    elif resume and (out_dir / "model.safetensors").is_file():
        from .loader import load_weights

        load_weights(out_dir / "model.safetensors", models)
        ema_te.load_state_dict(text_encoder.state_dict())
        ema_dn.load_state_dict(denoiser.state_dict())
        old = json.loads((out_dir / "loss.json").read_text())
        losses = list(zip(old["step"], old["loss"]))
        prev_log = json.loads((out_dir / "train_log.json").read_text())
        step = origin = int(prev_log["steps"])
        previous_seconds = float(prev_log["wall_seconds"])
        steps += step
        warmup = min(warmup, 25)  # Adam restarts: short warm-up
        data_gen.manual_seed(seed + 1 + step)
        noise_gen.manual_seed(seed + 2 + step)
        logger.info("resuming %s at step %d from its weights (no training state: fresh optimizer)", name, step)
    elif resume and not tcfg.get("init_from"):
        logger.info("no checkpoint of %s in %s: starting from scratch", name, out_dir)
    init = None
    if step == 0 and tcfg.get("init_from"):
        init = _init_from(tcfg["init_from"], models, emas)
        warmup = min(warmup, 50)
        logger.info("%s starts from the weights of %s (sha256 %s)", name, init["name"], init["sha256"][:12])
    first_step = step

    def checkpoint(final: bool) -> None:
        nonlocal log
        wall = round(previous_seconds + time.time() - start, 1)
        log = {
            "name": name, "seed": seed, "steps": step, "batch_size": batch, "lr": tcfg["lr"],
            "parameters": n_params, "wall_seconds": wall,
            "resumed_at": first_step or None,
            "final_loss": losses[-1][1] if losses else None, "finished": final and step >= steps,
            "torch_threads": torch.get_num_threads(),
        }
        if init is not None or previous_init is not None:
            log["init_from"] = init or previous_init
        save_weights(out_dir / "model.safetensors", ema_te, ema_dn, {"steps": step, "seed": seed, "name": name})
        save_state(state_path, models=models, ema=emas, optimizer=opt, generators=generators, scalars={
            "step": step, "wall_seconds": wall, "losses": losses, "running": running, "count": count})
        (out_dir / "loss.json").write_text(json.dumps({"step": [s for s, _ in losses],
                                                       "loss": [v for _, v in losses]}) + "\n")
        (out_dir / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")

    text_encoder.train()
    denoiser.train()
    while step < steps:
        if minutes is not None and time.time() - start > minutes * 60:
            logger.info("time budget of %.1f min reached at step %d", minutes, step)
            break
        x0, prompts = _batch(cfg, batch, data_gen, motion)
        drop = torch.rand(batch, generator=data_gen) < tcfg["cond_dropout"]
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        ids = encode(tokenizer, prompts, cfg["max_length"])
        sigma = _shift(torch.rand(batch, generator=noise_gen), sigma_shift)
        noise = torch.randn(x0.shape, generator=noise_gen)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        xt = (1 - s) * x0 + s * noise
        text = text_encoder(ids).last_hidden_state
        pred = denoiser_forward(denoiser, cfg["family"], xt, sigma * 1000, text)
        objective, loss = _video_loss(pred.float(), noise - x0, motion_weight)
        if direction_margin > 0:
            objective = objective + _direction_separation(text_encoder, tokenizer, cfg, prompts, text, step,
                                                          direction_margin)
        lr = tcfg["lr"] * min(1.0, (step - origin + 1) / warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(tcfg["ema_decay"], (1 + step - origin) / (10 + step - origin))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        step += 1
        running += loss.item()
        count += 1
        if step % log_every == 0:
            losses.append((step, running / count))
            logger.info("%s step %d loss %.4f lr %.2e %.1fs", name, step, running / count, lr, time.time() - start)
            running, count = 0.0, 0
            if not math.isfinite(losses[-1][1]):
                raise RuntimeError(f"{name}: loss is not finite at step {step}.")
        if step % tcfg["checkpoint_every"] == 0:
            checkpoint(final=False)
    checkpoint(final=True)
    plot_loss(losses, out_dir / "loss.png", loss_title(name, step, batch))
    return log


def redraw_loss(folder: Path, name: str, config: Path) -> None:
    """Redraw ``folder/loss.png`` from the run's ``loss.json`` (steps from ``train_log.json``, else the last recorded
    step; the batch size from ``config`` when it exists), with the title :func:`train` gives it."""
    record = json.loads((folder / "loss.json").read_text())
    log = folder / "train_log.json"
    steps = json.loads(log.read_text())["steps"] if log.is_file() else record["step"][-1]
    batch = read_config(config)["train"]["batch_size"] if config.is_file() else None
    plot_loss(list(zip(record["step"], record["loss"])), folder / "loss.png", loss_title(name, steps, batch))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="model folder under attnplug/models, e.g. shapes-unet")
    parser.add_argument("--steps", type=int, default=None, help="override config train.steps")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out-dir", type=Path, default=None, help="write here instead of the package folder")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint (training state, else the saved weights)")
    parser.add_argument("--config", type=Path, default=None, help="read this config.json instead (experiments)")
    parser.add_argument("--samples-only", action="store_true", help="only redraw samples.png and loss.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    folder = Path(args.out_dir or MODELS_DIR / args.name)
    if not args.samples_only:
        train(args.name, steps=args.steps, minutes=args.minutes, out_dir=args.out_dir, resume=args.resume,
              config=args.config)
    elif (folder / "loss.json").is_file():
        redraw_loss(folder, args.name, Path(args.config or folder / "config.json"))
    try:
        from .grid import save_sample_grid

        save_sample_grid(args.out_dir or args.name, folder / "samples.png")
    except Exception:  # the weights are already saved; a failed grid must not lose the run
        logger.exception("could not draw the sample grid for %s", args.name)


if __name__ == "__main__":
    main()
