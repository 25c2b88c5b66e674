"""The local allowance: weighted FIFO places, learning the bound, AIMD, released().

Deterministic: tasks are stepped with ``asyncio.sleep(0)`` and events, never timed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest

from ideogram_async import ValidationError
from ideogram_async.limits import Allowance, AllowanceChange, ChangeReason, LocalAllowance

Action = Callable[[], Awaitable[None]]


async def settle() -> None:
    """Let every runnable task run until it blocks again."""
    for _ in range(20):
        await asyncio.sleep(0)


class Holder:
    """A task that holds ``places`` until :meth:`leave` (then runs ``action`` inside the block)."""

    def __init__(self, allowance: LocalAllowance, places: int) -> None:
        self.allowance = allowance
        self.places = places
        self.entered = False
        self.action: Action | None = None
        self._leave = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.allowance.hold(self.places):
            self.entered = True
            await self._leave.wait()
            if self.action is not None:
                await self.action()

    def leave(self, action: Action | None = None) -> None:
        self.action = action
        self._leave.set()


async def holders(allowance: LocalAllowance, *places: int) -> list[Holder]:
    started = []
    for n in places:
        started.append(Holder(allowance, n))
        await settle()
    return started


async def complete_at_full_bound(allowance: LocalAllowance, times: int = 1) -> None:
    """Report completions of requests that held the whole bound (as under load)."""
    for _ in range(times):
        async with allowance.hold(allowance.limit):
            await allowance.completed()


async def cancel(holder: Holder) -> None:
    holder.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder.task


def test_local_allowance_satisfies_the_protocol() -> None:
    assert isinstance(LocalAllowance(3), Allowance)


async def test_weighted_places_wait_until_they_fit() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    a, b, c = await holders(allowance, 4, 4, 4)
    assert (a.entered, b.entered, c.entered) == (True, True, False)
    assert allowance.in_use == 8
    a.leave()
    await settle()
    assert c.entered
    assert allowance.in_use == 8
    b.leave()
    c.leave()
    await asyncio.gather(a.task, b.task, c.task)
    assert allowance.in_use == 0


async def test_a_waiter_for_many_places_is_not_overtaken_and_holds_none_while_waiting() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    first, big, small1, small2 = await holders(allowance, 8, 4, 1, 1)
    # 8 + 1 would fit, but the 4-place request came first.
    assert (first.entered, big.entered, small1.entered, small2.entered) == (
        True,
        False,
        False,
        False,
    )
    assert allowance.in_use == 8  # nothing held for the waiter
    first.leave()
    await settle()
    assert (big.entered, small1.entered, small2.entered) == (True, True, True)
    assert allowance.in_use == 6
    for h in (big, small1, small2):
        h.leave()
    await asyncio.gather(first.task, big.task, small1.task, small2.task)


async def test_cancelling_the_head_waiter_lets_the_next_ones_in() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    first, big, small = await holders(allowance, 8, 4, 1)
    assert not small.entered
    await cancel(big)
    await settle()
    assert small.entered
    assert allowance.in_use == 9
    first.leave()
    small.leave()
    await asyncio.gather(first.task, small.task)
    assert allowance.in_use == 0


async def test_cancelling_a_holder_frees_its_places_and_wakes_the_next() -> None:
    allowance = LocalAllowance(5, adaptive=False)
    holder, waiter = await holders(allowance, 5, 2)
    assert not waiter.entered
    await cancel(holder)
    await settle()
    assert waiter.entered
    assert allowance.in_use == 2
    waiter.leave()
    await waiter.task
    assert allowance.in_use == 0


async def test_a_waiter_cancelled_as_it_is_granted_gives_the_places_back() -> None:
    allowance = LocalAllowance(4, adaptive=False)
    hold = allowance.hold(4)
    await hold.__aenter__()
    granted, after = await holders(allowance, 4, 4)
    await hold.__aexit__(None, None, None)  # grants `granted` its places...
    granted.task.cancel()  # ...and it is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await granted.task
    await settle()
    assert not granted.entered
    assert after.entered
    assert allowance.in_use == 4
    after.leave()
    await after.task
    assert allowance.in_use == 0


def test_hold_refuses_more_places_than_the_maximum() -> None:
    allowance = LocalAllowance(3)
    with pytest.raises(ValidationError, match=r"4 places.*allowance of 3.*fewer images"):
        allowance.hold(4)
    for bad in (0, -1, True):
        with pytest.raises(ValidationError, match="places"):
            allowance.hold(bad)


@pytest.mark.parametrize("maximum", [0, -3, True, 2.5])
def test_the_maximum_must_be_a_positive_whole_number(maximum: object) -> None:
    with pytest.raises(ValidationError, match="whole number of places"):
        LocalAllowance(maximum)  # type: ignore[arg-type]


async def test_a_request_over_a_shrunk_bound_runs_alone() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    await allowance.rejected(3)
    assert allowance.limit == 3
    small, big, later = await holders(allowance, 1, 5, 1)
    assert (small.entered, big.entered, later.entered) == (True, False, False)
    small.leave()
    await settle()
    assert big.entered  # alone: nothing else was held
    assert not later.entered
    assert allowance.in_use == 5
    big.leave()
    await settle()
    assert later.entered
    later.leave()
    await asyncio.gather(small.task, big.task, later.task)


async def test_nothing_new_is_granted_until_the_places_in_use_fit_a_lowered_bound() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    running = await holders(allowance, 2, 2, 2, 2)
    await allowance.rejected(4)
    (waiter,) = await holders(allowance, 1)
    assert not waiter.entered
    running[0].leave()
    running[1].leave()
    await settle()
    assert allowance.in_use == 4
    assert not waiter.entered  # 4 + 1 > 4
    running[2].leave()
    await settle()
    assert waiter.entered
    running[3].leave()
    waiter.leave()
    await asyncio.gather(*(h.task for h in [*running, waiter]))


async def test_a_number_from_the_service_sets_the_bound_at_once_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ideogram_async")
    changes: list[AllowanceChange] = []
    allowance = LocalAllowance(8, adaptive=False, on_change=changes.append)
    assert allowance.limit == 8
    await allowance.rejected(3)
    await allowance.rejected(3)
    assert allowance.limit == 3
    assert changes == [AllowanceChange(old=8, new=3, reason=ChangeReason.LEARNED)]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [
        "the service reports an allowance of 3 places in flight; holding at most 3 from now on"
    ]


async def test_each_change_of_the_bound_is_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    allowance = LocalAllowance(8, adaptive=False)
    await allowance.rejected(3)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "allowance bound 8 -> 3 places (learned)" in debug


def test_a_negative_fallback_is_refused_with_its_value() -> None:
    with pytest.raises(ValidationError, match=r"fallback must be >= 0 seconds, got -0\.5"):
        LocalAllowance(4, fallback=-0.5)


async def test_a_number_above_the_maximum_never_raises_the_bound() -> None:
    changes: list[AllowanceChange] = []
    allowance = LocalAllowance(5, adaptive=False, on_change=changes.append)
    await allowance.rejected(50)
    assert allowance.limit == 5
    assert changes == []


async def test_without_adaptive_only_a_number_changes_the_bound() -> None:
    allowance = LocalAllowance(6, adaptive=False)
    await allowance.rejected(None)
    for _ in range(50):
        await allowance.completed()
    assert allowance.limit == 6


async def test_adaptive_starts_at_the_default_allowance_and_grows_until_rejected() -> None:
    changes: list[AllowanceChange] = []
    allowance = LocalAllowance(40, on_change=changes.append)
    assert allowance.limit == 10
    assert LocalAllowance(4).limit == 4
    await complete_at_full_bound(allowance, 3)
    assert allowance.limit == 13  # slow start: one place per completion
    assert [c.reason for c in changes] == [ChangeReason.INCREASED] * 3


async def test_a_bound_that_is_not_reached_does_not_grow() -> None:
    allowance = LocalAllowance(40)
    for _ in range(20):
        async with allowance.hold(12):  # 12 of 10: alone, over the bound
            pass
        async with allowance.hold(9):
            await allowance.completed()
    assert allowance.limit == 10


async def test_a_bound_holding_back_a_waiter_is_full_even_with_places_left() -> None:
    allowance = LocalAllowance(40)
    running = await holders(allowance, 4, 4)
    (waiter,) = await holders(allowance, 4)  # 8 + 4 > 10
    assert not waiter.entered
    running[0].leave(allowance.completed)
    await settle()
    assert allowance.limit == 11
    assert waiter.entered
    running[1].leave()
    waiter.leave()
    await asyncio.gather(*(h.task for h in [*running, waiter]))


async def test_simultaneous_rejections_halve_the_bound_once() -> None:
    changes: list[AllowanceChange] = []
    allowance = LocalAllowance(10, on_change=changes.append)
    burst = await holders(allowance, *[1] * 10)
    for h in burst:
        h.leave(lambda: allowance.rejected(None))
    await asyncio.gather(*(h.task for h in burst))
    assert allowance.limit == 5
    assert changes == [AllowanceChange(old=10, new=5, reason=ChangeReason.DECREASED)]
    # A request sent under the new bound counts again.
    (again,) = await holders(allowance, 1)
    again.leave(lambda: allowance.rejected(None))
    await again.task
    assert allowance.limit == 2
    # ...and a rejection reported outside any hold too.
    await allowance.rejected(None)
    await allowance.rejected(None)
    assert allowance.limit == 1  # floor


async def test_stale_rejections_after_learning_do_not_halve_the_learned_bound() -> None:
    allowance = LocalAllowance(40)
    await complete_at_full_bound(allowance, 30)
    assert allowance.limit == 40
    burst = await holders(allowance, *[1] * 40)
    for h in burst[10:]:
        h.leave(lambda: allowance.rejected(10))
    await asyncio.gather(*(h.task for h in burst[10:]))
    assert allowance.limit == 10
    for h in burst[:10]:
        h.leave()
    await asyncio.gather(*(h.task for h in burst[:10]))
    # A fresh rejection although the bound fits the allowance: someone else holds places.
    (fresh,) = await holders(allowance, 1)
    fresh.leave(lambda: allowance.rejected(10))
    await fresh.task
    assert allowance.limit == 5


async def test_a_smaller_number_applies_even_from_a_request_sent_before_a_decrease() -> None:
    allowance = LocalAllowance(10)
    early, late = await holders(allowance, 1, 1)
    late.leave(lambda: allowance.rejected(None))
    await late.task
    assert allowance.limit == 5
    early.leave(lambda: allowance.rejected(2))
    await early.task
    assert allowance.limit == 2


async def test_after_a_decrease_the_bound_regrows_fast_then_by_one_per_round() -> None:
    allowance = LocalAllowance(10)
    async with allowance.hold(10):  # refused with all 10 places in use
        await allowance.rejected(None)
    assert allowance.limit == 5
    for expected in (6, 7, 8, 9):  # back to just under the places refused, one per completion
        await complete_at_full_bound(allowance)
        assert allowance.limit == expected
    await complete_at_full_bound(allowance, 8)
    assert allowance.limit == 9
    await complete_at_full_bound(allowance)  # the 9th completion at 9
    assert allowance.limit == 10
    await complete_at_full_bound(allowance, 30)
    assert allowance.limit == 10  # never above the maximum


async def test_after_a_decrease_fast_regrowth_stops_under_the_places_that_were_refused() -> None:
    allowance = LocalAllowance(10)
    async with allowance.hold(7):  # refused with 7 places in use (the bound was 10)
        await allowance.rejected(None)
    assert allowance.limit == 5
    await complete_at_full_bound(allowance)
    assert allowance.limit == 6  # just under 7
    await complete_at_full_bound(allowance, 5)
    assert allowance.limit == 6
    await complete_at_full_bound(allowance)
    assert allowance.limit == 7


async def test_the_learned_allowance_caps_additive_increase() -> None:
    allowance = LocalAllowance(40)
    await allowance.rejected(12)  # 10 < 12: someone else holds places
    assert allowance.limit == 5
    await complete_at_full_bound(allowance, 200)
    assert allowance.limit == 12


async def test_growing_the_bound_lets_waiters_in() -> None:
    allowance = LocalAllowance(12)
    running = await holders(allowance, 5, 5)
    (waiter,) = await holders(allowance, 1)
    assert allowance.limit == 10
    assert not waiter.entered
    await allowance.completed()
    await settle()
    assert waiter.entered
    for h in [*running, waiter]:
        h.leave()
    await asyncio.gather(*(h.task for h in [*running, waiter]))


async def test_a_failing_hook_is_logged_and_the_change_still_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(change: AllowanceChange) -> None:
        raise RuntimeError("dashboard down")

    allowance = LocalAllowance(10, adaptive=False, on_change=hook)
    await allowance.rejected(4)
    assert allowance.limit == 4
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "the allowance's on_change hook failed"
    ]


async def test_released_returns_on_a_release_after_the_call() -> None:
    allowance = LocalAllowance(10, fallback=3600)
    first, second = await holders(allowance, 1, 1)
    first.leave()
    await first.task  # released before the call: does not count
    waiting = asyncio.create_task(allowance.released())
    await settle()
    assert not waiting.done()
    second.leave()
    await second.task
    await settle()
    assert waiting.done()
    await waiting


async def test_released_returns_after_the_fallback_when_nothing_is_released() -> None:
    allowance = LocalAllowance(10, fallback=0)
    (holder,) = await holders(allowance, 1)
    await allowance.released()  # places held elsewhere may have gone: not forever
    assert allowance.in_use == 1
    holder.leave()
    await holder.task


@pytest.mark.parametrize("seed", range(20))
async def test_random_schedules_keep_the_bound_fifo_order_and_no_lost_wakeups(seed: int) -> None:
    rng = random.Random(seed)
    allowance = LocalAllowance(8, adaptive=rng.random() < 0.7, fallback=3600)
    pending: list[Holder] = []  # asked, neither entered nor cancelled
    inside: list[Holder] = []
    entries: list[int] = []  # request numbers, in the order they entered
    numbers: dict[int, int] = {}
    violations: list[str] = []

    def check() -> None:
        held = sum(h.places for h in inside)
        assert allowance.in_use == held
        if pending:
            head = pending[0].places
            fits = held == 0 or held + head <= allowance.limit
            assert not fits, f"a waiter that fits was left waiting ({held}+{head})"

    def step() -> None:
        for h in list(pending):
            if h.entered:
                pending.remove(h)
                inside.append(h)
                entries.append(numbers[id(h)])
                held = sum(x.places for x in inside)
                if held > allowance.limit and held != h.places:
                    violations.append(f"{held} in use over a bound of {allowance.limit}")

    for n in range(300):
        choice = rng.random()
        if choice < 0.4:
            h = Holder(allowance, rng.randint(1, 8))
            numbers[id(h)] = n
            pending.append(h)
        elif choice < 0.75 and inside:
            h = inside.pop(rng.randrange(len(inside)))
            verdict = rng.random()
            if verdict < 0.1:
                h.leave(lambda: allowance.rejected(rng.randint(1, 10)))
            elif verdict < 0.3:
                h.leave(lambda: allowance.rejected(None))
            else:
                h.leave(allowance.completed)
            await settle()
            await h.task
        elif choice < 0.85 and pending:
            h = pending.pop(rng.randrange(len(pending)))
            h.task.cancel()
            await settle()
            if h.entered:  # it had already been let in before the cancel landed
                entries.append(numbers[id(h)])
            with pytest.raises(asyncio.CancelledError):
                await h.task
        elif inside:
            h = inside.pop(rng.randrange(len(inside)))
            await cancel(h)
        await settle()
        step()
        check()
    assert violations == []
    assert entries == sorted(entries)
    while inside or pending:
        for h in inside:
            h.leave()
        await settle()
        for h in inside:
            await h.task
        inside.clear()
        step()
        check()
    assert allowance.in_use == 0


def test_the_fallback_wait_defaults_to_half_a_second() -> None:
    assert LocalAllowance(4)._fallback == 0.5


async def test_after_a_decrease_the_bound_grows_by_one_per_full_round() -> None:
    allowance = LocalAllowance(20)  # starts at 10, below its maximum
    async with allowance.hold(1):
        await allowance.rejected(None)  # in the same round: halves, to 5
    assert allowance.limit == 5
    # One place was in use when refused, so 5 is past the slow start: a round of 5.
    await complete_at_full_bound(allowance, 4)
    assert allowance.limit == 5
    await complete_at_full_bound(allowance, 1)
    assert allowance.limit == 6


async def test_each_round_halves_the_bound_once() -> None:
    allowance = LocalAllowance(40)  # starts at 10
    first = Holder(allowance, 1)
    await settle()
    first.leave(lambda: allowance.rejected(None))  # round 0: 10 -> 5
    await first.task
    assert allowance.limit == 5
    second, third = await holders(allowance, 1, 1)  # both granted in round 1
    second.leave(lambda: allowance.rejected(None))  # round 1: 5 -> 2
    await second.task
    third.leave(lambda: allowance.rejected(None))  # still round 1: the same overload
    await third.task
    assert allowance.limit == 2


def test_only_an_adaptive_bound_starts_at_ten() -> None:
    assert (LocalAllowance(20).limit, LocalAllowance(20, adaptive=False).limit) == (10, 20)
    assert LocalAllowance(4).limit == 4
