"""The allowance over a real socket: the client against the emulator's allowance mode."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ideogram_async import (
    APITimeoutError,
    IdeogramClient,
    LocalAllowance,
    PaymentRequiredError,
    RateLimitError,
    RetryPolicy,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async._attempt import hold_and_send
from ideogram_async.retry import counting_attempts
from ideogram_async.testing import (
    AllowanceBody,
    CountingAllowance,
    Emulator,
    Fault,
    FaultPlan,
    instant_retries,
)
from ideogram_async.v2 import TopazWonder35

from ._support import KEY, make_image


async def attempts_of(call: Awaitable[object]) -> int:
    """How many attempts ``call`` made (its own task's count)."""
    with counting_attempts() as tally:
        await call
    return tally.attempts


PNG = make_image("png", (4, 4))


@pytest.fixture(autouse=True)
def _instant() -> Any:
    with instant_retries():
        yield


async def until(counting: CountingAllowance, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        await counting.until(condition)


def request(images: int = 1) -> UpscaleRequest:
    return UpscaleRequest(num_images=images)


@asynccontextmanager
async def served(
    allowance: int | None = None, body: AllowanceBody = "full", **options: Any
) -> AsyncIterator[Emulator]:
    async with Emulator(
        api_key=KEY, upscale=False, allowance=allowance, allowance_body=body, **options
    ) as emulator:
        yield emulator


def client_of(emulator: Emulator, allowance: Any, **options: Any) -> IdeogramClient:
    return IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=allowance, **options)


async def test_an_upscale_holds_num_images_places_and_waits_whole(  # weighted places
) -> None:
    watched = CountingAllowance(LocalAllowance(10, adaptive=False))
    async with served() as emulator, client_of(emulator, watched) as client:
        emulator.pause()
        calls = [asyncio.create_task(client.upscale(PNG, request(4))) for _ in range(3)]
        await until(watched, lambda: watched.asked == 3)
        await emulator.wait_places(8)
        assert client.allowance.in_use == 8  # the third holds nothing while it waits
        assert emulator.stats.requests == 2
        emulator.resume()
        responses = await asyncio.gather(*calls)
    assert [len(r.data) for r in responses] == [4, 4, 4]
    assert emulator.stats.peak_places_in_use == 8
    assert client.allowance.in_use == 0


async def test_a_large_request_is_not_overtaken_by_later_small_ones() -> None:  # FIFO
    watched = CountingAllowance(LocalAllowance(4, adaptive=False))
    async with served() as emulator, client_of(emulator, watched) as client:
        emulator.pause()
        first = asyncio.create_task(client.upscale(PNG, request(3)))
        await emulator.wait_places(3)
        large = asyncio.create_task(client.upscale(PNG, request(4)))
        await until(watched, lambda: watched.asked == 2)
        small = [asyncio.create_task(client.upscale(PNG, request(1))) for _ in range(2)]
        await until(watched, lambda: watched.asked == 4)
        assert emulator.stats.requests == 1  # 3 + 1 fits, yet the small ones wait their turn
        emulator.resume()
        await asyncio.gather(first, large, *small)
    arrivals = [upload.fields.get("num_images") for upload in emulator.stats.uploads]
    assert arrivals == [3, 4, 1, 1]
    assert emulator.stats.peak_places_in_use == 4


async def test_the_allowance_in_the_429_body_is_learned_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    watched = CountingAllowance(LocalAllowance(10))
    async with served(allowance=3) as emulator, client_of(emulator, watched) as client:
        emulator.pause()
        burst = [asyncio.create_task(client.upscale(PNG)) for _ in range(10)]
        await until(watched, lambda: len(watched.rejections) == 7)
        assert watched.rejections == [3] * 7
        assert client.allowance.limit == 3
        emulator.resume()
        first = await asyncio.gather(*burst)
        assert emulator.stats.rejected_over_allowance == 7
        # Every call went through in one attempt: waiting for a place is not a retry.
        more = [attempts_of(client.upscale(PNG)) for _ in range(30)]
        results = await asyncio.gather(*more)
    assert len(first) == 10
    assert results == [1] * 30
    assert emulator.stats.rejected_over_allowance == 7  # none once the bound was learned
    assert emulator.stats.peak_places_in_use == 3
    assert emulator.stats.responses_by_status == {200: 40, 429: 7}
    waits = [r.getMessage() for r in caplog.records if "waiting for a place" in r.getMessage()]
    assert len(waits) == 7
    assert re.fullmatch(
        r"upscale image\.png: the allowance is full \(HTTP 429: .+\); waiting for a place",
        waits[0],
    )


async def test_without_the_number_the_bound_adapts_to_the_allowance() -> None:
    bounds: list[int] = []
    allowance = LocalAllowance(10, on_change=lambda change: bounds.append(change.new))
    async with (
        served(allowance=3, body="no-number", latency=0.002) as emulator,
        client_of(emulator, allowance) as client,
    ):
        results = await asyncio.gather(*(attempts_of(client.upscale(PNG)) for _ in range(120)))
    assert results == [1] * 120
    # Down to the allowance, then around it (probe and hold). How many increases come
    # before the first refusal depends on scheduling, so only the shape is asserted.
    assert min(bounds) <= 3, bounds
    assert 2 <= statistics.median(bounds[len(bounds) // 2 :]) <= 5, bounds
    rejected = emulator.stats.rejected_over_allowance
    assert 0 < rejected < 60, rejected
    assert emulator.stats.peak_places_in_use == 3


async def test_a_429_without_a_body_adapts_and_is_retried_with_backoff() -> None:
    watched = CountingAllowance(LocalAllowance(2))
    async with (
        served(allowance=1, body="empty") as emulator,
        client_of(emulator, watched) as client,
    ):
        emulator.pause()
        held = asyncio.create_task(attempts_of(client.upscale(PNG)))
        await emulator.wait_places(1)
        other = asyncio.create_task(attempts_of(client.upscale(PNG)))
        await until(watched, lambda: watched.asked == 3)  # rejected, retried, waits for a place
        assert watched.rejections == [None]
        assert client.allowance.limit == 1
        emulator.resume()
        first, second = await asyncio.gather(held, other)
    assert (first, second) == (1, 2)  # the retry used an attempt
    assert emulator.stats.rejected_over_allowance == 1


async def test_a_request_larger_than_the_named_allowance_fails_at_once() -> None:
    async with served(allowance=2) as emulator, client_of(emulator, 10) as client:
        with pytest.raises(RateLimitError, match=r"needs 4 places.*allowance of 2") as info:
            await client.upscale(PNG, request(4))
    assert (info.value.reject_reason, info.value.allowance, info.value.attempts) == (
        "inflight_limit",
        2,
        1,
    )
    assert (info.value.status, info.value.should_retry) == (429, False)
    assert str(info.value).startswith(
        "HTTP 429: a request for 4 images needs 4 places in flight, more than the "
        "organization's allowance of 2; ask for fewer images per request, or ask Ideogram "
        "to raise the allowance"
    )
    assert emulator.stats.requests == 1


async def test_more_images_than_the_maximum_is_refused_before_sending() -> None:
    async with served() as emulator, client_of(emulator, 3) as client:
        with pytest.raises(ValidationError, match=r"num_images=4 needs 4 places.*allowance of 3"):
            await client.upscale(PNG, request(4))
    assert emulator.stats.requests == 0


@pytest.mark.parametrize(
    ("reason", "advice"),
    [
        ("insufficient_funds", "top it up"),
        ("daily_limit", "wait until tomorrow"),
        ("subscription_required", "subscribe"),
        ("priority_credit_required", "priority credits"),
        ("feature_limit", "upgrade the plan"),
    ],
)
async def test_a_402_says_what_to_do_and_is_never_retried(reason: str, advice: str) -> None:
    body = json.dumps({"error": "Payment required", "reject_reason": reason})
    plan = FaultPlan([Fault.status(402, body=body, should_retry=True)] * 3)
    async with served(faults=plan) as emulator, client_of(emulator, 10) as client:
        with pytest.raises(PaymentRequiredError, match=advice) as info:
            await client.upscale(PNG)
    assert info.value.reject_reason == reason
    assert info.value.attempts == 1
    assert emulator.stats.requests == 1


async def test_the_deadline_holds_while_waiting_for_a_place() -> None:
    async with served(allowance=1) as emulator, client_of(emulator, 5) as client:
        emulator.pause()
        held = asyncio.create_task(client.upscale(PNG))
        await emulator.wait_places(1)
        with pytest.raises(APITimeoutError, match="deadline") as info:
            await client.upscale(PNG, retry=RetryPolicy(deadline=0.2))
        assert info.value.kind == "deadline"
        assert info.value.attempts == 1
        assert client.allowance.in_use == 1  # the waiter gave up nothing it did not hold
        emulator.resume()
        await held
    assert emulator.stats.rejected_over_allowance == 1  # it waited, it did not hammer


async def test_places_held_by_another_client_are_backed_off_not_hammered() -> None:
    watched = CountingAllowance(LocalAllowance(10))
    async with (
        served(allowance=10) as emulator,
        client_of(emulator, 10) as other_client,
        client_of(emulator, watched) as client,
    ):
        emulator.pause()
        others = [asyncio.create_task(other_client.upscale(PNG)) for _ in range(10)]
        await emulator.wait_places(10)  # the other client fills the organization's allowance
        ours = [asyncio.create_task(client.upscale(PNG)) for _ in range(20)]
        # The first 10 go out and are refused; then one probe at a time, each after a
        # backoff (a refused request's place wakes nobody, so nothing else goes out).
        await until(watched, lambda: len(watched.rejections) == 12)
        assert emulator.stats.requests == 10 + 12
        assert (client.allowance.limit, client.allowance.in_use) == (1, 0)
        emulator.resume()
        await asyncio.gather(*others, *ours)
    assert emulator.stats.rejected_over_allowance == 12
    assert emulator.stats.responses_by_status == {200: 30, 429: 12}


async def test_cancelling_a_request_on_the_wire_frees_its_places_for_the_next() -> None:
    watched = CountingAllowance(LocalAllowance(2, adaptive=False))
    async with served() as emulator, client_of(emulator, watched) as client:
        emulator.pause()
        first = asyncio.create_task(client.upscale(PNG, request(2)))
        await emulator.wait_places(2)
        second = asyncio.create_task(client.upscale(PNG, request(2)))
        await until(watched, lambda: watched.asked == 2)
        assert emulator.stats.requests == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert client.allowance.in_use == 2  # the second holds the places the first freed
        emulator.resume()
        await second
    assert client.allowance.in_use == 0
    assert emulator.stats.requests == 2


async def test_a_v2_upscale_takes_one_place_and_learns_from_the_429_too() -> None:
    watched = CountingAllowance(LocalAllowance(5))
    async with (
        served(allowance=1) as emulator,
        client_of(emulator, watched, flavor="official") as client,
    ):
        emulator.pause()
        first = asyncio.create_task(client.v2.upscale(PNG, TopazWonder35()))
        await emulator.wait_places(1)
        second = asyncio.create_task(client.v2.upscale(PNG, TopazWonder35()))
        await until(watched, lambda: watched.rejections == [1])
        assert client.allowance.limit == 1
        emulator.resume()
        await asyncio.gather(first, second)
    assert emulator.stats.rejected_over_allowance == 1
    assert emulator.stats.peak_places_in_use == 1


async def test_a_request_too_large_for_the_named_allowance_keeps_the_429s_details() -> None:
    refusal = RateLimitError(
        "over the allowance",
        status=429,
        body='{"reject_reason": "inflight_limit", "max_inflight_requests": 2}',
        request_id="req-7",
        reject_reason="inflight_limit",
        allowance=2,
    )

    async def send() -> None:
        raise refusal

    allowance = LocalAllowance(10)
    with pytest.raises(RateLimitError) as caught:
        await hold_and_send(allowance, 4, "upscale image.png", send)
    assert allowance.in_use == 0
    assert (caught.value.body, caught.value.request_id) == (refusal.body, "req-7")
    assert caught.value.__cause__ is refusal
