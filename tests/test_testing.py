"""The emulator of ``ideogram_async.testing``, exercised over real sockets with raw aiohttp."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from PIL import Image

from ideogram_async.testing import (
    Emulator,
    EmulatorStats,
    Fault,
    FaultPlan,
    serve_main,
)
from ideogram_async.testing._multipart import Reject
from ideogram_async.testing._serve import _parser

from ._support import make_image, sleep_noting

KEY = "test-key"
PROXY_AUTH = {"Authorization": f"Bearer {KEY}"}
OFFICIAL_AUTH = {"Api-Key": KEY}
PROXY_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
OFFICIAL_CREATED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00")
REQUEST = {"resemblance": 60, "detail": 70, "magic_prompt_option": "AUTO", "seed": 12345}
RAW_REQUEST = json.dumps(REQUEST)
# Passes the type sniffing but cannot be decoded.
FAKE_PNG = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4


PNG = make_image("png", (8, 6))


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def form(
    image_request: str | None = RAW_REQUEST,
    image: bytes | None = PNG,
    *,
    filename: str | None = "photo.png",
    content_type: str = "image/png",
) -> aiohttp.MultipartWriter:
    """A multipart body like the service expects, with any part left out or altered."""
    writer = aiohttp.MultipartWriter("form-data")
    if image_request is not None:
        writer.append(image_request).set_content_disposition("form-data", name="image_request")
    if image is not None:
        part = writer.append(image, {"Content-Type": content_type})
        if filename is None:
            part.set_content_disposition("form-data", name="image_file")
        else:
            part.set_content_disposition("form-data", name="image_file", filename=filename)
    return writer


def url(emu: Emulator, route: str) -> str:
    return emu.base_url + ("/ideogram/upscale" if route == "proxy" else "/upscale")


def auth(route: str) -> dict[str, str]:
    return PROXY_AUTH if route == "proxy" else OFFICIAL_AUTH


async def upscale(
    session: aiohttp.ClientSession,
    emu: Emulator,
    data: Any = None,
    route: str = "proxy",
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> tuple[int, CIMultiDictProxy[str], Any]:
    """POST an upscale; return the status, headers and parsed JSON (or text) body."""
    payload = form() if data is None else data
    async with session.post(
        url(emu, route), data=payload, headers=auth(route), timeout=client_timeout
    ) as resp:
        text = await resp.text()
        body = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, resp.headers, body


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> list[float]:
    """A fake monotonic clock: tests move ``clock[0]`` instead of sleeping."""
    return [0.0]


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Faults must be injected cleanly: aiohttp logs no error while serving them."""
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    errors = [
        r.getMessage()
        for r in records
        if r.name.startswith("aiohttp") and r.levelno >= logging.ERROR
    ]
    assert not errors


# -- the two flavors -----------------------------------------------------------------


async def test_proxy_flavor_upscales_and_records_the_upload(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    emu = ideogram_emulator
    fields = {**REQUEST, "prompt": "A serene tropical beach"}
    raw = json.dumps(fields)
    headers = {**PROXY_AUTH, "accept": "application/json"}
    async with session.post(url(emu, "proxy"), data=form(raw), headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()

    assert PROXY_CREATED.fullmatch(body["created"])
    assert body["data"] == [
        {
            "seed": 12345,
            "prompt": "A serene tropical beach",
            "resolution": "16x12",
            "url": body["data"][0]["url"],
            "is_image_safe": True,
        }
    ]
    assert re.fullmatch(re.escape(emu.base_url) + r"/images/[\w-]+\.png", body["data"][0]["url"])
    upload = emu.stats.last_upload
    assert upload is not None
    assert list(emu.stats.uploads) == [upload]
    assert upload.route == "proxy"
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    assert upload.headers["accept"] == "application/json"
    assert upload.fields == fields
    assert upload.image_request_raw == raw
    assert upload.field_content_type == "text/plain; charset=utf-8"
    assert (upload.filename, upload.content_type) == ("photo.png", "image/png")
    assert upload.size == len(PNG)
    assert upload.sha256 == hashlib.sha256(PNG).hexdigest()
    assert upload.part_names == ["image_request", "image_file"]


async def test_official_flavor_answers_in_its_own_style(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    jpeg = make_image("JPEG", (5, 7))
    data = form(json.dumps({"num_images": 3}), jpeg, filename="a.jpg", content_type="image/jpeg")
    status, _, body = await upscale(session, ideogram_emulator, data, route="official")

    assert status == 200
    assert OFFICIAL_CREATED.fullmatch(body["created"])
    assert len(body["data"]) == 3
    assert len({item["url"] for item in body["data"]}) == 3
    for item in body["data"]:
        assert item["style_type"] == "AUTO"  # an unknown field clients must tolerate
        assert item["resolution"] == "10x14"
        assert 0 <= item["seed"] <= 2_147_483_647
        assert item["prompt"]  # made up when none was given
    # Drawn from the whole range (seed 0 draws these three deterministically).
    assert max(item["seed"] for item in body["data"]) > 2**30
    assert ideogram_emulator.stats.uploads[0].headers["api-key"] == KEY


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
async def test_each_accepted_type_is_upscaled_2x(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession, fmt: str
) -> None:
    data = form(image=make_image(fmt, (9, 4)), content_type=f"image/{fmt.lower()}")
    status, _, body = await upscale(session, ideogram_emulator, data)
    assert status == 200
    assert body["data"][0]["resolution"] == "18x8"


@pytest.mark.parametrize(
    ("route", "headers"),
    [
        ("proxy", {}),
        ("proxy", {"Authorization": "Bearer wrong-key"}),
        ("proxy", {"Authorization": KEY}),
        ("proxy", {"Api-Key": KEY}),
        ("official", {}),
        ("official", {"Api-Key": "wrong-key"}),
        ("official", {"Authorization": f"Bearer {KEY}"}),
    ],
)
async def test_wrong_or_missing_key_is_401(
    ideogram_emulator: Emulator,
    session: aiohttp.ClientSession,
    route: str,
    headers: dict[str, str],
) -> None:
    async with session.post(url(ideogram_emulator, route), data=form(), headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == {"detail": "Invalid or missing API key"}
    stats = ideogram_emulator.stats
    assert (stats.requests, stats.responses_by_status) == (1, {401: 1})
    assert not stats.uploads


# -- validation ----------------------------------------------------------------------


def _image_request_as_file() -> aiohttp.MultipartWriter:
    writer = form(None)
    part = writer.append(RAW_REQUEST)
    part.set_content_disposition("form-data", name="image_request", filename="r.json")
    return writer


def _file_twice() -> aiohttp.MultipartWriter:
    writer = form()
    writer.append(PNG).set_content_disposition("form-data", name="image_file", filename="b.png")
    return writer


@pytest.mark.parametrize(
    ("make_data", "headers", "detail"),
    [
        (lambda: json.dumps(REQUEST), {"Content-Type": "application/json"}, "multipart/form-data"),
        (lambda: b"junk", {"Content-Type": "multipart/form-data"}, "Malformed multipart"),
        (lambda: b"junk", {"Content-Type": "multipart/form-data; boundary=x"}, "Malformed"),
        (lambda: form(None), {}, "Missing the image_request"),
        (lambda: form(image=None), {}, "Missing the image_file"),
        (lambda: form("{not json"), {}, "JSON object"),
        (lambda: form("[1, 2]"), {}, "JSON object"),
        (lambda: form(image=b""), {}, "empty"),
        (lambda: form(image=b"GIF89a" + bytes(40)), {}, "not a JPEG, PNG or WebP"),
        (lambda: form(image=FAKE_PNG), {}, "could not be decoded"),
        (lambda: form(filename=None), {}, "filename"),
        (_image_request_as_file, {}, "plain form field"),
        (_file_twice, {}, "more than once"),
    ],
    ids=[
        "json-body",
        "no-boundary",
        "bad-multipart",
        "no-image-request",
        "no-image-file",
        "not-json",
        "json-array",
        "empty-file",
        "gif",
        "undecodable",
        "no-filename",
        "request-as-file",
        "file-twice",
    ],
)
async def test_bad_requests_are_400(
    ideogram_emulator: Emulator,
    session: aiohttp.ClientSession,
    make_data: Callable[[], Any],
    headers: dict[str, str],
    detail: str,
) -> None:
    async with session.post(
        url(ideogram_emulator, "proxy"), data=make_data(), headers={**PROXY_AUTH, **headers}
    ) as resp:
        assert resp.status == 400
        assert detail in (await resp.json())["detail"]
    assert ideogram_emulator.stats.responses_by_status == {400: 1}


@pytest.mark.parametrize(
    ("make_data", "detail"),
    [
        (lambda: form(None), "Missing the image_request form field (a JSON object string)."),
        (lambda: form(image=None), "Missing the image_file file part."),
        (lambda: form("[1, 2]"), "image_request must be a JSON object string."),
        (lambda: form(image=b""), "image_file is empty."),
        (
            lambda: form(image=b"GIF89a" + bytes(40)),
            "image_file is not a JPEG, PNG or WebP image (judged by its first bytes).",
        ),
        (lambda: form(filename=None), "image_file must be a file part with a filename."),
        (_image_request_as_file, "image_request must be a plain form field, not a file part."),
        (_file_twice, "The image_file part was sent more than once."),
    ],
    ids=[
        "no-image-request",
        "no-image-file",
        "json-array",
        "empty-file",
        "gif",
        "no-filename",
        "request-as-file",
        "file-twice",
    ],
)
async def test_400_details_say_what_is_wrong_word_for_word(
    ideogram_emulator: Emulator,
    session: aiohttp.ClientSession,
    make_data: Callable[[], Any],
    detail: str,
) -> None:
    status, _, body = await upscale(session, ideogram_emulator, make_data())
    assert (status, body) == (400, {"detail": detail})


@pytest.mark.parametrize(
    "fields",
    [
        {"resemblance": 0},
        {"resemblance": 101},
        {"resemblance": "50"},
        {"resemblance": 50.0},
        {"detail": True},
        {"detail": None},
        {"seed": -1},
        {"seed": 2_147_483_648},
        {"num_images": 0},
        {"num_images": 9},
        {"magic_prompt_option": "MAYBE"},
        {"magic_prompt_option": "auto"},
        {"prompt": 5},
    ],
    ids=str,
)
async def test_bad_values_are_422(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    status, _, body = await upscale(session, ideogram_emulator, form(json.dumps(fields)))
    assert status == 422
    [name] = fields
    assert body["detail"].startswith(name)


BOUNDARY = "b0undary-7f3a"


def raw_form(*parts: tuple[str, bytes]) -> bytes:
    """A multipart body written by hand: each part its header lines and its bytes."""
    out = b""
    for headers, data in parts:
        out += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def field(value: bytes, extra: str = "") -> tuple[str, bytes]:
    """The image_request part, with optional further header lines."""
    return 'Content-Disposition: form-data; name="image_request"' + extra, value


FILE_PART = (
    'Content-Disposition: form-data; name="image_file"; filename="p.png"\r\n'
    "Content-Type: image/png",
    PNG,
)


async def post_raw(
    session: aiohttp.ClientSession,
    emu: Emulator,
    body: bytes,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
) -> tuple[int, Any]:
    headers = {**PROXY_AUTH, "Content-Type": content_type}
    async with session.post(url(emu, "proxy"), data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_media_type_is_read_without_case_or_parameters(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(upscale=False) as emu:
        body = raw_form(field(RAW_REQUEST.encode()), FILE_PART)
        content_type = f" Multipart/Form-Data ; boundary={BOUNDARY}; charset=utf-8"
        status, _ = await post_raw(session, emu, body, content_type)
        assert status == 200
        upload = emu.stats.uploads[0]
        assert upload.fields == REQUEST
        assert (upload.field_content_type, upload.content_type) == (None, "image/png")


async def test_the_refused_media_type_is_named(session: aiohttp.ClientSession) -> None:
    async with Emulator(upscale=False) as emu:
        status, body = await post_raw(session, emu, RAW_REQUEST.encode(), "Application/JSON")
        assert status == 400
        assert body["detail"] == (
            "Expected a multipart/form-data body with an image_request field "
            "and an image_file file part, got 'application/json'."
        )
        headers = {**PROXY_AUTH}
        async with session.post(
            url(emu, "proxy"), data=b"junk", headers=headers, skip_auto_headers=["Content-Type"]
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["detail"].endswith(", got 'no Content-Type'.")


async def test_unknown_and_nested_parts_are_skipped_and_named(
    session: aiohttp.ClientSession,
) -> None:
    nested = raw_form(('Content-Disposition: form-data; name="inner"', b"x"))
    body = raw_form(
        ('Content-Disposition: form-data; name="note"', b"hello"),
        ('Content-Disposition: form-data; name="extra"; filename="e.bin"', b"\0\1"),
        (
            'Content-Disposition: form-data; name="nested"\r\n'
            f"Content-Type: multipart/mixed; boundary={BOUNDARY}x",
            nested.replace(BOUNDARY.encode(), BOUNDARY.encode() + b"x"),
        ),
        field(RAW_REQUEST.encode(), "\r\nContent-Type: text/plain"),
        FILE_PART,
    )
    async with Emulator(upscale=False) as emu:
        status, _ = await post_raw(session, emu, body)
        assert status == 200
        upload = emu.stats.uploads[0]
        assert upload.part_names == ["note", "extra", "", "image_request", "image_file"]
        assert (upload.field_content_type, upload.filename) == ("text/plain", "p.png")
        assert upload.sha256 == hashlib.sha256(PNG).hexdigest()


@pytest.mark.parametrize(
    ("value", "extra", "status", "prompt_or_detail"),
    [
        ('{"prompt": "caf\u00e9"}'.encode(), "", 200, "caf\u00e9"),
        ('{"prompt": "caf\u00e9"}'.encode("latin-1"), "", 400, "image_request is not valid text"),
        (
            '{"prompt": "caf\u00e9"}'.encode("latin-1"),
            "\r\nContent-Type: text/plain; charset=latin-1",
            200,
            "caf\u00e9",
        ),
        (
            b'{"prompt": "x"}',
            "\r\nContent-Type: text/plain; charset=x-nowhere",
            400,
            "image_request is not valid text: unknown encoding",
        ),
    ],
    ids=["utf8-by-default", "not-utf8", "latin-1", "unknown-charset"],
)
async def test_the_field_is_decoded_by_its_charset_utf8_by_default(
    session: aiohttp.ClientSession, value: bytes, extra: str, status: int, prompt_or_detail: str
) -> None:
    async with Emulator(upscale=False) as emu:
        got, body = await post_raw(session, emu, raw_form(field(value, extra), FILE_PART))
        assert got == status
        if status == 200:
            assert emu.stats.uploads[0].fields == {"prompt": prompt_or_detail}
        else:
            assert body["detail"].startswith(prompt_or_detail)


async def test_a_field_of_exactly_1_mib_is_read_and_one_byte_more_is_413(
    session: aiohttp.ClientSession,
) -> None:
    limit = 1024 * 1024
    async with Emulator(upscale=False) as emu:
        padded = RAW_REQUEST.ljust(limit).encode()  # JSON allows trailing spaces
        status, _, _ = await upscale(session, emu, form(padded.decode()))
        assert status == 200
        writer = form(None)  # the field as a stream: aiohttp warns of bodies over 1 MiB
        part = writer.append(io.BytesIO(padded + b" "))
        part.set_content_disposition("form-data", name="image_request")
        status, _, body = await upscale(session, emu, writer)
        assert status == 413
        assert body["detail"] == f"image_request is larger than {limit} bytes."


async def test_a_file_over_many_chunks_is_hashed_and_sniffed_whole(
    session: aiohttp.ClientSession,
) -> None:
    big = PNG + bytes(300_000)  # a valid head; several 64 KiB chunks
    async with Emulator(upscale=False) as emu:
        status, _, _ = await upscale(session, emu, form(image=big))
        assert status == 200
        upload = emu.stats.uploads[0]
        assert (upload.size, upload.sha256) == (len(big), hashlib.sha256(big).hexdigest())
        assert emu.stats.bytes_received == len(big)


async def test_a_file_over_many_chunks_is_upscaled_from_all_its_bytes(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    noise = Image.frombytes("RGB", (240, 240), bytes(range(256)) * 675)
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=0)
    big = out.getvalue()
    assert len(big) > 2 * 64 * 1024
    status, _, body = await upscale(session, ideogram_emulator, form(image=big))
    assert status == 200
    assert body["data"][0]["resolution"] == "480x480"


async def test_v2_reads_the_size_from_the_first_64_kib_only(
    session: aiohttp.ClientSession,
) -> None:
    jpeg = make_image("JPEG", (8, 6))
    comment = b"\xff\xfe" + (65535).to_bytes(2, "big") + bytes(65533)  # the longest segment
    late = jpeg[:2] + comment + comment + jpeg[2:]  # the frame header past 128 KiB

    async def quote(image: bytes) -> tuple[int, Any]:
        writer = aiohttp.MultipartWriter("form-data")
        part = writer.append(io.BytesIO(image), {"Content-Type": "image/jpeg"})
        part.set_content_disposition("form-data", name="image", filename="a.jpg")
        target = f"{emu.base_url}/v2/image/upscale/auto?dry_run=true"
        async with session.post(target, data=writer, headers=OFFICIAL_AUTH) as resp:
            return resp.status, await resp.json()

    async with Emulator(upscale=False) as emu:
        assert (await quote(jpeg))[0] == 200
        assert await quote(late) == (400, {"detail": "Could not read the image's size."})


async def test_the_bounds_of_each_value_are_accepted(session: aiohttp.ClientSession) -> None:
    highest = {"resemblance": 100, "detail": 100, "seed": 2_147_483_647, "num_images": 8}
    lowest = {"resemblance": 1, "detail": 1, "seed": 0, "num_images": 1}
    async with Emulator(upscale=False) as emu:
        for fields in (highest, lowest, {"magic_prompt_option": "OFF", "prompt": ""}):
            status, _, _ = await upscale(session, emu, form(json.dumps(fields)))
            assert status == 200, fields


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"num_images": 9}, "num_images must be an integer from 1 to 8, got 9."),
        ({"seed": True}, "seed must be an integer from 0 to 2147483647, got true."),
        (
            {"magic_prompt_option": "auto", "prompt": 5},
            'magic_prompt_option must be one of AUTO, ON, OFF, got "auto"; '
            "prompt must be a string, got 5.",
        ),
        (
            {"resemblance": 0, "detail": "x" * 38},
            "resemblance must be an integer from 1 to 100, got 0; "
            f'detail must be an integer from 1 to 100, got "{"x" * 38}".',
        ),
        (
            {"detail": "x" * 39},
            f'detail must be an integer from 1 to 100, got "{"x" * 36}....',
        ),
    ],
    ids=["high", "bool", "two", "40-chars-whole", "41-chars-cut"],
)
async def test_422_details_name_each_bad_value(
    ideogram_emulator: Emulator,
    session: aiohttp.ClientSession,
    fields: dict[str, Any],
    detail: str,
) -> None:
    status, _, body = await upscale(session, ideogram_emulator, form(json.dumps(fields)))
    assert (status, body["detail"]) == (422, detail)


def test_a_reject_reads_as_its_detail() -> None:
    reject = Reject(413, "too big")
    assert (str(reject), reject.status, reject.detail) == ("too big", 413, "too big")


async def test_files_over_the_limit_are_413(session: aiohttp.ClientSession) -> None:
    async with Emulator(max_file_size=100, upscale=False) as emu:
        at_limit = FAKE_PNG.ljust(100, b"\0")
        status, _, _ = await upscale(session, emu, form(image=at_limit))
        assert status == 200
        status, _, body = await upscale(session, emu, form(image=at_limit + b"\0"))
        assert status == 413
        assert "100 bytes" in body["detail"]
        assert emu.stats.responses_by_status == {200: 1, 413: 1}
        assert emu.stats.bytes_received == 201
        assert len(emu.stats.uploads) == 1


# -- results ---------------------------------------------------------------------------


async def test_result_url_serves_the_png_and_records_headers(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    _, _, body = await upscale(session, ideogram_emulator)
    async with session.get(body["data"][0]["url"], headers={"X-Probe": "1"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        image = Image.open(io.BytesIO(await resp.read()))
    assert (image.format, image.size) == ("PNG", (16, 12))
    stats = ideogram_emulator.stats
    assert stats.image_downloads == 1
    [headers] = stats.image_requests
    async with session.get(body["data"][0]["url"]) as resp:
        assert resp.status == 200
    assert stats.image_downloads == 2
    assert headers["x-probe"] == "1"
    assert "authorization" not in headers
    assert "api-key" not in headers


async def test_result_urls_expire(session: aiohttp.ClientSession, clock: list[float]) -> None:
    async with Emulator(upscale=False, image_ttl=10, clock=lambda: clock[0]) as emu:
        _, _, body = await upscale(session, emu)
        image_url = body["data"][0]["url"]

        async def status_of(target: str) -> int:
            async with session.get(target) as resp:
                return resp.status

        clock[0] = 9.9
        assert await status_of(image_url) == 200
        clock[0] = 10.0
        assert await status_of(image_url) == 410
        await upscale(session, emu)  # evicts the expired result
        assert await status_of(image_url) == 410
        assert await status_of(f"{emu.base_url}/images/unknown.png") == 404
        assert await status_of(f"{emu.base_url}/images/ff-0123.png") == 404
        assert emu.stats.image_downloads == 1
        async with session.get(image_url) as resp:
            assert await resp.json() == {"detail": "This image URL has expired."}
        async with session.get(f"{emu.base_url}/images/unknown.png") as resp:
            assert await resp.json() == {"detail": "No image at this URL."}


async def test_no_upscale_mode_answers_without_decoding(session: aiohttp.ClientSession) -> None:
    async with Emulator(upscale=False) as emu:
        status, _, body = await upscale(session, emu, form(image=FAKE_PNG))
        assert status == 200
        assert body["data"][0]["resolution"] == "2x2"
        async with session.get(body["data"][0]["url"]) as resp:
            image = Image.open(io.BytesIO(await resp.read()))
        assert image.size == (2, 2)
        assert emu.stats.uploads[0].sha256 == hashlib.sha256(FAKE_PNG).hexdigest()


def test_pillow_is_required_only_to_upscale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'ideogram-async[emulator]'")):
        Emulator()
    Emulator(upscale=False)


async def test_importing_the_package_does_not_import_pillow() -> None:
    code = "import sys, ideogram_async.testing; assert 'PIL' not in sys.modules"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await proc.wait() == 0


# -- faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "headers", "content_type", "check"),
    [
        (
            Fault.status(503, retry_after=2),
            503,
            {"Retry-After": "2"},
            "application/json",
            lambda body: "Service Unavailable" in json.loads(body)["detail"],
        ),
        (
            Fault.status(
                429,
                retry_after="Wed, 21 Oct 2015 07:28:00 GMT",
                retry_after_ms=1500,
                should_retry=False,
            ),
            429,
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT",
                "retry-after-ms": "1500",
                "x-should-retry": "false",
            },
            "application/json",
            lambda body: "detail" in json.loads(body),
        ),
        (
            Fault.status(500, retry_after=0.5, should_retry=True, body="upstream exploded"),
            500,
            {"Retry-After": "0.5", "x-should-retry": "true"},
            "text/plain",
            lambda body: body == "upstream exploded",
        ),
        (
            Fault.status(402, body='{"detail": "Insufficient balance"}'),
            402,
            {},
            "application/json",
            lambda body: json.loads(body) == {"detail": "Insufficient balance"},
        ),
        (Fault.html(), 502, {}, "text/html", lambda body: "502 Bad Gateway" in body),
        (Fault.html(504), 504, {}, "text/html", lambda body: "<html>" in body),
        (Fault.malformed_json(), 200, {}, "application/json", lambda body: not_json(body)),
        (
            Fault.wrong_shape(),
            200,
            {},
            "application/json",
            lambda body: not {"created", "data"} & json.loads(body).keys(),
        ),
    ],
    ids=["503", "429-date", "500-text", "402-json", "html", "html-504", "malformed", "shape"],
)
async def test_answer_faults(
    session: aiohttp.ClientSession,
    fault: Fault,
    status: int,
    headers: dict[str, str],
    content_type: str,
    check: Callable[[str], bool],
) -> None:
    async with (
        Emulator(faults=FaultPlan.always(fault)) as emu,
        session.post(url(emu, "proxy"), data=form(), headers=PROXY_AUTH) as resp,
    ):
        assert resp.status == status
        assert resp.content_type == content_type
        assert headers.items() <= dict(resp.headers).items()
        assert check(await resp.text())
    assert emu.stats.faults_injected == {fault.kind: 1}
    assert emu.stats.responses_by_status == {status: 1}
    assert len(emu.stats.uploads) == 1  # the body was read before the fault


async def test_drop_closes_the_connection_after_reading_the_body(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(faults=FaultPlan.always(Fault.drop())) as emu:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await upscale(session, emu)
        assert len(emu.stats.uploads) == 1
        assert emu.stats.responses_by_status == {}
        assert emu.stats.faults_injected == {"drop": 1}


async def test_drop_before_body_closes_the_connection_at_once(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(faults=FaultPlan.always(Fault.drop_before_body())) as emu:
        for _ in range(2):
            with pytest.raises(aiohttp.ClientConnectionError):
                await upscale(session, emu)
        assert not emu.stats.uploads
        assert (emu.stats.requests, emu.stats.bytes_received) == (2, 0)
        assert emu.stats.faults_injected == {"drop_before_body": 2}


async def test_truncate_cuts_the_body_short(session: aiohttp.ClientSession) -> None:
    async with Emulator(faults=FaultPlan.always(Fault.truncate())) as emu:
        async with session.post(url(emu, "proxy"), data=form(), headers=PROXY_AUTH) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert emu.stats.responses_by_status == {}


async def test_slow_answers_outlast_a_client_timeout(session: aiohttp.ClientSession) -> None:
    plan = FaultPlan([Fault.slow(3600), Fault.slow(0)])
    async with Emulator(faults=plan) as emu:
        timeout = aiohttp.ClientTimeout(total=0.05)
        with pytest.raises(asyncio.TimeoutError):
            await upscale(session, emu, client_timeout=timeout)
        status, _, _ = await upscale(session, emu)  # slow(0): answers normally
        assert status == 200
        assert emu.stats.faults_injected == {"slow": 2}
    assert emu.stats.in_flight == 0


async def test_script_then_normal_and_faults_come_after_auth(
    session: aiohttp.ClientSession,
) -> None:
    plan = FaultPlan([Fault.status(503), None, Fault.status(429, retry_after=0)])
    async with Emulator(faults=plan) as emu:
        async with session.post(url(emu, "proxy"), data=form()) as resp:
            assert resp.status == 401  # does not use up the script
        routes = ["proxy", "official", "proxy", "official"]
        statuses = [(await upscale(session, emu, route=route))[0] for route in routes]
    assert statuses == [503, 200, 429, 200]
    assert plan.count == 4


async def test_image_faults_apply_to_image_routes_only(session: aiohttp.ClientSession) -> None:
    plan = FaultPlan([Fault.status(503), Fault.truncate(), Fault.slow(0)])
    async with Emulator(upscale=False, image_faults=plan) as emu:
        status, _, body = await upscale(session, emu)
        assert status == 200
        image_url = body["data"][0]["url"]
        async with session.get(image_url) as resp:
            assert resp.status == 503
        async with session.get(image_url) as resp:
            assert resp.content_type == "image/png"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with session.get(image_url) as resp:
            assert resp.status == 200
            Image.open(io.BytesIO(await resp.read()))
        assert emu.stats.image_downloads == 1
        assert len(emu.stats.image_requests) == 3


def test_fault_plan_replays_the_same_sequence_for_a_seed() -> None:
    def draw(seed: int) -> list[Fault | None]:
        plan = FaultPlan([Fault.drop()], rate=0.3, seed=seed)
        return [plan.next_fault() for _ in range(300)]

    first = draw(7)
    assert first == draw(7)
    assert first != draw(8)
    assert first[0] == Fault.drop()
    injected = [fault for fault in first[1:] if fault is not None]
    assert 40 < len(injected) < 140
    assert set(injected) == set(FaultPlan().choices)  # 503, 500, 429, drop, HTML 502


def test_fault_plan_basics() -> None:
    plan = FaultPlan([None, Fault.truncate()])
    assert [plan.next_fault() for _ in range(4)] == [None, Fault.truncate(), None, None]
    assert plan.count == 4
    always = FaultPlan.always(Fault.slow(1))
    assert {always.next_fault() for _ in range(20)} == {Fault.slow(1)}
    assert Fault.status(503, retry_after=2.0).headers == (("Retry-After", "2"),)
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match="rate"):
            FaultPlan(rate=bad)
    with pytest.raises(ValueError, match="status"):
        Fault.status(99)
    with pytest.raises(ValueError, match="seconds"):
        Fault.slow(-1)


def test_status_faults_carry_the_answer_they_describe() -> None:
    # Built here, not in a parametrize list: the checks must run the builders in the test.
    plain = Fault.status(503)
    assert (plain.kind, plain.code, plain.headers, plain.content_type) == (
        "status",
        503,
        (),
        "application/json",
    )
    assert json.loads(plain.body) == {"detail": "Service Unavailable (injected fault)"}
    assert json.loads(Fault.status(599).body) == {"detail": "Error (injected fault)"}
    assert Fault.status(100).code == 100
    for bad in (99, 600):
        with pytest.raises(ValueError, match=f"HTTP status must be from 100 to 599, got {bad}"):
            Fault.status(bad)
    full = Fault.status(429, retry_after=0.5, retry_after_ms=1500, should_retry=True)
    assert full.headers == (
        ("Retry-After", "0.5"),
        ("retry-after-ms", "1500"),
        ("x-should-retry", "true"),
    )
    assert Fault.status(429, retry_after=0, should_retry=False).headers == (
        ("Retry-After", "0"),
        ("x-should-retry", "false"),
    )
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert Fault.status(503, retry_after=date).headers == (("Retry-After", date),)
    text = Fault.status(500, body="upstream exploded")
    assert (text.body, text.content_type) == ("upstream exploded", "text/plain")
    raw = Fault.status(402, body='{"detail": "no"}')
    assert (raw.body, raw.content_type) == ('{"detail": "no"}', "application/json")


def test_canned_faults_carry_their_kind_and_answer() -> None:
    gateway = Fault.html()
    assert (gateway.kind, gateway.code, gateway.content_type) == ("html", 502, "text/html")
    assert "<title>502 Bad Gateway</title>" in gateway.body
    timeout = Fault.html(504)
    assert timeout.code == 504
    assert "<h1>504 Gateway Timeout</h1>" in timeout.body
    assert "<title>599 Error</title>" in Fault.html(599).body
    broken = Fault.malformed_json()
    assert (broken.kind, broken.code, broken.content_type) == (
        "malformed_json",
        200,
        "application/json",
    )
    # Cut inside the list: the start of a real answer, then not JSON.
    assert broken.body == '{"created": "2000-01-23T04:56:07.000Z", "data": [}'
    assert not_json(broken.body)
    shape = Fault.wrong_shape()
    assert (shape.kind, shape.code, shape.content_type) == ("wrong_shape", 200, "application/json")
    assert json.loads(shape.body) == {"status": "ok", "images": []}
    kinds = [Fault.drop(), Fault.drop_before_body(), Fault.truncate(), Fault.slow(2.5)]
    assert [fault.kind for fault in kinds] == ["drop", "drop_before_body", "truncate", "slow"]
    assert (Fault.slow(2.5).delay, Fault.slow(0).delay) == (2.5, 0.0)


def test_a_plan_by_default_injects_nothing_then_its_choices_are_the_usual_five() -> None:
    quiet = FaultPlan()
    assert [quiet.next_fault() for _ in range(50)] == [None] * 50
    assert quiet.count == 50
    assert (quiet.rate, quiet.seed, quiet.per_upload) == (0.0, 0, False)
    assert [(fault.kind, fault.code, fault.headers) for fault in quiet.choices] == [
        ("status", 503, (("Retry-After", "0"),)),
        ("status", 500, ()),
        ("status", 429, (("Retry-After", "0"),)),
        ("drop", 200, ()),
        ("html", 502, ()),
    ]
    # The default seed is 0: the same draws as an explicit seed=0.
    default, zero = FaultPlan(rate=0.5), FaultPlan(rate=0.5, seed=0)
    assert [default.next_fault() for _ in range(40)] == [zero.next_fault() for _ in range(40)]


def test_a_plan_at_rate_one_always_injects_and_its_repr_shows_its_settings() -> None:
    plan = FaultPlan([None], rate=1.0, choices=[Fault.drop()], seed=3, per_upload=True)
    assert [plan.next_fault("a"), plan.next_fault("a"), plan.next_fault("b")] == [
        None,
        Fault.drop(),
        None,
    ]
    assert plan.count == 3
    assert repr(plan) == (
        f"FaultPlan(script=[None], rate=1.0, choices=[{Fault.drop()!r}], seed=3, per_upload=True)"
    )
    needs = "a per_upload FaultPlan needs the upload of each request"
    with pytest.raises(ValueError, match=rf"^{re.escape(needs)}$"):
        plan.next_fault()


def test_per_upload_plans_do_not_depend_on_arrival_order() -> None:
    def decide(order: list[str]) -> dict[str, list[Fault | None]]:
        plan = FaultPlan([Fault.drop()], rate=0.5, seed=1, per_upload=True)
        decided: dict[str, list[Fault | None]] = {}
        for upload in order:
            decided.setdefault(upload, []).append(plan.next_fault(upload))
        return decided

    uploads = [f"upload-{n}" for n in range(20)] * 5
    forward = decide(uploads)
    assert forward == decide(uploads[::-1])
    assert all(attempts[0] == Fault.drop() for attempts in forward.values())
    assert len({tuple(attempts) for attempts in forward.values()}) > 1
    with pytest.raises(ValueError, match="per_upload"):
        FaultPlan(per_upload=True).next_fault()


async def test_per_upload_script_fails_each_upload_once(session: aiohttp.ClientSession) -> None:
    plan = FaultPlan([Fault.drop_before_body(), Fault.status(503)], per_upload=True)
    image_plan = FaultPlan([Fault.status(503)], per_upload=True)
    async with Emulator(upscale=False, faults=plan, image_faults=image_plan) as emu:
        first, second = form(image=FAKE_PNG), form(image=FAKE_PNG + b"!")
        for data in (first, second):  # drop_before_body acts as drop: the body is read
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await upscale(session, emu, data)
        statuses = [(await upscale(session, emu, data))[0] for data in (second, first)]
        assert statuses == [503, 503]
        _, _, body = await upscale(session, emu, first)
        image_url = body["data"][0]["url"]
        for expected in (503, 200):
            async with session.get(image_url) as resp:
                assert resp.status == expected
    assert len(emu.stats.uploads) == 5
    assert emu.stats.faults_injected == {"drop_before_body": 2, "status": 3}


# -- stats and settings ----------------------------------------------------------------


async def test_stats_count_concurrency_deterministically(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    emu = ideogram_emulator
    emu.pause()
    tasks = [asyncio.create_task(upscale(session, emu)) for _ in range(4)]
    async with asyncio.timeout(10):
        await emu.wait_in_flight(4)
    assert (emu.stats.in_flight, emu.stats.peak_in_flight) == (4, 4)
    emu.resume()
    results = await asyncio.gather(*tasks)

    assert [status for status, _, _ in results] == [200] * 4
    stats = emu.stats
    assert (stats.requests, stats.in_flight, stats.peak_in_flight) == (4, 0, 4)
    assert stats.responses_by_status == {200: 4}
    assert stats.bytes_received == 4 * len(PNG)
    assert len(stats.uploads) == 4
    emu.reset_stats()
    assert emu.stats == EmulatorStats()
    assert emu.stats.uploads.maxlen == 10_000


def images(count: int) -> aiohttp.MultipartWriter:
    return form(json.dumps({"num_images": count}))


async def test_the_allowance_counts_images_and_refuses_like_the_service(
    session: aiohttp.ClientSession, clock: list[float]
) -> None:
    async with Emulator(upscale=False, allowance=3, clock=lambda: clock[0]) as emu:
        emu.pause()
        held = asyncio.create_task(upscale(session, emu, images(2)))
        async with asyncio.timeout(10):
            await emu.wait_places(2)
        status, _, body = await upscale(session, emu, images(2))  # 2 + 2 > 3
        assert status == 429
        assert body == {
            "error": "Too many requests in flight: the organization's allowance is 3 images",
            "reject_reason": "inflight_limit",
            "max_inflight_requests": 3,
            "task_completion_speed": "fast",
        }
        one = asyncio.create_task(upscale(session, emu))  # 2 + 1 fits
        async with asyncio.timeout(10):
            await emu.wait_places(3)
        clock[0] += 2.0
        emu.resume()
        assert [r[0] for r in await asyncio.gather(held, one)] == [200, 200]
        stats = emu.stats
        assert (stats.rejected_over_allowance, stats.peak_places_in_use) == (1, 3)
        assert stats.places_in_use == 0
        assert stats.busy_place_seconds == pytest.approx(3 * 2.0)
        assert stats.responses_by_status == {200: 2, 429: 1}


@pytest.mark.parametrize(
    ("what", "expected"),
    [("no-number", {"reject_reason": "inflight_limit"}), ("empty", "")],
)
async def test_a_proxy_may_drop_the_number_or_the_body(
    session: aiohttp.ClientSession, what: Any, expected: Any
) -> None:
    async with Emulator(upscale=False, allowance=1, allowance_body=what) as emu:
        emu.pause()
        held = asyncio.create_task(upscale(session, emu))
        async with asyncio.timeout(10):
            await emu.wait_places(1)
        status, _, body = await upscale(session, emu)
        emu.resume()
        assert (await held)[0] == 200
    assert status == 429
    if isinstance(body, dict):
        assert "max_inflight_requests" not in body
        assert body["reject_reason"] == expected["reject_reason"]
    else:
        assert body == expected


async def test_places_are_counted_without_an_allowance(session: aiohttp.ClientSession) -> None:
    async with Emulator(upscale=False) as emu:
        emu.pause()
        tasks = [asyncio.create_task(upscale(session, emu, images(4))) for _ in range(3)]
        async with asyncio.timeout(10):
            await emu.wait_places(12)
        emu.reset_stats()  # places in progress are carried over
        assert (emu.stats.places_in_use, emu.stats.peak_places_in_use) == (12, 12)
        emu.resume()
        assert [r[0] for r in await asyncio.gather(*tasks)] == [200] * 3
    assert emu.stats.rejected_over_allowance == 0
    with pytest.raises(ValueError, match="allowance") as caught:
        Emulator(allowance=0)
    assert str(caught.value) == "allowance must be >= 1 image in flight, got 0"
    with pytest.raises(ValueError, match="allowance_body") as refused:
        Emulator(allowance_body="nothing")  # type: ignore[arg-type]
    assert str(refused.value) == (
        "allowance_body must be 'full', 'no-number' or 'empty', got 'nothing'"
    )


async def test_stop_cancels_requests_in_progress(session: aiohttp.ClientSession) -> None:
    emu = Emulator(upscale=False)
    async with emu:
        emu.pause()
        request = asyncio.create_task(upscale(session, emu))
        async with asyncio.timeout(10):
            await emu.wait_in_flight(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await request
    assert emu.stats.in_flight == 0
    assert emu.stats.responses_by_status == {}


@pytest.mark.parametrize(("latency", "low", "high"), [(0.01, 0.01, 0.01), ((0.0, 0.02), 0.0, 0.02)])
async def test_latency_is_applied(
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    latency: float | tuple[float, float],
    low: float,
    high: float,
) -> None:
    # Record the pauses asked of asyncio.sleep instead of timing the answers.
    paused: list[float] = []
    recording_sleep = sleep_noting(paused)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    async with Emulator(upscale=False, latency=latency, seed=3) as emu:
        statuses = [(await upscale(session, emu))[0] for _ in range(3)]
    assert statuses == [200] * 3
    assert len(paused) == 3
    assert all(low <= pause <= high for pause in paused)
    if low < high:
        assert len(set(paused)) == 3  # drawn from the range, not fixed


def test_bad_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="latency") as caught:
        Emulator(latency=(0.2, 0.1))
    assert str(caught.value) == "latency must be >= 0 seconds (min <= max), got (0.2, 0.1)"
    with pytest.raises(ValueError, match="latency"):
        Emulator(latency=-1)


async def test_lifecycle_errors() -> None:
    emu = Emulator(upscale=False)
    with pytest.raises(RuntimeError, match="not been started") as caught:
        _ = emu.base_url
    assert str(caught.value) == "The emulator has not been started."
    async with emu:
        with pytest.raises(RuntimeError, match="already running") as caught:
            await emu.start()
        assert str(caught.value) == "The emulator is already running."
    await emu.stop()  # stopping twice is harmless


# -- command line ----------------------------------------------------------------------


def test_serve_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser("serve")
    args = parser.parse_args(["--port", "0", "--latency", "0.1,0.5", "--fault-rate", "0.2"])
    assert (args.port, args.latency, args.fault_rate, args.upscale) == (0, (0.1, 0.5), 0.2, True)
    assert parser.parse_args(["--latency", "2", "--no-upscale"]).latency == 2.0
    assert (args.allowance, args.allowance_body) == (None, "full")
    args = parser.parse_args(["--allowance", "10", "--allowance-body", "no-number"])
    assert (args.allowance, args.allowance_body) == (10, "no-number")
    for bad in (
        ["--latency", "1,0"],
        ["--latency", "x"],
        ["--fault-rate", "2"],
        ["--allowance", "0"],
        ["--allowance-body", "none"],
    ):
        assert serve_main(bad, prog="emu") == 2  # a usage error, reported, nothing served
        assert "emu: error:" in capsys.readouterr().err


async def test_module_runs_a_server_until_terminated(session: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ideogram_async.testing",
        "--port",
        "0",
        "--no-upscale",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        async with session.post(
            f"{base_url}/ideogram/upscale", data=form(image=FAKE_PNG), headers=PROXY_AUTH
        ) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        await proc.communicate()
    assert proc.returncode == 0


def test_the_fixture_plugin_without_pytest_asyncio_names_the_extra() -> None:
    # None in sys.modules makes the import fail, as in an install without the extra.
    code = (
        "import sys; sys.modules['pytest_asyncio'] = None\n"
        "import ideogram_async.testing.pytest_plugin"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 1
    assert "pip install 'ideogram-async[testing]'" in run.stderr


# -- defaults, addresses, keys and records -----------------------------------------------


async def test_the_defaults(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, clock: list[float]
) -> None:
    paused: list[float] = []
    recording_sleep = sleep_noting(paused)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    limit = 25 * 1024 * 1024
    async with Emulator(upscale=False, clock=lambda: clock[0]) as emu:
        assert emu.api_key == "test-key"
        big = io.BytesIO(FAKE_PNG.ljust(limit, b"\0"))
        no_seed = json.dumps({"detail": 50})
        status, _, body = await upscale(session, emu, form(no_seed, big))  # type: ignore[arg-type]
        assert status == 200
        assert not paused  # no latency
        seed = body["data"][0]["seed"]  # drawn
        status, _, body = await upscale(
            session,
            emu,
            form(image=io.BytesIO(FAKE_PNG.ljust(limit + 1, b"\0"))),  # type: ignore[arg-type]
        )
        assert (status, body) == (
            413,
            {"detail": f"image_file is larger than the limit of {limit} bytes."},
        )
        _, _, body = await upscale(session, emu)
        image_url = body["data"][0]["url"]
        clock[0] = 599.9
        async with session.get(image_url) as resp:
            assert resp.status == 200
        clock[0] = 600.0  # kept ten minutes
        async with session.get(image_url) as resp:
            assert resp.status == 410
    async with Emulator(upscale=False, seed=0) as seeded, Emulator(upscale=False) as other:
        _, _, body = await upscale(session, seeded, form(no_seed))
        # Each on a free port of its own, side by side.
        assert seeded.base_url != other.base_url
    assert body["data"][0]["seed"] == seed  # the default seed is 0


async def test_the_default_v2_generation_and_polling_limit(
    session: aiohttp.ClientSession, clock: list[float]
) -> None:
    async with Emulator(upscale=False, clock=lambda: clock[0]) as emu:
        writer = aiohttp.MultipartWriter("form-data")
        writer.append("true").set_content_disposition("form-data", name="async")
        part = writer.append(PNG, {"Content-Type": "image/png"})
        part.set_content_disposition("form-data", name="image", filename="p.png")
        async with session.post(
            f"{emu.base_url}/v2/image/upscale/auto", data=writer, headers=OFFICIAL_AUTH
        ) as resp:
            generation_url = f"{emu.base_url}/v2/generations/{(await resp.json())['generation_id']}"

        async def status_of_poll() -> tuple[int, Any]:
            async with session.get(generation_url, headers=OFFICIAL_AUTH) as resp:
                return resp.status, resp.headers.get("Retry-After")

        async with session.get(generation_url, headers=OFFICIAL_AUTH) as resp:
            assert (await resp.json())["status"] == "completed"  # no delay
        clock[0] = 9.0
        assert [await status_of_poll() for _ in range(999)] == [(200, None)] * 999
        assert await status_of_poll() == (429, "1")  # 1000 polls in 10 s
        clock[0] = 10.0
        assert await status_of_poll() == (200, None)


@pytest.mark.parametrize(
    ("host", "base"),
    [
        ("0.0.0.0", "http://127.0.0.1:"),
        ("::", "http://[::1]:"),
        ("::1", "http://[::1]:"),
        ("localhost", "http://localhost:"),
    ],
)
async def test_base_url_is_an_address_clients_can_reach(
    session: aiohttp.ClientSession, host: str, base: str
) -> None:
    async with Emulator(host=host, upscale=False) as emu:
        assert emu.base_url.startswith(base)
        assert emu.base_url.rpartition(":")[2].isdigit()
        status, _, body = await upscale(session, emu)
    assert status == 200
    assert body["data"][0]["url"].startswith(emu.base_url + "/images/")


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"bearer {KEY}"}, {"Authorization": f"BEARER  {KEY}"}],
    ids=["lower-case", "extra-space"],
)
async def test_the_bearer_scheme_is_read_leniently(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    url_ = url(ideogram_emulator, "proxy")
    async with session.post(url_, data=form(), headers=headers) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("header", [b"Api-Key", b"Authorization"])
async def test_a_key_that_is_not_utf8_is_401(ideogram_emulator: Emulator, header: bytes) -> None:
    host, port = ideogram_emulator.base_url.removeprefix("http://").split(":")
    path = b"/upscale" if header == b"Api-Key" else b"/ideogram/upscale"
    value = b"\xff\xfe" if header == b"Api-Key" else b"Bearer \xff\xfe"
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n"
        + header
        + b": "
        + value
        + b"\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert answer.endswith(b'{"detail": "Invalid or missing API key"}')


async def test_reset_stats_carries_requests_in_flight_over(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    emu = ideogram_emulator
    emu.pause()
    tasks = [asyncio.create_task(upscale(session, emu)) for _ in range(2)]
    async with asyncio.timeout(10):
        await emu.wait_in_flight(2)
    emu.reset_stats()
    stats = emu.stats
    assert (stats.requests, stats.in_flight, stats.peak_in_flight) == (0, 2, 2)
    emu.resume()
    await asyncio.gather(*tasks)
    assert (stats.in_flight, stats.peak_in_flight, stats.responses_by_status) == (0, 2, {200: 2})


async def test_waiting_for_a_count_already_reached_returns_at_once(
    ideogram_emulator: Emulator,
) -> None:
    async with asyncio.timeout(10):
        await ideogram_emulator.wait_in_flight(0)
        await ideogram_emulator.wait_places(0)


async def test_each_waiter_wakes_at_its_own_count(session: aiohttp.ClientSession) -> None:
    async with Emulator(upscale=False) as emu:
        emu.pause()
        two, three = (asyncio.create_task(emu.wait_places(n)) for n in (2, 3))
        first = asyncio.create_task(upscale(session, emu, images(2)))
        async with asyncio.timeout(10):
            await two
        assert not three.done()
        second = asyncio.create_task(upscale(session, emu))
        async with asyncio.timeout(10):
            await three
        emu.resume()
        await asyncio.gather(first, second)


@pytest.mark.parametrize(
    ("fields", "places"),
    [
        ({"num_images": 3}, 3),
        ({"num_images": 9}, 9),  # refused later (422), but held as asked meanwhile
        ({"num_images": True}, 1),
        ({"num_images": "2"}, 1),
        ({"num_images": 0}, 1),
        ({}, 1),
    ],
    ids=str,
)
async def test_a_request_holds_its_num_images_places(
    session: aiohttp.ClientSession, fields: dict[str, Any], places: int
) -> None:
    async with Emulator(upscale=False) as emu:
        emu.pause()
        task = asyncio.create_task(upscale(session, emu, form(json.dumps(fields))))
        async with asyncio.timeout(10):
            await emu.wait_in_flight(1)
            await emu.wait_places(1)
        assert emu.stats.places_in_use == places
        emu.resume()
        await task


async def test_uploads_are_recorded_once_both_parts_arrived(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    emu = ideogram_emulator
    assert (await upscale(session, emu, form(image=None)))[0] == 400
    assert (await upscale(session, emu, form(None)))[0] == 400
    assert not emu.stats.uploads
    assert (await upscale(session, emu, form("{not json")))[0] == 400
    (upload,) = emu.stats.uploads
    assert (upload.fields, upload.image_request_raw) == ({}, "{not json")


@pytest.mark.parametrize("prompt", [None, ""])
async def test_without_a_prompt_one_is_made_up(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession, prompt: str | None
) -> None:
    fields = {} if prompt is None else {"prompt": prompt}
    _, _, body = await upscale(session, ideogram_emulator, form(json.dumps(fields)))
    assert body["data"][0]["prompt"] == (
        "A crisp, detailed upscale of the original image, with sharp edges."
    )


async def test_created_is_written_in_each_flavors_style(
    ideogram_emulator: Emulator, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Frozen:
            return cls(2026, 1, 2, 3, 4, 5, 999_500, tzinfo=tz)  # not rounded up

    monkeypatch.setattr("ideogram_async.testing._answers.datetime", Frozen)
    _, _, proxy = await upscale(session, ideogram_emulator)
    _, _, official = await upscale(session, ideogram_emulator, route="official")
    assert proxy["created"] == "2026-01-02T03:04:05.999Z"
    assert official["created"] == "2026-01-02 03:04:05+00:00"


async def read_cut_short(resp: aiohttp.ClientResponse) -> bytes:
    """The bytes of a body that ends before its Content-Length."""
    chunks: list[bytes] = []

    async def read_all() -> None:
        while chunk := await resp.content.readany():
            chunks.append(chunk)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    return b"".join(chunks)


async def test_a_truncated_answer_sends_half_of_what_it_announces(
    session: aiohttp.ClientSession,
) -> None:
    faults = FaultPlan([Fault.truncate(), None])
    image_faults = FaultPlan([Fault.truncate()])
    async with Emulator(upscale=False, faults=faults, image_faults=image_faults) as emu:
        async with session.post(url(emu, "proxy"), data=form(), headers=PROXY_AUTH) as resp:
            assert resp.content_type == "application/json"
            announced = resp.content_length
            received = await read_cut_short(resp)
        assert announced is not None
        assert len(received) == announced // 2 > 0
        # The first half of a plausible answer: a client cannot tell it from a real one
        # until the connection ends.
        assert received == (b'{"created": "2000-01-23T04:56:07.000Z", "data": [{"seed": 1, "pr')
        assert announced == len(
            b'{"created": "2000-01-23T04:56:07.000Z", "data": [{"seed": 1, "prompt": '
            b'"truncated", "resolution": "2x2", "is_image_safe": true}]}'
        )
        _, _, body = await upscale(session, emu)
        async with session.get(body["data"][0]["url"]) as resp:
            assert resp.content_type == "image/png"
            announced = resp.content_length
            received = await read_cut_short(resp)
        async with session.get(body["data"][0]["url"]) as resp:
            whole = await resp.read()
    assert announced == len(whole)
    assert received == whole[: len(whole) // 2]


async def test_a_request_whose_client_gives_up_ends_and_frees_its_places() -> None:
    """A client that disconnects while its request is held ends the handler at once (so
    a timeout test leaves no place taken), not when the emulator is resumed or stopped."""
    async with Emulator(upscale=False, allowance=2) as emu:
        emu.pause()
        async with aiohttp.ClientSession() as gone:
            call = asyncio.create_task(upscale(gone, emu))
            async with asyncio.timeout(10):
                await emu.wait_places(1)
            handlers = set(emu._handlers)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        async with asyncio.timeout(10):  # paused: only a cancellation ends the handler
            await asyncio.wait(handlers)
        assert (emu.stats.in_flight, emu.stats.places_in_use) == (0, 0)
        assert emu.stats.responses_by_status == {}
