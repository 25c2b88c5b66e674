"""IdeogramClient.upscale over a real socket against the emulator: the bytes on the wire."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ideogram_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    IdeogramClient,
    MagicPrompt,
    ResponseFormatError,
    RetryPolicy,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async.testing import Emulator, Fault, FaultPlan
from ideogram_async.uploads import prepare_image

from ._support import KEY, open_fds

DOCUMENTED_FIELDS = {
    "resemblance": 50,
    "magic_prompt_option": "AUTO",
    "prompt": "A serene tropical beach",
    "seed": 12345,
    "detail": 50,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_multipart_matches_the_spec_curl_example(
    emulator: Emulator, client: IdeogramClient, tmp_path: Path, png_bytes: bytes
) -> None:
    flux = tmp_path / "flux.png"
    flux.write_bytes(png_bytes)
    request = UpscaleRequest(
        resemblance=50,
        magic_prompt_option="AUTO",
        prompt="A serene tropical beach",
        seed=12345,
        detail=50,
    )
    result = await client.upscale(flux, request)

    upload = emulator.stats.last_upload
    assert upload is not None
    assert upload.route == "proxy"
    assert upload.part_names == ["image_request", "image_file"]
    assert json.loads(upload.image_request_raw) == DOCUMENTED_FIELDS
    assert ", " not in upload.image_request_raw
    assert ": " not in upload.image_request_raw
    assert "%20" not in upload.image_request_raw
    assert upload.filename == "flux.png"
    assert upload.content_type == "image/png"
    assert upload.sha256 == sha(png_bytes)
    assert upload.size == len(png_bytes)
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    assert upload.headers["accept"] == "application/json"
    assert "api-key" not in upload.headers
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    # A known length, not chunked: some proxies refuse chunked uploads.
    assert "content-length" in upload.headers
    assert result.created.tzinfo is not None
    assert len(result.data) == 1
    assert result.data[0].url
    assert result.data[0].url.startswith(emulator.base_url)
    assert result.data[0].seed == 12345


async def test_each_part_is_a_form_data_part_byte_for_byte(png_bytes: bytes) -> None:
    """The parts' headers as they go on the wire (the emulator parses, so it forgives)."""
    bodies: list[bytes] = []

    async def upscale(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"created": "2000-01-23T04:56:07Z", "data": []})

    app = web.Application()
    app.router.add_post("/ideogram/upscale", upscale)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with IdeogramClient(api_key=KEY, base_url=base_url) as client:
            await client.upscale(png_bytes, UpscaleRequest(seed=1), filename="x.png")
    finally:
        await runner.cleanup()
    assert b'\r\nContent-Disposition: form-data; name="image_request"\r\n' in bodies[0]
    file_part = b'\r\nContent-Disposition: form-data; name="image_file"; filename="x.png"'
    assert file_part in bodies[0]


async def test_unset_fields_are_omitted_not_null(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    await client.upscale(png_bytes, UpscaleRequest(detail=70))
    assert emulator.stats.last_upload is not None
    assert emulator.stats.last_upload.image_request_raw == '{"detail":70}'
    await client.upscale(png_bytes)
    assert emulator.stats.last_upload.image_request_raw == "{}"


async def test_unicode_prompt_is_plain_json(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    prompt = 'Plage tropicale sereine, 100% ☀️ "quoted"'
    await client.upscale(
        png_bytes, UpscaleRequest(prompt=prompt, magic_prompt_option=MagicPrompt.OFF)
    )
    upload = emulator.stats.last_upload
    assert upload is not None
    assert upload.fields == {"prompt": prompt, "magic_prompt_option": "OFF"}


async def test_official_flavor_uses_api_key_header_and_upscale_path(
    emulator: Emulator, png_bytes: bytes
) -> None:
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as c:
        result = await c.upscale(png_bytes)
    upload = emulator.stats.last_upload
    assert upload is not None
    assert upload.route == "official"
    assert upload.headers["api-key"] == KEY
    assert "authorization" not in upload.headers
    # The official API's "2000-01-23 04:56:07+00:00" form parses to an aware datetime too.
    assert result.created.utcoffset() is not None


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


INPUT_KINDS: dict[str, Callable[[bytes, Path], Any]] = {
    "str path": lambda data, path: str(path),
    "PathLike": lambda data, path: path,
    "bytes": lambda data, path: data,
    "bytearray": lambda data, path: bytearray(data),
    "memoryview": lambda data, path: memoryview(data),
    "file object": lambda data, path: io.BytesIO(data),
    "async stream": lambda data, path: _chunks(data),
}


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
@pytest.mark.parametrize(
    ("fmt", "content_type"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]
)
async def test_every_input_kind_and_format_arrives_intact(
    emulator: Emulator,
    client: IdeogramClient,
    tmp_path: Path,
    image_bytes: Callable[..., bytes],
    kind: str,
    fmt: str,
    content_type: str,
) -> None:
    data = image_bytes(fmt, size=(64, 48))
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(data)
    result = await client.upscale(INPUT_KINDS[kind](data, path))
    upload = emulator.stats.last_upload
    assert upload is not None
    assert (upload.sha256, upload.size, upload.content_type) == (sha(data), len(data), content_type)
    assert result.data[0].resolution == "128x96"  # the emulator doubles 64x48


async def test_callers_file_is_left_open_and_client_files_are_closed(
    client: IdeogramClient, png_path: Path
) -> None:
    with png_path.open("rb") as mine:
        await client.upscale(mine)
        assert not mine.closed
        assert mine.tell() == 0  # rewound to where it started
    await client.upscale(png_path)
    assert str(png_path) not in open_fds().values()


async def test_filename_override(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes
) -> None:
    await client.upscale(png_bytes, filename="holiday.png")
    assert emulator.stats.last_upload is not None
    assert emulator.stats.last_upload.filename == "holiday.png"


def _bad_inputs(tmp_path: Path, png_bytes: bytes) -> dict[str, tuple[Any, dict[str, Any] | None]]:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"GIF89a not really a png")
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes + b"\0" * 2048)
    return {
        "missing path": (tmp_path / "nope.png", None),
        "directory": (tmp_path, None),
        "empty file": (empty, None),
        "not an image": (fake, None),
        "over the cap": (big, None),
        "resemblance": (png_bytes, {"resemblance": 101}),
        "detail": (png_bytes, {"detail": 0}),
        "seed": (png_bytes, {"seed": -1}),
        "num_images": (png_bytes, {"num_images": 9}),
        "magic prompt": (png_bytes, {"magic_prompt_option": "SOMETIMES"}),
        "bool as int": (png_bytes, {"seed": True}),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "directory",
        "empty file",
        "not an image",
        "over the cap",
        "resemblance",
        "detail",
        "seed",
        "num_images",
        "magic prompt",
        "bool as int",
    ],
)
async def test_bad_input_raises_before_anything_is_sent(
    emulator: Emulator, tmp_path: Path, png_bytes: bytes, case: str
) -> None:
    image, options = _bad_inputs(tmp_path, png_bytes)[case]
    async with IdeogramClient(
        api_key=KEY, base_url=emulator.base_url, max_file_size=len(png_bytes) + 1024
    ) as client:

        async def build_and_send() -> None:
            request = UpscaleRequest(**options) if options else None
            await client.upscale(image, request)

        with pytest.raises(ValidationError) as caught:
            await build_and_send()
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)
    assert emulator.stats.requests == 0


async def test_wrong_key_is_an_authentication_error(emulator: Emulator, png_bytes: bytes) -> None:
    async with IdeogramClient(api_key="wrong-key-123", base_url=emulator.base_url) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.upscale(png_bytes)
    assert caught.value.status == 401
    assert caught.value.attempts == 1
    assert "wrong-key-123" not in str(caught.value) + caught.value.body


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(Fault.malformed_json(), "not JSON"), (Fault.wrong_shape(), "created")],
)
async def test_malformed_success_body_is_a_format_error(
    png_bytes: bytes, fault: Fault, kind: str
) -> None:
    async with (
        Emulator(api_key=KEY, faults=FaultPlan.always(fault)) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        with pytest.raises(ResponseFormatError) as caught:
            await client.upscale(png_bytes)
    assert kind in str(caught.value)
    assert emulator.stats.requests == 1  # a malformed 200 is not retried


async def test_service_rejection_is_not_retried(emulator: Emulator, png_bytes: bytes) -> None:
    # Bytes that sniff as PNG but do not decode: the service answers 400.
    broken = png_bytes[:16] + b"\0" * 64
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.upscale(broken)
    assert caught.value.status == 400
    assert emulator.stats.requests == 1


async def test_client_used_after_close_is_a_clear_error(
    emulator: Emulator, png_bytes: bytes, tmp_path: Path
) -> None:
    client = IdeogramClient(api_key=KEY, base_url=emulator.base_url)
    async with client:
        assert client.closed is False  # a bool, as typed
        await client.upscale(png_bytes)
    assert client.closed is True
    with pytest.raises(ClientClosedError, match="closed"):
        await client.upscale(png_bytes)
    with pytest.raises(ClientClosedError):
        # Checked first: a missing file does not mask the real problem.
        await client.upscale(tmp_path / "missing.png")
    with pytest.raises(ClientClosedError):
        client.upscale_many([png_bytes])
    with pytest.raises(ClientClosedError):
        await client.download(emulator.base_url + "/images/x.png", tmp_path / "x.png")
    with pytest.raises(RuntimeError):  # ClientClosedError is also a RuntimeError
        async with client:
            pass
    await client.aclose()  # idempotent
    assert emulator.stats.requests == 1
    assert len(emulator.stats.image_requests) == 0


async def test_a_passed_session_is_used_and_left_open(emulator: Emulator, png_bytes: bytes) -> None:
    async with aiohttp.ClientSession() as session:
        async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, session=session) as c:
            await c.upscale(png_bytes)
        assert not session.closed
        async with session.get(emulator.base_url + "/nowhere") as response:
            assert response.status == 404
    assert emulator.stats.requests == 1


async def test_fifty_megabyte_upload_is_streamed_not_read_whole(
    tmp_path: Path, png_bytes: bytes
) -> None:
    size = 50 * 1024 * 1024
    big = tmp_path / "big.png"
    with big.open("wb") as file:
        file.write(png_bytes[:16])
        file.truncate(size)  # sparse: no 50 MB write needed
    async with (
        Emulator(api_key=KEY, upscale=False, max_file_size=size) as emulator,
        IdeogramClient(
            api_key=KEY,
            base_url=emulator.base_url,
            max_file_size=size,
            retry=RetryPolicy.no_retries(),
        ) as client,
    ):
        tracemalloc.start()
        try:
            await client.upscale(big)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert emulator.stats.bytes_received == size
    # Client and emulator together stay far below the file size (chunks, not the file).
    assert peak < size / 10, f"peak traced memory {peak / 1e6:.1f} MB"


async def test_a_redirect_from_the_api_is_not_followed(png_bytes: bytes) -> None:
    elsewhere: list[dict[str, str]] = []

    async def other_host(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.json_response({})

    urls: list[str] = []  # [other host, API], filled in once both listen

    async def api(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(urls[0] + "/steal")

    other_app, api_app = web.Application(), web.Application()
    other_app.router.add_route("*", "/steal", other_host)
    api_app.router.add_post("/ideogram/upscale", api)
    runners = [web.AppRunner(other_app), web.AppRunner(api_app)]
    for runner in runners:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        async with IdeogramClient(api_key=KEY, base_url=urls[1]) as client:
            with pytest.raises(APIStatusError) as caught:
                await client.upscale(png_bytes)
    finally:
        for runner in runners:
            await runner.cleanup()
    assert caught.value.status == 307
    assert elsewhere == []  # neither the image nor the key went to the other host


async def test_a_gather_checks_at_most_twice_the_allowance_of_inputs_at_once(
    emulator: Emulator, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    checking: list[int] = []
    peak = 0
    release, four = asyncio.Event(), asyncio.Event()
    real = prepare_image

    async def slow_check(image: Any, **options: Any) -> Any:
        nonlocal peak
        checking.append(1)
        peak = max(peak, len(checking))
        if len(checking) == 4:
            four.set()
        await release.wait()
        checking.pop()
        return await real(image, **options)

    monkeypatch.setattr("ideogram_async._attempt.prepare_image", slow_check)
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=2) as client:
        calls = asyncio.gather(*(client.upscale(png_bytes) for _ in range(20)))
        await four.wait()
        for _ in range(20):
            await asyncio.sleep(0)  # room for any more to start checking (none may)
        assert len(checking) == 4
        release.set()
        assert len(await calls) == 20
    assert peak == 4


async def test_download_keeps_to_the_clients_max_download_size_as_announced(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes, tmp_path: Path
) -> None:
    (image,) = (await client.upscale(png_bytes)).data
    whole = await client.download(image, tmp_path / "whole.png")
    size = whole.stat().st_size
    small = client.with_options(max_download_size=size - 1)
    with pytest.raises(ResponseFormatError) as caught:
        await small.download(image, tmp_path / "small.png")
    assert str(caught.value) == (
        f"the image for small.png is larger than max_download_size ({size - 1} bytes) "
        f"({size} bytes announced); raise max_download_size if such images are expected"
    )
    assert not (tmp_path / "small.png").exists()


async def test_download_of_a_gzip_encoded_image_is_judged_by_the_decoded_bytes(
    png_bytes: bytes, tmp_path: Path
) -> None:
    encoded = gzip.compress(png_bytes)
    assert len(encoded) != len(png_bytes)  # the Content-Length counts the encoded bytes

    async def image(_: web.Request) -> web.Response:
        return web.Response(
            body=encoded, headers={"Content-Encoding": "gzip", "Content-Type": "image/png"}
        )

    app = web.Application()
    app.router.add_get("/image", image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/image"
        async with IdeogramClient(
            api_key=KEY, base_url="http://127.0.0.1:9", retry=RetryPolicy.no_retries()
        ) as client:
            path = await client.download(url, tmp_path / "out.png")
    finally:
        await runner.cleanup()
    assert path.read_bytes() == png_bytes
