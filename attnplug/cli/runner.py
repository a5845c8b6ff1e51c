"""Running a planned command: the checks before loading, processes and threads, loading (with a ``loading ...``
line), and one pipeline call per item (plain, hi-res or long video) with the call's keyword arguments."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from pathlib import Path

from .checks import check_call_against_model, check_model, check_out_dir
from .errors import UserError
from .items import Item, make_items
from .options import check_extension, extension_config

logger = logging.getLogger("attnplug.cli")

CALL_NAMES = {"height": "height", "width": "width", "frames": "num_frames", "steps": "num_inference_steps",
              "guidance": "guidance_scale", "negative_prompt": "negative_prompt"}


@dataclasses.dataclass
class Plan:
    """What :func:`prepare` checked: the items, the model, where it runs, and extra pipeline arguments."""

    items: list[Item]
    source: object
    device: str
    dtype: str | None
    state: object
    extra_call: dict


def distributed_state(device: str):
    """accelerate's ``PartialState`` when launched with several processes (torchrun / accelerate launch), else
    None. On CPU it is created with ``cpu=True``: without it a CPU launch silently runs N full copies."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
            logger.warning("`accelerate launch --cpu` starts ONE process without MPI; for N CPU processes use "
                           "`torchrun --nproc_per_node N -m attnplug ...` or "
                           "`accelerate launch --multi_gpu --num_processes N -m attnplug ... --device cpu`.")
        return None
    from accelerate import PartialState

    state = PartialState(cpu=device.startswith("cpu"))
    if state.num_processes != world:
        raise UserError(f"launched with WORLD_SIZE={world} but accelerate formed {state.num_processes} process(es).")
    return state


def default_threads(cores: int, load: float | None) -> int | None:
    """The torch thread count for a CPU run when ``--threads`` is not given: None (torch's own, one per core) on an
    idle machine; on a loaded one the cores the load leaves free (at least 1), because threads that wait for a busy
    core make every op slower than one thread does."""
    from ..report import loaded

    if load is None or not loaded(load, cores):
        return None
    return max(1, cores - math.ceil(load - 0.25))


def set_threads(args, state) -> None:
    """``--threads``; else cores / local processes when several processes share a CPU without OMP_NUM_THREADS;
    else, on a loaded machine, :func:`default_threads` (said on stderr)."""
    cpu = args.device.startswith("cpu")
    if args.threads:
        threads = args.threads
    elif state is not None and cpu and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes)))
    elif cpu and state is None and "OMP_NUM_THREADS" not in os.environ:
        from ..report import load_average

        cores, load = os.cpu_count() or 1, load_average()
        threads = default_threads(cores, load)
        if threads is not None:
            print(f"note: the machine is loaded (load average {load:.1f} on {cores} cores): using {threads} torch "
                  "thread(s); pass --threads N to choose.", file=sys.stderr)
    else:
        threads = None
    if threads:
        import torch

        torch.set_num_threads(threads)


def prepare(args) -> Plan:
    """Everything checked before a model loads (no torch unless a launch or an accelerator needs it)."""
    source, device, dtype = check_model(args)
    args.device = device
    items = make_items(args)
    extra_call = check_call_against_model(source, items)
    if args.hires and args.long_video:
        raise UserError("--hires and --long-video cannot be combined.")
    if args.hires_option and not args.hires:
        raise UserError("--hires-option needs --hires.")
    if args.long_video_option and not args.long_video:
        raise UserError("--long-video-option needs --long-video.")
    if args.hires:
        check_extension("hires")
        extension_config("hires", args.hires_option)
        if any(it.call.get("height") is None or it.call.get("width") is None for it in items):
            raise UserError("--hires needs --height and --width (the target size).")
    if args.long_video:
        check_extension("long_video")
        extension_config("long_video", args.long_video_option)
        if any(it.call.get("frames") is None for it in items):
            raise UserError("--long-video needs --frames (the target length).")
    check_out_dir(Path(args.out))
    state = distributed_state(device)
    set_threads(args, state)
    return Plan(items, source, device, dtype, state, extra_call)


def split(items: list, state):
    """This process's share of ``items`` and its rank."""
    if state is None:
        return items, 0
    with state.split_between_processes(items) as mine:
        return list(mine), state.process_index


def load(args, plan: Plan):
    """Load the pipeline, saying so on stderr first (the imports and the load take seconds); unless ``-v``,
    transformers' notes about optional image processors are silenced."""
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    from ..loading import load as load_pipeline

    if plan.source.kind != "embedded" and not getattr(args, "verbose", 0):
        try:
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:  # pragma: no cover - diffusers pipelines with text encoders need it
            pass
    pipe = load_pipeline(args.model, device=plan.device, dtype=plan.dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True if args.no_progress else None, leave=False, position=1)
    return pipe


def call_kwargs(pipe, item: Item, extra: dict) -> dict:
    """Pipeline keyword arguments for ``item``, named as the pipeline's ``__call__`` names them."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    kwargs = {}
    for key, name in CALL_NAMES.items():
        value = item.call.get(key)
        if value is None:
            continue
        if name not in params:
            where = "" if item.source == "argument" else f" ({item.source})"
            raise UserError(f"--{key.replace('_', '-')} is not accepted by {type(pipe).__name__}{where}.")
        kwargs[name] = value
    k = item.call.get("num_images") or 1
    if k != 1:
        name = "num_videos_per_prompt" if "num_videos_per_prompt" in params else "num_images_per_prompt"
        kwargs[name] = k
    kwargs.update({key: value for key, value in extra.items() if key in params})
    if "output_type" in params:
        kwargs["output_type"] = "np"
    return kwargs


def long_video_sparse(config, method_label: str):
    """The sparse pattern ``--long-video`` runs for ``--method`` (``LongVideoConfig.sparse``: the long pattern over
    the whole video, another inside the temporal windows), or None for dense (the config's default, ``"auto"``);
    ``UserError`` for any other method, which would replace long_video's own attention."""
    if config is None or config.name == "dense":
        return None
    if config.name == "sparse_video":
        return config
    raise UserError(f"--long-video runs its own attention (the long sparse pattern or temporal windows); --method "
                    f"{method_label} cannot run with it (only sparse_video: LongVideoConfig.sparse).")


def check_long_video_methods(args, configs: dict, schedule) -> None:
    """With ``--long-video``: every method must be dense or sparse_video, and no schedule flag is given (long_video
    schedules its windows itself); ``UserError`` otherwise."""
    if not args.long_video:
        return
    for label, config in configs.items():
        long_video_sparse(config, label)
    if schedule is not None:
        raise UserError("--long-video schedules its own attention (LongVideoConfig.global_steps); the schedule flags "
                        "cannot be combined with it.")


def extension_configs(args, method=None) -> dict:
    """The hi-res / long-video config a run uses, defaults filled in (the record keeps them): ``{"hires": ...}``
    or ``{"long_video": ...}`` (with ``--method``'s sparse pattern as its ``sparse``), else ``{}``."""
    if args.hires:
        return {"hires": extension_config("hires", args.hires_option, resolved=True)}
    if args.long_video:
        config = extension_config("long_video", args.long_video_option, resolved=True)
        sparse = long_video_sparse(method, getattr(method, "name", "dense"))
        return {"long_video": dataclasses.replace(config, sparse=sparse) if sparse is not None else config}
    return {}


def resolved_plan(pipe, item: Item, extensions: dict) -> dict | None:
    """The hi-res / long-video plan for ``item`` on ``pipe`` (factors, windows, RoPE...) as a dict, or None."""
    import attnplug.pipelines as pipelines

    if "hires" in extensions:
        plan = pipelines.hires_plan(pipe, item.call["height"], item.call["width"], extensions["hires"])
    elif "long_video" in extensions:
        plan = pipelines.long_video_plan(pipe, item.call["frames"], extensions["long_video"])
    else:
        return None
    return dataclasses.asdict(plan) if dataclasses.is_dataclass(plan) else {"plan": repr(plan)}


def show_progress(args) -> bool:
    """Whether progress bars are shown: not with ``--no-progress``, and only on a terminal."""
    return not args.no_progress and sys.stderr.isatty()


def run_pipe(pipe, item: Item, args, kwargs: dict, extensions: dict):
    """One pipeline call for ``item``: through ``hires`` / ``long_video`` with their configs, or plain."""
    import torch

    generator = torch.Generator("cpu").manual_seed(item.seed)
    if args.hires:
        fn = check_extension("hires")
        extra = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
        # the stage bar only where someone watches it (never in a log), and never with --no-progress
        config = dataclasses.replace(extensions["hires"], progress=show_progress(args))
        return fn(pipe, item.prompt, height=kwargs["height"], width=kwargs["width"], generator=generator,
                  config=config, **extra)
    if args.long_video:
        fn = check_extension("long_video")
        extra = {k: v for k, v in kwargs.items() if k != "num_frames"}
        return fn(pipe, item.prompt, num_frames=kwargs["num_frames"], generator=generator,
                  config=extensions["long_video"], **extra)
    return pipe(item.prompt, generator=generator, **kwargs)
