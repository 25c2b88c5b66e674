"""Writing a download to disk: the name limit, the part file, and file system errors."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ideogram_async import APIConnectionError, IdeogramError, _downloads
from ideogram_async._downloads import NAME_MAX, name_too_long, write_atomically
from ideogram_async.images import PNG, TAIL_BYTES

from ._support import listing_midway

BIG = 1024 * 1024
"""Larger than any write buffer: a write of this many bytes reaches the file system."""


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    ("name", "too_long"),
    [
        ("n" * 251 + ".png", False),  # 255 bytes: the limit is inclusive
        ("n" * 252 + ".png", True),
        ("n" * 250 + ".JPEG", False),  # an image suffix in any case is kept: nothing added
        ("n" * 250, False),  # room for the longest suffix that may be added (".webp")
        ("n" * 251, True),
        ("n" * 246 + ".upscaled", True),  # not an image suffix: ".webp" may follow it
        ("é" * 125 + ".png", False),  # bytes are counted, not characters: 254
        ("é" * 126 + ".png", True),
    ],
)
def test_name_too_long_counts_bytes_with_the_suffix_that_may_be_added(
    tmp_path: Path, name: str, too_long: bool
) -> None:
    assert NAME_MAX == 255
    assert name_too_long(tmp_path / name) is too_long


async def test_the_part_file_name_is_short_whatever_the_targets_length(
    tmp_path: Path, png_bytes: bytes
) -> None:
    seen: list[str] = []
    target = tmp_path / ("n" * 251 + ".png")
    assert await write_atomically(target, listing_midway(png_bytes, tmp_path, seen)) == target
    # The target's first 40 characters and 64 random bits: 63 bytes for an ASCII name.
    assert len(seen) == 1
    assert re.fullmatch(r"\.n{40}\.[0-9a-f]{16}\.part", seen[0])
    assert target.read_bytes() == png_bytes


async def test_a_folder_that_cannot_be_made_is_an_error_naming_the_target(
    tmp_path: Path, png_bytes: bytes
) -> None:
    (tmp_path / "file").write_bytes(b"")
    target = tmp_path / "file" / "x.png"
    with pytest.raises(IdeogramError) as caught:
        await write_atomically(target, _chunks(png_bytes))
    assert str(caught.value) == (
        f"cannot write {target}: File exists; check the folder and free space"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


async def test_a_target_that_is_a_folder_is_an_error_and_leaves_nothing(
    tmp_path: Path, png_bytes: bytes
) -> None:
    target = tmp_path / "taken.png"
    target.mkdir()
    with pytest.raises(IdeogramError) as caught:
        await write_atomically(target, _chunks(png_bytes))
    assert str(caught.value) == (
        f"cannot write {target}: Is a directory; check the folder and free space"
    )
    assert list(tmp_path.iterdir()) == [target]
    assert list(target.iterdir()) == []


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads make their part file as usual, but what is written to it goes to
    /dev/full, where every write fails with ENOSPC, as on a disk with no space left."""
    real_create = _downloads._create_temp

    def on_a_full_disk(folder: Path, name: str) -> tuple[int, Path]:
        fd, path = real_create(folder, name)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(_downloads, "_create_temp", on_a_full_disk)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(lambda png: [png + bytes(BIG)], id="in-the-first-bytes"),
        pytest.param(lambda png: [png[:12], bytes(BIG)], id="in-a-later-chunk"),
        pytest.param(lambda png: [png[:12], png[12:]], id="at-the-last-flush"),
    ],
)
async def test_a_full_disk_is_an_error_naming_the_target_and_leaves_nothing(
    tmp_path: Path, png_bytes: bytes, full_disk: None, parts: Any
) -> None:
    target = tmp_path / "x.png"
    with pytest.raises(IdeogramError) as caught:
        await write_atomically(target, _chunks(*parts(png_bytes)))
    assert str(caught.value) == (
        f"cannot write {target}: No space left on device; check the folder and free space"
    )
    assert list(tmp_path.iterdir()) == []


async def test_a_cancelled_write_whose_part_file_someone_else_removed_reports_nothing(
    tmp_path: Path, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    creating, release = asyncio.Event(), threading.Event()
    real_create = _downloads._create_temp

    def create_and_lose(folder: Path, name: str) -> tuple[int, Path]:
        loop.call_soon_threadsafe(creating.set)
        release.wait(10)
        fd, path = real_create(folder, name)
        path.unlink()  # removed by someone else before the cancelled write undoes it
        return fd, path

    monkeypatch.setattr(_downloads, "_create_temp", create_and_lose)
    task = asyncio.create_task(write_atomically(tmp_path / "x.png", _chunks(png_bytes)))
    await creating.wait()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task  # returns once the worker thread is done and its result undone
    loop.set_exception_handler(None)
    assert reported == []
    assert list(tmp_path.iterdir()) == []


# -- complete or nothing: the announced length, else the image's own end -------------------


def _in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("piece", [1, 5, 12, 13, 4096])
async def test_without_a_length_the_images_end_is_watched_across_chunks_of_any_size(
    tmp_path: Path, png_bytes: bytes, piece: int
) -> None:
    target = tmp_path / "x.png"
    assert await write_atomically(target, _chunks(*_in_pieces(png_bytes, piece))) == target
    assert target.read_bytes() == png_bytes
    cut = png_bytes[:-1]
    with pytest.raises(APIConnectionError) as caught:
        await write_atomically(tmp_path / "y.png", _chunks(*_in_pieces(cut, piece)))
    assert str(caught.value) == (
        f"the download of y.png is incomplete ({len(cut)} bytes arrived, not ending like "
        "a whole PNG image): the connection closed early; retrying may help, nothing was written"
    )
    assert caught.value.transient
    assert not caught.value.body_sent
    assert list(tmp_path.iterdir()) == [target]


async def test_a_body_in_its_first_chunk_is_judged_on_it(
    tmp_path: Path, png_bytes: bytes, jpeg_bytes: bytes
) -> None:
    assert (await write_atomically(tmp_path / "a", _chunks(png_bytes))).name == "a.png"
    with pytest.raises(APIConnectionError, match="not ending like a whole JPEG image"):
        await write_atomically(tmp_path / "b", _chunks(jpeg_bytes[:-2]))
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("dropped", [1, -1, -100])
async def test_a_length_other_than_the_announced_one_is_incomplete(
    tmp_path: Path, png_bytes: bytes, dropped: int
) -> None:
    body = png_bytes[:-dropped] if dropped > 0 else png_bytes + bytes(-dropped)
    pieces = _in_pieces(body, 7)
    with pytest.raises(
        APIConnectionError,
        match=rf"\({len(body)} bytes arrived where {len(png_bytes)} were announced\)",
    ):
        await write_atomically(tmp_path / "x.png", _chunks(*pieces), length=len(png_bytes))
    assert list(tmp_path.iterdir()) == []


async def test_the_announced_length_is_what_makes_a_body_whole(
    tmp_path: Path, png_bytes: bytes
) -> None:
    # Stray bytes after the image: not a whole PNG by its structure, but all that was announced.
    body = png_bytes + b"trailer"
    target = tmp_path / "x.png"
    assert await write_atomically(target, _chunks(*_in_pieces(body, 7)), length=len(body))
    assert target.read_bytes() == body


def test_only_the_last_bytes_are_kept_while_streaming(png_bytes: bytes) -> None:
    whole = _downloads._Whole(PNG, png_bytes[:12], None)
    for piece in [bytes(1000)] * 50 + _in_pieces(png_bytes, 3):
        whole.feed(piece)
        assert len(whole.tail) <= TAIL_BYTES
    whole.check(Path("x.png"), 50_000 + len(png_bytes))  # whole: raises nothing


async def test_a_full_disk_stops_the_download_at_the_first_failed_write(
    tmp_path: Path, png_bytes: bytes, full_disk: None
) -> None:
    pulled: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        yield png_bytes[:12]
        while True:
            pulled.append(1)
            yield bytes(BIG)

    with pytest.raises(IdeogramError, match="No space left on device"):
        await write_atomically(tmp_path / "x.png", endless())
    assert len(pulled) == 1  # the first write that reached the disk failed, and ended it
    assert list(tmp_path.iterdir()) == []
