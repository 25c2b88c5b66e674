"""``IdeogramClient`` settings and life cycle, checked without a service.

Requests on the wire are tested against the emulator (test_client.py, test_errors.py);
aioresponses is kept for what only a mock can show: the exact URL a request goes to
(the real ``api.ideogram.ai``, a base URL with a path).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from ideogram_async import (
    Flavor,
    IdeogramClient,
    RetryPolicy,
    ValidationError,
)
from ideogram_async.limits import LocalAllowance
from ideogram_async.testing import Emulator

KEY = "sk-test-Zq7XUNIQUEkey9f3"
BASE = "http://127.0.0.1:9"
URL_PROXY = f"{BASE}/ideogram/upscale"
OK_BODY = {
    "created": "2000-01-23T04:56:07.000Z",
    "data": [{"url": "http://127.0.0.1:9/img/1.png", "seed": 1, "is_image_safe": True}],
}


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` argument
    (pnuckowski/aioresponses#289); supply a stand-in so its mocked responses build."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


def reply(
    mocked: aioresponses,
    status: int = 200,
    body: str | None = None,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    url: str = URL_PROXY,
) -> None:
    mocked.post(
        url,
        status=status,
        body=json.dumps(OK_BODY) if body is None else body,
        content_type=content_type,
        headers=headers,
        response_class=CompatResponse,
    )


def sent(mocked: aioresponses, url: str = URL_PROXY) -> list[Any]:
    return list(mocked.requests.get(("POST", URL(url)), []))


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEOGRAM_API_KEY", raising=False)
    monkeypatch.delenv("IDEOGRAM_BASE_URL", raising=False)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[IdeogramClient]:
    async with IdeogramClient(api_key=KEY, base_url=BASE, retry=RetryPolicy.no_retries()) as client:
        yield client


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


# --- construction -----------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "   "])
def test_a_missing_key_is_an_error_naming_the_env_var(key: str | None) -> None:
    with pytest.raises(ValidationError, match="IDEOGRAM_API_KEY"):
        IdeogramClient(api_key=key, base_url=BASE)


def test_an_empty_env_key_is_still_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", "")
    with pytest.raises(ValidationError, match="IDEOGRAM_API_KEY"):
        IdeogramClient(base_url=BASE)


async def test_key_and_base_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, mocked: aioresponses, png_bytes: bytes
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", f"  {KEY}\n")
    monkeypatch.setenv("IDEOGRAM_BASE_URL", "http://127.0.0.1:8/prefix/")
    url = "http://127.0.0.1:8/prefix/ideogram/upscale"
    reply(mocked, url=url)
    async with IdeogramClient(retry=RetryPolicy.no_retries()) as client:
        assert client.base_url == "http://127.0.0.1:8/prefix"
        await client.upscale(png_bytes)
    [call] = sent(mocked, url)
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", "env-key")
    monkeypatch.setenv("IDEOGRAM_BASE_URL", "http://env.invalid")
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    assert client.base_url == BASE
    assert client._attempts.settings.key.reveal() == KEY


def test_the_proxy_flavor_needs_a_base_url() -> None:
    with pytest.raises(ValidationError, match="IDEOGRAM_BASE_URL"):
        IdeogramClient(api_key=KEY)
    with pytest.raises(ValidationError, match="IDEOGRAM_BASE_URL"):
        IdeogramClient(api_key=KEY, flavor="proxy")


@pytest.mark.parametrize("flavor", [Flavor.OFFICIAL, "official"])
def test_the_official_flavor_defaults_to_api_ideogram_ai(flavor: Flavor | str) -> None:
    client = IdeogramClient(api_key=KEY, flavor=flavor)
    assert client.flavor is Flavor.OFFICIAL
    assert client.base_url == "https://api.ideogram.ai"


@pytest.mark.parametrize("flavor", ["offical", "PROXY ", "", None, 1])
def test_an_unknown_flavor_is_an_error(flavor: object) -> None:
    with pytest.raises(ValidationError, match="flavor") as info:
        IdeogramClient(api_key=KEY, base_url=BASE, flavor=flavor)  # type: ignore[arg-type]
    assert repr(flavor) in str(info.value)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "4"])
def test_a_bad_allowance_is_an_error(value: object) -> None:
    with pytest.raises(ValidationError, match="allowance must be"):
        IdeogramClient(api_key=KEY, base_url=BASE, allowance=value)  # type: ignore[arg-type]


def test_settings_errors_name_the_argument() -> None:
    with pytest.raises(ValidationError, match="allowance must be a number of images in flight"):
        IdeogramClient(api_key=KEY, base_url=BASE, allowance=0)
    with pytest.raises(ValidationError, match="requests_per_second must be a number > 0 or None"):
        IdeogramClient(api_key=KEY, base_url=BASE, requests_per_second=0)
    with pytest.raises(ValidationError, match="adaptive must be a bool, got str"):
        IdeogramClient(api_key=KEY, base_url=BASE, adaptive="no")  # type: ignore[arg-type]


def test_an_allowance_of_one_is_fine() -> None:
    assert IdeogramClient(api_key=KEY, base_url=BASE, allowance=1).allowance.maximum == 1


def test_the_allowance_defaults_to_ten_adaptive_places() -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    assert isinstance(client.allowance, LocalAllowance)
    assert (client.allowance.maximum, client.allowance.limit) == (10, 10)


def test_an_allowance_object_is_used_as_is_and_left_open() -> None:
    shared = LocalAllowance(6)
    first = IdeogramClient(api_key=KEY, base_url=BASE, allowance=shared)
    second = IdeogramClient(api_key=KEY, base_url=BASE, allowance=shared)
    assert first.allowance is second.allowance is shared
    assert first.allowance.maximum == 6
    with pytest.raises(
        ValidationError, match="adaptive= applies to an allowance given as a number"
    ):
        IdeogramClient(api_key=KEY, base_url=BASE, allowance=shared, adaptive=False)


async def test_connections_checks_and_downloads_follow_the_allowances_maximum() -> None:
    # API requests and downloads each get the maximum's worth of connections, so a call
    # holding places never waits for the pool; twice the maximum of inputs are read at once.
    async with IdeogramClient(api_key=KEY, base_url=BASE, allowance=3) as client:
        connector = client._shared.pool.session().connector
        assert connector is not None
        assert connector.limit == 6
        for gate, room in ((client._attempts.checks, 6), (client._shared.downloads, 3)):
            for _ in range(room):
                assert not gate.locked()
                await gate.acquire()
            assert gate.locked()
            for _ in range(room):
                gate.release()


def test_requests_per_second_is_a_rate_per_second_and_unset_is_no_limiter() -> None:
    limited = IdeogramClient(api_key=KEY, base_url=BASE, requests_per_second=5)
    limiter = limited._attempts.limiter
    assert limiter is not None
    assert (limiter.max_rate, limiter.time_period) == (5, 1)
    assert IdeogramClient(api_key=KEY, base_url=BASE)._attempts.limiter is None


@pytest.mark.parametrize("adaptive", [False, True])
async def test_adaptive_is_passed_to_the_allowance_built_from_a_number(adaptive: bool) -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE, allowance=8, adaptive=adaptive)
    await client.allowance.rejected(None)  # nothing held here: others hold the places
    assert client.allowance.limit == (1 if adaptive else 8)


@pytest.mark.parametrize("base", ["127.0.0.1:9", "ftp://127.0.0.1", "api.ideogram.ai"])
def test_a_base_url_without_http_scheme_is_an_error(base: str) -> None:
    with pytest.raises(ValidationError, match="base_url"):
        IdeogramClient(api_key=KEY, base_url=base)


@pytest.mark.parametrize("header", ["Authorization", "authorization", "Api-Key"])
async def test_a_session_with_a_default_auth_header_is_refused(header: str) -> None:
    async with aiohttp.ClientSession(headers={header: "Bearer x"}) as session:
        with pytest.raises(ValidationError, match="leak the key"):
            IdeogramClient(api_key=KEY, base_url=BASE, session=session)


def test_repr_and_str_hide_the_key() -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    assert_no_key(repr(client), str(client), repr(vars(client)), f"{client!r:>10}")
    assert "key='***'" in repr(client)
    assert BASE in repr(client)


# --- lifecycle --------------------------------------------------------------------------


async def test_closing_a_client_that_never_opened_is_fine() -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    await client.aclose()
    assert client.closed


# --- the request ------------------------------------------------------------------------


async def test_an_official_request_uses_the_api_key_header(
    mocked: aioresponses, png_bytes: bytes
) -> None:
    url = "https://api.ideogram.ai/upscale"
    reply(mocked, url=url)
    async with IdeogramClient(api_key=KEY, flavor="official", retry=RetryPolicy.no_retries()) as c:
        await c.upscale(png_bytes)
    [call] = sent(mocked, url)
    assert call.kwargs["headers"]["Api-Key"] == KEY
    assert "Authorization" not in call.kwargs["headers"]


async def test_bad_arguments_fail_before_the_network(
    emulator: Emulator, tmp_path: Path, png_bytes: bytes
) -> None:
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client:
        with pytest.raises(ValidationError, match="no such file"):
            await client.upscale(tmp_path / "missing.png")
        with pytest.raises(ValidationError, match="UpscaleRequest"):
            await client.upscale(png_bytes, {"prompt": "x"})  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="RetryPolicy"):
            await client.upscale(png_bytes, retry=3)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="RetryPolicy"):
            client.upscale_many([png_bytes], retry="often")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="RetryPolicy"):
            await client.download(emulator.base_url + "/images/x.png", "x.png", retry=1)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="not a JPEG, PNG or WebP"):
            await client.upscale(b"GIF89a not accepted")
    assert emulator.stats.requests == 0
    assert len(emulator.stats.image_requests) == 0


@pytest.mark.parametrize("setting", ["retry", "timeouts"])
def test_settings_of_the_wrong_type_are_refused(setting: str) -> None:
    with pytest.raises(ValidationError, match=setting):
        IdeogramClient(api_key=KEY, base_url=BASE, **{setting: {"attempts": 3}})  # type: ignore[arg-type]
