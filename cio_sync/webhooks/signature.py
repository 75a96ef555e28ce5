"""Customer.io webhook signatures: `X-CIO-Signature` over `v0:<X-CIO-Timestamp>:<raw body>`.

The signature is the lowercase hex HMAC-SHA256 of those bytes, keyed with the workspace's
webhook signing key. It must be computed over the body exactly as received (never a
re-serialised JSON), compared in constant time, and the timestamp must be recent so a
captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

DEFAULT_TOLERANCE_SECONDS = 300
SIGNATURE_VERSION = b"v0"


class SignatureError(Exception):
    """The request is not provably from Customer.io; the message says why (no secrets)."""


def compute_signature(key: str, timestamp: str, body: bytes) -> str:
    message = SIGNATURE_VERSION + b":" + timestamp.encode("ascii") + b":" + body
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_signature(
    key: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raises `SignatureError` unless `signature` is valid for `body` and `timestamp` is
    within `tolerance_seconds` of `now` (either direction: clocks drift both ways)."""
    if not timestamp or not signature:
        raise SignatureError("missing X-CIO-Timestamp or X-CIO-Signature header")
    timestamp = timestamp.strip()
    if not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureError("X-CIO-Timestamp is not a unix timestamp")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        raise SignatureError(f"X-CIO-Timestamp is more than {tolerance_seconds} s from the server clock")
    expected = compute_signature(key, timestamp, body)
    # Both sides as bytes: compare_digest on str refuses non-ASCII input with a
    # TypeError, and a hostile header may well contain some.
    if not hmac.compare_digest(expected.encode("ascii"), signature.strip().lower().encode("utf-8")):
        raise SignatureError("X-CIO-Signature does not match the body")
