"""The six workloads of the benchmark: what runs against what, and the rows they yield.

Each workload starts its servers, then runs its variants (the library and the
baselines) round by round, alternating them within each round and rotating who goes
first, so that drift on the machine hits them all alike. Every figure is the best
(the lowest) of the rounds. A failed request or a crashed process raises
:class:`~benchmarks.processes.BenchmarkError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from .celery_workers import celery_workers
from .clients import NAIVE_ATTEMPTS, Client
from .contention import contention
from .processes import run_worker, running_server
from .report import Compare, Row, Unit
from .shared import acquire_cost, many_processes
from .worker import Job, Measurement

__all__ = ["ALLOWANCE", "FULL", "MB", "QUICK", "WORKLOADS", "Context", "Sizes", "runs_json"]

MB = 1024 * 1024
"""Bytes in the megabyte of the table (MiB)."""
ALLOWANCE = 10
"""Images in flight the emulator of workload 6 allows (the service's default)."""


@attrs.frozen(kw_only=True)
class Sizes:
    """How big each workload is, and how many rounds it runs."""

    rounds: int
    latency_count: int
    latency_concurrency: int
    latency: float
    cpu_count: int
    cpu_concurrency: int
    stream_count: int
    stream_file_mb: int
    fanout_small: int
    fanout_large: int
    fanout_concurrency: int
    fanout_rounds: int
    fault_rate: float
    allowance_count: int
    allowance_latency: float
    allowance_rounds: int
    cost_count: int
    cost_concurrency: int
    shared_count: int
    shared_latency: float
    shared_rounds: int
    contention_count: int
    contention_latency: float
    contention_hold: float
    celery_count: int
    celery_latency: float
    celery_rounds: int

    def describe(self) -> list[str]:
        """One line per workload, then the rounds: the header of the table."""
        return [
            f"workload 1 latency-bound: N={self.latency_count}, C={self.latency_concurrency}, "
            f"latency {self.latency * 1000:.0f} ms (emulator, upscaling a 32x32 PNG)",
            f"workload 2 client CPU: N={self.cpu_count}, C={self.cpu_concurrency}, latency 0 "
            f"(minimal server)",
            f"workload 3 streaming memory: {self.stream_count} concurrent uploads of a "
            f"{self.stream_file_mb} MB PNG (minimal server)",
            f"workload 4 fan-out memory: upscale_many over {self.fanout_small:,} and "
            f"{self.fanout_large:,} inputs, C={self.fanout_concurrency} (minimal server)",
            f"workload 5 resilience: workload 1 with {self.fault_rate:.0%} 503 + "
            f"Retry-After: 0 (emulator with a FaultPlan), against aiohttp with "
            f"{NAIVE_ATTEMPTS} attempts a request",
            f"workload 6 allowance: {self.allowance_count} calls ({self.allowance_count // 2} "
            f"of num_images=4) against an allowance of {ALLOWANCE} images, "
            f"{self.allowance_latency * 1000:.0f} ms per request (emulator; best of "
            f"{self.allowance_rounds} rounds)",
            f"workload 7 many processes: {self.shared_count} requests split over 1, 2 and 4 "
            f"processes, latency {self.shared_latency * 1000:.0f} ms, emulator allowance 10: "
            f"one RedisAllowance(10) vs a limiter of 10 each (best of {self.shared_rounds} rounds)",
            f"workload 8 acquire cost: {self.cost_count} empty hold(1) blocks by "
            f"{self.cost_concurrency} tasks, shared allowance on a local redis-server vs local",
            "workload 9 telemetry: workload 2 with the OpenTelemetry SDK and in-memory "
            "exporters (and aiohttp's own instrumentation) vs tracing off",
            f"workload 10 contention, latency {self.contention_latency * 1000:.0f} ms, "
            f"emulator allowance 10: (a) another client holds all 10 places for "
            f"{self.contention_hold:.1f} s while this one starts 20 calls; (b) "
            f"{self.contention_count} calls over 4 processes with a LocalAllowance(10) each; "
            f"(c) the same sharing one RedisAllowance(10); (d) {self.contention_count} calls, "
            f"one process, bound 40, 429s without the number (one round each)",
            f"workload 11 celery workers: {self.celery_count} images, latency "
            f"{self.celery_latency * 1000:.0f} ms, emulator allowance 10: 3 celery workers "
            f"(threads pool) sharing it on Redis vs one process (best of {self.celery_rounds})",
            f"best of {self.rounds} rounds ({self.fanout_rounds} for workload 4), "
            f"variants alternating within each round",
        ]


FULL = Sizes(
    rounds=3,
    latency_count=1000,
    latency_concurrency=32,
    latency=0.1,
    cpu_count=2000,
    cpu_concurrency=64,
    stream_count=32,
    stream_file_mb=20,
    fanout_small=10_000,
    fanout_large=100_000,
    fanout_concurrency=32,
    fanout_rounds=2,
    fault_rate=0.2,
    allowance_count=200,
    allowance_latency=0.2,
    allowance_rounds=2,
    cost_count=5000,
    cost_concurrency=10,
    shared_count=400,
    shared_latency=0.1,
    shared_rounds=3,
    contention_count=240,
    contention_latency=0.1,
    contention_hold=3.0,
    celery_count=300,
    celery_latency=0.2,
    celery_rounds=2,
)
"""The sizes of the full run."""

QUICK = Sizes(
    rounds=2,
    latency_count=200,
    latency_concurrency=32,
    latency=0.05,
    cpu_count=500,
    cpu_concurrency=64,
    stream_count=16,
    stream_file_mb=8,
    fanout_small=1_000,
    fanout_large=5_000,
    fanout_concurrency=32,
    fanout_rounds=1,
    fault_rate=0.2,
    allowance_count=20,
    allowance_latency=0.05,
    allowance_rounds=1,
    cost_count=500,
    cost_concurrency=10,
    shared_count=120,
    shared_latency=0.05,
    shared_rounds=1,
    contention_count=80,
    contention_latency=0.05,
    contention_hold=1.0,
    celery_count=60,
    celery_latency=0.2,
    celery_rounds=1,
)
"""Reduced sizes for the CI smoke test (about half a minute on two cores)."""


@attrs.frozen(kw_only=True)
class Context:
    """What every workload needs: the sizes and the files to upload."""

    sizes: Sizes
    small_png: Path
    large_png: Path


Runs = dict[str, list[Measurement]]
"""Each variant's measurements, one per round."""
Result = tuple[list[Row], Runs]
"""A workload's rows, and the measurements they were drawn from."""


def runs_json(runs: Runs) -> dict[str, list[dict[str, Any]]]:
    """Each variant's measurements as plain data."""
    return {
        name: [attrs.asdict(m) | {"rss_growth": m.rss_growth} for m in measurements]
        for name, measurements in runs.items()
    }


def _alternate(jobs: Mapping[str, Job], rounds: int, *, failures_allowed: bool = False) -> Runs:
    """Run every job once per round, rotating the order from round to round."""
    names = list(jobs)
    runs: Runs = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(run_worker(jobs[name], failures_allowed=failures_allowed))
    return runs


def _best(runs: list[Measurement], figure: Callable[[Measurement], float]) -> float:
    return min(figure(measurement) for measurement in runs)


def _wall(measurement: Measurement) -> float:
    return measurement.wall


def _cpu_ms(measurement: Measurement) -> float:
    return measurement.cpu / measurement.requests * 1000


def _growth_mb(measurement: Measurement) -> float:
    return measurement.rss_growth / MB


def _minimal_server() -> list[str]:
    return ["-m", "benchmarks.server"]


def _emulator(latency: float) -> list[str]:
    return ["-m", "ideogram_async.testing", "--port", "0", "--latency", str(latency)]


def _job(url: str, image: Path, count: int, concurrency: int, client: Client) -> Job:
    return Job(client=client, base_url=url, image=str(image), count=count, concurrency=concurrency)


_GATHER_CLIENTS = (Client.LIBRARY, Client.AIOHTTP, Client.HTTPX)


def _gather_jobs(url: str, image: Path, count: int, concurrency: int) -> dict[str, Job]:
    return {client: _job(url, image, count, concurrency, client) for client in _GATHER_CLIENTS}


def latency_bound(context: Context) -> Result:
    """1: wall time of N uploads, C in flight, against a server that takes a while.

    The hand-written loop holds C requests in flight from its first one: its author
    knows the organization's allowance is C (at least) and that no other program uses
    it. The library's counterpart, and the figure the target is set on, is the bound
    ``docs/allowance.md`` tells such a user to set, fixed at C from the first request
    (``allowance=C, adaptive=False``). ``allowance=C`` alone is a maximum the bound grows
    into from 10 (slow start, so that a number above the real allowance is not sent
    at once); its wall time is reported beside it, so the cost of the slow start shows.
    """
    sizes = context.sizes
    count, concurrency = sizes.latency_count, sizes.latency_concurrency
    clients = (Client.LIBRARY_FIXED, Client.LIBRARY, Client.AIOHTTP, Client.HTTPX)
    with running_server(_emulator(sizes.latency)) as url:
        jobs: dict[str, Job] = {
            client: _job(url, context.small_png, count, concurrency, client) for client in clients
        }
        runs = _alternate(jobs, sizes.rounds)
    library, slow_start, handwritten, other = (_best(runs[c], _wall) for c in clients)
    ideal = count / concurrency * sizes.latency
    row = partial(Row, workload="1 latency-bound")
    wall = partial(row, unit=Unit.SECONDS, library=library)
    fixed = f"wall time, bound fixed at {concurrency}"
    return [
        wall(
            metric=fixed,
            baseline_name="aiohttp",
            baseline=handwritten,
            target="<= 1.00x",
            met=library <= handwritten,
        ),
        wall(metric=fixed, baseline_name="httpx", baseline=other),
        wall(
            metric=f"wall time, allowance={concurrency} (slow start from 10)",
            library=slow_start,
            baseline_name="aiohttp",
            baseline=handwritten,
        ),
        row(
            metric=f"wall / ideal N/C*latency ({ideal:.3f} s), bound fixed",
            unit=Unit.TIMES,
            library=library / ideal,
            baseline_name="aiohttp",
            baseline=handwritten / ideal,
        ),
    ], runs


def client_cpu(context: Context) -> Result:
    """2: client CPU per request when the server answers at once."""
    sizes = context.sizes
    with running_server(_minimal_server()) as url:
        runs = _alternate(
            _gather_jobs(url, context.small_png, sizes.cpu_count, sizes.cpu_concurrency),
            sizes.rounds,
        )
    library, handwritten, other = (_best(runs[c], _cpu_ms) for c in _GATHER_CLIENTS)
    row = partial(
        Row,
        workload="2 client CPU",
        metric="CPU per request",
        unit=Unit.MILLISECONDS,
        library=library,
    )
    return [
        row(
            baseline_name="aiohttp",
            baseline=handwritten,
            target="<= 1.00x",
            met=library <= handwritten,
        ),
        row(baseline_name="httpx", baseline=other),
    ], runs


def streaming_memory(context: Context) -> Result:
    """3: peak memory of concurrent uploads of a large file, streamed or read whole."""
    sizes = context.sizes
    count = sizes.stream_count
    clients = (Client.LIBRARY, Client.LIBRARY_BYTES, Client.AIOHTTP, Client.HTTPX)
    with running_server(_minimal_server()) as url:
        jobs: dict[str, Job] = {
            client: _job(url, context.large_png, count, count, client) for client in clients
        }
        runs = _alternate(jobs, sizes.rounds)
    library, whole, handwritten, other = (_best(runs[c], _growth_mb) for c in clients)
    row = partial(
        Row,
        workload="3 streaming memory",
        metric="peak RSS growth",
        unit=Unit.MEGABYTES,
        library=library,
    )
    return [
        row(
            baseline_name="library given bytes",
            baseline=whole,
            target="library < 64 MB",
            met=library < 64,
        ),
        row(baseline_name="aiohttp", baseline=handwritten),
        row(baseline_name="httpx", baseline=other),
    ], runs


def fanout_memory(context: Context) -> Result:
    """4: ``upscale_many``'s memory must not grow with the length of its input."""
    sizes = context.sizes
    small, large = f"{sizes.fanout_small:,} inputs", f"{sizes.fanout_large:,} inputs"
    with running_server(_minimal_server()) as url:
        jobs = {
            label: _job(
                url, context.small_png, count, sizes.fanout_concurrency, Client.LIBRARY_MANY
            )
            for label, count in ((small, sizes.fanout_small), (large, sizes.fanout_large))
        }
        runs = _alternate(jobs, sizes.fanout_rounds)
    grown_large, grown_small = _best(runs[large], _growth_mb), _best(runs[small], _growth_mb)
    return [
        Row(
            workload="4 fan-out memory",
            metric=f"peak RSS growth, {large}",
            unit=Unit.MEGABYTES,
            library=grown_large,
            baseline_name=small,
            baseline=grown_small,
            compare=Compare.DIFFERENCE,
            target="difference < 20 MB",
            met=grown_large - grown_small < 20,
        )
    ], runs


RESILIENCE_WALL_BOUND = 1.5
"""How much longer than the hand-written retry loop the library may take under faults."""


def resilience(context: Context) -> Result:
    """5: workload 1 with injected ``503`` + ``Retry-After: 0``, against a hand-written retry.

    The baseline is the aiohttp loop with the retry people write (any failure retried
    at once, three attempts in all), on the same faulty server in the same run. The
    library must lose no more requests than it, all of them none, and take at most
    :data:`RESILIENCE_WALL_BOUND` times its wall time. The fault-free run is reported.
    """
    sizes = context.sizes
    count, concurrency = sizes.latency_count, sizes.latency_concurrency
    faulty = ["-m", "benchmarks.emulator", "--latency", str(sizes.latency)]
    faulty += ["--fault-rate", str(sizes.fault_rate)]
    naive = f"aiohttp + {NAIVE_ATTEMPTS} attempts"
    with running_server(_emulator(sizes.latency)) as clean, running_server(faulty) as url:
        jobs = {
            "library": _job(url, context.small_png, count, concurrency, Client.LIBRARY),
            naive: _job(url, context.small_png, count, concurrency, Client.AIOHTTP_RETRY),
            "no faults": _job(clean, context.small_png, count, concurrency, Client.LIBRARY),
        }
        runs = _alternate(jobs, sizes.rounds, failures_allowed=True)
    # The library's worst round against the baseline's best.
    library_ok = min(_successes(m) for m in runs["library"])
    naive_ok = max(_successes(m) for m in runs[naive])
    library_wall, naive_wall = _best(runs["library"], _wall), _best(runs[naive], _wall)
    faults = f"{sizes.fault_rate:.0%} 503s"
    return [
        Row(
            workload="5 resilience",
            metric=f"requests that succeeded of {count}, {faults}",
            unit=Unit.REQUESTS,
            library=library_ok,
            baseline_name=naive,
            baseline=naive_ok,
            compare=Compare.DIFFERENCE,
            target=f"all {count}, >= baseline",
            met=library_ok == count and library_ok >= naive_ok,
        ),
        Row(
            workload="5 resilience",
            metric=f"wall time, {faults}",
            unit=Unit.SECONDS,
            library=library_wall,
            baseline_name=naive,
            baseline=naive_wall,
            target=f"<= {RESILIENCE_WALL_BOUND}x",
            met=library_wall <= RESILIENCE_WALL_BOUND * naive_wall,
        ),
        Row(
            workload="5 resilience",
            metric=f"wall time, {faults} vs none",
            unit=Unit.SECONDS,
            library=library_wall,
            baseline_name="no faults",
            baseline=_best(runs["no faults"], _wall),
        ),
    ], runs


def _successes(measurement: Measurement) -> int:
    return measurement.requests - measurement.failures


@attrs.frozen
class _Case:
    """One case of workload 6: the calls, their images, the client's bound, the 429 body."""

    label: str
    calls: int
    images: int
    bound: int
    body: str
    wall_target: float | None = None
    max_rejected: float | None = None
    """The most 429s the library may receive, as a share of the calls."""


def _allowance_emulator(latency: float, body: str) -> list[str]:
    return [
        *_emulator(latency),
        "--no-upscale",
        "--allowance",
        str(ALLOWANCE),
        "--allowance-body",
        body,
    ]


def allowance(context: Context) -> Result:
    """6: keeping a 10-image allowance full, against a fixed semaphore and plain backoff."""
    sizes = context.sizes
    count, latency = sizes.allowance_count, sizes.allowance_latency
    over = 4 * ALLOWANCE
    cases = [
        _Case("defaults", count, 1, ALLOWANCE, "full"),
        _Case("num_images=4", count // 2, 4, ALLOWANCE, "full", max_rejected=0.0),
        _Case(f"bound {over}", count, 1, over, "full", wall_target=1.10, max_rejected=0.10),
        _Case(f"bound {over}, no number", count, 1, over, "no-number", wall_target=1.30),
    ]
    clients = (Client.LIBRARY, Client.AIOHTTP_BACKOFF)
    with (
        running_server(_allowance_emulator(latency, "full")) as full,
        running_server(_allowance_emulator(latency, "no-number")) as bare,
    ):
        jobs = {
            f"{case.label} {client}": Job(
                client=client,
                base_url=full if case.body == "full" else bare,
                image=str(context.small_png),
                count=case.calls,
                concurrency=case.bound,
                num_images=case.images,
            )
            for case in cases
            for client in clients
        }
        runs = _alternate(jobs, sizes.allowance_rounds)
    rows = []
    for case in cases:
        ideal = case.calls * case.images / ALLOWANCE * latency
        library, handwritten = (
            min(runs[f"{case.label} {client}"], key=_wall) for client in clients
        )
        row = partial(Row, workload="6 allowance", baseline_name="aiohttp+backoff")
        wall = library.wall / ideal
        rows.append(
            row(
                metric=f"{case.label}: wall / ideal ({ideal:.1f} s)",
                unit=Unit.TIMES,
                library=wall,
                baseline=handwritten.wall / ideal,
                target="report" if case.wall_target is None else f"<= {case.wall_target:.2f}x",
                met=None if case.wall_target is None else wall <= case.wall_target,
            )
        )
        limit = None if case.max_rejected is None else case.max_rejected * case.calls
        rows.append(
            row(
                metric=f"{case.label}: 429s, {case.calls} calls",
                unit=Unit.REQUESTS,
                library=library.rejected,
                baseline=handwritten.rejected,
                compare=Compare.DIFFERENCE,
                target="report" if limit is None else f"<= {limit:.0f}",
                met=None if limit is None else library.rejected <= limit,
            )
        )
    return rows, runs


def telemetry_cost(context: Context) -> Result:
    """9: client CPU per request with tracing on (SDK, in-memory exporters) vs off."""
    sizes = context.sizes
    clients = (Client.LIBRARY, Client.LIBRARY_TRACED, Client.LIBRARY_INSTRUMENTED)
    with running_server(_minimal_server()) as url:
        jobs: dict[str, Job] = {
            client: _job(url, context.small_png, sizes.cpu_count, sizes.cpu_concurrency, client)
            for client in clients
        }
        runs = _alternate(jobs, sizes.rounds)
    off, traced, instrumented = (_best(runs[client], _cpu_ms) for client in clients)
    row = partial(
        Row, workload="9 telemetry", unit=Unit.MILLISECONDS, baseline_name="off", baseline=off
    )
    return [
        row(metric="CPU per request, tracing on", library=traced),
        row(metric="CPU per request, on + aiohttp spans", library=instrumented),
    ], runs


WORKLOADS: dict[str, Callable[[Context], Result]] = {
    "latency": latency_bound,
    "cpu": client_cpu,
    "streaming": streaming_memory,
    "fanout": fanout_memory,
    "resilience": resilience,
    "allowance": allowance,
    "processes": many_processes,
    "acquire": acquire_cost,
    "telemetry": telemetry_cost,
    "contention": contention,
    "celery": celery_workers,
}
"""Every workload by its short name, in the order they run."""
