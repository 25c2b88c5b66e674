"""The emulator's helpers of ``ideogram_async.testing``: the result store, its images, the
counting allowance and the ``redis-server`` starter, each used directly."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from ideogram_async.limits import LocalAllowance
from ideogram_async.testing import CountingAllowance, RedisServer, free_port
from ideogram_async.testing._images import require_pillow, solid_png, upscale_2x
from ideogram_async.testing._store import ImageStore

# -- the result store ------------------------------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_image_is_served_until_its_ttl_has_passed() -> None:
    clock = Clock()
    store = ImageStore(10.0, clock)
    token = store.put(b"first")
    clock.now += 5
    second = store.put(b"second")
    assert (store.get(token), store.get(second)) == (b"first", b"second")
    clock.now += 4.999
    assert store.get(token) == b"first"
    clock.now += 0.001  # exactly ttl after the put: gone
    assert (store.get(token), store.get(second)) == ("expired", b"second")
    clock.now += 5
    assert store.get(second) == "expired"


def test_tokens_are_a_hex_serial_and_16_random_hex_digits() -> None:
    store = ImageStore(10.0, Clock())
    tokens = [store.put(b"x") for _ in range(18)]
    for serial, token in enumerate(tokens):
        assert re.fullmatch(rf"{serial:x}-[0-9a-f]{{16}}", token)
    assert len({token.partition("-")[2] for token in tokens}) == 18


def test_a_token_of_an_issued_serial_is_expired_and_any_other_is_missing() -> None:
    clock = Clock()
    store = ImageStore(1.0, clock)
    tokens = [store.put(b"x") for _ in range(17)]  # serials 0 to 0x10
    clock.now += 1
    assert {store.get(token) for token in tokens} == {"expired"}
    random = "0123456789abcdef"
    assert store.get(f"10-{random}") == "expired"  # serial 16, issued (not this random part)
    assert store.get(f"11-{random}") == "missing"  # serial 17, not issued yet
    assert store.get(f"0-{random}") == "expired"
    for never in (
        "unknown",
        f"-{random}",
        f"0{random}",
        f"0-{random[:15]}",
        f"0-{random}0",
        f"0-{random.upper()}",
        f"0-1-{random}",
        f"g-{random}",
    ):
        assert store.get(never) == "missing", never


def test_nothing_is_issued_before_the_first_put() -> None:
    store = ImageStore(1.0, Clock())
    assert store.get("0-0123456789abcdef") == "missing"
    token = store.put(b"x")
    assert store.get(token) == b"x"
    assert store.get("1-0123456789abcdef") == "missing"


# -- images ----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "rgb"), [((2, 2), (128, 128, 128)), ((5, 3), (1, 2, 250))])
def test_solid_png_is_a_valid_png_of_one_colour(
    size: tuple[int, int], rgb: tuple[int, int, int]
) -> None:
    data = solid_png(*size, rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR")
    # 8-bit RGB, deflate, the adaptive filters, not interlaced (strict decoders check all).
    assert struct.unpack(">IIBBBBB", data[16:29]) == (*size, 8, 2, 0, 0, 0)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # chunk CRCs and the IEND
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", size)
        assert image.info.get("interlace", 0) == 0
        assert set(image.get_flattened_data()) == {rgb}


def test_solid_png_defaults_to_grey_and_ends_with_the_standard_iend() -> None:
    data = solid_png(1, 1)
    with Image.open(io.BytesIO(data)) as image:
        assert image.getpixel((0, 0)) == (128, 128, 128)
    assert data.endswith(b"\x00\x00\x00\x00IEND\xae\x42\x60\x82")


def encoded(mode: str, fmt: str = "PNG") -> bytes:
    """A 3x2 image in ``mode`` with differing pixels, encoded as ``fmt``."""
    image = Image.new("RGB", (3, 2))
    image.putdata([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (9, 9, 9)])
    out = io.BytesIO()
    image.convert(mode).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt", "result"),
    [
        ("1", "PNG", "1"),
        ("L", "PNG", "L"),
        ("LA", "PNG", "LA"),
        ("P", "PNG", "P"),
        ("RGB", "PNG", "RGB"),
        ("RGBA", "PNG", "RGBA"),
        ("CMYK", "JPEG", "RGB"),
        ("PA", "TIFF", "RGBA"),
    ],
)
def test_upscale_keeps_the_modes_png_stores_and_converts_the_others(
    mode: str, fmt: str, result: str
) -> None:
    data, width, height = upscale_2x(encoded(mode, fmt))
    assert (width, height) == (6, 4)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", result, (6, 4))


def test_upscale_resamples_with_lanczos_and_encodes_at_the_fastest_level() -> None:
    source = Image.new("RGB", (7, 5))
    source.putdata(
        [((x * 37) % 256, (y * 91) % 256, (x * y * 13) % 256) for y in range(5) for x in range(7)]
    )
    out = io.BytesIO()
    source.save(out, format="PNG")
    data, width, height = upscale_2x(out.getvalue())
    assert (width, height) == (14, 10)
    with Image.open(io.BytesIO(data)) as image:
        expected = source.resize((14, 10), Image.Resampling.LANCZOS)
        assert list(image.get_flattened_data()) == list(expected.get_flattened_data())
    # The zlib stream of the first IDAT chunk: FLEVEL (bits 6-7 of its 2nd byte) is 0,
    # "fastest", for compress level 1 only.
    start = data.index(b"IDAT") + 4
    cmf, flg = data[start], data[start + 1]
    assert (cmf * 256 + flg) % 31 == 0
    assert flg >> 6 == 0
    assert zlib.decompress(data[start : data.index(b"IEND") - 8])


def test_require_pillow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    require_pillow()  # installed: nothing happens
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'ideogram-async[emulator]'")):
        require_pillow()


# -- the counting allowance ------------------------------------------------------------


async def test_counting_allowance_counts_and_passes_everything_on() -> None:
    counting = CountingAllowance(LocalAllowance(10, adaptive=False))
    assert (counting.asked, counting.rejections, counting.completions) == (0, [], 0)
    async with counting.hold(3):
        assert counting.in_use == 3
        async with counting.hold(2):
            assert counting.in_use == 5
    assert (counting.asked, counting.in_use) == (2, 0)
    await counting.completed()
    await counting.completed()
    assert counting.completions == 2
    await counting.rejected(None)
    await counting.rejected(4)
    assert counting.rejections == [None, 4]
    assert counting.limit == 4  # the wrapped allowance took the number the 429 named


async def test_until_returns_once_the_counts_reach_the_condition() -> None:
    counting = CountingAllowance(LocalAllowance(10))

    async def report() -> None:
        await counting.completed()
        await counting.rejected(7)
        await counting.completed()

    async with asyncio.timeout(10):
        task = asyncio.create_task(report())
        await counting.until(lambda: counting.completions == 2)
        assert (counting.completions, counting.rejections) == (2, [7])
        await task
        await counting.until(lambda: True)  # already true: returns at once


# -- the redis-server starter ----------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def redis_installed() -> None:
    if not RedisServer.installed():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def test_free_port_is_a_port_nothing_listens_on() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        other = free_port()
        assert other != held.getsockname()[1]
        assert not _listening(other)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", other))


@pytest.mark.usefixtures("redis_installed")
def test_a_server_runs_on_its_port_in_a_folder_and_session_of_its_own(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with RedisServer() as server, RedisServer() as second:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.port != second.port
        assert _listening(server.port)
        assert _listening(second.port)
        folder = Path(os.readlink(f"/proc/{server.pid}/cwd"))
        assert folder.name.startswith("ideogram-redis-")
        assert folder.is_dir()
        # A Ctrl-C for the tests' process group does not reach it.
        assert os.getsid(server.pid) == server.pid != os.getsid(0)
    assert not folder.exists()
    assert not _listening(server.port)
    assert capfd.readouterr() == ("", "")  # the server's log goes nowhere


@pytest.mark.usefixtures("redis_installed")
def test_a_server_in_a_given_folder_leaves_the_folder(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        assert Path(os.readlink(f"/proc/{server.pid}/cwd")) == tmp_path
    assert tmp_path.is_dir()


def _put_and_count(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"SET k v\r\nDBSIZE\r\n")
        reply = b""
        while reply.count(b"\r\n") < 2:
            reply += sock.recv(64)
        return reply


@pytest.mark.usefixtures("redis_installed")
def test_flush_empties_and_stop_then_start_restarts_without_the_keys(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        assert _put_and_count(server.port) == b"+OK\r\n:1\r\n"
        server.flush()
        assert _put_and_count(server.port) == b"+OK\r\n:1\r\n"  # k was gone: one key again
        first = server.pid
        server.stop()
        assert not _listening(server.port)
        with pytest.raises(RuntimeError, match=re.escape("call start() first")):
            server.pid  # noqa: B018
        with pytest.raises(RuntimeError, match=f"FLUSHALL failed .* port {server.port}"):
            server.flush()
        server.stop()  # stopping a stopped server is harmless
        server.start()
        assert server.pid != first
        assert _put_and_count(server.port) == b"+OK\r\n:1\r\n"


@pytest.mark.usefixtures("redis_installed")
def test_pid_before_start_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with pytest.raises(RuntimeError, match=re.escape("not running; call start() first")):
        server.pid  # noqa: B018
    server.stop()  # nothing to stop


@pytest.mark.usefixtures("redis_installed")
def test_flush_against_a_silent_listener_fails_instead_of_hanging(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = RedisServer(tmp_path)
        server.port = silent.getsockname()[1]
        with pytest.raises(RuntimeError, match="FLUSHALL failed"):
            server.flush()


@pytest.mark.usefixtures("redis_installed")
def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.port = 70000
    with pytest.raises(
        RuntimeError, match=r"(?s)redis-server exited with 1: \*\*\* FATAL CONFIG .* 0 and 65535"
    ):
        server.start()
    with pytest.raises(RuntimeError, match="call start"):
        server.pid  # noqa: B018


def test_installed_looks_for_redis_server_on_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    executable = tmp_path / "redis-server"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert RedisServer.installed()
    executable.unlink()
    assert not RedisServer.installed()


def test_without_redis_server_installed_the_error_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    needs = "redis-server is not installed (apt-get install redis-server)"
    with pytest.raises(RuntimeError, match=rf"^{re.escape(needs)}$"):
        RedisServer()


@pytest.mark.usefixtures("redis_installed")
def test_cpu_counts_the_user_and_system_seconds_the_server_used() -> None:
    with RedisServer() as server:
        clock = ((~server.pid) << 3) | 2  # Linux: the CPU-time clock of process server.pid
        before = server.cpu()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            loop = b'EVAL "local x = 0 for i = 1, 20000000 do x = x + i end return x" 0\r\n'
            sock.sendall(loop)  # user time
            assert sock.recv(64).startswith(b":")
            for _ in range(4000):  # system time: a read and a write per round trip
                sock.sendall(b"PING\r\n")
                assert sock.recv(64) == b"+PONG\r\n"
        spent = server.cpu()
        exact = time.clock_gettime(clock)
    assert spent - before >= 0.05
    # /proc counts whole ticks of each: up to two ticks short of the exact clock.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert exact - 2.5 * tick <= spent <= exact + tick


def test_a_server_that_never_answers_is_killed_and_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A stand-in for a hung redis-server: it never listens and ignores SIGTERM.
    stand_in = tmp_path / "bin" / "redis-server"
    stand_in.parent.mkdir()
    stand_in.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\ntrap '' TERM\nexec sleep 120\n")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    server = RedisServer(tmp_path)
    with pytest.raises(RuntimeError, match=re.escape("redis-server did not answer within 10.0s")):
        server.start()  # waits 10 s for an answer, then 10 s for SIGTERM, then kills
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped
    with pytest.raises(RuntimeError, match="call start"):
        server.pid  # noqa: B018
