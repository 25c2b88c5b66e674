"""Fault injection for the emulator: what can go wrong, and when it does.

A :class:`Fault` describes one misbehaviour (a status code, a dropped connection, a slow
or broken answer). A :class:`FaultPlan` decides, request by request, which fault (if any)
to inject: first from a fixed script, then at random with a seeded generator, so a run
that found a bug can be replayed exactly.
"""

from __future__ import annotations

import http
import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import attrs

__all__ = ["Fault", "FaultKind", "FaultPlan"]

FaultKind = Literal[
    "status",
    "html",
    "drop",
    "drop_before_body",
    "slow",
    "truncate",
    "malformed_json",
    "wrong_shape",
]

_GATEWAY_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _seconds_header(value: float | str) -> str:
    """Render a ``Retry-After`` value: numbers as seconds, strings (HTTP dates) verbatim."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


@attrs.frozen
class Fault:
    """One injected misbehaviour. Build it with the class methods, e.g. ``Fault.status(503)``.

    ``kind`` says what happens; ``code``, ``headers``, ``body`` and ``content_type`` are
    the canned answer of the kinds that send one; ``delay`` is the pause of ``slow``.
    """

    kind: FaultKind
    code: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    content_type: str = "application/json"
    delay: float = 0.0

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
        should_retry: bool | None = None,
        body: str | None = None,
    ) -> Fault:
        """Answer with ``code`` and a JSON ``{"detail": ...}`` body (or ``body`` verbatim).

        ``retry_after`` sets ``Retry-After`` (a number of seconds, or a string such as an
        HTTP date, sent as is); ``retry_after_ms`` sets ``retry-after-ms``;
        ``should_retry`` sets ``x-should-retry: true|false``. A custom ``body`` is sent as
        ``application/json`` if it parses as JSON, else as ``text/plain``.
        """
        if not 100 <= code <= 599:
            raise ValueError(f"HTTP status must be from 100 to 599, got {code}")
        headers: list[tuple[str, str]] = []
        if retry_after is not None:
            headers.append(("Retry-After", _seconds_header(retry_after)))
        if retry_after_ms is not None:
            headers.append(("retry-after-ms", str(retry_after_ms)))
        if should_retry is not None:
            headers.append(("x-should-retry", "true" if should_retry else "false"))
        content_type = "application/json"
        if body is None:
            body = json.dumps({"detail": f"{_phrase(code)} (injected fault)"})
        else:
            try:
                json.loads(body)
            except ValueError:
                content_type = "text/plain"
        return cls("status", code, tuple(headers), body, content_type)

    @classmethod
    def html(cls, code: int = 502) -> Fault:
        """Answer with a gateway's HTML error page (``Content-Type: text/html``)."""
        page = _GATEWAY_PAGE.format(code=code, phrase=_phrase(code))
        return cls("html", code, body=page, content_type="text/html")

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without answering."""
        return cls("drop")

    @classmethod
    def drop_before_body(cls) -> Fault:
        """Close the connection at once, before reading the request body."""
        return cls("drop_before_body")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering normally (for client timeout tests)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        return cls("slow", delay=seconds)

    @classmethod
    def truncate(cls) -> Fault:
        """Announce a longer ``Content-Length`` than sent, send half the body, then close."""
        return cls("truncate")

    @classmethod
    def malformed_json(cls) -> Fault:
        """Answer 200 with ``Content-Type: application/json`` and a body that is not JSON."""
        return cls("malformed_json", body='{"created": "2000-01-23T04:56:07.000Z", "data": [}')

    @classmethod
    def wrong_shape(cls) -> Fault:
        """Answer 200 with valid JSON that lacks ``created`` and ``data``."""
        return cls("wrong_shape", body=json.dumps({"status": "ok", "images": []}))


def _default_choices() -> tuple[Fault, ...]:
    return (
        Fault.status(503, retry_after=0),
        Fault.status(500),
        Fault.status(429, retry_after=0),
        Fault.drop(),
        Fault.html(502),
    )


class FaultPlan:
    """Decide which requests get which fault: a script first, then seeded random faults.

    Request ``i`` (0-based, counted over the requests this plan governs) takes
    ``script[i]`` while ``i < len(script)`` (``None`` means: behave normally). After the
    script, each request gets a fault with probability ``rate``, picked uniformly from
    ``choices`` (by default 503 and 429 with ``Retry-After: 0``, 500, a dropped
    connection and an HTML 502), drawn from ``random.Random(seed)``: the same plan
    replays the same sequence. ``count`` is the number of requests decided so far. A plan
    keeps state: give each emulator (and each of its route groups) its own.

    With ``per_upload=True`` requests are counted per upload instead (by the file's
    SHA-256 on the upscale routes, by URL on the image routes): the ``i``-th attempt of
    each upload takes ``script[i]``, and the random draw is seeded by the seed, the upload
    and ``i``. Which attempts fail then does not depend on the order in which concurrent
    requests arrive, and a script such as ``[Fault.status(503)]`` fails every upload once.
    Such a plan decides after the body is read, so ``drop_before_body`` acts as ``drop``.
    """

    def __init__(
        self,
        script: Sequence[Fault | None] = (),
        *,
        rate: float = 0.0,
        choices: Sequence[Fault] = (),
        seed: int = 0,
        per_upload: bool = False,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be from 0 to 1, got {rate}")
        self.script: tuple[Fault | None, ...] = tuple(script)
        self.rate = rate
        self.choices: tuple[Fault, ...] = tuple(choices) or _default_choices()
        self.seed = seed
        self.per_upload = per_upload
        self.count = 0
        self._rng = random.Random(seed)
        self._attempts: Counter[str] = Counter()

    @classmethod
    def always(cls, fault: Fault) -> FaultPlan:
        """A plan that injects ``fault`` into every request."""
        return cls(rate=1.0, choices=(fault,))

    def next_fault(self, upload: str | None = None) -> Fault | None:
        """Decide the fault of the next request (``None``: answer normally).

        ``upload`` identifies what the request is about; a ``per_upload`` plan needs it.
        """
        self.count += 1
        if not self.per_upload:
            index, rng = self.count - 1, self._rng
        elif upload is None:
            raise ValueError("a per_upload FaultPlan needs the upload of each request")
        else:
            index = self._attempts[upload]
            self._attempts[upload] += 1
            rng = random.Random(f"{self.seed}:{upload}:{index}")
        if index < len(self.script):
            return self.script[index]
        if self.rate and rng.random() < self.rate:
            return rng.choice(self.choices)
        return None

    def __repr__(self) -> str:
        return (
            f"FaultPlan(script={list(self.script)!r}, rate={self.rate!r}, "
            f"choices={list(self.choices)!r}, seed={self.seed!r}, "
            f"per_upload={self.per_upload!r})"
        )
