"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

KEY = "sk-test-5e3cr3t-key"
"""The API key the emulator fixtures expect; distinctive so a leak is easy to spot."""


def make_image(fmt: str = "png", size: tuple[int, int] = (8, 8), shade: int = 0) -> bytes:
    """A solid image in ``fmt`` (png, jpeg, webp); each ``shade`` < 65536 gives other bytes."""
    image = Image.new("RGB", size, (shade % 256, (shade // 256) % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper())
    return buffer.getvalue()


def sleep_noting(paused: list[float]) -> Callable[..., Coroutine[Any, Any, Any]]:
    """An ``asyncio.sleep`` that notes in ``paused`` each pause it is asked for, then
    sleeps (made before it replaces ``asyncio.sleep``, so it calls the real one)."""
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        if delay > 0:
            paused.append(delay)
        return await real_sleep(delay, result)

    return sleep


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point at."""
    result = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            result[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd of the listing itself, closed by now
            continue
    return result


async def listing_midway(data: bytes, folder: Path, seen: list[str]) -> AsyncIterator[bytes]:
    """``data`` in two chunks; between them, the names in ``folder`` go into ``seen``."""
    yield data[:100]
    seen.extend(p.name for p in folder.iterdir())
    yield data[100:]


async def start_workers(
    script: str, arguments: Sequence[Sequence[str]], env: dict[str, str]
) -> list[asyncio.subprocess.Process]:
    """One ``python -c script ARGS...`` process per argument list, each past its "ready" line.

    The workers wait for :func:`release`; their stdin and stdout are pipes.
    """
    workers = [
        await asyncio.create_subprocess_exec(
            *[sys.executable, "-c", script, *args],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for args in arguments
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert await worker.stdout.readline() == b"ready\n"
    return workers


async def release(workers: Sequence[asyncio.subprocess.Process]) -> None:
    """Let workers started by :func:`start_workers` go: one line on each one's stdin."""
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
