"""download: streamed, atomic, retried, and never sends the API key to the image host."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from ideogram_async import (
    IdeogramClient,
    NotFoundError,
    ResponseFormatError,
    UpscaledImage,
    ValidationError,
    _downloads,
)
from ideogram_async._downloads import write_atomically
from ideogram_async.images import SNIFF_BYTES
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries

from ._support import KEY, listing_midway


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


@pytest.mark.parametrize("flavor", ["proxy", "official"])
async def test_download_writes_the_image_and_never_sends_the_key(
    tmp_path: Path, png_bytes: bytes, flavor: str
) -> None:
    async with (
        Emulator(api_key=KEY) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor=flavor) as client,
    ):
        result = await client.upscale(png_bytes)
        dest = tmp_path / "deep" / "er" / "out.png"
        path = await client.download(result.data[0], dest)
    assert path == dest
    with Image.open(dest) as image:
        original = Image.open(io.BytesIO(png_bytes))
        assert image.size == (original.width * 2, original.height * 2)
    assert emulator.stats.image_downloads == 1
    for headers in emulator.stats.image_requests:
        assert "authorization" not in headers
        assert "api-key" not in headers
        assert KEY not in " ".join(headers.values())
    assert leftovers(tmp_path) == []


async def test_download_by_url_string(
    emulator: Emulator, client: IdeogramClient, png_bytes: bytes, tmp_path: Path
) -> None:
    result = await client.upscale(png_bytes)
    assert result.data[0].url is not None
    path = await client.download(result.data[0].url, tmp_path / "x.png")
    assert path.read_bytes().startswith(b"\x89PNG")


async def test_expired_url_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, png_bytes: bytes
) -> None:
    now = [0.0]
    async with (
        Emulator(api_key=KEY, image_ttl=60, clock=lambda: now[0]) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        result = await client.upscale(png_bytes)
        now[0] = 61.0
        with pytest.raises(NotFoundError, match="download results soon after") as caught:
            await client.download(result.data[0], tmp_path / "late.png")
    assert caught.value.attempts == 1  # not retried
    assert list(tmp_path.iterdir()) == []


async def test_transient_image_failures_are_retried(tmp_path: Path, png_bytes: bytes) -> None:
    plan = FaultPlan([Fault.status(503), Fault.truncate(), Fault.drop(), None])
    with instant_retries():
        async with (
            Emulator(api_key=KEY, image_faults=plan) as emulator,
            IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
        ):
            result = await client.upscale(png_bytes)
            path = await client.download(result.data[0], tmp_path / "out.png")
    with Image.open(path) as image:
        image.verify()  # complete and valid, although attempts broke mid-way
    assert leftovers(tmp_path) == []


async def test_a_body_that_is_not_an_image_is_rejected(tmp_path: Path, png_bytes: bytes) -> None:
    plan = FaultPlan.always(Fault.status(200, body="<html>login page</html>"))
    async with (
        Emulator(api_key=KEY, image_faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        result = await client.upscale(png_bytes)
        with pytest.raises(ResponseFormatError, match="not a JPEG, PNG or WebP"):
            await client.download(result.data[0], tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


async def test_bad_download_arguments(client: IdeogramClient, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="url"):
        await client.download(UpscaledImage(url=None), tmp_path / "a.png")
    with pytest.raises(ValidationError, match="http"):
        await client.download("ftp://host/x.png", tmp_path / "a.png")
    with pytest.raises(ValidationError, match="directory"):
        await client.download("http://127.0.0.1:1/x.png", tmp_path)


async def _broken(first: bytes) -> AsyncIterator[bytes]:
    yield first
    raise ConnectionResetError("peer went away")


async def test_failed_write_leaves_the_previous_file_untouched(
    tmp_path: Path, png_bytes: bytes
) -> None:
    dest = tmp_path / "keep.png"
    dest.write_bytes(b"old contents")
    with pytest.raises(ConnectionResetError):
        await write_atomically(dest, _broken(png_bytes[:20]))  # past the type check
    assert dest.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


async def test_cancelled_write_leaves_no_partial_file(tmp_path: Path, png_bytes: bytes) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield png_bytes[:20]  # past the type check: the temp file exists
        started.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    task = asyncio.create_task(write_atomically(tmp_path / "x.png", stalls()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == []


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_download_in_progress_is_a_hidden_part_file_beside_the_target(
    tmp_path: Path, png_bytes: bytes
) -> None:
    seen: list[str] = []
    dest = tmp_path / "out.png"
    assert await write_atomically(dest, listing_midway(png_bytes, tmp_path, seen)) == dest
    assert len(seen) == 1
    assert seen[0].startswith(".out.png.")
    assert seen[0].endswith(".part")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert dest.read_bytes() == png_bytes


async def test_the_image_type_is_read_across_small_chunks(tmp_path: Path, png_bytes: bytes) -> None:
    parts = [png_bytes[i : i + 1] for i in range(20)] + [png_bytes[20:]]
    assert await write_atomically(tmp_path / "a", _chunks(*parts)) == tmp_path / "a.png"
    assert (tmp_path / "a.png").read_bytes() == png_bytes


async def test_a_body_that_is_not_an_image_is_quoted_by_its_first_bytes(tmp_path: Path) -> None:
    body = b"<html><head><title>Sign in</title></head></html>"
    with pytest.raises(ResponseFormatError) as info:
        await write_atomically(tmp_path / "x.png", _chunks(body[:5], body[5:]))
    assert f"(it starts with {body[:8]!r})" in str(info.value)
    assert info.value.body == body[:12].decode()
    assert list(tmp_path.iterdir()) == []


async def test_a_body_is_judged_on_its_first_bytes_without_waiting_for_more(
    tmp_path: Path,
) -> None:
    async def page_then_stall() -> AsyncIterator[bytes]:
        yield b"<html><head>"
        pytest.fail("read past the first bytes")

    assert len(b"<html><head>") == SNIFF_BYTES
    with pytest.raises(ResponseFormatError, match="not a JPEG, PNG or WebP"):
        await write_atomically(tmp_path / "x.png", page_then_stall())
    assert list(tmp_path.iterdir()) == []


async def test_a_partial_file_removed_by_someone_else_does_not_hide_the_error(
    tmp_path: Path, png_bytes: bytes
) -> None:
    removed: list[Path] = []

    async def body() -> AsyncIterator[bytes]:
        yield png_bytes[:20]  # past the type check: the part file exists
        removed.extend(tmp_path.glob(".*.part"))
        for part in removed:
            part.unlink()
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        await write_atomically(tmp_path / "x.png", body())
    assert len(removed) == 1


async def test_a_write_cancelled_while_its_temp_file_is_made_leaves_none(
    tmp_path: Path, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    creating, release, created = asyncio.Event(), threading.Event(), threading.Event()
    real_create = _downloads._create_temp

    def slow_create(folder: Path, name: str) -> tuple[int, Path]:
        loop.call_soon_threadsafe(creating.set)
        release.wait(10)
        try:
            return real_create(folder, name)
        finally:
            created.set()

    monkeypatch.setattr(_downloads, "_create_temp", slow_create)

    async def once() -> AsyncIterator[bytes]:
        yield png_bytes

    task = asyncio.create_task(write_atomically(tmp_path / "x.png", once()))
    await creating.wait()  # the worker thread is making the temp file
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(created.wait, 10)  # the thread is done, too
    assert list(tmp_path.iterdir()) == []


async def test_the_download_cap_is_inclusive_and_counts_every_chunk(
    tmp_path: Path, png_bytes: bytes
) -> None:
    parts = [
        png_bytes[:5],
        png_bytes[5:12],
        *(png_bytes[i : i + 7] for i in range(12, len(png_bytes), 7)),
    ]
    size = len(png_bytes)
    assert await write_atomically(tmp_path / "a.png", _chunks(*parts), max_size=size)
    assert (tmp_path / "a.png").read_bytes() == png_bytes
    # Whole in its first chunk, and announced: exactly the cap is within it, too.
    whole = tmp_path / "whole.png"
    assert await write_atomically(whole, _chunks(png_bytes), max_size=size, length=size) == whole
    for cap in (size - 1, 6):  # over it while streaming, and within the first bytes
        with pytest.raises(ResponseFormatError) as info:
            await write_atomically(tmp_path / "b.png", _chunks(*parts), max_size=cap)
        assert str(info.value) == (
            f"the image for b.png is larger than max_download_size ({cap} bytes); "
            "raise max_download_size if such images are expected"
        )
        assert info.value.body == ""  # no body worth quoting: it is an image, only too large
    with pytest.raises(
        ResponseFormatError, match=rf"\({size - 1} bytes\) \({size} bytes announced\)"
    ):
        await write_atomically(tmp_path / "c.png", _chunks(*parts), max_size=size - 1, length=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "whole.png"]


async def test_a_dest_without_an_image_suffix_gets_the_images_own(
    client: IdeogramClient, png_bytes: bytes, tmp_path: Path
) -> None:
    result = await client.upscale(png_bytes)
    image = result.data[0]
    assert await client.download(image, tmp_path / "a") == tmp_path / "a.png"
    assert await client.download(image, tmp_path / "b.upscaled") == tmp_path / "b.upscaled.png"
    # An image suffix the caller chose is kept as it is.
    assert await client.download(image, tmp_path / "c.jpg") == tmp_path / "c.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.upscaled.png", "c.jpg"]


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """``os.umask``, with the process's umask restored after the test."""
    saved = os.umask(0o077)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize(
    ("mask", "mode"),
    [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)],
    ids=["umask-022", "umask-027", "umask-002"],
)
async def test_a_download_gets_the_permissions_the_umask_gives(
    client: IdeogramClient,
    png_bytes: bytes,
    tmp_path: Path,
    umask: Callable[[int], int],
    mask: int,
    mode: int,
) -> None:
    result = await client.upscale(png_bytes)
    umask(mask)
    path = await client.download(result.data[0], tmp_path / "shared.png")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    # Replacing an existing private file gives the new one the same permissions.
    path.chmod(0o600)
    await client.download(result.data[0], path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


async def test_downloads_in_flight_are_bounded_by_the_allowance(
    tmp_path: Path, png_bytes: bytes
) -> None:
    # Count the GETs in flight from the client's own side, through a session passed in
    # (whose pool would allow 100): only the client's download slots bound them.
    in_flight, peak = 0, 0

    async def started(*_: object) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

    async def ended(*_: object) -> None:
        nonlocal in_flight
        in_flight -= 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(ended)
    slow_images = FaultPlan.always(Fault.slow(0.3))  # so that unbounded downloads overlap
    async with (
        Emulator(api_key=KEY, upscale=False, image_faults=slow_images) as emulator,
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, allowance=2, session=session
        ) as client,
    ):
        result = await client.upscale(png_bytes)
        peak = 0  # the upscale's POST counted too
        url = result.data[0].url
        assert url is not None
        await asyncio.gather(*(client.download(url, tmp_path / f"{i}.png") for i in range(6)))
    assert emulator.stats.image_downloads == 6
    assert peak <= 2


async def test_a_failed_download_names_its_request_without_the_query(tmp_path: Path) -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        url = f"{emulator.base_url}/images/none.png"
        with pytest.raises(NotFoundError) as caught:
            await client.download(url + "?expires=1&signature=s3cr3t", tmp_path / "x.png")
    assert (caught.value.method, caught.value.url, caught.value.status_code) == ("GET", url, 404)
    assert "s3cr3t" not in str(caught.value) + repr(caught.value)
