"""Shared fixtures: small images made with Pillow (in memory, on disk), worker-thread hops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ideogram_async import IdeogramClient
from ideogram_async.testing import Emulator

from ._support import KEY, make_image

# Dogfood the fixture users get (`ideogram_emulator`); a real redis-server (`tests._redis`);
# the hostile server (`tests._hostile`).
pytest_plugins = ["ideogram_async.testing.pytest_plugin", "tests._redis", "tests._hostile"]

ImageFactory = Callable[..., bytes]


@pytest.fixture(scope="session")
def image_bytes() -> ImageFactory:
    """A factory: ``image_bytes("jpeg", size=(32, 16), shade=3)`` -> encoded bytes."""
    return make_image


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return make_image("PNG")


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return make_image("JPEG")


@pytest.fixture(scope="session")
def webp_bytes() -> bytes:
    return make_image("WEBP")


@pytest.fixture
def png_path(tmp_path: Path, png_bytes: bytes) -> Path:
    """A small PNG file on disk, named ``photo.png``."""
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes)
    return path


@pytest.fixture
def png_file(png_path: Path) -> Path:
    """Alias of ``png_path``."""
    return png_path


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A running emulator (real upscaling) that expects the key ``KEY``."""
    async with Emulator(api_key=KEY) as running:
        yield running


@pytest_asyncio.fixture
async def client(emulator: Emulator) -> AsyncIterator[IdeogramClient]:
    """A client of ``emulator`` with the default settings."""
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as opened:
        yield opened


@pytest.fixture
async def hops(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The worker-thread hops the running loop is asked for: the arguments of each."""
    made: list[object] = []
    loop = asyncio.get_running_loop()
    real = loop.run_in_executor

    def counting(executor: Any, work: Any, *args: Any) -> Any:
        made.append(args)
        return real(executor, work, *args)

    monkeypatch.setattr(loop, "run_in_executor", counting)
    return made
