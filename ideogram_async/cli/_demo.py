"""``ideogram-async demo``: the whole upscale job against the built-in emulator.

It draws sample images with Pillow, starts an :class:`~ideogram_async.testing.Emulator`
in-process (real 2x upscaling, a few injected faults so that retries show), runs the
same pipeline as ``ideogram-async upscale`` against it, and shows what came out.
No key, no network.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from pathlib import Path

import attrs

from ideogram_async import IdeogramClient, LocalAllowance, RetryEvent, UpscaleRequest
from ideogram_async.testing import Emulator, FaultPlan

from ._demo_v2 import try_v2
from ._inputs import Source, UsageError
from ._manifest import Outcome
from ._pipeline import EXIT_INTERRUPTED, Job, View, run_job
from ._refusals import WatchedAllowance

_FORMATS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("png", "PNG", {}),
    ("jpg", "JPEG", {"quality": 90}),
    ("webp", "WEBP", {"quality": 85}),
)
_LATENCY = (0.05, 0.3)
"""Seconds each emulated upscale takes: enough to see the bar move, short enough to be quick."""
_TABLE_ROWS = 40
_PILLOW_HINT = (
    "the demo draws and upscales images with Pillow: pip install 'ideogram-async[emulator]'"
)


@attrs.frozen
class Sample:
    """A generated input image."""

    path: Path
    width: int
    height: int
    size: int


def make_samples(folder: Path, count: int) -> list[Sample]:
    """Draw ``count`` colourful images of 128-256 px into ``folder``: PNG, JPEG, WebP in turn."""
    from PIL import Image, ImageDraw, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2024)
    gradient = Image.linear_gradient("L")
    samples = []
    for number in range(1, count + 1):
        width, height = rng.randrange(128, 257, 16), rng.randrange(128, 257, 16)
        colours = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(3)]
        turned = gradient.rotate(rng.choice((0, 90, 180, 270))).resize((width, height))
        image = ImageOps.colorize(turned, black=colours[0], white=colours[1], mid=colours[2])
        draw = ImageDraw.Draw(image, "RGBA")
        for _ in range(rng.randrange(3, 7)):
            x, y = rng.randrange(width), rng.randrange(height)
            radius = rng.randrange(12, max(width, height) // 3)
            box = (x - radius, y - radius, x + radius, y + radius)
            fill = (*(rng.randrange(256) for _ in range(3)), rng.randrange(120, 230))
            shape = rng.choice(("ellipse", "rectangle", "triangle"))
            if shape == "ellipse":
                draw.ellipse(box, fill=fill)
            elif shape == "rectangle":
                draw.rounded_rectangle(box, radius=radius // 4, fill=fill)
            else:
                draw.polygon(
                    [(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=fill
                )
        ext, pillow_format, options = _FORMATS[(number - 1) % len(_FORMATS)]
        path = folder / f"sample-{number:02d}.{ext}"
        image.save(path, format=pillow_format, **options)
        samples.append(Sample(path, width, height, path.stat().st_size))
    return samples


async def run_demo(
    out: Path, *, count: int, concurrency: int, fault_rate: float, stop: asyncio.Event, view: View
) -> int:
    """Run the demo into ``out``; return the exit status."""
    try:
        samples = await asyncio.to_thread(make_samples, out / "inputs", count)
    except ImportError:
        raise UsageError(_PILLOW_HINT) from None
    key = secrets.token_urlsafe(16)  # the emulator's key: real keys stay out of the demo
    job = Job(
        sources=[Source(sample.path.resolve(), str(sample.path)) for sample in samples],
        request=UpscaleRequest(),
        out_dir=out / "upscaled",
        manifest=out / "manifest.jsonl",
        rerun_hint="Run the demo again to start over.",
    )
    outcomes: list[Outcome] = []
    faults = FaultPlan(rate=fault_rate, seed=1)  # the same faults every run
    async with Emulator(key, latency=_LATENCY, faults=faults) as emulator:

        def connect(on_retry: Callable[[RetryEvent], None]) -> IdeogramClient:
            return IdeogramClient(
                api_key=key,
                base_url=emulator.base_url,
                allowance=WatchedAllowance(LocalAllowance(concurrency)),
                on_retry=on_retry,
            )

        status = await run_job(job, connect, stop, view=view, on_outcome=outcomes.append)
        if status == EXIT_INTERRUPTED:
            return status
        paths = [sample.path for sample in samples]
        v2_lines = await try_v2(emulator.base_url, key, paths, out / "upscaled-v2")
    show_table(_TITLE, _COLUMNS, _rows(samples, outcomes))
    for line in v2_lines:
        print(line)
    print(f"Inputs: {out / 'inputs'}")
    print(
        f"With the real service: IDEOGRAM_API_KEY=... ideogram-async upscale "
        f"{out / 'inputs'} --out {out / 'upscaled'} --base-url URL (or --official)",
        flush=True,
    )
    return status


_TITLE = "Upscaled by the emulator"
_COLUMNS = ("file", "input", "output", "attempts", "seconds")


def _rows(samples: list[Sample], outcomes: list[Outcome]) -> list[tuple[str, ...]]:
    """One row per outcome (the first ``_TABLE_ROWS`` by name), as the columns say."""
    inputs = {sample.path.resolve(): sample for sample in samples}
    ordered = sorted(outcomes, key=lambda outcome: outcome.source.shown)
    rows: list[tuple[str, ...]] = []
    for outcome in ordered[:_TABLE_ROWS]:
        sample = inputs[outcome.source.path]
        output = (
            ", ".join(resolution or "?" for resolution in outcome.resolutions)
            if outcome.ok
            else "failed"
        )
        rows.append(
            (
                sample.path.name,
                f"{sample.width}x{sample.height}, {sample.size / 1024:.0f} KB",
                output,
                str(outcome.attempts),
                f"{outcome.seconds:.2f}",
            )
        )
    if len(ordered) > _TABLE_ROWS:
        rows.append((f"... {len(ordered) - _TABLE_ROWS} more", "", "", "", ""))
    return rows


def show_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print a table: drawn by rich when it is installed, else as aligned plain text."""
    try:
        from ._live import print_table
    except ImportError:  # rich is in the cli extra
        pass
    else:
        print_table(title, columns, rows)
        return
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    print(title)
    for row in [columns, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip())
