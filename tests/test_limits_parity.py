"""One table of events, two allowances: LocalAllowance and RedisAllowance (on a real
redis-server) must show the same bound after each step.

The steps are what the client reports: a hold admitted, a request that ran (by default
the most recently admitted one, so it was granted with the most places in use; its
argument counts back from there), a 429 with the organization's number or without one,
time passing (the bound is forgotten after ``FORGET`` seconds without a change: that step
sleeps, time passing is the event), and a refusal while places of the organization are
held elsewhere, a request given up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from ideogram_async.limits import Allowance, LocalAllowance, RedisAllowance
from ideogram_async.testing import RedisServer

FORGET = 1.0

Step = tuple[str, int | None, int]
"""(event, argument, the bound expected after it).

The argument of ``admit`` is how many holds; of ``complete``, which open hold ran (1: the
most recently admitted, 2: the one before it, ...); of ``refuse``, the number in the 429.
"""

STEPS: list[Step] = [
    ("admit", 10, 10),  # the adaptive start: 10 places
    ("complete", 2, 10),  # the 9th admitted: granted with 9 in use under 10, not full
    ("admit", 1, 10),  # 10 in use again: this one too fills the bound of 10
    ("complete", 1, 11),  # slow start: granted with all 10 in use, so +1
    ("complete", 1, 12),  # the same at its grant, though the bound is 11 now: +1 again
    ("admit", 3, 12),  # 8 + 3 = 11 in use
    ("refuse", 10, 10),  # 11 held > 10: learned, no backoff
    ("complete", 1, 10),  # at the number: it never grows above it
    ("refuse", 10, 8),  # 9 held < 10: others hold places (same round: fresh), down to 8
    ("complete", 1, 8),  # went through: the backoff ends; 7 held
    ("refuse", None, 6),  # 7 held, granted in an earlier round: down to what is held
    ("refuse", None, 5),  # the same: stale refusals only lower to what is held
    ("complete", 1, 5),  # went through: the backoff ends; 4 held
    ("admit", 1, 5),  # 5 in use, granted in this round
    ("refuse", None, 4),  # fresh, 5 held, 5 went through: others hold places, down to 4
    ("drop", 1, 4),  # a request given up (no answer): its place freed, nothing learned
    ("admit", 1, 4),  # 4 in use (once the backoff passed), granted in the new round
    ("refuse", None, 2),  # again with no success between: halved
    ("complete", 1, 2),  # granted before the halving: counts for the run (1), but not
    ("complete", 1, 2),  # as a level that went through now (run 2 of 2 x 2: the probe
    ("complete", 1, 2),  # of step 4 failed); granted with 1 in use: not full, no count
    ("admit", 2, 2),  # 2 in use, granted in this round
    ("complete", 1, 2),  # run 3; 2 went through
    ("admit", 1, 2),
    ("complete", 1, 3),  # run 4: a probe one place higher
    ("admit", 2, 3),  # 3 in use
    ("complete", 1, 3),  # 3 went through: the run is 3 again
    ("admit", 1, 3),
    ("complete", 1, 3),  # run 2
    ("admit", 1, 3),
    ("complete", 1, 4),  # run 3: a probe
    ("admit", 2, 4),  # 4 in use
    ("refuse", None, 3),  # 4 > the 3 that went through: a failed probe, back to 3
    ("complete", 1, 3),  # the three left, granted in earlier rounds: the run is 3 of 6
    ("complete", 1, 3),
    ("complete", 1, 3),
    ("admit", 1, 3),
    ("refuse", 10, 1),  # 1 held, its own: others hold the 10, nothing is left here
    ("admit", 1, 1),  # (once the backoff passed)
    ("complete", 1, 2),  # nothing was left: slow start again, +1 per request at full use
    ("admit", 2, 2),
    ("complete", 1, 3),  # granted at full use of 2: +1 (probing would need a run of 2)
    ("admit", 2, 3),  # 3 in use
    ("complete", 1, 4),  # granted at full use of 3: +1 again
    ("admit", 2, 4),  # 4 in use
    ("refuse", None, 3),  # 4 > the 3 that went through: a failed probe at 4, back to 3
    ("complete", 1, 3),  # granted in earlier rounds: the run is 1 of 2 x 3
    ("complete", 1, 3),
    ("complete", 1, 3),
    ("admit", 3, 3),
    ("complete", 1, 3),  # run 2
    ("admit", 1, 3),
    ("complete", 1, 3),
    ("admit", 1, 3),
    ("complete", 1, 3),
    ("admit", 1, 3),
    ("complete", 1, 3),  # run 5
    ("admit", 1, 3),
    ("complete", 1, 4),  # run 6: a probe at 4 again
    ("admit", 2, 4),  # 4 in use, as when the probe failed
    ("complete", 1, 5),  # 4 went through: the others left, slow start again (+1)
    ("admit", 2, 5),
    ("complete", 1, 6),  # granted at full use of 5: +1 (probing would need a run of 5)
    ("wait", None, 6),  # the hour (here FORGET) passes without a change...
    ("admit", 1, 10),  # ...and the next event finds everything forgotten: start again
]


@asynccontextmanager
async def allowances(url: str, key: str) -> AsyncIterator[list[Allowance]]:
    async with RedisAllowance(url, 20, key=key, lease=5, forget_after=FORGET) as shared:
        local = LocalAllowance(20, forget_after=FORGET)
        yield [local, shared]
        await local.aclose()


class Driver:
    """Holds places in tasks and reports for them from inside their blocks."""

    def __init__(self, allowance: Allowance) -> None:
        self.allowance = allowance
        self.open: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
        self.action = "complete"

    async def admit(self, count: int) -> None:
        for _ in range(count):
            entered, leave = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(self._hold(entered, leave))
            async with asyncio.timeout(10):
                await entered.wait()
            self.open.append((leave, task))

    async def _hold(self, entered: asyncio.Event, leave: asyncio.Event) -> None:
        async with self.allowance.hold(1):
            entered.set()
            await leave.wait()
            await self.report()

    async def report(self) -> None:
        if self.action == "complete":
            await self.allowance.completed()
        elif self.action != "drop":
            await self.allowance.rejected(None if self.action == "None" else int(self.action))

    async def finish(self, action: str, back: int = 1) -> None:
        """The ``back``-th most recently admitted hold reports ``action`` and leaves."""
        leave, task = self.open.pop(-back)
        self.action = action
        leave.set()
        await task

    async def close(self) -> None:
        while self.open:
            await self.finish("complete")


async def test_local_and_shared_allowances_follow_the_same_rules(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with allowances(redis_server.url, redis_key) as (local, shared):
        drivers = [Driver(local), Driver(shared)]
        for number, (event, argument, expected) in enumerate(STEPS):
            if event == "wait":
                await asyncio.sleep(FORGET * 1.2)
            for driver in drivers:
                if event == "admit":
                    assert argument is not None
                    await driver.admit(argument)
                elif event == "complete":
                    assert argument is not None
                    await driver.finish("complete", argument)
                elif event == "drop":
                    await driver.finish("drop")
                elif event == "refuse":
                    await driver.finish(str(argument))
            bounds = [local.limit, shared.limit]
            assert bounds == [expected, expected], f"step {number} {event} {argument}: {bounds}"
        for driver in drivers:
            await driver.close()


@pytest.mark.parametrize("maximum", [4, 20])
async def test_both_start_where_the_rules_say(
    redis_server: RedisServer, redis_key: str, maximum: int
) -> None:
    async with RedisAllowance(redis_server.url, maximum, key=redis_key) as shared:
        assert shared.limit == LocalAllowance(maximum).limit == min(maximum, 10)
