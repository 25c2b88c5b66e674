"""Measured runs of an allowance, each in a process of its own.

``python -m benchmarks.allowance_worker '<job as JSON>'`` runs one of two jobs:

- :class:`CostJob`: connect the limiter, warm it up, then time ``count`` empty
  ``hold(1)`` blocks run by ``concurrency`` tasks under a bound that never makes them
  wait for each other. What is measured is the limiter's own work (for the shared
  allowance: its two Lua scripts and their round trips), not queueing. It prints one
  :class:`~benchmarks.worker.Measurement`, a cycle counting as a request.
- :class:`RunJob`: one worker of the many-processes workload. It builds its client
  and allowance, prints ``ready``, waits for a line on stdin (so that every worker
  starts at once, imports and connections done), upscales ``count`` times and prints
  a :class:`RunResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator

import attrs
import cattrs

from ideogram_async import Allowance, IdeogramClient, LocalAllowance, UpscaleRequest
from ideogram_async.limits import RedisAllowance
from ideogram_async.testing import CountingAllowance

from .server import API_KEY
from .worker import Measurement, _peak_rss, _reset_peak, _status_bytes

__all__ = ["CostJob", "RunJob", "RunResult", "job_command", "parse_run"]

_converter = cattrs.Converter()
_WARM_UP = 50


@attrs.frozen(kw_only=True)
class CostJob:
    """``count`` acquire + release cycles of ``limiter`` ("local" or "redis")."""

    limiter: str
    redis_url: str
    count: int
    concurrency: int


@attrs.frozen(kw_only=True)
class RunJob:
    """``count`` upscales of ``image`` with ``num_images`` each, under an allowance.

    ``shared``: a :class:`RedisAllowance` of ``allowance`` places for every worker
    naming ``key``; otherwise the worker's own limiter of ``allowance`` places.
    """

    shared: bool
    redis_url: str
    key: str
    base_url: str
    image: str
    count: int
    num_images: int
    allowance: int


@attrs.frozen(kw_only=True)
class RunResult:
    """What one worker of a :class:`RunJob` did, on the wall clock shared by the workers."""

    started: float
    ended: float
    cpu: float
    rejected: int
    """429s reported to the allowance (over the allowance, with or without a number)."""
    failures: int
    first_error: str | None


def job_command(job: CostJob | RunJob) -> list[str]:
    """The command line that runs ``job`` in a fresh interpreter."""
    payload = {"kind": type(job).__name__} | attrs.asdict(job)
    return [sys.executable, "-m", "benchmarks.allowance_worker", json.dumps(payload)]


def parse_run(stdout: str) -> RunResult:
    """Read the :class:`RunResult` a worker printed as its last line."""
    return _converter.structure(json.loads(stdout.strip().splitlines()[-1]), RunResult)


async def _cycles(allowance: Allowance, count: int, concurrency: int) -> None:
    async def task(share: int) -> None:
        for _ in range(share):
            async with allowance.hold(1):
                pass

    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(task(share) for share in shares))


@contextlib.asynccontextmanager
async def _limiter(
    shared: bool, redis_url: str, maximum: int, key: str
) -> AsyncIterator[Allowance]:
    """A connected limiter, closed at the end."""
    allowance: Allowance
    if shared:
        redis_allowance = RedisAllowance(redis_url, maximum, key=key)
        await redis_allowance.connect()
        allowance = redis_allowance
    else:
        allowance = LocalAllowance(maximum)
    try:
        yield allowance
    finally:
        await allowance.aclose()


async def _cost(job: CostJob) -> Measurement:
    key = f"bench-{uuid.uuid4().hex[:8]}"
    async with _limiter(job.limiter == "redis", job.redis_url, job.concurrency, key) as allowance:
        await _cycles(allowance, _WARM_UP, job.concurrency)
        gc.collect()
        reset = _reset_peak()
        rss_before = _status_bytes("VmRSS") or _peak_rss(reset)
        cpu_started = time.process_time()
        started = time.perf_counter()
        await _cycles(allowance, job.count, job.concurrency)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        rss_peak = _peak_rss(reset)
    return Measurement(
        wall=wall,
        cpu=cpu,
        rss_before=rss_before,
        rss_peak=rss_peak,
        requests=job.count,
        failures=0,
        first_error=None,
        attempts=job.count,
        rejected=0,
    )


async def _run(job: RunJob) -> RunResult:
    request = UpscaleRequest(num_images=job.num_images)
    async with _limiter(job.shared, job.redis_url, job.allowance, job.key) as limiter:
        counting = CountingAllowance(limiter)
        async with IdeogramClient(
            api_key=API_KEY, base_url=job.base_url, allowance=counting
        ) as client:
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            cpu_started = time.process_time()
            started = time.time()
            results = await asyncio.gather(
                *(client.upscale(job.image, request) for _ in range(job.count)),
                return_exceptions=True,
            )
            ended = time.time()
            cpu = time.process_time() - cpu_started
    errors = [result for result in results if isinstance(result, BaseException)]
    return RunResult(
        started=started,
        ended=ended,
        cpu=cpu,
        rejected=len(counting.rejections),
        failures=len(errors),
        first_error=f"{type(errors[0]).__name__}: {errors[0]}" if errors else None,
    )


def main(argv: list[str]) -> None:
    """Run the job given as JSON in ``argv[0]`` and print what it measured."""
    payload = json.loads(argv[0])
    kind = payload.pop("kind")
    result: Measurement | RunResult
    if kind == "CostJob":
        result = asyncio.run(_cost(_converter.structure(payload, CostJob)))
    else:
        result = asyncio.run(_run(_converter.structure(payload, RunJob)))
    print(json.dumps(_converter.unstructure(result)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
