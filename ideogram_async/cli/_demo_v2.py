"""The demo's v2 part: price every sample with a v2 upscaler, then run one for real."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ideogram_async import IdeogramClient, IdeogramError, TopazBloom2, TopazStandard2


async def try_v2(base_url: str, key: str, images: Sequence[Path], out: Path) -> list[str]:
    """Price ``images`` with a v2 model, upscale the first one; the lines to show."""
    try:
        return await _try_v2(base_url, key, images, out)
    except IdeogramError as exc:
        return [f"v2 part failed: {exc}"]


async def _try_v2(base_url: str, key: str, images: Sequence[Path], out: Path) -> list[str]:
    async with IdeogramClient(api_key=key, base_url=base_url, flavor="official") as client:
        summary = await client.v2.quote_many(images, TopazStandard2(upscale_factor="x4"))
        priced = len(summary.items) - len(summary.failed)
        priced_line = (
            f"v2 dry run: topaz-standard-2 at x4 would cost ${summary.total_usd:.4f} for "
            f"{priced} image(s) (the emulator's made-up prices; nothing was billed)"
        )
        result = await client.v2.upscale(
            images[0], TopazBloom2(prompt="crisp shapes", creativity=4, upscale_factor="x2")
        )
        path = await client.download(result.data[0], out / images[0].stem)
    return [
        priced_line,
        f"v2 run: topaz-bloom-2 upscaled {images[0].name} to "
        f"{result.width}x{result.height} -> {path}",
    ]
