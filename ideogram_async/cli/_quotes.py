"""``upscale --dry-run``: price every image with a v2 upscaler, print a table and the total.

Nothing is run, downloaded or billed: each image is sent once with ``dry_run=true``.
An image that cannot be priced (over 8192 px, refused before upload) is a row of its
own, and the run goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from decimal import Decimal

from ideogram_async import IdeogramClient, QuoteSummary, V2Options, ValidationError

from ._inputs import Source
from ._pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, describe, until_stopped

__all__ = ["run_quotes"]


def _dollars(amount: Decimal) -> str:
    return f"${amount:,.4f}"


def render(sources: Sequence[Source], summary: QuoteSummary) -> list[str]:
    """The table's lines and the totals, for the terminal."""
    width = max((len(source.shown) for source in sources), default=5)
    lines = [f"{'IMAGE':<{width}}  {'PRICE':>10}  {'QUOTE':<8}  BILLED AS"]
    for item in summary.items:
        shown = sources[item.index].shown
        if item.quote is None:
            assert item.error is not None
            lines.append(f"{shown:<{width}}  {'-':>10}  {'refused':<8}  {describe(item.error)}")
            continue
        quote = item.quote
        kind = "exact" if quote.exact else "estimate"
        bound = "" if quote.exact else f" (at most {_dollars(quote.upper_bound_usd)})"
        lines.append(
            f"{shown:<{width}}  {_dollars(quote.usd):>10}  {kind:<8}  "
            f"{quote.billing_identifier} x{quote.quantity}{bound}"
        )
    priced = len(summary.items) - len(summary.failed)
    lines.append(
        f"Total: {_dollars(summary.total_usd)} for {priced} of {len(summary.items)} image(s) "
        f"(exact {_dollars(summary.exact_usd)}, estimated {_dollars(summary.estimated_usd)}; "
        f"at most {_dollars(summary.upper_bound_usd)})."
    )
    if summary.failed:
        lines.append(f"{len(summary.failed)} image(s) could not be priced; see above.")
    lines.append("Nothing was run, downloaded or billed.")
    return lines


async def run_quotes(
    connect: Callable[[], IdeogramClient],
    sources: Sequence[Source],
    options: V2Options,
    stop: asyncio.Event,
) -> int:
    """Price ``sources``; 0 when each was priced or refused here, 1 if the service failed one."""
    found: list[QuoteSummary] = []

    async def price() -> None:
        async with connect() as client:
            found.append(await client.v2.quote_many([s.path for s in sources], options))

    if not await until_stopped(price(), stop):
        print("Interrupted: nothing was run or billed.", flush=True)
        return EXIT_INTERRUPTED
    (summary,) = found
    for line in render(sources, summary):
        print(line, flush=True)
    local = all(isinstance(item.error, ValidationError) for item in summary.failed)
    return EXIT_OK if local else EXIT_FAILED
