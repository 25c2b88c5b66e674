"""The emulator with one kind of fault only: ``503`` with ``Retry-After: 0``.

``python -m ideogram_async.testing --fault-rate R`` mixes several kinds of fault;
the cost-of-resilience workload wants exactly this one, which only a
:class:`~ideogram_async.testing.FaultPlan` can express. Run it as
``python -m benchmarks.emulator --fault-rate R [--latency S] [--seed N] [--no-upscale]``;
like the emulator's own command it prints a line ending with its base URL, then
serves on 127.0.0.1 until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from ideogram_async.testing import Emulator, Fault, FaultPlan

__all__ = ["main"]


async def serve(latency: float, fault_rate: float, seed: int, upscale: bool) -> None:
    """Run the emulator until SIGINT or SIGTERM."""
    plan = FaultPlan(rate=fault_rate, choices=[Fault.status(503, retry_after=0)], seed=seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(latency=latency, faults=plan, upscale=upscale, seed=seed) as emulator:
        print(f"emulator with 503 faults listening on {emulator.base_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.emulator``: parse the options and serve."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.emulator", description=__doc__)
    parser.add_argument("--fault-rate", type=float, required=True, help="share of 503 answers")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer [0]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws [0]")
    parser.add_argument("--no-upscale", dest="upscale", action="store_false", help="skip Pillow")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.latency, args.fault_rate, args.seed, args.upscale))


if __name__ == "__main__":
    main()
