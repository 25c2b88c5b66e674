"""The command line protects a newcomer's first run: it stops a run that cannot succeed,
reports each failure once, checks its output folder and manifest before sending, and
keeps the manifest exact across resumes and concurrent runs.

CLI runs (in-process, or subprocesses where one must hold the manifest while another
starts; see ``test_cli.py``) go against an in-process emulator; the pipeline's
accounting is checked on its own.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shlex
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ideogram_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BatchResult,
    IdeogramClient,
    RetryEvent,
    RetryPolicy,
    TopazBloom2,
    UpscaleRequest,
    UpscaleResponse,
    ValidationError,
)
from ideogram_async.cli import _pipeline as pipeline
from ideogram_async.cli import main
from ideogram_async.cli._inputs import Source
from ideogram_async.cli._live import status_fields
from ideogram_async.cli._manifest import Outcome
from ideogram_async.cli._pipeline import (
    FailFast,
    Halt,
    Job,
    RunStopped,
    View,
    call_name,
    describe,
    run_batch,
    run_job,
    until_drained,
    until_stopped,
)
from ideogram_async.cli._progress import SilentReporter, Tally
from ideogram_async.cli._resume import Recorded
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries

from .test_cli import (
    KEY,
    assert_clean,
    cli_env,
    finish,
    read_manifest,
    run_main,
    save_image,
    start_cli,
    upscale_args,
)
from .test_cli_manifest import noise


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    monkeypatch.delenv("IDEOGRAM_BASE_URL", raising=False)


def dead_url() -> str:
    """The URL of a local port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def images(folder: Path, count: int) -> list[Path]:
    return [save_image(folder / f"img-{i:02d}.png", (8, 6), shade=i) for i in range(count)]


def batch_of(
    client: IdeogramClient,
    emulator: Emulator,
    sources: Sequence[Source],
    out: Path,
    *,
    on_start: Callable[[int], None] = lambda index: None,
    on_answer: Callable[[BatchResult[Any]], None] = lambda result: None,
    on_paid: Callable[[Outcome, bool], None] = lambda outcome, downloading: None,
    on_finish: Callable[[Outcome, bool], None] = lambda outcome, downloaded: None,
) -> Coroutine[Any, Any, None]:
    """``run_batch`` of ``sources`` (v1, default options) against ``emulator`` into
    ``out``; the hooks not given do nothing."""
    return run_batch(
        client,
        sources,
        UpscaleRequest(),
        out,
        fail_fast=FailFast(emulator.base_url, official=False),
        halt=Halt(),
        on_start=on_start,
        on_answer=on_answer,
        on_paid=on_paid,
        on_finish=on_finish,
    )


async def test_a_wrong_key_stops_the_run_after_the_calls_in_flight(tmp_path: Path) -> None:
    images(tmp_path / "in", 30)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        run = await run_main(
            *args, "--concurrency", "3", "--manifest", str(manifest), env=cli_env(key="wrong")
        )
        requests = emulator.stats.requests
    assert run.returncode == 1, run.stderr
    assert 1 <= requests <= 3  # only the calls already in flight reached the service
    assert_clean(run)
    # One message that says what to check, naming the command's own options.
    assert run.stderr.count("Stopped:") == 1
    assert f"{emulator.base_url} refused the API key: HTTP 401" in run.stderr
    assert "IDEOGRAM_API_KEY or --api-key-file" in run.stderr
    assert "api_key=" not in run.stdout + run.stderr
    assert "0 of 30 image(s) upscaled, 30 not done" in run.stderr
    assert "FAILED" not in run.stdout
    # The key must change, not the command: no advice to resume what never started.
    assert "The API key is what must change" in run.stderr
    assert run.stderr.endswith("then run the command again.\n")
    assert "--resume" not in run.stderr
    # Nothing was written, so nothing is left behind: no manifest, lock or empty folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


async def test_a_dead_port_stops_the_run_at_the_first_refused_call(tmp_path: Path) -> None:
    images(tmp_path / "in", 30)
    url = dead_url()
    args = ["upscale", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--base-url", url]
    run = await run_main(*args, "--concurrency", "2", "--retries", "0")
    assert run.returncode == 1, run.stderr
    assert_clean(run)
    assert run.stderr.count("Stopped:") == 1
    assert f"cannot reach the service at {url}" in run.stderr
    assert "Check --base-url (or IDEOGRAM_BASE_URL)" in run.stderr
    assert "30 not done" in run.stderr
    assert "FAILED" not in run.stdout  # not one line per image of the folder


async def test_an_official_run_that_cannot_connect_says_to_check_the_network(
    tmp_path: Path,
) -> None:
    images(tmp_path / "in", 2)
    url = dead_url()
    args = ["upscale", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--base-url", url]
    run = await run_main(*args, "--official", "--retries", "0")
    assert run.returncode == 1, run.stderr
    assert f"cannot reach the service at {url}" in run.stderr
    assert "Check the network, and that the service is up." in run.stderr


async def test_verbose_names_a_v2_call_by_its_model(tmp_path: Path) -> None:
    images(tmp_path / "in", 1)
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--model", "topaz-bloom-2", "-v")
    assert run.returncode == 0, run.stderr
    assert "topaz-bloom-2 img-00.png" in run.stderr
    assert "upscale img-00.png" not in run.stderr


async def refused_error(png: bytes) -> APIConnectionError:
    async with IdeogramClient(api_key=KEY, base_url=dead_url()) as client:
        try:
            await client.upscale(png, retry=RetryPolicy.no_retries())
        except APIConnectionError as error:
            return error
    raise AssertionError("a dead port answered")


def result(error: Exception | None) -> BatchResult[UpscaleResponse]:
    return BatchResult(
        index=0,
        source=b"",
        request=UpscaleRequest(),
        response=None,
        error=error,
        attempts=1,
        elapsed=0.0,
    )


async def test_a_refused_call_stops_the_run_only_until_the_service_was_reached(
    png_bytes: bytes,
) -> None:
    refused = await refused_error(png_bytes)
    fresh = FailFast("http://x", official=False)
    assert fresh.reason_to_stop(result(ValidationError("not an image"))) is None
    reason = fresh.reason_to_stop(result(refused))
    assert reason is not None
    assert "cannot reach the service at http://x" in reason
    # Once anything got an answer, a refused call is that image's own failure.
    reached = FailFast("http://x", official=True)
    assert reached.reason_to_stop(result(None)) is None
    assert reached.reason_to_stop(result(refused)) is None


def test_unreachable_is_told_by_the_errors_attributes_not_its_text_or_cause() -> None:
    worded = APIConnectionError("connection refused: the host name does not resolve")
    worded.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert FailFast("http://x", official=False).reason_to_stop(result(worded)) is None
    flagged = APIConnectionError("connection failed", unreachable=True)
    reason = FailFast("http://x", official=False).reason_to_stop(result(flagged))
    assert reason is not None
    assert "(the host refused the connection or its name does not resolve; 1 attempt(s)" in reason
    timed_out = APITimeoutError("no connection", kind="connect")
    reason = FailFast("http://x", official=False).reason_to_stop(result(timed_out))
    assert reason is not None
    assert "(no connection within the connect timeout; 1 attempt(s)" in reason
    slow = APITimeoutError("no answer", kind="attempt")
    assert FailFast("http://x", official=False).reason_to_stop(result(slow)) is None


async def test_each_failed_image_is_reported_once(tmp_path: Path) -> None:
    images(tmp_path / "in", 4)
    plan = FaultPlan(rate=1.0, choices=[Fault.status(503)])
    async with Emulator(KEY, faults=plan) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--retries", "1")
        assert emulator.stats.requests == 8
    assert run.returncode == 1, run.stderr
    assert_clean(run)
    everything = run.stdout + run.stderr
    assert everything.count("FAILED") == 4
    assert "giving up" not in everything
    assert "Done: 0 of 4 image(s) upscaled, 4 failed" in run.stdout
    assert "Requests: 4 request(s) retried; none refused by the service." in run.stdout
    assert "Results:" not in run.stdout  # nothing to look at


async def test_in_flight_counts_the_upscale_calls_concurrency_bounds(tmp_path: Path) -> None:
    paths = images(tmp_path / "in", 12)
    sources = [Source(path, path.name) for path in paths]
    in_flight, peak, finished, paid = 0, 0, [], []

    def started(index: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

    def answered(result: BatchResult[Any]) -> None:
        nonlocal in_flight
        in_flight -= 1

    def done(outcome: Outcome, downloaded: bool) -> None:
        finished.append(outcome.ok and downloaded)

    async with (
        Emulator(KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=3) as client,
    ):
        emulator.pause()
        batch = asyncio.create_task(
            batch_of(
                client,
                emulator,
                sources,
                tmp_path / "out",
                on_start=started,
                on_answer=answered,
                on_paid=lambda outcome, downloading: paid.append(downloading),
                on_finish=done,
            )
        )
        await emulator.wait_in_flight(3)
        assert in_flight == 3  # not 6: nothing waits for a slot while counted as in flight
        emulator.resume()
        await batch
    assert peak == 3
    assert finished == [True] * 12
    assert paid == [True] * 12  # each paid result was announced before its download


async def test_results_waiting_for_their_download_never_outnumber_the_allowance(
    tmp_path: Path,
) -> None:
    paths = images(tmp_path / "in", 5)
    sources = [Source(path, path.name) for path in paths]
    waiting, most, finished = 0, 0, []

    def paid(outcome: Outcome, downloading: bool) -> None:
        nonlocal waiting, most
        waiting += 1
        most = max(most, waiting)

    def done(outcome: Outcome, downloaded: bool) -> None:
        nonlocal waiting
        waiting -= 1
        finished.append(outcome.ok and downloaded)

    slow_images = FaultPlan.always(Fault.slow(0.3))  # each download ends after the next answer
    async with (
        Emulator(KEY, upscale=False, image_faults=slow_images) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=1) as client,
    ):
        await batch_of(client, emulator, sources, tmp_path / "out", on_paid=paid, on_finish=done)
    assert finished == [True] * 5
    # One download under way (the allowance) and the result just paid for, at most: the
    # batch waits for a download to end before it takes another answer's download on.
    assert most <= 2


async def test_a_failure_to_record_a_finished_input_stops_the_batch_at_once(
    tmp_path: Path,
) -> None:
    paths = images(tmp_path / "in", 12)
    sources = [Source(path, path.name) for path in paths]
    started: list[int] = []

    def record(outcome: Outcome, downloaded: bool) -> None:
        raise OSError(28, "No space left on device")

    async with (
        Emulator(KEY) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=1) as client,
    ):
        with pytest.raises(OSError, match="No space left on device"):
            await batch_of(
                client,
                emulator,
                sources,
                tmp_path / "out",
                on_start=started.append,
                on_finish=record,
            )
        # Raised as the next download waited for its place, not after the last input.
        assert len(started) <= 3
        assert emulator.stats.requests <= 3


async def test_a_failure_to_record_is_raised_as_it_is_while_other_downloads_are_under_way(
    tmp_path: Path,
) -> None:
    paths = images(tmp_path / "in", 6)
    sources = [Source(path, path.name) for path in paths]

    def record(outcome: Outcome, downloaded: bool) -> None:
        raise OSError(28, "No space left on device")

    # The first download ends well before the second: that one is under way when it fails.
    slow_images = FaultPlan([Fault.slow(0.1), Fault.slow(1.0)])
    async with (
        Emulator(KEY, upscale=False, image_faults=slow_images) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=2) as client,
    ):
        with pytest.raises(OSError, match="No space left on device"):
            await batch_of(client, emulator, sources, tmp_path / "out", on_finish=record)
        left = [task for task in asyncio.all_tasks() if "run_batch" in repr(task.get_coro())]
        assert left == []  # the download under way was cancelled and has let go


async def test_resume_redoes_failures_and_keeps_one_record_per_input(tmp_path: Path) -> None:
    images(tmp_path / "in", 5)
    (tmp_path / "in" / "notes.png").write_text("not an image")  # fails every time
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    keep = ["--manifest", str(manifest)]
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        first = await run_main(*args, *keep)
        assert first.returncode == 1, first.stderr
        manifest.chmod(0o640)
        for _ in range(2):  # each resume redoes only the text file, again
            again = await run_main(*args, *keep, "--resume")
            assert again.returncode == 1, again.stderr
            assert_clean(again)
            records = read_manifest(manifest)
            assert len(records) == 6  # one final record per input, however many runs
            assert sorted(r["status"] for r in records) == ["failed"] + ["ok"] * 5
            assert stat.S_IMODE(manifest.stat().st_mode) == 0o640  # rewritten in place
        assert emulator.stats.requests == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


async def test_resume_downloads_a_missing_result_again_from_its_recorded_url(
    tmp_path: Path,
) -> None:
    images(tmp_path / "in", 3)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    keep = ["--manifest", str(manifest)]
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        assert (await run_main(*args, *keep)).returncode == 0
        (paid,) = (r for r in read_manifest(manifest) if r["source"].endswith("img-01.png"))
        (out / "img-01.upscaled.png").unlink()
        again = await run_main(*args, *keep, "--resume")
        assert emulator.stats.requests == 3  # bought once: the result is fetched again
        assert emulator.stats.image_downloads == 4
    assert again.returncode == 0, again.stderr
    assert "Skipping 2 of 3 image(s)" in again.stdout
    assert "1 image(s) recorded as done have lost their result: " in again.stdout
    assert "img-01.png" in again.stdout
    assert "Downloading the results of 1 image(s) already upscaled" in again.stdout
    assert "[1/1] ok " in again.stdout  # counted among this run's inputs, not the skipped
    (saved,) = (r for r in read_manifest(manifest) if r["source"].endswith("img-01.png"))
    # Recorded as the upscale it was: its attempts and time of upscale, and the download's
    # own time only (a local download, well under a second).
    assert (saved["status"], saved["attempts"]) == ("ok", paid["attempts"])
    assert saved["upscaled_at"] == paid["upscaled_at"]
    assert saved["seconds"] < 1
    assert (out / "img-01.upscaled.png").is_file()


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
async def test_a_second_run_on_the_same_manifest_refuses(tmp_path: Path, resume: bool) -> None:
    images(tmp_path / "in", 6)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    again = ["--resume"] if resume else []
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        emulator.pause()
        first = await start_cli(*args, *again, "--concurrency", "2")
        await emulator.wait_in_flight(2)  # the first run holds the manifest now
        second = await run_main(*args, *again)
        assert second.returncode == 2, second.stderr
        assert f"another run is using the manifest {manifest}" in second.stderr
        assert emulator.stats.requests == 2  # the second run sent nothing
        emulator.resume()
        done = await finish(first)
    assert done.returncode == 0, done.stderr
    assert len(read_manifest(manifest)) == 6
    assert done.stdout.count("] ok ") == 6


@pytest.mark.parametrize("where", ["under-a-file", "read-only-folder"])
async def test_an_unwritable_out_folder_exits_2_before_sending(tmp_path: Path, where: str) -> None:
    images(tmp_path / "in", 2)
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "results"
    elif os.geteuid() == 0:  # root writes through any mode bits; /sys refuses even root
        out = Path("/sys/kernel")
        if not out.is_dir():
            pytest.skip("no /sys/kernel here")
    else:
        out = tmp_path / "read-only"
        out.mkdir(mode=0o555)
    async with Emulator(KEY) as emulator:
        run = await run_main(*upscale_args(emulator, [tmp_path / "in"], out))
        assert emulator.stats.requests == 0
    assert run.returncode == 2, run.stderr
    assert f"cannot write results into --out {out}" in run.stderr


@pytest.mark.usefixtures("env_key")
def test_an_out_folder_that_stays_empty_is_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.png").write_text("not an image")  # fails locally: nothing is sent
    out = tmp_path / "a" / "b"
    args = ["upscale", str(tmp_path / "notes.png"), "-o", str(out), "--base-url", dead_url()]
    assert main(args) == 1
    assert not (tmp_path / "a").exists()  # made to check it, removed as nothing was written
    shown = capsys.readouterr().out
    assert "Done: 0 of 1 image(s) upscaled, 1 failed in " in shown
    assert "/s" not in shown  # no rate of images that were never upscaled
    assert "Results:" not in shown


@pytest.mark.usefixtures("env_key")
def test_a_pattern_in_a_missing_folder_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = ["--base-url", dead_url()]
    assert main(["upscale", "nothing/*.jpg", "-o", "out", *url]) == 2
    err = capsys.readouterr().err
    assert "nothing/*.jpg: no such folder nothing" in err
    assert "--recursive" not in err
    (tmp_path / "flat").mkdir()
    assert main(["upscale", "flat", "-o", "out", *url]) == 2
    assert "--recursive" not in capsys.readouterr().err  # it has no subfolders
    save_image(tmp_path / "flat" / "deeper" / "x.png", (2, 2))
    assert main(["upscale", "flat", "-o", "out", *url]) == 2
    assert "(add --recursive to look in subfolders)" in capsys.readouterr().err


async def test_serve_prints_lines_that_work_and_logs_each_request(tmp_path: Path) -> None:
    process = await start_cli("serve", "--port", "0", "--api-key", KEY, "--verbose")
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            lines = [(await process.stdout.readline()).decode() for _ in range(5)]
        url = lines[0].split()[-1]
        assert url.startswith("http://127.0.0.1:")
        assert f"It accepts the API key {KEY!r}" in lines[1]
        exported = dict(word.split("=", 1) for word in shlex.split(lines[2])[1:])
        assert exported == {"IDEOGRAM_BASE_URL": url, "IDEOGRAM_API_KEY": KEY}
        # The command-line line, pasted into a folder holding photo.png.
        save_image(tmp_path / "photo.png", (6, 4))
        env_word, program, *rest = shlex.split(lines[3].split("command line:", 1)[1])
        assert program == "ideogram-async"
        name, value = env_word.split("=", 1)
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ideogram_async",
            *rest,
            cwd=tmp_path,
            env={**cli_env(key=None), name: value},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        ran = await finish(cli)
        assert ran.returncode == 0, ran.stderr
        assert (tmp_path / "upscaled" / "photo.upscaled.png").is_file()
        # The library line, pasted into Python.
        built = eval(lines[4].split("library:", 1)[1], {"IdeogramClient": IdeogramClient})
        async with built as client:
            response = await client.upscale(tmp_path / "photo.png")
        assert response.data[0].resolution == "12x8"
    finally:
        process.terminate()
        served = await finish(process)
    assert served.returncode == 0
    logged = [line for line in served.stderr.splitlines() if "POST /ideogram/upscale" in line]
    assert len(logged) == 2
    assert all('HTTP/1.1" 200 ' in line for line in logged)
    assert served.stderr.count("GET /images/") == 1  # the command line's download
    assert KEY not in served.stderr


async def test_results_get_the_permissions_the_umask_gives(tmp_path: Path) -> None:
    images(tmp_path / "in", 2)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ideogram_async",
            *args,
            env=cli_env(),
            umask=0o027,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        run = await finish(process)
    assert run.returncode == 0, run.stderr
    modes = {stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert modes == {0o640}  # not 0600: a web server in the group can read them
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o640


# -- stopping a run in-process -------------------------------------------------------------


class Stop(asyncio.Event):
    """The event a signal sets; says when the run cleared it (it took the first one)."""

    def __init__(self) -> None:
        super().__init__()
        self.cleared = asyncio.Event()

    def clear(self) -> None:
        super().clear()
        self.cleared.set()


def job_of(folder: Path, out: Path, manifest: Path | None) -> Job:
    sources = [Source(path.resolve(), path.name) for path in sorted(folder.iterdir())]
    return Job(
        sources=sources,
        request=UpscaleRequest(),
        out_dir=out,
        manifest=manifest,
        rerun_hint="Run it again.",
    )


def connector(emulator: Emulator, places: int) -> Callable[[Callable[[RetryEvent], None]], Any]:
    def connect(on_retry: Callable[[RetryEvent], None]) -> IdeogramClient:
        return IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, allowance=places, on_retry=on_retry
        )

    return connect


async def test_until_stopped_ends_with_the_work_or_the_stop() -> None:
    stop = asyncio.Event()
    assert await until_stopped(asyncio.sleep(0), stop)
    with pytest.raises(ValueError, match="own error"):
        await until_stopped(raising(), stop)
    never = asyncio.Event()
    waited = asyncio.create_task(until_stopped(waiting(never), stop))
    stop.set()
    assert not await waited
    assert {task for task in asyncio.all_tasks() if not task.done()} == {asyncio.current_task()}


async def drained(
    work: Coroutine[Any, Any, None], stop: asyncio.Event, noted: asyncio.Event
) -> bool:
    """``until_drained`` with one call in flight and the stop already asked for.

    ``noted`` is set once it has said that it waits for the calls in flight.
    """
    stop.set()
    return await until_drained(
        work, stop, halt=Halt(), in_flight=lambda: 1, note=lambda line: noted.set()
    )


async def test_after_a_stop_the_calls_in_flight_end_and_their_failure_is_raised() -> None:
    stop, answered, noted = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def failing() -> None:
        await answered.wait()
        raise OSError(28, "No space left on device")  # recording the answer failed

    draining = asyncio.create_task(drained(failing(), stop, noted))
    await noted.wait()
    answered.set()
    with pytest.raises(OSError, match="No space left on device"):
        await draining


async def test_after_a_stop_a_run_stopped_is_no_error_the_interrupt_came_first() -> None:
    stop, answered, noted = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stopped() -> None:
        await answered.wait()
        raise RunStopped("cannot write the manifest")

    draining = asyncio.create_task(drained(stopped(), stop, noted))
    await noted.wait()
    answered.set()
    assert await draining is False


async def test_until_drained_lets_abandoned_work_clean_up_before_it_returns() -> None:
    stop, never, noted = asyncio.Event(), asyncio.Event(), asyncio.Event()
    cleaned: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await never.wait()
        finally:
            for _ in range(3):  # cleaning up takes a few turns of the loop
                await asyncio.sleep(0)
            cleaned.append("done")

    draining = asyncio.create_task(drained(slow_to_stop(), stop, noted))
    await noted.wait()
    stop.set()  # the second interrupt abandons the calls in flight
    assert await draining is False
    assert cleaned == ["done"]


async def test_until_stopped_lets_stopped_work_clean_up_before_it_returns() -> None:
    stop, never = asyncio.Event(), asyncio.Event()
    cleaned: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await never.wait()
        finally:
            for _ in range(3):  # cleaning up takes a few turns of the loop
                await asyncio.sleep(0)
            cleaned.append("done")

    stop.set()
    assert not await until_stopped(slow_to_stop(), stop)
    assert cleaned == ["done"]


async def test_halt_keeps_the_first_reason_and_an_interrupt_cancels_the_downloads() -> None:
    halt = Halt()
    never = asyncio.Event()
    download = halt.abandonable(asyncio.create_task(waiting(never)))
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    finished = halt.abandonable(asyncio.create_task(asyncio.sleep(0)))
    await finished
    await asyncio.sleep(0)  # one turn: the task's done callbacks run
    loop.set_exception_handler(None)
    assert errors == []
    assert halt._downloads == {download}  # a finished download is let go
    halt.stop("cannot write into out")
    halt.interrupt()
    assert halt.reason == "cannot write into out"
    with pytest.raises(asyncio.CancelledError):
        await download
    fresh = Halt()
    fresh.interrupt()
    assert fresh.reason == "interrupted"


async def raising() -> None:
    raise ValueError("its own error")


async def waiting(event: asyncio.Event) -> None:
    await event.wait()


async def test_an_interrupt_lets_the_calls_sent_finish_records_them_and_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images(tmp_path / "in", 10)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    stop = Stop()
    async with Emulator(KEY) as emulator:
        emulator.pause()
        job = job_of(tmp_path / "in", out, manifest)
        view = View(progress="plain")
        run = asyncio.create_task(run_job(job, connector(emulator, 3), stop, view=view))
        await emulator.wait_in_flight(3)
        stop.set()
        await stop.cleared.wait()  # the run took the interrupt: it waits for the 3 calls
        assert not run.done()
        emulator.resume()
        assert await run == 130
        assert emulator.stats.requests == 3  # nothing new was sent after the interrupt
    shown = capsys.readouterr().out
    assert (
        "Stopping: waiting for the 3 upscale call(s) already sent, whose results are paid "
        "for, to record them; interrupt again to abandon them." in shown
    )
    assert (
        "Interrupted: 0 of 10 finished (0 ok, 0 failed). 3 image(s) already upscaled are "
        "recorded with their result URLs: --resume downloads them without upscaling them "
        "again. Run it again." in shown
    )
    records = read_manifest(manifest)
    assert [record["status"] for record in records] == ["upscaled"] * 3
    assert not out.exists()  # nothing was downloaded


async def test_a_second_interrupt_abandons_the_calls_in_flight_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images(tmp_path / "in", 4)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    stop = Stop()
    async with Emulator(KEY) as emulator:
        emulator.pause()
        job = job_of(tmp_path / "in", out, manifest)
        run = asyncio.create_task(
            run_job(job, connector(emulator, 2), stop, view=View(progress="none"))
        )
        await emulator.wait_in_flight(2)
        stop.set()
        await stop.cleared.wait()
        stop.set()
        assert await run == 130
        emulator.resume()
    shown = capsys.readouterr().out
    assert "Interrupted: 0 of 4 finished (0 ok, 0 failed). Run it again." in shown
    assert not manifest.exists()  # nothing was recorded: the run made no manifest


async def test_an_interrupt_with_nothing_in_flight_stops_at_once(tmp_path: Path) -> None:
    halt = Halt()
    notes: list[str] = []
    stop = asyncio.Event()
    never = asyncio.Event()
    drained = asyncio.create_task(
        until_drained(waiting(never), stop, halt=halt, in_flight=lambda: 0, note=notes.append)
    )
    stop.set()
    assert not await drained
    assert notes == []
    assert halt.reason is None  # not halted: cancelled


# -- what the run says about an error -------------------------------------------------------


def test_an_error_is_one_line_naming_the_commands_options() -> None:
    assert describe(APIConnectionError("no  answer\n  at all")) == "no answer at all"
    assert describe(APIConnectionError("")) == "APIConnectionError"
    assert describe(ValueError("bad value")) == "ValueError: bad value"
    assert describe(ValueError()) == "ValueError"
    assert describe(OSError(os.fsdecode(b"caf\xe9"))) == "OSError: caf\ufffd"
    hint = ValidationError("pass api_key= or IDEOGRAM_API_KEY; check base_url")
    assert describe(hint) == "pass IDEOGRAM_API_KEY or --api-key-file; check --base-url"
    late = APITimeoutError("slow (Timeouts.attempt): raise RetryPolicy.deadline", kind="attempt")
    assert describe(late) == "slow (--timeout): raise --deadline"


def test_a_calls_name_is_its_model_or_upscale_and_the_file() -> None:
    source = Source(Path("/in/photo.png"), "photo.png")
    assert call_name(UpscaleRequest(), source) == "upscale photo.png"
    assert call_name(TopazBloom2(), source) == "topaz-bloom-2 photo.png"


def test_a_retried_failure_that_reached_the_service_makes_refused_calls_the_images_own() -> None:
    fail_fast = FailFast("http://x", official=False)
    unreachable = APIConnectionError("refused", unreachable=True)
    fail_fast.retried(RetryEvent(attempt=1, error=unreachable, wait=0, waited=0, name="a"))
    assert fail_fast.reason_to_stop(result(unreachable)) is not None  # nothing reached it yet
    answered = APIStatusError("busy", status=503)
    fail_fast.retried(RetryEvent(attempt=1, error=answered, wait=0, waited=0, name="a"))
    assert fail_fast.reason_to_stop(result(unreachable)) is None


async def test_a_failed_input_records_its_attempts_and_time(tmp_path: Path) -> None:
    images(tmp_path / "in", 1)
    manifest = tmp_path / "run.jsonl"
    plan = FaultPlan(rate=1.0, choices=[Fault.status(503)])
    async with Emulator(KEY, faults=plan, latency=0.05) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--retries", "1", "--manifest", str(manifest))
    assert run.returncode == 1, run.stderr
    (record,) = read_manifest(manifest)
    assert (record["status"], record["attempts"]) == ("failed", 2)
    assert record["seconds"] > 0  # the two attempts took their time (0.05 s of latency each)


async def test_a_budget_that_one_more_image_would_pass_stops_the_run(tmp_path: Path) -> None:
    images(tmp_path / "in", 5)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        run = await run_main(
            *args, "--model", "topaz-bloom-2", "--max-usd", "0.03", "--manifest", str(manifest)
        )
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines() == [
        "Stopped: the --max-usd budget of $0.03 would be passed by an image priced up to "
        "$0.012 ($0.024 spent or under way then). Nothing more was sent: 2 of 5 image(s) "
        "upscaled, 3 not done. Run the same command again with --resume to finish the rest."
    ]
    assert "; $0.0240 spent of the $0.0300 budget." in run.stdout  # the summary says it too
    assert [record["status"] for record in read_manifest(manifest)] == ["ok", "ok"]


class Watching(SilentReporter):
    """Notes what the display would show each time the run says something changed."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.seen: list[tuple[int, int, int]] = []

    def changed(self) -> None:
        self.tally.waiting()  # what the display asks of the calls under way
        self.seen.append((self.tally.in_flight, self.tally.downloading, len(self.tally.calls)))

    def finished(self, outcome: Outcome) -> None:
        self.changed()


def watch_displays(monkeypatch: pytest.MonkeyPatch) -> list[Watching]:
    """Make every display a run asks for a :class:`Watching`; the list of those made."""
    watched: list[Watching] = []

    def watching(tally: Tally, view: View) -> Watching:
        watched.append(Watching(tally))
        return watched[-1]

    monkeypatch.setattr(pipeline, "make_reporter", watching)
    return watched


async def test_the_displays_counts_follow_the_calls_and_downloads_and_end_at_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = watch_displays(monkeypatch)
    images(tmp_path / "in", 6)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args, "--concurrency", "2")).returncode == 0
        for name in ("img-01", "img-04"):
            (out / f"{name}.upscaled.png").unlink()
        again = await run_main(*args, "--concurrency", "2", "--resume")
        assert again.returncode == 0, again.stderr
    first, second = (watching.seen for watching in watched)
    assert max(calls for calls, _, _ in first) == 2  # two calls at a time, as allowed
    assert min(calls for calls, _, _ in first) == 0
    assert all(calls == held for calls, _, held in first)  # each call under way is timed
    # Two downloads at a time, and one more answered call waiting for their place.
    assert all(0 <= downloading <= 3 for _, downloading, _ in first + second)
    assert max(downloading for _, downloading, _ in first) >= 1
    assert first[-1] == (0, 0, 0)
    assert max(downloading for _, downloading, _ in second) >= 1  # the recorded results
    assert all(calls == 0 for calls, _, _ in second)  # downloaded, not upscaled again
    assert second[-1] == (0, 0, 0)


async def test_calls_the_service_refuses_are_counted_in_the_summary(tmp_path: Path) -> None:
    images(tmp_path / "in", 3)
    plan = FaultPlan(rate=1.0, choices=[Fault.status(429, retry_after=0)])
    async with Emulator(KEY, faults=plan) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--retries", "0")
    assert run.returncode == 1, run.stderr
    assert "3 refused by the service (429: " in run.stdout


async def test_a_refused_key_after_records_were_written_says_to_run_again_with_resume(
    tmp_path: Path,
) -> None:
    images(tmp_path / "in", 2)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args)).returncode == 0
        (out / "img-00.upscaled.png").unlink()  # downloaded again from its recorded URL
        save_image(tmp_path / "in" / "img-09.png", (8, 6), 9)  # upscaled: the key is refused
        again = await run_main(*args, "--resume", env=cli_env(key="wrong"))
    assert again.returncode == 1, again.stderr
    assert again.stderr.rstrip().endswith(
        "The API key is what must change: set IDEOGRAM_API_KEY or --api-key-file to a "
        "valid key, then run the command again with --resume."
    )


async def test_a_full_disk_while_resumed_results_download_stops_the_run(tmp_path: Path) -> None:
    for number in range(2):
        noise(tmp_path / "in" / f"img-{number}.png", 64, number)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args)).returncode == 0
        for result in out.iterdir():
            result.unlink()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))  # results no longer fit
        try:
            again = await run_main(*args, "--resume", "--concurrency", "1")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert again.returncode == 1, again.stderr
    assert f"Stopped: cannot write into {out} (File too large)." in again.stderr


async def test_a_full_disk_while_results_download_stops_the_run(tmp_path: Path) -> None:
    for number in range(3):
        noise(tmp_path / "in" / f"img-{number}.png", 64, number)
    out = tmp_path / "out"
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))  # results do not fit
        try:
            run = await run_main(*args, "--concurrency", "1", "--manifest", str(tmp_path / "m"))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert run.returncode == 1, run.stderr
    assert f"Stopped: cannot write into {out} (File too large). Nothing more was sent" in (
        run.stderr
    )
    assert "Done: 0 of 3 image(s) upscaled" in run.stdout


async def test_each_record_says_when_the_service_upscaled_it(tmp_path: Path) -> None:
    images(tmp_path / "in", 3)
    manifest = tmp_path / "run.jsonl"
    before = datetime.now(UTC).replace(microsecond=0)
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")]
        run = await run_main(*args, "--manifest", str(manifest))
    after = datetime.now(UTC)
    assert run.returncode == 0, run.stderr
    records = read_manifest(manifest)
    assert [record["status"] for record in records] == ["ok"] * 3
    for record in records:
        assert before <= datetime.fromisoformat(record["upscaled_at"]) <= after


async def test_a_failed_input_leaves_the_displays_download_count_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = watch_displays(monkeypatch)
    images(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.png").write_text("not an image")  # refused by the service
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--concurrency", "1")
    assert run.returncode == 1, run.stderr
    (seen,) = (watching.seen for watching in watched)
    assert all(downloading >= 0 for _, downloading, _ in seen)
    assert seen[-1] == (0, 0, 0)


async def test_a_service_that_answered_a_retried_call_and_then_went_away_fails_the_image(
    tmp_path: Path,
) -> None:
    images(tmp_path / "in", 1)
    answered = asyncio.Event()

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()
        answered.set()

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def go_away() -> None:
        await answered.wait()
        server.close()  # every later attempt is refused

    leaving = asyncio.create_task(go_away())
    with instant_retries():
        args = ["upscale", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--base-url", url]
        run = await run_main(*args)
    await leaving
    await server.wait_closed()
    assert run.returncode == 1, run.stderr
    # The service was reached (the 503), so the refused attempts are this image's failure.
    assert "Stopped:" not in run.stderr
    assert "Done: 0 of 1 image(s) upscaled, 1 failed" in run.stdout


async def test_a_run_that_ends_well_says_where_its_results_manifest_and_summary_are(
    tmp_path: Path,
) -> None:
    images(tmp_path / "in", 2)
    out, manifest, summary = tmp_path / "out", tmp_path / "run.jsonl", tmp_path / "sum.json"
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        run = await run_main(*args, "--manifest", str(manifest), "--json", str(summary))
        plain = await run_main(*upscale_args(emulator, [tmp_path / "in"], tmp_path / "again"))
    assert run.returncode == 0, run.stderr
    assert f"Results: {out}\n" in run.stdout
    assert f"Manifest: {manifest}\n" in run.stdout
    assert f"Summary: {summary}\n" in run.stdout
    assert summary.is_file()
    assert plain.returncode == 0, plain.stderr
    assert "Manifest:" not in plain.stdout
    assert "Summary:" not in plain.stdout  # no --json: nothing written, nothing to point at


async def test_verbose_times_a_v2_call_from_its_start(tmp_path: Path) -> None:
    images(tmp_path / "in", 1)
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--model", "topaz-bloom-2", "-v")
    assert run.returncode == 0, run.stderr
    assert "topaz-bloom-2 img-00.png: attempt 1 ok after " in run.stderr


async def test_a_429_that_ends_a_call_is_counted_by_its_reason(tmp_path: Path) -> None:
    images(tmp_path / "in", 1)
    body = '{"detail": "too many", "reject_reason": "rate_limit"}'
    plan = FaultPlan.always(Fault.status(429, body=body))
    async with Emulator(KEY, faults=plan) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--retries", "0")
    assert run.returncode == 1, run.stderr
    assert "1 refused by the service (429: 1 rate_limit)" in run.stdout


def watch_tallies(monkeypatch: pytest.MonkeyPatch) -> list[Tally]:
    """The tally each run's progress display shows, kept to look at once the run ends."""
    shown: list[Tally] = []
    real = pipeline.make_reporter

    def reporter(tally: Tally, view: View) -> Any:
        shown.append(tally)
        return real(tally, view)

    monkeypatch.setattr(pipeline, "make_reporter", reporter)
    return shown


def downloading(tally: Tally) -> str:
    """The progress line's count of downloads under way."""
    return next(field.text for field in status_fields(tally) if field.text.endswith("downloading"))


async def test_recorded_urls_that_expired_are_not_left_counted_as_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images(tmp_path / "in", 2)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    now = [0.0]
    refused_once = FaultPlan([Fault.status(503)], per_upload=True)
    async with Emulator(KEY, image_faults=refused_once, clock=lambda: now[0]) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args, "--retries", "0")).returncode == 1
        now[0] += 24 * 3600  # a day later: the service has dropped its results
        shown = watch_tallies(monkeypatch)
        again = await run_main(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert "2 recorded result URL(s) expired: upscaling again." in again.stdout
    assert [downloading(tally) for tally in shown] == ["0 downloading"]


async def test_results_paid_after_a_stop_are_not_left_counted_as_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = Path("/dev/full")  # every write fails: no space left on device
    if not full.exists():
        pytest.skip("no /dev/full here")
    images(tmp_path / "in", 8)
    manifest = tmp_path / "run.jsonl"
    manifest.symlink_to(full)
    temp = tmp_path / "temp"  # where the lines the manifest refused are kept
    temp.mkdir()
    env = {**cli_env(), "TMPDIR": str(temp)}
    shown = watch_tallies(monkeypatch)
    # The first answer's record is refused, and its download ends before the other call
    # sent with it answers.
    late = FaultPlan([None, Fault.slow(0.5)])
    async with Emulator(KEY, faults=late) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], tmp_path / "out"), "--manifest"]
        run = await run_main(*args, str(manifest), "--concurrency", "2", env=env)
    assert run.returncode == 1, run.stderr
    assert f"Stopped: cannot write the manifest {manifest}" in run.stderr
    # The call still in flight when the manifest refused was paid for, not downloaded.
    assert [downloading(tally) for tally in shown] == ["0 downloading"]


async def test_a_manifest_that_refuses_a_recorded_result_stops_the_downloads_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    full = Path("/dev/full")  # every write fails: no space left on device
    if not full.exists():
        pytest.skip("no /dev/full here")
    paths = images(tmp_path / "in", 4)
    manifest = tmp_path / "run.jsonl"
    manifest.symlink_to(full)
    temp = tmp_path / "temp"  # where the lines the manifest refused are kept
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    async with Emulator(KEY) as emulator:
        async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client:
            responses = [await client.upscale(path.read_bytes()) for path in paths]
        recorded = [
            Recorded(
                source=Source(path, path.name),
                urls=tuple(image.url for image in response.data if image.url is not None),
                attempts=1,
                upscaled_at=None,
            )
            for path, response in zip(paths, responses, strict=True)
        ]
        job = Job(
            sources=[],
            request=UpscaleRequest(),
            out_dir=tmp_path / "out",
            recorded=recorded,
            manifest=manifest,
            rerun_hint="Run it again.",
        )
        status = await run_job(job, connector(emulator, 1), Stop(), view=View(progress="none"))
        downloads = emulator.stats.image_downloads
    assert status == 1
    assert f"Stopped: cannot write the manifest {manifest}" in capsys.readouterr().err
    # One download at a time: the first one's record was refused, so none started after it.
    assert downloads == 1


async def test_a_slow_download_does_not_hold_up_the_ones_after_it(tmp_path: Path) -> None:
    paths = images(tmp_path / "in", 5)
    sources = [Source(path, path.name) for path in paths]
    paid: list[str] = []
    finished: list[str] = []
    first_slow = FaultPlan([Fault.slow(1.0)])  # the first download asked for takes a second
    async with (
        Emulator(KEY, upscale=False, image_faults=first_slow) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=2) as client,
    ):
        await batch_of(
            client,
            emulator,
            sources,
            tmp_path / "out",
            on_paid=lambda outcome, downloading: paid.append(outcome.source.shown),
            on_finish=lambda outcome, downloaded: finished.append(outcome.source.shown),
        )
    assert sorted(finished) == sorted(paid) == [path.name for path in paths]
    # The slow download is one of the first two (two places); the batch took each next
    # download on as soon as one place was free, so the others all ended before it.
    assert finished[-1] in paid[:2]


async def test_a_failure_to_record_the_last_results_waits_for_the_downloads_under_way(
    tmp_path: Path,
) -> None:
    paths = images(tmp_path / "in", 2)
    sources = [Source(path, path.name) for path in paths]
    finished: list[str] = []

    def record(outcome: Outcome, downloaded: bool) -> None:
        finished.append(outcome.source.shown)
        if len(finished) == 1:
            raise OSError(28, "No space left on device")

    # Both downloads are under way once every input is answered; the second takes a second.
    slow_second = FaultPlan([None, Fault.slow(1.0)])
    async with (
        Emulator(KEY, upscale=False, image_faults=slow_second) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=2) as client,
    ):
        with pytest.raises(OSError, match="No space left on device"):
            await batch_of(client, emulator, sources, tmp_path / "out", on_finish=record)
    # The result paid for and under way was still downloaded and handed on, then the
    # failure raised.
    assert sorted(finished) == [path.name for path in paths]
