"""The ``ideogram-async`` command line's options (argparse), for every subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ideogram_async import MagicPrompt, RetryPolicy, __version__
from ideogram_async.limits import DEFAULT_ALLOWANCE
from ideogram_async.v2 import MODELS

__all__ = ["PROG", "build_parser"]

PROG = "ideogram-async"

_UPSCALE_EXAMPLES = """\
examples:
  export IDEOGRAM_API_KEY=...            # or --api-key-file PATH
  ideogram-async upscale photos/ --out upscaled --base-url https://proxy.example
  ideogram-async upscale 'shots/**/*.jpg' -r -o big --official --prompt "crisp detail"
  ideogram-async upscale photos/ -o big --manifest big/manifest.jsonl --resume
  ideogram-async upscale photos/ -o big --model topaz-bloom-2 --factor x4 \
      --option creativity=5 --prompt "autumn leaves"
  ideogram-async upscale photos/ --model topaz-standard-2 --factor x4 --dry-run

Each result is saved as DIR/<name>.upscaled.<ext> (<name>.upscaled-<k>.<ext> when
--num-images asks for several). With --manifest, one JSON line per image records its
source, status, urls, outputs, error, attempts and seconds; --resume skips the images
it records as ok whose results still exist, so finishing an interrupted run pays for no
image twice. A refused key, or a service that cannot be reached, stops the run at once.

--model uses one of Ideogram's v2 upscalers (its own API and Api-Key; --base-url still
overrides the host), with its options as --option NAME=VALUE; an image whose result
would pass 8192 px a side fails on its own, before upload. --dry-run prices every
image without running, downloading or billing anything, and prints the total.

exit status: 0 all images done, 1 some failed or the run was stopped, 2 usage error
(nothing was sent), 130 interrupted (Ctrl-C or SIGTERM).
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; ``args.name`` says which one was chosen."""
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
    upscale.set_defaults(name="upscale")
    upscale.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (their .jpg/.jpeg/.png/.webp files) or glob patterns",
    )
    upscale.add_argument(
        "-o", "--out", metavar="DIR", help="folder to save the results in (not with --dry-run)"
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
    v2 = upscale.add_argument_group("v2 upscalers (Ideogram's API; --prompt and --seed apply)")
    v2.add_argument("--model", choices=list(MODELS), help="the v2 upscaler to use")
    v2.add_argument("--factor", choices=["x2", "x4", "x8"], help="output size per side [x2]")
    v2.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a model option, e.g. creativity=5 or face_enhancement=true (repeatable)",
    )
    v2.add_argument(
        "--dry-run",
        action="store_true",
        help="price every image and print the total; nothing is run, downloaded or billed",
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
    records = upscale.add_argument_group("manifest")
    records.add_argument(
        "--manifest", metavar="PATH", help="record each finished image as a JSON line in PATH"
    )
    records.add_argument(
        "--resume",
        action="store_true",
        help="skip images the manifest records as ok whose results still exist; do the rest",
    )

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

    serve = commands.add_parser(
        "serve",
        help="run the emulator of the service until Ctrl-C",
        description="Run a local emulator of the Ideogram upscale service until Ctrl-C.",
        add_help=False,  # the emulator's own command line parses (and documents) the rest
    )
    serve.set_defaults(name="serve")
    return parser


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 0.1:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0.1, got {text!r}")
    return value


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected [HOST:]PORT with a port up to 65535, got {text!r}"
        )
    return host, int(port)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value
