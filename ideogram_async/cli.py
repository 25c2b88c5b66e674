"""The ``ideogram-async`` command: ``upscale`` files at volume, a ``demo``, ``serve`` the emulator.

Exit status: 0 when every image succeeded, 1 when some failed, 2 for a usage error
(nothing was sent), 130 when interrupted by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ._cli_inputs import (
    Source,
    UsageError,
    check_collisions,
    find_images,
    finished_sources,
    read_key_file,
)
from ._cli_pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Job, run_job
from ._version import __version__
from .client import Flavor, IdeogramClient
from .errors import ValidationError
from .models import MagicPrompt, UpscaleRequest
from .retry import RetryHook, RetryPolicy

__all__ = ["main"]

PROG = "ideogram-async"

_UPSCALE_EXAMPLES = """\
examples:
  export IDEOGRAM_API_KEY=...            # or --api-key-file PATH
  ideogram-async upscale photos/ --out upscaled --base-url https://proxy.example
  ideogram-async upscale 'shots/**/*.jpg' -r -o big --official --prompt "crisp detail"
  ideogram-async upscale photos/ -o big --manifest big/manifest.jsonl --resume

Each result is saved as DIR/<name>.upscaled.<ext> (<name>.upscaled-<k>.<ext> when
--num-images asks for several). With --manifest, one JSON line per finished image
records its source, status, urls, outputs, error, attempts and seconds; --resume skips
the images it records as ok, so finishing an interrupted run pays for no image twice.

exit status: 0 all images done, 1 some failed, 2 usage error (nothing was sent),
130 interrupted (Ctrl-C or SIGTERM).
"""


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (argparse exits 2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except UsageError as exc:
        print(f"{PROG} {args.name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a full disk, a folder that cannot be written
        print(f"{PROG} {args.name}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # only where signal handlers cannot be installed
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Upscale images at volume through the Ideogram upscale endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    upscale = commands.add_parser(
        "upscale",
        help="upscale images and download the results",
        description="Upscale images (files, folders, glob patterns) and download the results.",
        epilog=_UPSCALE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upscale.set_defaults(command=_upscale, name="upscale")
    upscale.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (their .jpg/.jpeg/.png/.webp files) or glob patterns",
    )
    upscale.add_argument(
        "-o", "--out", required=True, metavar="DIR", help="folder to save the results in"
    )
    upscale.add_argument(
        "-r", "--recursive", action="store_true", help="look into subfolders; let ** match them"
    )
    options = upscale.add_argument_group("upscale options (unset ones use the service default)")
    options.add_argument("--prompt", metavar="TEXT", help="text that guides the upscale")
    options.add_argument("--resemblance", type=int, metavar="1-100", help="closeness to the input")
    options.add_argument("--detail", type=int, metavar="1-100", help="how much detail to add")
    options.add_argument(
        "--magic-prompt",
        type=str.upper,
        choices=[option.value for option in MagicPrompt],
        help="let the service rewrite the prompt",
    )
    options.add_argument("--seed", type=int, metavar="N", help="seed for repeatable results")
    options.add_argument(
        "--num-images", type=int, metavar="1-8", help="variants to make of each image"
    )
    service = upscale.add_argument_group("service")
    service.add_argument(
        "--base-url", metavar="URL", help="the proxy's URL [env IDEOGRAM_BASE_URL]"
    )
    service.add_argument(
        "--official", action="store_true", help="speak to Ideogram's own API (api.ideogram.ai)"
    )
    service.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="read the API key from this file [default: env IDEOGRAM_API_KEY]; "
        "there is no --api-key option, as other users can see command lines",
    )
    _add_concurrency(service)
    service.add_argument(
        "--retries",
        type=_at_least(0),
        metavar="N",
        help=f"retries of a transient failure per request [{RetryPolicy().attempts - 1}]",
    )
    records = upscale.add_argument_group("manifest")
    records.add_argument(
        "--manifest", metavar="PATH", help="record each finished image as a JSON line in PATH"
    )
    records.add_argument(
        "--resume",
        action="store_true",
        help="skip images the manifest records as ok, and append to it",
    )

    demo = commands.add_parser(
        "demo",
        help="run the whole job against the built-in emulator (no key, no network)",
        description="Draw sample images, upscale them with a local emulator of the service "
        "(real 2x upscaling, a few injected faults to show retries), download the results.",
    )
    demo.set_defaults(command=_demo, name="demo")
    demo.add_argument(
        "-o",
        "--out",
        default="ideogram-demo",
        metavar="DIR",
        help="folder to work in [%(default)s]",
    )
    demo.add_argument(
        "--count", type=_at_least(1), default=24, metavar="N", help="images to make [%(default)s]"
    )
    _add_concurrency(demo)
    demo.add_argument(
        "--fault-rate",
        type=_probability,
        default=0.1,
        metavar="R",
        help="share of requests that get a transient fault, 0 to 1 [%(default)s]",
    )

    from .testing import add_serve_arguments

    serve = commands.add_parser(
        "serve",
        help="run the emulator of the service until Ctrl-C",
        description="Run a local emulator of the Ideogram upscale service until Ctrl-C.",
    )
    serve.set_defaults(command=_serve, name="serve")
    add_serve_arguments(serve)
    return parser


def _add_concurrency(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--concurrency",
        type=_at_least(1),
        default=10,
        metavar="N",
        help="requests in flight at once [%(default)s]",
    )


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _live() -> bool:
    """Whether to draw a live progress bar (stdout is a terminal) rather than plain lines."""
    return sys.stdout.isatty()


def _run(command: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``command`` in one event loop; SIGINT and SIGTERM set the event it is given."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        handled = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Impossible on Windows: Ctrl-C then raises KeyboardInterrupt (see main).
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
        try:
            return await command(stop)
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    return asyncio.run(run())


def _upscale(args: argparse.Namespace) -> int:
    """``ideogram-async upscale``: check everything before anything is sent, then run."""
    request = _request(args)
    key = read_key_file(args.api_key_file) if args.api_key_file else _env_key()
    base_url = args.base_url or os.environ.get("IDEOGRAM_BASE_URL") or None
    if base_url is None and not args.official:
        raise UsageError(
            "no service URL: pass --base-url URL or set IDEOGRAM_BASE_URL "
            "(or pass --official to use api.ideogram.ai)"
        )
    if args.resume and not args.manifest:
        raise UsageError("--resume needs --manifest PATH, the record of what is already done")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder")
    sources = find_images(args.images, recursive=args.recursive, exclude=out_dir.resolve())
    check_collisions(sources, out_dir)
    manifest = Path(args.manifest) if args.manifest else None
    if manifest is None:
        hint = "Add --manifest PATH next time, so that --resume can skip finished images."
    elif args.resume:
        sources = _unfinished(sources, manifest)
        if not sources:
            print("Nothing left to do.", flush=True)
            return EXIT_OK
        hint = "Run the same command again to finish the rest."
    elif manifest.is_file() and manifest.stat().st_size > 0:
        raise UsageError(
            f"the manifest {manifest} already exists; add --resume to skip the images it "
            f"records as done, or remove it to start over"
        )
    else:
        hint = "Run the same command again with --resume to finish the rest."
    job = Job(
        sources=sources,
        request=request,
        out_dir=out_dir,
        manifest=manifest,
        append=args.resume,
        rerun_hint=hint,
    )
    retry = None if args.retries is None else RetryPolicy(attempts=args.retries + 1)

    def connect(on_retry: RetryHook) -> IdeogramClient:
        try:
            return IdeogramClient(
                api_key=key,
                base_url=base_url,
                flavor=Flavor.OFFICIAL if args.official else Flavor.PROXY,
                max_concurrency=args.concurrency,
                retry=retry,
                on_retry=on_retry,
            )
        except ValidationError as exc:  # e.g. a base URL that is not http(s)
            raise UsageError(str(exc)) from None

    return _run(lambda stop: run_job(job, connect, stop, live=_live()))


def _request(args: argparse.Namespace) -> UpscaleRequest:
    try:
        return UpscaleRequest(
            prompt=args.prompt,
            resemblance=args.resemblance,
            detail=args.detail,
            magic_prompt_option=args.magic_prompt,
            seed=args.seed,
            num_images=args.num_images,
        )
    except ValidationError as exc:
        raise UsageError(str(exc)) from None


def _env_key() -> str:
    key = os.environ.get("IDEOGRAM_API_KEY", "").strip()
    if not key:
        raise UsageError(
            "no API key: set the IDEOGRAM_API_KEY environment variable or pass --api-key-file PATH"
        )
    return key


def _unfinished(sources: list[Source], manifest: Path) -> list[Source]:
    """The sources that ``manifest`` does not record as done, saying how many it skips."""
    done = finished_sources(manifest)
    todo = [source for source in sources if str(source.path) not in done]
    if len(todo) < len(sources):
        print(
            f"Skipping {len(sources) - len(todo)} of {len(sources)} image(s) that "
            f"{manifest} records as done.",
            flush=True,
        )
    return todo


def _demo(args: argparse.Namespace) -> int:
    """``ideogram-async demo``."""
    from ._cli_demo import run_demo

    return _run(
        lambda stop: run_demo(
            Path(args.out),
            count=args.count,
            concurrency=args.concurrency,
            fault_rate=args.fault_rate,
            stop=stop,
            live=_live(),
        )
    )


def _serve(args: argparse.Namespace) -> int:
    """``ideogram-async serve``: the emulator's own runner, with its own options."""
    from .testing import run_server

    try:
        asyncio.run(run_server(args))
    except (ImportError, OSError) as exc:
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
        return 1
    return EXIT_OK
