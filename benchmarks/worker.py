"""One measured client run, in a process of its own so its CPU and memory readings are clean.

``python -m benchmarks.worker '<Job as JSON>'`` imports everything, settles, then
measures one :func:`~benchmarks.clients.run_client` call: wall time, the process's
CPU time (all threads, user + system) and its peak resident memory over the run
(the kernel's high-water mark, reset just before the run starts). It prints one
:class:`Measurement` as JSON on stdout. Failed requests are reported, not raised;
an exception exits non-zero with its traceback on stderr.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path

import attrs
import cattrs

from .clients import Client, run_client

__all__ = ["Job", "Measurement", "job_command", "parse_measurement"]

_converter = cattrs.Converter()


@attrs.frozen(kw_only=True)
class Job:
    """What a worker runs: ``count`` uploads of ``image`` by ``client``."""

    client: Client
    base_url: str
    image: str
    count: int
    concurrency: int
    num_images: int = 1


@attrs.frozen(kw_only=True)
class Measurement:
    """What a worker measured for one run."""

    wall: float
    """Seconds from the first request to the last answer."""
    cpu: float
    """CPU seconds of the whole client process (every thread) over the run."""
    rss_before: int
    """Resident bytes just before the run."""
    rss_peak: int
    """Peak resident bytes during the run."""
    requests: int
    failures: int
    first_error: str | None
    attempts: int
    """HTTP attempts made, retries included."""
    rejected: int
    """429 answers received."""

    @property
    def rss_growth(self) -> int:
        """Peak resident bytes above the level before the run."""
        return self.rss_peak - self.rss_before


def job_command(job: Job) -> list[str]:
    """The command line that runs ``job`` in a fresh interpreter."""
    return [sys.executable, "-m", "benchmarks.worker", json.dumps(_converter.unstructure(job))]


def parse_measurement(stdout: str) -> Measurement:
    """Read the :class:`Measurement` a worker printed as its last line."""
    return _converter.structure(json.loads(stdout.strip().splitlines()[-1]), Measurement)


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _peak_rss(reset: bool) -> int:
    """Peak resident bytes since the reset, or since the process started without one."""
    peak = _status_bytes("VmHWM") if reset else None
    if peak is None:
        # ru_maxrss cannot be reset, so it is an upper bound; it is in bytes on macOS,
        # in kB elsewhere.
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024
    return peak


async def _measure(job: Job) -> Measurement:
    gc.collect()
    reset = _reset_peak()
    rss_before = _status_bytes("VmRSS") or _peak_rss(reset)
    cpu_started = time.process_time()
    started = time.perf_counter()
    outcome = await run_client(
        job.client, job.base_url, Path(job.image), job.count, job.concurrency, job.num_images
    )
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return Measurement(
        wall=wall,
        cpu=cpu,
        rss_before=rss_before,
        rss_peak=_peak_rss(reset),
        requests=job.count,
        failures=outcome.failures,
        first_error=outcome.first_error,
        attempts=outcome.attempts,
        rejected=outcome.rejected,
    )


def main(argv: list[str]) -> None:
    """Run the job given as JSON in ``argv[0]`` and print its measurement."""
    job = _converter.structure(json.loads(argv[0]), Job)
    measurement = asyncio.run(_measure(job))
    print(json.dumps(_converter.unstructure(measurement)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
