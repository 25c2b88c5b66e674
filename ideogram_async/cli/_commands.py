"""The subcommands of ``ideogram-async`` and :func:`main`, which dispatches to them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ideogram_async import (
    Flavor,
    IdeogramClient,
    RetryEvent,
    RetryPolicy,
    SharedAllowanceError,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async.testing import serve_main
from ideogram_async.v2 import V2Options, options_from_strings

if TYPE_CHECKING:
    from ideogram_async.limits import RedisAllowance

from ._inputs import (
    Source,
    UsageError,
    check_collisions,
    find_images,
    read_key_file,
)
from ._manifest import ManifestLock, finished_sources, read_records
from ._metrics import serving_metrics
from ._parser import PROG, build_parser
from ._pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Job, run_job
from ._quotes import run_quotes

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        args, rest = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (argparse exits 2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.name == "serve":
        return serve_main(rest, prog=f"{PROG} serve")
    if rest:
        print(
            f"{PROG} {args.name}: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr
        )
        return EXIT_USAGE
    command = {"upscale": _upscale, "demo": _demo}[args.name]
    try:
        with serving_metrics(vars(args).get("metrics_port")):
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
    request = _v2_options(args) if args.model else _request(args)
    key = read_key_file(args.api_key_file) if args.api_key_file else _env_key()
    base_url = args.base_url or os.environ.get("IDEOGRAM_BASE_URL") or None
    official = args.official or args.model is not None  # v2 is Ideogram's own API
    if base_url is None and not official:
        raise UsageError(
            "no service URL: pass --base-url URL or set IDEOGRAM_BASE_URL "
            "(or pass --official to use api.ideogram.ai)"
        )
    retry = None if args.retries is None else RetryPolicy(attempts=args.retries + 1)
    allowance = _shared_allowance(args)

    def connect(on_retry: Callable[[RetryEvent], None] | None = None) -> IdeogramClient:
        try:
            return IdeogramClient(
                api_key=key,
                base_url=base_url,
                flavor=Flavor.OFFICIAL if official else Flavor.PROXY,
                allowance=args.concurrency if allowance is None else allowance,
                retry=retry,
                on_retry=on_retry,
            )
        except ValidationError as exc:  # e.g. a base URL that is not http(s)
            raise UsageError(str(exc)) from None

    if args.dry_run:
        if not isinstance(request, V2Options):
            raise UsageError("--dry-run prices v2 upscales: add --model MODEL")
        sources = find_images(args.images, recursive=args.recursive, exclude=None)
        options = request
        return _run(lambda stop: _sharing(allowance, run_quotes(connect, sources, options, stop)))
    if not args.out:
        raise UsageError("--out DIR is required: the folder to save the results in")
    if args.resume and not args.manifest:
        raise UsageError("--resume needs --manifest PATH, the record of what is already done")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder")
    sources = find_images(args.images, recursive=args.recursive, exclude=out_dir.resolve())
    check_collisions(sources, out_dir)
    manifest = Path(args.manifest) if args.manifest else None
    with ManifestLock(manifest) if manifest else contextlib.nullcontext():
        return _upscale_locked(args, request, sources, out_dir, manifest, connect, allowance)


def _upscale_locked(
    args: argparse.Namespace,
    request: UpscaleRequest | V2Options,
    sources: list[Source],
    out_dir: Path,
    manifest: Path | None,
    connect: Callable[[Callable[[RetryEvent], None]], IdeogramClient],
    allowance: RedisAllowance | None,
) -> int:
    """The rest of ``upscale``, holding the manifest's lock (when there is one)."""
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
    _check_writable(out_dir)
    job = Job(
        sources=sources,
        request=request,
        out_dir=out_dir,
        manifest=manifest,
        append=args.resume,
        rerun_hint=hint,
    )
    return _run(lambda stop: _sharing(allowance, run_job(job, connect, stop, live=_live())))


def _shared_allowance(args: argparse.Namespace) -> RedisAllowance | None:
    """The allowance on Redis that ``--shared-allowance`` names, not yet connected."""
    if args.shared_allowance is None:
        if args.lease is not None:
            raise UsageError("--lease applies to --shared-allowance REDIS_URL")
        return None
    try:
        from ideogram_async.limits import RedisAllowance
    except ImportError:
        raise UsageError(
            "--shared-allowance needs the redis package: pip install 'ideogram-async[redis]'"
        ) from None
    lease = 30.0 if args.lease is None else args.lease
    try:
        return RedisAllowance(args.shared_allowance, args.concurrency, lease=lease)
    except (ValidationError, SharedAllowanceError) as exc:
        raise UsageError(f"--shared-allowance: {exc}") from None


async def _sharing(allowance: RedisAllowance | None, work: Coroutine[Any, Any, int]) -> int:
    """Run ``work`` with ``allowance`` connected first: if Redis is unreachable, nothing is sent."""
    if allowance is None:
        return await work
    try:
        await allowance.connect()
    except SharedAllowanceError as exc:
        work.close()
        await allowance.aclose()
        raise UsageError(str(exc)) from None
    try:
        return await work
    finally:
        await allowance.aclose()


def _request(args: argparse.Namespace) -> UpscaleRequest:
    if args.factor or args.option or args.dry_run:
        raise UsageError("--factor, --option and --dry-run are v2 settings: add --model MODEL")
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


def _v2_options(args: argparse.Namespace) -> V2Options:
    """The model's options from --factor, --prompt, --seed and each --option NAME=VALUE."""
    v1_only = {
        "--resemblance": args.resemblance,
        "--detail": args.detail,
        "--magic-prompt": args.magic_prompt,
        "--num-images": args.num_images,
    }
    given = [flag for flag, value in v1_only.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} apply to the v1 upscaler, not to --model")
    values: dict[str, str] = {}
    for name, value in (
        ("upscale_factor", args.factor),
        ("prompt", args.prompt),
        ("seed", None if args.seed is None else str(args.seed)),
    ):
        if value is not None:
            values[name] = value
    for option in args.option:
        name, sep, value = option.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--option takes NAME=VALUE, got {option!r}")
        if name.strip() in values:
            raise UsageError(f"{name.strip()} is given twice; give it once")
        values[name.strip()] = value
    try:
        return options_from_strings(args.model, values)
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
    """The sources that ``manifest`` does not record as done, saying what it skips and redoes.

    An image recorded as done whose result file is gone is done again.
    """
    done, gone = finished_sources(read_records(manifest))
    todo = [source for source in sources if str(source.path) not in done]
    if len(todo) < len(sources):
        print(
            f"Skipping {len(sources) - len(todo)} of {len(sources)} image(s) that "
            f"{manifest} records as done.",
            flush=True,
        )
    redone = [source.shown for source in sources if str(source.path) in gone]
    if redone:
        listed = ", ".join(redone[:5]) + (f" and {len(redone) - 5} more" if len(redone) > 5 else "")
        print(
            f"Redoing {len(redone)} image(s) recorded as done whose result is missing: {listed}.",
            flush=True,
        )
    return todo


def _check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and make sure a file can be written in it, before anything is paid."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write results into --out {out_dir}: {exc.strerror or exc}"
        ) from None


def _demo(args: argparse.Namespace) -> int:
    """``ideogram-async demo``."""
    from ._demo import run_demo

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
