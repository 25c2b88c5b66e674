"""The emulator's result images: kept for a while at a token, then gone (410)."""

from __future__ import annotations

import itertools
import re
import secrets
from collections import deque
from collections.abc import Callable
from typing import Literal

__all__ = ["ImageStore"]

# A token: the serial number in hex, a dash, 16 random hex digits.
_TOKEN = re.compile(r"([0-9a-f]+)-[0-9a-f]{16}")


class ImageStore:
    """Result images by URL token, each kept for ``ttl`` seconds of ``clock``.

    Tokens carry a serial number, so a token this store handed out and then dropped
    is told apart from one it never issued: ``"expired"`` (410) versus ``"missing"`` (404).
    ``clock`` must never go back: images expire in the order they were put.
    """

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        # token -> image, plus the tokens in order of expiry.
        self._images: dict[str, bytes] = {}
        self._expiries: deque[tuple[float, str]] = deque()
        self._serials = itertools.count()
        self._issued = 0

    def put(self, image: bytes) -> str:
        """Keep ``image`` for ``ttl`` seconds and return its token."""
        self._evict()
        serial = next(self._serials)
        self._issued = serial + 1
        token = f"{serial:x}-{secrets.token_hex(8)}"
        expiry = self._clock() + self._ttl
        self._images[token] = image
        self._expiries.append((expiry, token))
        return token

    def get(self, token: str) -> bytes | Literal["expired", "missing"]:
        """The image at ``token``, or why there is none."""
        self._evict()
        image = self._images.get(token)
        if image is not None:
            return image
        return "expired" if self._was_issued(token) else "missing"

    def _evict(self) -> None:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            del self._images[self._expiries.popleft()[1]]

    def _was_issued(self, token: str) -> bool:
        """Whether a token is one this store handed out (its serial is past)."""
        match = _TOKEN.fullmatch(token)
        return match is not None and int(match[1], 16) < self._issued
