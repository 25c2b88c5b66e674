"""What Celery workers record in Redis: one record per image, one job per ``enqueue``.

An image's record is a hash written as soon as each part of its result exists (the
result URLs right after the paid upscale, the outputs after the download), so a task
delivered again after its worker died downloads the recorded URLs instead of paying
again. A claim (a key with a lease, renewed while the task works) keeps two deliveries
of one image from working at once. A job lists its images' record keys and keeps a
stream of "image finished" events that ``enqueue --wait`` follows.

Keys (``PREFIX`` is ``ideogram_async:celery``; everything expires after :data:`TTL`):
``PREFIX:image:KEY`` (hash), ``PREFIX:image:KEY:claim`` (string),
``PREFIX:job:ID`` (hash), ``PREFIX:job:ID:images`` (list), ``PREFIX:job:ID:events``
(stream).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from ..errors import SharedAllowanceError

__all__ = ["PREFIX", "TTL", "ImageRecord", "JobStore", "Outcome"]

PREFIX = "ideogram_async:celery"
TTL = 7 * 24 * 3600
"""Seconds records, jobs and events are kept after their last change."""

Outcome = Literal["ok", "failed", "skipped"]
_OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "skipped")
_REFUSED = "refused:"
"""The prefix of an image record's fields counting 429s, one field per reason."""
_IO_TIMEOUT = 10.0
"""Seconds a connect or a command may take (an event wait blocks for less)."""

# Releases a claim only when it is still this task's (compare and delete, atomically).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Extends a claim only when it is still this task's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@attrs.frozen(kw_only=True)
class ImageRecord:
    """What is known about one image's result (empty fields: not yet)."""

    status: str = ""
    """``ok`` or ``failed`` once finished; empty before."""
    source: str = ""
    urls: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    retries: int = 0
    refused: Mapping[str, int] = attrs.field(factory=dict)
    """Requests the service refused with 429, by ``reject_reason`` (``unknown``: none given)."""
    bound: int | None = None
    """The allowance a 429 of the service reported, if one did."""
    job: str = ""
    """The job whose task finished the image (empty: none, or no job)."""
    allowance: str = ""
    """The key of the shared allowance its last delivery held places of."""

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> ImageRecord:
        """The record from its Redis hash."""
        return cls(
            status=fields.get("status", ""),
            source=fields.get("source", ""),
            urls=tuple(json.loads(fields.get("urls", "[]"))),
            outputs=tuple(json.loads(fields.get("outputs", "[]"))),
            error=fields.get("error") or None,
            attempts=int(fields.get("attempts", 0)),
            seconds=float(fields.get("seconds", 0.0)),
            retries=int(fields.get("retries", 0)),
            refused={
                name.removeprefix(_REFUSED): int(count)
                for name, count in fields.items()
                if name.startswith(_REFUSED) and int(count)
            },
            bound=int(fields["bound"]) if fields.get("bound") else None,
            job=fields.get("job", ""),
            allowance=fields.get("allowance", ""),
        )


@attrs.frozen(kw_only=True)
class Event:
    """One "image finished" event of a job's stream."""

    id: str
    index: int
    outcome: Outcome


class JobStore:
    """The records, claims and jobs of the Celery workers, in one Redis database."""

    def __init__(self, redis: aioredis.Redis, shown: str) -> None:
        self._redis = redis
        self._shown = shown
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    @classmethod
    def from_url(cls, url: str, shown: str) -> JobStore:
        """A store on the Redis at ``url`` (``shown`` names it in messages, without secrets)."""
        redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_IO_TIMEOUT,
            socket_timeout=_IO_TIMEOUT,
        )
        return cls(redis, shown)

    async def aclose(self) -> None:
        """Close the connections to Redis."""
        await self._redis.aclose()

    def _failed(self, exc: RedisError) -> SharedAllowanceError:
        return SharedAllowanceError(
            f"the job records in Redis at {self._shown} could not be read or written "
            f"({type(exc).__name__}: {str(exc).rstrip('.')}); check that Redis is up",
            url=self._shown,
        )

    # -- images ------------------------------------------------------------------------

    async def record(self, key: str) -> ImageRecord:
        """The record of the image ``key`` (empty when there is none)."""
        try:
            fields = await self._redis.hgetall(f"{PREFIX}:image:{key}")
        except RedisError as exc:
            raise self._failed(exc) from exc
        return ImageRecord.from_hash(_texts(fields))

    async def write(self, key: str, **fields: Any) -> None:
        """Set fields of the image's record; tuples and lists are stored as JSON."""
        values: dict[FieldT, EncodableT] = {
            name: json.dumps(list(value)) if isinstance(value, tuple | list) else str(value)
            for name, value in fields.items()
            if value is not None
        }
        name = f"{PREFIX}:image:{key}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping=values)
                pipe.expire(name, TTL)
                await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def add(
        self,
        key: str,
        *,
        attempts: int,
        seconds: float,
        retries: int,
        refused: Mapping[str, int],
    ) -> None:
        """Add one delivery's counts to the image's record (deliveries add up)."""
        name = f"{PREFIX}:image:{key}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(name, "attempts", attempts)
                pipe.hincrbyfloat(name, "seconds", seconds)
                pipe.hincrby(name, "retries", retries)
                for reason, count in refused.items():
                    pipe.hincrby(name, f"{_REFUSED}{reason}", count)
                pipe.expire(name, TTL)
                await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def claim(self, key: str, token: str, lease: float) -> bool:
        """Claim the image for ``lease`` seconds; ``False`` when another delivery holds it."""
        try:
            return bool(
                await self._redis.set(
                    f"{PREFIX}:image:{key}:claim", token, nx=True, px=round(lease * 1000)
                )
            )
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def claimed(self, key: str) -> bool:
        """Whether a delivery holds the image's claim now."""
        try:
            return bool(await self._redis.exists(f"{PREFIX}:image:{key}:claim"))
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the claim by ``lease`` seconds; ``False`` when it is no longer ours."""
        name = f"{PREFIX}:image:{key}:claim"
        try:
            return bool(await self._renew(keys=[name], args=[token, round(lease * 1000)]))
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def release(self, key: str, token: str) -> None:
        """Give the claim back (when it is still ours)."""
        try:
            await self._release(keys=[f"{PREFIX}:image:{key}:claim"], args=[token])
        except RedisError as exc:
            raise self._failed(exc) from exc

    # -- jobs --------------------------------------------------------------------------

    async def create_job(self, job: str, keys: Sequence[str], out_dir: str) -> None:
        """Record a job of images (their record keys, in input order) saved into ``out_dir``."""
        name = f"{PREFIX}:job:{job}"
        fields: dict[FieldT, EncodableT] = {
            "out_dir": out_dir,
            "total": len(keys),
            "created": time.time(),
        }
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping=fields)
                pipe.expire(name, TTL)
                if keys:
                    pipe.rpush(f"{name}:images", *keys)
                    pipe.expire(f"{name}:images", TTL)
                await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def job(self, job: str) -> tuple[dict[str, str], list[str]] | None:
        """The job's info and its images' record keys, or ``None`` when there is no such job."""
        name = f"{PREFIX}:job:{job}"
        try:
            info = await self._redis.hgetall(name)
            keys = await self._redis.lrange(f"{name}:images", 0, -1)
        except RedisError as exc:
            raise self._failed(exc) from exc
        return (_texts(info), [_text(key) for key in keys]) if info else None

    async def announce(self, job: str, index: int, outcome: Outcome) -> None:
        """Add "image ``index`` finished with ``outcome``" to the job's events."""
        name = f"{PREFIX}:job:{job}:events"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(name, {"index": str(index), "outcome": outcome})
                pipe.expire(name, TTL)
                await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from exc

    async def events(self, job: str, after: str, *, block: float | None) -> list[Event]:
        """The job's events after the id ``after`` (``"0"``: all), waiting up to ``block`` s
        for one when there is none yet (``None``: not waiting).

        ``block`` must be well under the command timeout (10 s).
        """
        name = f"{PREFIX}:job:{job}:events"
        wait = None if block is None else max(1, round(block * 1000))
        try:
            answer = await self._redis.xread({name: after}, block=wait)
        except RedisError as exc:
            raise self._failed(exc) from exc
        if isinstance(answer, dict):  # RESP3 (a URL with ?protocol=3): {name: [entries]}
            streams: list[Any] = [(name, entries) for name, [entries] in answer.items()]
        else:  # RESP2: [[name, entries]]
            streams = answer
        return [
            Event(id=_text(entry), index=int(fields["index"]), outcome=outcome)
            for _, entries in streams
            for entry, raw in entries
            for fields in [_texts(raw)]
            for outcome in _OUTCOMES
            if fields["outcome"] == outcome
        ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _texts(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash as text (the client decodes already; this tells the type checker so)."""
    return {_text(name): _text(value) for name, value in fields.items()}
