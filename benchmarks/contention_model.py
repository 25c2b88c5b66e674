"""A model of workload 10 (b): the real adaptive bound on simulated time, many seeds.

Four processes, each with its own bound (:class:`~ideogram_async.limits.Bound`, the
machine :class:`~ideogram_async.limits.LocalAllowance` runs) and 60 calls, share an
organization of 10 places; a request that finds the places full is refused at once,
one that is admitted runs 100 ms. No sockets and no scheduler noise: a rule's effect on
the spread of (b)'s wall time shows over a thousand seeds in seconds, where the real
benchmark gives one sample in four. It models the rules, not the library's costs: the
real runs in ``contention.py`` are what the results report.

    python -m benchmarks.contention_model --seeds 1000
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
from collections.abc import Callable
from typing import Any

import attrs

from ideogram_async.limits import Bound

ALLOWANCE, LATENCY, CALLS, PROCESSES = 10, 0.1, 60, 4
HOP = 0.001
"""Seconds each way between a process and the service."""


@attrs.define
class _Process:
    bound: Bound = attrs.field(factory=lambda: Bound(ALLOWANCE))
    in_use: int = 0
    waiting: int = 0
    timer: bool = False


@attrs.define
class _Run:
    rng: random.Random
    events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = attrs.Factory(list)
    order: itertools.count[int] = attrs.Factory(itertools.count)
    running: int = 0
    refusals: int = 0
    last: float = 0.0

    def at(self, time: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (time, next(self.order), action, args))

    def fits(self, process: _Process, now: float) -> bool:
        closed = process.bound.closed_for(now)
        if closed > 0:
            if not process.timer:
                process.timer = True
                self.at(now + closed, self.reopen, process)
            return False
        return process.in_use == 0 or process.in_use < process.bound.limit

    def reopen(self, now: float, process: _Process) -> None:
        process.timer = False
        self.wake(now, process)

    def wake(self, now: float, process: _Process) -> None:
        while process.waiting and self.fits(process, now):
            process.waiting -= 1
            process.in_use += 1
            grant = (process.in_use, process.bound.limit, process.bound.round)
            self.at(now + HOP + self.rng.uniform(0, HOP), self.arrive, process, grant)

    def arrive(self, now: float, process: _Process, grant: tuple[int, int, int]) -> None:
        if self.running < ALLOWANCE:
            self.running += 1
            self.at(now + LATENCY + self.rng.uniform(0, 3 * HOP), self.finish, process, grant)
        else:
            self.at(now + HOP, self.refused, process, grant)

    def finish(self, now: float, process: _Process, grant: tuple[int, int, int]) -> None:
        self.running -= 1
        self.at(now + HOP, self.completed, process, grant)

    def completed(self, now: float, process: _Process, grant: tuple[int, int, int]) -> None:
        level, granted, round_ = grant
        self.last = max(self.last, now)
        process.bound.completed(
            level=level, granted=granted, waiting=int(process.waiting > 0), round=round_, now=now
        )
        process.in_use -= 1
        self.wake(now, process)

    def refused(self, now: float, process: _Process, grant: tuple[int, int, int]) -> None:
        self.refusals += 1
        process.bound.rejected(
            number=ALLOWANCE,
            held=process.in_use,
            places=1,
            round=grant[2],
            now=now,
            jitter=self.rng.random(),
        )
        process.in_use -= 1
        process.waiting += 1  # the refused call asks for a place again
        if process.in_use == 0:
            self.wake(now, process)

    def start(self, now: float, process: _Process) -> None:
        process.waiting = CALLS
        process.bound.at(now)
        self.wake(now, process)


def simulate(seed: int, skew: float = 0.02) -> tuple[float, float]:
    """(wall time over the ideal, 429s per successful call) of one run of case (b)."""
    run = _Run(random.Random(seed))
    for process in (_Process() for _ in range(PROCESSES)):
        run.at(run.rng.uniform(0, skew), run.start, process)
    while run.events:
        time, _, action, args = heapq.heappop(run.events)
        action(time, *args)
    calls = CALLS * PROCESSES
    return run.last / (calls / ALLOWANCE * LATENCY), run.refusals / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--skew", type=float, default=0.02, help="seconds between the starts")
    options = parser.parse_args()
    runs = [simulate(seed, options.skew) for seed in range(options.seeds)]
    walls = sorted(wall for wall, _ in runs)
    refusals = [refused for _, refused in runs]
    print(
        f"case (b) modelled, {options.seeds} seeds: wall/ideal mean {statistics.mean(walls):.3f}x, "
        f"90th percentile {walls[int(len(walls) * 0.9)]:.3f}x, max {walls[-1]:.3f}x, "
        f"over 1.5x in {sum(wall > 1.5 for wall in walls) / len(walls):.1%} of runs; "
        f"429s per successful call mean {statistics.mean(refusals):.3f}, max {max(refusals):.3f}"
    )


if __name__ == "__main__":
    main()
