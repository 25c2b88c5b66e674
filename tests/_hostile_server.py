"""A hostile HTTP server for ``test_hostile.py``: raw asyncio on 127.0.0.1, own process.

Run as ``python -m tests._hostile_server``: it prints its port on the first line of
stdout and serves until its stdin closes (so it never outlives the test process).
Running apart means a client that reads without bound exhausts its own memory, not
the server's, and a blocked event loop in the tests cannot stall the server.

Every request path reads ``/h/<token>/<scenario>/<arg>/...``: the scenario says how
to misbehave, ``arg`` parametrises it (``-`` when unused) and ``token`` names the test,
whose counters ``GET /stats/<token>`` returns as JSON::

    {"requests": 3, "uploads": 2, "sent": 1048576, "disposition": "..."}

``uploads`` counts request bodies read to their end; ``sent`` the body bytes this
server handed to its kernel; ``disposition`` the image part's raw Content-Disposition.
The body sizes (``BIG``) stay modest so that a client without caps fails its test
cheaply instead of taking the machine down.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import random
import re
import socket
import struct
import sys
from collections import defaultdict
from typing import Any
from urllib.parse import unquote

BIG = 64 * 1024 * 1024
"""Bytes a "huge" body really carries before the server ends it."""
CHUNK = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GZIP_BOMB = gzip.compress(b"\0" * BIG, compresslevel=9)
_CHARSET_OK = (
    b'{"created": "2026-01-01T00:00:00Z", "data": [{"url": "http://127.0.0.1/ok.png", '
    b'"prompt": "caf\xe9"}]}'
)

_stats: defaultdict[str, dict[str, Any]] = defaultdict(
    lambda: {"requests": 0, "uploads": 0, "sent": 0, "disposition": None}
)


class _Request:
    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        parts = path.split("?")[0].split("/")
        # "", "h", token, scenario, arg, ...
        self.token = parts[2] if len(parts) > 2 else "-"
        self.scenario = parts[3] if len(parts) > 3 else ""
        self.arg = unquote(parts[4]) if len(parts) > 4 else "-"

    @property
    def key(self) -> str:
        """The API key the client sent (either flavor), echoed by the leaking scenarios."""
        auth = self.headers.get("authorization", "")
        return auth.partition(" ")[2] if auth else self.headers.get("api-key", "")


async def _read_head(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return _Request(method, path, headers)


async def _read_body(reader: asyncio.StreamReader, request: _Request) -> bytes:
    if request.headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return await reader.readexactly(int(request.headers.get("content-length", "0")))


def _head(status: int, headers: dict[str, str] | None = None, *, reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json(status: int, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    return _head(status, {**headers, **(extra or {})}) + body


def ok_body(url: str = "http://127.0.0.1/img/bookmark/ok.png", prompt: str = "") -> bytes:
    answer = {"created": "2026-01-01T00:00:00Z", "data": [{"url": url, "prompt": prompt}]}
    return json.dumps(answer).encode()


def image_of(fmt: str) -> bytes:
    """A real, noisy 96x64 image in ``fmt`` (png, jpeg or webp), some KB long."""
    from PIL import Image  # only the image scenarios need Pillow

    image = Image.frombytes("RGB", (96, 64), random.Random(fmt).randbytes(96 * 64 * 3))
    out = io.BytesIO()
    image.save(out, fmt.upper())
    return out.getvalue()


async def _stream(
    writer: asyncio.StreamWriter, stats: dict[str, Any], total: int, first: bytes = b""
) -> None:
    """Send ``first`` then zeros up to ``total`` body bytes, counting what went out."""
    data = first
    while stats["sent"] < total:
        piece = data or b"\0" * min(CHUNK, total - stats["sent"])
        data = b""
        writer.write(piece)
        await writer.drain()
        stats["sent"] += len(piece)


async def _chunked(writer: asyncio.StreamWriter, stats: dict[str, Any], total: int) -> None:
    """Send ``total`` bytes of JSON whitespace as HTTP chunks, then the last chunk."""
    piece = b" " * CHUNK
    while stats["sent"] < total:
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        stats["sent"] += len(piece)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _escape_all(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


async def _hold(reader: asyncio.StreamReader) -> None:
    """Keep the connection open, reading nothing more, until the client goes away."""
    await reader.read(1)  # returns at EOF or when the client writes again


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: _Request
) -> bool:
    """Answer one request; return whether the connection may carry another."""
    if request.path.startswith("/stats/"):
        body = json.dumps(_stats[request.path.split("/")[2]]).encode()
        writer.write(_json(200, body))
        return True
    stats = _stats[request.token]
    stats["requests"] += 1
    kind, arg = request.scenario, request.arg
    if kind == "stall":  # stop reading the upload after its headers
        await asyncio.sleep(3600)
        return False
    body = await _read_body(reader, request)
    stats["uploads"] += request.method == "POST"
    match = re.search(rb'name="image_file"[^\r\n]*', body)
    if match:
        stats["disposition"] = match.group(0).decode("utf-8", "replace")
    if kind == "ok":  # a valid answer; its prompt carries the image part's disposition
        writer.write(_json(200, ok_body(prompt=stats["disposition"] or "")))
        return True
    if kind == "charset":  # arg "status:charset": a JSON answer (one byte not UTF-8)
        status, _, charset = arg.partition(":")
        # Latin-1 bytes, as a server that means what it says would send them.
        body = _CHARSET_OK if status == "200" else b'{"detail": "caf\xe9 refused"}'
        writer.write(
            _head(
                int(status),
                {
                    "Content-Type": f"application/json; charset={charset}",
                    "Content-Length": str(len(body)),
                },
            )
            + body
        )
        return True
    if kind == "endless":  # "endless" chunked JSON 200 (BIG bytes of whitespace)
        writer.write(
            _head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        )
        await _chunked(writer, stats, BIG)
        return True
    if kind == "error-endless":
        writer.write(_head(500, {"Content-Type": "text/plain", "Transfer-Encoding": "chunked"}))
        await _chunked(writer, stats, BIG)
        return True
    if kind == "gzip":  # a small body that inflates to BIG bytes
        writer.write(
            _head(
                int(arg) if arg != "-" else 200,
                {
                    "Content-Type": "application/json",
                    "Content-Encoding": "gzip",
                    "Content-Length": str(len(_GZIP_BOMB)),
                },
            )
            + _GZIP_BOMB
        )
        return True
    if kind == "huge-length":  # claims 2 GB, sends BIG bytes, then hangs up
        writer.write(
            _head(200, {"Content-Type": "application/json", "Content-Length": "2000000000"})
        )
        await _stream(writer, stats, BIG)
        return False
    if kind == "sized":  # arg "STATUS:SIZE:length|chunked": a body of exactly SIZE bytes,
        # a valid answer padded with spaces for a 200, else plain text, with its length
        # announced or in one HTTP chunk
        status, size, framing = arg.split(":")
        answer = ok_body() if status == "200" else b""
        body = answer + (b" " if answer else b"x") * (int(size) - len(answer))
        kind_of = "application/json" if answer else "text/plain"
        if framing == "length":
            writer.write(
                _head(int(status), {"Content-Type": kind_of, "Content-Length": str(len(body))})
            )
            writer.write(body)
        else:
            headers = {"Content-Type": kind_of, "Transfer-Encoding": "chunked"}
            writer.write(_head(int(status), headers) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        return True
    if kind == "length-hold":  # a 200 announcing arg bytes, with a request id, then nothing
        head = {
            "Content-Type": "application/json",
            "Content-Length": arg,
            "x-request-id": "req-held",
        }
        writer.write(_head(200, head))
        await _hold(reader)
        return False
    if kind == "retry-after":  # 429 with the header (and value) named by arg: "name=value"
        name, _, value = arg.partition("=")
        writer.write(_json(429, b'{"detail":"slow down"}', {name: value}))
        return True
    if kind == "cutoff":  # the whole upload read, then a 200 whose body is cut short
        writer.write(_head(200, {"Content-Type": "application/json", "Content-Length": "1000"}))
        writer.write(b'{"created": "2026')
        await writer.drain()
        return False
    if kind == "reset":  # the whole upload read, then a reset
        _reset(writer)
        return False
    if kind == "silent":  # the whole upload read, then nothing
        await _hold(reader)
        return False
    if kind == "json-key":  # the key echoed JSON-escaped: arg "u" (\uXXXX) or "slash" (\/),
        # in a 400, or with "-200" in a 200 that is not the documented shape
        escape, _, status = arg.partition("-")
        key = request.key
        escaped = _escape_all(key) if escape == "u" else key.replace("/", "\\/")
        body = f'{{"detail": "invalid key {escaped}"}}'.encode()
        writer.write(_json(int(status or 400), body))
        return True
    if kind == "request-id-key":  # a 400 whose request id echoes the key
        writer.write(_json(400, b'{"detail": "nope"}', {"x-request-id": f"req-{request.key}"}))
        return True
    if kind == "big-headers":  # one response header far over any sane size
        writer.write(_json(200, ok_body(), {"X-Padding": "a" * 256 * 1024}))
        return False
    if kind == "nested":  # "[" x 200,000 with the status in arg
        writer.write(_json(int(arg), b"[" * 200_000))
        return True
    # downloads
    if kind == "html-hold":  # an HTML page that starts, then never ends
        writer.write(_head(200, {"Content-Type": "text/html", "Content-Length": str(BIG)}))
        await _stream(writer, stats, 4 * 1024 * 1024, b"<!doctype html><html>")
        await _hold(reader)
        return False
    if kind == "png-hold":  # a PNG signature, arg MB of data, then nothing more
        writer.write(_head(200, {"Content-Type": "image/png", "Transfer-Encoding": "identity"}))
        await _stream(writer, stats, int(arg) * 1024 * 1024, PNG_SIGNATURE)
        await _hold(reader)
        return False
    if kind == "png":  # a small body with a PNG signature
        writer.write(_head(200, {"Content-Type": "image/png", "Content-Length": "1024"}))
        writer.write(PNG_SIGNATURE + b"\0" * (1024 - len(PNG_SIGNATURE)))
        return True
    if kind == "png-length":  # a PNG that claims to be 2 GB
        writer.write(_head(200, {"Content-Type": "image/png", "Content-Length": "2000000000"}))
        await _stream(writer, stats, BIG, PNG_SIGNATURE)
        return False
    if kind in ("close-delimited", "cut-once"):  # arg "FORMAT:DROP": an HTTP/1.0 image
        # without Content-Length, ended by closing the connection, its last DROP bytes
        # left out (every time, or for "cut-once" on the first request only)
        fmt, _, drop = arg.partition(":")
        image = image_of(fmt)
        if kind == "close-delimited" or stats["requests"] == 1:
            image = image[: len(image) - int(drop)]
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: image/" + fmt.encode() + b"\r\n\r\n")
        writer.write(image)
        writer.close()  # a FIN once all is sent: the end of the body
        await writer.wait_closed()
        return False
    if kind == "gzip-image":  # arg "FORMAT": a gzip-encoded image, with its encoded length
        body = gzip.compress(image_of(arg))
        head = {"Content-Type": f"image/{arg}", "Content-Encoding": "gzip"}
        writer.write(_head(200, {**head, "Content-Length": str(len(body))}) + body)
        return True
    if kind == "redirect":  # arg: "file" (to file://), "loop" (to itself)
        target = "file:///etc/passwd" if arg == "file" else request.path
        writer.write(_head(302, {"Location": target, "Content-Length": "0"}))
        return True
    writer.write(_json(404, b'{"detail": "unknown scenario"}'))
    return True


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (request := await _read_head(reader)) is not None:
            keep = await _serve(reader, writer, request)
            await writer.drain()
            if not keep:
                break
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.transport.abort()


async def _main() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, limit=1024 * 1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    # Serve until the test process closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(_main())
