"""A shared allowance on Redis: one bound on places in flight for every process using a key.

Ideogram's allowance belongs to the organization, so workers that each keep
their own bound over-subscribe it together. A :class:`RedisAllowance` keeps the
bound in Redis instead: every process that names the same Redis server and
``key`` shares one ``maximum``. It needs the ``redis`` extra
(``pip install 'ideogram-async[redis]'``) and Redis 5 or later.

How it works, in short:

- **Holders and leases.** Each hold is a holder (a random id) with its places
  and a lease. A background task renews the leases of this process's holders
  every ``lease / 3`` seconds, so a process that dies (SIGKILL, a lost host)
  gives its places back when its leases end. Releases go by holder id: releasing
  a holder twice, or one that is not there, changes nothing.
- **Atomic steps on Redis time.** Acquiring, renewing, releasing and changing the
  bound are each one Lua script, and every deadline is computed from Redis's
  ``TIME``, never from the hosts' clocks.
- **Served in order, woken by messages.** Within a process, holds queue first
  come first served and only the first one waits on Redis. Across processes, the
  waiting ones take a ticket in a queue on Redis and only its head is served
  (a 4-place hold is not starved by a stream of 1-place ones); a ticket that is
  not refreshed (its process died) leaves the queue within a few seconds.
  Waiters sleep until a release is published on a channel, with a fallback poll
  of ``min(lease / 4, 1)`` seconds.
- **One bound for all.** The bound follows the same rules as
  :class:`~ideogram_async.allowance.LocalAllowance` (learned from a 429's number;
  when adaptive, a slow start from 10 places, halving on a 429 without a number
  at most once per round, growing back with completed requests), but its state
  is kept in Redis, so every process obeys what any of them learned. That state
  is forgotten after an hour without a change (the service's allowance may have
  been raised meanwhile); the next 429 teaches it again.
- **Faults.** If Redis cannot be reached when the allowance connects (the first
  hold, or :meth:`RedisAllowance.connect`), or is lost while a hold waits, the
  call raises :class:`~ideogram_async.SharedAllowanceError` naming the server:
  it never proceeds without a place. A block that already holds places runs to
  its end; if its release cannot reach Redis, its places come back when its lease
  ends. After a Redis restart (its data lost), the next renewal registers this
  process's holders again, and new holds work as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.commands.core import AsyncScript
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised in a test by hiding redis
    raise ImportError(
        "ideogram_async.redis_allowance needs the redis package: "
        "pip install 'ideogram-async[redis]'"
    ) from exc

from .allowance import AllowanceChange, ChangeReason
from .errors import ClientClosedError, SharedAllowanceError, ValidationError

__all__ = ["RedisAllowance"]

logger = logging.getLogger("ideogram_async")

_IO_TIMEOUT = 5.0
"""Seconds a connect or a command to Redis may take before it counts as lost."""
_STATE_TTL_MS = 3_600_000
"""The learned and adapted bound is forgotten after this long without a change."""
_SCHEMES = ("redis", "rediss", "unix")

_START = 10
"""Where an adaptive bound starts (capped by the maximum): the service's default allowance."""

_GRANT: contextvars.ContextVar[tuple[RedisAllowance, int] | None] = contextvars.ContextVar(
    "ideogram_async_redis_allowance_held", default=None
)
"""The allowance and its count of decreases when the current task's places were granted."""

# Keys, all under one hash tag so a Redis Cluster keeps them on one node:
#   KEYS[1] holders  sorted set: holder id -> lease end (ms, Redis time)
#   KEYS[2] places   hash: holder id -> places held
#   KEYS[3] queue    sorted set: waiting ticket (= its holder id) -> queue number
#   KEYS[4] waiting  hash: ticket -> "<expiry ms>:<places wanted>"
#   KEYS[5] counter  the last queue number handed out
#   KEYS[6] bound    hash: limit, learned (the service's number), learned_at,
#                    threshold (slow start below it), completions, decreases
_PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function purge()
  local freed = false
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    redis.call('HDEL', KEYS[2], unpack(dead))
    freed = true
  end
  local waiting = redis.call('HGETALL', KEYS[4])
  for i = 1, #waiting, 2 do
    if tonumber(string.match(waiting[i + 1], '^(%d+)')) <= now then
      redis.call('HDEL', KEYS[4], waiting[i])
      redis.call('ZREM', KEYS[3], waiting[i])
      freed = true
    end
  end
  return freed
end

local function in_use()
  local total = 0
  for _, places in ipairs(redis.call('HVALS', KEYS[2])) do
    total = total + tonumber(places)
  end
  return total
end

-- The current bound, and the ceiling it never rises above, for this process's
-- maximum and start (where the bound is before anything was learned).
local function bounds(maximum, start)
  local state = redis.call('HMGET', KEYS[6], 'limit', 'learned')
  local ceiling = maximum
  local learned = tonumber(state[2])
  if learned and learned < ceiling then ceiling = math.max(1, learned) end
  local bound = tonumber(state[1]) or start
  if bound > ceiling then bound = ceiling end
  return math.max(1, bound), ceiling
end
"""

# ARGV: holder, places, maximum, start, lease ms, ticket ms, channel
# -> {granted, in use, bound, ceiling, decreases so far}
_ACQUIRE = """
local id, want = ARGV[1], tonumber(ARGV[2])
local freed = purge()
local bound, ceiling = bounds(tonumber(ARGV[3]), tonumber(ARGV[4]))
local decreases = tonumber(redis.call('HGET', KEYS[6], 'decreases')) or 0
if redis.call('ZSCORE', KEYS[1], id) then
  return {1, in_use(), bound, ceiling, decreases}
end
local seq = tonumber(redis.call('ZSCORE', KEYS[3], id))
if not seq then
  seq = redis.call('INCR', KEYS[5])
  redis.call('ZADD', KEYS[3], seq, id)
end
redis.call('HSET', KEYS[4], id, string.format('%d:%d', now + tonumber(ARGV[6]), want))
local used = in_use()
local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
-- A hold larger than a lowered bound goes alone rather than never.
if head == id and (used + want <= bound or used == 0) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), id)
  redis.call('HSET', KEYS[2], id, want)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  used = used + want
  local after = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if after then
    local wanted = tonumber(string.match(redis.call('HGET', KEYS[4], after), ':(%d+)$'))
    if used + wanted <= bound then redis.call('PUBLISH', ARGV[7], 't') end
  end
  return {1, used, bound, ceiling, decreases}
end
if freed then redis.call('PUBLISH', ARGV[7], 'r') end
return {0, used, bound, ceiling, decreases}
"""

# ARGV: lease ms, then holder, places pairs -> how many holders were missing
_RENEW = """
local deadline = now + tonumber(ARGV[1])
local missing = 0
for i = 2, #ARGV, 2 do
  missing = missing + redis.call('ZADD', KEYS[1], deadline, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return missing
"""

# ARGV: holder, channel -> {released (0/1), in use}
_RELEASE = """
local released = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local dequeued = redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if released == 1 then
  redis.call('PUBLISH', ARGV[2], 'r')
elseif dequeued == 1 then
  redis.call('PUBLISH', ARGV[2], 't')
end
return {released, in_use()}
"""

# ARGV: allowance ('' when the 429 gave none), maximum, start, decreases when the
#       hold was granted (-1: unknown), adaptive (1/0), channel, state ttl ms
# -> {old bound, new bound, ceiling, reason ('' when unchanged), learned before}
_REJECTED = """
local maximum = tonumber(ARGV[2])
local old, ceiling = bounds(maximum, tonumber(ARGV[3]))
local state = redis.call('HMGET', KEYS[6], 'decreases', 'learned')
local decreases = tonumber(state[1]) or 0
local new, reason = old, ''
local function decrease(to, why)
  redis.call('HSET', KEYS[6], 'limit', to, 'threshold', math.max(to, old - 1),
             'completions', 0, 'decreases', decreases + 1)
  new, reason = to, why
end
if ARGV[1] ~= '' then
  local learned = tonumber(ARGV[1])
  redis.call('HSET', KEYS[6], 'learned', learned, 'learned_at', now)
  ceiling = math.max(1, math.min(learned, maximum))
  if ceiling < old then decrease(ceiling, 'learned') end
end
-- Only a request granted since the last decrease saw the lowered bound: the
-- others' 429s are the same overload and do not halve it again.
local round = tonumber(ARGV[4])
if reason == '' and ARGV[5] == '1' and (round < 0 or round == decreases) then
  decrease(math.max(1, math.floor(old / 2)), 'decreased')
end
redis.call('PEXPIRE', KEYS[6], ARGV[7])
return {old, new, ceiling, reason, state[2] or ''}
"""

# ARGV: maximum, start, channel, state ttl ms -> {old bound, new bound, ceiling}
# Below the threshold (a slow start) the bound grows by one per completed request,
# above it by one per as many completed requests as the bound.
_COMPLETED = """
local maximum = tonumber(ARGV[1])
local old, ceiling = bounds(maximum, tonumber(ARGV[2]))
if old >= ceiling then return {old, old, ceiling} end
local state = redis.call('HMGET', KEYS[6], 'threshold', 'completions')
local threshold = tonumber(state[1]) or maximum
local completions = (tonumber(state[2]) or 0) + 1
local new = old
if old < threshold or completions >= old then
  new, completions = old + 1, 0
end
redis.call('HSET', KEYS[6], 'limit', new, 'completions', completions)
redis.call('PEXPIRE', KEYS[6], ARGV[4])
if new > old then redis.call('PUBLISH', ARGV[3], 'r') end
return {old, new, ceiling}
"""


def _shown(url: str) -> str:
    """``url`` fit for messages: any password replaced by ``***``, the query dropped."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RedisAllowance:
    """An :class:`~ideogram_async.allowance.Allowance` shared through Redis by every process.

    ``maximum`` is the allowance of all the processes that use the same Redis
    server and ``key`` together, in places. ``lease`` (seconds) is how long a
    holder's places stay taken without renewal: a process that dies gives its
    places back at most that long after its last renewal. ``adaptive`` turns on
    additive increase / multiplicative decrease of the shared bound when a 429
    gives no number. ``on_change`` is called with an
    :class:`~ideogram_async.allowance.AllowanceChange` when a call of this
    process changes the shared bound.

    Use it as an async context manager, or call :meth:`aclose` when done;
    :meth:`connect` checks the connection up front (the first hold does it
    otherwise).
    """

    def __init__(
        self,
        url: str,
        maximum: int,
        *,
        key: str = "ideogram_async",
        lease: float = 30.0,
        adaptive: bool = True,
        on_change: Callable[[AllowanceChange], None] | None = None,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ValidationError(
                f"url must be a Redis URL such as redis://localhost:6379/0 "
                f"(schemes: {', '.join(_SCHEMES)}), not {_shown(str(url))!r}"
            )
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise ValidationError(f"maximum must be an int >= 1 (places), not {maximum!r}")
        if not isinstance(key, str) or not key or "{" in key or "}" in key:
            raise ValidationError(f"key must be a non-empty string without braces, not {key!r}")
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease >= 0.1:
            raise ValidationError(f"lease must be a number of seconds >= 0.1, not {lease!r}")
        self._url = url
        self._shown_url = _shown(url)
        self._maximum = maximum
        self._key = key
        self._lease = float(lease)
        self._lease_ms = round(self._lease * 1000)
        self._poll = min(self._lease / 4, 1.0)
        self._ticket_ms = round(self._poll * 3000)
        self._adaptive = adaptive
        self._on_change = on_change
        tag = "{" + key + "}"
        self._keys = [
            f"{tag}:{name}"
            for name in ("holders", "places", "queue", "waiting", "counter", "bound")
        ]
        self._channel = f"{tag}:released"
        self._start = min(maximum, _START) if adaptive else maximum
        self._limit = self._start
        self._ceiling = maximum
        self._in_use = 0
        self._redis: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._releases: set[asyncio.Task[bool]] = set()
        self._held: dict[str, int] = {}
        self._closed = False
        self._connecting = asyncio.Lock()
        self._turn = asyncio.Lock()
        self._renewing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._freed = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"RedisAllowance(url={self._shown_url!r}, key={self._key!r}, "
            f"maximum={self._maximum}, lease={self._lease})"
        )

    @property
    def maximum(self) -> int:
        """The configured bound of all processes together, in places."""
        return self._maximum

    @property
    def limit(self) -> int:
        """The current shared bound, in places, as this process last saw it."""
        return self._limit

    @property
    def in_use(self) -> int:
        """Places held by every process together, as this process last saw it."""
        return self._in_use

    @property
    def lease(self) -> float:
        """Seconds a holder's places stay taken without renewal."""
        return self._lease

    async def __aenter__(self) -> RedisAllowance:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect to Redis and subscribe to releases; raise a clear error if it is unreachable."""
        if self._redis is not None:
            return
        async with self._connecting:
            if self._closed:
                raise ClientClosedError("this RedisAllowance was closed; create a new one")
            if self._redis is not None:
                return
            client = aioredis.Redis.from_url(
                self._url,
                socket_connect_timeout=_IO_TIMEOUT,
                socket_timeout=_IO_TIMEOUT,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            )
            pubsub = client.pubsub()
            try:
                await client.ping()
                await pubsub.subscribe(self._channel)
            except (RedisError, OSError) as exc:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
                raise SharedAllowanceError(
                    f"cannot reach Redis at {self._shown_url} for the shared allowance: "
                    f"{exc}; check that the server runs and the URL is right",
                    url=self._shown_url,
                ) from exc
            self._redis, self._pubsub = client, pubsub
            self._scripts = {
                name: client.register_script(_PRELUDE + body)
                for name, body in (
                    ("acquire", _ACQUIRE),
                    ("renew", _RENEW),
                    ("release", _RELEASE),
                    ("rejected", _REJECTED),
                    ("completed", _COMPLETED),
                )
            }
            self._tasks = [
                asyncio.create_task(self._listen(pubsub)),
                asyncio.create_task(self._renew_loop()),
            ]

    async def aclose(self) -> None:
        """Stop renewing, wait for releases under way, and close the connections."""
        async with self._connecting:
            self._closed = True
            if self._releases:
                await asyncio.gather(*self._releases)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks = []
            if self._pubsub is not None:
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._redis is not None:
                await self._redis.aclose()
            self._redis = self._pubsub = None

    @contextlib.asynccontextmanager
    async def hold(self, places: int) -> AsyncIterator[None]:
        """Wait, in order, until ``places`` fit under the shared bound; hold them for the block."""
        if isinstance(places, bool) or not isinstance(places, int) or places < 1:
            raise ValidationError(f"places must be an int >= 1, not {places!r}")
        if places > self._maximum:
            raise ValidationError(
                f"a request for {places} places can never run under an allowance of "
                f"{self._maximum}; ask for fewer images per request"
            )
        await self.connect()
        holder = secrets.token_hex(16)
        async with self._turn:
            decreases = await self._acquire(holder, places)
        self._held[holder] = places
        token = _GRANT.set((self, decreases))
        try:
            yield
        finally:
            _GRANT.reset(token)
            await self._give_back(holder)

    async def rejected(self, allowance: int | None) -> None:
        """Share what a 429 ``inflight_limit`` said: learn ``allowance``, or halve the bound."""
        if allowance is not None and (
            isinstance(allowance, bool) or not isinstance(allowance, int) or allowance < 1
        ):
            raise ValidationError(f"allowance must be an int >= 1 or None, not {allowance!r}")
        held = _GRANT.get()
        round_ = held[1] if held is not None and held[0] is self else -1
        args: list[str | int] = ["" if allowance is None else allowance, self._maximum]
        args += [self._start, round_, int(self._adaptive), self._channel, _STATE_TTL_MS]
        old, new, ceiling, reason, learned = await self._run("rejected", args)
        if allowance is not None and learned != str(allowance).encode():
            logger.info(
                "the service reports an allowance of %d places in flight; the processes "
                "sharing %s hold at most %d from now on",
                allowance,
                self._key,
                ceiling,
            )
        self._ceiling = ceiling
        if reason:
            self._change(old, new, ChangeReason(reason.decode()))

    async def completed(self) -> None:
        """A held request ran: grow the shared bound (adaptive only)."""
        if not self._adaptive or self._limit >= self._ceiling:
            return
        args: list[str | int] = [self._maximum, self._start, self._channel, _STATE_TTL_MS]
        old, new, self._ceiling = await self._run("completed", args)
        self._change(old, new, ChangeReason.INCREASED)

    async def released(self) -> None:
        """Return once any process released places, or after the fallback poll interval."""
        await self.connect()
        freed = self._freed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll):
                await freed.wait()

    async def _acquire(self, holder: str, places: int) -> int:
        """Take a ticket and wait until it is served; the count of decreases by then."""
        args: list[str | int] = [holder, places, self._maximum, self._start]
        args += [self._lease_ms, self._ticket_ms, self._channel]
        try:
            while True:
                wake = self._wake
                granted, used, bound, ceiling, decreases = await self._run("acquire", args)
                self._in_use, self._limit, self._ceiling = used, bound, ceiling
                if granted:
                    return int(decreases)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await wake.wait()
        except BaseException:
            # Cancelled or Redis lost: leave the queue (and drop the places, if the
            # grant happened but its answer was lost).
            await self._give_back(holder)
            raise

    async def _give_back(self, holder: str) -> None:
        """Release ``holder`` even if the caller is cancelled meanwhile."""
        task = asyncio.create_task(self._release(holder))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        await asyncio.shield(task)

    async def _release(self, holder: str) -> bool:
        """Release ``holder`` by id; false if it was not held (already released, or unknown)."""
        async with self._renewing:
            self._held.pop(holder, None)
            try:
                released, used = await self._run("release", [holder, self._channel])
            except (SharedAllowanceError, ClientClosedError) as exc:
                logger.warning("%s; Redis frees the places when their lease ends", exc)
                return False
        self._in_use = used
        if released:
            self._notify(freed=True)
        return bool(released)

    async def _renew(self) -> None:
        """Extend the lease of every holder of this process; register any Redis lost."""
        async with self._renewing:
            if not self._held:
                return
            args: list[str | int] = [self._lease_ms]
            for holder, places in self._held.items():
                args += [holder, places]
            missing = await self._run("renew", args)
        if missing:
            logger.warning(
                "shared allowance at %s: registered %d holder(s) again that Redis had lost "
                "(a restart, or a lease that ran out)",
                self._shown_url,
                missing,
            )

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self._renew()
            except SharedAllowanceError as exc:
                logger.warning("%s; trying again in %.1fs", exc, self._lease / 3)

    async def _listen(self, pubsub: PubSub) -> None:
        """Wake the waiters of this process on each message about the allowance."""
        while True:
            try:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self._poll
                )
            except (RedisError, OSError) as exc:
                logger.debug("shared allowance: lost the release channel (%s)", exc)
                # The waiters poll meanwhile and meet the fault themselves.
                self._notify(freed=True)
                await asyncio.sleep(self._poll)
                continue
            if message is not None:
                self._notify(freed=message["data"] == b"r")

    def _notify(self, *, freed: bool) -> None:
        self._wake.set()
        self._wake = asyncio.Event()
        if freed:
            self._freed.set()
            self._freed = asyncio.Event()

    async def _run(self, name: str, args: Sequence[str | int]) -> Any:
        """Run one script; a Redis fault becomes a :class:`SharedAllowanceError`."""
        if self._redis is None:
            await self.connect()
        try:
            return await self._scripts[name](keys=self._keys, args=list(args))
        except (RedisError, OSError) as exc:
            raise SharedAllowanceError(
                f"lost Redis at {self._shown_url} for the shared allowance: {exc}",
                url=self._shown_url,
            ) from exc

    def _change(self, old: int, new: int, reason: ChangeReason) -> None:
        self._limit = new
        if new == old:
            return
        logger.debug("shared allowance bound %d -> %d places (%s)", old, new, reason)
        if self._on_change is not None:
            try:
                self._on_change(AllowanceChange(old=old, new=new, reason=reason))
            except Exception:
                logger.exception("the allowance's on_change hook failed")
