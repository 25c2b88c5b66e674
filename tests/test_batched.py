"""Batched: the blocking calls of one loop turn share one worker-thread hop."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import pytest

from ideogram_async._batched import Batched


def _double(value: int) -> int:
    if value < 0:
        raise ValueError(f"negative: {value}")
    return 2 * value


async def test_the_calls_of_one_turn_share_a_hop_each_with_its_own_result(
    hops: list[object],
) -> None:
    batched = Batched(_double, most=16)
    results = await asyncio.gather(*(batched(value) for value in range(10)))
    assert results == [2 * value for value in range(10)]
    assert len(hops) == 1


async def test_a_hop_takes_at_most_most_calls(hops: list[object]) -> None:
    batched = Batched(_double, most=4)
    assert await asyncio.gather(*(batched(value) for value in range(10))) == [
        2 * value for value in range(10)
    ]
    # Each hop is handed its calls: (argument, future) pairs.
    batches = cast("list[tuple[list[tuple[int, object]]]]", hops)
    assert [[arg for arg, _ in batch] for (batch,) in batches] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


async def test_a_later_turn_takes_a_hop_of_its_own(hops: list[object]) -> None:
    batched = Batched(_double, most=16)
    assert await batched(1) == 2
    assert await batched(2) == 4
    assert len(hops) == 2


async def test_an_exception_reaches_only_the_call_that_raised_it(hops: list[object]) -> None:
    batched = Batched(_double, most=16)
    results = await asyncio.gather(batched(1), batched(-3), batched(5), return_exceptions=True)
    assert results[0] == 2
    assert results[2] == 10
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "negative: -3"
    assert len(hops) == 1


async def test_a_cancelled_call_is_dropped_and_the_others_of_its_hop_still_answered() -> None:
    started, go = threading.Event(), threading.Event()

    def slow(value: int) -> int:
        started.set()
        go.wait(10)
        return _double(value)

    batched = Batched(slow, most=16)
    doomed = asyncio.ensure_future(batched(-1))  # would raise: nobody may be left to see it
    kept = asyncio.ensure_future(batched(4))
    await asyncio.to_thread(started.wait, 10)
    doomed.cancel()
    go.set()
    assert await kept == 8
    assert doomed.cancelled()


async def test_a_loop_whose_executor_is_shut_down_raises_for_each_call() -> None:
    loop = asyncio.get_running_loop()
    await loop.shutdown_default_executor()
    batched = Batched(_double, most=16)
    calls = [batched(1), batched(2)]
    for call in calls:
        with pytest.raises(RuntimeError, match="shutdown"):
            await call


async def test_loops_of_two_threads_keep_their_calls_apart() -> None:
    batched = Batched(_double, most=16)
    mine = batched(3)  # queued on this loop; its hop waits for this loop's next turn
    theirs: list[int] = []

    async def other() -> None:
        # With one queue for both threads this call would join ours and never be sent
        # (this loop is blocked below until the thread ends).
        theirs.append(await asyncio.wait_for(batched(7), 10))

    thread = threading.Thread(target=lambda: asyncio.run(other()))
    thread.start()
    thread.join(20)  # blocks this loop: its queued call cannot be sent meanwhile
    assert theirs == [14]
    assert await mine == 6


def test_a_loop_that_stopped_before_its_hop_leaves_nothing_to_the_next() -> None:
    batched = Batched(_double, most=16)
    first = asyncio.new_event_loop()
    stranded: list[asyncio.Future[int]] = []

    def queue_then_stop() -> None:
        stranded.append(batched(1))
        first.stop()  # the loop ends with this turn: the call's hop is never sent

    first.call_soon(queue_then_stop)
    first.run_forever()
    first.close()
    assert not stranded[0].done()

    async def later() -> int:
        return await asyncio.wait_for(batched(2), 10)

    assert asyncio.run(later()) == 4


async def test_a_call_cancelled_before_its_turn_does_no_work(hops: list[object]) -> None:
    done: list[int] = []

    def record(value: int) -> int:
        done.append(value)
        return value

    batched = Batched(record, most=16)
    calls = [batched(value) for value in range(3)]
    calls[1].cancel()  # before the loop turn ends: its hop has not started
    assert await calls[0] == 0
    assert await calls[2] == 2
    assert done == [0, 2]
    assert len(hops) == 1
