"""A hostile server cannot exhaust memory or disk, hang a call, leak the key, charge
twice, or raise outside the error tree.

The server (``tests/_hostile_server.py``) runs in a process of its own on 127.0.0.1,
so a client that reads without bound fails its test instead of starving the server;
each test picks a misbehaviour through the URL path. Bodies it sends are modest
(tens of MB): the client's caps, far lower, must make it stop early.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import traceback
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from ideogram_async import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ClientClosedError,
    IdeogramClient,
    IdeogramError,
    RateLimitError,
    ResponseFormatError,
    RetryEvent,
    RetryPolicy,
    ServerError,
    Timeouts,
    UpscaleRequest,
    ValidationError,
    uploads,
)
from ideogram_async._settings import Secret
from ideogram_async._transport import scrub
from ideogram_async.cli._inputs import UsageError, find_images
from ideogram_async.images import HEADER_BYTES
from ideogram_async.testing import Emulator

from ._hostile import Hostile
from ._hostile_server import image_of, ok_body
from ._support import KEY, make_image, open_fds

MB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
PNG = make_image("PNG")
FAST = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.01, deadline=None)
"""Retries without real waits, for the tests that count attempts."""


@pytest_asyncio.fixture
async def paused_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(api_key=KEY, upscale=False) as emulator:
        emulator.pause()
        yield emulator


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """Trace Python allocations; the list receives the peak in bytes on exit."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def client_of(url: str, **settings: Any) -> IdeogramClient:
    settings.setdefault("retry", RetryPolicy.no_retries())
    return IdeogramClient(api_key=settings.pop("api_key", KEY), base_url=url, **settings)


def chain_text(error: BaseException) -> str:
    """Everything a traceback of ``error`` would print: messages, reprs, causes."""
    text = "".join(traceback.format_exception(error))
    seen: BaseException | None = error
    while seen is not None:
        text += repr(seen) + repr(seen.args) + repr(vars(seen))
        seen = seen.__cause__ or seen.__context__
    return text


# -- 1. bodies are bounded, gzip included -------------------------------------------------


@pytest.mark.parametrize("scenario", ["endless", "gzip", "huge-length"])
async def test_an_oversized_answer_is_refused_within_the_cap(
    hostile: Hostile, scenario: str
) -> None:
    async with client_of(hostile.url(scenario)) as client:
        with peak_memory() as peak, pytest.raises(ResponseFormatError) as caught:
            await client.upscale(PNG)
    assert peak[0] < 24 * MB
    assert "max_response_size" in str(caught.value)


@pytest.mark.parametrize(("scenario", "arg"), [("error-endless", "-"), ("gzip", "500")])
async def test_an_oversized_error_body_is_cut_and_the_status_kept(
    hostile: Hostile, scenario: str, arg: str
) -> None:
    async with client_of(hostile.url(scenario, arg)) as client:
        with peak_memory() as peak, pytest.raises(ServerError) as caught:
            await client.upscale(PNG)
    assert caught.value.status == 500
    assert peak[0] < 24 * MB


ANSWER = len(ok_body())


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_answer_of_exactly_max_response_size_is_taken_and_one_byte_more_refused(
    hostile: Hostile, framing: str
) -> None:
    # Refused up front on its Content-Length, or while reading it in chunks.
    limit = ANSWER + 50
    async with client_of(
        hostile.url("sized", f"200:{limit}:{framing}"), max_response_size=limit
    ) as client:
        assert (await client.upscale(PNG)).data[0].url == "http://127.0.0.1/img/bookmark/ok.png"
    over = hostile.url("sized", f"200:{limit + 1}:{framing}")
    async with client_of(over, max_response_size=limit) as client:
        with pytest.raises(ResponseFormatError, match=rf"over max_response_size \({limit} bytes\)"):
            await client.upscale(PNG)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_oversized_answer_keeps_its_status_and_quotes_nothing(
    hostile: Hostile, framing: str
) -> None:
    async with client_of(hostile.url("sized", f"201:101:{framing}"), max_response_size=100) as c:
        with pytest.raises(ResponseFormatError) as caught:
            await c.upscale(PNG)
    assert str(caught.value) == (
        "the service answered HTTP 201 with a body over max_response_size (100 bytes); "
        "check base_url points at the upscale service, or raise max_response_size"
    )
    assert (caught.value.status, caught.value.body) == (201, "")


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_bodies_read_in_many_pieces_come_out_whole(hostile: Hostile, framing: str) -> None:
    size = 200_000  # a few of the pieces the cap counts in
    async with client_of(hostile.url("sized", f"200:{size}:{framing}")) as client:
        assert (await client.upscale(PNG)).data[0].url == "http://127.0.0.1/img/bookmark/ok.png"
    async with client_of(hostile.url("sized", f"400:{size}:{framing}")) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.upscale(PNG)
    assert caught.value.body == "x" * size


async def test_an_answer_announced_over_the_cap_is_refused_before_its_body(
    hostile: Hostile,
) -> None:
    # The body never comes: only its announced length can refuse it (else: a timeout).
    async with client_of(
        hostile.url("length-hold", "101"), max_response_size=100, timeouts=Timeouts(attempt=10)
    ) as client:
        with pytest.raises(
            ResponseFormatError, match=r"over max_response_size \(100 bytes\)"
        ) as caught:
            await client.upscale(PNG)
    assert caught.value.request_id == "req-held"


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_error_body_is_cut_at_exactly_max_response_size(
    hostile: Hostile, framing: str
) -> None:
    for size in (100, 101, 160):
        async with client_of(
            hostile.url("sized", f"400:{size}:{framing}"), max_response_size=100
        ) as client:
            with pytest.raises(BadRequestError) as caught:
                await client.upscale(PNG)
        assert caught.value.body == "x" * 100


# -- 2. Retry-After values that are not a wait ----------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Retry-After=nan",
        "retry-after-ms=nan",
        "Retry-After=-100",
        "Retry-After=inf",
        "Retry-After=garbage",
    ],
)
async def test_a_retry_after_that_is_no_wait_falls_back_to_backoff(
    hostile: Hostile, header: str
) -> None:
    waits: list[float] = []
    policy = RetryPolicy(
        attempts=2, backoff_base=0.01, backoff_max=0.01, retry_after_max=0.05, deadline=None
    )

    def hook(event: RetryEvent) -> None:
        waits.append(event.wait)

    async with client_of(hostile.url("retry-after", header), retry=policy, on_retry=hook) as client:
        # A bound, not a wait: a NaN sleep would otherwise hang the test for ever.
        async with asyncio.timeout(10):
            with pytest.raises(RateLimitError) as caught:
                await client.upscale(PNG)
    assert caught.value.attempts == 2
    assert len(waits) == 1
    assert 0 < waits[0] <= 0.05


# -- 3. the no-double-charge switch ---------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        "cutoff",
        "reset",
        "silent",
    ],
)
async def test_no_retry_after_a_complete_upload_when_the_switch_is_off(
    hostile: Hostile, scenario: str
) -> None:
    policy = RetryPolicy(
        attempts=5,
        backoff_base=0.01,
        backoff_max=0.01,
        deadline=None,
        retry_timeout_after_upload=False,
    )
    timeouts = Timeouts(attempt=1)
    async with client_of(hostile.url(scenario), retry=policy, timeouts=timeouts) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(PNG)
    assert caught.value.attempts == 1
    assert (await hostile.stats())["uploads"] == 1


async def test_a_cut_off_answer_is_retried_when_the_switch_is_on(hostile: Hostile) -> None:
    async with client_of(hostile.url("cutoff"), retry=FAST) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(PNG)
    assert caught.value.attempts == 3
    assert (await hostile.stats())["uploads"] == 3


# -- 4. special files never block the loop ------------------------------------------------


async def test_a_fifo_without_a_writer_is_refused_without_blocking(
    hostile: Hostile, tmp_path: Path
) -> None:
    # No writer: a plain open of the FIFO would block its thread until one came.
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    async with client_of(hostile.url("ok")) as client:
        call = asyncio.ensure_future(client.upscale(fifo))
        done, _ = await asyncio.wait([call], timeout=10)  # a bound on failure, not a wait
        if not done:  # the open blocked: let it return, so the thread ends, then fail
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        with pytest.raises(ValidationError, match="not a regular file"):
            await call
    assert done, "opening the FIFO blocked until a writer came"
    assert (await hostile.stats())["requests"] == 0


async def test_a_device_is_refused_as_not_a_regular_file(hostile: Hostile) -> None:
    async with client_of(hostile.url("ok")) as client:
        with pytest.raises(ValidationError, match="not a regular file"):
            await client.upscale("/dev/null")


def test_cli_globs_skip_special_files_and_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "real.png").write_bytes(PNG)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    for arg in (str(tmp_path / "*.png"), str(tmp_path)):
        found = find_images([arg], recursive=False, exclude=tmp_path / "out")
        assert [source.path.name for source in found] == ["real.png"]
    for named in ("pipe.png", "loop.png"):
        with pytest.raises(UsageError, match="not a regular file"):
            find_images([str(tmp_path / named)], recursive=False, exclude=tmp_path / "out")


# -- 5. downloads: checked before writing, capped -------------------------------------------


async def test_a_download_that_is_not_an_image_is_refused_at_its_first_bytes(
    hostile: Hostile, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "result"
    async with client_of(hostile.url("ok"), timeouts=Timeouts(attempt=10)) as client:
        with pytest.raises(ResponseFormatError, match="not a JPEG, PNG or WebP"):
            # The page never ends: only a check of its first bytes can end the call.
            await client.download(hostile.url("html-hold"), dest)
    assert list(tmp_path.iterdir()) == []  # not even the folder was made


async def test_a_download_over_the_cap_stops_while_streaming(
    hostile: Hostile, tmp_path: Path
) -> None:
    dest = tmp_path / "result.png"
    settings: dict[str, Any] = {"max_download_size": MB, "timeouts": Timeouts(attempt=10)}
    async with client_of(hostile.url("ok"), **settings) as client:
        with pytest.raises(ResponseFormatError, match="max_download_size"):
            await client.download(hostile.url("png-hold", "3"), dest)
    assert list(tmp_path.iterdir()) == []


async def test_a_download_whose_length_is_over_the_cap_is_refused_up_front(
    hostile: Hostile, tmp_path: Path
) -> None:
    async with client_of(hostile.url("ok")) as client:
        with pytest.raises(ResponseFormatError, match="max_download_size"):
            await client.download(hostile.url("png-length"), tmp_path / "result.png")
    assert list(tmp_path.iterdir()) == []


async def test_a_download_to_a_long_name_works(hostile: Hostile, tmp_path: Path) -> None:
    dest = tmp_path / ("n" * 246 + ".png")
    async with client_of(hostile.url("ok")) as client:
        assert await client.download(hostile.url("png"), dest) == dest
    assert dest.read_bytes().startswith(b"\x89PNG")
    assert list(tmp_path.iterdir()) == [dest]


async def test_a_download_to_a_name_over_the_limit_is_a_validation_error(
    hostile: Hostile, tmp_path: Path
) -> None:
    async with client_of(hostile.url("ok")) as client:
        with pytest.raises(ValidationError, match="too long"):
            await client.download(hostile.url("png"), tmp_path / ("n" * 300 + ".png"))
    assert (await hostile.stats())["requests"] == 0


async def test_a_download_that_cannot_be_written_is_an_error_of_the_tree(
    hostile: Hostile, tmp_path: Path
) -> None:
    (tmp_path / "file").write_bytes(b"")
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        with pytest.raises(IdeogramError, match="cannot write") as caught:
            await client.download(hostile.url("png"), tmp_path / "file" / "x.png")
    assert caught.value.attempts == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


FORMATS = ["png", "jpeg", "webp"]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_whole_image_ended_by_the_connection_closing_is_written(
    hostile: Hostile, tmp_path: Path, fmt: str
) -> None:
    dest = tmp_path / "result"
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        path = await client.download(hostile.url("close-delimited", f"{fmt}:0"), dest)
    assert path.read_bytes() == image_of(fmt)
    with Image.open(path) as image:
        assert (image.format, image.size) == (fmt.upper(), (96, 64))
    assert (await hostile.stats())["requests"] == 1
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("drop", ["1", "half"])
async def test_an_image_cut_short_by_the_connection_closing_is_an_error_leaving_nothing(
    hostile: Hostile, tmp_path: Path, fmt: str, drop: str
) -> None:
    # HTTP/1.0 without Content-Length: only the image's own structure tells its end.
    size = len(image_of(fmt))
    dropped = size // 2 if drop == "half" else 1
    url = hostile.url("close-delimited", f"{fmt}:{dropped}")
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.download(url, tmp_path / "result")
    assert str(caught.value) == (
        f"the download of result.{'jpg' if fmt == 'jpeg' else fmt} is incomplete "
        f"({size - dropped} bytes arrived, not ending like a whole {fmt.upper()} image): "
        f"the connection closed early; retrying may help, nothing was written"
    )
    assert caught.value.transient
    assert caught.value.attempts == 3  # retried, as a connection that closed early
    assert (await hostile.stats())["requests"] == 3
    assert list(tmp_path.iterdir()) == []  # no part file, no result


async def test_a_cut_download_is_retried_and_then_written_whole(
    hostile: Hostile, tmp_path: Path
) -> None:
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        path = await client.download(hostile.url("cut-once", "png:100"), tmp_path / "r.png")
    assert path.read_bytes() == image_of("png")
    assert (await hostile.stats())["requests"] == 2
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_gzip_encoded_image_is_whole_at_its_encoded_length(
    hostile: Hostile, tmp_path: Path, fmt: str
) -> None:
    # Content-Length counts the encoded bytes; aiohttp hands over the decoded ones.
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        path = await client.download(hostile.url("gzip-image", fmt), tmp_path / "r")
    assert path.read_bytes() == image_of(fmt)
    assert (await hostile.stats())["requests"] == 1


# -- 6. the key never escapes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "escape", "error"),
    [
        (KEY, "u", BadRequestError),
        ("sk/test/5e3cr3t/key", "slash", BadRequestError),
        (KEY, "u-200", ResponseFormatError),
    ],
)
async def test_a_key_echoed_json_escaped_is_masked(
    hostile: Hostile,
    caplog: pytest.LogCaptureFixture,
    key: str,
    escape: str,
    error: type[IdeogramError],
) -> None:
    caplog.set_level(logging.DEBUG, logger="ideogram_async")
    async with client_of(hostile.url("json-key", escape), api_key=key) as client:
        with pytest.raises(error) as caught:
            await client.upscale(PNG)
    assert "invalid key" in str(caught.value)
    assert key not in chain_text(caught.value)
    assert key not in caplog.text
    # Nor in the escaped form the server sent, which anyone can decode.
    sent = "".join(f"\\u{ord(c):04x}" for c in key) if escape[0] == "u" else key.replace("/", "\\/")
    for text in (str(caught.value), getattr(caught.value, "body", ""), caplog.text):
        assert sent not in text


def test_masking_an_escaped_key_keeps_the_rest_of_the_body_readable() -> None:
    key = Secret("sk/test/5e3cr3t/key")
    body = '{"detail": "caf\\u00e9: invalid key sk\\/test\\/5e3cr3t\\/key"}'
    assert scrub(key, body) == '{"detail": "caf\u00e9: invalid key ***"}'


def test_a_json_body_without_the_key_is_left_as_it_came() -> None:
    body = '{"detail": "no such path: a\\/b",  "code":1}'
    assert scrub(Secret(KEY), body) == body


async def test_a_key_echoed_in_the_request_id_is_masked(hostile: Hostile) -> None:
    async with client_of(hostile.url("request-id-key")) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.upscale(PNG)
    assert caught.value.request_id == "req-***"
    assert KEY not in chain_text(caught.value)


async def test_oversized_headers_fail_once_without_the_key(hostile: Hostile) -> None:
    async with client_of(hostile.url("big-headers"), retry=FAST) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(PNG)
    assert KEY not in chain_text(caught.value)
    assert caught.value.attempts == 1
    assert (await hostile.stats())["requests"] == 1
    # The cause stays a well-formed aiohttp error, its request's headers emptied.
    cause = caught.value.__cause__
    assert isinstance(cause, aiohttp.ClientResponseError)
    assert dict(cause.request_info.headers) == {}
    assert (cause.history, cause.headers) == ((), None)


@pytest.mark.parametrize("flavor", ["proxy", "official"])
def test_credentials_in_base_url_are_refused_and_hidden(flavor: str) -> None:
    password = "pa55word"
    url = f"http://joe:{password}@127.0.0.1:9"
    with pytest.raises(ValidationError, match="user name or password") as caught:
        IdeogramClient(api_key=KEY, base_url=url, flavor=flavor)
    assert password not in chain_text(caught.value)


async def test_masking_never_changes_a_successful_answer(hostile: Hostile) -> None:
    async with client_of(hostile.url("ok"), api_key="ok") as client:
        response = await client.upscale(PNG)
    assert response.data[0].url == "http://127.0.0.1/img/bookmark/ok.png"


# -- 7. an aborted request closes its socket at once ------------------------------------


async def test_a_timed_out_upload_to_a_server_that_stops_reading_returns_its_socket(
    hostile: Hostile,
) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(20 * MB)
    before = set(open_fds())
    try:
        async with client_of(hostile.url("stall"), timeouts=Timeouts(attempt=1)) as client:
            with pytest.raises(APITimeoutError):
                await client.upscale(big)
        await asyncio.sleep(0)  # let the loop run the callbacks of closed transports
        gc.collect()
        assert set(open_fds()) <= before
    finally:
        _abort_leftover_transports()


def _abort_leftover_transports() -> None:
    """Abort sockets a failing client left open, so the failure stays in its own test."""
    for thing in gc.get_objects():
        if isinstance(thing, asyncio.WriteTransport) and thing.get_write_buffer_size():
            thing.abort()


# -- 8. every error is in the tree ----------------------------------------------------------


@pytest.mark.parametrize(("status", "error"), [(200, ResponseFormatError), (400, BadRequestError)])
async def test_deeply_nested_json_is_an_error_of_the_tree(
    hostile: Hostile, status: int, error: type[IdeogramError]
) -> None:
    async with client_of(hostile.url("nested", str(status))) as client:
        with pytest.raises(error):
            await client.upscale(PNG)


async def test_aclose_while_calls_are_queued_gives_client_closed_errors(
    paused_emulator: Emulator,
) -> None:
    client = client_of(paused_emulator.base_url, allowance=1)
    async with client:
        calls = [asyncio.create_task(client.upscale(PNG)) for _ in range(5)]
        await paused_emulator.wait_in_flight(1)
    paused_emulator.resume()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, IdeogramError) for outcome in outcomes), outcomes
    assert all(isinstance(outcome, ClientClosedError) for outcome in outcomes[1:]), outcomes


def _symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    return tmp_path / "loop.png"


def _through_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_bytes(PNG)
    return tmp_path / "file" / "image.png"


def _too_long(tmp_path: Path) -> Path:
    return tmp_path / ("n" * 300 + ".png")


@pytest.mark.parametrize("make", [_symlink_loop, _through_a_file, _too_long])
async def test_an_unusable_path_is_a_validation_error(
    hostile: Hostile, tmp_path: Path, make: Any
) -> None:
    async with client_of(hostile.url("ok")) as client:
        with pytest.raises(ValidationError):
            await client.upscale(make(tmp_path))
    assert (await hostile.stats())["requests"] == 0


async def test_a_file_deleted_while_queued_is_reported_as_such(
    paused_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(PNG + bytes(HEADER_BYTES))  # over what a check reads whole
    checked = asyncio.Event()
    check = uploads._path_source

    async def check_and_tell(where: Path) -> Any:
        source = await check(where)
        checked.set()
        return source

    monkeypatch.setattr(uploads, "_path_source", check_and_tell)
    async with client_of(paused_emulator.base_url, allowance=1, retry=FAST) as client:
        first = asyncio.create_task(client.upscale(PNG))
        await paused_emulator.wait_in_flight(1)
        queued = asyncio.create_task(client.upscale(path))
        await checked.wait()  # it was checked, and now waits for the first to finish
        path.unlink()
        paused_emulator.resume()
        await first
        with pytest.raises(IdeogramError, match="no longer exists") as caught:
            await queued
    assert not isinstance(caught.value, APIConnectionError)
    assert caught.value.attempts == 1
    assert paused_emulator.stats.requests == 1


async def test_a_closed_file_object_is_a_validation_error(hostile: Hostile) -> None:
    file = io.BytesIO(PNG)
    file.close()
    async with client_of(hostile.url("ok")) as client:
        with pytest.raises(ValidationError, match="closed"):
            await client.upscale(file)


class _ShrinkingFile(io.BytesIO):
    """A file that loses its tail after the client has started sending it."""

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size is not None and size > 12:  # a chunk of the upload, not the type check
            self.truncate(len(data))
        return data


async def test_a_file_that_changes_mid_upload_is_not_a_validation_error(
    hostile: Hostile,
) -> None:
    file = _ShrinkingFile(PNG + bytes(2 * MB))
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        with pytest.raises(IdeogramError, match="changed") as caught:
            await client.upscale(file)
    assert not isinstance(caught.value, ValidationError)
    assert caught.value.attempts == 1


# -- 9. permanent failures, prompt length, file names -------------------------------------


@pytest.mark.parametrize("arg", ["file", "loop"])
async def test_a_bad_redirect_is_not_retried(hostile: Hostile, tmp_path: Path, arg: str) -> None:
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        with pytest.raises(APIConnectionError, match="redirect") as caught:
            await client.download(hostile.url("redirect", arg), tmp_path / "x.png")
    assert caught.value.attempts == 1
    assert (await hostile.stats())["requests"] <= 11  # aiohttp's hop limit, once


async def test_an_invalid_url_is_not_retried(hostile: Hostile, tmp_path: Path) -> None:
    async with client_of(hostile.url("ok"), retry=FAST) as client:
        with pytest.raises(IdeogramError) as caught:
            await client.download("http://127.0.0.1:99999/x.png", tmp_path / "x.png")
    assert caught.value.attempts <= 1


def test_a_prompt_over_the_cap_is_a_validation_error() -> None:
    UpscaleRequest(prompt="p" * 10_000)
    with pytest.raises(ValidationError, match="10000"):
        UpscaleRequest(prompt="p" * 10_001)


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        ("фото.png", 'filename="фото.png"'),
        ('a"b\r\n.png', 'filename="a%22b%0D%0A.png"'),
    ],
)
async def test_a_file_name_is_sent_as_utf8(hostile: Hostile, name: str, sent: str) -> None:
    async with client_of(hostile.url("ok")) as client:
        response = await client.upscale(PNG, filename=name)
    assert response.data[0].prompt is not None
    assert sent in response.data[0].prompt
