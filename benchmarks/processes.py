"""Child processes of a benchmark run: servers that are always stopped, and workers.

A server is started with :func:`running_server` and stopped when its ``with`` block
ends, however it ends (an error, Ctrl-C, or SIGTERM once :func:`stop_on_sigterm` is in
force). Each runs in a session of its own so that a Ctrl-C in the terminal reaches
only this process, which then stops it in order.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO

from .worker import Job, Measurement, job_command, parse_measurement

__all__ = ["BenchmarkError", "run_worker", "running_server", "stop_on_sigterm"]

ROOT = Path(__file__).resolve().parent.parent
"""The folder holding ``benchmarks``: children run there, so they import the same code."""
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_WORKER_TIMEOUT = 900.0


class BenchmarkError(RuntimeError):
    """A workload could not be measured: a process failed or a request failed."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` so that ``finally`` blocks stop the children."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ask ``process`` to stop, then kill it if it does not within the timeout."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _read_line(stream: IO[bytes], process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line ``process`` prints, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise BenchmarkError(f"the server did not start within {timeout:.0f}s")
            # One byte at a time: a buffered read could swallow what follows the line.
            byte = stream.read(1)
            if not byte:
                raise BenchmarkError(f"the server exited at start with status {process.wait()}")
            line += byte
    return line.decode()


def _drain(stream: IO[bytes]) -> None:
    """Read and drop what a server prints later, so a full pipe never blocks it."""
    while stream.read(65536):
        pass


@contextlib.contextmanager
def running_server(args: list[str]) -> Iterator[str]:
    """Run ``python <args>`` (a server that prints its base URL) and yield that URL.

    The server's stderr is kept in a temporary file and shown if it fails to start.
    """
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, *args],
            bufsize=0,  # unbuffered, so select() sees every byte not yet read
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
        drain: threading.Thread | None = None
        try:
            assert process.stdout is not None
            try:
                line = _read_line(process.stdout, process, _START_TIMEOUT)
            except BenchmarkError as error:
                _stop(process)
                errors.seek(0)
                detail = errors.read().decode(errors="replace").strip()
                raise BenchmarkError(f"{' '.join(args)}: {error}\n{detail}") from None
            drain = threading.Thread(target=_drain, args=(process.stdout,), daemon=True)
            drain.start()
            url = line.split()[-1]
            if not url.startswith("http://127.0.0.1:"):
                raise BenchmarkError(f"{' '.join(args)} printed no 127.0.0.1 URL: {line!r}")
            yield url
        finally:
            _stop(process)
            if drain is not None:
                drain.join(_STOP_TIMEOUT)  # the pipe is at its end once the server exited
            if process.stdout is not None:
                process.stdout.close()


def run_worker(job: Job, *, failures_allowed: bool = False) -> Measurement:
    """Run ``job`` in a fresh interpreter; raise :class:`BenchmarkError` if anything failed.

    With ``failures_allowed``, failed requests are a figure to report, not an error.
    """
    process = subprocess.Popen(
        job_command(job),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=_WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(
            f"{job.client} x{job.count} did not finish within {_WORKER_TIMEOUT:.0f}s"
        ) from None
    finally:
        _stop(process)
    if process.returncode != 0:
        raise BenchmarkError(
            f"{job.client} x{job.count} exited with status {process.returncode}:\n"
            + stderr.decode(errors="replace").strip()
        )
    measurement = parse_measurement(stdout.decode())
    if measurement.failures and not failures_allowed:
        raise BenchmarkError(
            f"{job.client}: {measurement.failures} of {measurement.requests} requests failed; "
            f"first: {measurement.first_error}"
        )
    return measurement
