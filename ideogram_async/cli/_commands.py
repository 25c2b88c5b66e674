"""The subcommands of ``ideogram-async`` and :func:`main`, which dispatches to them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ideogram_async import (
    Allowance,
    Budget,
    Flavor,
    IdeogramClient,
    LocalAllowance,
    LocalBudget,
    RetryEvent,
    RetryPolicy,
    SharedAllowanceError,
    Timeouts,
    UpscaleRequest,
    ValidationError,
)
from ideogram_async.testing import serve_main
from ideogram_async.v2 import V2Options, options_from_strings

if TYPE_CHECKING:
    from ideogram_async.limits import RedisAllowance, RedisBudget

from ._inputs import (
    MadeFolders,
    Source,
    UsageError,
    check_collisions,
    find_images,
    read_key_file,
)
from ._manifest import settings_of
from ._manifest_io import ManifestLock, fallback_path, read_records, take_in_fallback
from ._metrics import serving_metrics
from ._parser import PROG, build_parser
from ._pipeline import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Job,
    View,
    describe,
    nothing_left,
    run_job,
)
from ._progress import AttemptLog
from ._quotes import run_quotes
from ._refusals import WatchedAllowance
from ._resume import plan_resume
from ._summary import SharedAt

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    for stream in (sys.stdout, sys.stderr):  # file names need not be text: never crash on one
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        args, rest = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # --help, --version (0), or a bad option (2): argparse's status
        return int(exc.code or 0)
    if args.name == "serve":
        return serve_main(rest, prog=f"{PROG} serve")
    if rest:
        print(
            f"{PROG} {args.name}: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr
        )
        return EXIT_USAGE
    command = {"upscale": _upscale, "enqueue": _enqueue, "status": _status, "demo": _demo}[
        args.name
    ]
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


def _view(args: argparse.Namespace, shared: SharedAt | None = None) -> View:
    """How the run shows itself, from ``--progress``, ``--quiet``, ``-v`` and ``--json``."""
    if args.quiet and args.progress not in ("auto", "none"):
        raise UsageError(f"--quiet shows no progress; leave out --progress {args.progress}")
    if args.json and Path(args.json).is_dir():
        raise UsageError(f"--json {args.json} is a folder; name the file to write the summary to")
    return View(
        progress=args.progress,
        quiet=args.quiet,
        verbose=args.verbose,
        json=Path(args.json) if args.json else None,
        shared=shared,
    )


def _run(command: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``command`` in one event loop; SIGINT and SIGTERM set the event it is given."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        handled = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Impossible on Windows (NotImplementedError, a RuntimeError): Ctrl-C then raises
            # KeyboardInterrupt (see main); and outside the main thread (RuntimeError).
            with contextlib.suppress(RuntimeError):
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
    retry = _retry(args)
    timeouts = None if args.timeout is None else _timeouts(args.timeout)
    allowance = _shared_allowance(args)

    def connect(on_retry: Callable[[RetryEvent], None] | None = None) -> IdeogramClient:
        places: Allowance = LocalAllowance(args.concurrency) if allowance is None else allowance
        try:
            return IdeogramClient(
                api_key=key,
                base_url=base_url,
                flavor=Flavor.OFFICIAL if official else Flavor.PROXY,
                allowance=WatchedAllowance(places),
                timeouts=timeouts,
                retry=retry,
                on_retry=on_retry,
            )
        except ValidationError as exc:  # e.g. a base URL that is not http(s)
            raise UsageError(str(exc)) from None

    budget, shared_budget = _budget(args, allowance, connect)
    if args.dry_run:
        assert isinstance(request, V2Options)  # _request refuses --dry-run without --model
        if args.json:
            raise UsageError("--json writes the summary of a run; --dry-run prints prices only")
        sources = find_images(args.images, recursive=args.recursive, exclude=None)
        options = request
        log = AttemptLog(describe) if args.verbose else None
        quoting = functools.partial(connect, None if log is None else log.retried)
        return _run(lambda stop: _sharing([allowance], run_quotes(quoting, sources, options, stop)))
    if not args.out:
        raise UsageError("--out DIR is required: the folder to save the results in")
    if allowance is not None:
        # A client names the shared allowance's key (its organization's, unless
        # --allowance-key named one) when it is made; it opens nothing until used.
        connect()
    view = _view(args, None if allowance is None else _shared_at(args, allowance.key))
    if args.resume and not args.manifest:
        raise UsageError("--resume needs --manifest PATH, the record of what is already done")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder")
    sources = find_images(args.images, recursive=args.recursive, exclude=out_dir.resolve())
    check_collisions(sources, out_dir)
    manifest = Path(args.manifest) if args.manifest else None
    folders = MadeFolders()  # a run that writes nothing leaves no empty folder behind
    try:
        if manifest is not None:
            _make(folders, manifest.parent, "--manifest")
        with ManifestLock(manifest) if manifest else contextlib.nullcontext():
            return _upscale_locked(
                args,
                request,
                sources,
                out_dir,
                manifest,
                connect,
                [allowance, shared_budget],
                folders,
                view,
                budget,
            )
    finally:
        folders.remove_empty()


def _upscale_locked(
    args: argparse.Namespace,
    request: UpscaleRequest | V2Options,
    sources: list[Source],
    out_dir: Path,
    manifest: Path | None,
    connect: Callable[[Callable[[RetryEvent], None]], IdeogramClient],
    shared: Sequence[RedisAllowance | RedisBudget | None],
    folders: MadeFolders,
    view: View,
    budget: Budget | None,
) -> int:
    """The rest of ``upscale``, holding the manifest's lock (when there is one).

    ``shared`` are the users of Redis to connect before anything is sent.
    """
    if manifest is None:
        hint = "Add --manifest PATH next time, so that --resume can skip finished images."
    elif args.resume:
        hint = "Run the same command again to finish the rest."
    elif manifest.is_file() and manifest.stat().st_size > 0:
        raise UsageError(
            f"the manifest {manifest} already exists; add --resume to skip the images it "
            f"records as done, or remove it to start over"
        )
    elif fallback_path(manifest).exists():
        raise UsageError(
            f"{fallback_path(manifest)} holds records that an earlier run could not write "
            f"to the manifest {manifest}; add --resume to take them in, or remove it to "
            f"start over"
        )
    else:
        hint = "Run the same command again with --resume to finish the rest."
    job = Job(
        sources=sources,
        request=request,
        out_dir=out_dir,
        manifest=manifest,
        rerun_hint=hint,
        budget=budget,
    )
    if args.resume:
        assert manifest is not None  # _upscale refuses --resume without --manifest
        official = args.official or args.model is not None
        job = _resumed(job, manifest, settings_of(request, official=official))
        if not job.sources and not job.recorded:
            return nothing_left(job, view)
    _check_writable(out_dir, folders)
    return _run(lambda stop: _sharing(shared, run_job(job, connect, stop, view=view)))


def _shared_allowance(args: argparse.Namespace) -> RedisAllowance | None:
    """The allowance on Redis that ``--shared-allowance`` names, not yet connected."""
    if args.shared_allowance is None:
        for flag, value in (("--lease", args.lease), ("--allowance-key", args.allowance_key)):
            if value is not None:
                raise UsageError(f"{flag} applies to --shared-allowance REDIS_URL")
        return None
    try:
        from ideogram_async.limits import RedisAllowance
    except ImportError:
        raise UsageError(
            "--shared-allowance needs the redis package: pip install 'ideogram-async[redis]'"
        ) from None
    given = {"lease": args.lease, "key": args.allowance_key}  # else RedisAllowance's defaults
    settings = {name: value for name, value in given.items() if value is not None}
    try:
        return RedisAllowance(args.shared_allowance, args.concurrency, **settings)
    except (ValidationError, SharedAllowanceError) as exc:
        raise UsageError(f"--shared-allowance: {exc}") from None


def _budget(
    args: argparse.Namespace,
    allowance: RedisAllowance | None,
    connect: Callable[[], IdeogramClient],
) -> tuple[Budget | None, RedisBudget | None]:
    """The budget ``--max-usd`` sets, and the same when it lives on Redis (connected first).

    With ``--shared-allowance`` it is shared through that Redis by every worker, under
    the shared allowance's key: the one ``--allowance-key`` names, else its
    organization's (a digest of the API key and host), so that two organizations on one
    Redis never share a budget.
    """
    if args.max_usd is None:
        return None, None
    if args.model is None:
        raise UsageError("--max-usd limits what v2 upscales spend: add --model MODEL")
    if args.dry_run:
        raise UsageError("--dry-run spends nothing: drop --max-usd, or --dry-run to spend")
    try:
        if allowance is None:
            return LocalBudget(args.max_usd), None
        from ideogram_async.limits import RedisBudget  # the redis extra: checked before

        connect()  # the client keys the allowance by its organization (or --allowance-key)
        assert allowance.key is not None  # connect() keyed it
        shared = RedisBudget(args.shared_allowance, args.max_usd, key=allowance.key)
    except ValidationError as exc:
        raise UsageError(f"--max-usd: {exc}") from None
    return shared, shared


async def _sharing(
    shared: Sequence[RedisAllowance | RedisBudget | None], work: Coroutine[Any, Any, int]
) -> int:
    """Run ``work`` with its users of Redis connected first: if Redis is down, nothing is sent."""
    users = [user for user in shared if user is not None]
    try:
        for user in users:
            await user.connect()
    except SharedAllowanceError as exc:
        work.close()
        for user in users:
            await user.aclose()
        raise UsageError(str(exc)) from None
    try:
        return await work
    finally:
        for user in users:
            await user.aclose()


def _shared_at(args: argparse.Namespace, key: str | None) -> SharedAt:
    """Where ``--shared-allowance`` lives, for the summary: host, database, key; no password.

    ``key`` is the allowance's: the one ``--allowance-key`` named, else a digest of the
    organization (the API key and host) that the client gave it when it was made.
    """
    assert key is not None  # a client was made with the allowance: it keyed it
    return SharedAt.from_url(args.shared_allowance, key)


def _retry(args: argparse.Namespace) -> RetryPolicy:
    """The retry policy of ``--retries`` and ``--deadline``: the default's, changed by them."""
    changes: dict[str, Any] = {}
    if args.retries is not None:
        changes["attempts"] = args.retries + 1
    if args.deadline is not None:
        changes["deadline"] = args.deadline
    return RetryPolicy(**changes)


def _timeouts(seconds: float) -> Timeouts:
    """``--timeout``: the limit of one attempt, connecting included (its timer starts first)."""
    return Timeouts(attempt=seconds)


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


def _resumed(job: Job, manifest: Path, settings: dict[str, Any]) -> Job:
    """``job`` continuing ``manifest``: what it records as done is skipped, what it records
    as paid for is downloaded, the rest is upscaled; says so."""
    taken = take_in_fallback(manifest)
    if taken:
        print(f"Took in {taken} record(s) an earlier run could not write to {manifest}.")
    plan = plan_resume(job.sources, read_records(manifest), settings)
    for message in plan.messages(manifest, len(job.sources)):
        print(message, flush=True)
    return attrs.evolve(
        job, sources=plan.upscale, recorded=plan.download, skipped=plan.done, append=True
    )


def _make(folders: MadeFolders, folder: Path, option: str) -> None:
    try:
        folders.make(folder)
    except OSError as exc:
        raise UsageError(f"cannot create {folder} for {option}: {exc.strerror or exc}") from None


def _check_writable(out_dir: Path, folders: MadeFolders) -> None:
    """Create ``out_dir`` and make sure a file can be written in it, before anything is paid."""
    try:
        folders.make(out_dir)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write results into --out {out_dir}: {exc.strerror or exc}"
        ) from None


def _enqueue(args: argparse.Namespace) -> int:
    """``ideogram-async enqueue``: check everything here, then send one task per image."""
    from ._enqueue import enqueue_job

    request = _v2_options(args) if args.model else _request(args)
    if not args.out:
        raise UsageError("--out DIR is required: the folder the workers save the results in")
    if not args.wait:
        shown = {"--json": args.json, "--quiet": args.quiet, "--progress": args.progress != "auto"}
        given = [flag for flag, value in shown.items() if value]
        if given:
            raise UsageError(f"{', '.join(given)} show(s) the wait for the job: add --wait")
    view = _view(args)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder")
    sources = find_images(args.images, recursive=args.recursive, exclude=out_dir.resolve())
    check_collisions(sources, out_dir)
    folders = MadeFolders()
    _check_writable(out_dir, folders)
    try:
        return _run(
            lambda stop: enqueue_job(
                sources,
                out_dir,
                request,
                broker=args.broker,
                redis=args.shared_allowance,
                wait=args.wait,
                view=view,
                stop=stop,
            )
        )
    except UsageError:  # nothing was sent: leave no folder behind
        folders.remove_empty()
        raise


def _status(args: argparse.Namespace) -> int:
    """``ideogram-async status ID``."""
    from ._enqueue import job_status

    json_path = Path(args.json) if args.json else None
    return _run(
        lambda stop: job_status(
            args.job, broker=args.broker, redis=args.shared_allowance, json_path=json_path
        )
    )


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
            view=_view(args),
        )
    )
