"""The adaptive bound: how many places to allow in flight, from what the service said.

A pure state machine (no I/O, no clock of its own): :class:`Bound` takes events (a
request ran, a request was refused, time passed) with the time they happened and
answers with the new bound. :class:`~ideogram_async.limits.LocalAllowance` uses it
directly; the Lua scripts of :class:`~ideogram_async.limits.RedisAllowance` implement the
same rules on state kept in Redis (``scripts.py``), and one table-driven test holds
both to the same bounds.

The rules:

* **Start.** An adaptive bound starts at :data:`DEFAULT_ALLOWANCE` (or the maximum if
  lower); a fixed one at the maximum, and only the service's number lowers it.
* **Slow start.** Until the first refusal, each request that ran and was granted when
  it filled the bound in force then raises the bound by one (as each acknowledgement
  does for TCP), so under load the bound doubles per round trip: a maximum above 10
  is reached in a few round trips, and one far above the real allowance is cut down
  by the first 429.
* **Learn.** A 429 with the organization's number (``max_inflight_requests``) caps the
  bound at that number from then on.
* **Explained or not.** A refusal is explained by this allowance's own holdings when
  they were above the number (or, without a number, above the last level that went
  through: a probe that failed). The refused request then waits for a place of its
  own to free. Otherwise others hold the rest of the organization's places: the bound
  drops to what this allowance still holds, and nothing is granted for a backoff with
  jitter (from :data:`FIRST_BACKOFF`, growing by :data:`BACKOFF_GROWTH` per refusal to
  :data:`MAX_BACKOFF`), reset by a request that goes through.
* **Restart.** A refusal that leaves nothing held here is like TCP's retransmission
  timeout: once a request goes through again, the bound slow-starts from where it is
  (one place, usually), doubling per round trip until the next refusal, instead of
  probing up one place per run.
* **Resume.** A request that goes through holding as many places as a failed probe
  asked for shows that whoever held the rest then has left: the bound slow-starts again
  from there, until the next refusal, instead of climbing back one place per run.
* **Probe and hold.** After the first refusal the bound rises by one only after a run
  of requests that ran at full use of the bound in force now (as many as the bound,
  doubled for each probe that failed at that level, up to
  2**:data:`MAX_PROBE_DOUBLINGS`): a request that filled a lower bound says nothing
  about the level being probed. A failed probe steps back to the last level that went
  through; only repeated refusals halve it.
* **Rounds.** A refusal of a request granted before the bound last dropped is the same
  overload, already answered: it only lowers the bound to what is still held.
* **Forget.** After :data:`FORGET_AFTER` seconds without a change, everything learned is
  forgotten (the organization's allowance may have been raised); the next 429 teaches
  it again.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "BACKOFF_GROWTH",
    "DEFAULT_ALLOWANCE",
    "FIRST_BACKOFF",
    "FORGET_AFTER",
    "MAX_BACKOFF",
    "MAX_PROBE_DOUBLINGS",
    "AllowanceChange",
    "Bound",
    "ChangeReason",
]

DEFAULT_ALLOWANCE = 10
"""Places in flight when none is configured, and where an adaptive bound starts: the
service's default allowance per organization."""
FIRST_BACKOFF = 0.25
"""Seconds of the first backoff after a refusal that others' holdings explain."""
BACKOFF_GROWTH = 1.1
"""The backoff grows by this factor per refusal, in whole milliseconds (doubling every
seven or eight): each wait is then about a tenth of how long the refusals have lasted
(doubling per refusal makes it as long), so places that others free after a hold of a
few seconds are found within a fraction of a second, and the refusals of a long hold
still thin out to one every :data:`MAX_BACKOFF` or so."""
MAX_BACKOFF = 2.0
"""The backoff grows up to this many seconds (reached at the 23rd refusal in a row,
after 13 to 18 seconds of them)."""
MAX_PROBE_DOUBLINGS = 2
"""Failed probes at one level lengthen the run before the next one up to 2**2 times."""
FORGET_AFTER = 3600.0
"""Seconds without a change after which the learned and adapted bound is forgotten."""


class ChangeReason(enum.StrEnum):
    """Why the bound of an allowance changed."""

    LEARNED = "learned"
    """A 429 body named the allowance (``max_inflight_requests``)."""
    HELD = "held"
    """Others hold the rest of the organization's places: down to what is held here."""
    DECREASED = "decreased"
    """A probe failed (back to the last level that went through), or refusals repeated."""
    INCREASED = "increased"
    """Requests went through at full use: slow start, or a probe one place higher."""
    FORGOTTEN = "forgotten"
    """Nothing changed for a long while: back to where the bound starts."""


@attrs.frozen(kw_only=True)
class AllowanceChange:
    """One change of an allowance's current bound, as given to ``on_change`` hooks."""

    old: int
    """The bound before the change, in places."""
    new: int
    """The bound after the change, in places."""
    reason: ChangeReason
    """Why it changed."""


@attrs.define
class Bound:
    """The bound of one allowance and what it learned; feed it events, read :attr:`limit`.

    ``now`` is any monotonic clock in seconds (the caller's); ``jitter`` a number in
    [0, 1) drawn by the caller, so the machine itself is deterministic.
    """

    maximum: int
    adaptive: bool = True
    forget_after: float = FORGET_AFTER
    start: int = attrs.field(init=False)
    limit: int = attrs.field(init=False)
    ceiling: int = attrs.field(init=False)
    """The bound never rises above this: the maximum, or the number the service named."""
    good: int = attrs.field(init=False, default=0)
    """The most places that went through at once (since the bound last dropped)."""
    slow: bool = attrs.field(init=False, default=True)
    run: int = attrs.field(init=False, default=0)
    failed: int = attrs.field(init=False, default=0)
    failed_at: int = attrs.field(init=False, default=0)
    """The places held when the last probe failed (0: none since the last slow start)."""
    streak: int = attrs.field(init=False, default=0)
    """Refusals since a request last went through."""
    round: int = attrs.field(init=False, default=0)
    """How many times the bound dropped: a grant remembers it to tell rounds apart."""
    backoff: float = attrs.field(init=False, default=0.0)
    closed_until: float = attrs.field(init=False, default=0.0)
    changed_at: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.start = min(self.maximum, DEFAULT_ALLOWANCE) if self.adaptive else self.maximum
        self._reset()

    def _reset(self) -> None:
        self.limit, self.ceiling = self.start, self.maximum
        self.good = self.run = self.failed = self.failed_at = self.streak = self.round = 0
        self.slow = True
        self.backoff = self.closed_until = 0.0

    def at(self, now: float) -> AllowanceChange | None:
        """Time passed: forget what was learned after :attr:`forget_after` without a change."""
        if self.changed_at is None:
            self.changed_at = now
        elif now - self.changed_at >= self.forget_after:
            old = self.limit
            self._reset()
            self.changed_at = now
            return _change(old, self.limit, ChangeReason.FORGOTTEN)
        return None

    def closed_for(self, now: float) -> float:
        """Seconds until places may be granted again (0: now)."""
        return max(0.0, self.closed_until - now)

    def completed(
        self, *, level: int, granted: int, waiting: int, round: int, now: float
    ) -> AllowanceChange | None:
        """A request granted in ``round`` ran.

        ``level``: the places held at its grant, its own included; ``granted``: the bound
        at its grant; ``waiting``: the places the next waiter asks for (0: none waits).

        It ran at full use when the bound was what held requests back: all of it in use
        at the grant, or the next waiter does not fit beside what was in use then. A bound
        that was not reached says nothing about the allowance (as for TCP, RFC 7661).
        Slow start judges by the bound at the grant: every request that filled it adds
        one, so the bound doubles per round trip (judged by the bound now, which has
        grown meanwhile, only the last grant of a round would count: about one place per
        round trip). Probe and hold judges by the bound now: the run before the next
        probe counts only requests that ran at the level being probed.

        Only a request granted since the bound last dropped shows what goes through
        now: an earlier one's level is not taken as the last good level, nor as the end
        of the contention a failed probe met.
        """
        forgotten = self.at(now)
        self.streak, self.backoff, self.closed_until = 0, 0.0, 0.0
        if round == self.round and min(level, self.ceiling) > self.good:
            self.good, self.failed = min(level, self.ceiling), 0
        if round == self.round and 0 < self.failed_at <= level:
            self.slow, self.failed_at = True, 0
        against = granted if self.slow else self.limit
        full = level + waiting > against or level >= against
        if not self.adaptive or not full or self.limit >= self.ceiling:
            return forgotten
        if not self.slow:
            self.run += 1
            if self.run < self.limit << self.failed:
                return forgotten
        self.run = 0
        return self._set(self.limit + 1, ChangeReason.INCREASED, now)

    def rejected(
        self, *, number: int | None, held: int, places: int, round: int, now: float, jitter: float
    ) -> AllowanceChange | None:
        """A 429 ``inflight_limit`` refused a request of ``places`` granted in ``round``.

        ``number``: the organization's allowance the 429 named, if any; ``held``: the
        places held here when it was refused, the refused request's included.
        """
        forgotten = self.at(now)
        if number is not None:
            learned = max(1, min(number, self.maximum))
            if learned != self.ceiling:
                self.changed_at = now
            self.ceiling = learned
        probing = self.good > 0 and held > self.good and self.adaptive
        explained = held > number if number is not None else probing
        fresh = round == self.round
        if not explained and (fresh or self.backoff == 0):
            grown = int(self.backoff * 1000 * BACKOFF_GROWTH + 0.5) / 1000
            self.backoff = min(MAX_BACKOFF, grown) or FIRST_BACKOFF
            self.closed_until = now + self.backoff * (0.5 + jitter / 2)
        options = [(self.ceiling, ChangeReason.LEARNED)]
        if self.adaptive and fresh:
            self.streak += 1
            self.slow = False
            if probing:
                options.append((self.good, ChangeReason.DECREASED))
                self.failed = min(self.failed + 1, MAX_PROBE_DOUBLINGS)
                self.failed_at = held
            elif self.streak >= 2:
                options.append((max(1, self.limit // 2), ChangeReason.DECREASED))
        if self.adaptive and not explained:
            options.append((max(1, held - places), ChangeReason.HELD))
            if held <= places:
                self.slow = True
        new, reason = min(options, key=lambda option: option[0])
        if new >= self.limit:
            return forgotten
        self.good = min(self.good, new)
        self.round += 1
        self.run = 0
        return self._set(new, reason, now)

    def _set(self, new: int, reason: ChangeReason, now: float) -> AllowanceChange | None:
        old, self.limit = self.limit, new
        self.changed_at = now
        return _change(old, new, reason)


def _change(old: int, new: int, reason: ChangeReason) -> AllowanceChange | None:
    return None if old == new else AllowanceChange(old=old, new=new, reason=reason)
