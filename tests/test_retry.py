"""Retries, limits, timeouts and cancellation, under faults injected by the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import io
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.abc
import attrs
import pytest
import tenacity
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
    assert isinstance(outcome, errors_module.APIStatusError)
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
    assert warnings[0].getMessage() == f"upscale image.png: giving up after 3 attempt(s): {outcome}"
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


async def test_deadline_bounds_the_whole_call(
    png_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(deadline=0.3)
    _emulator, _, outcome = await run_with([Fault.slow(30)], png_bytes, policy=policy)
    assert isinstance(outcome, APITimeoutError)
    assert (outcome.kind, outcome.attempts) == ("deadline", 1)
    assert str(outcome) == (
        "upscale image.png: the deadline of 0.3s for the whole call passed after 1 "
        "attempt(s); raise RetryPolicy.deadline or lower the load"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        str(outcome)
    ]


async def test_a_permanent_failure_is_logged_once_at_debug(
    png_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    _, _, outcome = await run_with([Fault.status(400)], png_bytes)
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ideogram_async"] == [
        (logging.DEBUG, f"upscale image.png: attempt 1 failed for good: {outcome}")
    ]


async def test_a_first_attempt_that_succeeds_is_logged_once_at_debug_with_its_time(
    png_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    before = time.monotonic()
    await run_with([None], png_bytes)
    took = time.monotonic() - before
    [line] = [r.getMessage() for r in caplog.records if r.name == "ideogram_async"]
    seconds = re.fullmatch(r"upscale image\.png: attempt 1 succeeded in (\d+\.\d\d)s", line)
    assert seconds is not None, line
    assert float(seconds[1]) <= took + 0.01  # the attempt's own time, within the call's


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
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=8) as client,
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
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=1) as client,
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
        client = IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=10)
        async with client:
            tasks = [asyncio.create_task(client.upscale(paths[i % 20])) for i in range(1000)]
            await emulator.wait_in_flight(10)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            assert client.allowance.in_use == 0  # every place is free again
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
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=1) as client,
    ):
        # 1. sleeping in backoff
        task = asyncio.create_task(client.upscale(path))
        await sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.allowance.in_use == 0
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
        assert client.allowance.in_use == 0
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
    real_rest = uploads._PathSource.rest

    async def rest_and_tell(
        self: uploads._PathSource, file: Any, offset: int
    ) -> AsyncIterator[bytes]:
        async for chunk in real_rest(self, file, offset):
            opened.set()  # the file is open and being sent
            yield chunk

    monkeypatch.setattr(uploads._PathSource, "rest", rest_and_tell)
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
        assert c.allowance.in_use == 0


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


async def test_a_gather_of_300_path_uploads_holds_few_files_open(tmp_path: Path) -> None:
    data = make_image("png")
    paths = []
    for i in range(300):
        path = tmp_path / f"img{i:03d}.png"
        path.write_bytes(data)
        paths.append(path)
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=4) as client,
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


# --- The policy's fields -------------------------------------------------------------------

NOT_A_COUNT = [0, -1, 1.5, True, "3", None, float("nan")]
NOT_SECONDS = [-0.5, float("nan"), float("inf"), True, "1", None]
BAD_VALUES = (
    [("attempts", v) for v in NOT_A_COUNT]
    + [("connect_attempts", v) for v in NOT_A_COUNT]
    + [("backoff_base", v) for v in NOT_SECONDS]
    + [("backoff_max", v) for v in NOT_SECONDS]
    + [("retry_after_max", v) for v in NOT_SECONDS]
    + [("deadline", v) for v in [0, *NOT_SECONDS[:-1]]]  # None: no deadline
    + [("retry_timeout_after_upload", v) for v in [1, 0, None, "yes"]]
)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_every_invalid_policy_field_is_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=f"RetryPolicy.{field} must be"):
        RetryPolicy(**{field: value})


def test_every_policy_field_is_covered_by_the_rejection_test() -> None:
    fields = {f.name for f in attrs.fields(RetryPolicy) if f.init}
    assert fields == {field for field, _ in BAD_VALUES}


def test_edge_values_are_accepted() -> None:
    policy = RetryPolicy(
        attempts=1,
        connect_attempts=1,
        backoff_base=0,
        backoff_max=0,
        retry_after_max=0,
        deadline=0.001,
        retry_timeout_after_upload=False,
    )
    assert policy.backoff_base == 0
    assert RetryPolicy(deadline=None).deadline is None
    assert RetryPolicy(backoff_base=2, backoff_max=1).backoff_base == 2  # the cap wins


def test_policies_with_equal_fields_are_equal_and_hash_alike() -> None:
    assert RetryPolicy(attempts=4) == RetryPolicy(attempts=4)
    assert hash(RetryPolicy(attempts=4)) == hash(RetryPolicy(attempts=4))
    assert RetryPolicy(attempts=4) != RetryPolicy(attempts=5)
    assert "strategies" not in repr(RetryPolicy())


async def test_an_evolved_policy_retries_by_its_own_fields(png_bytes: bytes) -> None:
    policy = attrs.evolve(RetryPolicy(attempts=10), attempts=2)
    emulator, _, outcome = await run_with([Fault.status(503)] * 3, png_bytes, policy=policy)
    assert isinstance(outcome, ServerError)
    assert outcome.attempts == emulator.stats.requests == 2


# --- Waits: backoff, jitter, Retry-After ------------------------------------------------


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the client sleeps between attempts, recorded instead of slept."""
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry_module, "_sleep", recording_sleep)
    return waits


class _Draw:
    """Stands in for ``random`` in tenacity's jitter: always draws ``pick(low, high)``."""

    def __init__(self, pick: Callable[[float, float], float]) -> None:
        self.uniform = pick


@pytest.mark.parametrize(
    ("pick", "expected"),
    [
        (lambda low, high: high, [0.5, 1.0, 2.0, 3.0, 3.0]),  # doubling from base, capped
        (lambda low, high: low, [0.0] * 5),  # full jitter reaches down to 0
    ],
    ids=["highest draw", "lowest draw"],
)
async def test_backoff_sleeps_the_jittered_exponential_wait(
    png_bytes: bytes,
    slept: list[float],
    monkeypatch: pytest.MonkeyPatch,
    pick: Callable[[float, float], float],
    expected: list[float],
) -> None:
    monkeypatch.setattr(tenacity.wait, "random", _Draw(pick))
    policy = RetryPolicy(attempts=6, backoff_base=0.5, backoff_max=3.0)
    _, events, outcome = await run_with([Fault.status(500)] * 5 + [None], png_bytes, policy=policy)
    assert not isinstance(outcome, Exception)
    assert slept == expected == [e.wait for e in events]


async def test_jitter_draws_vary_within_the_bounds(png_bytes: bytes, slept: list[float]) -> None:
    policy = RetryPolicy(attempts=40, backoff_base=1.0, backoff_max=1.0)
    await run_with([Fault.status(500)] * 39 + [None], png_bytes, policy=policy)
    assert len(slept) == 39
    assert all(0 <= wait <= 1.0 for wait in slept)
    assert len(set(slept)) > 30  # random, not one fixed wait


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 7.5 "}, 7.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "nan", "retry-after": "9"}, 9.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "NaN"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "Infinity"}, None),
        ({"retry-after": "-100"}, None),
        ({"retry-after": "-0"}, None),
        ({"retry-after": "1e3"}, None),
        ({"retry-after": "0x10"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "9" * 400}, None),  # beyond a float: inf
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"retry-after-ms": "inf"}, None),
        ({"retry-after": "Mon, 32 Foo 2024 99:99:99 GMT"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # in the past
        ({}, None),
    ],
)
def test_retry_after_values_are_parsed_defensively(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_module.parse_retry_after(headers) == expected


def test_retry_after_http_dates_in_the_future() -> None:
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = retry_module.parse_retry_after({"retry-after": soon})
    assert wait is not None
    assert 28 <= wait <= 30


def test_a_retry_after_date_without_a_zone_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "JST-9")  # local time 9 hours from UTC
    time.tzset()
    try:
        soon = email.utils.formatdate(time.time() + 30)  # "... -0000"
        wait = retry_module.parse_retry_after({"retry-after": soon})
    finally:
        monkeypatch.undo()
        time.tzset()
    assert soon.endswith("-0000")
    assert wait is not None
    assert 28 <= wait <= 30


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(429, retry_after="nan"),
        Fault.status(429, retry_after="-100"),
        Fault.status(429, retry_after="inf"),
        Fault("status", 429, (("retry-after-ms", "nan"),), '{"detail": "slow down"}'),
    ],
    ids=["nan", "negative", "inf", "ms nan"],
)
async def test_a_hostile_retry_after_falls_back_to_the_backoff(
    png_bytes: bytes, slept: list[float], fault: Fault
) -> None:
    policy = RetryPolicy(backoff_base=0.5, deadline=None)
    _, events, outcome = await run_with([fault, None], png_bytes, policy=policy)
    assert not isinstance(outcome, Exception)
    assert len(slept) == 1
    assert 0 <= slept[0] <= 0.5
    assert isinstance(events[0].error, errors_module.RateLimitError)
    assert events[0].error.retry_after is None


async def test_a_huge_retry_after_is_capped(png_bytes: bytes, slept: list[float]) -> None:
    policy = RetryPolicy(retry_after_max=5, deadline=None)
    _, _, outcome = await run_with(
        [Fault.status(429, retry_after="9" * 300), None], png_bytes, policy=policy
    )
    assert not isinstance(outcome, Exception)
    assert slept == [5.0]


class _FrozenClock:
    """Stands in for ``time`` in tenacity: no time passes between attempts."""

    @staticmethod
    def monotonic() -> float:
        return 100.0


@pytest.mark.parametrize(
    ("retry_after", "retried"),
    [(9.75, True), (10, False), (30, False)],
)
async def test_a_wait_that_would_end_at_or_past_the_deadline_is_not_made(
    png_bytes: bytes,
    slept: list[float],
    monkeypatch: pytest.MonkeyPatch,
    retry_after: float,
    retried: bool,
) -> None:
    monkeypatch.setattr(tenacity, "time", _FrozenClock)
    policy = RetryPolicy(deadline=10, retry_after_max=60)
    emulator, events, outcome = await run_with(
        [Fault.status(429, retry_after=retry_after), None], png_bytes, policy=policy
    )
    if retried:
        assert not isinstance(outcome, Exception)
        assert slept == [retry_after]
        assert emulator.stats.requests == 2
    else:  # the real error, at once
        assert isinstance(outcome, errors_module.RateLimitError)
        assert (outcome.retry_after, outcome.attempts) == (retry_after, 1)
        assert emulator.stats.requests == 1
        assert slept == []
        assert events == []


@pytest.mark.parametrize(("before", "calls"), [(0.0, 2), (5.0, 1)])
async def test_the_time_before_the_first_failure_counts_against_the_deadline(
    slept: list[float], before: float, calls: int
) -> None:
    # The first attempt runs before tenacity's loop: its time (and reading the input)
    # must count when tenacity decides whether a wait would pass the deadline.
    policy = RetryPolicy(attempts=2, deadline=10, retry_after_max=60)
    record = retry_module.CallRecord("upscale a.png")
    record.started -= before  # the call began ``before`` seconds ago
    made = 0

    async def attempt() -> None:
        nonlocal made
        made += 1
        raise errors_module.RateLimitError("slow down", status=429, retry_after=6)

    with pytest.raises(errors_module.RateLimitError):
        await retry_module.retried(attempt, policy, record)
    assert made == calls  # 5 s + a 6 s wait would pass the 10 s deadline: not waited
    assert slept == [6.0] * (calls - 1)


async def test_no_deadline_means_no_limit_on_waits(png_bytes: bytes, slept: list[float]) -> None:
    policy = RetryPolicy(deadline=None, retry_after_max=10_000)
    _, _, outcome = await run_with(
        [Fault.status(429, retry_after=5000), None], png_bytes, policy=policy
    )
    assert not isinstance(outcome, Exception)
    assert slept == [5000.0]


@pytest.mark.parametrize(
    ("status", "header", "requests"),
    [(503, "false", 1), (503, " FALSE ", 1), (400, "true", 2), (503, "maybe", 2), (400, "1", 1)],
)
async def test_x_should_retry_overrides_the_status_only_when_it_is_a_boolean(
    png_bytes: bytes, status: int, header: str, requests: int
) -> None:
    fault = Fault("status", status, (("x-should-retry", header),), '{"detail": "x"}')
    emulator, _, _ = await run_with([fault, None], png_bytes)
    assert emulator.stats.requests == requests


# --- What a retry hook sees ------------------------------------------------------------


async def test_the_retry_hook_gets_a_frozen_record_of_each_wait(png_bytes: bytes) -> None:
    faults = [Fault.status(429, retry_after=2), Fault.status(503, retry_after_ms=500), None]
    _, events, outcome = await run_with(faults, png_bytes)
    assert not isinstance(outcome, Exception)
    assert [e.attempt for e in events] == [1, 2]
    assert [type(e.error) for e in events] == [errors_module.RateLimitError, ServerError]
    assert [e.wait for e in events] == [2.0, 0.5]
    assert [e.waited for e in events] == [0.0, 2.0]
    assert {e.name for e in events} == {"upscale image.png"}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        events[0].wait = 0  # type: ignore[misc]


async def test_a_download_names_itself_in_retry_events(tmp_path: Path, png_bytes: bytes) -> None:
    events: list[RetryEvent] = []
    async with (
        Emulator(api_key=KEY, upscale=False, image_faults=FaultPlan([Fault.status(503)])) as emu,
        IdeogramClient(api_key=KEY, base_url=emu.base_url, on_retry=events.append) as client,
    ):
        response = await client.upscale(png_bytes)
        await client.download(response.data[0], tmp_path / "out.png")
    assert [(e.attempt, e.name) for e in events] == [(1, "download out.png")]


# --- A host that cannot be reached -----------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_a_refused_connection_gets_the_short_budget(
    closed_port: int, png_bytes: bytes
) -> None:
    events: list[RetryEvent] = []
    async with IdeogramClient(
        api_key=KEY, base_url=f"http://127.0.0.1:{closed_port}", on_retry=events.append
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(png_bytes)
    error = caught.value
    assert error.unreachable
    assert error.attempts == 3  # RetryPolicy.connect_attempts, not attempts=10
    assert len(events) == 2
    assert "(connection refused: nothing listens at that address)" in str(error)
    assert "check base_url" in str(error)


@pytest.mark.parametrize(
    ("policy", "attempts"),
    [
        (RetryPolicy(connect_attempts=1), 1),
        (RetryPolicy(connect_attempts=5), 5),
        (RetryPolicy(attempts=2, connect_attempts=5), 2),
    ],
)
async def test_connect_attempts_sets_the_budget(
    closed_port: int, png_bytes: bytes, policy: RetryPolicy, attempts: int
) -> None:
    async with IdeogramClient(
        api_key=KEY, base_url=f"http://127.0.0.1:{closed_port}", retry=policy
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(png_bytes)
    assert caught.value.attempts == attempts


async def test_other_connection_errors_keep_the_full_budget(png_bytes: bytes) -> None:
    policy = RetryPolicy(attempts=5)
    emulator, _, outcome = await run_with([Fault.drop()] * 5, png_bytes, policy=policy)
    assert isinstance(outcome, APIConnectionError)
    assert not outcome.unreachable
    assert outcome.attempts == emulator.stats.requests == 5


class _NoSuchHost(aiohttp.abc.AbstractResolver):
    """A resolver for which no name exists, as when a host name is misspelt."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_a_host_name_that_does_not_resolve_gets_the_short_budget(
    png_bytes: bytes,
) -> None:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_NoSuchHost())) as session,
        IdeogramClient(api_key=KEY, base_url="http://upscaler.invalid", session=session) as c,
    ):
        with pytest.raises(APIConnectionError) as caught:
            await c.upscale(png_bytes)
    assert caught.value.unreachable
    assert caught.value.attempts == 3
    assert "failed (the host name does not resolve); check base_url" in str(caught.value)


async def test_a_refused_download_gets_the_short_budget(closed_port: int, tmp_path: Path) -> None:
    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:1") as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.download(f"http://127.0.0.1:{closed_port}/x.png", tmp_path / "x.png")
    assert caught.value.unreachable
    assert caught.value.attempts == 3
    assert "connection refused" in str(caught.value)


# --- The testing switch -----------------------------------------------------------------


def test_instant_retries_is_test_mode_for_the_block_and_nests() -> None:
    with retry_module.set_testing(False):
        assert not retry_module.is_testing()
        with instant_retries():
            assert retry_module.is_testing()
            with instant_retries():
                pass
            assert retry_module.is_testing()
        assert not retry_module.is_testing()


def test_set_testing_applies_at_once_and_its_context_restores() -> None:
    with retry_module.set_testing(False):
        restore = retry_module.set_testing(True, attempts=2)
        assert retry_module.is_testing()
        with restore:
            pass
        assert not retry_module.is_testing()


@pytest.mark.parametrize(("testing", "expected"), [(True, 0), (False, 1.5)])
async def test_test_mode_skips_the_sleep(
    monkeypatch: pytest.MonkeyPatch, testing: bool, expected: float
) -> None:
    asked: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        asked.append(seconds)

    with retry_module.set_testing(testing), monkeypatch.context() as patch:
        patch.setattr(asyncio, "sleep", recording_sleep)
        await retry_module._sleep(1.5)
    assert asked == [expected]


@pytest.mark.parametrize(
    ("cap", "policy", "requests"),
    [(1, RetryPolicy(), 1), (2, RetryPolicy(), 2), (5, RetryPolicy(attempts=3), 3)],
)
async def test_test_mode_caps_the_attempts(
    png_bytes: bytes, cap: int, policy: RetryPolicy, requests: int
) -> None:
    with retry_module.set_testing(True, attempts=cap):
        emulator, _, outcome = await run_with([Fault.status(503)] * 6, png_bytes, policy=policy)
    assert isinstance(outcome, ServerError)
    assert outcome.attempts == emulator.stats.requests == requests


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True, "2"])
def test_set_testing_rejects_a_bad_attempt_cap(attempts: Any) -> None:
    with pytest.raises(ValidationError, match="attempts"):
        retry_module.set_testing(True, attempts=attempts)
    assert retry_module.is_testing()  # the autouse instant_retries() still holds


@pytest.mark.parametrize(
    ("now", "expected"),
    [(1_700_000_000.5, 0.5), (1_700_000_001.0, None)],  # half a second ahead; exactly now
)
def test_a_retry_after_date_counts_from_now(
    monkeypatch: pytest.MonkeyPatch, now: float, expected: float | None
) -> None:
    date = email.utils.formatdate(1_700_000_001, usegmt=True)
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: now)
        wait = retry_module.parse_retry_after({"retry-after": date})
    assert wait == expected


async def test_the_attempts_are_counted_and_the_log_tells_the_story(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    made: list[None] = []

    async def attempt() -> str:
        made.append(None)
        if len(made) < 3:
            raise ServerError("busy", status=503)
        return "done"

    with retry_module.counting_attempts() as tally:
        result = await retry_module.call_with_retries(attempt, RetryPolicy(), what="upscale a.png")
    assert (result, tally.attempts, len(made)) == ("done", 3, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("upscale a.png: attempt 1 failed (HTTP 503: busy); retrying in ")
    assert lines[1].startswith("upscale a.png: attempt 2 failed (HTTP 503: busy); retrying in ")
    took = re.fullmatch(r"upscale a\.png: attempt 3 succeeded in (\d+\.\d\d)s", lines[2])
    assert took is not None
    assert float(took[1]) < 60  # the attempt's own duration
    assert len(lines) == 3
