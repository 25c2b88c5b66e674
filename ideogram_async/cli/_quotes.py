"""``upscale --dry-run``: price every image with a v2 upscaler, print a table and the total.

Nothing is run, downloaded or billed: each image is sent once with ``dry_run=true``.
An image that cannot be priced (over 8192 px, refused before upload, or refused by
the service) is a row of its own, and the run goes on; the exit status is then 1, so
that a script gating on the dry run stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from decimal import Decimal

from ideogram_async import IdeogramClient, PriceQuote, QuoteSummary, V2Options

from ._inputs import Source
from ._pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, describe, until_stopped

__all__ = ["run_quotes"]


def _dollars(amount: Decimal) -> str:
    return f"${amount:,.4f}"


def price(quote: PriceQuote) -> str:
    """A quote in dollars with its qualifier: ``$0.0480 exact``, ``<= $0.0900 estimate``.

    An estimate shows the most it can cost (its upper bound, else the estimate itself).
    """
    if quote.exact:
        return f"{_dollars(quote.usd)} exact"
    return f"<= {_dollars(quote.upper_bound_usd)} estimate"


def render(sources: Sequence[Source], summary: QuoteSummary) -> list[str]:
    """The table's lines and the totals, for the terminal."""
    width = max((len(source.shown) for source in sources), default=5)
    rows = []
    for item in summary.items:
        if item.quote is None:
            assert item.error is not None
            rows.append((sources[item.index].shown, "not priced", describe(item.error)))
        else:
            quote = item.quote
            billed = f"{quote.billing_identifier}, quantity {quote.quantity}"
            rows.append((sources[item.index].shown, price(quote), billed))
    column = max([len("PRICE"), *(len(row[1]) for row in rows)])
    lines = [f"{'IMAGE':<{width}}  {'PRICE':<{column}}  BILLED AS"]
    lines += [f"{shown:<{width}}  {cost:<{column}}  {note}" for shown, cost, note in rows]
    priced = len(summary.items) - len(summary.failed)
    lines.append(
        f"Total: {_dollars(summary.total_usd)} for {priced} of {len(summary.items)} image(s) "
        f"(exact {_dollars(summary.exact_usd)}, estimated {_dollars(summary.estimated_usd)}; "
        f"at most {_dollars(summary.upper_bound_usd)})."
    )
    if summary.failed:
        lines.append(
            f"{len(summary.failed)} image(s) could not be priced (see above): the total leaves "
            f"them out."
        )
    lines.append("Nothing was run, downloaded or billed.")
    return lines


async def run_quotes(
    connect: Callable[[], IdeogramClient],
    sources: Sequence[Source],
    options: V2Options,
    stop: asyncio.Event,
) -> int:
    """Price ``sources``; 0 when every image was priced, 1 when any could not be.

    A script that gates on the dry run so never goes ahead with images of unknown price.
    """
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
    return EXIT_FAILED if summary.failed else EXIT_OK
