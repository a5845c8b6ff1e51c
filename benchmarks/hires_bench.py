"""Hi-res benchmark: ``attnplug.pipelines.hires`` against stock sampling at 2x / 4x on the embedded models.

For each model and scale, every variant generates the same prompts (the baseline's: colours x shapes) and seeds
(``1000 + i``, as ``benchmarks/models_baseline.py``); the detector counts objects. ``ok`` = exactly one object of the
prompted colour, ``duplicated`` = two or more. Variants:

- ``stock``: the pipeline at the target size (the initial noise drawn like the baseline's);
- ``hires``: the default recipe (U-Net: HiDiffusion RAU-Net + MSW-MSA; DiT: coarse-to-fine with windows);
- ablations, one stage switched off: U-Net ``no RAU-Net`` / ``no MSW-MSA``; DiT ``dense refine`` (no local
  attention), ``one stage`` (4x straight from the training size), ``upscale only`` (base image upsampled, no refine);
- attnplug baselines at the target size: ``freeswim`` and ``neighborhood`` (training-size windows, stock sampling);
- peers: ``tomesd`` (ratio 0.5, ``max_downsample=2``: its default is a no-op here) and the ``hidiffusion`` package
  (its import / apply failure is recorded).

Variants are timed interleaved: each batch of prompts runs every variant in turn, so load changes hit all of them;
times are reported as ratios to ``stock`` in the same run. Peak memory is the growth of the C heap in use (glibc
``mallinfo2``, where CPU tensors live) over one variant's batch, sampled every 2 ms; the largest batch counts.
``--real-unet`` adds a random-weight U-Net with Stable Diffusion 1.5's block layout (320/640/1280/1280 channels)
generating 1024^2 for ``--real-steps`` steps with ``hires`` vs stock.

Writes ``benchmarks/results/hires.json``, ``hires.md`` (the table) and ``hires_grid.png``. Run:
``python benchmarks/hires_bench.py [--samples 24] [--samples-4x 12] [--real-unet]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from models_baseline import image_prompts  # noqa: E402

import attnplug  # noqa: E402
from attnplug.models import detect, load_pipeline  # noqa: E402
from attnplug.pipelines import HiResConfig  # noqa: E402
from attnplug.pipelines import hires as hires_fn  # noqa: E402

QUIET = HiResConfig(progress=False)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_in_use() -> int:
    """Bytes of the C heap in use (glibc ``mallinfo2``: small blocks + mmapped blocks); torch's CPU tensors live
    there. Falls back to the resident set size where ``mallinfo2`` is missing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)
    except (OSError, AttributeError):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak growth (bytes) of the heap in use while the context is open, over its value on entry; sampled every
    2 ms (freed memory the allocator keeps does not count, unlike RSS)."""

    def __init__(self):
        self.peak = 0

    def __enter__(self):
        self.base = _heap_in_use()
        self.peak = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, _heap_in_use())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _heap_in_use())
        return False

    @property
    def grown(self) -> int:
        return self.peak - self.base


# ------------------------------------------------------------------------------------------------ variants


def _train_grid(pipe) -> tuple[int, int]:
    h, w = pipe.sample_defaults["height"], pipe.sample_defaults["width"]
    if pipe.family == "unet":
        return h, w  # NeighborhoodConfig(family="unet") scales the window per level
    p = pipe.transformer.config.patch_size
    return h // p, w // p


def _with_method(config_fn):
    def run(pipe, prompts, size, seed):
        cfg = config_fn(pipe)
        with attnplug.applied(pipe, cfg):
            return _stock(pipe, prompts, size, seed)
    return run


def _latents(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.stack([torch.randn(3, size, size, generator=torch.Generator().manual_seed(seed + j))
                        for j in range(n)])


def _stock(pipe, prompts, size, seed):
    return pipe(prompts, height=size, width=size, latents=_latents(len(prompts), size, seed), output_type="np").images


def _hires(config: HiResConfig, same_noise: bool):
    def run(pipe, prompts, size, seed):
        if same_noise:  # HiDiffusion samples at the target size: the stock run's initial noise
            return hires_fn(pipe, prompts, height=size, width=size, config=config,
                            latents=_latents(len(prompts), size, seed), output_type="np").images
        return hires_fn(pipe, prompts, height=size, width=size, config=config,
                        generator=torch.Generator().manual_seed(seed), output_type="np").images
    return run


def _upscale_only(pipe, prompts, size, seed):
    base = pipe.sample_defaults["height"]
    out = pipe(prompts, height=base, width=base, latents=_latents(len(prompts), base, seed), output_type="pt").images
    up = torch.nn.functional.interpolate(out, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return up.permute(0, 2, 3, 1).numpy()


class ToMe:
    """tomesd patched around the stock call (``max_downsample=2``; its default 1 is a no-op on shapes-unet)."""

    def __init__(self):
        self.tomesd = importlib.import_module("tomesd")

    def __call__(self, pipe, prompts, size, seed):
        target = pipe if pipe.family == "unet" else pipe.transformer
        self.tomesd.apply_patch(target, ratio=0.5, max_downsample=2)
        try:
            return _stock(pipe, prompts, size, seed)
        finally:
            self.tomesd.remove_patch(target)


def hidiffusion_probe(pipe) -> dict:
    """Import and apply the ``hidiffusion`` package as released, then with its known workarounds; the errors."""
    result = {}
    try:
        import hidiffusion  # noqa: F401

        result["import"] = "ok"
    except Exception as e:  # noqa: BLE001 - recording the peer's failure is the point
        result["import"] = f"{type(e).__name__}: {e}"
        try:
            sys.modules["diffusers.pipelines.controlnet.multicontrolnet"] = importlib.import_module(
                "diffusers.models.controlnets.multicontrolnet")
            importlib.import_module("hidiffusion")
            result["import_with_workaround"] = "ok (multicontrolnet module aliased)"
        except Exception as e2:  # noqa: BLE001
            result["import_with_workaround"] = f"{type(e2).__name__}: {e2}"
            return result
    from hidiffusion import apply_hidiffusion, remove_hidiffusion

    for label, prepare in (("apply", lambda: None),
                           ("apply_with_name_or_path", lambda: pipe.register_to_config(_name_or_path="local/shapes"))):
        prepare()
        try:
            apply_hidiffusion(pipe)
            result[label] = "ok"
            remove_hidiffusion(pipe)
        except Exception as e:  # noqa: BLE001
            result[label] = f"{type(e).__name__}: {str(e)[:300]}"
    return result


def variants(pipe, scale: int, peers: bool) -> dict:
    unet = pipe.family == "unet"
    v = {"stock": _stock, "hires": _hires(QUIET, same_noise=unet)}
    if unet:
        v["no RAU-Net"] = _hires(QUIET.replace(raunet=False), same_noise=True)
        v["no MSW-MSA"] = _hires(QUIET.replace(windows=False), same_noise=True)
    else:
        v["dense refine"] = _hires(QUIET.replace(local_attention="dense"), same_noise=False)
        if scale > 2:
            v["one stage"] = _hires(QUIET.replace(max_stage_scale=float(scale)), same_noise=False)
        v["upscale only"] = _upscale_only
    grid = _train_grid(pipe)
    fam = "unet" if unet else None
    # FreeSwim has no per-level window: the U-Net's finest attention level (1/2) at the training size
    swim_grid = (grid[0] // 2, grid[1] // 2) if unet else grid
    v["freeswim"] = _with_method(lambda p: attnplug.FreeSwimConfig(train_grid=swim_grid))
    v["neighborhood"] = _with_method(
        lambda p: attnplug.NeighborhoodConfig.from_training_resolution(grid, family=fam))
    if peers:
        try:
            v["tomesd"] = ToMe()
        except ImportError as e:
            print(f"tomesd not available: {e}", flush=True)
    return v


# ------------------------------------------------------------------------------------------------ runs


def bench_model(name: str, scales: list[int], samples: int, samples_4x: int, batch: int, peers: bool,
                grids: dict) -> list[dict]:
    pipe = load_pipeline(name)
    base = pipe.sample_defaults["height"]
    rows = []
    for scale in scales:
        size, n = base * scale, samples if scale <= 2 else samples_4x
        prompts = image_prompts(n)
        vs = variants(pipe, scale, peers)
        acc = {k: {"counts": [], "ok": 0, "seconds": 0.0, "peak": 0, "images": [], "error": None} for k in vs}
        for fn in vs.values():  # untimed warm-up (first-call allocations, lazy imports)
            with contextlib.suppress(Exception):
                fn(pipe, prompts[:1], size, 999)
        for i in range(0, n, batch):
            chunk = prompts[i:i + batch]
            for label, fn in vs.items():
                a = acc[label]
                if a["error"]:
                    continue
                try:
                    with PeakMemory() as mem:
                        start = time.perf_counter()
                        out = fn(pipe, chunk, size, 1000 + i)
                        a["seconds"] += time.perf_counter() - start
                except Exception as e:  # noqa: BLE001 - a failing variant is a result
                    a["error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                    continue
                a["peak"] = max(a["peak"], mem.grown)
                for prompt, img in zip(chunk, out):
                    det = detect(img)
                    a["counts"].append(det.count)
                    a["ok"] += det.count == 1 and det.objects[0].color == prompt.split()[0]
                    if len(a["images"]) < 6:
                        a["images"].append(np.asarray(img))
            print(f"{name} {scale}x: {i + len(chunk)}/{n}", flush=True)
        stock_t = acc["stock"]["seconds"] / max(1, len(acc["stock"]["counts"]))
        for label, a in acc.items():
            m = len(a["counts"])
            row = {"model": name, "scale": scale, "size": size, "variant": label, "samples": m, "error": a["error"]}
            if m:
                sec = a["seconds"] / m
                row.update(ok_rate=a["ok"] / m, duplication_rate=sum(c >= 2 for c in a["counts"]) / m,
                           mean_objects=sum(a["counts"]) / m, seconds_per_image=sec, time_vs_stock=sec / stock_t,
                           peak_mem_mb=a["peak"] / 2**20)
            rows.append(row)
            print(row, flush=True)
        grids[(name, scale)] = {k: acc[k]["images"] for k in ("stock", "hires")}
    if peers and name == "shapes-unet":
        rows.append({"model": name, "variant": "hidiffusion (package)", "probe": hidiffusion_probe(pipe)})
        print(rows[-1], flush=True)
    return rows


def save_grid(grids: dict, path: Path, cell: int = 64) -> None:
    """Rows: model x scale x (stock, hires); 6 prompts per row; each image resized to ``cell`` px (nearest)."""
    from PIL import Image, ImageDraw

    label_w, pad = 150, 2
    rows = [(f"{m} {s}x {k}", imgs[k]) for (m, s), imgs in grids.items() for k in ("stock", "hires")]
    cols = max(len(r[1]) for r in rows)
    canvas = Image.new("RGB", (label_w + cols * (cell + pad), len(rows) * (cell + pad)), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        y = r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill=(255, 255, 255))
        for c, img in enumerate(imgs):
            pil = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).resize((cell, cell),
                                                                                               Image.NEAREST)
            canvas.paste(pil, (label_w + c * (cell + pad), y))
    canvas.save(path, optimize=True)


def real_unet(steps: int, size: int) -> dict:
    """A random-weight U-Net with SD 1.5's layout in a StableDiffusionPipeline (tiny VAE with SD's 8x factor, tiny
    text encoder), generating ``size``^2 for ``steps`` steps, stock vs ``hires``, interleaved; one seed."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    from attnplug.testing import tiny_tokenizer

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval()
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()
    import tempfile

    tokenizer = tiny_tokenizer(tempfile.mkdtemp())
    text = CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=8, max_position_embeddings=77, bos_token_id=512,
                                        eos_token_id=513, pad_token_id=513)).eval()
    pipe = diffusers.StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                                             scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False),
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=steps, guidance_scale=1.0, output_type="np")
    result = {"size": size, "steps": steps, "parameters_m": sum(p.numel() for p in unet.parameters()) / 1e6,
              "switch": "RAU-Net factor 2 for round(0.4 * steps) steps"}
    for label in ("stock", "hires", "stock_again"):
        with PeakMemory() as mem:
            start = time.perf_counter()
            if label.startswith("stock"):
                out = pipe("a photo", height=size, width=size, generator=torch.Generator().manual_seed(0), **kw)
            else:
                out = hires_fn(pipe, "a photo", height=size, width=size, config=QUIET,
                               generator=torch.Generator().manual_seed(0), **kw)
            result[f"{label}_seconds"] = time.perf_counter() - start
        result[f"{label}_peak_mem_mb"] = mem.grown / 2**20
        result[f"{label}_finite"] = bool(np.isfinite(out.images).all())
        print(label, result[f"{label}_seconds"], flush=True)
    stock = min(result["stock_seconds"], result["stock_again_seconds"])
    result["hires_time_vs_stock"] = result["hires_seconds"] / stock
    return result


def table(rows: list[dict]) -> str:
    lines = ["| model | scale | variant | samples | ok (1 obj, colour) | duplicated (>=2) | mean objects "
             "| time vs stock | peak memory MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "probe" in r or "samples" not in r:
            continue
        if not r["samples"]:
            lines.append(f"| {r['model']} | {r['scale']}x | {r['variant']} | 0 | failed: {r['error'][:80]} |"
                         " | | | |")
            continue
        lines.append(f"| {r['model']} | {r['scale']}x | {r['variant']} | {r['samples']} | {r['ok_rate']:.0%} "
                     f"| {r['duplication_rate']:.0%} | {r['mean_objects']:.2f} | {r['time_vs_stock']:.2f}x "
                     f"| {r['peak_mem_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["shapes-unet", "shapes-dit"])
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--samples-4x", type=int, default=12)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--hidiffusion-path", type=Path, default=None,
                        help="folder holding the unpacked `hidiffusion` package (pip install --target ...)")
    parser.add_argument("--real-unet", action="store_true", help="also the SD 1.5-layout random U-Net at 1024^2")
    parser.add_argument("--real-only", action="store_true", help="only the SD 1.5-layout U-Net (merged into --out)")
    parser.add_argument("--real-steps", type=int, default=2)
    parser.add_argument("--real-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "hires.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.hidiffusion_path is not None:
        sys.path.append(str(args.hidiffusion_path))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = json.loads(args.out.read_text()) if args.real_only and args.out.exists() else {}
    result.update({"machine": platform.processor() or "cpu", "torch_threads": args.threads,
                   "loadavg_start": os.getloadavg()})
    if not args.real_only:
        rows, grids = [], {}
        for name in args.models:
            rows += bench_model(name, args.scales, args.samples, args.samples_4x, args.batch, not args.no_peers,
                                grids)
            result["rows"] = rows
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        save_grid(grids, args.out.with_name("hires_grid.png"))
        args.out.with_name("hires.md").write_text(table(rows) + "\n")
        print(table(rows))
    if args.real_unet or args.real_only:
        result["real_unet"] = real_unet(args.real_steps, args.real_size)
        print(result["real_unet"], flush=True)
    result["loadavg_end"] = os.getloadavg()
    with contextlib.suppress(OSError):
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
