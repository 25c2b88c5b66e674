"""Retries, limits, timeouts and cancellation, under faults injected by the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiolimiter import AsyncLimiter

from ideogram_async import (
    APIConnectionError,
    APITimeoutError,
    IdeogramClient,
    RetryEvent,
    RetryPolicy,
    ServerError,
    Timeouts,
    ValidationError,
    uploads,
)
from ideogram_async import errors as errors_module
from ideogram_async import retry as retry_module
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries

from ._support import KEY, make_image, open_fds


@pytest.fixture(autouse=True)
def _instant() -> Any:
    with instant_retries():
        yield


async def run_with(
    faults: Sequence[Fault | None],
    image: Any,
    *,
    policy: RetryPolicy | None = None,
    **client_kw: Any,
) -> tuple[Emulator, list[RetryEvent], Any]:
    """Upscale ``image`` once against an emulator scripted with ``faults``."""
    events: list[RetryEvent] = []
    async with (
        Emulator(api_key=KEY, faults=FaultPlan(faults)) as emulator,
        IdeogramClient(
            api_key=KEY,
            base_url=emulator.base_url,
            retry=policy,
            on_retry=events.append,
            **client_kw,
        ) as client,
    ):
        try:
            outcome: Any = await client.upscale(image)
        except Exception as exc:  # the test inspects it
            outcome = exc
    return emulator, events, outcome


TRANSIENT = {
    "408": Fault.status(408),
    "409": Fault.status(409),
    "429": Fault.status(429),
    "500": Fault.status(500),
    "502": Fault.status(502),
    "503": Fault.status(503),
    "504": Fault.status(504),
    "html 502": Fault.html(502),
    "dropped connection": Fault.drop(),
    "dropped before body": Fault.drop_before_body(),
    "truncated body": Fault.truncate(),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
async def test_transient_failure_is_retried_then_succeeds(name: str, png_bytes: bytes) -> None:
    emulator, events, outcome = await run_with([TRANSIENT[name], TRANSIENT[name], None], png_bytes)
    assert not isinstance(outcome, Exception), outcome
    assert emulator.stats.requests == 3
    assert [e.attempt for e in events] == [1, 2]


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422])
async def test_permanent_failure_is_not_retried(status: int, png_bytes: bytes) -> None:
    emulator, events, outcome = await run_with([Fault.status(status)], png_bytes)
    assert isinstance(outcome, errors_module.APIError)
    assert outcome.status == status
    assert outcome.attempts == 1
    assert emulator.stats.requests == 1
    assert events == []


async def test_x_should_retry_header_overrides_the_status(png_bytes: bytes) -> None:
    emulator, _, outcome = await run_with([Fault.status(503, should_retry=False)], png_bytes)
    assert isinstance(outcome, ServerError)
    assert emulator.stats.requests == 1
    emulator, _, outcome = await run_with([Fault.status(400, should_retry=True), None], png_bytes)
    assert not isinstance(outcome, Exception)
    assert emulator.stats.requests == 2


async def test_retry_after_seconds_replaces_the_backoff(png_bytes: bytes) -> None:
    _, events, _ = await run_with([Fault.status(429, retry_after=7), None], png_bytes)
    assert [e.wait for e in events] == [7.0]


async def test_retry_after_ms_and_http_date(png_bytes: bytes) -> None:
    _, events, _ = await run_with([Fault.status(503, retry_after_ms=1500), None], png_bytes)
    assert [e.wait for e in events] == [1.5]
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    _, events, _ = await run_with([Fault.status(503, retry_after=date), None], png_bytes)
    assert 25 <= events[0].wait <= 30


async def test_retry_after_is_capped(png_bytes: bytes) -> None:
    policy = RetryPolicy(retry_after_max=5)
    _, events, _ = await run_with(
        [Fault.status(429, retry_after=3600), None], png_bytes, policy=policy
    )
    assert [e.wait for e in events] == [5.0]


async def test_backoff_is_jittered_exponential_and_capped(png_bytes: bytes) -> None:
    policy = RetryPolicy(attempts=6, backoff_base=1.0, backoff_max=4.0)
    _, events, _ = await run_with([Fault.status(500)] * 5 + [None], png_bytes, policy=policy)
    for event, ceiling in zip(events, [1, 2, 4, 4, 4], strict=True):
        assert 0 <= event.wait <= ceiling


async def test_giving_up_raises_the_last_real_error_with_attempts(
    png_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    policy = RetryPolicy(attempts=3)
    emulator, events, outcome = await run_with([Fault.status(503)] * 3, png_bytes, policy=policy)
    assert isinstance(outcome, ServerError)  # never tenacity.RetryError
    assert outcome.attempts == 3
    assert emulator.stats.requests == 3
    assert len(events) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "giving up after 3 attempt" in warnings[0].getMessage()
    # One line per attempt: two "retrying in" lines, then the warning.
    ours = [r for r in caplog.records if r.name == "ideogram_async"]
    assert len(ours) == 3
    assert all("retrying in" in r.getMessage() for r in ours[:2])


async def test_zero_retries_is_one_setting(png_bytes: bytes) -> None:
    emulator, _, outcome = await run_with(
        [Fault.status(503), None], png_bytes, policy=RetryPolicy.no_retries()
    )
    assert isinstance(outcome, ServerError)
    assert outcome.attempts == 1
    assert emulator.stats.requests == 1


async def test_per_call_policy_overrides_the_clients(png_bytes: bytes) -> None:
    async with (
        Emulator(api_key=KEY, faults=FaultPlan([Fault.status(503), None])) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, retry=RetryPolicy.no_retries()
        ) as c,
    ):
        await c.upscale(png_bytes, retry=RetryPolicy(attempts=2))
    assert emulator.stats.requests == 2


async def test_connection_refused_is_retried_then_reported(png_bytes: bytes) -> None:
    async with Emulator(api_key=KEY) as emulator:
        base_url = emulator.base_url  # the port is closed once the emulator stops
    async with IdeogramClient(
        api_key=KEY, base_url=base_url, retry=RetryPolicy(attempts=3)
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(png_bytes)
    assert caught.value.attempts == 3
    assert "connection" in str(caught.value)


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 777):
        yield data[start : start + 777]


@pytest.mark.parametrize(
    "make",
    [
        lambda data, path: path,
        lambda data, path: data,
        lambda data, path: io.BytesIO(b"HEADER" + data),  # read from position 6
        lambda data, path: _stream(data),
    ],
    ids=["path", "bytes", "file mid-way", "stream"],
)
async def test_every_attempt_sends_identical_bytes(
    tmp_path: Path, make: Callable[[bytes, Path], Any]
) -> None:
    data = make_image("png", (300, 200))
    path = tmp_path / "in.png"
    path.write_bytes(data)
    image = make(data, path)
    if isinstance(image, io.BytesIO):
        image.seek(6)
    faults = [Fault.status(503), Fault.drop(), Fault.truncate(), None]
    emulator, _, outcome = await run_with(faults, image)
    assert not isinstance(outcome, Exception), outcome
    hashes = [u.sha256 for u in emulator.stats.uploads]
    assert len(hashes) == 4
    assert set(hashes) == {hashlib.sha256(data).hexdigest()}


async def test_large_stream_is_spooled_to_disk_and_resent(tmp_path: Path) -> None:
    data = make_image("png", (8, 8)) + b"\0" * (3 * 1024 * 1024)  # beyond the memory spool
    async with (
        Emulator(api_key=KEY, upscale=False, faults=FaultPlan([Fault.status(500), None])) as emu,
        IdeogramClient(api_key=KEY, base_url=emu.base_url) as client,
    ):
        before = set(open_fds().values())
        await client.upscale(_stream(data))
        leftover = {t for t in set(open_fds().values()) - before if not t.startswith("socket:")}
    assert len({u.sha256 for u in emu.stats.uploads}) == 1
    assert [u.size for u in emu.stats.uploads] == [len(data)] * 2
    assert leftover == set()  # the spool file is closed, hence deleted


async def test_attempt_timeout_after_upload_respects_the_cost_switch(png_bytes: bytes) -> None:
    slow = Fault.slow(30)
    timeouts = Timeouts(attempt=0.2)
    emulator, _, outcome = await run_with(
        [slow, None],
        png_bytes,
        policy=RetryPolicy(retry_timeout_after_upload=False),
        timeouts=timeouts,
    )
    assert isinstance(outcome, APITimeoutError)
    assert (outcome.kind, outcome.body_sent, outcome.attempts) == ("attempt", True, 1)
    assert emulator.stats.requests == 1
    emulator, _, outcome = await run_with([slow, None], png_bytes, timeouts=timeouts)
    assert not isinstance(outcome, Exception)
    assert emulator.stats.requests == 2


async def test_deadline_bounds_the_whole_call(png_bytes: bytes) -> None:
    policy = RetryPolicy(deadline=0.3)
    _emulator, _, outcome = await run_with([Fault.slow(30)], png_bytes, policy=policy)
    assert isinstance(outcome, APITimeoutError)
    assert outcome.kind == "deadline"
    assert "deadline" in str(outcome)


async def test_no_retry_when_the_wait_would_pass_the_deadline(png_bytes: bytes) -> None:
    policy = RetryPolicy(deadline=10, retry_after_max=60)
    emulator, events, outcome = await run_with(
        [Fault.status(429, retry_after=30), None], png_bytes, policy=policy
    )
    assert isinstance(outcome, errors_module.RateLimitError)  # the real error, at once
    assert outcome.retry_after == 30
    assert emulator.stats.requests == 1
    assert events == []


async def test_concurrency_limit_holds_under_500_calls(png_bytes: bytes) -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_concurrency=8) as client,
    ):
        emulator.pause()
        calls = asyncio.gather(*(client.upscale(png_bytes) for _ in range(500)))
        await emulator.wait_in_flight(8)
        # Let the loop run: if a 9th request could start, it would arrive now.
        for _ in range(50):
            await asyncio.sleep(0)
        assert emulator.stats.in_flight == 8
        emulator.resume()
        results = await calls
    assert len(results) == 500
    assert emulator.stats.peak_in_flight == 8
    assert emulator.stats.requests == 500


async def test_slot_is_not_held_while_sleeping_between_attempts(
    png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    sleeping = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        sleeping.set()
        await release.wait()

    monkeypatch.setattr(retry_module, "_sleep", held_sleep)
    async with (
        Emulator(api_key=KEY, faults=FaultPlan([Fault.status(503)])) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_concurrency=1) as client,
    ):
        first = asyncio.create_task(client.upscale(png_bytes))
        await sleeping.wait()
        # The only slot is free while `first` sleeps: a second call goes through.
        await asyncio.wait_for(client.upscale(png_bytes), timeout=10)
        release.set()
        await first
    assert emulator.stats.requests == 3


async def test_requests_per_second_limit_takes_a_token_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: list[float] = []
    real_acquire = AsyncLimiter.acquire

    async def acquire(self: AsyncLimiter, amount: float = 1) -> None:
        await real_acquire(self, amount)
        taken.append(self.max_rate)

    monkeypatch.setattr(AsyncLimiter, "acquire", acquire)
    images = [make_image("png", (4, 4), shade=i) for i in range(5)]
    plan = FaultPlan([Fault.status(503)], per_upload=True)  # every upload fails once
    async with (
        Emulator(api_key=KEY, upscale=False, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, requests_per_second=1000) as c,
    ):
        await asyncio.gather(*(c.upscale(image) for image in images))
    assert emulator.stats.requests == 10
    assert taken == [1000] * 10  # one token per request sent, retries included


async def test_cancelling_1000_calls_frees_every_slot_and_file(tmp_path: Path) -> None:
    data = make_image("png")
    paths = []
    for i in range(20):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(data)
        paths.append(path)
    fds_before = open_fds()
    async with Emulator(api_key=KEY, upscale=False) as emulator:
        emulator.pause()
        client = IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_concurrency=10)
        async with client:
            tasks = [asyncio.create_task(client.upscale(paths[i % 20])) for i in range(1000)]
            await emulator.wait_in_flight(10)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            assert client._slots._value == 10  # every slot is free again
            assert not {str(p) for p in paths} & set(open_fds().values())
            emulator.resume()
            # The client still works after the storm.
            await client.upscale(paths[0])
    assert set(open_fds()) <= set(fds_before)


async def test_cancel_in_each_phase_releases_slot_and_file(
    tmp_path: Path, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes)
    sleeping = asyncio.Event()

    async def endless_sleep(seconds: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(retry_module, "_sleep", endless_sleep)
    async with (
        Emulator(api_key=KEY, faults=FaultPlan([Fault.status(503)])) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_concurrency=1) as client,
    ):
        # 1. sleeping in backoff
        task = asyncio.create_task(client.upscale(path))
        await sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client._slots._value == 1
        # 2. awaiting the response (the slot is held, the upload done)
        emulator.pause()
        task = asyncio.create_task(client.upscale(path))
        await emulator.wait_in_flight(1)
        # 3. waiting for a slot, behind the one above
        waiting = asyncio.create_task(client.upscale(path))
        await asyncio.sleep(0)
        waiting.cancel()
        task.cancel()
        for t in (task, waiting):
            with pytest.raises(asyncio.CancelledError):
                await t
        assert client._slots._value == 1
        assert str(path) not in open_fds().values()
        emulator.resume()


async def test_cancel_while_uploading_closes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    with path.open("wb") as file:
        file.write(make_image("png", (8, 8)))
        file.truncate(20 * 1024 * 1024)
    opened = asyncio.Event()
    real_chunks = uploads._PathSource.chunks

    async def chunks_and_tell(self: uploads._PathSource, file: Any) -> AsyncIterator[bytes]:
        async for chunk in real_chunks(self, file):
            opened.set()  # the file is open and being sent
            yield chunk

    monkeypatch.setattr(uploads._PathSource, "chunks", chunks_and_tell)
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_file_size=30 * 2**20) as c,
    ):
        task = asyncio.create_task(c.upscale(path))
        await opened.wait()  # the upload is under way
        assert str(path) in open_fds().values()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert str(path) not in open_fds().values()
        assert c._slots._value == 10


async def test_no_key_in_logs_or_errors_of_a_failing_run(
    png_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    faults = [Fault.status(503), Fault.drop(), Fault.html(502), Fault.status(401)]
    _, _, outcome = await run_with(faults, png_bytes)
    assert isinstance(outcome, errors_module.AuthenticationError)
    texts = [r.getMessage() for r in caplog.records] + [str(outcome), repr(outcome), outcome.body]
    assert len(caplog.records) >= 4
    assert not [t for t in texts if KEY in t]


async def test_validation_error_is_not_retried(png_bytes: bytes) -> None:
    emulator, events, outcome = await run_with([None], b"not an image at all")
    assert isinstance(outcome, ValidationError)
    assert emulator.stats.requests == 0
    assert events == []


async def test_soak_2000_calls_with_30_percent_transient_faults() -> None:
    plan = FaultPlan(rate=0.3, seed=7, per_upload=True)
    images = [make_image("png", (4, 4), shade=i) for i in range(2000)]
    async with (
        Emulator(api_key=KEY, upscale=False, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        results = await asyncio.gather(*(client.upscale(image) for image in images))
    assert len(results) == 2000
    assert emulator.stats.peak_in_flight <= 10
    assert sum(emulator.stats.faults_injected.values()) > 0.25 * emulator.stats.requests


async def test_the_backoff_sleep_gets_the_retry_after_wait(
    png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(retry_module, "_sleep", recording_sleep)
    faults = [Fault.status(429, retry_after=7), Fault.status(503, retry_after_ms=250), None]
    _, events, outcome = await run_with(faults, png_bytes)
    assert not isinstance(outcome, Exception)
    assert slept == [7.0, 0.25] == [e.wait for e in events]


def test_instant_retries_restores_the_previous_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry_module, "_instant", False)
    with instant_retries():
        assert retry_module._instant_enabled()
        with instant_retries():
            pass
        assert retry_module._instant_enabled()
    assert not retry_module._instant_enabled()


async def test_a_gather_of_300_path_uploads_holds_few_files_open(tmp_path: Path) -> None:
    data = make_image("png")
    paths = []
    for i in range(300):
        path = tmp_path / f"img{i:03d}.png"
        path.write_bytes(data)
        paths.append(path)
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_concurrency=4) as client,
    ):
        emulator.pause()
        calls = asyncio.gather(*(client.upscale(p) for p in paths))
        await emulator.wait_in_flight(4)
        # Queued calls hold no file: only attempts on the wire open one.
        open_images = [t for t in open_fds().values() if t.startswith(str(tmp_path))]
        assert len(open_images) <= 4
        emulator.resume()
        assert len(await calls) == 300


@pytest.fixture
def unanswered_port() -> Any:
    """A loopback port whose accept queue is full: new connections hang, never refused."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, server]:
        sock.close()


async def test_connect_timeout_is_reported_as_such_and_retried(
    unanswered_port: int, png_bytes: bytes
) -> None:
    events: list[RetryEvent] = []
    async with IdeogramClient(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{unanswered_port}",
        timeouts=Timeouts(connect=0.1),
        retry=RetryPolicy(attempts=2),
        on_retry=events.append,
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.upscale(png_bytes)
    error = caught.value
    assert (error.kind, error.body_sent, error.attempts) == ("connect", False, 2)
    assert "Timeouts.connect" in str(error)
    assert len(events) == 1
