"""Run the emulator as a server from a shell (``python -m ideogram_async.testing``).

:func:`serve_main` is that command; another command line (``ideogram-async serve``)
hands it its arguments. :func:`run_server` serves an :class:`Emulator` until SIGINT or
SIGTERM, for a script of one's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import shlex
import signal
import sys

from ._emulator import Emulator
from ._faults import FaultPlan

__all__ = ["run_server", "serve_main"]


def _latency(text: str) -> float | tuple[float, float]:
    """Parse ``S`` (fixed seconds) or ``MIN,MAX`` (a uniform range)."""
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1 and values[0] >= 0:
        return values[0]
    if len(values) == 2 and 0 <= values[0] <= values[1]:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"expected SECONDS or MIN,MAX (seconds >= 0), got {text!r}")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return seconds


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text!r}")
    return rate


def _places(text: str) -> int:
    try:
        places = int(text)
    except ValueError:
        places = 0
    if places < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of images >= 1, got {text!r}")
    return places


def _parser(prog: str) -> argparse.ArgumentParser:
    """The emulator's options: ``--port``, ``--host``, ``--api-key``, ..."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a local emulator of the Ideogram upscale service."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [%(default)s]")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on, 0 for any free one [%(default)s]"
    )
    parser.add_argument(
        "--api-key", default="test-key", help="the key clients must send [%(default)s]"
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default=0.0,
        metavar="S|MIN,MAX",
        help="delay of each answer in seconds, fixed or a random range [%(default)s]",
    )
    parser.add_argument(
        "--fault-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="probability of a random fault (503, 500, 429, dropped connection, HTML 502) "
        "per upscale request [%(default)s]",
    )
    parser.add_argument(
        "--allowance",
        type=_places,
        metavar="N",
        help="images in flight allowed at once, as the service enforces per organization: a "
        "request holds num_images places; over it, a 429 inflight_limit [no limit]",
    )
    parser.add_argument(
        "--allowance-body",
        choices=["full", "no-number", "empty"],
        default="full",
        help="what that 429 carries: the service's body, the body without "
        "max_inflight_requests, or nothing (as proxies may) [%(default)s]",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of latencies and faults [%(default)s]"
    )
    parser.add_argument(
        "--generation-delay",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="seconds until a v2 background generation completes [%(default)s]",
    )
    parser.add_argument(
        "--no-upscale",
        dest="upscale",
        action="store_false",
        help="skip decoding and answer with a fixed tiny PNG (fast, no Pillow needed)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log each request received (address, request line, status, size, time) to stderr",
    )
    return parser


async def run_server(emulator: Emulator) -> None:
    """Serve ``emulator`` until SIGINT or SIGTERM.

    Once the server listens, prints a line ending with the base URL, then the key it
    accepts and lines to paste to point the command line or the library at it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows (NotImplementedError, a RuntimeError) or outside the
        # main thread (RuntimeError): Ctrl-C then raises KeyboardInterrupt, which
        # serve_main handles.
        with contextlib.suppress(RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    try:
        async with emulator:
            url, key = emulator.base_url, emulator.api_key
            print(
                f"Ideogram emulator listening on {url}\n"
                f"It accepts the API key {key!r}. Point a client at it (Ctrl-C stops it):\n"
                f"  export IDEOGRAM_BASE_URL={shlex.quote(url)} "
                f"IDEOGRAM_API_KEY={shlex.quote(key)}\n"
                f"  command line: IDEOGRAM_API_KEY={shlex.quote(key)} ideogram-async upscale "
                f"photo.png --out upscaled --base-url {shlex.quote(url)}\n"
                f"  library:      IdeogramClient(base_url={url!r}, api_key={key!r})",
                flush=True,
            )
            await stop.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def serve_main(
    argv: list[str] | None = None, *, prog: str = "python -m ideogram_async.testing"
) -> int:
    """The emulator's command line, run with ``argv``; returns the exit status.

    0 once stopped by Ctrl-C or SIGTERM, 1 when it cannot serve (a port in use, Pillow
    missing), 2 for a bad option. ``prog`` is the command's name in its help.
    """
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad option (2): argparse exits with an int
        return int(exc.code or 0)
    if args.verbose:
        handler = logging.StreamHandler()  # to stderr
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        requests = logging.getLogger("ideogram_async.testing")
        requests.addHandler(handler)
        requests.setLevel(logging.INFO)
    try:
        emulator = Emulator(
            args.api_key,
            host=args.host,
            port=args.port,
            latency=args.latency,
            faults=FaultPlan(rate=args.fault_rate, seed=args.seed),  # rate 0: never a fault
            upscale=args.upscale,
            seed=args.seed,
            allowance=args.allowance,
            allowance_body=args.allowance_body,
            generation_delay=args.generation_delay,
        )
        asyncio.run(run_server(emulator))
    except KeyboardInterrupt:
        pass
    except (ImportError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0
