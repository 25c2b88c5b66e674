"""Workload 11: Celery workers sharing one allowance against one process with it alone.

The same N images (distinct files, as a real job has) are upscaled and downloaded:

- **3 celery workers**: real ``celery -A ideogram_async.celery worker --pool threads``
  processes on one ``redis-server`` (broker, shared allowance, records); the job is sent
  with :func:`ideogram_async.celery.enqueue` and timed from then until the last image's
  event. The workers are started and warmed up (one small job) before the clock starts.
- **one process**: ``IdeogramClient(allowance=A)`` with ``upscale_many`` and a download
  per result (what ``ideogram-async upscale`` does), in a fresh interpreter.

The emulator enforces the allowance A (``--no-upscale``; a fixed latency per request)
and runs in a thread of this process, so its counters are read here: upscale requests
per image and 429s. Ideal is N / A x latency.

``python -m benchmarks.celery_workers one URL FOLDER OUT ALLOWANCE`` is the one-process
variant; it prints its wall time as JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ideogram_async import IdeogramClient
from ideogram_async.testing import Emulator

from .images import write_png
from .processes import ROOT, BenchmarkError
from .report import Compare, Row, Unit
from .shared import running_redis
from .worker import Measurement

if TYPE_CHECKING:
    from .workloads import Context, Result

__all__ = ["celery_workers"]

_ALLOWANCE = 10
_WORKERS = 3
_KEY = "test-key"
_TIMEOUT = 600.0


@contextmanager
def _emulator(latency: float) -> Iterator[Emulator]:
    """The emulator (allowance :data:`_ALLOWANCE`, no upscaling) on a loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = Emulator(api_key=_KEY, latency=latency, allowance=_ALLOWANCE, upscale=False)
    try:
        asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(_TIMEOUT)
        yield emulator
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_png(folder / f"img{index:05d}.png", side=16) for index in range(count)]


def _worker_env(redis_url: str, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    env.update(
        IDEOGRAM_BROKER_URL=redis_url,
        IDEOGRAM_ALLOWANCE=str(_ALLOWANCE),
        IDEOGRAM_BASE_URL=base_url,
        IDEOGRAM_API_KEY=_KEY,
    )
    return env


def threads_per_worker(allowance: int, workers: int) -> int:
    """Twice each worker's share of the allowance: a thread also waits while it downloads."""
    return 2 * math.ceil(allowance / workers)


@contextmanager
def _workers(redis_url: str, base_url: str, logs: Path) -> Iterator[None]:
    threads = threads_per_worker(_ALLOWANCE, _WORKERS)
    processes = []
    try:
        for number in range(_WORKERS):
            command = [sys.executable, "-m", "celery", "-A", "ideogram_async.celery", "worker"]
            command += ["--pool", "threads", "--concurrency", str(threads), "-n", f"w{number}@%h"]
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            command += ["--loglevel", "WARNING"]
            with (logs / f"w{number}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=_worker_env(redis_url, base_url),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _run_job(redis_url: str, images: list[Path], out: Path) -> tuple[float, int]:
    """Enqueue ``images``, wait for every one; the wall time, and how many did not succeed."""
    from ideogram_async.celery import app, enqueue, open_store, upscale_image

    app.conf.update(broker_url=redis_url)
    store = open_store(redis_url)
    job = uuid.uuid4().hex[:16]
    outcomes: dict[int, str] = {}
    try:
        started = time.perf_counter()
        await enqueue(upscale_image, store, job, [(p, p.stem) for p in images], out)
        after = "0"
        async with asyncio.timeout(_TIMEOUT):
            while len(outcomes) < len(images):
                for event in await store.events(job, after, block=2.0):
                    after = event.id
                    outcomes.setdefault(event.index, event.outcome)
        wall = time.perf_counter() - started
    finally:
        await store.aclose()
    return wall, sum(outcome != "ok" for outcome in outcomes.values())


def _one_process(base_url: str, folder: Path, out: Path) -> float:
    """Run the one-process variant in a fresh interpreter; its wall time."""
    command = [sys.executable, "-m", "benchmarks.celery_workers", "one", base_url]
    command += [str(folder), str(out), str(_ALLOWANCE)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, timeout=_TIMEOUT, check=False, text=True
    )
    if done.returncode != 0:
        raise BenchmarkError(f"the one-process run failed:\n{done.stderr.strip()}")
    wall: float = json.loads(done.stdout)["wall"]
    return wall


def _measurement(wall: float, count: int, emulator: Emulator) -> Measurement:
    stats = emulator.stats
    return Measurement(
        wall=wall,
        cpu=0.0,
        rss_before=0,
        rss_peak=0,
        requests=count,
        failures=0,
        first_error=None,
        attempts=stats.requests,
        rejected=stats.rejected_over_allowance,
    )


def celery_workers(context: Context) -> Result:
    """11: three Celery workers on one shared allowance vs one process with it."""
    sizes = context.sizes
    count, latency = sizes.celery_count, sizes.celery_latency
    runs: dict[str, list[Measurement]] = {"3 celery workers": [], "one process": []}
    with (
        tempfile.TemporaryDirectory(prefix="ideogram-bench-celery-") as temp,
        running_redis() as redis,
        _emulator(latency) as emulator,
    ):
        folder = Path(temp)
        logs = folder / "logs"
        logs.mkdir()
        with _workers(redis.url, emulator.base_url, logs):
            warm = _images(folder / "warm", _ALLOWANCE * 2)
            asyncio.run(_run_job(redis.url, warm, folder / "warm-out"))
            for round_number in range(sizes.celery_rounds):
                images = _images(folder / f"in{round_number}", count)
                order = ["celery", "one"] if round_number % 2 == 0 else ["one", "celery"]
                for variant in order:
                    emulator.reset_stats()
                    out = folder / f"out-{variant}-{round_number}"
                    if variant == "celery":
                        wall, failed = asyncio.run(_run_job(redis.url, images, out))
                        if failed:
                            raise BenchmarkError(f"{failed} of {count} images did not succeed")
                        runs["3 celery workers"].append(_measurement(wall, count, emulator))
                    else:
                        wall = _one_process(emulator.base_url, folder / f"in{round_number}", out)
                        runs["one process"].append(_measurement(wall, count, emulator))
                    if len(list(out.iterdir())) != count:
                        raise BenchmarkError(f"{variant}: not every image has its output")
    ideal = count / _ALLOWANCE * latency
    best = {name: min(measured, key=lambda m: m.wall) for name, measured in runs.items()}
    workers, one = best["3 celery workers"], best["one process"]
    row = partial(Row, workload="11 celery workers", baseline_name="one process")
    ratio = workers.wall / ideal
    refused = max(m.rejected for m in runs["3 celery workers"])
    return [
        row(
            metric=f"wall / ideal ({ideal:.1f} s)",
            unit=Unit.TIMES,
            library=ratio,
            baseline=one.wall / ideal,
            target="<= 1.2x",
            met=ratio <= 1.2,
        ),
        row(
            metric="upscale requests per image",
            unit=Unit.TIMES,
            library=max(m.attempts for m in runs["3 celery workers"]) / count,
            baseline=max(m.attempts for m in runs["one process"]) / count,
        ),
        row(
            metric=f"429s, {count} images (most of any round)",
            unit=Unit.REQUESTS,
            library=refused,
            baseline=max(m.rejected for m in runs["one process"]),
            compare=Compare.DIFFERENCE,
            target="0",
            met=refused == 0,
        ),
    ], runs


async def _one(base_url: str, images: list[Path], out: Path, allowance: int) -> float:
    started = time.perf_counter()
    async with IdeogramClient(api_key=_KEY, base_url=base_url, allowance=allowance) as client:
        downloads = []
        async with client.upscale_many(images) as results:
            async for result in results:
                if result.response is None:
                    raise BenchmarkError(f"upscale failed: {result.error}")
                image = result.response.data[0]
                target = out / f"{images[result.index].stem}.upscaled"
                downloads.append(asyncio.create_task(client.download(image, target)))
        await asyncio.gather(*downloads)
    return time.perf_counter() - started


def main() -> None:
    """``python -m benchmarks.celery_workers one URL FOLDER OUT ALLOWANCE``."""
    _, base_url, folder, out, allowance = sys.argv[1:]
    images = sorted(Path(folder).iterdir())
    wall = asyncio.run(_one(base_url, images, Path(out), int(allowance)))
    print(json.dumps({"wall": wall}))


if __name__ == "__main__":
    main()
