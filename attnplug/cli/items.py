"""The work of a run: prompts (arguments and prompt files) x seeds, each with its call settings."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from .errors import UserError
from .options import parse_seeds

JSONL_KEYS = {"prompt", "negative_prompt", "height", "width", "frames", "steps", "guidance", "seeds", "num_images"}
INT_SETTINGS = ("height", "width", "frames", "steps", "num_images")


@dataclasses.dataclass
class Item:
    """One prompt x seed to generate: ``call`` holds the per-item call settings (CLI defaults + file overrides)."""

    index: int
    prompt: str
    seed: int
    call: dict
    source: str = ""

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "prompt"
        return f"{self.index:03d}-{slug}-s{self.seed}"


def _positive(name: str, value, *, allow_zero: bool = False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise UserError(f"{name}={value!r} must be an integer >= {0 if allow_zero else 1}.")
    return value


def base_call(args) -> dict:
    """The call settings common to every prompt, from the command line (None = the model's default)."""
    call = {"height": args.height, "width": args.width, "frames": args.frames, "steps": args.steps,
            "guidance": args.guidance, "negative_prompt": args.negative_prompt,
            "num_images": getattr(args, "num_images", 1)}
    for name in INT_SETTINGS:
        _positive(f"--{name.replace('_', '-')}", call[name])
    if call["guidance"] is not None and call["guidance"] < 0:
        raise UserError(f"--guidance={call['guidance']!r} must be >= 0.")
    return call


def _jsonl_entry(text: str, where: str) -> tuple[str, dict]:
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise UserError(f"{where}: each line must be a JSON object with a non-empty \"prompt\" string.")
    unknown = sorted(set(entry) - JSONL_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(sorted(JSONL_KEYS))}.")
    overrides = {k: v for k, v in entry.items() if k != "prompt"}
    try:
        for name in INT_SETTINGS:
            _positive(name, overrides.get(name))
        if "guidance" in overrides and not isinstance(overrides["guidance"], (int, float)):
            raise UserError(f"guidance={overrides['guidance']!r} must be a number")
        if "seeds" in overrides:
            seeds = overrides["seeds"]
            overrides["seeds"] = [seeds] if isinstance(seeds, int) else \
                parse_seeds(seeds if isinstance(seeds, str) else ",".join(map(str, seeds)))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return entry["prompt"], overrides


def read_prompts(args) -> list[tuple[str, dict, str]]:
    """Prompts with their per-line overrides and source: positional prompts, then ``--prompt-file`` lines
    (``.jsonl``: one JSON object per line with ``prompt`` and optional overrides; otherwise one prompt per line,
    ``#`` comments and blank lines skipped). ``UserError`` naming the file and line number."""
    prompts = [(p, {}, "argument") for p in (args.prompt or [])]
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UserError(f"--prompt-file {str(path)!r} does not exist.")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--prompt-file {str(path)!r} cannot be read: {exc}") from None
        jsonl = path.suffix.lower() in (".jsonl", ".json")
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{path}:{n}"
            if jsonl:
                prompts.append((*_jsonl_entry(text, where), where))
            else:
                prompts.append((text, {}, where))
    if not prompts:
        raise UserError("no prompt given: pass PROMPT arguments or --prompt-file FILE.")
    return prompts


def make_items(args) -> list[Item]:
    """Every prompt x seed, in a fixed order (the same in every process)."""
    call = base_call(args)
    seeds = parse_seeds(args.seeds)
    items = []
    for index, (prompt, overrides, source) in enumerate(read_prompts(args)):
        item_call = {**call, **{k: v for k, v in overrides.items() if k != "seeds"}}
        for seed in overrides.get("seeds", seeds):
            items.append(Item(index, prompt, seed, item_call, source))
    return items
