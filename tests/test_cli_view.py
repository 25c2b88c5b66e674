"""What the operator sees of a command-line run: a status line that fits, -v, the summary.

The display is checked on a real pseudo-terminal (80x24) running the real command;
the bounds of a run against a service that never answers and the refusals against
the emulator's own count run the command in-process (``run_main``), or in a subprocess
where a signal needs one. Each part (the status line, the summary's text and JSON, the
plain lines, -v's lines) is also checked on its own for its exact text at given counts,
widths and times.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import locale
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from ideogram_async import (
    APIStatusError,
    BatchResult,
    LocalAllowance,
    LocalBudget,
    RateLimitError,
    RetryEvent,
    ValidationError,
)
from ideogram_async.cli import _progress, main
from ideogram_async.cli._commands import _shared_at
from ideogram_async.cli._inputs import Source
from ideogram_async.cli._live import Field, RichReporter, fit, print_table, status_fields
from ideogram_async.cli._manifest import Outcome
from ideogram_async.cli._parser import build_parser
from ideogram_async.cli._progress import AttemptLog, PlainReporter, SilentReporter, Tally
from ideogram_async.cli._refusals import WatchedAllowance
from ideogram_async.cli._summary import (
    AllowanceReport,
    Failure,
    SharedAt,
    Summary,
    render,
    to_json,
    write_json,
)
from ideogram_async.testing import Emulator, Fault, FaultPlan, RedisServer

from .test_cli import (
    FINISHED,
    KEY,
    Run,
    assert_clean,
    cli_env,
    finish,
    run_main,
    save_image,
    start_cli,
    upscale_args,
)
from .test_cli_manifest import line_with

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][AB0-9])")
REQUIRED = (
    re.compile(r"\b\d+/\d+\b(?! places)"),
    re.compile(r"\b\d+ failed\b"),
    re.compile(r"\b\d+ in flight\b"),
    re.compile(r"(\d+\.\d|--) img/s\b"),
    re.compile(r"\bETA (\d+:\d\d:\d\d|--:--)"),
)
"""What the status line shows at 80 columns, each field whole."""


def busy_tally() -> Tally:
    """A tally in the middle of a long run, with wide numbers."""
    tally = Tally(total=12000, ok=5321, failed=17, in_flight=10, downloading=7, retries=123)
    tally.started -= 3600.0
    tally.allowance = LocalAllowance(10)
    return tally


def shown(tally: Tally, width: int) -> list[str]:
    return [line.plain for line in RichReporter(tally).status.lines(width)]


@pytest.mark.parametrize("width", [40, 60, 80, 100, 120, 160])
def test_every_line_fits_and_no_field_is_cut(width: int) -> None:
    tally = busy_tally()
    tally.calls[0] = time.monotonic() - 42.0  # one call waiting for the service
    lines = shown(tally, width)
    assert all(cell_len(line) <= width for line in lines)
    texts = [field.text for field in status_fields(tally)]
    for part in re.split(r" {2,}", lines[0]):
        if not set(part) <= {"━"}:
            assert part in texts  # whole fields only
    assert lines[1] == "1 waiting 42 s for the service"


def test_at_80_columns_the_counts_that_matter_all_show() -> None:
    (line,) = shown(busy_tally(), 80)
    for field in REQUIRED:
        assert field.search(line), line
    assert "5338/12000" in line


def test_a_wait_for_workers_shows_no_calls_or_downloads_it_cannot_see() -> None:
    """enqueue --wait: the upscales are the workers'; only what finished is known here."""
    tally = busy_tally()
    tally.remote = True
    texts = [field.text for field in status_fields(tally)]
    assert texts[:4] == ["Upscaling on workers", "5338/12000", "5321 ok", "17 failed"]
    assert not [text for text in texts if "in flight" in text or "downloading" in text]


def test_columns_drop_as_the_terminal_narrows_and_come_back_as_it_widens() -> None:
    fields = status_fields(busy_tally())
    kept = {width: [f.text for f in fit(fields, width)] for width in range(20, 200)}
    for width in range(21, 200):
        assert set(kept[width - 1]) <= set(kept[width])  # widening only adds
    assert "downloading" not in " ".join(kept[60])
    assert "7 downloading" in kept[120]
    assert "123 retries" in kept[80]  # retries outrank places, downloads, ok, elapsed
    assert "5321 ok" not in kept[80]
    assert len(kept[199]) == len(fields)  # wide enough: everything
    assert all(len(" ".join(texts)) <= width for width, texts in kept.items())
    priorities = {f.text: f.priority for f in fields}
    for width in range(21, 200):
        dropped = [text for text in priorities if text not in kept[width]]
        if dropped and kept[width]:
            # Nothing less important is shown while something more important is left out.
            assert min(priorities[t] for t in dropped) >= max(priorities[t] for t in kept[width])


def test_no_wait_notice_until_a_call_waited_ten_seconds() -> None:
    tally = busy_tally()
    now = time.monotonic()
    tally.calls.update({0: now - 9.0, 1: now - 1.0})
    assert tally.waiting(now) == (0, 0.0)
    assert len(shown(tally, 80)) == 1
    tally.calls.update({2: now - 42.2, 3: now - 11.0, 4: now - 30.0})
    count, longest = tally.waiting(now)
    assert count == 3
    assert longest == pytest.approx(42.2)


def pty_run(args: list[str], cwd: Path, columns: int = 80, rows: int = 24) -> tuple[int, str]:
    """Run the command on a pseudo-terminal of ``columns`` x ``rows``; its status and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = cli_env() | {"TERM": "xterm-256color", "COLUMNS": "", "LINES": ""}
    env = {name: value for name, value in env.items() if value}
    process = subprocess.Popen(
        [sys.executable, "-m", "ideogram_async", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def screen_lines(output: str) -> list[str]:
    """What the terminal showed, line by line: escapes dropped, each redraw a line of its own."""
    return [part for part in re.split(r"[\r\n]", ANSI.sub("", output)) if part.strip()]


def test_demo_on_an_80x24_terminal_shows_every_field_whole(tmp_path: Path) -> None:
    status, output = pty_run(["demo", "--count", "12", "--out", str(tmp_path / "demo")], tmp_path)
    assert status == 0, output
    drawn = [line for line in screen_lines(output) if " in flight" in line]
    assert drawn, output
    assert all(cell_len(line) <= 80 for line in drawn), [ln for ln in drawn if cell_len(ln) > 80]
    for line in drawn:
        for field in REQUIRED:
            assert field.search(line), line
    assert any("12/12" in line and "0 in flight" in line for line in drawn)
    assert "…" not in "".join(drawn)
    assert "Done: 12 of 12 image(s) upscaled" in output


async def never_answering_server() -> tuple[asyncio.Server, list[int]]:
    """A server that accepts every connection, reads what comes, and never answers."""
    connections: list[int] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, connections


async def hung_run(tmp_path: Path, count: int, *bounds: str) -> tuple[Run, dict[str, Any], int]:
    """Upscale ``count`` images with ``-v`` against a service that never answers."""
    folder = tmp_path / f"in-{count}"
    for number in range(count):
        save_image(folder / f"img-{number}.png", (8, 6), shade=number)
    summary = tmp_path / f"summary-{count}.json"
    server, connections = await never_answering_server()
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        args = ["upscale", str(folder), "--out", str(tmp_path / "out"), "--base-url", url]
        run = await run_main(*args, *bounds, "-v", "--json", str(summary))
    assert run.returncode == 1, run.stderr
    assert_clean(run)
    return run, json.loads(summary.read_text()), len(connections)


def attempt_lines(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{name}: attempt ")]


async def test_v_names_a_file_whose_name_is_not_utf8_as_the_client_does(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    save_image(Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")), (8, 6))
    async with Emulator(KEY, faults=FaultPlan([Fault.status(503)])) as emulator:
        run = await run_main(*upscale_args(emulator, [folder], tmp_path / "out"), "-v")
    assert run.returncode == 0, run.stderr
    assert_clean(run)
    # -v knows the call by the client's name for it, and shows the byte that is not UTF-8
    # as U+FFFD (the name itself goes out percent-encoded).
    assert [upload.filename for upload in emulator.stats.uploads] == ["caf%E9.png"] * 2
    lines = attempt_lines(run.stderr, "upscale caf\ufffd.png")
    assert [line.split(" after ")[0] for line in lines] == [
        "upscale caf\ufffd.png: attempt 1 failed",
        "upscale caf\ufffd.png: attempt 2 ok",
    ]


async def test_a_service_that_never_answers_ends_the_run_within_the_deadline(
    tmp_path: Path,
) -> None:
    run, result, connections = await hung_run(tmp_path, 2, "--timeout", "0.5", "--deadline", "2")
    assert result["failed"] == 2
    assert result["seconds"] < 2 + 3  # the deadline, plus a few seconds to start and stop
    assert connections >= 4
    for number in range(2):
        lines = attempt_lines(run.stderr, f"upscale img-{number}.png")
        assert len(lines) >= 2, run.stderr  # one line per attempt
        shape = re.compile(
            r"upscale img-\d\.png: attempt (\d+) failed after ([\d.]+)s: "
            r"the request timed out .*after 0\.5s \(--timeout\)"
            r".*; next attempt in [\d.]+s \(backoff with jitter\)$"
        )
        retried = [shape.match(line) for line in lines[:-1]]
        assert all(retried), lines
        assert [int(m[1]) for m in retried if m] == list(range(1, len(lines)))
        assert all(0.4 <= float(m[2]) <= 1.5 for m in retried if m)  # the time really taken
        # The last attempt timed out too, or the deadline cut it short.
        assert re.match(rf"upscale img-\d\.png: attempt {len(lines)} failed after ", lines[-1])
        assert "(--timeout)" in lines[-1] or "raise --deadline" in lines[-1]
        end = re.search(r" for good: .* \(([\d.]+)s in all\)$", lines[-1])
        assert end, lines[-1]
        assert float(end[1]) <= 2.5
    assert "RetryPolicy" not in run.stdout + run.stderr


async def test_a_deadline_that_fires_mid_attempt_names_the_option(tmp_path: Path) -> None:
    run, result, _ = await hung_run(tmp_path, 1, "--deadline", "1")
    assert result["seconds"] < 1 + 3
    (line,) = attempt_lines(run.stderr, "upscale img-0.png")
    assert re.fullmatch(
        r"upscale img-0\.png: attempt 1 failed after [\d.]+s for good: .*the deadline of 1\.0s "
        r"for the whole call passed after 1 attempt\(s\); raise --deadline or lower the load "
        r"\([\d.]+s in all\)",
        line,
    )
    (failure,) = result["failures"]
    assert failure["source"].endswith("img-0.png")
    assert "raise --deadline" in failure["error"]
    assert "RetryPolicy" not in run.stdout + run.stderr


async def test_refusals_in_the_summary_match_the_services_count(tmp_path: Path) -> None:
    for number in range(12):
        save_image(tmp_path / "in" / f"img-{number:02d}.png", (8, 6), shade=number)
    summary = tmp_path / "summary.json"
    plan = FaultPlan(rate=0.2, choices=[Fault.status(429, retry_after=0)], seed=3)
    async with Emulator(KEY, allowance=2, latency=0.05, faults=plan) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--allowance", "6", "--json", str(summary), "-v")
        stats = emulator.stats
    assert run.returncode == 0, run.stderr
    result = json.loads(summary.read_text())
    assert set(result) == {
        "total", "succeeded", "failed", "skipped", "refused", "retries", "seconds", "usd",
        "allowance", "failures",
    }  # fmt: skip
    assert result["succeeded"] == 12
    assert stats.rejected_over_allowance > 0
    assert stats.faults_injected
    refused = result["refused"]
    assert refused["inflight_limit"] == stats.rejected_over_allowance
    assert sum(refused.values()) == stats.responses_by_status[429]
    assert refused["unknown"] == stats.responses_by_status[429] - stats.rejected_over_allowance
    assert result["retries"] >= refused["unknown"]  # a refusal without a reason is retried
    assert result["allowance"] == {"shared": None, "bound": 2}
    text = f"{sum(refused.values())} refused by the service (429: {refused['inflight_limit']} inflight_limit, {refused['unknown']} unknown)"  # noqa: E501
    assert text in run.stdout
    assert "the service named an allowance of 2, the bound settled at 2 image(s)" in run.stdout
    # -v: each retried 429 says the wait came from the service's Retry-After.
    asked = re.findall(
        r"failed after [\d.]+s: HTTP 429: .*\(the service asked for it \(Retry-After\)\)$",
        run.stderr,
        re.M,
    )
    assert len(asked) == refused["unknown"]


def a_summary(**changes: Any) -> Summary:
    values: dict[str, Any] = {"total": 30, "succeeded": 4, "failed": 25, "seconds": 2.0} | changes
    return Summary(**values)


def test_the_summary_lists_twenty_failures_then_counts_the_rest() -> None:
    failures = tuple(Failure(source=f"f{n}.png", error="HTTP 400: no") for n in range(25))
    lines = render(a_summary(failures=failures, skipped=1))
    assert (
        lines[0] == "Done: 4 of 30 image(s) upscaled, 25 failed, 1 skipped in 2.0s (2.0 images/s)."
    )
    listed = [line for line in lines if line.startswith("  f")]
    assert listed == [f"  f{n}.png: HTTP 400: no" for n in range(20)]
    assert lines[-1] == "  ... and 5 more"


def test_the_summary_says_the_allowance_only_as_far_as_it_is_known(tmp_path: Path) -> None:
    local = render(a_summary())
    assert "Allowance: local; the service never named the organization's allowance." in local
    assert "settled" not in " ".join(local)
    shared = SharedAt(host="cache:6380/2", key="org-b")
    report = AllowanceReport(shared=shared, bound=4, reported=4)
    lines = render(a_summary(allowance=report, usd=Decimal("0.12")))
    assert (
        "Allowance: shared through Redis at cache:6380/2, key 'org-b'; the service named an "
        "allowance of 4, the bound settled at 4 image(s) in flight."
    ) in lines
    assert "$0.1200 spent" in lines[1]
    path = tmp_path / "deep" / "summary.json"
    write_json(a_summary(allowance=report), path)
    written = json.loads(path.read_text())
    assert written == to_json(a_summary(allowance=report))
    assert written["allowance"] == {"shared": {"host": "cache:6380/2", "key": "org-b"}, "bound": 4}
    assert written["usd"] is None
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary left


async def test_a_shared_allowance_is_named_in_the_summary(
    redis_server: RedisServer, redis_key: str, tmp_path: Path
) -> None:
    for number in range(4):
        save_image(tmp_path / "in" / f"img-{number}.png", (8, 6), shade=number)
    summary = tmp_path / "summary.json"
    url = redis_server.url.replace("/0", "/6")
    async with Emulator(KEY, allowance=2, latency=0.02) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        args += ["--shared-allowance", url, "--allowance-key", redis_key, "--allowance", "3"]
        run = await run_main(*args, "--json", str(summary))
    assert run.returncode == 0, run.stderr
    where = f"127.0.0.1:{redis_server.port}/6"
    assert f"Allowance: shared through Redis at {where}, key {redis_key!r}" in run.stdout
    shared = json.loads(summary.read_text())["allowance"]["shared"]
    assert shared == {"host": where, "key": redis_key}
    client = aioredis.Redis.from_url(url)
    try:
        used = {k if isinstance(k, str) else k.decode() for k in await client.keys("*")}
    finally:
        await client.aclose()
    assert used
    assert all(key.startswith(f"{{{redis_key}}}") for key in used)  # the key it was given


def test_where_a_shared_allowance_lives_shows_no_password() -> None:
    args = build_parser().parse_args(
        ["upscale", "x", "--shared-allowance", "redis://user:hunter2@cache.example:6390/3"]
    )
    assert _shared_at(args, "org-a") == SharedAt(host="cache.example:6390/3", key="org-a")
    args.shared_allowance = "rediss://:p%40ss@cache.example"
    assert _shared_at(args, "org-b") == SharedAt(host="cache.example:6379/0", key="org-b")


def test_a_bad_option_value_is_one_line_without_the_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["upscale", "x", "--factor", "x3"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "ideogram-async upscale: error: argument --factor: invalid choice: 'x3' "
        "(choose from 'x2', 'x4', 'x8') (see ideogram-async upscale --help)"
    ]


def test_the_help_keeps_each_example_on_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    continued = next(i for i, line in enumerate(lines) if "--model topaz-bloom-2" in line)
    assert lines[continued].endswith("--factor x4 \\")
    assert lines[continued + 1].strip().startswith("--option creativity=5")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quiet", "--progress", "rich"], "--quiet shows no progress"),
        (["--allowance-key", "org-b"], "--allowance-key applies to --shared-allowance"),
        (["--timeout", "0"], "--timeout: expected seconds >= 0.1"),
        (["--deadline", "soon"], "--deadline: expected seconds >= 0.1"),
        (["--progress", "fancy"], "argument --progress: invalid choice: 'fancy'"),
        (["--json", "."], "--json . is a folder"),
        (["--model", "auto", "--dry-run", "--json", "s.json"], "--dry-run prints prices only"),
    ],
)
def test_view_and_bound_options_are_checked_before_anything_is_sent(
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    image = save_image(tmp_path / "a.png", (8, 6))
    args = ["upscale", str(image), "--out", str(tmp_path / "out"), "--base-url", "http://x"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("mode", [["--quiet"], ["--progress", "none"], ["--progress", "plain"]])
async def test_every_mode_ends_with_the_summary(tmp_path: Path, mode: list[str]) -> None:
    for number in range(3):
        save_image(tmp_path / "in" / f"img-{number}.png", (8, 6), shade=number)
    (tmp_path / "in" / "big.png").write_text("not an image")  # fails before it is sent
    async with Emulator(KEY) as emulator:
        run = await run_main(*upscale_args(emulator, [tmp_path / "in"], tmp_path / "out"), *mode)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    plain = [line for line in lines if FINISHED.match(line.encode())]
    assert len(plain) == (4 if mode == ["--progress", "plain"] else 0)
    if plain:  # a failure says how many attempts it took and how long, as a success does
        (failed,) = [line for line in plain if " FAILED " in line]
        assert re.search(r" \(0 attempts, \d+\.\d\ds\)$", failed), failed  # nothing was sent
    head = "Done: 3 of 4 image(s) upscaled, 1 failed in "
    done = next(i for i, line in enumerate(lines) if line.startswith(head))
    assert lines[done + 1].startswith("Requests: 0 request(s) retried; none refused")
    assert lines[done + 2].startswith("Allowance: local")
    assert lines[done + 3] == "Failed:"
    assert lines[done + 4].startswith(f"  {tmp_path / 'in' / 'big.png'}: ")
    assert ("Results:" in run.stdout) is (mode != ["--quiet"])


async def test_plain_lines_say_when_calls_wait_for_the_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tally = Tally(total=3)
    reporter = PlainReporter(tally)
    reporter.start()
    tally.calls[1] = time.monotonic() - 12.0
    reporter._tick()  # what the reporter does every 10 s
    tally.calls.clear()
    reporter._tick()  # nothing waits: nothing to say
    reporter.close()
    assert capsys.readouterr().out == "1 waiting 12 s for the service\n"


async def test_an_unreachable_service_stops_the_run_saying_the_time_it_took(
    tmp_path: Path,
) -> None:
    save_image(tmp_path / "in" / "a.png", (8, 6))
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    args = ["upscale", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--base-url", url]
    run = await run_main(*args, "-v", "--json", str(tmp_path / "summary.json"))
    assert run.returncode == 1, run.stderr
    lines = attempt_lines(run.stderr, "upscale a.png")
    assert [line.split(" failed after ")[0] for line in lines] == [
        f"upscale a.png: attempt {n}" for n in (1, 2, 3)
    ]
    stopped = re.search(
        r"cannot reach the service at \S+ \((.*); (\d+) attempt\(s\) in ([\d.]+)s\)\. Check",
        run.stderr,
    )
    assert stopped, run.stderr
    assert int(stopped[2]) == 3  # RetryPolicy.connect_attempts: a refused port is not retried long
    waited = sum(float(w) for w in re.findall(r"next attempt in ([\d.]+)s", run.stderr))
    assert float(stopped[3]) >= waited - 0.06  # the time it really took, waits included
    assert "within" not in stopped[0]  # no configured timeout passed off as the time taken
    assert run.stderr.count("Check ") == 1  # the advice once


async def test_an_interrupted_run_still_writes_its_summary(tmp_path: Path) -> None:
    for number in range(6):
        save_image(tmp_path / "in" / f"img-{number}.png", (8, 6), shade=number)
    summary = tmp_path / "summary.json"
    async with Emulator(KEY, upscale=False) as emulator:
        emulator.pause()  # every call waits in the service until the run is interrupted
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        process = await start_cli(*args, "--allowance", "2", "--json", str(summary))
        await emulator.wait_in_flight(2)
        process.send_signal(signal.SIGINT)
        await line_with(process, "Stopping:")  # the calls already sent are let finish
        process.send_signal(signal.SIGINT)  # a second interrupt abandons them
        run = await finish(process)
        emulator.resume()
    assert run.returncode == 130, run.stderr
    assert_clean(run)
    assert "Interrupted: 0 of 6 finished" in run.stdout
    assert "Done: 0 of 6 image(s) upscaled, 6 skipped in " in run.stdout
    result = json.loads(summary.read_text())
    assert (result["total"], result["succeeded"], result["skipped"]) == (6, 0, 6)


# The parts of the display, one at a time: exact text for given counts.


def test_a_summary_of_nothing_done_says_so_in_three_lines() -> None:
    summary = Summary(total=3, succeeded=0, failed=0, seconds=0.04)
    assert summary.rate is None
    assert summary.refused_total == 0
    assert render(summary) == [
        "Done: 0 of 3 image(s) upscaled in 0.0s.",
        "Requests: 0 request(s) retried; none refused by the service.",
        "Allowance: local; the service never named the organization's allowance.",
    ]


def test_a_summary_shows_the_refusals_by_reason_and_the_dollars_against_the_budget() -> None:
    summary = a_summary(
        refused={"org_limit": 2, "inflight_limit": 5},
        retries=7,
        usd=Decimal("1234.5"),
        max_usd=Decimal("2000"),
    )
    assert summary.refused_total == 7
    assert render(summary)[1] == (
        "Requests: 7 request(s) retried; 7 refused by the service "
        "(429: 5 inflight_limit, 2 org_limit); $1,234.5000 spent of the $2,000.0000 budget."
    )
    no_budget = render(a_summary(usd=Decimal("0.5")))[1]
    assert no_budget.endswith("; none refused by the service; $0.5000 spent.")


def test_a_summary_rate_needs_images_and_time() -> None:
    assert a_summary(succeeded=3, seconds=1.5).rate == 2.0
    assert a_summary(succeeded=3, seconds=0.0).rate is None
    assert a_summary(succeeded=0, seconds=1.0).rate is None
    assert render(a_summary(succeeded=3, seconds=0.0))[0] == (
        "Done: 3 of 30 image(s) upscaled, 25 failed in 0.0s."
    )


def test_twenty_failures_are_all_listed_and_the_list_can_be_left_out() -> None:
    failures = tuple(Failure(source=f"f{n}.png", error="no") for n in range(20))
    lines = render(a_summary(failures=failures))
    assert lines[3:] == ["Failed:", *(f"  f{n}.png: no" for n in range(20))]
    assert render(a_summary(failures=failures), failures=False) == lines[:3]


@pytest.mark.parametrize(
    ("bound", "reported"), [(None, None), (4, None), (None, 6)], ids=["none", "bound", "named"]
)
def test_the_bound_is_told_only_with_the_allowance_the_service_named(
    bound: int | None, reported: int | None
) -> None:
    summary = a_summary(allowance=AllowanceReport(bound=bound, reported=reported))
    assert render(summary)[2] == (
        "Allowance: local; the service never named the organization's allowance."
    )
    assert to_json(summary)["allowance"] == {"shared": None, "bound": None}


def test_the_json_summary_has_exactly_its_keys_in_order() -> None:
    summary = a_summary(
        skipped=1,
        refused={"z": 1, "a": 2},
        retries=3,
        seconds=1.23456,
        usd=Decimal("0.25"),
        max_usd=Decimal("9"),
        allowance=AllowanceReport(bound=5, reported=8),
        failures=(Failure(source="x.png", error="bad"),),
    )
    written = to_json(summary)
    assert written == {
        "total": 30,
        "succeeded": 4,
        "failed": 25,
        "skipped": 1,
        "refused": {"a": 2, "z": 1},
        "retries": 3,
        "seconds": 1.235,
        "usd": 0.25,
        "allowance": {"shared": None, "bound": 5},
        "failures": [{"source": "x.png", "error": "bad"}],
    }
    assert list(written["refused"]) == ["a", "z"]
    assert render(summary)[2] == (
        "Allowance: local; the service named an allowance of 8, "
        "the bound settled at 5 image(s) in flight."
    )


def test_the_json_file_is_indented_utf8_and_ends_with_a_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = a_summary(failures=(Failure(source="café.png", error="bad"),))
    path = tmp_path / "runs" / "today" / "s.json"
    replace = os.replace
    beside: list[str] = []

    def watched(source: str, target: Path) -> None:
        beside.extend(p.name for p in path.parent.iterdir())
        replace(source, target)

    monkeypatch.setattr(os, "replace", watched)
    write_json(summary, path)
    # Written beside it under a hidden name that no "*.json" matches, then renamed.
    (temporary,) = beside
    assert re.fullmatch(r"\.s\.json\..+\.tmp", temporary), temporary
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]
    expected = json.dumps(to_json(summary), indent=2, ensure_ascii=False) + "\n"
    assert path.read_bytes() == expected.encode("utf-8")
    assert '"source": "café.png"' in path.read_text(encoding="utf-8")


def test_a_json_file_that_cannot_be_replaced_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "taken"
    (path / "inside").mkdir(parents=True)  # a folder where the file should go
    with pytest.raises(IsADirectoryError):
        write_json(a_summary(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_where_a_redis_url_points_is_its_host_port_and_db() -> None:
    shared = SharedAt.from_url("redis://:secret@cache.example:6390/3", "org-c")
    assert shared == SharedAt(host="cache.example:6390/3", key="org-c")


def test_the_tally_counts_done_skipped_and_the_calls_that_wait() -> None:
    tally = Tally(total=10, ok=3, failed=2, skipped=1)
    assert tally.done == 5
    now = time.monotonic()
    tally.calls.update({0: now - 10.0, 1: now - 10.5, 2: now - 25.4})
    count, longest = tally.waiting(now)
    assert count == 2
    assert longest == pytest.approx(25.4)
    tally.calls[0] = now - 5.0
    count, longest = tally.waiting()  # now, by default
    assert count == 2
    assert 25.4 <= longest < 35.0
    assert tally.waiting_text() == "2 waiting 25 s for the service"
    tally.calls.clear()
    assert tally.waiting_text() is None
    tally.started -= 5.0
    assert 5.0 <= tally.elapsed < 15.0


def test_the_tallys_summary_without_an_allowance() -> None:
    tally = Tally(total=6, ok=2, failed=1, retries=4)
    tally.failures.append(Failure(source="a.png", error="bad"))
    tally.started -= 2.0
    summary = tally.summary()
    assert 2.0 <= summary.seconds < 12.0
    assert attrs.evolve(summary, seconds=0.0) == Summary(
        total=6,
        succeeded=2,
        failed=1,
        skipped=3,  # neither done nor skipped before: left when the run stopped
        refused={},
        retries=4,
        seconds=0.0,
        failures=(Failure(source="a.png", error="bad"),),
    )


async def test_the_tallys_summary_counts_the_refusals_its_allowance_heard() -> None:
    watched = WatchedAllowance(LocalAllowance(8))
    tally = Tally(total=2, ok=2, allowance=watched)
    summary = tally.summary(shared=SharedAt(host="h:1/0", key="k"))
    assert summary.refused == {}
    assert summary.allowance == AllowanceReport(shared=SharedAt(host="h:1/0", key="k"))
    await watched.rejected(None)
    assert tally.summary().allowance == AllowanceReport()
    await watched.rejected(6)
    await watched.rejected(None)
    assert watched.refusals == 3
    assert watched.reported == 6
    summary = tally.summary()
    assert summary.refused == {"inflight_limit": 3}
    assert summary.allowance == AllowanceReport(bound=watched.limit, reported=6)
    assert watched.inner.limit == watched.limit <= 6  # the number reached the allowance


def test_the_tallys_summary_with_an_unwatched_allowance_and_a_budget() -> None:
    budget = LocalBudget(Decimal("2"))
    tally = Tally(total=1, allowance=LocalAllowance(4))
    summary = tally.summary(budget=budget)
    assert summary.refused == {}
    assert summary.allowance == AllowanceReport()
    assert (summary.usd, summary.max_usd) == (Decimal(0), Decimal("2"))
    assert "$0.0000 spent of the $2.0000 budget" in render(summary)[1]


def an_outcome(ok: bool, attempts: int) -> Outcome:
    source = Source(path=Path("/in/a.png").absolute(), shown="in/a.png")
    if ok:
        outputs = (Path("out/a.1.png"), Path("out/a.2.png"))
        return Outcome(source=source, ok=True, outputs=outputs, attempts=attempts, seconds=0.835)
    return Outcome(source=source, ok=False, error="HTTP 400: bad", attempts=attempts, seconds=31.2)


def test_plain_lines_count_what_is_left_to_do_and_name_each_attempt_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tally = Tally(total=12, ok=3, failed=1, skipped=2)
    out = io.StringIO()
    reporter = PlainReporter(tally, out)
    reporter.changed()
    reporter.finished(an_outcome(ok=True, attempts=1))
    reporter.finished(an_outcome(ok=False, attempts=3))
    reporter.finished(an_outcome(ok=True, attempts=2))
    assert out.getvalue().splitlines() == [
        "[4/10] ok in/a.png -> out/a.1.png, out/a.2.png (1 attempt, 0.83s)",
        "[4/10] FAILED in/a.png: HTTP 400: bad (3 attempts, 31.20s)",
        "[4/10] ok in/a.png -> out/a.1.png, out/a.2.png (2 attempts, 0.83s)",
    ]
    PlainReporter(tally).note("to the terminal")
    silent = SilentReporter()
    silent.start()
    silent.changed()
    silent.finished(an_outcome(ok=False, attempts=1))
    silent.note("only notes")
    silent.close()
    assert capsys.readouterr().out == "to the terminal\nonly notes\n"


class FakeTime:
    """A clock the test moves: what ``-v`` says an attempt took."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_v_says_what_each_attempt_took_and_why_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(_progress, "time", clock)
    lines: list[str] = []
    log = AttemptLog(lambda error: f"<{type(error).__name__}>", lines.append)
    name = "upscale caf\udce9.png"
    log.began(name)
    clock.now = 101.5
    asked = APIStatusError("slow down", status=503, retry_after=2.0)
    log.retried(RetryEvent(attempt=1, error=asked, wait=2.0, waited=0.0, name=name))
    clock.now = 104.0  # the second attempt started at 103.5
    log.retried(
        RetryEvent(attempt=2, error=ValidationError("reset"), wait=0.25, waited=2.0, name=name)
    )
    clock.now = 105.0  # the third started at 104.25
    log.retried(
        RetryEvent(
            attempt=3, error=APIStatusError("busy", status=503), wait=0.5, waited=2.25, name=name
        )
    )
    clock.now = 106.25  # the fourth started at 105.5
    log.ended(name, a_result(error=APIStatusError("no", status=500), attempts=4, elapsed=6.25))
    log.ended("upscale b.png", a_result(error=None, attempts=1, elapsed=0.5))  # never began
    log.began("upscale c.png")
    clock.now = 108.5
    log.ended("upscale c.png", a_result(error=None, attempts=1, elapsed=2.25))
    log.ended("upscale c.png", a_result(error=None, attempts=1, elapsed=2.25))  # forgotten
    assert lines == [
        "upscale caf\ufffd.png: attempt 1 failed after 1.5s: <APIStatusError>; next attempt in "
        "2.00s (the service asked for it (Retry-After))",
        "upscale caf\ufffd.png: attempt 2 failed after 0.5s: <ValidationError>; next attempt in "
        "0.25s (backoff with jitter)",
        "upscale caf\ufffd.png: attempt 3 failed after 0.8s: <APIStatusError>; next attempt in "
        "0.50s (backoff with jitter)",
        "upscale caf\ufffd.png: attempt 4 failed after 0.8s for good: <APIStatusError> "
        "(6.2s in all)",
        "upscale b.png: attempt 1 ok",
        "upscale c.png: attempt 1 ok after 2.2s",
        "upscale c.png: attempt 1 ok",
    ]


def test_v_writes_its_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    AttemptLog(str).ended("upscale a.png", a_result(error=None, attempts=1, elapsed=0.1))
    assert capsys.readouterr() == ("", "upscale a.png: attempt 1 ok\n")


def a_result(*, error: Exception | None, attempts: int, elapsed: float) -> BatchResult[Any]:
    return BatchResult(
        index=0,
        source=Path("a.png"),
        request=None,
        response=None,
        error=error,
        attempts=attempts,
        elapsed=elapsed,
    )


def mid_run_tally() -> Tally:
    tally = Tally(total=5, ok=1, failed=1, skipped=1, in_flight=2, downloading=1, retries=3)
    tally.allowance = LocalAllowance(4)
    return tally


def test_the_status_fields_for_given_counts() -> None:
    tally = mid_run_tally()
    assert status_fields(tally, tally.started + 8.0) == [
        Field(9, "Upscaling", "bold"),
        Field(1, "2/4", "progress.download"),
        Field(5, "1 ok", "green"),
        Field(1, "1 failed", "red"),
        Field(1, "2 in flight", "cyan"),
        Field(4, "1 downloading"),
        Field(3, "0/4 places", "cyan"),
        Field(2, "3 retries", "yellow"),
        Field(1, "0.2 img/s", "progress.data.speed"),  # 2 done in 8 s
        Field(6, "0:00:08", "progress.elapsed"),
        Field(1, "ETA 0:00:08", "progress.remaining"),  # 2 left at that rate
    ]


def test_the_status_fields_before_anything_is_done_or_seen() -> None:
    tally = Tally(total=3)
    texts = [(f.text, f.style) for f in status_fields(tally, tally.started + 3725.9)]
    assert texts == [
        ("Upscaling", "bold"),
        ("0/3", "progress.download"),
        ("0 ok", "green"),
        ("0 failed", ""),
        ("0 in flight", "cyan"),
        ("0 downloading", ""),
        ("0 retries", ""),
        ("-- img/s", "progress.data.speed"),
        ("1:02:05", "progress.elapsed"),
        ("ETA --:--", "progress.remaining"),
    ]
    tally.ok = 1  # done, but no time has passed
    shown = [f.text for f in status_fields(tally, tally.started)]
    assert shown[-3:] == ["-- img/s", "0:00:00", "ETA --:--"]


def test_fields_are_kept_by_priority_until_the_next_does_not_fit() -> None:
    fields = [Field(1, "aaaa"), Field(3, "bb"), Field(1, "cc"), Field(2, "漢字")]
    assert [f.text for f in fit(fields, 3)] == []
    assert [f.text for f in fit(fields, 4)] == ["aaaa"]
    assert [f.text for f in fit(fields, 7)] == ["aaaa"]
    assert [f.text for f in fit(fields, 8)] == ["aaaa", "cc"]
    assert [f.text for f in fit(fields, 13)] == ["aaaa", "cc"]  # 漢字 is 4 cells wide
    assert [f.text for f in fit(fields, 14)] == ["aaaa", "cc", "漢字"]
    assert [f.text for f in fit(fields, 18)] == ["aaaa", "bb", "cc", "漢字"]
    # The first that does not fit ends it: nothing less important slips in after it.
    assert [f.text for f in fit([Field(1, "x" * 9), Field(2, "y")], 5)] == []


def status_line(tally: Tally, width: int) -> Text:
    return next(RichReporter(tally).status.lines(width))


def test_the_bar_takes_the_room_left_between_ten_and_forty_cells() -> None:
    tally = mid_run_tally()
    tally.started = time.monotonic() - 3600.2  # an hour in: the fields keep their width
    texts = [f.text for f in status_fields(tally)]
    bare = len("  ".join(texts))
    assert status_line(tally, bare + 11).plain == "  ".join(texts)  # room for 9 cells only
    line = status_line(tally, bare + 12)
    assert line.plain == "  ".join([texts[0], "━" * 10, *texts[1:]])
    assert status_line(tally, bare + 60).plain == "  ".join([texts[0], "━" * 40, *texts[1:]])
    start = len(texts[0]) + 2
    spans = [(s.start, s.end, s.style) for s in line.spans]
    assert spans[:3] == [
        (0, len(texts[0]), "bold"),
        (start, start + 5, "bar.complete"),  # 2 of 4 done
        (start + 5, start + 10, "bar.back"),
    ]
    assert [str(s.style) for s in line.spans[3:]] == [
        f.style for f in status_fields(tally) if f.text in texts[1:] and f.style
    ]


def test_the_bar_is_full_when_nothing_is_left_to_do() -> None:
    tally = Tally(total=2, skipped=2)
    line = status_line(tally, 200)
    assert "━" * 40 in line.plain
    assert [s.style for s in line.spans if str(s.style).startswith("bar.")] == ["bar.complete"]


def test_the_wait_notice_shows_only_when_it_fits() -> None:
    tally = Tally(total=2)
    tally.calls[0] = time.monotonic() - 42.2
    notice = "1 waiting 42 s for the service"
    lines = list(RichReporter(tally).status.lines(len(notice)))
    assert [line.plain for line in lines[1:]] == [notice]
    assert lines[1].style == "bold yellow"
    assert len(list(RichReporter(tally).status.lines(len(notice) - 1))) == 1


def test_the_live_display_prints_failures_and_notes_above_it_as_they_are() -> None:
    out = io.StringIO()
    console = Console(file=out, width=60, force_terminal=True, color_system="standard")
    reporter = RichReporter(Tally(total=2), console)
    reporter.changed()
    reporter.finished(an_outcome(ok=False, attempts=1))
    reporter.finished(an_outcome(ok=True, attempts=1))
    reporter.note("3 [b]x[/b] 'q' http://x.y")  # no markup, no highlighting
    assert out.getvalue() == (
        "\x1b[1;31mFAILED \x1b[0min/a.png: HTTP 400: bad\n3 [b]x[/b] 'q' http://x.y\n"
    )


def test_the_live_display_leaves_stdout_and_stderr_alone_and_ends_with_the_status() -> None:
    out = io.StringIO()
    tally = Tally(total=2, ok=1)
    console = Console(file=out, width=60, force_terminal=True, color_system="standard")
    reporter = RichReporter(tally, console)
    streams = (sys.stdout, sys.stderr)
    reporter.start()
    try:
        assert (sys.stdout, sys.stderr) == streams
    finally:
        reporter.close()
    assert "1/2" in ANSI.sub("", out.getvalue())


def test_a_table_aligns_its_columns_and_marks_failures_red(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    print_table("Runs", ["name", "count"], [["a", "failed"], ["bbbbbbbb", "12"]])
    assert capsys.readouterr().out.splitlines() == [
        "        Runs         ",
        "┏━━━━━━━━━━┳━━━━━━━━┓",
        "┃ name     ┃  count ┃",
        "┡━━━━━━━━━━╇━━━━━━━━┩",
        "│ a        │ failed │",
        "│ bbbbbbbb │     12 │",
        "└──────────┴────────┘",
    ]
    monkeypatch.setenv("FORCE_COLOR", "1")
    print_table("Runs", ["name"], [["failed"], ["ok"]])
    out = capsys.readouterr().out
    assert "\x1b[31mfailed\x1b[0m" in out
    assert "\x1b[31mok" not in out


class SteppedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves forward: timers fire without waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.ahead = 0.0

    def time(self) -> float:
        return super().time() + self.ahead


def test_plain_lines_say_every_ten_seconds_while_calls_wait() -> None:
    tally = Tally(total=3)
    out = io.StringIO()
    reporter = PlainReporter(tally, out)
    loop = SteppedLoop()

    async def after(seconds: float) -> list[str]:
        loop.ahead += seconds
        for _ in range(3):  # let the loop run what came due
            await asyncio.sleep(0)
        lines = out.getvalue().splitlines()
        out.seek(0)
        out.truncate()
        return lines

    async def scenario() -> None:
        reporter.close()  # before start: nothing to stop
        reporter.start()
        tally.calls[0] = time.monotonic() - 42.2
        assert await after(9.9) == []
        assert await after(0.2) == ["1 waiting 42 s for the service"]
        del tally.calls[0]
        assert await after(10.0) == []  # nothing waits: no line, but it keeps watching
        tally.calls[1] = time.monotonic() - 12.0
        assert await after(10.0) == ["1 waiting 12 s for the service"]
        reporter.close()
        reporter.close()
        assert await after(30.0) == []

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


class Flushed(io.StringIO):
    """A stream that keeps what was pushed out (flushed) apart from what is buffered."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed = ""

    def flush(self) -> None:
        self.pushed = self.getvalue()


def test_each_line_is_pushed_out_as_it_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script reading the lines through a pipe gets each one at once, not at exit."""
    stdout, stderr, out = Flushed(), Flushed(), Flushed()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    PlainReporter(Tally(total=1), out).note("to a file")
    assert out.pushed == "to a file\n"
    PlainReporter(Tally(total=1)).note("plain")
    assert stdout.pushed == "plain\n"
    SilentReporter().note("silent")
    assert stdout.pushed == "plain\nsilent\n"
    AttemptLog(str).ended("upscale a.png", a_result(error=None, attempts=1, elapsed=0.1))
    assert stderr.pushed == "upscale a.png: attempt 1 ok\n"


def test_the_status_clock_and_rate_in_the_first_minutes() -> None:
    tally = Tally(total=4, ok=1)
    texts = [f.text for f in status_fields(tally, tally.started + 0.5)]
    assert texts[-3:] == ["2.0 img/s", "0:00:00", "ETA 0:00:01"]  # 3 left at 2 a second
    texts = [f.text for f in status_fields(tally, tally.started + 60.0)]
    assert texts[-3:] == ["0.0 img/s", "0:01:00", "ETA 0:03:00"]


def test_the_bar_of_a_single_image_fills_when_it_is_done() -> None:
    tally = Tally(total=1)
    assert [s.style for s in status_line(tally, 200).spans[1:2]] == ["bar.back"]
    tally.ok = 1
    assert [s.style for s in status_line(tally, 200).spans[1:2]] == ["bar.complete"]


def test_an_interrupt_right_after_the_rename_keeps_the_summary_and_stays_an_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace = os.replace

    def interrupted(source: str, target: Path) -> None:
        replace(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    path = tmp_path / "s.json"
    with pytest.raises(KeyboardInterrupt):
        write_json(a_summary(), path)
    assert json.loads(path.read_text()) == to_json(a_summary())
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_the_json_summary_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    summary = a_summary(failures=(Failure(source="café.png", error="bad"),))
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # text files default to ASCII here
    try:
        write_json(summary, tmp_path / "s.json")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert json.loads((tmp_path / "s.json").read_bytes().decode("utf-8")) == to_json(summary)


def test_a_summary_with_no_allowance_keeps_the_refusals_it_saw() -> None:
    tally = Tally(total=1)
    tally.refusals.saw(RateLimitError("busy", status=429, reject_reason="org_limit"))
    assert tally.summary().refused == {"org_limit": 1}
