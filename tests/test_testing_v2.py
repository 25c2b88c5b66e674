"""The emulator's v2 routes, exercised over a real socket with raw aiohttp.

The client's v2 calls (tests/test_v2_client.py) send only what a well-behaved client
sends; these also send what a client would not, and pin what the emulator answers:
statuses, error bodies, price quotes, results, generations and the polling limit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from ideogram_async.testing import Emulator, Fault, FaultPlan

from ._support import KEY, make_image

AUTH = {"Api-Key": KEY}
CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
GENERATION_ID = re.compile(r"gen-\d+-[0-9a-f]{8}")
PNG = make_image(size=(8, 6))
NOT_AN_IMAGE = "image is not a JPEG, PNG or WebP image."
NO_SIZE = "Could not read the image's size."


def png_header(width: int, height: int) -> bytes:
    """The start of a PNG that claims ``width`` x ``height``: enough for a quote."""
    ihdr = struct.pack(">ii", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + bytes(4)


def v2_form(
    fields: dict[str, str] | None = None,
    image: bytes | io.BytesIO | None = PNG,
    *,
    name: str = "image",
    filename: str = "photo.png",
) -> aiohttp.MultipartWriter:
    """A v2 form: each field a plain text part, then the file part (unless ``image`` is None)."""
    writer = aiohttp.MultipartWriter("form-data")
    for field, value in (fields or {}).items():
        writer.append(value).set_content_disposition("form-data", name=field)
    if image is not None:
        part = writer.append(image, {"Content-Type": "image/png"})
        part.set_content_disposition("form-data", name=name, filename=filename)
    return writer


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def post(
    session: aiohttp.ClientSession,
    emu: Emulator,
    data: Any = None,
    *,
    model: str = "topaz-bloom-2",
    query: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST a v2 upscale; the status and the JSON body (None when there is none)."""
    async with session.post(
        f"{emu.base_url}/v2/image/upscale/{model}{query}",
        data=v2_form() if data is None else data,
        headers=AUTH if headers is None else headers,
    ) as resp:
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None


async def poll(
    session: aiohttp.ClientSession,
    emu: Emulator,
    generation_id: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str | None]:
    """GET a generation: the status, the JSON body and the ``Retry-After`` header."""
    async with session.get(
        f"{emu.base_url}/v2/generations/{generation_id}",
        headers=AUTH if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def download(session: aiohttp.ClientSession, image_url: str) -> Image.Image:
    async with session.get(image_url) as resp:
        assert resp.status == 200
        return Image.open(io.BytesIO(await resp.read()))


# -- the key and the form -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Api-Key": "wrong"}, {"Authorization": f"Bearer {KEY}"}], ids=str
)
async def test_v2_wants_the_api_key_header(
    session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    unauthorized = {"detail": "Invalid or missing API key"}
    async with Emulator(api_key=KEY, upscale=False) as emu:
        assert await post(session, emu, headers=headers) == (401, unauthorized)
        assert await poll(session, emu, "gen-0", headers) == (401, unauthorized, None)
        stats = emu.stats
        assert (stats.requests, stats.polls, stats.polls_refused) == (1, 0, 0)
        assert stats.responses_by_status == {401: 1}
        assert not stats.v2_uploads


def _nameless_part() -> aiohttp.MultipartWriter:
    writer = v2_form()
    # aiohttp insists on "name=" in a form part: "filename=" holds it, and names no part.
    writer.append("x").set_content_disposition("form-data", filename="x.txt")
    return writer


def _bad_charset() -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append("x", {"Content-Type": "text/plain; charset=no-such-charset"})
    part.set_content_disposition("form-data", name="prompt")
    return writer


@pytest.mark.parametrize(
    ("make_data", "status", "detail"),
    [
        (
            lambda: v2_form({"prompt": "a", "seed": "1"}, None),
            400,
            "Missing the image file part.",
        ),
        (lambda: v2_form(image=b""), 400, "image is not a JPEG, PNG or WebP image."),
        (
            lambda: v2_form(image=b"GIF89a" + bytes(40)),
            400,
            "image is not a JPEG, PNG or WebP image.",
        ),
        (
            lambda: v2_form(image=b"\x89PNG\r\n\x1a\n" + bytes(40)),
            400,
            "Could not read the image's size.",
        ),
        (lambda: v2_form(image=png_header(0, 5)), 400, "Could not read the image's size."),
        (lambda: v2_form(image=png_header(5, 0)), 400, "Could not read the image's size."),
        (lambda: v2_form(name="photo"), 400, "Unexpected file part 'photo'; send 'image'."),
        (_nameless_part, 400, "Every part needs a name."),
        (lambda: v2_form({"prompt": "a"}, None), 400, "Missing the image file part."),
        (lambda: v2_form({"async": "maybe"}), 400, "async must be true or false."),
        (
            lambda: v2_form({"webhook_url": "http://hooks.example/done"}),
            400,
            "webhook_url must be an https URL of at most 2048 characters.",
        ),
        (
            lambda: v2_form({"webhook_url": "https://" + "h" * 2041}),
            400,
            "webhook_url must be an https URL of at most 2048 characters.",
        ),
        (lambda: v2_form({"prompt": "a cat [unsafe]"}), 422, "The prompt failed the safety check."),
        (
            lambda: v2_form({"prompt": "p" * (64 * 1024 + 1)}),
            413,
            "prompt is larger than 65536 bytes.",
        ),
        (
            lambda: v2_form(image=png_header(4097, 3)),
            400,
            "The output (8194x6) would exceed 8192 px on a side.",
        ),
    ],
    ids=[
        "no-file",
        "empty-file",
        "gif",
        "no-size",
        "no-width",
        "no-height",
        "wrong-file-part",
        "nameless-part",
        "field-only",
        "async",
        "http-webhook",
        "long-webhook",
        "unsafe",
        "huge-field",
        "over-8192",
    ],
)
async def test_bad_v2_requests_get_the_services_answer(
    session: aiohttp.ClientSession, make_data: Any, status: int, detail: str
) -> None:
    async with Emulator(api_key=KEY) as emu:
        assert await post(session, emu, make_data()) == (status, {"detail": detail})
        assert emu.stats.responses_by_status == {status: 1}
        assert (emu.stats.billed_usd_micros, emu.stats.quotes) == (0, 0)


async def test_malformed_v2_forms_are_400(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        url = f"{emu.base_url}/v2/image/upscale/auto"
        async with session.post(
            url, data=b"{}", headers={**AUTH, "Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["detail"] == (
                "Expected a multipart/form-data body, got 'application/json'."
            )
        async with session.post(
            url, data=b"x", headers=AUTH, skip_auto_headers=["Content-Type"]
        ) as resp:
            assert (await resp.json())["detail"] == (
                "Expected a multipart/form-data body, got 'no Content-Type'."
            )
        junk = {**AUTH, "Content-Type": "multipart/form-data; boundary=x"}
        async with session.post(url, data=b"junk", headers=junk) as resp:
            assert resp.status == 400
            assert (await resp.json())["detail"].startswith("Malformed multipart body: ")
        status, body = await post(session, emu, _bad_charset())
        assert status == 400
        assert body["detail"].startswith("Malformed multipart body: ")
        twice = v2_form({"prompt": "a"})
        twice.append("b").set_content_disposition("form-data", name="prompt")
        assert await post(session, emu, twice) == (
            400,
            {"detail": "The prompt part was sent more than once."},
        )
        in_a_row = aiohttp.MultipartWriter("form-data")
        for value in ("a", "b"):
            in_a_row.append(value).set_content_disposition("form-data", name="seed")
        assert await post(session, emu, in_a_row) == (
            400,
            {"detail": "The seed part was sent more than once."},
        )
        assert not emu.stats.v2_uploads


async def test_the_boundaries_of_fields_webhooks_and_sizes_are_allowed(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        # 64 KiB is a field's most; topaz-bloom-2's own check then refuses the prompt.
        status, body = await post(session, emu, v2_form({"prompt": "p" * 64 * 1024}))
        assert status == 400
        assert "1024" in body["detail"]
        webhook = "https://" + "h" * 2040  # 2048 characters
        status, body = await post(session, emu, v2_form({"webhook_url": webhook}))
        assert status == 200
        assert set(body) == {"generation_id", "width", "height", "seed"}  # in the background
        status, body = await post(session, emu, v2_form(image=png_header(4096, 3)))
        assert (status, body["width"], body["height"]) == (200, 8192, 6)
        status, body = await post(session, emu, v2_form(image=png_header(1, 1)))
        assert (status, body["width"], body["height"]) == (200, 2, 2)  # the smallest image
        # Without upscaling, every result is the same tiny PNG.
        image = await download(session, body["data"][0]["url"])
        assert (image.format, image.size) == ("PNG", (2, 2))


async def test_a_field_without_a_charset_is_read_as_utf8(session: aiohttp.ClientSession) -> None:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append("été".encode()).set_content_disposition("form-data", name="prompt")
    part = writer.append(PNG, {"Content-Type": "image/png"})
    part.set_content_disposition("form-data", name="image", filename="p.png")
    async with Emulator(api_key=KEY, upscale=False) as emu:
        status, _ = await post(session, emu, writer)
        assert status == 200
        (received,) = emu.stats.v2_uploads
    assert received.fields == {"prompt": "été"}
    assert received.part_names == ["prompt", "image"]
    assert (received.filename, received.content_type) == ("p.png", "image/png")
    assert (received.size, received.sha256) == (len(PNG), hashlib.sha256(PNG).hexdigest())
    assert emu.stats.bytes_received == len(PNG)


async def test_a_field_sent_in_base64_is_decoded(session: aiohttp.ClientSession) -> None:
    # aiohttp's writer refuses Content-Transfer-Encoding in a form: written by hand.
    body = (
        b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("été".encode())
        + b'\r\n--B\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--B--\r\n"
    )
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=B"}
    async with Emulator(api_key=KEY, upscale=False) as emu:
        assert (await post(session, emu, body, headers=headers))[0] == 200
        assert emu.stats.v2_uploads[0].fields == {"prompt": "été"}


async def test_an_unknown_model_is_404(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        assert await post(session, emu, model="nope") == (
            404,
            {"detail": "Unknown upscale model 'nope'."},
        )
        status, body = await post(session, emu, v2_form({"creativity": "99"}))
        assert status == 400
        assert "creativity" in body["detail"]


# -- quotes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "size", "quote"),
    [
        ("topaz-bloom-2", {}, (1000, 500), (2, 24_000, 600)),
        ("topaz-bloom-2", {}, (1001, 500), (3, 36_000, 900)),
        ("topaz-bloom-2", {}, (557, 2693), (7, 84_000, 2100)),  # 6_000_004 px: a 7th started
        ("topaz-standard-2", {"upscale_factor": "x4"}, (10, 10), (1, 5_000, 125)),
        ("topaz-text-refine", {}, (1000, 1000), (4, 24_000, 600)),
        ("topaz-wonder-3-5", {"upscale_factor": "x8"}, (250, 250), (4, 32_000, 800)),
        ("topaz-redefine", {}, (500, 500), (1, 15_000, 375)),
        ("nano-banana-pro", {}, (1000, 500), (1, 60_000, 1500)),
        ("nano-banana-pro", {"resolution_tier": "1K"}, (300, 200), (1, 40_000, 1000)),
        ("nano-banana-pro", {"resolution_tier": "4K"}, (300, 200), (1, 120_000, 3000)),
    ],
    ids=str,
)
async def test_exact_quotes(
    session: aiohttp.ClientSession,
    model: str,
    fields: dict[str, str],
    size: tuple[int, int],
    quote: tuple[int, int, int],
) -> None:
    quantity, micros, credits = quote
    async with Emulator(api_key=KEY, upscale=False) as emu:
        form = v2_form(fields, png_header(*size))
        assert await post(session, emu, form, model=model, query="?dry_run=true") == (
            200,
            {
                "object": "price_quote",
                "billing_identifier": f"upscale.{model}",
                "quantity": quantity,
                "usd_micros": micros,
                "credit_millis": credits,
                "qualifier": "exact",
            },
        )
        (received,) = emu.stats.v2_uploads
        assert (received.model, received.dry_run) == (model, True)
        assert (emu.stats.quotes, emu.stats.billed_usd_micros) == (1, 0)


async def test_auto_quotes_an_estimate_with_an_upper_bound(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        form = v2_form({"upscale_factor": "x4"}, png_header(100, 100))
        status, quote = await post(session, emu, form, model="auto", query="?dry_run=TRUE")
        assert (status, quote) == (
            200,
            {
                "object": "price_quote",
                "billing_identifier": "upscale.auto",
                "quantity": 1,
                "usd_micros": 10_000,
                "credit_millis": 250,
                "qualifier": "estimate",
                "upper_bound_usd_micros": 15_000,
            },
        )
        status, answer = await post(session, emu, model="auto", query="?dry_run=false")
        assert (status, answer["width"]) == (200, 16)  # not a quote: an upscale
        assert emu.stats.quotes == 1
        assert [upload.dry_run for upload in emu.stats.v2_uploads] == [True, False]


@pytest.mark.parametrize(
    ("fields", "source", "output"),
    [
        ({}, (1000, 500), (2896, 1448)),
        ({"resolution_tier": "1K"}, (300, 200), (1254, 836)),
        ({"resolution_tier": "4K"}, (4095, 4096), (4095, 4097)),
    ],
    ids=str,
)
async def test_nano_banana_pro_scales_to_its_tiers_area(
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    source: tuple[int, int],
    output: tuple[int, int],
) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        form = v2_form(fields, png_header(*source))
        status, answer = await post(session, emu, form, model="nano-banana-pro")
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == output
    assert answer["data"][0]["resolution"] == f"{output[0]}x{output[1]}"


async def test_nano_banana_pro_refuses_a_source_that_reaches_its_tier(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        status, body = await post(
            session, emu, v2_form(image=png_header(2048, 2048)), model="nano-banana-pro"
        )
        assert (status, body) == (
            400,
            {"detail": "The source (2048x2048) already reaches the 2K tier."},
        )
        form = v2_form({"resolution_tier": "1K"}, png_header(1024, 1024))
        status, body = await post(session, emu, form, model="nano-banana-pro")
        assert body == {"detail": "The source (1024x1024) already reaches the 1K tier."}


# -- results and generations ---------------------------------------------------------------


async def test_an_upscale_answers_its_result_at_once(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY) as emu:
        status, answer = await post(session, emu, v2_form({"seed": "7"}))
        assert status == 200
        item = answer["data"][0]
        assert answer == {
            "generation_id": answer["generation_id"],
            "width": 16,
            "height": 12,
            "seed": 7,
            "data": [{"url": item["url"], "resolution": "16x12", "seed": 7, "is_image_safe": True}],
        }
        assert GENERATION_ID.fullmatch(answer["generation_id"])
        assert item["url"].startswith(f"{emu.base_url}/images/")
        image = await download(session, item["url"])
        assert (image.format, image.size) == ("PNG", (16, 12))
        # Its generation is done already, and says what it cost.
        status, generation, _ = await poll(session, emu, answer["generation_id"])
        assert status == 200
        assert CREATED.fullmatch(generation.pop("created"))
        assert generation == {
            "generation_id": answer["generation_id"],
            "status": "completed",
            "response_type": "url",
            "data": [{**item, "object_type": "image"}],
            "usage_cost_usd_micros": 12_000,
        }
        assert emu.stats.billed_usd_micros == 12_000
        assert (emu.stats.withheld, emu.stats.quotes, emu.stats.polls) == (0, 0, 1)
        # Without a seed, one is drawn (from the whole range), the same in the answer and
        # its image.
        seeds = []
        for _ in range(3):
            _, answer = await post(session, emu)
            assert answer["data"][0]["seed"] == answer["seed"]
            seeds.append(answer["seed"])
        assert all(0 <= seed < 2**31 for seed in seeds)
        assert max(seeds) > 2**30
        assert emu.stats.billed_usd_micros == 4 * 12_000


async def test_a_withheld_image_has_no_url_and_is_billed(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        # [fail] fails only a generation in the background: this one answers at once.
        status, answer = await post(session, emu, v2_form({"prompt": "[withhold] [fail]"}))
        assert status == 200
        item = answer["data"][0]
        assert (item["url"], item["is_image_safe"]) == (None, False)
        assert (emu.stats.withheld, emu.stats.billed_usd_micros) == (1, 12_000)
        _, answer = await post(session, emu, v2_form({"prompt": "fine"}))
        assert answer["data"][0]["is_image_safe"] is True
        assert emu.stats.withheld == 1


@pytest.mark.parametrize(
    "fields", [{"async": "true"}, {"webhook_url": "https://hooks.example/done"}], ids=str
)
async def test_a_background_generation_completes_after_the_delay(
    session: aiohttp.ClientSession, fields: dict[str, str]
) -> None:
    clock = Clock()
    async with Emulator(api_key=KEY, upscale=False, clock=clock, generation_delay=30) as emu:
        status, answer = await post(session, emu, v2_form({**fields, "seed": "3"}))
        assert status == 200
        assert set(answer) == {"generation_id", "width", "height", "seed"}
        generation_id = answer["generation_id"]
        clock.now = 29.9
        status, body, _ = await poll(session, emu, generation_id)
        assert status == 200
        assert CREATED.fullmatch(body.pop("created"))
        assert body == {"generation_id": generation_id, "status": "pending"}
        clock.now = 30.0
        _, body, _ = await poll(session, emu, generation_id)
        assert body["status"] == "completed"
        assert body["data"][0]["seed"] == 3
        assert body["data"][0]["url"].startswith(emu.base_url)
        (received,) = emu.stats.v2_uploads
        assert received.fields == {**fields, "seed": "3"}
        # async=false is an answer at once, and its generation is done already.
        status, answer = await post(session, emu, v2_form({"async": "false"}))
        assert "data" in answer
        _, body, _ = await poll(session, emu, answer["generation_id"])
        assert body["status"] == "completed"


async def test_a_failed_generation_is_not_billed(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, upscale=False) as emu:
        form = v2_form({"async": "true", "prompt": "[fail] [withhold]"})
        _, answer = await post(session, emu, form)
        status, body, _ = await poll(session, emu, answer["generation_id"])
        assert status == 200
        del body["created"]
        assert body == {
            "generation_id": answer["generation_id"],
            "status": "failed",
            "failure_reason": "content_policy_violation",
        }
        assert (emu.stats.billed_usd_micros, emu.stats.withheld) == (0, 0)


async def test_polls_over_the_limit_are_told_when_to_come_back(
    session: aiohttp.ClientSession,
) -> None:
    clock = Clock()
    async with Emulator(api_key=KEY, upscale=False, clock=clock, poll_limit=(2, 10)) as emu:
        unknown = (404, {"detail": "No generation with this id."}, None)
        assert await poll(session, emu, "gen-9") == unknown
        clock.now = 0.5
        assert await poll(session, emu, "gen-9") == unknown
        refused = {"error": "Too many generation polls; slow down."}
        assert await poll(session, emu, "gen-9") == (429, refused, "10")  # 9.5 s, rounded up
        clock.now = 9.9
        assert await poll(session, emu, "gen-9") == (429, refused, "1")
        clock.now = 10.0  # the first poll left the window
        assert await poll(session, emu, "gen-9") == unknown
        assert await poll(session, emu, "gen-9") == (429, refused, "1")
        assert (emu.stats.polls, emu.stats.polls_refused) == (3, 3)


def test_the_v2_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="generation_delay") as caught:
        Emulator(upscale=False, generation_delay=float("inf"))
    assert str(caught.value) == "generation_delay must be >= 0 seconds, got inf"
    for bad in ((True, 10.0), (2.0, 10.0), (0, 10.0), (1, 0), (1, -1.0)):
        with pytest.raises(ValueError, match="poll_limit") as caught:
            Emulator(upscale=False, poll_limit=bad)  # type: ignore[arg-type]
        assert str(caught.value) == f"poll_limit must be (polls >= 1, seconds > 0), got {bad!r}"
    Emulator(upscale=False, poll_limit=(1, 0.001), generation_delay=0)  # the least they take


# -- the image -----------------------------------------------------------------------------


def _image(fmt: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (5, 3)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode", "result"),
    [
        ("PNG", "1", "1"),
        ("PNG", "L", "L"),
        ("PNG", "LA", "LA"),
        ("PNG", "P", "P"),
        ("PNG", "RGB", "RGB"),
        ("PNG", "RGBA", "RGBA"),
        ("PNG", "I;16", "RGB"),
        ("JPEG", "CMYK", "RGB"),
    ],
    ids=str,
)
async def test_the_result_is_a_png_of_the_output_size(
    session: aiohttp.ClientSession, fmt: str, mode: str, result: str
) -> None:
    async with Emulator(api_key=KEY) as emu:
        _, answer = await post(session, emu, v2_form({"upscale_factor": "x4"}, _image(fmt, mode)))
        image = await download(session, answer["data"][0]["url"])
    assert (image.format, image.mode, image.size) == ("PNG", result, (20, 12))


async def test_the_result_is_resized_with_lanczos_and_compressed_fast(
    session: aiohttp.ClientSession,
) -> None:
    source = Image.linear_gradient("L").resize((16, 12)).convert("RGB")  # not one colour
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    async with Emulator(api_key=KEY) as emu:
        _, answer = await post(session, emu, v2_form({"upscale_factor": "x4"}, buffer.getvalue()))
        async with session.get(answer["data"][0]["url"]) as resp:
            png = await resp.read()
    expected = source.resize((64, 48), Image.Resampling.LANCZOS)
    assert Image.open(io.BytesIO(png)).tobytes() == expected.tobytes()
    # The zlib header of the image data: FLEVEL 0, the fastest compression (a test tool's
    # results are decoded once and thrown away).
    data = png.index(b"IDAT") + 4
    assert png[data + 1] >> 6 == 0


async def test_an_undecodable_image_is_400(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY) as emu:
        status, body = await post(session, emu, v2_form(image=png_header(8, 6)))
    assert status == 400
    assert body["detail"].startswith("image could not be decoded: ")


async def test_an_image_over_50_mib_is_413(session: aiohttp.ClientSession) -> None:
    limit = 50 * 1024 * 1024
    async with Emulator(api_key=KEY, upscale=False) as emu:
        at_limit = png_header(8, 6).ljust(limit, b"\0")
        form = v2_form(image=io.BytesIO(at_limit))
        assert (await post(session, emu, form, query="?dry_run=true"))[0] == 200
        status, body = await post(session, emu, v2_form(image=io.BytesIO(at_limit + b"\0")))
        assert (status, body) == (413, {"detail": f"image is larger than {limit} bytes."})


# -- faults, pause and the allowance -------------------------------------------------------


async def test_v2_faults_come_after_the_key(session: aiohttp.ClientSession) -> None:
    drop = Fault.drop_before_body()
    plan = FaultPlan([drop, drop, Fault.drop(), Fault.status(503, retry_after=1)])
    async with Emulator(api_key=KEY, upscale=False, faults=plan) as emu:
        assert (await post(session, emu, headers={}))[0] == 401  # uses up no fault
        for _ in range(2):
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(session, emu)
        assert (emu.stats.bytes_received, len(emu.stats.v2_uploads)) == (0, 0)
        with pytest.raises(aiohttp.ServerDisconnectedError):  # dropped once the body is read
            await post(session, emu)
        assert len(emu.stats.v2_uploads) == 1
        status, body = await post(session, emu)
        assert (status, body) == (503, {"detail": body["detail"]})
        assert len(emu.stats.v2_uploads) == 2  # the body was read before the fault
        assert (await post(session, emu))[0] == 200
        assert emu.stats.faults_injected == {"drop_before_body": 2, "drop": 1, "status": 1}


async def test_v2_per_upload_faults_follow_the_image(session: aiohttp.ClientSession) -> None:
    plan = FaultPlan([Fault.status(503)], per_upload=True)
    other = make_image(size=(8, 6), shade=1)
    async with Emulator(api_key=KEY, upscale=False, faults=plan) as emu:
        statuses = [
            (await post(session, emu, v2_form(image=image)))[0] for image in (PNG, PNG, other)
        ]
    assert statuses == [503, 200, 503]


async def test_v2_requests_hold_a_place_of_the_allowance(session: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, upscale=False, allowance=1) as emu:
        emu.pause()
        held = asyncio.create_task(post(session, emu, query="?dry_run=true"))
        async with asyncio.timeout(10):
            await emu.wait_places(1)
        status, body = await post(session, emu)
        assert (status, body["reject_reason"], body["max_inflight_requests"]) == (
            429,
            "inflight_limit",
            1,
        )
        emu.resume()
        assert (await held)[0] == 200
        assert (await post(session, emu))[0] == 200
        stats = emu.stats
        assert (stats.rejected_over_allowance, stats.peak_places_in_use) == (1, 1)
        assert (stats.places_in_use, stats.in_flight, stats.peak_in_flight) == (0, 0, 2)
