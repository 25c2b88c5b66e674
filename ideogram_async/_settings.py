"""A client's settings: one frozen object, checked in one place before anything is sent.

:class:`Settings` resolves the constructor's arguments and the environment into
frozen, validated values. A client reads every setting from its one ``Settings``
(v1 and v2 calls alike); ``with_options`` resolves a new one from it.
"""

from __future__ import annotations

import enum
import os
import re
import unicodedata
from urllib.parse import urlsplit

import aiohttp
import attrs

from ._checks import int_at_least, of_type, positive_number, seconds_field
from .errors import ValidationError
from .limits import DEFAULT_ALLOWANCE, Allowance, LocalAllowance
from .retry import RetryHook, RetryPolicy

__all__ = ["OFFICIAL_BASE_URL", "Flavor", "Secret", "Settings", "Timeouts"]

OFFICIAL_BASE_URL = "https://api.ideogram.ai"


class Flavor(enum.StrEnum):
    """Which form of the endpoint to speak: a proxy's or Ideogram's own."""

    PROXY = "proxy"
    """``POST {base_url}/ideogram/upscale`` with ``Authorization: Bearer <key>``."""
    OFFICIAL = "official"
    """``POST https://api.ideogram.ai/upscale`` with ``Api-Key: <key>``; also the v2 upscalers."""


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-attempt time limits, in seconds. The whole-call limit is ``RetryPolicy.deadline``.

    An upscale takes seconds to a minute, so ``attempt`` is generous. It starts
    only once the request holds its places in flight, so waiting for them never
    counts against it.
    """

    connect: float = seconds_field(10.0)
    """Opening a TCP/TLS connection."""
    attempt: float = seconds_field(180.0)
    """One request: upload, the service's work and reading the answer."""


class Secret:
    """Holds the API key so that no ``repr``, log line or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with the key masked (a service may echo it into an error body)."""
        return text.replace(self._value, "***")

    def __repr__(self) -> str:
        return "'***'"


def _checked_key(key: object) -> str:
    """``key`` without surrounding blanks, if it can go in an HTTP header as it is.

    A control character (a line break copied along, a tab) or a character outside
    Latin-1 would fail every request, or worse, split the header; the message says
    where, never what the key is.
    """
    if not isinstance(key, str):
        raise ValidationError(f"api_key must be a str, got {type(key).__name__}")
    key = key.strip()
    for position, char in enumerate(key, 1):
        if unicodedata.category(char) == "Cc":
            raise ValidationError(
                f"the API key has a control character (such as a line break or a tab) at "
                f"position {position}; copy the key again without it"
            )
        if ord(char) > 0xFF:
            raise ValidationError(
                f"the API key has a character at position {position} that cannot go in an "
                f"HTTP header (outside Latin-1); copy the key again (keys are plain text)"
            )
    return key


def _checked_base_url(base: str) -> str:
    """``base`` if it is an http(s) URL with a host and no credentials in it."""
    shown = repr(re.sub(r"//[^/]*@", "//***@", base))  # never show a password
    if not base.startswith(("http://", "https://")):
        raise ValidationError(f"base_url must start with http:// or https://, got {shown}")
    invalid = f"base_url is not a valid URL: {shown}; check its host and port"
    try:
        parts = urlsplit(base)
        _ = parts.port  # raises ValueError when out of range
    except ValueError:
        raise ValidationError(invalid) from None
    if not parts.hostname:
        raise ValidationError(invalid)
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            f"base_url must not contain a user name or password ({shown}): credentials "
            f"in a URL end up in logs; pass the key as api_key="
        )
    return base


@attrs.frozen(kw_only=True)
class Settings:
    """The validated settings of one client; build it with :meth:`resolve`."""

    flavor: Flavor
    key: Secret
    base_url: str
    """Without a trailing slash."""
    allowance: Allowance
    requests_per_second: float | None
    max_file_size: int
    max_download_size: int
    max_response_size: int
    timeouts: Timeouts
    retry: RetryPolicy
    on_retry: RetryHook | None

    @property
    def url(self) -> str:
        """The upscale endpoint of the flavor."""
        path = "/ideogram/upscale" if self.flavor is Flavor.PROXY else "/upscale"
        return self.base_url + path

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | None,
        base_url: str | None,
        flavor: Flavor | str,
        allowance: int | Allowance | None,
        adaptive: bool,
        requests_per_second: float | None,
        timeouts: Timeouts | None,
        retry: RetryPolicy | None,
        max_file_size: int,
        max_download_size: int,
        max_response_size: int,
        session: aiohttp.ClientSession | None,
        on_retry: RetryHook | None,
    ) -> Settings:
        """Check the client's arguments, filling in the key and URL from the environment."""
        try:
            kind = Flavor(flavor)
        except ValueError:
            raise ValidationError(f"flavor must be 'proxy' or 'official', got {flavor!r}") from None
        given = api_key if api_key is not None else os.environ.get("IDEOGRAM_API_KEY")
        key = "" if given is None else _checked_key(given)
        if not key:
            raise ValidationError(
                "no API key: pass api_key= or set the IDEOGRAM_API_KEY environment variable"
            )
        base = base_url or os.environ.get("IDEOGRAM_BASE_URL")
        if not base:
            if kind is Flavor.PROXY:
                raise ValidationError(
                    "no base URL for the proxy flavor: pass base_url= or set "
                    "IDEOGRAM_BASE_URL (or use flavor='official' for api.ideogram.ai)"
                )
            base = OFFICIAL_BASE_URL
        base = _checked_base_url(base)
        if session is not None and {"authorization", "api-key"} & {
            h.lower() for h in session.headers
        }:
            raise ValidationError(
                "the session passed in sends an Authorization or Api-Key header with every "
                "request, which would leak the key to image hosts; pass api_key= instead"
            )
        return cls(
            flavor=kind,
            key=Secret(key),
            base_url=base.rstrip("/"),
            allowance=_allowance(allowance, adaptive),
            requests_per_second=positive_number(
                "requests_per_second", requests_per_second, or_none=True
            ),
            max_file_size=int_at_least("max_file_size", max_file_size, 1),
            max_download_size=int_at_least("max_download_size", max_download_size, 1),
            max_response_size=int_at_least("max_response_size", max_response_size, 1),
            timeouts=of_type("timeouts", timeouts, Timeouts) or Timeouts(),
            retry=of_type("retry", retry, RetryPolicy) or RetryPolicy(),
            on_retry=_hook(on_retry),
        )


def _hook(on_retry: object) -> RetryHook | None:
    if on_retry is not None and not callable(on_retry):
        raise ValidationError(
            f"on_retry must be a function taking a RetryEvent, got {type(on_retry).__name__}"
        )
    return on_retry


def _allowance(allowance: int | Allowance | None, adaptive: bool) -> Allowance:
    """The limiter of places: ``allowance`` as given, or the default of 10 images."""
    of_type("adaptive", adaptive, bool)
    if allowance is None:
        allowance = DEFAULT_ALLOWANCE
    if isinstance(allowance, Allowance):
        if not adaptive:
            raise ValidationError(
                "adaptive= applies to an allowance given as a number; an Allowance "
                "object brings its own setting"
            )
        return allowance
    if isinstance(allowance, bool) or not isinstance(allowance, int) or allowance < 1:
        raise ValidationError(
            f"allowance must be a number of images in flight >= 1 or an Allowance, "
            f"got {allowance!r}; the service's default allowance is {DEFAULT_ALLOWANCE}"
        )
    return LocalAllowance(allowance, adaptive=adaptive)
