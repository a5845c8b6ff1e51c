"""Speed of the ``long`` sparse video pattern at 4x the training length on Wan 2.1 1.3B's real architecture.

A ``WanTransformer3DModel`` with the published Wan 2.1 T2V 1.3B config (12 heads x 128, ffn 8960, text_dim 4096,
16 latent channels, patch (1, 2, 2), freq_dim 256, qk_norm rms_norm_across_heads, cross_attn_norm, eps 1e-6) with
random weights, 2 of its 30 blocks kept, runs one denoising step (one denoiser forward, 512 text tokens) on latents
``(1, 16, 84, 30, 52)``: the token grid ``(84, 15, 26)`` (32,760 tokens), 4x the training length of 21 latent frames
(81 video frames). Dense attention and ``SparseVideoConfig(pattern="long", train_latent_frames=21)`` (applied with
``attnplug.apply`` and an every-step ``Schedule()``) are timed alternately in one process, ``--warmup`` untimed
rounds first, then the medians of ``--rounds`` rounds (``apply`` / ``remove`` happen outside the stopwatch).
Reported: the speed-up of the step and of its self-attention, the share of the dense and sparse steps spent in
self-attention (the ``attn1`` modules: projections, norms, RoPE and the attention itself) and in cross-attention, the
pattern's density (token pairs, from the method's report) and the output's relative L2 distance to dense (random
weights give near-uniform attention: the distance says little about a trained model's).

    python benchmarks/longvideo_speed_bench.py            # full size (about 10 minutes a round on 2 CPU cores)
    python benchmarks/longvideo_speed_bench.py --quick    # (16, 4, 6) tokens at 4x a 4-frame training length
    python benchmarks/longvideo_speed_bench.py --device cuda   # bfloat16, Triton kernel

Writes ``benchmarks/results/long_video_speed.json`` (``--out`` to change; ``--quick`` writes
``long_video_speed_quick.json`` unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import attnplug
from attnplug.report import environment, write_json
from attnplug.report.timing import BreakdownTimer, median, synchronize

ROOT = Path(__file__).resolve().parent
#: Wan 2.1 T2V 1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json); 30 layers in the release.
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6,
    rope_max_seq_len=1024,
)
FULL = dict(latent_frames=84, latent_height=30, latent_width=52, train_latent_frames=21, text_tokens=512)
QUICK = dict(latent_frames=16, latent_height=8, latent_width=12, train_latent_frames=4, text_tokens=32)


def build_model(layers: int, device, dtype, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(num_layers=layers, **WAN_1_3B).to(device).eval()
    return model if dtype == torch.float32 else model.to(dtype)


def attention_groups(model) -> dict[str, list]:
    """The Wan blocks' self- (``attn1``) and cross-attention (``attn2``) modules, for :class:`BreakdownTimer`."""
    return {"self_attention": [b.attn1 for b in model.blocks], "cross_attention": [b.attn2 for b in model.blocks]}


def step_shares(timer: BreakdownTimer) -> dict:
    """The step's seconds and the share of it in each attention group."""
    step = timer.denoiser_s
    return {"step_s": step, **{f"{k}_share": v / step for k, v in timer.seconds.items() if k != "denoiser"}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small grid (seconds), for dry runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks kept (the release has 30)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each times dense and long once)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (0 saves time on the full run)")
    p.add_argument("--anchor-frames", type=int, default=2)
    p.add_argument("--window-frames", type=int, default=None,
                   help="the long pattern's window in latent frames (default: the training length, long_video's "
                        "default); a non-default window writes long_video_speed_w<N>.json")
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    rounds = args.rounds
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.window_frames is not None and args.window_frames < 1:
        p.error(f"--window-frames={args.window_frames}: give a positive number of latent frames")
    name = "long_video_speed_quick" if args.quick else "long_video_speed"
    name += "" if args.window_frames is None else f"_w{args.window_frames}"
    name += ".json"
    out_path = args.out or ROOT / "results" / name

    model = build_model(args.layers, device, dtype)
    gen = torch.Generator().manual_seed(1)
    shape = (1, 16, size["latent_frames"], size["latent_height"], size["latent_width"])
    latents = torch.randn(shape, generator=gen).to(device, dtype)
    text = torch.randn(1, size["text_tokens"], 4096, generator=gen).to(device, dtype)
    timestep = torch.tensor([500.0], device=device)
    grid = (size["latent_frames"], size["latent_height"] // 2, size["latent_width"] // 2)
    config = attnplug.SparseVideoConfig(pattern="long", train_latent_frames=size["train_latent_frames"],
                                        window_frames=args.window_frames, anchor_frames=args.anchor_frames,
                                        backend=args.backend)
    method = config.build()

    def forward():
        with torch.no_grad():
            return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

    def timed(sparse: bool) -> tuple[float, torch.Tensor, dict]:
        if sparse:
            attnplug.apply(model, method, schedule=attnplug.Schedule())
        try:
            with BreakdownTimer(model, device, groups=attention_groups(model)) as clock:
                synchronize(device)
                start = time.perf_counter()
                y = forward()
                synchronize(device)
                seconds = time.perf_counter() - start
            return seconds, y, step_shares(clock)
        finally:
            if sparse:
                attnplug.remove(model)

    print(f"grid {grid} ({grid[0] * grid[1] * grid[2]} tokens), {args.layers} blocks, {rounds} rounds, {device}")
    for _ in range(args.warmup):  # allocator, plans, kernels
        timed(False), timed(True)
    seconds: dict[str, list[float]] = {"dense": [], "long": []}
    shares: dict[str, list[dict]] = {"dense": [], "long": []}
    outputs: dict[str, torch.Tensor] = {}
    method.reset()
    for r in range(rounds):  # alternate, rotating which goes first
        for name in (("dense", "long") if r % 2 == 0 else ("long", "dense")):
            s, outputs[name], share = timed(name == "long")
            seconds[name].append(s)
            shares[name].append(share)
            print(f"  round {r}: {name} {s:.2f} s, self-attention {share['self_attention_share']:.0%}")
    report = method.report()
    dense_out, sparse_out = outputs["dense"].double(), outputs["long"].double()
    rel_l2 = float((sparse_out - dense_out).norm() / dense_out.norm())
    breakdown = {name: {key: median([sh[key] for sh in shares[name]]) for key in shares[name][0]}
                 for name in shares}
    med = {k: median(v) for k, v in seconds.items()}
    plan = next(iter(report["plans"].values()), {})
    result = {
        "benchmark": "longvideo_speed_bench", "quick": args.quick, "environment": environment(device),
        "model": {"architecture": "WanTransformer3DModel (Wan 2.1 T2V 1.3B config, random weights)",
                  "blocks": args.layers, "dtype": str(dtype).removeprefix("torch.")},
        "latents": list(shape), "token_grid": list(grid), "tokens": grid[0] * grid[1] * grid[2],
        "train_latent_frames": size["train_latent_frames"], "extension": grid[0] / size["train_latent_frames"],
        "config": {"pattern": "long", "train_latent_frames": size["train_latent_frames"],
                   "window_frames": args.window_frames, "anchor_frames": args.anchor_frames,
                   "backend": args.backend},
        "plan": plan, "density": report["density"], "sparse_calls": report["sparse_calls"],
        "handed_back": report["handed_back"],
        "seconds": seconds, "median_s": med, "speedup": med["dense"] / med["long"],
        "breakdown": breakdown,
        "self_attention_speedup": (breakdown["dense"]["step_s"] * breakdown["dense"]["self_attention_share"])
        / (breakdown["long"]["step_s"] * breakdown["long"]["self_attention_share"]),
        "rel_l2_vs_dense": rel_l2,
    }
    write_json(out_path, result)
    print(f"dense {med['dense']:.2f} s, long {med['long']:.2f} s: {result['speedup']:.2f}x; density "
          f"{report['density']:.3f}; self-attention {breakdown['dense']['self_attention_share']:.0%} of the dense "
          f"step; rel L2 {rel_l2:.4f} -> {out_path}")
    return result


if __name__ == "__main__":
    main()
