"""``attnplug bench``: each method vs the reference run of the same seed, timed warmed-up and interleaved; and
``bench --suite gpu``, the prepared CUDA benchmark of a source checkout."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError
from .options import STOCK, build_config, build_schedule, parse_methods
from .records import (
    base_record,
    clean_partials,
    finished,
    item_command,
    judge_all,
    plan_stems,
    recipe,
    recipe_key,
    save_outputs,
)
from .runner import (
    call_kwargs,
    check_long_video_methods,
    extension_configs,
    load,
    prepare,
    resolved_plan,
    run_pipe,
    split,
)

GPU_BENCH_SCRIPT = Path("benchmarks") / "gpu_bench.py"
GPU_BENCH_OUT = Path("benchmarks") / "results" / "gpu"


def _entries(args):
    """``(methods, configs, reference)`` from ``--methods``. The speed and quality reference is ``stock`` (the
    pipeline without attnplug): it is added first when not listed; ``dense`` (attnplug's exact attention) is then an
    entry like the others, which shows attnplug's own overhead."""
    methods = parse_methods(args.methods)
    configs = {label: None if name == STOCK else build_config(name, options) for label, name, options in methods}
    if STOCK not in configs:
        configs = {STOCK: None, **configs}
        methods = [(STOCK, STOCK, {}), *methods]
    return methods, configs, STOCK


def cmd_bench(args) -> int:
    """Run every ``--methods`` entry on every item against stock; one record and output per (item, entry), each its
    own file."""
    if getattr(args, "suite", None) == "gpu":
        return run_gpu_suite(args)
    methods, configs, reference = _entries(args)
    schedule = build_schedule(args)
    check_long_video_methods(args, configs, schedule)
    stems = plan_stems(list(configs), configs, schedule)
    plan = prepare(args)
    out = Path(args.out)
    extensions = {label: extension_configs(args, config) for label, config in configs.items()}
    recipes = {(it.id, label): recipe(args, it, configs[label], schedule, extensions[label])
               for it in plan.items for label in configs}
    keys = {k: recipe_key(rec) for k, rec in recipes.items()}
    mine, rank = split(plan.items, plan.state)

    def sidecar(item, label):
        return out / "media" / item.id / f"{stems[label]}.json"

    todo = [it for it in mine if not all(finished(sidecar(it, label), keys[(it.id, label)], recipes[(it.id, label)],
                                                  out, args.overwrite) for label in configs)]
    clean_partials(out, [it.id for it in todo])
    if todo:
        _bench(args, plan, todo, rank, methods, configs, reference, schedule, extensions, recipes, sidecar)
    if plan.state is not None:
        plan.state.wait_for_everyone()
    if rank == 0:
        _print_summary(args, out, len(configs))
    return 0


class _Entry:
    """One ``--methods`` entry while it runs: its config, and one logging scope for all its runs (so a degraded-mode
    warning is said once per entry, however many items, warm-ups and repeats it has)."""

    def __init__(self, label: str, config):
        import contextvars

        from .._logging import log_scope

        self.label, self.config = label, config
        self.context = contextvars.copy_context()
        self._scope = log_scope()
        self.context.run(self._scope.__enter__)

    def run(self, fn, *args):
        return self.context.run(fn, *args)

    def close(self) -> None:
        self.context.run(self._scope.__exit__, None, None, None)


def _bench(args, plan, todo, rank, methods, configs, reference, schedule, extensions, recipes, sidecar) -> None:
    from tqdm.auto import tqdm

    import attnplug

    from ..report import (
        as_float_array,
        environment,
        fidelity,
        measure,
        median,
        peak_memory,
        sparsity_of,
        spread,
        summarize_stats,
        write_json,
    )

    pipe = load(args, plan)
    env = environment(plan.device)

    def call(label, item, measured=True):
        config = configs[label]
        if config is not None and not args.long_video:
            attnplug.apply(pipe, config, schedule=schedule)
        try:
            kwargs = call_kwargs(pipe, item, plan.extra_call)
            if not measured:
                return {"memory": peak_memory(lambda: run_pipe(pipe, item, args, kwargs, extensions[label]),
                                              plan.device)}
            with measure(pipe, plan.device) as m:
                result = run_pipe(pipe, item, args, kwargs, extensions[label])
            raw = attnplug.stats(pipe) if config is not None else {}
        finally:
            if config is not None:
                attnplug.remove(pipe)
        return {"result": result, "m": m, "raw": raw, "kwargs": kwargs}

    labels = list(configs)
    entries = {label: _Entry(label, configs[label]) for label in labels}
    try:
        for _ in range(args.warmup):
            for label in labels:
                entries[label].run(call, label, todo[0])
        for item in tqdm(todo, desc=f"bench [{rank}]" if plan.state else "bench",
                         disable=args.no_progress or None, unit="item"):
            runs: dict[str, list] = {label: [] for label in labels}
            for r in range(args.repeats):
                for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                    runs[label].append(entries[label].run(call, label, item))
            memory = {label: runs[label][-1]["m"]["memory"] for label in labels}
            if memory[labels[0]]["peak_mib"] is None:  # CPU: allocations counted in an untimed pass
                memory = {label: entries[label].run(call, label, item, False)["memory"] for label in labels}
            seconds = {label: [x["m"]["seconds"] for x in rs] for label, rs in runs.items()}
            med = {label: median(v) for label, v in seconds.items()}
            ref = as_float_array(runs[reference][-1]["result"])
            for label, (_, name, options) in zip(labels, methods, strict=True):
                last = runs[label][-1]
                path = sidecar(item, label)
                path.parent.mkdir(parents=True, exist_ok=True)
                files, media = save_outputs(last["result"], path.with_suffix(""), args)
                stats = summarize_stats(last["raw"])
                verdicts = judge_all(plan.source, media, item.prompt)
                rec = recipes[(item.id, label)]
                record = {**base_record(args, item, plan.source, plan.device, plan.dtype, rank, rec),
                          "kind": "bench", "key": recipe_key(rec), "method": name, "method_label": label,
                          "reference": label == reference, "reference_label": reference, "config": rec["config"],
                          "schedule": rec["schedule"], "plan": resolved_plan(pipe, item, extensions[label]),
                          "call": last["kwargs"], "seconds": med[label], "seconds_all": seconds[label],
                          "spread": spread(seconds[label]), "reference_seconds": med[reference],
                          "speedup": med[reference] / med[label], "timing": last["m"]["timing"],
                          "memory": memory[label], "fidelity": fidelity(as_float_array(last["result"]), ref),
                          "stats": stats, "density": sparsity_of(stats.get("method_report")),
                          "detector": (verdicts or [None])[0], **files, "environment": env,
                          "warmup": args.warmup, "repeats": args.repeats,
                          "command": item_command(args, item, name, options) if name != STOCK else None}
                write_json(path, record)
    finally:
        for entry in entries.values():
            entry.close()


def _print_summary(args, out: Path, n_methods: int) -> None:
    from ..report import build_report, write_report

    _, html_path = write_report(out)
    report = build_report(out)
    print(f"bench {args.model}: {report['items']} item(s) x {n_methods} method(s), reference stock -> {html_path}")
    width = max((len(row["method"]) for row in report["summary"]), default=10) + 2
    for row in report["summary"]:
        sp, ps = row["speedup_median"], row["psnr_mean"]
        if row["flag"]:
            print(f"  {row['method']:<{width}s} {row['flag']}")
            continue
        speed = "-" if sp is None else f"{sp:.2f}x"
        if row["repeats"] > 1 and row["spread_max"] is not None:
            speed += f" (spread {row['spread_max']:.0%})"
        psnr = "-" if ps is None else "identical" if ps == float("inf") else f"{ps:.1f}"
        print(f"  {row['method']:<{width}s} speed-up {speed}  PSNR {psnr}  SSIM "
              f"{'-' if row['ssim_mean'] is None else format(row['ssim_mean'], '.3f')}  method calls "
              f"{'-' if row['coverage_mean'] is None else format(row['coverage_mean'], '.0%')}"
              + ("" if row["density_mean"] is None else f"  density {row['density_mean']:.2f}"))
    if report["noise_warning"]:
        print(f"warning: {report['noise_warning']}", file=sys.stderr)


def run_gpu_suite(args) -> int:
    """``bench --suite gpu``: run the benchmark script of the source checkout in the working directory (the package
    never imports or ships it) with this interpreter, passing ``--out``."""
    import subprocess

    script = Path.cwd() / GPU_BENCH_SCRIPT
    if not script.is_file():
        raise UserError(f"--suite gpu runs {GPU_BENCH_SCRIPT} from a source checkout of attnplug; there is none "
                        f"under {Path.cwd()}: run it from the repository root.")
    out = args.out if args.out != "outputs/bench" else str(GPU_BENCH_OUT)
    return subprocess.call([sys.executable, str(script), "--out", out])
