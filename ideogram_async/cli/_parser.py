"""The ``ideogram-async`` command line's options (argparse), for every subcommand."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import NoReturn

from ideogram_async import MagicPrompt, RetryPolicy, Timeouts, __version__
from ideogram_async.limits import DEFAULT_ALLOWANCE
from ideogram_async.v2 import MODELS

__all__ = ["PROG", "PROGRESS", "build_parser"]

PROG = "ideogram-async"
PROGRESS = ("auto", "rich", "plain", "none")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors take one line, and say where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_UPSCALE_EXAMPLES = """\
examples:
  export IDEOGRAM_API_KEY=...            # or --api-key-file PATH
  ideogram-async upscale photos/ --out upscaled --base-url https://proxy.example
  ideogram-async upscale 'shots/**/*.jpg' -r -o big --official --prompt "crisp detail"
  ideogram-async upscale photos/ -o big --manifest big/manifest.jsonl --resume
  ideogram-async upscale photos/ -o big --model topaz-bloom-2 --factor x4 \\
      --option creativity=5 --prompt "autumn leaves"
  ideogram-async upscale photos/ --model topaz-standard-2 --factor x4 --dry-run
  ideogram-async upscale photos/ -o big --deadline 300 -v --json big/summary.json

Each result is saved as DIR/<name>.upscaled.<ext> (<name>.upscaled-<k>.<ext> when
--num-images asks for several). With --manifest, each image's settings and result
URLs are recorded as soon as it is paid for, then how it ended; --resume skips the
images done with the same settings, downloads the results already paid for from their
recorded URLs and upscales the rest, so finishing an interrupted run pays for no image
twice. A refused key, an unreachable service or a full disk stops the run at once.

--model uses one of Ideogram's v2 upscalers (its own API and Api-Key; --base-url still
overrides the host), with its options as --option NAME=VALUE; an image whose result
would pass 8192 px a side fails on its own, before upload. --dry-run prices every
image without running, downloading or billing anything, and prints the total; it
exits 1 when any image could not be priced. --max-usd AMOUNT prices each image before
sending it and stops the run before it would spend more than AMOUNT.

--timeout bounds one attempt, --deadline one image (all its retries and waits); -v
prints one line per attempt on stderr. At the end a summary says what happened
(succeeded, failed, skipped, refused requests, retries, the allowance); --json PATH
also writes it as JSON.

exit status: 0 all images done, 1 some failed or the run was stopped, 2 usage error
(nothing was sent), 130 interrupted (Ctrl-C or SIGTERM).
"""

_ENQUEUE_EXAMPLES = """\
examples:
  celery -A ideogram_async.celery worker --pool threads --concurrency 16   # on each host
  ideogram-async enqueue /shared/photos -o /shared/big --wait --json big/summary.json
  ideogram-async enqueue /shared/photos -o /shared/big --model topaz-bloom-2 --factor x4
  ideogram-async status 3f2a9c0d1e4b5a69

The workers read the service, key and allowance from their environment (see
ideogram_async.celery). An image whose result was already made is not paid for again.
With --wait, the progress (--progress, --quiet) and the summary (--json PATH) are
those of upscale.

exit status: 0 all images done, 1 some failed (or Redis stopped answering during
--wait), 2 usage error (nothing was sent), 130 interrupted (the workers go on; follow
them with status).
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; ``args.name`` says which one was chosen."""
    parser = _Parser(
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
    upscale.set_defaults(name="upscale")
    _add_inputs(upscale, "folder to save the results in (not with --dry-run)")
    v2 = _add_upscale_options(upscale)
    v2.add_argument(
        "--dry-run",
        action="store_true",
        help="price every image and print the total; nothing is run, downloaded or billed",
    )
    v2.add_argument(
        "--max-usd",
        type=_dollars,
        metavar="AMOUNT",
        help="stop before spending more than AMOUNT US dollars: each image's price is "
        "reserved before it is sent (shared by every worker with --shared-allowance)",
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
        "--shared-allowance",
        metavar="REDIS_URL",
        help="share --allowance with every process that names this Redis server "
        "(redis://HOST:PORT/DB; needs the redis extra)",
    )
    service.add_argument(
        "--allowance-key",
        metavar="NAME",
        help="with --shared-allowance: the name of the allowance on that Redis server "
        "[a digest of the API key and host: one per organization]",
    )
    service.add_argument(
        "--lease",
        type=_seconds,
        metavar="SECONDS",
        help="with --shared-allowance: how long a worker that died keeps its places [30]",
    )
    service.add_argument(
        "--retries",
        type=_at_least(0),
        metavar="N",
        help=f"retries of a transient failure per request [{RetryPolicy().attempts - 1}]",
    )
    service.add_argument(
        "--metrics-port",
        type=_listen_address,
        metavar="[HOST:]PORT",
        help="serve the run's metrics in Prometheus text format at http://HOST:PORT/metrics "
        "(HOST 127.0.0.1 unless given, 0.0.0.0 for every interface; needs the prometheus extra)",
    )
    service.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="time limit of one attempt (sending, the service's work, the answer) "
        f"[{Timeouts().attempt:g}]",
    )
    service.add_argument(
        "--deadline",
        type=_seconds,
        metavar="SECONDS",
        help="time limit of one image, all its attempts and waits included "
        f"[{RetryPolicy().deadline:g}]",
    )
    _add_view(upscale)
    records = upscale.add_argument_group("manifest")
    records.add_argument(
        "--manifest",
        metavar="PATH",
        help="record each image's settings, result URLs and outcome as JSON lines in PATH",
    )
    records.add_argument(
        "--resume",
        action="store_true",
        help="skip images the manifest records as done with these settings, download the "
        "results it records as paid for, upscale the rest",
    )

    _add_enqueue(commands)
    _add_status(commands)

    demo = commands.add_parser(
        "demo",
        help="run the whole job against the built-in emulator (no key, no network)",
        description="Draw sample images, upscale them with a local emulator of the service "
        "(real 2x upscaling, a few injected faults to show retries), download the results.",
    )
    demo.set_defaults(name="demo")
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
    _add_view(demo)

    serve = commands.add_parser(
        "serve",
        help="run the emulator of the service until Ctrl-C",
        add_help=False,  # the emulator's own command line parses (and documents) the rest
    )
    serve.set_defaults(name="serve")
    return parser


def _add_inputs(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The images to upscale and the folder of the results: ``upscale`` and ``enqueue``."""
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (their .jpg/.jpeg/.png/.webp files) or glob patterns",
    )
    parser.add_argument("-o", "--out", metavar="DIR", help=out_help)
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="look into subfolders; let ** match them"
    )


def _add_upscale_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options of one upscale (v1 and v2), shared by ``upscale`` and ``enqueue``."""
    options = parser.add_argument_group("upscale options (unset ones use the service default)")
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
    v2 = parser.add_argument_group("v2 upscalers (Ideogram's API; --prompt and --seed apply)")
    v2.add_argument("--model", choices=list(MODELS), help="the v2 upscaler to use")
    v2.add_argument("--factor", choices=["x2", "x4", "x8"], help="output size per side [x2]")
    v2.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a model option, e.g. creativity=5 or face_enhancement=true (repeatable)",
    )
    return v2


def _add_enqueue(commands: argparse._SubParsersAction[_Parser]) -> None:
    enqueue = commands.add_parser(
        "enqueue",
        help="send the job to Celery workers (ideogram_async.celery), one task per image",
        description="Send one upscale task per image to Celery workers that share one "
        "allowance; the images and --out must be on a file system every worker sees.",
        epilog=_ENQUEUE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enqueue.set_defaults(name="enqueue", dry_run=False)
    _add_inputs(enqueue, "folder the workers save the results in")
    _add_upscale_options(enqueue)
    _add_workers(enqueue)
    enqueue.add_argument(
        "--wait",
        action="store_true",
        help="show progress until every image is done, then the summary",
    )
    _add_view(enqueue, attempts=False)


def _add_status(commands: argparse._SubParsersAction[_Parser]) -> None:
    status = commands.add_parser(
        "status",
        help="show how far an enqueued job is",
        description="Show how far a job sent by `enqueue` is, and its summary so far. Exit "
        "status: 0 every image done, 1 some failed, 3 some not done yet.",
    )
    status.set_defaults(name="status")
    status.add_argument("job", metavar="ID", help="the id that enqueue printed")
    _add_workers(status)
    status.add_argument("--json", metavar="PATH", help="write the summary as JSON to PATH")


def _add_workers(parser: argparse.ArgumentParser) -> None:
    workers = parser.add_argument_group("workers")
    workers.add_argument(
        "--broker",
        metavar="URL",
        help="the Celery broker [env IDEOGRAM_BROKER_URL, else redis://127.0.0.1:6379/0]",
    )
    workers.add_argument(
        "--shared-allowance",
        metavar="REDIS_URL",
        help="the Redis where the workers share the allowance and record results "
        "[env IDEOGRAM_SHARED_ALLOWANCE, else the broker]",
    )


def _add_concurrency(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--allowance",
        "--concurrency",
        dest="concurrency",
        type=_at_least(1),
        default=DEFAULT_ALLOWANCE,
        metavar="N",
        help="images in flight at once, at most: your organization's allowance; lowered "
        "to what the service reports [%(default)s]",
    )


def _add_view(parser: argparse.ArgumentParser, *, attempts: bool = True) -> None:
    """``--progress``, ``--quiet``, ``--json`` and (with ``attempts``, where the attempts
    are made in this process) ``-v``."""
    view = parser.add_argument_group("progress and summary")
    view.add_argument(
        "--progress",
        choices=PROGRESS,
        default="auto",
        help="auto: a live display on a terminal, plain lines otherwise [%(default)s]",
    )
    view.add_argument(
        "-q", "--quiet", action="store_true", help="no progress and no notes: only the summary"
    )
    if attempts:
        view.add_argument(
            "-v", "--verbose", action="store_true", help="one line per attempt on stderr"
        )
    else:
        parser.set_defaults(verbose=False)
    view.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        with contextlib.suppress(ValueError):
            if (value := int(text)) >= low:
                return value
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")

    return parse


def _dollars(text: str) -> Decimal:
    with contextlib.suppress(InvalidOperation):
        value = Decimal(text.strip().removeprefix("$"))
        if value.is_finite() and value >= Decimal("0.000001"):
            return value
    raise argparse.ArgumentTypeError(f"expected US dollars > 0 such as 5 or 2.50, got {text!r}")


def _seconds(text: str) -> float:
    with contextlib.suppress(ValueError):
        if (value := float(text)) >= 0.1:  # NaN compares False: refused
            return value
    raise argparse.ArgumentTypeError(f"expected seconds >= 0.1, got {text!r}")


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected [HOST:]PORT with a port up to 65535, got {text!r}"
        )
    return host, int(port)


def _probability(text: str) -> float:
    with contextlib.suppress(ValueError):
        if 0 <= (value := float(text)) <= 1:
            return value
    raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
