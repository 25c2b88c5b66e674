"""The emulator's command line (``python -m ideogram_async.testing``), run in-process.

:func:`serve_main` is run with a stand-in for :func:`run_server` that probes the emulator
it was given over a real socket; :func:`run_server` itself runs here too, stopped by a
real signal sent to this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

import aiohttp
import pytest

from ideogram_async.testing import Emulator, FaultPlan, _serve, free_port, run_server, serve_main
from ideogram_async.testing._serve import _parser

from ._support import sleep_noting

FAKE_PNG = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4

Probe = Callable[[Emulator, aiohttp.ClientSession], Awaitable[None]]


def form(fields: dict[str, Any] | None = None) -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append(json.dumps(fields or {})).set_content_disposition(
        "form-data", name="image_request"
    )
    part = writer.append(FAKE_PNG, {"Content-Type": "image/png"})
    part.set_content_disposition("form-data", name="image_file", filename="p.png")
    return writer


async def upscale(
    session: aiohttp.ClientSession, emu: Emulator, key: str = "test-key", **fields: Any
) -> tuple[int, Any]:
    async with session.post(
        f"{emu.base_url}/ideogram/upscale",
        data=form(fields),
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text or None


def serve_with(monkeypatch: pytest.MonkeyPatch, argv: list[str], probe: Probe) -> int:
    """Run ``serve_main(argv)``, with ``probe`` run against its emulator instead of serving
    until a signal."""
    served: list[Emulator] = []

    async def probing(emulator: Emulator) -> None:
        served.append(emulator)
        async with emulator, aiohttp.ClientSession() as session:
            await probe(emulator, session)

    monkeypatch.setattr(_serve, "run_server", probing)
    status = serve_main(argv, prog="emu")
    assert len(served) == 1
    return status


@pytest.fixture
def quiet_requests_log() -> Iterator[logging.Logger]:
    """The emulator's request log, put back as it was after the test."""
    requests = logging.getLogger("ideogram_async.testing")
    handlers, level = list(requests.handlers), requests.level
    yield requests
    requests.handlers[:] = handlers
    requests.setLevel(level)


# -- the options -----------------------------------------------------------------------------


def test_the_defaults() -> None:
    args = _parser("emu").parse_args([])
    assert vars(args) == {
        "host": "127.0.0.1",
        "port": 8000,
        "api_key": "test-key",
        "latency": 0.0,
        "fault_rate": 0.0,
        "allowance": None,
        "allowance_body": "full",
        "seed": 0,
        "generation_delay": 0.0,
        "upscale": True,
        "verbose": False,
    }


@pytest.mark.parametrize(
    ("option", "text", "value"),
    [
        ("latency", "0", 0.0),
        ("latency", "1.5", 1.5),
        ("latency", "0,0", (0.0, 0.0)),
        ("latency", "0.5,0.5", (0.5, 0.5)),
        ("latency", "0,2", (0.0, 2.0)),
        ("fault-rate", "0", 0.0),
        ("fault-rate", "1", 1.0),
        ("generation-delay", "0", 0.0),
        ("generation-delay", "2.5", 2.5),
        ("allowance", "1", 1),
        ("allowance-body", "empty", "empty"),
        ("seed", "7", 7),
        ("host", "::1", "::1"),
        ("api-key", "k2", "k2"),
    ],
    ids=str,
)
def test_good_values(option: str, text: str, value: object) -> None:
    args = _parser("emu").parse_args([f"--{option}", text])
    assert getattr(args, option.replace("-", "_")) == value


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("latency", "-0.1", "expected SECONDS or MIN,MAX (seconds >= 0), got '-0.1'"),
        ("latency", "1,0.5", "expected SECONDS or MIN,MAX (seconds >= 0), got '1,0.5'"),
        ("latency", "-1,2", "expected SECONDS or MIN,MAX (seconds >= 0), got '-1,2'"),
        ("latency", "1,2,3", "expected SECONDS or MIN,MAX (seconds >= 0), got '1,2,3'"),
        ("latency", "x", "expected SECONDS or MIN,MAX (seconds >= 0), got 'x'"),
        ("fault-rate", "-0.01", "expected a probability from 0 to 1, got '-0.01'"),
        ("fault-rate", "1.01", "expected a probability from 0 to 1, got '1.01'"),
        ("fault-rate", "x", "expected a probability from 0 to 1, got 'x'"),
        ("generation-delay", "-0.1", "expected seconds >= 0, got '-0.1'"),
        ("generation-delay", "inf", "expected seconds >= 0, got 'inf'"),
        ("generation-delay", "nan", "expected seconds >= 0, got 'nan'"),
        ("generation-delay", "x", "expected seconds >= 0, got 'x'"),
        ("allowance", "0", "expected a whole number of images >= 1, got '0'"),
        ("allowance", "1.5", "expected a whole number of images >= 1, got '1.5'"),
        ("allowance-body", "none", "invalid choice: 'none'"),
    ],
    ids=str,
)
def test_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], option: str, text: str, message: str
) -> None:
    assert serve_main([f"--{option}={text}"], prog="emu") == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: emu ")
    assert f"emu: error: argument --{option}: {message}" in err


def test_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--help"], prog="serve-it") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: serve-it ")
    for line in [
        "[-v] Run a local emulator of the Ideogram upscale service. options: -h, --help",
        "--host HOST address to listen on [127.0.0.1]",
        "--port PORT port to listen on, 0 for any free one [8000]",
        "--api-key API_KEY the key clients must send [test-key]",
        "--latency S|MIN,MAX delay of each answer in seconds, fixed or a random range [0.0]",
        "--fault-rate R probability of a random fault (503, 500, 429, dropped connection, "
        "HTML 502) per upscale request [0.0]",
        "--allowance N images in flight allowed at once, as the service enforces per "
        "organization: a request holds num_images places; over it, a 429 inflight_limit "
        "[no limit]",
        "--allowance-body {full,no-number,empty} what that 429 carries: the service's body, "
        "the body without max_inflight_requests, or nothing (as proxies may) [full]",
        "--seed SEED seed of latencies and faults [0]",
        "--generation-delay S seconds until a v2 background generation completes [0.0]",
        "--no-upscale skip decoding and answer with a fixed tiny PNG (fast, no Pillow needed)",
        "-v, --verbose log each request received (address, request line, status, size, "
        "time) to stderr",
    ]:
        assert line in text


def test_the_commands_own_name_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m ideogram_async.testing [-h]")
    assert serve_main(["--port", "x"]) == 2
    assert "\npython -m ideogram_async.testing: error: argument --port" in capsys.readouterr().err


def test_serve_main_listens_on_the_host_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    async def probe(emu: Emulator, session: aiohttp.ClientSession) -> None:
        assert emu.base_url.startswith("http://[::1]:")
        assert (await upscale(session, emu))[0] == 200

    assert serve_with(monkeypatch, ["--host", "::1", "--port", "0", "--no-upscale"], probe) == 0


# -- serve_main: the emulator it serves ------------------------------------------------------


def test_serve_main_serves_an_emulator_as_its_options_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()

    async def probe(emu: Emulator, session: aiohttp.ClientSession) -> None:
        assert emu.base_url == f"http://127.0.0.1:{port}"
        assert emu.api_key == "k2"
        assert (await upscale(session, emu, key="test-key"))[0] == 401
        status, body = await upscale(session, emu, key="k2")  # a fake PNG: not decoded
        assert (status, body["data"][0]["resolution"]) == (200, "2x2")
        async with Emulator(upscale=False, seed=5) as same_seed:
            _, expected = await upscale(session, same_seed)
        assert body["data"][0]["seed"] == expected["data"][0]["seed"]
        # Places: one request held, the next one refused with the body asked for.
        emu.pause()
        held = asyncio.create_task(upscale(session, emu, key="k2", num_images=2))
        await emu.wait_places(2)
        assert await upscale(session, emu, key="k2") == (429, None)
        emu.resume()
        assert (await held)[0] == 200
        assert not emu.stats.faults_injected
        async with session.post(
            f"{emu.base_url}/v2/image/upscale/auto?dry_run=false",
            data=_v2_form(),
            headers={"Api-Key": "k2", "Accept": "application/json"},
        ) as resp:
            generation_id = (await resp.json())["generation_id"]
        async with session.get(
            f"{emu.base_url}/v2/generations/{generation_id}", headers={"Api-Key": "k2"}
        ) as resp:
            assert (await resp.json())["status"] == "pending"  # 60 s to go

    argv = [
        "--port",
        str(port),
        "--api-key",
        "k2",
        "--no-upscale",
        "--seed",
        "5",
        "--allowance",
        "2",
        "--allowance-body",
        "empty",
        "--generation-delay",
        "60",
    ]
    assert serve_with(monkeypatch, argv, probe) == 0


def _v2_form() -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append("true").set_content_disposition("form-data", name="async")
    header = FAKE_PNG[:8] + struct.pack(">I4sii", 13, b"IHDR", 8, 6) + bytes(9)
    part = writer.append(header)
    part.set_content_disposition("form-data", name="image", filename="p.png")
    return writer


def test_serve_main_injects_faults_and_latency_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paused: list[float] = []
    recording_sleep = sleep_noting(paused)

    async def probe(emu: Emulator, session: aiohttp.ClientSession) -> None:
        for _ in range(3):
            # A dropped connection is one of the faults drawn.
            with contextlib.suppress(aiohttp.ClientConnectionError):
                await upscale(session, emu)
        assert sum(emu.stats.faults_injected.values()) == 3
        monkeypatch.setattr(asyncio, "sleep", recording_sleep)
        await upscale(session, emu)

    assert serve_with(monkeypatch, ["--port", "0", "--no-upscale", "--fault-rate", "1"], probe) == 0

    # --seed seeds the faults: the same run as a FaultPlan with that rate and seed.
    plan = FaultPlan(rate=0.5, seed=3)
    expected = [plan.next_fault() for _ in range(8)]
    outcomes: list[int | str] = []

    async def seeded(emu: Emulator, session: aiohttp.ClientSession) -> None:
        for _ in range(8):
            try:
                outcomes.append((await upscale(session, emu))[0])
            except aiohttp.ClientConnectionError:
                outcomes.append("dropped")

    argv = ["--port", "0", "--no-upscale", "--fault-rate", "0.5", "--seed", "3"]
    assert serve_with(monkeypatch, argv, seeded) == 0
    assert outcomes == [
        200 if fault is None else "dropped" if fault.kind == "drop" else fault.code
        for fault in expected
    ]
    assert len(set(outcomes)) > 2

    async def latency(emu: Emulator, session: aiohttp.ClientSession) -> None:
        monkeypatch.setattr(asyncio, "sleep", recording_sleep)
        assert (await upscale(session, emu))[0] == 200
        assert not emu.stats.faults_injected

    paused.clear()
    assert (
        serve_with(monkeypatch, ["--port", "0", "--no-upscale", "--latency", "0.02"], latency) == 0
    )
    assert paused == [0.02]


def test_verbose_logs_each_request_to_stderr(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    quiet_requests_log: logging.Logger,
) -> None:
    async def probe(emu: Emulator, session: aiohttp.ClientSession) -> None:
        await upscale(session, emu, key="nope")

    assert serve_with(monkeypatch, ["--port", "0", "--no-upscale"], probe) == 0
    assert capsys.readouterr().err == ""
    assert serve_with(monkeypatch, ["--port", "0", "--no-upscale", "--verbose"], probe) == 0
    assert quiet_requests_log.level == logging.INFO
    (line,) = capsys.readouterr().err.splitlines()
    date, time, address, rest = line.split(" ", 3)
    assert (len(date), len(time), address) == (10, 12, "127.0.0.1")
    assert rest.startswith('"POST /ideogram/upscale HTTP/1.1" 401 ')
    assert "nope" not in line


def test_serve_main_says_why_it_cannot_serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket_in_use() as port:
        assert serve_main(["--port", str(port), "--no-upscale"], prog="emu") == 1
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ")
    assert "address already in use" in err.lower()
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert serve_main(["--port", "0"], prog="emu") == 1
    assert "emu: error: " in capsys.readouterr().err


def test_ctrl_c_is_a_clean_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted(emu: Emulator, session: aiohttp.ClientSession) -> None:
        raise KeyboardInterrupt

    assert serve_with(monkeypatch, ["--port", "0", "--no-upscale"], interrupted) == 0


@contextmanager
def socket_in_use() -> Iterator[int]:
    """A port something listens on, for the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- run_server ------------------------------------------------------------------------------


class _Lines(io.StringIO):
    """Standard output that tells a waiting task when something was written, and whether
    it was flushed (through a pipe, unflushed text would not reach the reader)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()
        self.flushed = ""

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)

    def flush(self) -> None:
        self.flushed = self.getvalue()


async def started(server: asyncio.Task[None], out: _Lines) -> None:
    """Wait until ``server`` printed its banner (or ended: then its error is raised)."""
    written = asyncio.create_task(out.written.wait())
    async with asyncio.timeout(10):
        await asyncio.wait([server, written], return_when=asyncio.FIRST_COMPLETED)
    written.cancel()
    if server.done():
        server.result()
    assert out.flushed == out.getvalue()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_server_serves_until_a_signal(signum: signal.Signals) -> None:
    emulator = Emulator("my key", upscale=False)
    out = _Lines()
    with redirect_stdout(out):
        server = asyncio.create_task(run_server(emulator))
        await started(server, out)
    url = emulator.base_url
    assert out.getvalue() == (
        f"Ideogram emulator listening on {url}\n"
        "It accepts the API key 'my key'. Point a client at it (Ctrl-C stops it):\n"
        f"  export IDEOGRAM_BASE_URL={url} IDEOGRAM_API_KEY='my key'\n"
        "  command line: IDEOGRAM_API_KEY='my key' ideogram-async upscale photo.png "
        f"--out upscaled --base-url {url}\n"
        f"  library:      IdeogramClient(base_url={url!r}, api_key='my key')\n"
    )
    async with aiohttp.ClientSession() as session:
        assert (await upscale(session, emulator, key="my key"))[0] == 200
        # The loop has the signals: sending one stops the server, not this process.
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) != signal.default_int_handler
        os.kill(os.getpid(), signum)
        async with asyncio.timeout(10):
            await server
        with pytest.raises(aiohttp.ClientConnectionError):
            await upscale(session, emulator, key="my key")
    # The signals are the process's own again.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_run_server_outside_the_main_thread_runs_without_signal_handlers() -> None:
    emulator = Emulator(upscale=False)
    failures: list[BaseException] = []

    async def serve_then_cancel() -> None:
        out = _Lines()
        with redirect_stdout(out):
            server = asyncio.create_task(run_server(emulator))
            await started(server, out)
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server

    def serve() -> None:
        try:
            asyncio.run(serve_then_cancel())
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(30)
    assert not failures


async def test_run_server_on_a_loop_without_signal_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unsupported(*args: object) -> None:
        raise NotImplementedError  # as on Windows

    monkeypatch.setattr(asyncio.get_running_loop(), "add_signal_handler", unsupported)
    emulator = Emulator(upscale=False)
    out = _Lines()
    with redirect_stdout(out):
        server = asyncio.create_task(run_server(emulator))
        await started(server, out)
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
