"""The local allowance: weighted FIFO places, the bound's rules applied, refusals that wake nobody.

Deterministic: tasks are stepped with ``asyncio.sleep(0)`` and events, never timed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest

from ideogram_async import RateLimitError, ServerError, ValidationError
from ideogram_async.limits import (
    Allowance,
    AllowanceChange,
    AllowanceWrapper,
    ChangeReason,
    LocalAllowance,
    Refusals,
)

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
        self.inside = asyncio.Event()
        self.action: Action | None = None
        self._leave = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.allowance.hold(self.places):
            self.entered = True
            self.inside.set()
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


async def learn(allowance: LocalAllowance, number: int) -> None:
    """A 429 naming ``number`` for a request sent with more places held: explained, no backoff."""
    async with allowance.hold(number + 1):
        await allowance.rejected(number)


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


async def test_a_waiter_cancelled_as_places_free_up_leaves_and_the_next_gets_in() -> None:
    allowance = LocalAllowance(2, adaptive=False)
    (holder,) = await holders(allowance, 2)
    waiter, last = await holders(allowance, 1, 1)
    holder.leave()  # its release looks at the queue first...
    waiter.task.cancel()  # ...and finds the head cancelled: it drops it and lets the next in
    await holder.task
    assert last.entered  # at that release, not once the cancelled one's task ran
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    await settle()
    assert last.entered
    assert allowance.in_use == 1
    last.leave()
    await last.task


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
    with pytest.raises(ValidationError) as caught:
        allowance.hold(4)
    assert str(caught.value) == (
        "a request for 4 images needs 4 places in flight, more than the allowance of 3; "
        "ask for fewer images per request or raise the allowance (if your organization's "
        "is higher)"
    )
    for bad in (0, -1, True):
        with pytest.raises(ValidationError, match="places"):
            allowance.hold(bad)


@pytest.mark.parametrize("maximum", [0, -3, True, 2.5])
def test_the_maximum_must_be_a_positive_whole_number(maximum: object) -> None:
    with pytest.raises(ValidationError) as caught:
        LocalAllowance(maximum)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"the allowance must be a whole number of places >= 1, got {maximum!r}; pass the "
        "number of images your organization may have in flight (default 10)"
    )


@pytest.mark.parametrize("forget_after", [0, -1.0, float("nan")])
def test_forgetting_needs_a_positive_number_of_seconds(forget_after: float) -> None:
    with pytest.raises(ValidationError) as caught:
        LocalAllowance(10, forget_after=forget_after)
    assert str(caught.value) == f"forget_after must be > 0 seconds, got {forget_after!r}"


async def test_a_request_over_a_shrunk_bound_runs_alone() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    await learn(allowance, 3)
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
    expected = [
        "the service reports an allowance of 3 places in flight; holding at most 3 from now on"
    ]
    for _ in range(3):
        await learn(allowance, 3)
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert infos == expected  # logged when learned, not again
    assert allowance.limit == 3
    assert changes == [AllowanceChange(old=8, new=3, reason=ChangeReason.LEARNED)]


async def test_each_change_of_the_bound_is_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    allowance = LocalAllowance(8, adaptive=False)
    await learn(allowance, 3)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "allowance bound 8 -> 3 places (learned)" in debug


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


async def test_slow_start_doubles_the_bound_per_round_trip() -> None:
    allowance = LocalAllowance(64)
    waiting = await holders(allowance, *[1] * 200)
    bounds = []
    for _ in range(4):  # a round trip: the requests running now finish, in grant order
        running = [holder for holder in waiting if holder.entered]
        waiting = [holder for holder in waiting if not holder.entered]
        for holder in running:
            holder.leave(allowance.completed)
            await holder.task
        bounds.append(allowance.limit)
    assert bounds == [11, 22, 44, 64]  # judged by the bound now: 11, 12, 13, 14
    for holder in waiting:
        holder.task.cancel()
    await asyncio.gather(*(holder.task for holder in waiting), return_exceptions=True)


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
    running = await holders(allowance, 4, 4)  # granted with 4, then 8 in use
    (waiter,) = await holders(allowance, 4)  # 8 + 4 > 10
    assert not waiter.entered
    running[1].leave(allowance.completed)  # granted with 8: the waiter did not fit beside
    await settle()
    assert allowance.limit == 11
    assert waiter.entered
    running[0].leave(allowance.completed)  # granted with 4 in use: 4 + 4 fit, not full
    await settle()
    assert allowance.limit == 11
    waiter.leave()
    await asyncio.gather(*(h.task for h in [*running, waiter]))


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


@pytest.mark.parametrize("seed", range(20))
async def test_random_schedules_keep_the_bound_fifo_order_and_no_lost_wakeups(seed: int) -> None:
    rng = random.Random(seed)
    allowance = LocalAllowance(8, adaptive=rng.random() < 0.7)
    refused = False  # since a refusal gave places back, a waiter may wait for a release
    pending: list[Holder] = []  # asked, neither entered nor cancelled
    inside: list[Holder] = []
    entries: list[int] = []  # request numbers, in the order they entered
    numbers: dict[int, int] = {}
    violations: list[str] = []

    def check() -> None:
        held = sum(h.places for h in inside)
        assert allowance.in_use == held
        if pending and not refused:
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
            # A refusal with a number under the places held: explained, so no backoff.
            refused = rng.random() < 0.3 and allowance.in_use > 1
            if refused:
                h.leave(lambda: allowance.rejected(rng.randint(1, allowance.in_use - 1)))
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
            refused = False
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


def test_only_an_adaptive_bound_starts_at_ten() -> None:
    assert (LocalAllowance(20).limit, LocalAllowance(20, adaptive=False).limit) == (10, 20)
    assert LocalAllowance(4).limit == 4


async def test_places_given_back_by_a_refusal_wake_nobody() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    first, second = await holders(allowance, 5, 5)
    (waiter,) = await holders(allowance, 5)
    first.leave(lambda: allowance.rejected(8))  # 10 held > 8: its own holdings explain it
    await first.task
    await settle()
    assert (allowance.in_use, allowance.limit) == (5, 8)
    assert not waiter.entered  # 5 + 5 > 8 anyway; and a refusal is not a completion
    second.leave(allowance.completed)  # a real release
    await settle()
    assert waiter.entered
    waiter.leave()
    await waiter.task


async def test_a_refusal_that_returns_places_under_the_bound_still_wakes_nobody() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    first, second = await holders(allowance, 6, 3)
    (waiter,) = await holders(allowance, 2)  # 9 + 2 > 10
    second.leave(lambda: allowance.rejected(7))  # 9 > 7: explained; 6 held, bound 7
    await second.task
    await settle()
    assert allowance.in_use == 6
    assert not waiter.entered  # 6 + 2 > 7: and it would not have been woken either way
    first.leave(allowance.completed)
    await settle()
    assert waiter.entered
    waiter.leave()
    await waiter.task


async def test_a_refusal_others_explain_closes_the_allowance_until_the_backoff_ends() -> None:
    allowance = LocalAllowance(10)
    (running,) = await holders(allowance, 1)
    async with allowance.hold(1):
        await allowance.rejected(10)  # 2 held of 10: others hold 8
    assert allowance.limit == 1
    (waiter,) = await holders(allowance, 1)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    running.leave()  # a release while closed lets nobody in
    await running.task
    await settle()
    assert not waiter.entered
    async with asyncio.timeout(5):
        await waiter.inside.wait()
    assert loop.time() - asked >= 0.125  # half the first backoff at least
    waiter.leave()
    await waiter.task


async def test_an_allowance_closed_during_a_backoff_still_reopens_when_used_again() -> None:
    allowance = LocalAllowance(10)
    (running,) = await holders(allowance, 1)
    async with allowance.hold(1):
        await allowance.rejected(10)  # others hold places: closed for a backoff
    (waiter,) = await holders(allowance, 1)
    await allowance.aclose()  # its backoff timer stops; the allowance stays usable
    assert not waiter.entered
    running.leave()  # a release looks at the waiters again, and times the backoff anew
    await running.task
    async with asyncio.timeout(5):
        await waiter.inside.wait()
    waiter.leave()
    await waiter.task


async def test_a_refused_request_gives_its_places_back_at_once() -> None:
    allowance = LocalAllowance(10, adaptive=False)
    async with allowance.hold(3):
        await allowance.rejected(None)
        assert allowance.in_use == 0  # not held until the block ends
    assert allowance.in_use == 0


async def test_a_report_from_another_allowances_hold_is_not_that_holds() -> None:
    a, b = LocalAllowance(10), LocalAllowance(10)
    (other,) = await holders(b, 3)  # b: 3 places held by another task
    async with a.hold(4):
        await b.rejected(None)  # reported inside a's hold: b refused none of its own
        assert (a.in_use, b.in_use, b.limit) == (4, 3, 3)  # b: down to what it holds
        await b.rejected(None)  # again, in b's own round: a repeat, halved
        assert b.limit == 1
    assert a.in_use == 0
    other.leave()
    await other.task
    assert b.in_use == 0


async def test_a_failed_probe_steps_back_to_the_level_that_went_through() -> None:
    allowance = LocalAllowance(40)
    await complete_at_full_bound(allowance, 2)  # slow start: 10, 11 went through; now 12
    assert allowance.limit == 12
    (other,) = await holders(allowance, 1)
    async with allowance.hold(11):
        await allowance.rejected(None)  # 12 held, above the 11 that went through
    assert allowance.limit == 11
    other.leave()
    await other.task


async def test_a_hold_after_a_quiet_spell_finds_what_was_learned_forgotten() -> None:
    allowance = LocalAllowance(10, forget_after=0.05)  # fractions of a second are taken
    await learn(allowance, 3)
    assert allowance.limit == 3
    await asyncio.sleep(0.06)  # the event under test: time passing without a change
    async with allowance.hold(1):
        assert allowance.limit == 10  # the hold found it forgotten


async def test_a_request_that_went_through_opens_the_allowance_at_once() -> None:
    allowance = LocalAllowance(10)
    first, second = await holders(allowance, 1, 1)
    first.leave(lambda: allowance.rejected(10))  # others hold places: closed for a backoff
    await first.task
    (waiter,) = await holders(allowance, 1)
    assert not waiter.entered
    second.leave(allowance.completed)  # but this one went through
    await settle()
    assert waiter.entered
    waiter.leave()
    await waiter.task


def test_refusals_by_reason_add_the_unraised_ones_as_inflight_limit() -> None:
    refusals = Refusals()
    refusals.saw(RateLimitError("gateway", status=429))
    refusals.saw(RateLimitError("full", status=429, reject_reason="inflight_limit"))
    refusals.saw(ServerError("not a refusal", status=503))
    refusals.saw(None)
    assert refusals.by_reason(5) == {"unknown": 1, "inflight_limit": 4}
    assert refusals.by_reason(2) == {"unknown": 1, "inflight_limit": 1}
    # An allowance that heard of fewer (or none: not watched) adds nothing.
    assert refusals.by_reason(0) == {"unknown": 1, "inflight_limit": 1}


def test_refusals_count_each_raised_429_and_add_only_the_unraised() -> None:
    refusals = Refusals()
    for _ in range(3):
        refusals.saw(RateLimitError("gateway", status=429))
    assert refusals.by_reason(3) == {"unknown": 3}  # every one heard of was raised
    assert refusals.by_reason(4) == {"unknown": 3, "inflight_limit": 1}


class Watching(AllowanceWrapper):
    """A watcher of another allowance, as a subclass writes one: it notes the numbers heard."""

    def __init__(self, inner: Allowance) -> None:
        super().__init__(inner)
        self.heard: list[int | None] = []

    async def rejected(self, allowance: int | None) -> None:
        self.heard.append(allowance)
        await super().rejected(allowance)


async def test_a_wrapper_passes_holds_and_reports_on_to_the_allowance_it_watches() -> None:
    inner = LocalAllowance(8, adaptive=False)
    watching = Watching(inner)
    assert isinstance(watching, Allowance)
    assert repr(watching) == f"Watching({inner!r})"
    async with watching.hold(3):
        assert (watching.in_use, inner.in_use) == (3, 3)
        await watching.rejected(5)  # the number reaches the inner allowance
    assert watching.heard == [5]
    assert (watching.limit, watching.maximum, inner.limit, inner.in_use) == (5, 8, 5, 0)
    async with watching.hold(5):
        assert inner.in_use == 5  # the whole hold, on the inner allowance
        await watching.completed()
    await watching.aclose()
