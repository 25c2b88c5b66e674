"""A shared allowance on Redis: one bound on places in flight for every process of an organization.

Ideogram's allowance belongs to the organization, so workers that each keep their own bound
over-subscribe it together. A :class:`RedisAllowance` keeps the bound in Redis instead: every
process that names the same Redis server and key shares one ``maximum``. It needs the ``redis``
extra (``pip install 'ideogram-async[redis]'``) and Redis 5 or later.

How it works (leases, the queue, state loss) is described in ``scripts.py``, which holds the
Lua scripts; the bound's rules are those of ``bound.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs

try:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript
except ImportError as exc:  # pragma: no cover - exercised in a test by hiding redis
    raise ImportError(
        "ideogram_async.limits.RedisAllowance needs the redis package: "
        "pip install 'ideogram-async[redis]'"
    ) from exc

from ..errors import ClientClosedError, SharedAllowanceError, ValidationError
from .bound import DEFAULT_ALLOWANCE, FORGET_AFTER, AllowanceChange, ChangeReason
from .location import REDIS_FAULTS, RedisLocation, check_key, organization_key
from .scripts import ACQUIRE, KEYS, PRELUDE, REJECTED, RELEASE, RENEW

__all__ = ["RedisAllowance"]

logger = logging.getLogger("ideogram_async")

_PURPOSE = "the shared allowance"


@attrs.define
class _Grant:
    """A hold of the current task: what a report from inside its block refers to."""

    allowance: RedisAllowance
    holder: str
    level: int
    """Places held by every process once it was granted, its own included."""
    limit: int
    """The shared bound when it was granted."""
    round: int
    ran: bool = False
    returned: bool = False


_grant: contextvars.ContextVar[_Grant | None] = contextvars.ContextVar(
    "ideogram_async_redis_grant", default=None
)


class RedisAllowance:
    """An :class:`~ideogram_async.limits.Allowance` shared through Redis by every process.

    ``maximum`` is the allowance of all the processes that use the same Redis server and key
    together, in places. The key defaults to one per organization (a digest of the API key
    and the API host, see :func:`~ideogram_async.limits.organization_key`): the
    :class:`~ideogram_async.IdeogramClient` it is given to names it when the client is
    created. ``key=`` names it instead (then any client may use it). ``lease`` (seconds) is
    how long a holder's places stay taken without renewal: a process that dies gives its
    places back at most that long after its last renewal; after Redis loses its data,
    nothing is granted for one lease while the running holds register again. A process
    that finds no state without having known any (the key's first use, or a loss that
    only the processes holding places know of) waits until every process listening has
    answered, or one lease.
    ``adaptive``, ``on_change`` and ``forget_after`` work as for
    :class:`~ideogram_async.limits.LocalAllowance`, on the shared bound.

    Use it as an async context manager, or call :meth:`aclose` when done; :meth:`connect`
    checks the connection up front (the first hold does it otherwise). A URL that cannot
    be read raises :class:`~ideogram_async.SharedAllowanceError` at once.
    """

    def __init__(
        self,
        url: str,
        maximum: int = DEFAULT_ALLOWANCE,
        *,
        key: str | None = None,
        lease: float = 30.0,
        adaptive: bool = True,
        on_change: Callable[[AllowanceChange], None] | None = None,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        self._location = RedisLocation.parse(url)
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise ValidationError(f"maximum must be an int >= 1 (places), not {maximum!r}")
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease >= 0.1:
            raise ValidationError(f"lease must be a number of seconds >= 0.1, not {lease!r}")
        if not forget_after > 0:
            raise ValidationError(f"forget_after must be > 0 seconds, not {forget_after!r}")
        self._maximum = maximum
        self._named = key is not None
        self._key: str | None = None
        self._keys: list[str]  # set with the key
        self._channel = ""
        if key is not None:
            self._use_key(check_key(key))
        self._lease = float(lease)
        self._lease_ms = round(self._lease * 1000)
        self._poll = min(self._lease / 4, 1.0)
        self._ticket_ms = round(self._poll * 3000)
        self._ttl_ms = round(forget_after * 1000)
        self._adaptive = adaptive
        self._on_change = on_change
        self._start = min(maximum, DEFAULT_ALLOWANCE) if adaptive else maximum
        self._limit = self._start
        self._in_use = 0
        self._epoch = ""
        self._redis: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._scripts: dict[str, AsyncScript]  # set by connect, before any script runs
        self._tasks: list[asyncio.Task[None]] = []
        self._releases: set[asyncio.Task[None]] = set()
        self._held: dict[str, int] = {}
        self._ticket = b""  # of the waiter at the head of this process's queue, if any
        self._granted: list[int] | None  # the answer a grant message brought its waiter
        self._closed = False
        self._connecting = asyncio.Lock()
        self._turn = asyncio.Lock()
        self._renewing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._answering = ""  # the epoch of a "lost" message heard, not yet answered

    def __repr__(self) -> str:
        return (
            f"RedisAllowance(url={self._location.shown!r}, key={self._key!r}, "
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
    def key(self) -> str | None:
        """The key the allowance is kept under (None until a client names it)."""
        return self._key

    @property
    def redis_host(self) -> str:
        """``host:port`` of the Redis server (or its socket's path), never a password."""
        return self._location.host

    @property
    def url(self) -> str:
        """The Redis URL with any password replaced by ``***``."""
        return self._location.shown

    def bind_organization(self, *, api_key: str, base_url: str) -> None:
        """Key the allowance by the organization of ``api_key`` at ``base_url``'s host.

        Called by :class:`~ideogram_async.IdeogramClient` when it is created. Nothing
        changes when ``key=`` named the key; an allowance already keyed for another
        organization raises :class:`ValidationError` (one organization, one allowance).
        """
        if self._named:
            return
        key = organization_key(api_key, base_url)
        if self._key is not None and key != self._key:
            raise ValidationError(
                "this RedisAllowance already serves another organization (another API key "
                "or API host): give each organization its own RedisAllowance, or name the "
                "allowance with key="
            )
        self._use_key(key)

    def _use_key(self, key: str) -> None:
        self._key = key
        tag = "{" + key + "}"
        self._keys = [f"{tag}:{name}" for name in KEYS]
        self._channel = f"{tag}:events"

    async def __aenter__(self) -> RedisAllowance:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect to Redis; raise a clear error if it is unreachable.

        Once the key is known (``key=``, or a client named it) it also subscribes to the
        allowance's messages and starts renewing leases; the first hold does all of it
        otherwise.
        """
        async with self._connecting:
            if self._closed:
                raise ClientClosedError("this RedisAllowance was closed; create a new one")
            if self._redis is None:
                self._redis = await self._location.open(_PURPOSE)
            if self._key is not None and self._pubsub is None:
                pubsub = self._redis.pubsub()
                try:
                    await pubsub.subscribe(self._channel)
                except REDIS_FAULTS as exc:
                    await pubsub.aclose()
                    raise self._location.unreachable(_PURPOSE, exc) from exc
                self._pubsub = pubsub
                scripts = {
                    "acquire": ACQUIRE,
                    "renew": RENEW,
                    "release": RELEASE,
                    "rejected": REJECTED,
                }
                self._scripts = {
                    name: self._redis.register_script(PRELUDE + body)
                    for name, body in scripts.items()
                }
                self._tasks = [
                    asyncio.create_task(self._listen(pubsub)),
                    asyncio.create_task(self._renew_loop()),
                ]

    async def _ready(self) -> None:
        """Connected and subscribed under a key, or a :class:`ValidationError` saying why not."""
        if self._key is None:
            raise ValidationError(
                "this RedisAllowance has no key yet: give it to an IdeogramClient (which keys "
                "it by its organization) before using it, or pass key="
            )
        if self._pubsub is None:
            await self.connect()

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
                await self._pubsub.aclose()
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
        await self._ready()
        holder = secrets.token_hex(16)
        async with self._turn:
            level, limit, round_ = await self._acquire(holder, places)
        self._held[holder] = places
        grant = _Grant(self, holder, level, limit, round_)
        token = _grant.set(grant)
        try:
            yield
        finally:
            _grant.reset(token)
            if not grant.returned:
                await self._give_back(grant)

    async def rejected(self, allowance: int | None) -> None:
        """Share what a 429 said: learn, back off, give the refused request's places back."""
        if allowance is not None and (
            isinstance(allowance, bool) or not isinstance(allowance, int) or allowance < 1
        ):
            raise ValidationError(f"allowance must be an int >= 1 or None, not {allowance!r}")
        grant = _grant.get()
        if grant is not None and (grant.allowance is not self or grant.returned):
            grant = None  # not a hold of this allowance: it refused none of its places
        # Without one, a fresh id that holds nothing (the script takes it as the epoch
        # too, should this be the key's first use).
        holder, round_ = (grant.holder, grant.round) if grant else (secrets.token_hex(16), -1)
        args: list[str | int | float] = [holder, "" if allowance is None else allowance]
        args += [self._maximum, self._start, round_, int(self._adaptive), random.random()]
        args += [self._ttl_ms, self._channel, self._epoch, self._lease_ms]
        if grant:
            grant.returned = True
            self._held.pop(holder, None)
        if (answer := await self._advise("rejected", args)) is None:
            if grant:
                await self._give_back(grant)
            return
        old, new, _, reason, learned = answer
        if allowance is not None and learned != str(allowance).encode():
            message = "the service reports an allowance of %d places in flight (key %s)"
            logger.info(message, allowance, self._key)
        self._limit = new
        if reason:
            self._change(old, new, ChangeReason(reason.decode()))

    async def completed(self) -> None:
        """The request held here ran: its release applies it to the shared bound."""
        grant = _grant.get()
        if grant is not None and grant.allowance is self:
            grant.ran = True

    async def _acquire(self, holder: str, places: int) -> tuple[int, int, int]:
        """Take a ticket and wait until it is served; (places in use, bound, round) once granted."""
        self._ticket, self._granted = holder.encode(), None
        try:
            while True:
                args: list[str | int] = [holder, places, self._maximum, self._start]
                args += [self._lease_ms, self._ticket_ms, self._channel, self._epoch]
                wake = self._wake
                answer = self._granted or await self._run("acquire", args)
                if len(answer) > 5:
                    self._epoch = answer[5].decode()
                if answer[0] < 0:  # Redis lost its data: register this process's holds first
                    await self._renew()
                    continue
                status, used, self._limit, _, extra = answer[:5]
                self._in_use = used
                if status == 1:
                    return used, self._limit, extra
                timeout = min(self._poll, extra / 1000) if extra > 0 else self._poll
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        except BaseException:
            # Cancelled or Redis lost: leave the queue (and give the places back if
            # they were granted but the answer or message was lost or not heard yet).
            await self._give_back(_Grant(self, holder, 0, 0, 0))
            raise
        finally:
            self._ticket = b""

    async def _give_back(self, grant: _Grant) -> None:
        """Release ``grant`` even if the caller is cancelled meanwhile."""
        task = asyncio.create_task(self._release(grant))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        await asyncio.shield(task)

    async def _release(self, grant: _Grant) -> None:
        """Release ``grant``'s places, if Redis holds them; if it ran, the bound learns from it."""
        async with self._renewing:
            self._held.pop(grant.holder, None)
            args: list[str | int] = [grant.holder, self._channel, int(grant.ran), grant.level]
            args += [self._maximum, self._start, int(self._adaptive), self._ttl_ms]
            args += [self._epoch, self._lease_ms, grant.round, grant.limit]
            try:
                _, self._in_use, old, new, _ = await self._run("release", args)
            except (SharedAllowanceError, ClientClosedError) as exc:
                logger.warning("%s; Redis frees the places when their lease ends", exc)
                return
        self._limit = new
        self._change(old, new, ChangeReason.INCREASED)

    async def _renew(self, answering: str = "") -> None:
        """Extend the lease of every holder of this process; register those Redis lost.

        ``answering``: the epoch of the ``lost`` message this renewal answers.
        """
        async with self._renewing:
            args: list[str | int] = [self._lease_ms, self._epoch, self._channel]
            args += [secrets.token_hex(16), answering]
            args += [value for pair in self._held.items() for value in pair]
            missing, epoch = await self._run("renew", args)
        self._epoch = epoch.decode()
        if missing:
            message = "shared allowance at %s: %d hold(s) lost by Redis registered again"
            logger.warning(message, self.url, missing)

    async def _renew_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._lease / 3)
            self._lost = asyncio.Event()
            answering, self._answering = self._answering, ""
            if not self._held and not answering:
                continue
            try:
                await self._renew(answering)
            except SharedAllowanceError as exc:
                logger.warning("%s; trying again in %.1fs", exc, self._lease / 3)

    async def _listen(self, pubsub: PubSub) -> None:
        """Wake this process's waiter on its grant; register the holds again on ``lost``."""
        while True:
            try:  # waits for the next message (aclose cancels the wait)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except REDIS_FAULTS as exc:
                logger.debug("shared allowance: lost the message channel (%s)", exc)
                # The waiters poll meanwhile and meet the fault themselves.
                self._lost.set()
                self._notify()
                await asyncio.sleep(self._poll)
                continue
            data = b"" if message is None else message["data"]
            ticket, *granted = data.split(b":")  # a grant adds: in use, bound, ceiling, round
            if ticket == b"lost":  # lost:<epoch>
                self._answering = granted[0].decode()
                self._lost.set()
            elif data and ticket == self._ticket:
                self._granted = [1, *map(int, granted)]
                self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _run(self, name: str, args: Sequence[str | int | float]) -> Any:
        """Run one script; a Redis fault becomes a :class:`SharedAllowanceError`."""
        await self._ready()
        try:
            return await self._scripts[name](keys=self._keys, args=list(args))
        except REDIS_FAULTS as exc:
            raise self._location.lost(_PURPOSE, exc) from exc

    async def _advise(self, name: str, args: Sequence[str | int | float]) -> Any:
        """Run a script whose failure must not fail the request it reports on (None then)."""
        try:
            return await self._run(name, args)
        except SharedAllowanceError as exc:
            logger.warning("%s; the shared bound stays as it was", exc)
            return None

    def _change(self, old: int, new: int, reason: ChangeReason) -> None:
        if new == old:
            return
        logger.debug("shared allowance bound %d -> %d places (%s)", old, new, reason)
        if self._on_change is not None:
            try:
                self._on_change(AllowanceChange(old=old, new=new, reason=reason))
            except Exception:
                logger.exception("the allowance's on_change hook failed")
