"""A spend budget shared through Redis: N processes reserve from one ``max_usd`` together.

Each step is one Lua script, atomic on the Redis server, so two processes can never
both take the last dollars: a reservation (:data:`RESERVE`) checks spent + reserved +
the price against the budget and holds the price in the same step; a settlement
(:data:`SETTLE`) turns a reservation into spending or gives it back. It needs the
``redis`` extra (``pip install 'ideogram-async[redis]'``).

- **Amounts** are integer micro-dollars in Redis, so sums are exact.
- **A process that dies** leaves its reservations behind: the upscale may have run
  and been billed, so they are never given back. When a reservation's lease ends
  (``lease`` seconds after it was made, Redis time) it is counted as spent at its
  full amount; if its process settles it later after all (a call longer than the
  lease), the settlement corrects the spending to what it says.
- **A settlement that cannot reach Redis** leaves the reservation held until its
  lease ends, then counted as spent: never less than what may have been billed. So
  does a reservation cancelled while its script was on the way (its answer unheard).
- **The state** (spent, reservations) lives under ``{key}:budget*`` and is
  forgotten ``ttl`` seconds after its last change (a day by default): a budget is
  shared by the processes of one job, not for ever. Redis must keep its data for
  the budget to hold: a Redis restart without persistence starts it at $0 spent.
- **Each process checks against its own ``max_usd``**; give them all the same.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript
except ImportError as exc:  # pragma: no cover - exercised in a test by hiding redis
    raise ImportError(
        "ideogram_async.limits.RedisBudget needs the redis package: "
        "pip install 'ideogram-async[redis]'"
    ) from exc

from ..errors import ClientClosedError, SharedAllowanceError, ValidationError
from .budget import Amount, Reservation, Totals, exceeded, from_micros, to_micros, usd_text
from .location import REDIS_FAULTS, RedisLocation, check_key

__all__ = ["RESERVE", "SETTLE", "RedisBudget"]

logger = logging.getLogger("ideogram_async")

_PURPOSE = "the shared budget"
_SCHEMES = ("redis", "rediss", "unix")

# Keys, under one hash tag (a Redis Cluster keeps them on one node):
#   KEYS[1] totals    hash: spent, reserved (micro-dollars)
#   KEYS[2] leases    sorted set: reservation id -> lease end (ms, Redis time)
#   KEYS[3] held      hash: reservation id -> micro-dollars held
#   KEYS[4] lapsed    hash: reservation id -> micro-dollars counted as spent when
#                     its lease ended (so that a late settlement can correct it)
_PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[#ARGV])

-- Reservations whose lease ended count as spent, in full.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local amount = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  redis.call('HINCRBY', KEYS[1], 'reserved', -amount)
  redis.call('HINCRBY', KEYS[1], 'spent', amount)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HSET', KEYS[4], id, amount)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

local function totals()
  local state = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
  return tonumber(state[1] or '0'), tonumber(state[2] or '0')
end

local function touch()
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

RESERVE = (
    _PRELUDE
    + """
-- ARGV: id, micro-dollars wanted, budget (micro-dollars), lease (ms), ttl (ms)
local want, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local spent, reserved = totals()
if spent + reserved + want > budget then return {0, spent, reserved} end
redis.call('HINCRBY', KEYS[1], 'reserved', want)
redis.call('HSET', KEYS[3], ARGV[1], want)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
touch()
return {1, spent, reserved + want}
"""
)
"""Hold the amount if spent + reserved + it fit the budget: ``{ok, spent, reserved}``."""

SETTLE = (
    _PRELUDE
    + """
-- ARGV: id, micro-dollars spent (0: given back), ttl (ms)
local id, final = ARGV[1], tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[3], id)
local lapsed = redis.call('HGET', KEYS[4], id)
if held then
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(held))
  redis.call('HINCRBY', KEYS[1], 'spent', final)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
elseif lapsed then
  redis.call('HINCRBY', KEYS[1], 'spent', final - tonumber(lapsed))
  redis.call('HDEL', KEYS[4], id)
else
  -- Unknown here (the state was lost or expired): record what was spent.
  redis.call('HINCRBY', KEYS[1], 'spent', final)
end
touch()
local spent, reserved = totals()
return {spent, reserved}
"""
)
"""Commit (``final``) or give back (0) a reservation by id: ``{spent, reserved}``."""


class RedisBudget(Totals):
    """A :class:`~ideogram_async.limits.Budget` shared through Redis by every process.

    Every process that names the same Redis server and ``key`` reserves from one
    budget of ``max_usd`` US dollars; each reservation is one atomic script, so
    together they never pass it. ``lease`` (seconds) is how long a reservation
    stays reserved before it counts as spent (its process may have died after
    sending); ``ttl`` (seconds) how long the shared totals are kept after their last
    change. ``spent`` and ``reserved`` are the shared totals as this process last
    saw them. ``url`` may hold a password; it is never shown.

    Use it as an async context manager, or call :meth:`aclose` when done;
    :meth:`connect` checks the connection up front (the first reservation does it
    otherwise).
    """

    def __init__(
        self,
        url: str,
        max_usd: Amount,
        *,
        key: str = "ideogram_async",
        lease: float = 3600.0,
        ttl: float = 86400.0,
    ) -> None:
        try:
            location = RedisLocation.parse(url)
        except SharedAllowanceError as exc:
            raise ValidationError(
                f"url must be a Redis URL such as redis://localhost:6379/0 "
                f"(schemes: {', '.join(_SCHEMES)}), not {exc.url!r}"
            ) from None
        super().__init__(max_usd)
        check_key(key)
        for name, seconds in (("lease", lease), ("ttl", ttl)):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 1:
                raise ValidationError(f"{name} must be a number of seconds >= 1, not {seconds!r}")
        self._location = location
        self._key = key
        self._lease_ms = round(lease * 1000)
        self._ttl_ms = round(ttl * 1000)
        tag = "{" + key + "}"
        self._keys = [f"{tag}:{name}" for name in ("budget", "budget:leases", "budget:held")]
        self._keys.append(f"{tag}:budget:lapsed")
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript]  # set by connect, before any script runs
        self._settling: set[asyncio.Task[None]] = set()
        self._closed = False
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"RedisBudget(url={self._location.shown!r}, key={self._key!r}, "
            f"max_usd={usd_text(self.max_usd)})"
        )

    @property
    def url(self) -> str:
        """The Redis server, with any password replaced by ``***``."""
        return self._location.shown

    @property
    def key(self) -> str:
        """The name the processes sharing this budget use."""
        return self._key

    async def __aenter__(self) -> RedisBudget:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect to Redis; raise :class:`SharedAllowanceError` if it is unreachable."""
        async with self._connecting:
            if self._closed:
                raise ClientClosedError("this RedisBudget was closed; create a new one")
            if self._redis is not None:
                return
            client = await self._location.open(_PURPOSE)
            self._redis = client
            self._scripts = {
                "reserve": client.register_script(RESERVE),
                "settle": client.register_script(SETTLE),
            }

    async def aclose(self) -> None:
        """Wait for settlements under way, then close the connection. Idempotent."""
        async with self._connecting:
            self._closed = True
            if self._settling:
                await asyncio.gather(*self._settling)
            if self._redis is not None:
                await self._redis.aclose()
            self._redis = None

    async def reserve(self, usd: Amount) -> Reservation:
        """Hold ``usd`` on the shared budget, or raise :class:`BudgetExceededError`.

        Raises :class:`SharedAllowanceError` when Redis cannot be reached: nothing
        is then reserved, and the upscale must not be sent.
        """
        want = to_micros("usd", usd, round_up=True)
        holder = secrets.token_hex(16)
        args: list[str | int] = [holder, want, self._max, self._lease_ms, self._ttl_ms]
        ok, self._spent, self._reserved = await self._run("reserve", args)
        if not ok:
            raise exceeded(self, from_micros(want))

        async def settle(final: int) -> None:
            task = asyncio.create_task(self._settle(holder, final))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            await asyncio.shield(task)

        return Reservation(want, settle)

    async def _settle(self, holder: str, final: int) -> None:
        """Settle by id; if Redis is lost, the lease's end counts the reservation as spent."""
        try:
            self._spent, self._reserved = await self._run("settle", [holder, final, self._ttl_ms])
        except (SharedAllowanceError, ClientClosedError) as exc:
            logger.warning("%s; the reservation counts as spent when its lease ends", exc)

    async def _run(self, name: str, args: Sequence[str | int]) -> Any:
        """Run one script; a Redis fault becomes a :class:`SharedAllowanceError`."""
        if self._redis is None:
            await self.connect()
        try:
            return await self._scripts[name](keys=self._keys, args=list(args))
        except REDIS_FAULTS as exc:
            raise self._location.lost(_PURPOSE, exc) from exc
