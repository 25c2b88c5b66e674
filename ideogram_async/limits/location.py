"""Where shared limits live: the Redis server (its URL, masked), the key, the connection.

A Redis URL is read as redis-py reads it, and shown only rebuilt from what was read
(scheme, user, host, port, database): a password never appears, whatever it holds.
The key of an organization's allowance (and its command line budget) is a digest of
its API key and the API host, so organizations on one Redis never share one, and the
key cannot be recovered from it. :meth:`RedisLocation.open` is how the shared
allowance and the shared budget connect, and how their faults read.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import attrs
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ..errors import SharedAllowanceError, ValidationError

__all__ = ["REDIS_FAULTS", "RedisLocation", "check_key", "organization_key"]

_KEY_PREFIX = "ideogram_async:"
_IO_TIMEOUT = 5.0
"""Seconds a connect or a command to Redis may take before it counts as lost."""

REDIS_FAULTS = (RedisError, OSError)
"""What a lost or refused Redis connection raises."""


def check_key(key: object) -> str:
    """``key`` as a name for Redis keys under one hash tag, or a :class:`ValidationError`."""
    if not isinstance(key, str) or not key or "{" in key or "}" in key:
        raise ValidationError(f"key must be a non-empty string without braces, not {key!r}")
    return key


def organization_key(api_key: str, base_url: str) -> str:
    """The allowance's Redis key for the organization of ``api_key`` at ``base_url``'s host.

    A SHA-256 digest (of the host and the key) cut to 24 hex digits: the same for every
    process of one organization on one API host, different for any other, and not
    reversible to the key.
    """
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")
    digest = hashlib.sha256(f"ideogram_async allowance\0{host}\0{api_key}".encode())
    return _KEY_PREFIX + digest.hexdigest()[:24]


@attrs.frozen(repr=False)
class RedisLocation:
    """A Redis URL as redis-py reads it; ``shown`` and ``host`` never hold its password."""

    url: str
    shown: str
    """The URL rebuilt from what was read, the password replaced by ``***``."""
    host: str
    """``host:port``, or the socket's path for ``unix://``."""
    place: str
    """``host:port/db``, or the socket's path for ``unix://``: where the keys live."""

    def __repr__(self) -> str:
        return f"RedisLocation({self.shown!r})"

    @classmethod
    def parse(cls, url: object) -> RedisLocation:
        """Read ``url``; if it is not one, a :class:`SharedAllowanceError` without secrets."""
        if not isinstance(url, str):
            raise SharedAllowanceError(
                f"the shared allowance needs a Redis URL as a string, not {type(url).__name__}",
                url="",
            )
        scheme = url.partition("://")[0].lower()
        unreadable = SharedAllowanceError(
            "the Redis URL cannot be read: it must look like redis://[[user]:password@]"
            "host[:port][/db], rediss://... or unix:///path (the password percent-encoded)",
            url=f"{scheme}://***",
        )
        try:
            parts = urlsplit(url)
        except ValueError:
            raise unreadable from None
        if "@" in parts.path + parts.query + parts.fragment:
            # An '@' after the host: the password (or user) holds '/', '?' or '#'.
            raise SharedAllowanceError(
                "the Redis URL's password holds a character that ends the host part "
                "('/', '?' or '#'); percent-encode it: urllib.parse.quote(password, safe='')",
                url=f"{scheme}://***",
            )
        try:
            fields: dict[str, Any] = dict(parse_url(url))
        except ValueError:
            raise unreadable from None
        user = fields.get("username", "")
        secret = f"{user}:***@" if "password" in fields else (f"{user}@" if user else "")
        if scheme == "unix":
            host = place = str(fields.get("path", ""))
        else:
            host = f"{fields.get('host', 'localhost')}:{fields.get('port', 6379)}"
            place = f"{host}/{fields.get('db', 0)}"
        return cls(url=url, shown=f"{scheme}://{secret}{place}", host=host, place=place)

    async def open(self, purpose: str) -> aioredis.Redis:
        """A client connected (pinged) to this server for ``purpose`` ("the shared budget").

        Connects and commands time out after five seconds; a lost connection is tried
        again three times, 0.1, 0.2 and 0.4 s apart. An unreachable server raises
        :meth:`unreachable`'s error.
        """
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=_IO_TIMEOUT,
            socket_timeout=_IO_TIMEOUT,
            retry=Retry(ExponentialBackoff(base=0.05), 3),
        )
        try:
            await client.ping()
        except REDIS_FAULTS as exc:
            await client.aclose()
            raise self.unreachable(purpose, exc) from exc
        return client

    def unreachable(self, purpose: str, exc: BaseException) -> SharedAllowanceError:
        """The error for a server that cannot be reached: what failed, and what to check."""
        return SharedAllowanceError(
            f"cannot reach Redis at {self.shown} for {purpose}: "
            f"{str(exc).rstrip('.')}; check that the server runs and the URL is right",
            url=self.shown,
        )

    def lost(self, purpose: str, exc: BaseException) -> SharedAllowanceError:
        """The error for a command that failed on a connection that was made."""
        return SharedAllowanceError(
            f"lost Redis at {self.shown} for {purpose}: {exc}", url=self.shown
        )
