"""Fixtures around :class:`ideogram_async.testing.RedisServer` (loaded from ``conftest.py``).

The session fixture ``redis_server`` starts one server for every test; a test that
flushes, stops or restarts Redis takes ``own_redis_server``. Tests skip (with the
reason) only when ``redis-server`` is not installed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ideogram_async.testing import RedisServer


def _skip_without_redis() -> None:
    if not RedisServer.installed():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` shared by the session's tests (each uses a key of its own)."""
    _skip_without_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` for one test, which may flush, stop and restart it."""
    _skip_without_redis()
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def redis_key() -> str:
    """A key no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
