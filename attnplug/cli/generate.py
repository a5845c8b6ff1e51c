"""``attnplug generate``: every prompt x seed with one method; resumable; data parallel when launched so."""

from __future__ import annotations

import json
from pathlib import Path

from .options import build_config, build_schedule, coerce_options
from .records import (
    base_record,
    clean_partials,
    finished,
    item_command,
    judge_all,
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


def _summary(args, plan, todo: int, skipped: int, totals: dict, out: Path) -> str:
    from ..report import write_report

    json_path, html_path = write_report(out)
    merged = json.loads(json_path.read_text())
    where = f" by process 0 of {plan.state.num_processes}" if plan.state else ""
    calls = ("attention counters: not kept by --long-video (its method is removed after each call)"
             if args.long_video else f"self-attention calls: {totals['method']} method, {totals['stock']} stock "
             f"of {totals['self_calls']}")
    labels = sorted({r["_label"] for r in merged["records"]}) or [args.method]
    return (f"{args.model} / {'; '.join(labels)}: {todo} generated{where}, {skipped} already done, "
            f"{totals['seconds']:.2f} s; {calls}; {merged['items']} item(s) in {out}/ ({html_path.name})")


def cmd_generate(args) -> int:
    """Generate every prompt x seed with ``--method``; items whose record matches are skipped (resume)."""
    config = build_config(args.method, dict(args.option))
    options = coerce_options(args.method, dict(args.option))
    schedule = build_schedule(args)
    check_long_video_methods(args, {args.method: config}, schedule)
    plan = prepare(args)
    extensions = extension_configs(args, config)
    out = Path(args.out)
    recipes = {item.id: recipe(args, item, config, schedule, extensions) for item in plan.items}
    keys = {item_id: recipe_key(rec) for item_id, rec in recipes.items()}
    mine, rank = split(plan.items, plan.state)
    todo = [it for it in mine
            if not finished(out / f"{it.id}.json", keys[it.id], recipes[it.id], out, args.overwrite)]
    clean_partials(out, [it.id for it in todo])
    if plan.source.random_weights and rank == 0:
        print(f"note: {args.model} has RANDOM weights (a plumbing test): its output is noise.")
    totals = {"method": 0, "stock": 0, "self_calls": 0, "seconds": 0.0}
    if todo:
        _generate(args, plan, todo, rank, config, schedule, extensions, options, recipes, totals)
    if plan.state is not None:
        plan.state.wait_for_everyone()
    if rank == 0:
        print(_summary(args, plan, len(todo), len(mine) - len(todo), totals, out))
    return 0


def _generate(args, plan, todo, rank, config, schedule, extensions, options, recipes, totals) -> None:
    from tqdm.auto import tqdm

    import attnplug

    from ..report import environment, measure, run_label, summarize_stats, write_json

    out = Path(args.out)
    pipe = load(args, plan)
    if not args.long_video:  # long_video applies its own method, with --method's sparse pattern inside
        attnplug.apply(pipe, config, schedule=schedule)
    env = environment(plan.device)
    try:
        for item in tqdm(todo, desc=f"generate [{rank}]" if plan.state else "generate",
                         disable=args.no_progress or None, unit="item"):
            kwargs = call_kwargs(pipe, item, plan.extra_call)
            attnplug.reset_stats(pipe)
            with measure(pipe, plan.device) as m:
                result = run_pipe(pipe, item, args, kwargs, extensions)
            stats = summarize_stats(attnplug.stats(pipe))
            files, media = save_outputs(result, out / item.id, args)
            verdicts = judge_all(plan.source, media, item.prompt)
            rec = recipes[item.id]
            plan_dict = resolved_plan(pipe, item, extensions)
            record = {**base_record(args, item, plan.source, plan.device, plan.dtype, rank, rec), "kind": "generate",
                      "key": recipe_key(rec), "method": args.method, "method_label": args.method,
                      "config": config.describe(), "schedule": rec["schedule"],
                      "plan": plan_dict,
                      "run_label": run_label(args.method, plan_dict, rec["hires_config"], rec["long_video_config"]),
                      "call": dict(kwargs), "seconds": m["seconds"], "timing": m["timing"],
                      "memory": m["memory"], "stats": stats,
                      "detector": (verdicts or [None])[0], "detector_all": verdicts,
                      **files, "environment": env,
                      "command": item_command(args, item, args.method, options)}
            write_json(out / f"{item.id}.json", record)
            for key in ("method", "stock", "self_calls"):
                totals[key] += stats.get(key) or 0
            totals["seconds"] += m["seconds"]
    finally:
        attnplug.remove(pipe)
