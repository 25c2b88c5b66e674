"""upscale_many: bounded fan-out, ordering, per-item errors, early exit, flat memory."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ideogram_async import (
    APITimeoutError,
    BatchInput,
    BatchResult,
    IdeogramClient,
    ImageInput,
    RetryPolicy,
    Timeouts,
    UpscaleJob,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async.batch import V1, BatchRun, as_job, fan_out
from ideogram_async.models import UpscaleResponse
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries
from ideogram_async.v2 import AutoUpscaler
from ideogram_async.v2._resource import V2

from ._support import KEY, make_image


class CountingInputs:
    """An input iterable that records how far it has been pulled."""

    def __init__(self, images: list[bytes]) -> None:
        self.images = images
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for image in self.images:
            self.pulled += 1
            yield image


async def test_results_cover_every_input_once(emulator: Emulator, client: IdeogramClient) -> None:
    images = [make_image("png", (8, 8), shade=i) for i in range(40)]
    results = [r async for r in client.upscale_many(images)]
    assert sorted(r.index for r in results) == list(range(40))
    assert all(r.ok and r.response is not None and r.attempts == 1 for r in results)
    assert all(r.source is images[r.index] for r in results)
    assert emulator.stats.requests == 40


async def test_ordered_yields_in_input_order_despite_random_latency() -> None:
    images = [make_image("png", (8, 8), shade=i) for i in range(30)]
    async with (
        Emulator(api_key=KEY, upscale=False, latency=(0.0, 0.02), seed=3) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=5) as client,
    ):
        results = [r async for r in client.upscale_many(images, ordered=True)]
    assert [r.index for r in results] == list(range(30))


async def test_async_iterable_inputs_and_per_item_requests(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    async def inputs() -> AsyncIterator[BatchInput]:
        yield png_bytes
        yield (png_bytes, UpscaleRequest(seed=7))
        yield UpscaleJob(png_bytes, UpscaleRequest(detail=80), filename="job.png")

    results = [
        r async for r in client.upscale_many(inputs(), UpscaleRequest(prompt="base"), ordered=True)
    ]
    assert [r.ok for r in results] == [True, True, True]
    fields = sorted((u.fields for u in emulator.stats.uploads), key=str)
    assert {"prompt": "base"} in fields
    assert {"seed": 7} in fields
    assert {"detail": 80} in fields
    assert "job.png" in {u.filename for u in emulator.stats.uploads}
    assert results[1].request == UpscaleRequest(seed=7)


async def test_item_errors_are_reported_not_raised(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    inputs: list[Any] = [png_bytes, b"definitely not an image", png_bytes, ("a", "bad", "tuple")]
    results = [r async for r in client.upscale_many(inputs, ordered=True)]
    assert [r.ok for r in results] == [True, False, True, False]
    assert isinstance(results[1].error, ValidationError)
    assert results[1].response is None
    assert results[1].attempts == 0
    assert isinstance(results[3].error, ValidationError)
    assert emulator.stats.requests == 2


async def test_stop_on_error_ends_the_run_after_the_first_failure(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    inputs = [b"bad"] + [png_bytes] * 50
    results = [r async for r in client.upscale_many(inputs, ordered=True, stop_on_error=True)]
    assert len(results) == 1
    assert not results[0].ok
    assert client.allowance.in_use == 0


async def test_retried_items_report_their_attempts(png_bytes: bytes) -> None:
    with instant_retries():
        async with (
            Emulator(api_key=KEY, faults=FaultPlan([Fault.status(503), None])) as emulator,
            IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=1) as c,
        ):
            results = [r async for r in c.upscale_many([png_bytes], ordered=True)]
    assert results[0].ok
    assert results[0].attempts == 2


async def test_a_failed_item_reports_the_attempts_it_used(png_bytes: bytes) -> None:
    with instant_retries():
        async with (
            Emulator(api_key=KEY, faults=FaultPlan.always(Fault.status(503))) as emulator,
            IdeogramClient(
                api_key=KEY, base_url=emulator.base_url, retry=RetryPolicy(attempts=3)
            ) as client,
        ):
            results = [r async for r in client.upscale_many([png_bytes])]
    assert not results[0].ok
    assert results[0].attempts == 3 == emulator.stats.requests


async def test_input_is_pulled_lazily_within_the_window(png_bytes: bytes) -> None:
    inputs = CountingInputs([png_bytes] * 1000)
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=4) as client,
    ):
        emulator.pause()
        async with client.upscale_many(inputs) as run:
            first = asyncio.create_task(anext(run))
            await emulator.wait_in_flight(4)
            assert inputs.pulled == 8  # the window: 2 x the allowance
            emulator.resume()
            await first
        # Leaving the block cancelled the rest at once: nothing in flight, slots free.
        assert client.allowance.in_use == 0
        assert inputs.pulled < 20


async def test_a_result_is_yielded_as_soon_as_it_is_done(png_bytes: bytes) -> None:
    # One of two requests is held for an hour: the other's result must come out first,
    # not wait for the whole window to finish.
    plan = FaultPlan([Fault.slow(3600), None])
    async with (
        Emulator(api_key=KEY, upscale=False, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=2) as client,
    ):
        async with client.upscale_many([png_bytes, png_bytes]) as run:
            async with asyncio.timeout(30):  # a hang guard, not a speed check
                first = await anext(run)
        assert first.ok
        assert emulator.stats.requests == 2


async def test_breaking_out_cancels_the_rest(png_bytes: bytes) -> None:
    # One request answers; the others would take an hour, so only cancelling ends them.
    plan = FaultPlan([None], choices=[Fault.slow(3600)], rate=1.0)
    async with (
        Emulator(api_key=KEY, upscale=False, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=3) as client,
    ):
        async with asyncio.timeout(30):  # a hang guard: letting go takes milliseconds
            async with client.upscale_many([png_bytes] * 100) as run:
                async for _ in run:
                    break
        assert client.allowance.in_use == 0
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert all(t.done() or "upscale" not in repr(t.get_coro()) for t in others)
        requests_then = emulator.stats.requests
    assert requests_then < 100


async def test_cancelling_the_consumer_cancels_the_work(png_bytes: bytes) -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=3) as client,
    ):
        emulator.pause()

        async def consume() -> list[BatchResult[UpscaleResponse]]:
            return [r async for r in client.upscale_many([png_bytes] * 50)]

        consumer = asyncio.create_task(consume())
        await emulator.wait_in_flight(3)
        consumer.cancel()
        # The held requests never end on their own: only cancelling them lets go.
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(30):  # a hang guard, not a speed check
                await consumer
        assert client.allowance.in_use == 0
        emulator.resume()


async def test_input_iterator_failure_propagates_after_cleanup(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    def inputs() -> Iterator[bytes]:
        yield png_bytes
        raise RuntimeError("the input source broke")

    with pytest.raises(RuntimeError, match="input source broke"):
        async for _ in client.upscale_many(inputs()):
            pass
    assert client.allowance.in_use == 0


async def test_bad_window_is_a_validation_error(client: IdeogramClient) -> None:
    with pytest.raises(ValidationError, match="window"):
        client.upscale_many([], window=0)


async def _fake_upscale(job: UpscaleJob) -> UpscaleResponse:
    """Stands in for the HTTP call: memory here is the fan-out machinery's alone."""
    await asyncio.sleep(0)
    return UpscaleResponse(created=datetime.now(UTC), data=[])


async def _peak_memory(count: int, *, ordered: bool) -> int:
    def inputs() -> Iterator[bytes]:
        for i in range(count):
            yield i.to_bytes(4, "big")

    run = BatchRun(
        fan_out(
            inputs(),
            _fake_upscale,
            UpscaleRequest(),
            kind=V1,
            window=20,
            ordered=ordered,
            stop_on_error=False,
        )
    )
    gc.collect()
    tracemalloc.start()
    try:
        done = 0
        async for result in run:
            done += result.ok
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == count
    return peak


@pytest.mark.parametrize("ordered", [False, True])
async def test_memory_does_not_grow_with_the_number_of_inputs(ordered: bool) -> None:
    small = await _peak_memory(2_000, ordered=ordered)
    large = await _peak_memory(20_000, ordered=ordered)
    # Ten times the inputs, the same peak give or take allocator noise.
    assert large < small * 1.2 + 64 * 1024, (small, large)


@pytest.mark.parametrize("one_image", ["photo.png", Path("photo.png"), b"\x89PNG\r\n\x1a\n"])
async def test_one_image_instead_of_many_is_a_clear_error(
    client: IdeogramClient, one_image: object
) -> None:
    # A str or bytes is iterable: without the check, each character would be an "image".
    with pytest.raises(ValidationError, match="iterable of images"):
        client.upscale_many(one_image)  # type: ignore[arg-type]


def test_an_input_the_batch_cannot_take_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError) as info:
        as_job((b"image", UpscaleRequest(), "name.png"), UpscaleRequest(), V1)
    assert str(info.value) == (
        "a tuple input must be an (image, request) pair; "
        "use UpscaleJob(image, request, filename) for more"
    )
    with pytest.raises(ValidationError) as info:
        as_job((b"image", AutoUpscaler()), UpscaleRequest(), V1)
    assert str(info.value) == (
        "this batch's requests are an UpscaleRequest, got AutoUpscaler; "
        "run v1 and v2 upscales in separate batches"
    )
    with pytest.raises(ValidationError, match="requests are a v2 model's options, got Upscale"):
        as_job((b"image", UpscaleRequest()), AutoUpscaler(), V2)


async def test_a_request_of_neither_kind_is_refused_naming_its_type(client: IdeogramClient) -> None:
    with pytest.raises(ValidationError, match=r"must be an UpscaleRequest, got dict$"):
        client.upscale_many([b"image"], {"seed": 1})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"for a v2 model's options use client\.v2$"):
        client.upscale_many([b"image"], AutoUpscaler())  # type: ignore[arg-type]


async def test_an_error_that_is_not_ours_counts_no_attempts() -> None:
    async def upscale(job: UpscaleJob) -> UpscaleResponse:
        raise RuntimeError("a bug in a custom upscaler")

    results = [
        r
        async for r in fan_out(
            [b"a"], upscale, UpscaleRequest(), kind=V1, window=1, ordered=False, stop_on_error=False
        )
    ]
    assert [(type(r.error), r.attempts) for r in results] == [(RuntimeError, 0)]


class _Unseekable(io.RawIOBase):
    """A pipe-like binary file: readable once, not seekable."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    yield data[:10]
    yield data[10:]


async def test_every_image_kind_upscale_takes_is_an_input(
    emulator: Emulator, client: IdeogramClient, tmp_path: Path, png_bytes: bytes
) -> None:
    (tmp_path / "photo.png").write_bytes(png_bytes)
    images: list[ImageInput] = [
        str(tmp_path / "photo.png"),
        tmp_path / "photo.png",
        png_bytes,
        bytearray(png_bytes),
        memoryview(png_bytes),
        io.BytesIO(png_bytes),
        io.BufferedReader(_Unseekable(png_bytes)),
        _stream(png_bytes),
    ]
    inputs: list[BatchInput] = [
        *images,
        (str(tmp_path / "photo.png"), UpscaleRequest(seed=1)),
        UpscaleJob(str(tmp_path / "photo.png"), filename="job.png"),
    ]
    results = [r async for r in client.upscale_many(inputs, ordered=True)]
    assert [r.error for r in results] == [None] * len(inputs)
    # The source is the image as given (for a pair or a job, its image), so a str path
    # names its output the way the README shows.
    assert [r.source for r in results[: len(images)]] == images
    assert results[-2].source == results[-1].source == str(tmp_path / "photo.png")
    assert {Path(r.source).stem for r in results if isinstance(r.source, str)} == {"photo"}
    assert emulator.stats.requests == len(inputs)
    assert {u.sha256 for u in emulator.stats.uploads} == {hashlib.sha256(png_bytes).hexdigest()}


async def test_ordered_items_done_early_count_against_the_window() -> None:
    first_may_finish = asyncio.Event()
    started: list[bytes] = []

    async def upscale(job: UpscaleJob) -> UpscaleResponse:
        assert isinstance(job.image, bytes)
        started.append(job.image)
        if job.image == b"0":
            await first_may_finish.wait()
        raise RuntimeError("no response needed here")

    inputs = [str(i).encode() for i in range(6)]
    run = fan_out(
        inputs, upscale, UpscaleRequest(), kind=V1, window=2, ordered=True, stop_on_error=False
    )
    first = asyncio.create_task(anext(run))
    for _ in range(20):
        await asyncio.sleep(0)  # let the run start what its window allows
    assert started == [b"0", b"1"]  # "1" is done, but waits for "0": the window is full
    first_may_finish.set()
    results = [await first] + [r async for r in run]
    assert [r.index for r in results] == list(range(6))


async def test_a_result_knows_its_source_and_how_long_it_took() -> None:
    async def upscale(job: UpscaleJob) -> UpscaleResponse:
        raise RuntimeError("no response needed here")

    malformed = (b"x", UpscaleRequest(), "extra")
    results = [
        r
        async for r in fan_out(
            [malformed, (b"y", UpscaleRequest())],  # type: ignore[list-item]
            upscale,
            UpscaleRequest(),
            kind=V1,
            window=2,
            ordered=True,
            stop_on_error=False,
        )
    ]
    assert [r.source for r in results] == [malformed, b"y"]
    assert all(0 <= r.elapsed < 60 for r in results)  # a duration, not a clock reading


async def test_a_batchs_own_timeouts_are_checked_up_front_and_bound_each_item(
    png_bytes: bytes,
) -> None:
    # Every answer takes 5 s: the batch's 50 ms attempt limit ends the one attempt first.
    slow = FaultPlan.always(Fault.slow(5))
    async with (
        Emulator(api_key=KEY, upscale=False, faults=slow) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        with pytest.raises(ValidationError, match=r"^timeouts must be a Timeouts, got int$"):
            client.upscale_many([png_bytes], timeouts=5)  # type: ignore[arg-type]
        run = client.upscale_many(
            [png_bytes], retry=RetryPolicy.no_retries(), timeouts=Timeouts(attempt=0.05)
        )
        (result,) = [r async for r in run]
    assert isinstance(result.error, APITimeoutError)
    assert result.error.kind == "attempt"
    assert result.attempts == 1 == emulator.stats.requests
