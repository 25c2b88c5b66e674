"""Check that a webhook delivery really comes from Ideogram (Ed25519 signatures).

Needs the ``webhooks`` extra (``pip install 'ideogram-async[webhooks]'``, which brings
``cryptography``). Ideogram signs each delivery with one of the keys it publishes at
``https://api.ideogram.ai/v1/.well-known/jwks.json``: fetch that document, turn it
into keys with :func:`load_webhook_keys`, and check each delivery with
:func:`verify_webhook` before trusting its body::

    keys = load_webhook_keys(jwks_document)
    delivery = verify_webhook(request.headers, await request.read(), keys)

The signed message is the generation id, the user id, the timestamp and the SHA-256
(hex) of the raw body, one per line, as sent in the ``X-Ideogram-Webhook-*`` headers.
The ``Key-Id`` header is a hint: the key it names is tried first, then every other
published key, so deliveries keep verifying while Ideogram rotates its keys.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ValidationError, WebhookVerificationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "DEFAULT_MAX_SKEW",
    "WebhookDelivery",
    "WebhookVerificationError",
    "load_webhook_keys",
    "verify_webhook",
]

_PREFIX = "x-ideogram-webhook-"
_HEADERS = ("generation-id", "user-id", "timestamp", "key-id", "signature")
_SIGNATURE_SIZE = 64
DEFAULT_MAX_SKEW = 60.0
"""How far ahead of the receiver's clock (seconds) a delivery may be stamped by default."""
_EXTRA_HINT = "webhook verification needs cryptography: pip install 'ideogram-async[webhooks]'"


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """A delivery whose signature checked out: its headers and its JSON body."""

    generation_id: str
    user_id: str
    timestamp: str
    """As sent in the header."""
    key_id: str
    """The id of the published key whose signature matched (the header's is only a hint)."""
    payload: Any
    """The body, parsed as JSON."""


def _crypto() -> tuple[Any, type[Exception]]:
    """``cryptography``'s Ed25519 module and its bad-signature error, imported on use."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc
    return ed25519, InvalidSignature


def _unbase64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)


def load_webhook_keys(jwks: Mapping[str, Any] | str | bytes) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (a dict or its JSON text), by key id.

    Keys of other types are skipped; a document with no usable key raises
    :class:`WebhookVerificationError`.
    """
    ed25519, _ = _crypto()
    document = json.loads(jwks) if isinstance(jwks, str | bytes) else jwks
    entries = document.get("keys") if isinstance(document, Mapping) else None
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or (entry.get("kty"), entry.get("crv")) != (
            "OKP",
            "Ed25519",
        ):
            continue
        kid, x = entry.get("kid"), entry.get("x")
        if isinstance(kid, str) and isinstance(x, str):
            try:
                keys[kid] = ed25519.Ed25519PublicKey.from_public_bytes(_unbase64(x))
            except (ValueError, binascii.Error):
                continue
    if not keys:
        raise WebhookVerificationError(
            "the JWKS document holds no Ed25519 key (kty OKP, crv Ed25519, kid and x)"
        )
    return keys


def _decode_signature(text: str) -> bytes:
    """The 64 signature bytes, from hex or (URL-safe) base64."""
    text = text.strip()
    with contextlib.suppress(ValueError):  # neither hex nor base64 (binascii.Error)
        raw = bytes.fromhex(text) if len(text) == 2 * _SIGNATURE_SIZE else _unbase64(text)
        if len(raw) == _SIGNATURE_SIZE:
            return raw
    raise WebhookVerificationError(
        "the signature header is not a 64-byte Ed25519 signature in hex or base64"
    )


def _sent_at(timestamp: str) -> float:
    """Seconds since the epoch from Unix seconds (or milliseconds) or ISO 8601 text."""
    try:
        value = float(timestamp)
    except ValueError:
        try:
            return datetime.fromisoformat(timestamp).timestamp()
        except ValueError:
            raise WebhookVerificationError(
                f"the timestamp header {timestamp!r} is neither Unix time nor ISO 8601"
            ) from None
    if not math.isfinite(value):
        raise WebhookVerificationError(f"the timestamp header {timestamp!r} is not a finite time")
    return value / 1000 if value > 1e11 else value


def _seconds(name: str, value: float) -> float:
    """``value`` if it is a finite number of seconds, at least 0; else ``ValidationError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValidationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be finite, got {value!r}; pass None for no check")
    return float(value)


def _signer(
    keys: Mapping[str, Ed25519PublicKey], key_id: str, signature: bytes, message: bytes
) -> str | None:
    """The id of the key that signed ``message``: ``key_id`` is tried first, then the rest."""
    _, invalid = _crypto()
    hinted = [key_id] if key_id in keys else []
    for kid in hinted + [kid for kid in keys if kid != key_id]:
        try:
            keys[kid].verify(signature, message)
        except invalid:
            continue
        return kid
    return None


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    max_age: float | None = 300.0,
    max_skew: float = DEFAULT_MAX_SKEW,
    now: float | None = None,
) -> WebhookDelivery:
    """Check a delivery's signature and age; return it, or raise :class:`WebhookVerificationError`.

    ``headers`` are the request's (any case), ``body`` its raw bytes (before any
    parsing), ``keys`` the published keys by id (:func:`load_webhook_keys`). The key
    named by the ``Key-Id`` header is tried first, then every other one: a delivery
    signed by any published key is genuine. ``max_age`` (seconds) refuses deliveries
    stamped longer ago than that before ``now`` (the current time by default), so a
    captured delivery cannot be replayed later, and ``max_skew`` those stamped more
    than that ahead of it (clocks differ a little, never by minutes); ``max_age=None``
    turns both checks off. A timestamp that is not a finite time, and a body that is
    not JSON, are refused whatever the settings. Bad settings raise ``ValidationError``.
    """
    if max_age is not None:
        max_age = _seconds("max_age", max_age)
    max_skew = _seconds("max_skew", max_skew)
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [f"X-Ideogram-Webhook-{h}" for h in _HEADERS if _PREFIX + h not in lowered]
    if missing:
        raise WebhookVerificationError(f"the delivery lacks the {', '.join(missing)} header(s)")
    generation_id, user_id, timestamp, key_id, signature = (lowered[_PREFIX + h] for h in _HEADERS)
    message = "\n".join(
        (generation_id, user_id, timestamp, hashlib.sha256(body).hexdigest())
    ).encode()
    signer = _signer(keys, key_id, _decode_signature(signature), message)
    if signer is None:
        named = "" if key_id in keys else f" (it names key {key_id!r}, which is not among them)"
        raise WebhookVerificationError(
            f"the signature matches none of the {len(keys)} given key(s){named}: the delivery "
            f"was not sent by Ideogram, was altered on the way, or is signed with a key "
            f"published since; fetch the current keys from Ideogram's JWKS document"
        )
    age = (time.time() if now is None else now) - _sent_at(timestamp)
    if max_age is not None and age > max_age:
        raise WebhookVerificationError(
            f"the delivery is stamped {age:.0f}s ago, beyond max_age={max_age:g}s; "
            f"it may be a replay"
        )
    if max_age is not None and -age > max_skew:
        raise WebhookVerificationError(
            f"the delivery is stamped {-age:.0f}s ahead, beyond max_skew={max_skew:g}s; "
            f"a clock is wrong (this one or the sender's)"
        )
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
    return WebhookDelivery(
        generation_id=generation_id,
        user_id=user_id,
        timestamp=timestamp,
        key_id=signer,
        payload=payload,
    )
