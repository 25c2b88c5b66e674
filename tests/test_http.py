"""The HTTP layer: what a failed request's error says, word for word (what failed, when,
why, what to do), and what every request carries.

Over real sockets (the emulator, the hostile server, a closed port); only an error no
server can cause is mocked.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from ideogram_async import IdeogramClient, RetryPolicy, Timeouts, UpscaledImage, __version__
from ideogram_async.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    IdeogramError,
    NotFoundError,
    ResponseFormatError,
    ValidationError,
)
from ideogram_async.testing import Emulator, Fault, FaultPlan

from ._hostile import Hostile
from ._support import KEY, make_image

PNG = make_image("png", (4, 4))
NO_RETRIES = RetryPolicy.no_retries()
EXPIRED = "the image URL has expired or does not exist; download results soon after upscaling"


async def failure(base_url: str, timeouts: Timeouts | None = None) -> IdeogramError:
    """The error ``upscale`` raises against ``base_url``, tried once."""
    async with IdeogramClient(
        api_key=KEY, base_url=base_url, retry=NO_RETRIES, timeouts=timeouts
    ) as client:
        with pytest.raises(IdeogramError) as caught:
            await client.upscale(PNG)
    return caught.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_reset_after_the_upload_says_the_image_was_sent(hostile: Hostile) -> None:
    error = await failure(hostile.url("reset"))
    assert isinstance(error, APIConnectionError)
    assert str(error) == (
        f"upscale image.png: connection to {hostile.url('reset')} failed after the image was "
        "sent (ClientOSError: [Errno 104] Connection reset by peer); check base_url and the "
        "network"
    )
    assert (error.body_sent, error.transient, error.unreachable) == (True, True, False)


async def test_a_refused_connection_says_nothing_listens_and_nothing_was_sent() -> None:
    base_url = f"http://127.0.0.1:{free_port()}"
    error = await failure(base_url)
    assert isinstance(error, APIConnectionError)
    assert str(error) == (
        f"upscale image.png: connection to {base_url} failed (connection refused: nothing "
        "listens at that address); check base_url and the network"
    )
    assert (error.body_sent, error.unreachable) == (False, True)


async def test_an_unusable_answer_says_retrying_cannot_help(hostile: Hostile) -> None:
    error = await failure(hostile.url("big-headers"))
    assert isinstance(error, APIConnectionError)
    message = str(error)
    assert message.startswith(
        f"upscale image.png: connection to {hostile.url('big-headers')} failed after the "
        "image was sent (ClientResponseError: 400, "
    )
    assert message.endswith(
        "; retrying cannot help: the answer (a redirect or its headers) is unusable"
    )
    assert error.transient is False


async def test_a_timeout_after_the_upload_says_so_and_names_the_setting() -> None:
    slow = FaultPlan.always(Fault.slow(30))
    async with Emulator(api_key=KEY, upscale=False, faults=slow) as emulator:
        error = await failure(emulator.base_url, timeouts=Timeouts(attempt=0.2))
    assert isinstance(error, APITimeoutError)
    assert str(error) == (
        "the request timed out after the image was sent, after 0.2s (Timeouts.attempt); "
        "the service may be overloaded"
    )
    assert (error.kind, error.body_sent) == ("attempt", True)


async def test_a_timeout_during_the_upload_says_it_did_not_complete(hostile: Hostile) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(20 * 1024 * 1024)  # more than the socket buffers
    async with IdeogramClient(
        api_key=KEY, base_url=hostile.url("stall"), retry=NO_RETRIES, timeouts=Timeouts(attempt=1)
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.upscale(big)
    assert str(caught.value) == (
        "the request timed out before it completed, after 1s (Timeouts.attempt); "
        "the service may be overloaded"
    )
    assert (caught.value.kind, caught.value.body_sent) == ("attempt", False)


async def test_a_timeout_from_elsewhere_keeps_its_own_words() -> None:
    # No server can make aiohttp raise a bare TimeoutError that is not the attempt's own.
    with aioresponses() as mocked:
        mocked.post("http://127.0.0.1:9/ideogram/upscale", exception=TimeoutError("boom"))
        error = await failure("http://127.0.0.1:9")
    assert isinstance(error, APITimeoutError)
    assert str(error) == "the request timed out: boom"
    assert (error.kind, error.body_sent) == ("attempt", False)


async def test_a_download_of_an_expired_or_unknown_image_says_the_url_expired(
    tmp_path: Path,
) -> None:
    clock = [0.0]
    async with (
        Emulator(api_key=KEY, upscale=False, image_ttl=10, clock=lambda: clock[0]) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, retry=NO_RETRIES) as client,
    ):
        result = await client.upscale(PNG)
        clock[0] = 10.0
        cases: list[tuple[UpscaledImage | str, int]] = [
            (result.data[0], 410),
            (f"{emulator.base_url}/images/unknown.png", 404),
        ]
        for image, status in cases:
            with pytest.raises(NotFoundError) as caught:
                await client.download(image, tmp_path / "out.png")
            assert caught.value.status == status
            assert str(caught.value).endswith(f" — {EXPIRED}")
    assert not list(tmp_path.iterdir())


async def test_an_upscale_answered_404_points_at_base_url_not_at_expiry() -> None:
    async with Emulator(api_key=KEY, upscale=False) as emulator:
        error = await failure(emulator.base_url + "/nowhere")
    assert isinstance(error, NotFoundError)
    assert EXPIRED not in str(error)
    assert "check base_url and the flavor" in str(error)


async def test_a_download_url_aiohttp_cannot_fetch_is_a_validation_error(tmp_path: Path) -> None:
    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(ValidationError) as caught:
            await client.download("http://[::1/x.png", tmp_path / "x.png")
    assert str(caught.value) == (
        "download of x.png failed: not a URL it can fetch "
        "(InvalidUrlClientError: http://[::1/x.png); check it"
    )


async def test_a_malformed_2xx_that_echoes_the_key_keeps_its_status(hostile: Hostile) -> None:
    error = await failure(hostile.url("json-key", "u-201"))
    assert isinstance(error, ResponseFormatError)
    assert error.status == 201
    assert "HTTP 201" in str(error)
    assert KEY not in str(error)


async def test_a_poll_that_cannot_connect_names_the_generation_and_what_to_check() -> None:
    base_url = f"http://127.0.0.1:{free_port()}"
    async with IdeogramClient(
        api_key=KEY, base_url=base_url, flavor="official", retry=NO_RETRIES
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.v2.get_generation("gen-1")
    assert str(caught.value) == (
        f"poll of generation gen-1: connection to {base_url} failed (connection refused: "
        "nothing listens at that address); check base_url and the network"
    )


async def test_a_poll_answered_with_a_redirect_does_not_follow_it(hostile: Hostile) -> None:
    # The redirect points back at itself: followed, it would loop and send the key again.
    async with IdeogramClient(
        api_key=KEY, base_url=hostile.url("redirect", "loop"), flavor="official", retry=NO_RETRIES
    ) as client:
        with pytest.raises(APIStatusError) as caught:
            await client.v2.get_generation("gen-1")
    assert caught.value.status == 302
    assert "the API answered with a redirect, which is not followed" in str(caught.value)
    assert (await hostile.stats())["requests"] == 1


async def test_a_300_is_an_error_with_the_redirect_hint() -> None:
    redirect = FaultPlan.always(Fault.status(300))
    async with Emulator(api_key=KEY, upscale=False, faults=redirect) as emulator:
        error = await failure(emulator.base_url)
    assert isinstance(error, APIStatusError)
    assert error.status == 300
    assert "the API answered with a redirect, which is not followed" in str(error)


async def test_a_closed_client_says_how_to_keep_it_open() -> None:
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9")
    await client.aclose()
    with pytest.raises(ClientClosedError) as caught:
        await client.upscale(PNG)
    assert str(caught.value) == (
        "this IdeogramClient is closed; create a new one (or keep the 'async with' block "
        "open while you use it)"
    )


async def test_the_pool_has_a_connection_for_every_place_and_every_download() -> None:
    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=80) as c:
        connector = c._shared.pool.session().connector
        assert connector is not None
        assert connector.limit == 160


async def test_a_host_name_is_resolved_again_only_after_five_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]  # aiohttp's clock for its DNS cache (and its idle connections)
    monkeypatch.setattr(aiohttp.connector, "monotonic", lambda: now[0])
    resolved: list[float] = []

    class Counting(aiohttp.resolver.DefaultResolver):  # type: ignore[misc, valid-type]
        async def resolve(self, host: str, *args: Any, **kwargs: Any) -> Any:
            resolved.append(now[0] - 1000.0)
            return await super().resolve(host, *args, **kwargs)

    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", Counting)
    async with Emulator(api_key=KEY) as emulator:
        base_url = emulator.base_url.replace("127.0.0.1", "localhost")
        async with IdeogramClient(api_key=KEY, base_url=base_url, retry=NO_RETRIES) as client:
            # Each step is past aiohttp's 15 s keep-alive: every call connects anew.
            for at in (0.0, 285.0, 300.5):
                now[0] = 1000.0 + at
                await client.upscale(PNG)
    assert resolved == [0.0, 300.5]


async def test_every_request_names_the_library_and_aiohttp() -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        await client.upscale(PNG)
    agent = emulator.stats.uploads[0].headers["user-agent"]
    assert agent == f"ideogram-async/{__version__} aiohttp/{aiohttp.__version__}"


async def test_the_image_part_carries_the_sniffed_content_type() -> None:
    jpeg = make_image("jpeg", (4, 4))
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        await client.upscale(PNG, filename="a.jpg")  # the name does not decide the type
        await client.upscale(jpeg)
    assert [u.content_type for u in emulator.stats.uploads] == ["image/png", "image/jpeg"]
