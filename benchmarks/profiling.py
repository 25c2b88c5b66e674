"""Profile one client under cProfile: where its CPU goes, function by function.

``python -m benchmarks.profiling [--client library] [--count 2000] [--concurrency 64]``
runs the client in this process against the minimal server (in its own process), after
a short warm-up, and prints the CPU per request and the functions that cost the most.
It is how the bottlenecks in ``RESULTS.md`` were found: compare ``--client library``
with ``--client aiohttp``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from .clients import Client, run_client
from .images import write_png
from .processes import running_server, stop_on_sigterm

__all__ = ["main"]

_WARM_UP = 200


def main(argv: list[str] | None = None) -> None:
    """Parse the options, profile the client, print the report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("--client", type=Client, default=Client.LIBRARY, choices=list(Client))
    parser.add_argument("--count", type=int, default=2000, help="uploads [2000]")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight [64]")
    parser.add_argument("--latency", type=float, default=0.0, help="server latency, s [0]")
    parser.add_argument(
        "--sort", default="tottime", choices=["tottime", "cumulative"], help="[tottime]"
    )
    parser.add_argument("--top", type=int, default=30, help="functions shown [30]")
    args = parser.parse_args(argv)
    server = ["-m", "benchmarks.server", "--latency", str(args.latency)]
    with (
        stop_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="ideogram-bench-") as folder,
        running_server(server) as url,
    ):
        image = write_png(Path(folder) / "small.png")
        asyncio.run(run_client(args.client, url, image, _WARM_UP, args.concurrency))
        profile = cProfile.Profile()
        cpu = time.process_time()
        profile.enable()
        outcome = asyncio.run(run_client(args.client, url, image, args.count, args.concurrency))
        profile.disable()
        cpu = time.process_time() - cpu
    report = io.StringIO()
    pstats.Stats(profile, stream=report).sort_stats(args.sort).print_stats(args.top)
    print(
        f"{args.client}: {args.count} uploads, {outcome.failures} failed, "
        f"{cpu / args.count * 1000:.3f} ms CPU per request under the profiler"
    )
    print(report.getvalue())


if __name__ == "__main__":
    main()
