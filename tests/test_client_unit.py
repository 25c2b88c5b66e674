"""``IdeogramClient`` settings and request/response mapping, with aioresponses (no sockets).

Real-socket behaviour (retries, concurrency, the emulator) is tested elsewhere.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from ideogram_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    Flavor,
    IdeogramClient,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    UpscaledImage,
    UpscaleRequest,
    UpscaleResponse,
    ValidationError,
)
from ideogram_async.allowance import LocalAllowance

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
    assert client._key.reveal() == KEY


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
def test_a_bad_max_concurrency_is_an_error(value: object) -> None:
    with pytest.raises(ValidationError, match="max_concurrency"):
        IdeogramClient(api_key=KEY, base_url=BASE, max_concurrency=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "4"])
def test_a_bad_allowance_is_an_error(value: object) -> None:
    with pytest.raises(ValidationError, match="allowance must be"):
        IdeogramClient(api_key=KEY, base_url=BASE, allowance=value)  # type: ignore[arg-type]


def test_max_concurrency_of_one_is_fine() -> None:
    assert IdeogramClient(api_key=KEY, base_url=BASE, max_concurrency=1).max_concurrency == 1


def test_the_allowance_defaults_to_ten_adaptive_places() -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    assert isinstance(client.allowance, LocalAllowance)
    assert (client.allowance.maximum, client.allowance.limit, client.max_concurrency) == (
        10,
        10,
        10,
    )


def test_max_concurrency_is_the_former_name_of_the_allowance() -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE, max_concurrency=4, adaptive=False)
    assert client.allowance.maximum == 4
    with pytest.raises(ValidationError, match="not both"):
        IdeogramClient(api_key=KEY, base_url=BASE, allowance=4, max_concurrency=4)


def test_an_allowance_object_is_used_as_is_and_left_open() -> None:
    shared = LocalAllowance(6)
    first = IdeogramClient(api_key=KEY, base_url=BASE, allowance=shared)
    second = IdeogramClient(api_key=KEY, base_url=BASE, allowance=shared)
    assert first.allowance is second.allowance is shared
    assert first.max_concurrency == 6
    with pytest.raises(
        ValidationError, match="adaptive= applies to an allowance given as a number"
    ):
        IdeogramClient(api_key=KEY, base_url=BASE, allowance=shared, adaptive=False)


@pytest.mark.parametrize("adaptive", [False, True])
async def test_adaptive_is_passed_to_the_allowance_built_from_a_number(adaptive: bool) -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE, allowance=8, adaptive=adaptive)
    await client.allowance.rejected(None)
    assert client.allowance.limit == (4 if adaptive else 8)


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
    assert "***" in repr(client)
    assert BASE in repr(client)


# --- lifecycle --------------------------------------------------------------------------


async def test_using_a_closed_client_is_an_error(tmp_path: Path) -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    async with client:
        assert not client.closed
    assert client.closed
    with pytest.raises(ClientClosedError):
        # Checked first: a missing file does not mask the real problem.
        await client.upscale(tmp_path / "missing.png")
    with pytest.raises(ClientClosedError):
        client.upscale_many([b"x"])
    with pytest.raises(ClientClosedError):
        await client.download("http://127.0.0.1:9/x.png", tmp_path / "x.png")
    with pytest.raises(RuntimeError):  # ClientClosedError is also a RuntimeError
        async with client:
            pass
    await client.aclose()  # idempotent


async def test_closing_a_client_that_never_opened_is_fine() -> None:
    client = IdeogramClient(api_key=KEY, base_url=BASE)
    await client.aclose()
    assert client.closed


async def test_a_session_passed_in_is_used_and_not_closed(
    mocked: aioresponses, png_bytes: bytes
) -> None:
    reply(mocked)
    async with aiohttp.ClientSession(headers={"X-App": "mine"}) as session:
        async with IdeogramClient(
            api_key=KEY, base_url=BASE, session=session, retry=RetryPolicy.no_retries()
        ) as client:
            await client.upscale(png_bytes)
        assert client.closed
        assert not session.closed
    [call] = sent(mocked)
    assert call.kwargs["headers"]["X-App"] == "mine"


# --- the request ------------------------------------------------------------------------


async def test_a_proxy_request_has_the_documented_url_headers_and_parts(
    mocked: aioresponses, client: IdeogramClient, png_path: Path, png_bytes: bytes
) -> None:
    reply(mocked)
    request = UpscaleRequest(prompt="A serene tropical beach", resemblance=50, seed=12345)
    response = await client.upscale(png_path, request)
    assert isinstance(response, UpscaleResponse)
    assert response.data == [
        UpscaledImage(url="http://127.0.0.1:9/img/1.png", seed=1, is_image_safe=True)
    ]
    [call] = sent(mocked)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Accept"] == "application/json"
    assert "Api-Key" not in headers
    assert call.kwargs["allow_redirects"] is False

    # Serialise the multipart body the client built and read it back.
    body: aiohttp.MultipartWriter = call.kwargs["data"]
    chunks: list[bytes] = []

    class Writer:
        async def write(self, chunk: bytes) -> None:
            chunks.append(bytes(chunk))

    await body.write(Writer())  # type: ignore[arg-type]
    raw = f"Content-Type: {body.content_type}\r\n\r\n".encode() + b"".join(chunks)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    parts = {}
    for part in message.iter_parts():
        parts[part.get_param("name", header="content-disposition")] = part
    assert set(parts) == {"image_request", "image_file"}
    form = parts["image_request"]
    assert form.get_filename() is None  # a plain form field, not a file part
    assert json.loads(cast(bytes, form.get_payload(decode=True))) == json.loads(request.to_json())
    image = parts["image_file"]
    assert image.get_filename() == "photo.png"
    assert image.get_content_type() == "image/png"
    assert image.get_payload(decode=True) == png_bytes


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
    mocked: aioresponses, client: IdeogramClient, tmp_path: Path, png_bytes: bytes
) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        await client.upscale(tmp_path / "missing.png")
    with pytest.raises(ValidationError, match="UpscaleRequest"):
        await client.upscale(png_bytes, {"prompt": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="RetryPolicy"):
        await client.upscale(png_bytes, retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not a JPEG, PNG or WebP"):
        await client.upscale(b"GIF89a not accepted")
    assert mocked.requests == {}


# --- error mapping ----------------------------------------------------------------------

HTML_503 = (
    "<html>\n<head><title>503 Service Temporarily Unavailable</title></head>\n<body>\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\n"
    "<hr><center>nginx</center>\n</body>\n</html>\n"
)
JSON = "application/json"

# (status, class, body, content type, the detail the message must carry)
ERROR_CASES = [
    (400, BadRequestError, '{"detail": "image_request is not JSON"}', JSON, "is not JSON"),
    (401, AuthenticationError, '{"message": "Invalid credentials"}', JSON, "Invalid credentials"),
    (402, PaymentRequiredError, '{"error": "Insufficient balance"}', JSON, "Insufficient balance"),
    (403, AuthenticationError, '{"error": {"message": "Not allowed"}}', JSON, "Not allowed"),
    (404, NotFoundError, "Not Found", "text/plain", "Not Found"),
    (413, BadRequestError, "<html><h1>413 Too Large</h1></html>", "text/html", "413 Too Large"),
    (422, BadRequestError, '{"detail": [{"msg": "must be <= 100"}]}', JSON, "must be <= 100"),
    (429, RateLimitError, '{"detail": "Too many requests"}', JSON, "Too many requests"),
    (500, ServerError, '{"detail": "Internal error"}', JSON, "Internal error"),
    (503, ServerError, HTML_503, "text/html", "503 Service Temporarily Unavailable"),
]


@pytest.mark.parametrize(
    ("status", "cls", "body", "content_type", "detail"),
    ERROR_CASES,
    ids=[str(case[0]) for case in ERROR_CASES],
)
async def test_error_statuses_map_to_exceptions(
    mocked: aioresponses,
    client: IdeogramClient,
    png_bytes: bytes,
    status: int,
    cls: type[APIError],
    body: str,
    content_type: str,
    detail: str,
) -> None:
    headers = {"x-request-id": f"req-{status}"}
    if status == 429:
        headers["Retry-After"] = "7"
    reply(mocked, status, body, content_type=content_type, headers=headers)
    with pytest.raises(APIError) as info:
        await client.upscale(png_bytes)
    error = info.value
    assert type(error) is cls
    assert error.status == status
    assert detail in error.message
    assert detail in str(error)
    assert str(status) in str(error)
    assert error.request_id == f"req-{status}"
    assert f"req-{status}" in str(error)
    assert error.body == body
    assert error.attempts == 1
    assert error.retry_after == (7.0 if status == 429 else None)
    if "html" in content_type:
        assert "HTML" in error.message
        assert "\n" not in error.message
    assert_no_key(str(error), repr(error), error.body)
    assert len(sent(mocked)) == 1


@pytest.mark.parametrize("header", ["request-id", "x-amzn-requestid", "cf-ray"])
async def test_other_request_id_headers(
    mocked: aioresponses, client: IdeogramClient, png_bytes: bytes, header: str
) -> None:
    reply(mocked, 500, "oops", content_type="text/plain", headers={header: "abc-1"})
    with pytest.raises(ServerError) as info:
        await client.upscale(png_bytes)
    assert info.value.request_id == "abc-1"


async def test_x_should_retry_is_read(
    mocked: aioresponses, client: IdeogramClient, png_bytes: bytes
) -> None:
    reply(mocked, 503, "", content_type="text/plain", headers={"x-should-retry": "false"})
    with pytest.raises(ServerError) as info:
        await client.upscale(png_bytes)
    assert info.value.should_retry is False
    assert info.value.message  # an empty body still gives a message


async def test_the_key_never_appears_in_an_error_even_when_the_service_echoes_it(
    mocked: aioresponses, client: IdeogramClient, png_bytes: bytes
) -> None:
    body = json.dumps({"detail": f"Invalid API key: {KEY}"})
    reply(mocked, 401, body)
    with pytest.raises(AuthenticationError) as info:
        await client.upscale(png_bytes)
    error = info.value
    assert "Invalid API key" in str(error)
    assert_no_key(str(error), repr(error), error.message, error.body)


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>It works!</body></html>",
        '{"created": "2000-01-23T04:56:07.000Z"}',
        '{"created": "2000-01-23T04:56:07.000Z", "data": [{"url": 5}]}',
    ],
    ids=["html", "no data", "url int"],
)
async def test_a_200_with_a_malformed_body_is_a_response_format_error(
    mocked: aioresponses, client: IdeogramClient, png_bytes: bytes, body: str
) -> None:
    reply(mocked, 200, body)
    with pytest.raises(ResponseFormatError) as info:
        await client.upscale(png_bytes)
    assert info.value.status == 200
    assert info.value.body == body
    assert info.value.attempts == 1
    assert len(sent(mocked)) == 1  # not retried


@pytest.mark.parametrize("setting", ["retry", "timeouts"])
def test_settings_of_the_wrong_type_are_refused(setting: str) -> None:
    with pytest.raises(ValidationError, match=setting):
        IdeogramClient(api_key=KEY, base_url=BASE, **{setting: {"attempts": 3}})  # type: ignore[arg-type]


async def test_a_bad_per_call_policy_is_refused_before_anything_runs(
    client: IdeogramClient, mocked: aioresponses, png_bytes: bytes
) -> None:
    with pytest.raises(ValidationError, match="RetryPolicy"):
        await client.upscale(png_bytes, retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="RetryPolicy"):
        client.upscale_many([png_bytes], retry="often")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="RetryPolicy"):
        await client.download("https://images.example/x.png", "x.png", retry=1)  # type: ignore[arg-type]
    assert sent(mocked) == []


async def test_a_redirect_is_not_followed_and_says_why(
    client: IdeogramClient, mocked: aioresponses, png_bytes: bytes
) -> None:
    reply(mocked, 301, "", content_type="text/html", headers={"Location": "https://elsewhere/"})
    with pytest.raises(APIError) as caught:
        await client.upscale(png_bytes)
    assert caught.value.status == 301
    assert "redirect" in str(caught.value)
    assert "base_url" in str(caught.value)
    assert len(sent(mocked)) == 1  # nothing went to the Location
