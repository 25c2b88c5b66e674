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
from pathlib import Path

import attrs
from rich.console import Console
from rich.table import Table

from ._cli_inputs import Source, UsageError
from ._cli_pipeline import EXIT_INTERRUPTED, Job, Outcome, run_job
from .client import IdeogramClient
from .models import UpscaleRequest
from .retry import RetryHook
from .testing import Emulator, FaultPlan

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
    out: Path, *, count: int, concurrency: int, fault_rate: float, stop: asyncio.Event, live: bool
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

        def connect(on_retry: RetryHook) -> IdeogramClient:
            return IdeogramClient(
                api_key=key,
                base_url=emulator.base_url,
                max_concurrency=concurrency,
                on_retry=on_retry,
            )

        status = await run_job(job, connect, stop, live=live, on_outcome=outcomes.append)
    if status == EXIT_INTERRUPTED:
        return status
    console = Console()
    console.print(_table(samples, outcomes))
    console.print(f"Inputs: {out / 'inputs'}", highlight=False, soft_wrap=True)
    console.print(
        f"With the real service: IDEOGRAM_API_KEY=... ideogram-async upscale "
        f"{out / 'inputs'} --out {out / 'upscaled'} --base-url URL (or --official)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return status


def _table(samples: list[Sample], outcomes: list[Outcome]) -> Table:
    inputs = {sample.path.resolve(): sample for sample in samples}
    table = Table(title="Upscaled by the emulator")
    table.add_column("file")
    table.add_column("input", justify="right")
    table.add_column("output", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("seconds", justify="right")
    ordered = sorted(outcomes, key=lambda outcome: outcome.source.shown)
    for outcome in ordered[:_TABLE_ROWS]:
        sample = inputs[outcome.source.path]
        output = (
            ", ".join(resolution or "?" for resolution in outcome.resolutions)
            if outcome.ok
            else "[red]failed[/]"
        )
        table.add_row(
            sample.path.name,
            f"{sample.width}x{sample.height}, {sample.size / 1024:.0f} KB",
            output,
            str(outcome.attempts),
            f"{outcome.seconds:.2f}",
        )
    if len(ordered) > _TABLE_ROWS:
        table.add_row(f"... {len(ordered) - _TABLE_ROWS} more", "", "", "", "")
    return table
