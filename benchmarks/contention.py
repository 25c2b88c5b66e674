"""Workload 10, contention: refusals per successful call and wall time over the ideal when
the organization's allowance is contended.

- (a) another holder: another client fills the 10-place allowance for ``hold`` seconds
  while this one starts 20 calls (in this process, the emulator over real sockets):
  429s per call while it is full, and seconds from its places freeing to the last call.
- (b) 4 processes, each with its own ``LocalAllowance(10)``, on one 10-place organization.
- (c) 4 processes sharing one ``RedisAllowance(10)``.
- (d) one process whose bound (40) is above the organization's 10, 429s without the number.

Ideal wall: the calls over the allowance of 10, times the latency.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ideogram_async import IdeogramClient, LocalAllowance
from ideogram_async.testing import CountingAllowance, Emulator

from .allowance_worker import RunJob
from .processes import running_server
from .report import Compare, Row, Unit
from .server import API_KEY
from .shared import run_together, running_redis, together
from .worker import Measurement

if TYPE_CHECKING:
    from .workloads import Context, Result

__all__ = ["contention"]

_ALLOWANCE = 10
_PROCESSES = 4
_HELD_CALLS = 20
_OVER = 40
"""The bound of case (d): above the organization's allowance, which the 429s do not name."""


def _emulator(latency: float, body: str = "full") -> list[str]:
    return [
        *["-m", "ideogram_async.testing", "--port", "0", "--latency", str(latency)],
        *["--no-upscale", "--allowance", str(_ALLOWANCE), "--allowance-body", body],
    ]


async def _held_by_another(png: bytes, latency: float, hold: float) -> tuple[int, float, int]:
    """(429s while the other held the places, seconds from their freeing to the last call, 429s)."""
    loop = asyncio.get_running_loop()
    async with Emulator(
        api_key=API_KEY, allowance=_ALLOWANCE, latency=latency, upscale=False
    ) as emulator:
        counting = CountingAllowance(LocalAllowance(_ALLOWANCE))
        async with (
            IdeogramClient(api_key=API_KEY, base_url=emulator.base_url) as other,
            IdeogramClient(api_key=API_KEY, base_url=emulator.base_url, allowance=counting) as ours,
        ):
            emulator.pause()
            others = [asyncio.create_task(other.upscale(png)) for _ in range(_ALLOWANCE)]
            await emulator.wait_places(_ALLOWANCE)
            calls = [asyncio.create_task(ours.upscale(png)) for _ in range(_HELD_CALLS)]
            await asyncio.sleep(hold)  # the other holder keeps the allowance full meanwhile
            during = len(counting.rejections)
            emulator.resume()
            await asyncio.gather(*others)
            freed = loop.time()
            await asyncio.gather(*calls)
            return during, loop.time() - freed, len(counting.rejections)


def _jobs(url: str, image: Path, calls: int, *, shared: bool, redis_url: str) -> list[RunJob]:
    key = f"bench-{uuid.uuid4().hex[:8]}"
    return [
        RunJob(
            shared=shared,
            redis_url=redis_url,
            key=key,
            base_url=url,
            image=str(image),
            count=calls // _PROCESSES,
            num_images=1,
            allowance=_ALLOWANCE,
        )
        for _ in range(_PROCESSES)
    ]


def contention(context: Context) -> Result:
    """10: refusals and wall time when others hold the organization's places."""
    sizes = context.sizes
    latency, calls, hold = sizes.contention_latency, sizes.contention_count, sizes.contention_hold
    image = context.small_png
    during, recovery, held_total = asyncio.run(_held_by_another(image.read_bytes(), latency, hold))
    runs: dict[str, list[Measurement]] = {}
    with running_redis() as redis, running_server(_emulator(latency)) as url:
        for shared in (False, True):
            jobs = _jobs(url, image, calls, shared=shared, redis_url=redis.url)
            name = "(c) 4 processes, shared" if shared else "(b) 4 processes, own"
            runs[name] = [together(run_together(jobs), calls)]
    with running_server(_emulator(latency, "no-number")) as url:
        job = RunJob(
            shared=False,
            redis_url="",
            key="",
            base_url=url,
            image=str(image),
            count=calls,
            num_images=1,
            allowance=_OVER,
        )
        runs["(d) 1 process, no number"] = [together(run_together([job]), calls)]
    ideal = calls / _ALLOWANCE * latency
    row = partial(Row, workload="10 contention")
    rows = [
        row(
            metric=f"(a) 429s per call while another holds all {_ALLOWANCE} places "
            f"for {hold:.1f} s ({_HELD_CALLS} calls; {held_total} 429s in all)",
            unit=Unit.PER_CALL,
            library=during / _HELD_CALLS,
            baseline_name="none",
            baseline=0.0,
            compare=Compare.DIFFERENCE,
            target="<= 2",
            met=during / _HELD_CALLS <= 2,
        ),
        row(
            metric="(a) seconds from the places freeing to the last call",
            unit=Unit.SECONDS,
            library=recovery,
            baseline_name="latency",
            baseline=latency,
            compare=Compare.DIFFERENCE,
            target="<= 2 s",
            met=recovery <= 2.0,
        ),
    ]
    targets = {
        "(b) 4 processes, own": (0.4, 1.5),
        "(c) 4 processes, shared": (0.0, 1.15),
        "(d) 1 process, no number": (0.05, 1.3),
    }
    for name, (refusals, wall) in targets.items():
        (run,) = runs[name]
        successes = run.requests - run.failures
        per_call = run.rejected / successes if successes else float("inf")
        rows += [
            row(
                metric=f"{name}: 429s per successful call ({calls} calls)",
                unit=Unit.PER_CALL,
                library=per_call,
                baseline_name="none",
                baseline=0.0,
                compare=Compare.DIFFERENCE,
                target=f"<= {refusals:g}",
                met=per_call <= refusals and run.failures == 0,
            ),
            row(
                metric=f"{name}: wall / ideal ({ideal:.1f} s)",
                unit=Unit.TIMES,
                library=run.wall / ideal,
                baseline_name="ideal",
                baseline=1.0,
                target=f"<= {wall:g}x",
                met=run.wall / ideal <= wall,
            ),
        ]
    return rows, runs
