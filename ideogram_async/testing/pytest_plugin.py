"""A pytest fixture yielding a running emulator.

Enable it in a ``conftest.py`` or test module::

    pytest_plugins = ["ideogram_async.testing.pytest_plugin"]

    async def test_upscale(ideogram_emulator):
        async with IdeogramClient(base_url=ideogram_emulator.base_url, api_key="test-key"):
            ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator

try:
    import pytest_asyncio
except ImportError as exc:
    raise ImportError(
        "the ideogram_emulator fixture needs pytest-asyncio: pip install 'ideogram-async[testing]'"
    ) from exc

from ._emulator import Emulator

__all__ = ["ideogram_emulator"]


@pytest_asyncio.fixture
async def ideogram_emulator() -> AsyncIterator[Emulator]:
    """An :class:`~ideogram_async.testing.Emulator` with default settings (key ``test-key``)."""
    async with Emulator() as emulator:
        yield emulator
