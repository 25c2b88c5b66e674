"""A shared allowance on Redis: one bound on places in flight for every process using a key.

Ideogram's allowance belongs to the organization, so workers that each keep their own bound
over-subscribe it together. A :class:`RedisAllowance` keeps the bound in Redis instead: every
process that names the same Redis server and ``key`` shares one ``maximum``. It needs the ``redis``
extra (``pip install 'ideogram-async[redis]'``) and Redis 5 or later.

How it works (leases, the queue, what happens when Redis fails) is described
in ``ideogram_async._redis_scripts``, which holds the Lua scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
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

from . import _redis_scripts as scripts
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


def _shown(url: str) -> str:
    """``url`` fit for messages: any password replaced by ``***``, the query dropped."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RedisAllowance:
    """An :class:`~ideogram_async.allowance.Allowance` shared through Redis by every process.

    ``maximum`` is the allowance of all the processes that use the same Redis server and ``key``
    together, in places. ``lease`` (seconds) is how long a holder's places stay taken without
    renewal: a process that dies gives its places back at most that long after its last renewal.
    ``adaptive`` works as for :class:`~ideogram_async.allowance.LocalAllowance` (a slow start from
    10, halving on a 429 without a number), on the shared bound. ``on_change`` is called with an
    :class:`~ideogram_async.allowance.AllowanceChange` when a call of this process changes the
    shared bound.

    Use it as an async context manager, or call :meth:`aclose` when done; :meth:`connect`
    checks the connection up front (the first hold does it otherwise).
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
            for name in ("holders", "places", "queue", "waiting", "counter", "bound", "listening")
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
        self._ticket = b""  # of the waiter at the head of this process's queue, if any
        self._granted: list[int] | None = None  # the answer a grant message brought it
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

    async def __aenter__(self) -> RedisAllowance:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
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
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                await client.aclose()
                raise SharedAllowanceError(
                    f"cannot reach Redis at {self._shown_url} for the shared allowance: "
                    f"{str(exc).rstrip('.')}; check that the server runs and the URL is right",
                    url=self._shown_url,
                ) from exc
            self._redis, self._pubsub = client, pubsub
            self._scripts = {
                name: client.register_script(scripts.PRELUDE + getattr(scripts, name.upper()))
                for name in ("acquire", "renew", "release", "rejected", "completed", "listen")
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
                await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
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
        if (answer := await self._advise("rejected", args)) is None:
            return
        old, new, self._ceiling, reason, learned = answer
        if allowance is not None and learned != str(allowance).encode():
            message = "the service reports an allowance of %d places in flight (key %s)"
            logger.info(message, allowance, self._key)
        if reason:
            self._change(old, new, ChangeReason(reason.decode()))

    async def completed(self) -> None:
        """A held request ran: grow the shared bound (adaptive only)."""
        if not self._adaptive or self._limit >= self._ceiling:
            return
        args: list[str | int] = [self._maximum, self._start, self._channel, _STATE_TTL_MS]
        if (answer := await self._advise("completed", args)) is not None:
            old, new, self._ceiling = answer
            self._change(old, new, ChangeReason.INCREASED)

    async def released(self) -> None:
        """Return once any process released places, or after the fallback poll interval."""
        freed = self._freed
        await self._advise("listen", [self._ticket_ms])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(freed.wait(), self._poll)

    async def _acquire(self, holder: str, places: int) -> int:
        """Take a ticket and wait until it is served; the count of decreases by then."""
        args: list[str | int] = [holder, places, self._maximum, self._start]
        args += [self._lease_ms, self._ticket_ms, self._channel]
        self._ticket, self._granted = holder.encode(), None
        try:
            while True:
                wake = self._wake
                ok, *seen, decreases = self._granted or await self._run("acquire", args)
                self._in_use, self._limit, self._ceiling = seen
                if ok:
                    return int(decreases)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._poll)
        except BaseException:
            # Cancelled or Redis lost: leave the queue (and give the places back if
            # they were granted but the answer or message was lost or not heard yet).
            await self._give_back(holder)
            raise
        finally:
            self._ticket = b""

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
        self._notify(freed=bool(released))
        return bool(released)

    async def _renew(self) -> None:
        """Extend the lease of every holder of this process; register any Redis lost."""
        async with self._renewing:
            if not self._held:
                return
            args: list[str | int] = [self._lease_ms]
            args += [value for pair in self._held.items() for value in pair]
            missing = await self._run("renew", args)
        if missing:
            message = "shared allowance at %s: %d holder(s) lost by Redis registered again"
            logger.warning(message, self._shown_url, missing)

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
                self._notify(wake=True, freed=True)
                await asyncio.sleep(self._poll)
                continue
            data = b"" if message is None else message["data"]
            ticket, *granted = data.split(b":")  # a grant adds: in use, bound, ceiling, decreases
            if data and ticket == self._ticket:
                self._granted = [1, *map(int, granted)] if granted else None
                self._notify(wake=True)
            elif data == b"r":
                self._notify(freed=True)

    def _notify(self, *, wake: bool = False, freed: bool = False) -> None:
        """Wake (``wake``) this process's waiter on Redis, (``freed``) those awaiting released()."""
        if wake:
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

    async def _advise(self, name: str, args: Sequence[str | int]) -> Any:
        """Run a script whose failure must not fail the request it reports on (None then)."""
        try:
            return await self._run(name, args)
        except SharedAllowanceError as exc:
            logger.warning("%s; the shared bound stays as it was", exc)
            return None

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
