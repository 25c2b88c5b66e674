"""What goes on the wire when a header, a key, a file name or an input is out of the ordinary.

Each over a real socket: the emulator, or the hostile server in its own process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ideogram_async import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    IdeogramClient,
    RetryPolicy,
    ValidationError,
)
from ideogram_async.testing import Emulator
from ideogram_async.v2 import TopazBloom2

from ._hostile import Hostile
from ._support import KEY, make_image

PNG = make_image()
CHARSETS = ["idna", "punycode", "undefined", "base64", "utf-16", "no-such-codec", "\x7f"]


def client_of(url: str) -> IdeogramClient:
    return IdeogramClient(api_key=KEY, base_url=url, retry=RetryPolicy.no_retries())


# -- any charset in Content-Type is read as UTF-8 --------------------------------------------


@pytest.mark.parametrize("charset", CHARSETS)
async def test_a_billed_answer_is_kept_whatever_charset_it_names(
    hostile: Hostile, charset: str
) -> None:
    async with client_of(hostile.url("charset", f"200:{charset}")) as client:
        answer = await client.upscale(PNG)
    # The body's Latin-1 byte is not UTF-8: replaced, and the answer parsed all the same.
    assert answer.data[0].prompt == "caf\N{REPLACEMENT CHARACTER}"
    assert answer.data[0].url == "http://127.0.0.1/ok.png"


@pytest.mark.parametrize("charset", CHARSETS)
async def test_an_error_body_with_any_charset_keeps_its_error(
    hostile: Hostile, charset: str
) -> None:
    async with client_of(hostile.url("charset", f"400:{charset}")) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.upscale(PNG)
    assert caught.value.message.startswith("caf\N{REPLACEMENT CHARACTER} refused")


# -- a key that cannot go in a header is refused when the client is built --------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("sk-abc\ndef", "a control character (such as a line break or a tab) at position 7"),
        ("sk-abc\tdef", "a control character (such as a line break or a tab) at position 7"),
        ("sk-\x85abc", "a control character (such as a line break or a tab) at position 4"),
        ("sk-\u2013abc", "a character at position 4 that cannot go in an HTTP header"),
        ("sk-\N{SNOWMAN}", "a character at position 4 that cannot go in an HTTP header"),
    ],
)
async def test_a_key_that_cannot_go_in_a_header_is_refused_before_anything_is_sent(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, key: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as given:
        IdeogramClient(api_key=key, base_url=emulator.base_url)
    monkeypatch.setenv("IDEOGRAM_API_KEY", key)
    with pytest.raises(ValidationError) as from_environment:
        IdeogramClient(base_url=emulator.base_url)
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client:
        with pytest.raises(ValidationError) as changed:
            client.with_options(api_key=key)
    for caught in (given, from_environment, changed):
        assert problem in str(caught.value)
        assert key.strip() not in str(caught.value)
        assert "abc" not in str(caught.value)
    assert emulator.stats.requests == 0


async def test_a_latin_1_key_is_sent(emulator: Emulator) -> None:
    async with IdeogramClient(api_key="sk-caf\xe9", base_url=emulator.base_url) as client:
        with pytest.raises(AuthenticationError):  # sent, and refused as the wrong key
            await client.upscale(PNG)
    assert emulator.stats.requests == 1


# -- a file name that is not UTF-8 goes out percent-encoded -----------------------------------


async def test_a_file_name_that_is_not_utf8_is_sent_percent_encoded(
    emulator: Emulator, tmp_path: Path
) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(raw, "wb") as file:
        file.write(PNG)
    path = os.fsdecode(raw)  # "caf\udce9.png": the byte kept as a surrogate
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as c:
        await c.upscale(path)
        await c.upscale(PNG, filename="caf\udce9 \N{SNOWMAN}.png")
        await c.v2.upscale(Path(path), TopazBloom2())
    assert [u.filename for u in emulator.stats.uploads] == [
        "caf%E9.png",
        "caf%E9 \N{SNOWMAN}.png",  # valid UTF-8 goes out as it is
    ]
    assert [u.filename for u in emulator.stats.v2_uploads] == ["caf%E9.png"]


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        # The first and last bytes os.fsdecode keeps as surrogates: one byte each.
        ("a\udc80.png", "a%80.png"),
        ("a\udcff.png", "a%FF.png"),
        # Any other lone surrogate: the three bytes of its "surrogatepass" form.
        ("a\ud800.png", "a%ED%A0%80.png"),
        ("a\udc7f\udd00.png", "a%ED%B1%BF%ED%B4%80.png"),
    ],
)
async def test_every_lone_surrogate_in_a_file_name_goes_out_as_its_bytes(
    emulator: Emulator, name: str, sent: str
) -> None:
    async with client_of(emulator.base_url) as client:
        await client.upscale(PNG, filename=name)
    assert [u.filename for u in emulator.stats.uploads] == [sent]


# -- the deadline covers reading the input ---------------------------------------------------


async def test_the_deadline_includes_reading_a_stream_input(emulator: Emulator) -> None:
    chunks = 0

    async def trickle() -> AsyncIterator[bytes]:
        nonlocal chunks
        yield PNG[:16]
        while True:  # a stream that never ends, one byte at a time
            chunks += 1
            await asyncio.sleep(0.01)
            yield b"\0"

    deadline = RetryPolicy(deadline=0.2)
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, retry=deadline) as c:
        with pytest.raises(APITimeoutError) as caught:
            await c.upscale(trickle())
    assert (caught.value.kind, caught.value.attempts) == ("deadline", 0)
    assert str(caught.value).startswith(
        "upscale: the deadline of 0.2s for the whole call passed after 0 attempt(s)"
    )
    assert 0 < chunks < 1000  # stopped by the deadline, not by the end of the stream
    assert emulator.stats.requests == 0
