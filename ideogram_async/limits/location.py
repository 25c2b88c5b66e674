"""Where a shared allowance lives: the Redis server (its URL, masked) and the key.

A Redis URL is read as redis-py reads it, and shown only rebuilt from what was read
(scheme, user, host, port, database): a password never appears, whatever it holds.
The key of an organization's allowance is a digest of its API key and the API host,
so organizations on one Redis never share a bound, and the key cannot be recovered
from it.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import attrs
from redis.asyncio.connection import parse_url

from ..errors import SharedAllowanceError

__all__ = ["RedisLocation", "organization_key"]

_KEY_PREFIX = "ideogram_async:"


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
            host = str(fields.get("path", ""))
            shown = f"unix://{secret}{host}"
        else:
            host = f"{fields.get('host', 'localhost')}:{fields.get('port', 6379)}"
            shown = f"{scheme}://{secret}{host}/{fields.get('db', 0)}"
        return cls(url=url, shown=shown, host=host)
