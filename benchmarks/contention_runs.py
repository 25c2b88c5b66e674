"""Workload 10 (b) alone, many real runs: the spread that one run per benchmark cannot show.

Four worker processes, each with its own ``LocalAllowance(10)``, share an emulator that
enforces 10 places at 100 ms; 240 calls in all (ideal 2.4 s). Each run prints its wall
time over the ideal and its 429s per successful call; the summary gives the mean and the
range. Compare two versions of the code by running this in each checkout in turn.

    python -m benchmarks.contention_runs --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .contention import _emulator, _jobs
from .images import write_png
from .processes import running_server
from .shared import run_together, together

_CALLS, _LATENCY, _ALLOWANCE = 240, 0.1, 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    options = parser.parse_args()
    ideal = _CALLS / _ALLOWANCE * _LATENCY
    walls, refusals = [], []
    with tempfile.TemporaryDirectory() as folder:
        image = write_png(Path(folder) / "small.png")
        with running_server(_emulator(_LATENCY)) as url:
            for number in range(options.runs):
                jobs = _jobs(url, image, _CALLS, shared=False, redis_url="")
                run = together(run_together(jobs), _CALLS)
                walls.append(run.wall / ideal)
                refusals.append(run.rejected / _CALLS)
                print(f"run {number + 1}: {walls[-1]:.3f}x ideal, {refusals[-1]:.3f} 429s per call")
    over = sum(wall > 1.5 for wall in walls)
    print(
        f"(b) {options.runs} runs: wall/ideal mean {statistics.mean(walls):.3f}x, "
        f"min {min(walls):.3f}x, max {max(walls):.3f}x, over 1.5x in {over}; "
        f"429s per successful call mean {statistics.mean(refusals):.3f}, max {max(refusals):.3f}"
    )


if __name__ == "__main__":
    main()
