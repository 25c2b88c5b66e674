"""Webhook signature checks (webhooks.py) with keys made here by ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ideogram_async import IdeogramError, ValidationError
from ideogram_async.webhooks import (
    DEFAULT_MAX_SKEW,
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


def test_a_changed_delivery_or_an_unpublished_signer_fails(private: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    keys = load_webhook_keys(_jwks(("k1", private), ("k2", other)))
    headers = _signed(private)
    refused = re.escape("the signature matches none of the 2 given key(s): the delivery was not")
    with pytest.raises(WebhookVerificationError, match=refused):
        verify_webhook(headers, BODY.replace(b"completed", b"failed"), keys, now=NOW)
    with pytest.raises(WebhookVerificationError, match=refused):
        verify_webhook({**headers, "X-Ideogram-Webhook-User-Id": "user-8"}, BODY, keys, now=NOW)
    stranger = Ed25519PrivateKey.generate()  # signs, but is not published
    with pytest.raises(WebhookVerificationError, match=refused):
        verify_webhook(_signed(stranger), BODY, keys, now=NOW)
    with pytest.raises(
        WebhookVerificationError,
        match=r"none of the 2 given key\(s\) \(it names key 'k9', which is not among them\)",
    ):
        verify_webhook(_signed(stranger, kid="k9"), BODY, keys, now=NOW)
    assert issubclass(WebhookVerificationError, IdeogramError)


@pytest.mark.parametrize("named", ["k1", "k3", "rotated-away", ""])
def test_the_key_id_is_a_hint_any_published_key_verifies(
    private: Ed25519PrivateKey, named: str
) -> None:
    # Signed with k2; the header names k2's neighbours, a key no longer published, or none.
    signer = Ed25519PrivateKey.generate()
    keys = load_webhook_keys(
        _jwks(
            ("k1", Ed25519PrivateKey.generate()),
            ("k2", signer),
            ("k3", Ed25519PrivateKey.generate()),
        )
    )
    delivery = verify_webhook(_signed(signer, kid=named), BODY, keys, now=NOW)
    assert delivery.key_id == "k2"  # the key that really signed it
    assert delivery.payload["status"] == "completed"


def test_the_named_key_is_tried_first(private: Ed25519PrivateKey) -> None:
    tried: list[str] = []

    class Spy:
        def __init__(self, name: str, key: Ed25519PublicKey) -> None:
            self.name, self.key = name, key

        def verify(self, signature: bytes, message: bytes) -> None:
            tried.append(self.name)
            self.key.verify(signature, message)

    published = load_webhook_keys(_jwks(("k1", Ed25519PrivateKey.generate()), ("k2", private)))
    keys: Any = {name: Spy(name, key) for name, key in published.items()}
    assert verify_webhook(_signed(private, kid="k2"), BODY, keys, now=NOW).key_id == "k2"
    assert tried == ["k2"]  # found at once: no other key is tried


def test_missing_headers_and_garbled_signatures_are_refused(private: Ed25519PrivateKey) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    headers = _signed(private)
    del headers["X-Ideogram-Webhook-Timestamp"], headers["X-Ideogram-Webhook-Signature"]
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(headers, BODY, keys, now=NOW)
    assert str(info.value) == (
        "the delivery lacks the X-Ideogram-Webhook-timestamp, "
        "X-Ideogram-Webhook-signature header(s)"
    )
    signature = base64.b64decode(_signed(private)["X-Ideogram-Webhook-Signature"])
    for garbled in (
        "not a signature",
        base64.b64encode(signature[:63]).decode(),  # base64 of a byte too few
        signature.hex() + "00",  # hex of a byte too many: read as base64, too long
        signature.hex()[:-1] + "g",  # as long as hex, but not hex
    ):
        with pytest.raises(WebhookVerificationError) as info:
            verify_webhook(
                {**_signed(private), "X-Ideogram-Webhook-Signature": garbled}, BODY, keys, now=NOW
            )
        assert str(info.value) == (
            "the signature header is not a 64-byte Ed25519 signature in hex or base64"
        )
    padded = {**_signed(private, encode="hex")}
    padded["X-Ideogram-Webhook-Signature"] = f"  {padded['X-Ideogram-Webhook-Signature']} "
    assert verify_webhook(padded, BODY, keys, now=NOW).key_id == "k1"  # spaces around: fine


def test_a_stale_delivery_is_refused_unless_the_age_check_is_off(
    private: Ed25519PrivateKey,
) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    old = _signed(private, timestamp=str(int(NOW) - 301))
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(old, BODY, keys, now=NOW)
    assert (
        str(info.value)
        == "the delivery is stamped 301s ago, beyond max_age=300s; it may be a replay"
    )
    assert verify_webhook(old, BODY, keys, now=NOW, max_age=None).user_id == "user-9"
    iso = _signed(private, timestamp="2026-09-21T14:13:20+00:00")
    assert verify_webhook(iso, BODY, keys, now=1_790_000_000.0).timestamp.startswith("2026")
    millis = _signed(private, timestamp=str(int(NOW * 1000) - 290_000))
    assert verify_webhook(millis, BODY, keys, now=NOW).key_id == "k1"


def test_a_jwks_without_ed25519_keys_is_refused() -> None:
    x = _b64url(bytes(range(32)))
    unusable = [
        {"kty": "OKP", "crv": "X25519", "kid": "x", "x": x},  # another curve, well formed
        {"kty": "OKP", "crv": "Ed25519", "x": x},  # no kid
        {"kty": "OKP", "crv": "Ed25519", "kid": 7, "x": x},  # a kid that is not text
        {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": _b64url(bytes(31))},
        {"kty": "OKP", "crv": "Ed25519", "kid": "junk", "x": x[:10] + "!!!!" + x[10:]},
        "not an entry",
    ]
    for entry in unusable:
        with pytest.raises(WebhookVerificationError) as info:
            load_webhook_keys({"keys": [entry]})
        assert str(info.value) == (
            "the JWKS document holds no Ed25519 key (kty OKP, crv Ed25519, kid and x)"
        )
    documents: list[str | bytes | dict[str, object]] = ["[]", b'{"keys": {}}', {"other": []}]
    for document in documents:
        with pytest.raises(WebhookVerificationError, match="no Ed25519 key"):
            load_webhook_keys(document)


def test_unusable_keys_are_skipped_and_the_rest_loaded(private: Ed25519PrivateKey) -> None:
    good = _jwks(("good", private))["keys"]
    assert isinstance(good, list)
    bad = {"kty": "OKP", "crv": "Ed25519", "kid": "bad", "x": _b64url(bytes(31))}
    keys = load_webhook_keys({"keys": [bad, *good]})
    assert list(keys) == ["good"]
    assert verify_webhook(_signed(private, kid="bad"), BODY, keys, now=NOW).key_id == "good"


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.exceptions", None)  # as if not installed
    with pytest.raises(ImportError) as info:
        load_webhook_keys({"keys": []})
    assert str(info.value) == (
        "webhook verification needs cryptography: pip install 'ideogram-async[webhooks]'"
    )


def test_the_current_time_is_the_default(private: Ed25519PrivateKey) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    fresh = _signed(private, timestamp=str(int(time.time())))
    assert verify_webhook(fresh, BODY, keys).key_id == "k1"
    with pytest.raises(WebhookVerificationError, match="ago, beyond max_age=300s"):
        verify_webhook(_signed(private, timestamp=str(int(time.time()) - 3600)), BODY, keys)


def test_an_unreadable_timestamp_is_refused(private: Ed25519PrivateKey) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(_signed(private, timestamp="yesterday"), BODY, keys, max_age=None)
    assert str(info.value) == ("the timestamp header 'yesterday' is neither Unix time nor ISO 8601")


def test_zero_is_a_setting_no_time_to_spare(private: Ed25519PrivateKey) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    now = _signed(private)  # stamped NOW
    assert verify_webhook(now, BODY, keys, now=NOW, max_age=0, max_skew=0).key_id == "k1"
    with pytest.raises(WebhookVerificationError, match="1s ago, beyond max_age=0s"):
        verify_webhook(now, BODY, keys, now=NOW + 1, max_age=0)
    with pytest.raises(WebhookVerificationError, match="1s ahead, beyond max_skew=0s"):
        verify_webhook(now, BODY, keys, now=NOW - 1, max_skew=0)


@pytest.mark.parametrize("timestamp", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_a_timestamp_that_is_not_a_finite_time_is_refused(
    private: Ed25519PrivateKey, timestamp: str
) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    for max_age in (300.0, None):  # whatever the age check
        with pytest.raises(WebhookVerificationError, match="is not a finite time"):
            verify_webhook(_signed(private, timestamp=timestamp), BODY, keys, max_age=max_age)


def test_a_delivery_stamped_ahead_is_taken_within_the_skew_only(
    private: Ed25519PrivateKey,
) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    assert DEFAULT_MAX_SKEW == 60.0
    ahead = _signed(private, timestamp=str(int(NOW) + 60))
    assert verify_webhook(ahead, BODY, keys, now=NOW).key_id == "k1"  # the skew is inclusive
    further = _signed(private, timestamp=str(int(NOW) + 61))
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(further, BODY, keys, now=NOW)
    assert str(info.value) == (
        "the delivery is stamped 61s ahead, beyond max_skew=60s; "
        "a clock is wrong (this one or the sender's)"
    )
    assert verify_webhook(further, BODY, keys, now=NOW, max_skew=61).key_id == "k1"
    assert verify_webhook(further, BODY, keys, now=NOW, max_age=None).key_id == "k1"
    # The age limit is inclusive, too.
    assert verify_webhook(_signed(private, timestamp=str(int(NOW) - 300)), BODY, keys, now=NOW)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_age": float("nan")}, "max_age must be a number of seconds >= 0, got nan"),
        ({"max_age": -1}, "max_age must be a number of seconds >= 0, got -1"),
        ({"max_age": float("inf")}, "max_age must be finite, got inf; pass None"),
        ({"max_skew": float("nan")}, "max_skew must be a number of seconds >= 0, got nan"),
        ({"max_skew": "60"}, "max_skew must be a number of seconds >= 0, got '60'"),
        ({"max_skew": True}, "max_skew must be a number of seconds >= 0, got True"),
    ],
)
def test_bad_age_settings_are_validation_errors(
    private: Ed25519PrivateKey, options: dict[str, Any], message: str
) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    with pytest.raises(ValidationError, match=re.escape(message)):
        verify_webhook(_signed(private), BODY, keys, now=NOW, **options)


@pytest.mark.parametrize("body", [b"not json", b"{", b"\xff\xfe", b""])
def test_a_signed_body_that_is_not_json_is_refused(private: Ed25519PrivateKey, body: bytes) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(_signed(private, body), body, keys, now=NOW)
    assert str(info.value) == "the signed body is not JSON"


@pytest.mark.parametrize(
    ("timestamp", "now"),
    [
        ("100000000000", 1e11),  # 10**11 is still seconds (the year 5138)...
        ("100000000001", 1e8),  # ...one more is milliseconds (1973)
    ],
)
def test_seconds_turn_into_milliseconds_past_10_to_the_11(
    private: Ed25519PrivateKey, timestamp: str, now: float
) -> None:
    keys = load_webhook_keys(_jwks(("k1", private)))
    assert verify_webhook(_signed(private, timestamp=timestamp), BODY, keys, now=now).key_id == "k1"
