"""The hostile server's fixtures: a server that misbehaves on demand, in its own process.

``hostile`` gives a test a :class:`Hostile` handle whose URLs name a scenario
(see ``tests/_hostile_server.py`` for each one) and a token of its own, so that the
stats the server keeps are the test's alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Hostile:
    """One test's handle on the hostile server: its URLs and what the server saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.token = uuid.uuid4().hex[:12]

    def url(self, scenario: str, arg: str = "-") -> str:
        """The base URL (or image URL) that makes the server play ``scenario``."""
        return f"http://127.0.0.1:{self.port}/h/{self.token}/{scenario}/{quote(arg, safe='')}"

    async def stats(self) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"GET /stats/{self.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            data: dict[str, Any] = json.loads(await reader.readexactly(length))
            return data
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.fixture(scope="module")
def hostile_port() -> Iterator[int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests._hostile_server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        yield int(server.stdout.readline())
    finally:
        server.stdin.close()  # the server exits when its stdin closes
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()


@pytest.fixture
def hostile(hostile_port: int) -> Hostile:
    return Hostile(hostile_port)
