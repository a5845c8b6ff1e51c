"""The ``attnplug`` argument parser: every option with its help and default. Building it imports no torch."""

from __future__ import annotations

import argparse

from .items import JSONL_KEYS
from .options import method_configs, parse_option

DESCRIPTION = "Training-free attention variants for diffusers: generate, bench, report, methods, demo, ui."
EXAMPLE = ("example: attnplug generate 'red circle' --model shapes-unet --height 32 --width 32 --method agent "
           "-o agents=16 --seeds 0,1 --out outputs/agent")
#: command -> (module of attnplug.cli, function): imported only when the command runs
COMMANDS = {
    "generate": ("generate", "cmd_generate"),
    "bench": ("bench", "cmd_bench"),
    "report": ("report", "cmd_report"),
    "methods": ("methods", "cmd_methods"),
    "demo": ("demo", "cmd_demo"),
    "ui": ("ui", "cmd_ui"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless the help already says it (``default: ...``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


def version_string() -> str:
    """The installed attnplug version (no package import needed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnplug")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "unknown"


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="log attnplug's decisions (-vv: debug)")


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes-unet",
                   help="embedded model (shapes-unet, shapes-dit, shapes-video), its folder, a diffusers folder "
                        "(save_pretrained), a Hub id, or tiny-sd/tiny-pixart/tiny-wan/tiny-animatediff (random "
                        "weights)")
    p.add_argument("prompt", nargs="*", help="prompts (or --prompt-file)")
    p.add_argument("--prompt-file", help="one prompt per line (.txt) or JSON objects per line (.jsonl) with "
                                         f"optional overrides: {', '.join(sorted(JSONL_KEYS - {'prompt'}))}")
    p.add_argument("--height", type=int, help="height in pixels (default: the model's own; the training size for "
                                              "the embedded and tiny models)")
    p.add_argument("--width", type=int, help="width in pixels (default: the model's own; the training size for "
                                             "the embedded and tiny models)")
    p.add_argument("--frames", type=int, help="video models: number of frames (default: the model's own; Wan "
                                              "takes 4k + 1)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's own; 20 for the embedded "
                                             "models)")
    p.add_argument("--guidance", "--guidance-scale", type=float, dest="guidance",
                   help="classifier-free guidance scale (default: the model's own)")
    p.add_argument("--negative-prompt", help="what to steer away from, for pipelines that take it (default: none)")
    p.add_argument("--num-images", type=int, default=1, help="images/videos per prompt and seed")
    p.add_argument("--seeds", default="0", help="comma list or range, e.g. 0,1,2 or 0-7")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", metavar="{float32,float16,bfloat16}",
                   help="weights and compute dtype; also fp32, fp16, bf16 (default: the model's own, float32 for "
                        "the embedded models)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's; cores / local "
                                               "processes when launched with several processes)")


def _schedule(p: argparse.ArgumentParser) -> None:
    sched = p.add_argument_group("schedule (where the method runs; default: the method's own, see attnplug methods)")
    sched.add_argument("--warmup-steps", type=int, dest="warmup_steps", help="first steps that stay dense")
    sched.add_argument("--until-step", dest="until_step", help="last step (exclusive): index, or fraction like 0.5")
    sched.add_argument("--skip-first-layers", type=int, dest="skip_first_layers",
                       help="first self-attention layers that stay dense")
    sched.add_argument("--skip-last-layers", type=int, dest="skip_last_layers",
                       help="last self-attention layers that stay dense")
    sched.add_argument("--layers", help="self-attention layer indices (0,1,5) or a regex on module names")


def _outputs(p: argparse.ArgumentParser, out: str) -> None:
    ext = p.add_argument_group("multi-pass pipelines (attnplug.pipelines)")
    ext.add_argument("--hires", action="store_true", help="generate through attnplug.pipelines.hires")
    ext.add_argument("--hires-option", type=parse_option, action="append", default=[], metavar="FIELD=VALUE",
                     help="a HiResConfig field (repeatable), e.g. strength=0.5 (default: the pipeline's recipe)")
    ext.add_argument("--long-video", action="store_true", help="generate through attnplug.pipelines.long_video")
    ext.add_argument("--long-video-option", type=parse_option, action="append", default=[], metavar="FIELD=VALUE",
                     help="a LongVideoConfig field (repeatable), e.g. window_frames=8 (default: the family's recipe)")
    p.add_argument("--video-format", choices=("mp4", "gif"), default="mp4", help="mp4 = H.264 yuv420p")
    p.add_argument("--fps", type=int, default=8, help="frames per second of the videos")
    p.add_argument("--out", default=out, help="output folder, relative to the current folder (rerun to resume)")
    p.add_argument("--overwrite", action="store_true", help="redo items whose record was made by another command")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _generate(sub) -> None:
    gen = sub.add_parser("generate", formatter_class=HelpFormatter,
                         help="generate images/videos for prompts x seeds with one method",
                         epilog="example: attnplug generate 'red circle' 'blue square' --model shapes-unet "
                                "--method agent -o agents=16 --seeds 0,1 --out outputs/agent")
    _verbose(gen)
    _inputs(gen)
    gen.add_argument("--method", default="dense",
                     help=f"attention method: {', '.join(method_configs())} (options: attnplug methods NAME)")
    gen.add_argument("-o", "--option", type=parse_option, action="append", default=[], metavar="FIELD=VALUE",
                     help="method option (repeatable), e.g. --method agent -o agents=64 (default: the method's)")
    _schedule(gen)
    _outputs(gen, "outputs/generate")


def _bench(sub) -> None:
    bench = sub.add_parser("bench", formatter_class=HelpFormatter,
                           help="methods vs dense on the same prompts and seeds: speed and fidelity",
                           epilog="example: attnplug bench --model shapes-unet --methods dense,agent,neighborhood "
                                  "--prompt 'red circle' --seeds 0,1 --height 32 --width 32 --out outputs/bench")
    _verbose(bench)
    _inputs(bench)
    bench.add_argument("--prompt", dest="prompt_opt", action="append", default=[], help="a prompt (repeatable)")
    bench.add_argument("--methods", default="dense,agent,neighborhood",
                       help="comma list; options per entry: agent[agents=16;max_level=1]; 'stock' = no attnplug")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs per method before timing")
    bench.add_argument("--repeats", type=int, default=1, help="timed runs per method and item (median)")
    bench.add_argument("--suite", choices=("gpu",),
                       help="gpu: the prepared CUDA benchmark on real architectures (benchmarks/gpu_bench.py, run "
                            "from a source checkout's root; --out defaults to benchmarks/results/gpu)")
    _schedule(bench)
    _outputs(bench, "outputs/bench")


def _others(sub) -> None:
    report = sub.add_parser("report", formatter_class=HelpFormatter,
                            help="merge the records under DIR into DIR/report.json and report.html")
    report.add_argument("dir", help="a folder of generate/bench outputs")
    _verbose(report)
    methods = sub.add_parser("methods", formatter_class=HelpFormatter, help="list methods and their options")
    methods.add_argument("name", nargs="?", help="one method (default: all, then the schedule flags)")
    _verbose(methods)
    demo = sub.add_parser("demo", formatter_class=HelpFormatter,
                          help="generate images and a video with the embedded models")
    demo.add_argument("--out", default="outputs/demo", help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="seed of every generation")
    demo.add_argument("--no-methods", dest="methods", action="store_false", help="dense attention only")
    _verbose(demo)
    ui = sub.add_parser("ui", formatter_class=HelpFormatter, help="the Gradio web app",
                        epilog="other options are passed on to the app (see its --help)")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    ui.add_argument("--port", type=int, default=7860, help="port to serve on")
    ui.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    ui.add_argument("--device", help="device the app generates on: cpu, cuda, cuda:N, mps (default: the app's)")
    ui.add_argument("--dtype", help="dtype the app loads models in (default: the model's own)")
    _verbose(ui)


def build_parser() -> argparse.ArgumentParser:
    """The ``attnplug`` argument parser (each command's function is looked up in :data:`COMMANDS`)."""
    parser = argparse.ArgumentParser(prog="attnplug", description=DESCRIPTION, epilog=EXAMPLE,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"attnplug {version_string()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log attnplug's decisions (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    _generate(sub)
    _bench(sub)
    _others(sub)
    return parser
