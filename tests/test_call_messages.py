"""What a wrong argument to a public call says, word for word, before anything is sent."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ideogram_async import (
    APIConnectionError,
    BatchRun,
    IdeogramClient,
    LocalAllowance,
    RetryPolicy,
    Timeouts,
    UpscaledImage,
    UpscaleJob,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async.retry import set_testing
from ideogram_async.testing import Emulator, Fault, FaultPlan
from ideogram_async.v2 import TopazBloom2

from ._support import KEY, make_image

PNG = make_image("png", (4, 4))


def message_of(make: Callable[[], object]) -> str:
    with pytest.raises(ValidationError) as caught:
        make()
    return str(caught.value)


async def refused(call: Callable[[IdeogramClient], Awaitable[object]]) -> str:
    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=4) as c:
        with pytest.raises(ValidationError) as caught:
            await call(c)
    return str(caught.value)


async def test_upscale_refuses_a_request_of_another_type() -> None:
    assert await refused(lambda c: c.upscale(PNG, {"prompt": "x"})) == (  # type: ignore[arg-type]
        "request must be an UpscaleRequest, got dict; build one with "
        "UpscaleRequest(prompt=..., resemblance=...)"
    )


async def test_upscale_refuses_more_images_than_the_allowance_holds() -> None:
    assert await refused(lambda c: c.upscale(PNG, UpscaleRequest(num_images=5))) == (
        "num_images=5 needs 5 places in flight, more than the allowance of 4; ask for fewer "
        "images per request or raise allowance= (if your organization's allowance is higher)"
    )


async def test_upscale_many_refuses_one_image_and_a_foreign_request() -> None:
    async def first(c: IdeogramClient, inputs: object, request: object = None) -> object:
        async for item in c.upscale_many(inputs, request):  # type: ignore[arg-type]
            return item
        return None

    assert await refused(lambda c: first(c, "one.png")) == (
        "upscale_many takes an iterable of images, not one image; wrap it in a list or call "
        "upscale() for a single image"
    )
    assert await refused(lambda c: first(c, [PNG], "fast")) == (
        "request must be an UpscaleRequest, got str"
    )
    assert await refused(lambda c: first(c, [PNG], TopazBloom2())) == (
        "request must be an UpscaleRequest, got TopazBloom2; for a v2 model's options use client.v2"
    )

    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9") as client:
        item = await first(client, [(PNG, UpscaleRequest(), "x")])
    error = getattr(item, "error", None)
    assert isinstance(error, ValidationError)  # one input's problem, reported with it
    assert str(error) == (
        "a tuple input must be an (image, request) pair; use UpscaleJob(image, request, "
        "filename) for more"
    )


async def test_download_refuses_what_it_cannot_fetch_or_write(tmp_path: Path) -> None:
    withheld = UpscaledImage(url=None, prompt="", resolution="1x1", is_image_safe=False, seed=1)
    assert await refused(lambda c: c.download(withheld, tmp_path / "x.png")) == (
        "this image was withheld by the service's safety check, so there is nothing to "
        "download (the upscale ran and is billed)"
    )
    assert await refused(lambda c: c.download("ftp://h/x.png", tmp_path / "x.png")) == (
        "cannot download 'ftp://h/x.png': pass an UpscaledImage with a url or an http(s) URL"
    )
    long_name = "n" * 300 + ".png"
    assert await refused(lambda c: c.download("http://h/x.png", tmp_path / long_name)) == (
        f"{long_name[:40]}... is too long a file name (255 bytes at most, with the image "
        "suffix); pass a shorter dest"
    )
    assert await refused(lambda c: c.download("http://h/x.png", tmp_path)) == (
        f"{tmp_path} is a directory; pass the path of the file to write"
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: LocalAllowance(0),
            "the allowance must be a whole number of places >= 1, got 0; pass the number of "
            "images your organization may have in flight (default 10)",
        ),
        (lambda: LocalAllowance(2, forget_after=0), "forget_after must be > 0 seconds, got 0"),
        (lambda: LocalAllowance(2).hold(0), "places must be a whole number >= 1, got 0"),
        (lambda: LocalAllowance(2).hold(True), "places must be a whole number >= 1, got True"),
        (
            lambda: LocalAllowance(2).hold(3),
            "a request for 3 images needs 3 places in flight, more than the allowance of 2; "
            "ask for fewer images per request or raise the allowance (if your organization's "
            "is higher)",
        ),
        (
            lambda: RetryPolicy(backoff_base=-1),
            "RetryPolicy.backoff_base must be a finite number of seconds >= 0, got -1",
        ),
        (
            lambda: RetryPolicy(deadline=0),
            "RetryPolicy.deadline must be a finite number of seconds > 0, or None for no "
            "limit, got 0",
        ),
        (
            lambda: RetryPolicy(attempts=0),
            "RetryPolicy.attempts must be an int >= 1 (1 means no retries), got 0",
        ),
        (
            lambda: RetryPolicy(retry_timeout_after_upload=1),  # type: ignore[arg-type]
            "RetryPolicy.retry_timeout_after_upload must be True or False, got 1",
        ),
        (
            lambda: set_testing(True, attempts=0),
            "set_testing(attempts=) must be an int >= 1, got 0",
        ),
    ],
)
def test_each_wrong_value_is_named_with_its_fix(make: Callable[[], object], expected: str) -> None:
    assert message_of(make) == expected


def test_a_job_keeps_what_it_was_given() -> None:
    job = UpscaleJob(PNG, UpscaleRequest(prompt="p"), "name.png")
    assert (job.image, job.request, job.filename) == (PNG, UpscaleRequest(prompt="p"), "name.png")


async def test_a_window_below_one_is_refused_and_one_works() -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        with pytest.raises(ValidationError) as caught:
            client.upscale_many([PNG], window=0)
        assert str(caught.value) == "window must be an int >= 1, got 0"
        async with client.upscale_many([PNG, PNG], window=1) as run:
            assert [r.ok async for r in run] == [True, True]


async def test_a_batch_passes_its_retry_policy_and_names_to_each_call() -> None:
    fails = FaultPlan.always(Fault.status(503))
    async with (
        Emulator(api_key=KEY, upscale=False, faults=fails) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        jobs = [UpscaleJob(PNG, None, "one.png")]
        async with client.upscale_many(jobs, retry=RetryPolicy.no_retries()) as run:
            [v1] = [r async for r in run]
        async with client.v2.upscale_many(
            jobs, TopazBloom2(), retry=RetryPolicy.no_retries()
        ) as run:
            [v2] = [r async for r in run]
    assert emulator.stats.requests == 2  # one attempt each: the batch's policy was used
    assert (v1.error is not None, v2.error is not None) == (True, True)
    assert [u.filename for u in emulator.stats.uploads] == ["one.png"]
    assert [u.filename for u in emulator.stats.v2_uploads] == ["one.png"]


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
async def test_stop_on_error_ends_the_batch_at_the_first_failure(v2: bool) -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, allowance=1, flavor="official"
        ) as client,
    ):
        inputs = [b"not an image", PNG, PNG]
        run: BatchRun[Any] = (
            client.v2.upscale_many(inputs, TopazBloom2(), stop_on_error=True, ordered=True)
            if v2
            else client.upscale_many(inputs, stop_on_error=True, ordered=True)
        )
        async with run:
            results = [r async for r in run]
    assert [r.ok for r in results] == [False]


async def test_an_https_url_is_fetched_and_a_refused_download_names_the_fix(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with IdeogramClient(
        api_key=KEY, base_url="http://127.0.0.1:9", retry=RetryPolicy.no_retries()
    ) as client:
        for scheme in ("http", "https"):
            with pytest.raises(APIConnectionError) as caught:
                await client.download(f"{scheme}://127.0.0.1:{port}/x.png", tmp_path / "x.png")
            assert str(caught.value) == (
                "download of x.png failed (connection refused: nothing listens at that "
                "address); the image URL may be unreachable"
            )


async def test_a_calls_own_retry_policy_is_checked() -> None:
    assert await refused(lambda c: c.upscale(PNG, retry=3)) == (  # type: ignore[arg-type]
        "retry must be a RetryPolicy, got int"
    )


async def test_the_client_shows_its_settings() -> None:
    timeouts = Timeouts(connect=2.0, attempt=9.0)
    async with IdeogramClient(
        api_key=KEY,
        base_url="http://127.0.0.1:9",
        requests_per_second=2.5,
        max_response_size=77,
        timeouts=timeouts,
    ) as client:
        assert (client.requests_per_second, client.max_response_size) == (2.5, 77)
        assert client.timeouts is timeouts
        limiter = client._attempts.limiter
        assert limiter is not None
        assert (limiter.max_rate, limiter.time_period) == (2.5, 1)  # per second, not minute


class _Watched(LocalAllowance):
    closes = 0

    async def aclose(self) -> None:
        self.closes += 1
        await super().aclose()


async def test_the_client_closes_the_allowance_it_built_and_not_one_given() -> None:
    given = _Watched(4)
    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=given):
        pass
    assert given.closes == 0
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9")
    built = client.allowance
    closes: list[bool] = []

    async def watched_close() -> None:
        closes.append(True)

    built.aclose = watched_close  # type: ignore[method-assign]
    await client.aclose()
    assert closes == [True]


async def test_a_session_passed_in_is_used_and_left_open() -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        aiohttp.ClientSession(headers={"X-Trace": "t-1"}) as session,
    ):
        async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, session=session) as c:
            await c.upscale(PNG)
        assert not session.closed
        assert emulator.stats.uploads[0].headers["x-trace"] == "t-1"
