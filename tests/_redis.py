"""A real ``redis-server`` for the tests, on a free loopback port in a temporary folder.

Loaded as a plugin from ``conftest.py``. The session fixture ``redis_server`` starts
one server for every test; a test that stops or restarts Redis makes its own
:class:`RedisServer`. Tests skip (with the reason) only when ``redis-server`` is not
installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_READY_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process without persistence; stop and start keep its port."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self._executable = executable
        self._directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        command = [self._executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self._directory
        )
        self._process = process
        deadline = time.monotonic() + _READY_TIMEOUT
        while not _answers_ping(self.port):
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"redis-server exited with {process.returncode}: {stderr}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {_READY_TIMEOUT}s")
            time.sleep(0.02)  # polling a starting server: there is nothing to wait on

    def stop(self) -> None:
        """Stop the server (its data is gone: nothing is saved)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` shared by the session's tests (each uses a key of its own)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` for one test, which may stop and restart it."""
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def redis_key() -> str:
    """A key no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
