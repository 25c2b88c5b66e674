"""A real ``redis-server`` on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "free_port"]

_READY_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int, line: bytes, reply: bytes) -> bool:
    """Whether the server on ``port`` answers the inline command ``line`` with ``reply``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(line + b"\r\n")
            return sock.recv(64).startswith(reply)
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process without persistence, on a loopback port it keeps.

    ``with RedisServer() as server:`` starts it (returning once it answers PING) and
    stops it after; :meth:`stop` and :meth:`start` in between stand for a restart that
    loses every key, :meth:`flush` for ``FLUSHALL``. It runs in ``directory`` (a
    temporary folder by default). Raises ``RuntimeError`` when ``redis-server`` is not
    installed (``apt-get install redis-server``) or does not start.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._executable = executable
        self._own: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._own = tempfile.TemporaryDirectory(prefix="ideogram-redis-")
            directory = self._own.name
        self._directory = Path(directory)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def installed() -> bool:
        """Whether ``redis-server`` is on the PATH."""
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        if self._process is None:
            raise RuntimeError("the redis-server is not running; call start() first")
        return self._process.pid

    def cpu(self) -> float:
        """CPU seconds the running server has used so far (user + system; Linux)."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._own is not None:
            self._own.cleanup()

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        command = [self._executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._process = process
        deadline = time.monotonic() + _READY_TIMEOUT
        while not _answers(self.port, b"PING", b"+PONG"):
            if process.poll() is not None:
                self._process = None
                stderr = process.communicate()[1].decode().strip()  # and closes the pipe
                raise RuntimeError(f"redis-server exited with {process.returncode}: {stderr}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {_READY_TIMEOUT}s")
            time.sleep(0.02)  # polling a starting server: there is nothing to wait on

    def flush(self) -> None:
        """``FLUSHALL``: every key is gone, the server keeps running."""
        if not _answers(self.port, b"FLUSHALL", b"+OK"):
            raise RuntimeError(f"FLUSHALL failed on the redis-server at port {self.port}")

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
