"""The shared allowance's workloads: several processes on one allowance, and its cost.

A ``redis-server`` of the system runs on a free loopback port in a temporary folder,
without persistence, for the length of a workload (:func:`running_redis`, around
:class:`ideogram_async.testing.RedisServer`).
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

from ideogram_async.testing import RedisServer

from .allowance_worker import CostJob, RunJob, RunResult, job_command, parse_run
from .processes import ROOT, BenchmarkError, running_server
from .processes import _read_line as read_line
from .report import Compare, Row, Unit
from .worker import Measurement, parse_measurement

if TYPE_CHECKING:
    from .workloads import Context, Result

__all__ = ["acquire_cost", "many_processes", "run_together", "running_redis", "together"]

_READY_TIMEOUT = 10.0
_WORKER_TIMEOUT = 600.0
_ALLOWANCE = 10
"""The emulator's allowance, and every variant's configured bound."""
_PROCESSES = (1, 2, 4)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """Run ``redis-server`` on a free loopback port until the block ends."""
    if not RedisServer.installed():
        raise BenchmarkError("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server


def _run_cost(job: CostJob) -> Measurement:
    try:
        done = subprocess.run(
            job_command(job),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_WORKER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{job.limiter} limiter did not finish in time") from None
    if done.returncode != 0:
        raise BenchmarkError(
            f"{job.limiter} limiter exited with status {done.returncode}:\n"
            + done.stderr.decode(errors="replace").strip()
        )
    return parse_measurement(done.stdout.decode())


def _start_worker(job: RunJob) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        job_command(job),
        bufsize=0,  # unbuffered, so select() sees every byte not yet read
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def run_together(jobs: list[RunJob]) -> list[RunResult]:
    """Start one process per job, let them all go at once, and collect what they measured."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for job in jobs:
            processes.append(_start_worker(job))
        for process in processes:
            assert process.stdout is not None
            if read_line(process.stdout, process, _READY_TIMEOUT * 3).strip() != "ready":
                raise BenchmarkError("a worker did not get ready")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=_WORKER_TIMEOUT)
            if process.returncode != 0:
                raise BenchmarkError(
                    f"a worker exited with status {process.returncode}:\n"
                    + stderr.decode(errors="replace").strip()
                )
            result = parse_run(stdout.decode())
            if result.failures:
                raise BenchmarkError(f"{result.failures} requests failed: {result.first_error}")
            results.append(result)
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def together(results: list[RunResult], total: int) -> Measurement:
    """The workers' results as one measurement of ``total`` calls: 429s count as extra attempts.

    :func:`run_together` has already refused a run in which any request failed.
    """
    rejected = sum(result.rejected for result in results)
    return Measurement(
        wall=max(r.ended for r in results) - min(r.started for r in results),
        cpu=sum(result.cpu for result in results),
        rss_before=0,
        rss_peak=0,
        requests=total,
        failures=0,
        first_error=None,
        attempts=total + rejected,
        rejected=rejected,
    )


def _wall(run: Measurement) -> float:
    return run.wall


def many_processes(context: Context) -> Result:
    """7: one allowance, several worker processes: shared on Redis, or one limiter each."""
    sizes = context.sizes
    latency, total = sizes.shared_latency, sizes.shared_count
    server = ["-m", "ideogram_async.testing", "--port", "0", "--latency", str(latency)]
    server += ["--allowance", str(_ALLOWANCE), "--no-upscale"]
    runs: dict[str, list[Measurement]] = {}
    with running_redis() as redis, running_server(server) as url:
        for round_number in range(sizes.shared_rounds):
            variants = [(p, shared) for p in _PROCESSES for shared in (True, False)]
            shift = round_number % len(variants)
            for processes, shared in variants[shift:] + variants[:shift]:
                name = f"{processes} {'shared' if shared else 'local'}"
                key = f"bench-{uuid.uuid4().hex[:8]}"
                jobs = [
                    RunJob(
                        shared=shared,
                        redis_url=redis.url,
                        key=key,
                        base_url=url,
                        image=str(context.small_png),
                        count=total // processes,
                        num_images=1,
                        allowance=_ALLOWANCE,
                    )
                    for _ in range(processes)
                ]
                runs.setdefault(name, []).append(together(run_together(jobs), total))
    ideal = total / _ALLOWANCE * latency
    rows = []
    for processes in _PROCESSES:
        best_shared = min(runs[f"{processes} shared"], key=_wall)
        best_local = min(runs[f"{processes} local"], key=_wall)
        # The target is for the most processes; the fewer are reported.
        last = processes == _PROCESSES[-1]
        row = partial(Row, workload="7 many processes", baseline_name="own limiters")
        wall = best_shared.wall / ideal
        rejected = max(run.rejected for run in runs[f"{processes} shared"])
        rows += [
            row(
                metric=f"{processes} process(es): wall / ideal ({ideal:.1f} s)",
                unit=Unit.TIMES,
                library=wall,
                baseline=best_local.wall / ideal,
                target="<= 1.15x" if last else "report",
                met=wall <= 1.15 if last else None,
            ),
            row(
                metric=f"{processes} process(es): 429s, {total} calls (most of any round)",
                unit=Unit.REQUESTS,
                library=rejected,
                baseline=max(run.rejected for run in runs[f"{processes} local"]),
                compare=Compare.DIFFERENCE,
                target="0" if last else "report",
                met=rejected == 0 if last else None,
            ),
        ]
    return rows, runs


def acquire_cost(context: Context) -> Result:
    """8: acquire + release of one place, the Redis-backed allowance against the local one."""
    sizes = context.sizes
    count, concurrency = sizes.cost_count, sizes.cost_concurrency
    runs: dict[str, list[Measurement]] = {"redis": [], "local": []}
    server_cpu: list[float] = []
    with running_redis() as server:
        for round_number in range(sizes.rounds):
            order = ["redis", "local"] if round_number % 2 == 0 else ["local", "redis"]
            for limiter in order:
                job = CostJob(
                    limiter=limiter, redis_url=server.url, count=count, concurrency=concurrency
                )
                before = server.cpu()
                runs[limiter].append(_run_cost(job))
                if limiter == "redis":
                    server_cpu.append(server.cpu() - before)

    def best_ms(limiter: str, figure: str) -> float:
        return min(float(getattr(run, figure)) / run.requests * 1000 for run in runs[limiter])

    row = partial(Row, workload="8 acquire cost", unit=Unit.MILLISECONDS, baseline_name="local")
    return [
        row(
            metric=f"wall per acquire + release, {concurrency} tasks",
            library=best_ms("redis", "wall"),
            baseline=best_ms("local", "wall"),
        ),
        row(
            metric="client CPU per acquire + release",
            library=best_ms("redis", "cpu"),
            baseline=best_ms("local", "cpu"),
        ),
        row(
            metric="redis-server CPU per acquire + release",
            library=min(server_cpu) / count * 1000,
            baseline=0.0,
            compare=Compare.DIFFERENCE,
        ),
    ], runs
