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

from ideogram_async import IdeogramError, _downloads
from ideogram_async._downloads import NAME_MAX, name_too_long, write_atomically

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


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(lambda png: [png + bytes(BIG)], id="in-the-first-bytes"),
        pytest.param(lambda png: [png[:12], bytes(BIG)], id="in-a-later-chunk"),
        pytest.param(lambda png: [png[:12], png[12:]], id="at-the-last-flush"),
    ],
)
async def test_a_full_disk_is_an_error_naming_the_target_and_leaves_nothing(
    tmp_path: Path, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch, parts: Any
) -> None:
    real_create = _downloads._create_temp

    def on_a_full_disk(folder: Path, name: str) -> tuple[int, Path]:
        # The part file is made as usual, but what is written to it goes to /dev/full,
        # where every write fails with ENOSPC, as on a disk with no space left.
        fd, path = real_create(folder, name)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(_downloads, "_create_temp", on_a_full_disk)
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
