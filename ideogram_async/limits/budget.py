"""A spend budget for v2 upscales: reserve each price before the request, settle after.

A budget that is checked after a request is sent is passed by every request in
flight at that moment; this one is reserved first. Before an upscale its price (the
quote's upper bound) is reserved; the upscale is sent only if the reservation fits
under ``max_usd`` together with what was spent and what other upscales hold. When it
ends, the reservation is settled: committed (the amount billed, or the reserved upper
bound when the bill is not known) on success, given back when the call failed or
was refused before anything could be billed.

Amounts are kept as integer micro-dollars (``usd_micros``, as the service quotes
them), so sums are exact. :class:`LocalBudget` holds one process's budget;
:class:`~ideogram_async.limits.RedisBudget` (the ``redis`` extra) shares one
through Redis by every process that names the same key.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Protocol, TypeVar, runtime_checkable

from ..errors import (
    APIConnectionError,
    BudgetExceededError,
    ResponseFormatError,
    ValidationError,
)

__all__ = [
    "Amount",
    "Budget",
    "BudgetRun",
    "LocalBudget",
    "Reservation",
    "Totals",
    "as_budget",
    "exceeded",
    "from_micros",
    "to_micros",
    "usd_text",
]

_T = TypeVar("_T")
_MICRO = Decimal(1_000_000)
_MOST = Decimal(1_000_000_000)
"""The largest amount taken, in dollars: its micro-dollars stay exact in Redis's Lua numbers."""

Amount = Decimal | int | float | str
"""A number of US dollars as a caller may give it; kept as exact micro-dollars."""


def to_micros(name: str, usd: object, *, round_up: bool) -> int:
    """``usd`` US dollars as whole micro-dollars, rounded up (a price) or down (a budget).

    A float is read as it prints (``0.1`` is ten cents, not its binary neighbour).
    Raises :class:`ValidationError` for anything that is not a finite amount >= 0.
    """
    if isinstance(usd, bool) or not isinstance(usd, Decimal | int | float | str):
        raise ValidationError(f"{name} must be an amount in US dollars, not {usd!r}")
    try:
        value = Decimal(str(usd)) if isinstance(usd, float) else Decimal(usd)
    except InvalidOperation:
        raise ValidationError(f"{name} must be an amount in US dollars, not {usd!r}") from None
    if not value.is_finite() or value < 0:
        raise ValidationError(f"{name} must be a finite amount >= 0 US dollars, not {usd!r}")
    if value > _MOST:
        raise ValidationError(f"{name} must be at most $1,000,000,000, not {usd!r}")
    rounding = ROUND_CEILING if round_up else ROUND_FLOOR
    return int((value * _MICRO).to_integral_value(rounding=rounding))


def from_micros(micros: int) -> Decimal:
    """Micro-dollars as exact US dollars (``48000`` is ``Decimal("0.048")``)."""
    return Decimal(micros) / _MICRO


def usd_text(usd: Decimal) -> str:
    """Dollars for a message: at least cents, more digits only where they matter."""
    text = f"{usd:.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


class Reservation:
    """An amount held on a budget for one upscale; settle it once, when the call ends.

    :meth:`commit` turns it into spending, :meth:`give_back` returns it to the
    budget; settling again changes nothing. The budget's settle function finishes
    even if the caller is cancelled meanwhile.
    """

    def __init__(self, micros: int, settle: Callable[[int], Awaitable[None]]) -> None:
        self._micros = micros
        self._settle = settle
        self._settled = False

    def __repr__(self) -> str:
        state = "settled" if self._settled else "held"
        return f"Reservation(usd={usd_text(self.usd)}, {state})"

    @property
    def usd(self) -> Decimal:
        """The amount reserved, in US dollars."""
        return from_micros(self._micros)

    @property
    def settled(self) -> bool:
        """Whether it was committed or given back."""
        return self._settled

    async def commit(self, usd: Amount | None = None) -> None:
        """Count it as spent: ``usd`` (what was billed) or, when not known, the amount reserved.

        A bill above the reservation is counted in full: the budget records what was
        spent, even if that passes it.
        """
        final = self._micros if usd is None else to_micros("usd", usd, round_up=True)
        await self._finish(final)

    async def give_back(self) -> None:
        """Return the whole amount to the budget: nothing was billed."""
        await self._finish(0)

    async def _finish(self, final: int) -> None:
        if self._settled:
            return
        self._settled = True
        await self._settle(final)


@runtime_checkable
class Budget(Protocol):
    """A spend limit in US dollars that upscales reserve from before they are sent.

    ``reserve`` holds an amount, or raises :class:`BudgetExceededError` when what is
    spent, what is reserved and the amount together would pass ``max_usd``. The
    ``spent`` and ``reserved`` properties are for display (for a shared budget, as
    last seen by this process).
    """

    @property
    def max_usd(self) -> Decimal:
        """The budget, in US dollars."""
        ...

    @property
    def spent(self) -> Decimal:
        """What committed reservations spent, in US dollars."""
        ...

    @property
    def reserved(self) -> Decimal:
        """What reservations not yet settled hold, in US dollars."""
        ...

    async def reserve(self, usd: Amount) -> Reservation:
        """Hold ``usd`` (rounded up to a micro-dollar) on the budget, or raise if it would pass."""
        ...


def exceeded(budget: Budget, needed: Decimal) -> BudgetExceededError:
    """The refusal of a reservation of ``needed`` dollars on ``budget``, as it stands."""
    spent, reserved = budget.spent, budget.reserved
    left = max(budget.max_usd - spent - reserved, Decimal(0))
    return BudgetExceededError(
        f"the budget of {usd_text(budget.max_usd)} (max_usd) would be passed: this upscale "
        f"needs up to {usd_text(needed)} and {usd_text(left)} is left ({usd_text(spent)} "
        f"spent, {usd_text(reserved)} held by upscales under way); nothing was sent; raise "
        f"max_usd to go on",
        max_usd=budget.max_usd,
        spent=spent,
        reserved=reserved,
        needed=needed,
    )


class Totals:
    """A budget's bookkeeping: ``max_usd``, and what was spent and reserved, in micro-dollars.

    The base of :class:`LocalBudget` and :class:`~ideogram_async.limits.RedisBudget`;
    a shared budget's ``spent`` and ``reserved`` are the totals as this process last
    saw them.
    """

    def __init__(self, max_usd: Amount) -> None:
        self._max = to_micros("max_usd", max_usd, round_up=False)
        if self._max < 1:
            raise ValidationError(f"max_usd must be at least $0.000001, not {max_usd!r}")
        self._spent = 0
        self._reserved = 0

    @property
    def max_usd(self) -> Decimal:
        """The budget, in US dollars."""
        return from_micros(self._max)

    @property
    def spent(self) -> Decimal:
        """What committed reservations spent, in US dollars."""
        return from_micros(self._spent)

    @property
    def reserved(self) -> Decimal:
        """What reservations not yet settled hold, in US dollars."""
        return from_micros(self._reserved)


class LocalBudget(Totals):
    """A :class:`Budget` of one process: ``max_usd`` US dollars for the upscales it guards.

    Pass one to several runs (``upscale_many(..., max_usd=budget)``) to bound them
    together; ``spent`` and ``reserved`` show where it stands.
    """

    def __init__(self, max_usd: Amount) -> None:
        super().__init__(max_usd)
        self._lock = threading.Lock()  # the sums stay exact if threads share it

    def __repr__(self) -> str:
        return (
            f"LocalBudget(max_usd={usd_text(self.max_usd)}, spent={usd_text(self.spent)}, "
            f"reserved={usd_text(self.reserved)})"
        )

    async def reserve(self, usd: Amount) -> Reservation:
        """Hold ``usd`` for one upscale, or raise :class:`BudgetExceededError` if it would pass."""
        want = to_micros("usd", usd, round_up=True)
        with self._lock:
            if self._spent + self._reserved + want > self._max:
                raise exceeded(self, from_micros(want))
            self._reserved += want

        async def settle(final: int) -> None:
            with self._lock:
                self._reserved -= want
                self._spent += final

        return Reservation(want, settle)


def as_budget(max_usd: object) -> Budget:
    """``max_usd`` as a :class:`Budget`: a budget is used as given, an amount becomes local."""
    if isinstance(max_usd, Budget):
        return max_usd
    if isinstance(max_usd, bool) or not isinstance(max_usd, Decimal | int | float | str):
        raise ValidationError(
            f"max_usd must be an amount in US dollars or a Budget (LocalBudget, "
            f"RedisBudget), not {type(max_usd).__name__}"
        )
    return LocalBudget(max_usd)


def may_have_been_billed(error: BaseException) -> bool:
    """Whether a call that ended in ``error`` may still have run (and been billed).

    The whole image had reached the service before the connection failed, the
    service answered 2xx with a body that could not be read, or the call was
    cancelled while it may have been on the wire: the reservation is then kept as
    spent, so that a budget is never passed by work that was billed after all.
    """
    if isinstance(error, APIConnectionError):
        return error.body_sent
    return isinstance(error, ResponseFormatError | asyncio.CancelledError)


class BudgetRun:
    """One run's spending from a budget: the first refusal stops it.

    :meth:`spend` prices an upscale, reserves the price, sends it and settles the
    reservation. Once a reservation was refused, every later upscale of the run is
    refused at once (``skipped``) without being priced or sent, even if reservations
    given back meanwhile would have let it fit: the run stops where its budget did.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.stopped: BudgetExceededError | None = None
        """The refusal that stopped the run, once one did."""

    async def spend(
        self, price: Callable[[], Awaitable[Decimal]], call: Callable[[], Awaitable[_T]]
    ) -> _T:
        """Reserve ``price()``, run ``call()``, then commit (success) or give back (failure)."""
        self._check()
        needed = await price()
        self._check()
        try:
            reservation = await self.budget.reserve(needed)
        except BudgetExceededError as refusal:
            self.stopped = self.stopped or refusal
            raise
        try:
            result = await call()
        except BaseException as exc:
            if may_have_been_billed(exc):
                await reservation.commit()
            else:
                await reservation.give_back()
            raise
        await reservation.commit()
        return result

    def _check(self) -> None:
        """Raise a ``skipped`` refusal when the run was stopped by an earlier one."""
        first = self.stopped
        if first is None:
            return
        raise BudgetExceededError(
            f"not sent: the budget of {usd_text(first.max_usd)} (max_usd) stopped the run "
            f"when an upscale needing up to {usd_text(first.needed)} did not fit",
            max_usd=first.max_usd,
            spent=first.spent,
            reserved=first.reserved,
            needed=first.needed,
            skipped=True,
        )
