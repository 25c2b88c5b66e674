"""Webhook signature checks (webhooks.py) with keys made here by ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ideogram_async import IdeogramError
from ideogram_async.webhooks import (
    WebhookVerificationError,
    load_webhook_keys,
    verify_webhook,
)

NOW = 1_790_000_000.0
BODY = json.dumps({"generation_id": "gen-1", "status": "completed"}).encode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwks(*pairs: tuple[str, Ed25519PrivateKey]) -> dict[str, object]:
    keys: list[object] = [{"kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": "AQAB"}]
    for kid, private in pairs:
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keys.append({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": _b64url(raw)})
    return {"keys": keys}


def _signed(
    private: Ed25519PrivateKey,
    body: bytes = BODY,
    *,
    kid: str = "k1",
    timestamp: str = str(int(NOW)),
    encode: str = "base64",
) -> dict[str, str]:
    message = f"gen-1\nuser-9\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    signature = private.sign(message)
    text = signature.hex() if encode == "hex" else base64.b64encode(signature).decode()
    return {
        "X-Ideogram-Webhook-Generation-Id": "gen-1",
        "x-ideogram-webhook-user-id": "user-9",
        "X-Ideogram-Webhook-Timestamp": timestamp,
        "X-Ideogram-Webhook-Key-Id": kid,
        "X-Ideogram-Webhook-Signature": text,
    }


@pytest.fixture
def private() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.mark.parametrize("encode", ["base64", "hex"])
def test_a_signed_delivery_verifies(private: Ed25519PrivateKey, encode: str) -> None:
    keys = load_webhook_keys(json.dumps(_jwks(("k1", private))))
    delivery = verify_webhook(_signed(private, encode=encode), BODY, keys, now=NOW)
    assert (delivery.generation_id, delivery.user_id, delivery.key_id) == ("gen-1", "user-9", "k1")
    assert delivery.payload == {"generation_id": "gen-1", "status": "completed"}


def test_a_changed_body_or_another_key_fails(private: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    keys = load_webhook_keys(_jwks(("k1", private), ("k2", other)))
    headers = _signed(private)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(headers, BODY.replace(b"completed", b"failed"), keys, now=NOW)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook({**headers, "X-Ideogram-Webhook-Key-Id": "k2"}, BODY, keys, now=NOW)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook({**headers, "X-Ideogram-Webhook-User-Id": "user-8"}, BODY, keys, now=NOW)
    assert issubclass(WebhookVerificationError, IdeogramError)


def test_unknown_key_missing_header_and_garbled_signature(private: Ed25519PrivateKey) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    with pytest.raises(WebhookVerificationError, match="key 'k9', which is not among"):
        verify_webhook(_signed(private, kid="k9"), BODY, keys, now=NOW)
    headers = _signed(private)
    del headers["X-Ideogram-Webhook-Timestamp"]
    with pytest.raises(WebhookVerificationError, match="X-Ideogram-Webhook-timestamp"):
        verify_webhook(headers, BODY, keys, now=NOW)
    garbled = {**_signed(private), "X-Ideogram-Webhook-Signature": "not a signature"}
    with pytest.raises(WebhookVerificationError, match="64-byte Ed25519 signature"):
        verify_webhook(garbled, BODY, keys, now=NOW)


def test_a_stale_delivery_is_refused_unless_the_age_check_is_off(
    private: Ed25519PrivateKey,
) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    old = _signed(private, timestamp=str(int(NOW) - 301))
    with pytest.raises(WebhookVerificationError, match="301s ago, beyond max_age=300s"):
        verify_webhook(old, BODY, keys, now=NOW)
    assert verify_webhook(old, BODY, keys, now=NOW, max_age=None).user_id == "user-9"
    iso = _signed(private, timestamp="2026-09-21T14:13:20+00:00")
    assert verify_webhook(iso, BODY, keys, now=1_790_000_000.0).timestamp.startswith("2026")
    millis = _signed(private, timestamp=str(int(NOW * 1000) + 290_000))
    assert verify_webhook(millis, BODY, keys, now=NOW).key_id == "k1"


def test_a_jwks_without_ed25519_keys_is_refused() -> None:
    # A well-formed key of another curve is not taken for an Ed25519 one.
    x = _b64url(bytes(range(32)))
    with pytest.raises(WebhookVerificationError, match="no Ed25519 key"):
        load_webhook_keys({"keys": [{"kty": "OKP", "crv": "X25519", "kid": "x", "x": x}]})
    with pytest.raises(WebhookVerificationError, match="no Ed25519 key"):
        load_webhook_keys("[]")
