"""``python -m benchmarks``: run the workloads, print one table, write the JSON results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import attrs

from .images import write_png
from .processes import BenchmarkError, stop_on_sigterm
from .report import Row, machine, render_table
from .workloads import FULL, MB, QUICK, WORKLOADS, Context, runs_json

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).with_name("results.json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure ideogram_async against a hand-written aiohttp loop and httpx.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="reduced sizes: a smoke test of about 2 minutes"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help="where to write the results [benchmarks/results.json]",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(WORKLOADS),
        help="run only this workload (repeatable) [all]",
    )
    return parser


def _header(mode: str, lines: list[str]) -> str:
    info = machine()
    return "\n".join(
        [
            f"ideogram_async benchmarks ({mode})",
            f"machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['platform']}",
            f"python {info['python']}, aiohttp {info['aiohttp']}, httpx {info['httpx']}, "
            f"ideogram_async {info['ideogram_async']}; load average at start "
            f"{os.getloadavg()[0]:.2f}",
            *(f"  {line}" for line in lines),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 1 if any workload errored, else 0 (whatever the ratios)."""
    args = _parser().parse_args(argv)
    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    selected = args.only or list(WORKLOADS)
    rows: list[Row] = []
    errors: list[tuple[str, str]] = []
    runs: dict[str, Any] = {}
    durations: dict[str, float] = {}
    started = time.perf_counter()
    header = _header(mode, sizes.describe())
    print(header, flush=True)
    try:
        with stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="ideogram-bench-") as folder:
            context = Context(
                sizes=sizes,
                small_png=write_png(Path(folder) / "small.png"),
                large_png=write_png(Path(folder) / "large.png", size=sizes.stream_file_mb * MB),
            )
            for name in selected:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                began = time.perf_counter()
                try:
                    new_rows, new_runs = WORKLOADS[name](context)
                except Exception as error:  # any failure of one workload: report, go on
                    if not isinstance(error, BenchmarkError):
                        traceback.print_exc()
                    errors.append((name, f"{type(error).__name__}: {error}"))
                else:
                    rows += new_rows
                    runs[name] = runs_json(new_runs)
                durations[name] = time.perf_counter() - began
    except KeyboardInterrupt:
        print("interrupted; servers and workers stopped", file=sys.stderr)
        return 130
    total = time.perf_counter() - started
    print()
    print(render_table(rows, errors))
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items())
    print(
        f"\n{mode} run took {total:.0f} s ({steps}); load average at end {os.getloadavg()[0]:.2f}"
    )
    results = {
        "mode": mode,
        "machine": machine(),
        "sizes": attrs.asdict(sizes),
        "header": header,
        "rows": [row.to_json() for row in rows],
        "errors": [{"workload": name, "error": message} for name, message in errors],
        "durations": durations,
        "total_seconds": total,
        "load_average_at_end": os.getloadavg()[0],
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.json}")
    for name, message in errors:
        print(f"error in workload {name}: {message}", file=sys.stderr)
    return 1 if errors else 0
