"""Start-up time of the command line: median wall time of ``attnplug --help``, ``--version`` and a mistyped command
(``generat``), each run in a fresh ``python -m attnplug`` process. Writes ``results/startup.json`` with the load
average, which the figures depend on (goal: <= 0.5 s on an idle machine; reported, not asserted).

    python benchmarks/startup_bench.py [--repeats 7] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"--help": ["--help"], "--version": ["--version"], "mistyped command": ["generat", "x"]}


def time_once(argv: list[str]) -> float:
    """Seconds for one ``python -m attnplug ARGV`` process, start to exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "attnplug", *argv], capture_output=True, env=env, cwd=ROOT, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="processes per case (the median is reported)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = {}
    for name, argv in CASES.items():
        times = [time_once(argv) for _ in range(args.repeats)]
        results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                         "max_s": round(max(times), 3), "runs": len(times)}
        print(f"{name:18s} median {results[name]['median_s']:.3f} s (min {results[name]['min_s']:.3f}, "
              f"max {results[name]['max_s']:.3f})")
    report = {"cases": results, "goal_s": 0.5, "cpu_count": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {report['loadavg_before'][0]} on {report['cpu_count']} cores -> {args.out}")


if __name__ == "__main__":
    main()
