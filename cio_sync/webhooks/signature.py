"""Customer.io webhook signatures: `X-CIO-Signature` over `v0:<X-CIO-Timestamp>:<raw body>`.

The signature is the lowercase hex HMAC-SHA256 of those bytes, keyed with the workspace's
webhook signing key. It must be computed over the body exactly as received (never a
re-serialised JSON), compared in constant time, and the timestamp must be recent so a
captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from cio_sync.settings import DEFAULT_WEBHOOK_TOLERANCE_SECONDS

SIGNATURE_VERSION = b"v0"
SIGNATURE_HEX_LENGTH = 64  # SHA-256 digest, hex
MAX_TIMESTAMP_DIGITS = 15
_HEX = re.compile(r"[0-9a-f]+")


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
    tolerance_seconds: int = DEFAULT_WEBHOOK_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raises `SignatureError` unless `signature` is valid for `body` and `timestamp` is
    within `tolerance_seconds` of `now` (either direction: clocks drift both ways).

    Header values are untrusted: anything malformed (non-numeric or absurdly long
    timestamp, non-hex or wrong-length signature, non-ASCII) is a `SignatureError`, never
    another exception. Messages are fixed texts; they never repeat what was received."""
    if not timestamp or not signature:
        raise SignatureError("missing X-CIO-Timestamp or X-CIO-Signature header")
    timestamp = timestamp.strip()
    # Length first: int() of a few thousand digits raises ValueError (Python's limit on
    # str->int conversion) and is slow before that. Unix seconds have 10 digits until 2286.
    if len(timestamp) > MAX_TIMESTAMP_DIGITS or not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureError("X-CIO-Timestamp is not a unix timestamp")
    signature = signature.strip().lower()
    if len(signature) != SIGNATURE_HEX_LENGTH or not _HEX.fullmatch(signature):
        raise SignatureError("X-CIO-Signature is not a hex HMAC-SHA256")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        raise SignatureError(f"X-CIO-Timestamp is more than {tolerance_seconds} s from the server clock")
    expected = compute_signature(key, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise SignatureError("X-CIO-Signature does not match the body")
