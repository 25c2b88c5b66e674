"""The command line protects a newcomer's first run: it stops a run that cannot succeed,
reports each failure once, checks its output folder and manifest before sending, and
keeps the manifest exact across resumes and concurrent runs.

CLI runs are real subprocesses (see ``test_cli.py``) against an in-process emulator;
the pipeline's accounting is checked in-process.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ideogram_async import (
    APIConnectionError,
    BatchResult,
    IdeogramClient,
    RetryPolicy,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async.cli._inputs import Source
from ideogram_async.cli._manifest import Outcome
from ideogram_async.cli._pipeline import FailFast, run_batch
from ideogram_async.testing import Emulator, Fault, FaultPlan

from .test_cli import KEY, assert_clean, cli_env, run_cli, save_image, upscale_args


def dead_url() -> str:
    """The URL of a local port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def images(folder: Path, count: int) -> list[Path]:
    return [save_image(folder / f"img-{i:02d}.png", (8, 6), shade=i) for i in range(count)]


async def test_a_wrong_key_stops_the_run_after_the_calls_in_flight(tmp_path: Path) -> None:
    images(tmp_path / "in", 30)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], out)
        run = await run_cli(
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
    assert manifest.read_text() == ""  # nothing finished: every image is left to a rerun


async def test_a_dead_port_stops_the_run_at_the_first_refused_call(tmp_path: Path) -> None:
    images(tmp_path / "in", 30)
    url = dead_url()
    args = ["upscale", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--base-url", url]
    run = await run_cli(*args, "--concurrency", "2", "--retries", "0")
    assert run.returncode == 1, run.stderr
    assert_clean(run)
    assert run.stderr.count("Stopped:") == 1
    assert f"cannot reach the service at {url}" in run.stderr
    assert "Check --base-url (or IDEOGRAM_BASE_URL)" in run.stderr
    assert "30 not done" in run.stderr
    assert "FAILED" not in run.stdout  # not one line per image of the folder


async def refused_error(png: bytes) -> APIConnectionError:
    async with IdeogramClient(api_key=KEY, base_url=dead_url()) as client:
        try:
            await client.upscale(png, retry=RetryPolicy.no_retries())
        except APIConnectionError as error:
            return error
    raise AssertionError("a dead port answered")


def result(error: Exception | None) -> BatchResult:
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


async def test_each_failed_image_is_reported_once(tmp_path: Path) -> None:
    images(tmp_path / "in", 4)
    plan = FaultPlan(rate=1.0, choices=[Fault.status(503)])
    async with Emulator(KEY, faults=plan) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_cli(*args, "--retries", "1")
        assert emulator.stats.requests == 8
    assert run.returncode == 1, run.stderr
    assert_clean(run)
    everything = run.stdout + run.stderr
    assert everything.count("FAILED") == 4
    assert "giving up" not in everything
    assert "Done: 0 of 4 image(s) upscaled, 4 failed" in run.stdout
    assert "Results:" not in run.stdout  # nothing to look at


async def test_in_flight_counts_the_upscale_calls_concurrency_bounds(tmp_path: Path) -> None:
    paths = images(tmp_path / "in", 12)
    sources = [Source(path, path.name) for path in paths]
    in_flight, peak, finished = 0, 0, []

    def started() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

    def answered(ok: bool) -> None:
        nonlocal in_flight
        in_flight -= 1

    def done(outcome: Outcome, downloaded: bool) -> None:
        finished.append(outcome.ok and downloaded)

    async with (
        Emulator(KEY, upscale=False) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, max_concurrency=3) as client,
    ):
        emulator.pause()
        batch = asyncio.create_task(
            run_batch(
                client,
                sources,
                UpscaleRequest(),
                tmp_path / "out",
                fail_fast=FailFast(emulator.base_url, official=False),
                on_start=started,
                on_answer=answered,
                on_finish=done,
            )
        )
        await emulator.wait_in_flight(3)
        assert in_flight == 3  # not 6: nothing waits for a slot while counted as in flight
        emulator.resume()
        await batch
    assert peak == 3
    assert finished == [True] * 12
