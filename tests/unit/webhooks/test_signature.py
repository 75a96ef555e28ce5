import hashlib
import hmac

import pytest

from cio_sync.webhooks.signature import SignatureError, compute_signature, verify_signature

KEY = "signing-key"
BODY = b'{"event_id":"01E4C8BES586H0A5PFK1ARB9JW","object_type":"email","metric":"opened"}'
NOW = 1_700_000_000


def test_signature_is_hex_hmac_sha256_of_v0_timestamp_and_raw_body():
    expected = hmac.new(KEY.encode(), b"v0:1700000000:" + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(KEY, "1700000000", BODY) == expected


def test_valid_signature_passes():
    verify_signature(KEY, str(NOW), compute_signature(KEY, str(NOW), BODY), BODY, now=NOW)


def test_uppercase_hex_is_accepted():
    verify_signature(KEY, str(NOW), compute_signature(KEY, str(NOW), BODY).upper(), BODY, now=NOW)


@pytest.mark.parametrize(
    "timestamp, signature, body, reason",
    [
        (str(NOW), compute_signature("other-key", str(NOW), BODY), BODY, "does not match"),
        (str(NOW), compute_signature(KEY, str(NOW), BODY), BODY + b" ", "does not match"),
        (str(NOW), compute_signature(KEY, str(NOW - 1), BODY), BODY, "does not match"),
        (None, compute_signature(KEY, str(NOW), BODY), BODY, "missing"),
        (str(NOW), None, BODY, "missing"),
        ("", "", BODY, "missing"),
    ],
    ids=["wrong-key", "body-changed", "timestamp-changed", "no-timestamp", "no-signature", "empty-headers"],
)
def test_invalid_signatures_are_rejected(timestamp, signature, body, reason):
    with pytest.raises(SignatureError, match=reason):
        verify_signature(KEY, timestamp, signature, body, now=NOW)


GOOD_SIGNATURE = compute_signature(KEY, str(NOW), BODY)


@pytest.mark.parametrize(
    "timestamp, signature, reason",
    [
        ("yesterday", GOOD_SIGNATURE, "not a unix timestamp"),
        ("9" * 5000, GOOD_SIGNATURE, "not a unix timestamp"),  # int() would raise ValueError
        ("1" * 16, GOOD_SIGNATURE, "not a unix timestamp"),
        ("-1700000000", GOOD_SIGNATURE, "not a unix timestamp"),
        ("+1700000000", GOOD_SIGNATURE, "not a unix timestamp"),
        ("1700000000.5", GOOD_SIGNATURE, "not a unix timestamp"),
        ("１７００００００００", GOOD_SIGNATURE, "not a unix timestamp"),  # digits, not ASCII ones
        (str(NOW), "é" * 64, "not a hex HMAC-SHA256"),
        (str(NOW), "g" * 64, "not a hex HMAC-SHA256"),
        (str(NOW), GOOD_SIGNATURE[:-1], "not a hex HMAC-SHA256"),
        (str(NOW), GOOD_SIGNATURE + "0", "not a hex HMAC-SHA256"),
        (str(NOW), "f" * 5000, "not a hex HMAC-SHA256"),
        (str(NOW), "sha256=" + GOOD_SIGNATURE, "not a hex HMAC-SHA256"),
    ],
    ids=[
        "word",
        "5000-digits",
        "16-digits",
        "negative",
        "plus-sign",
        "fraction",
        "fullwidth-digits",
        "non-ascii-signature",
        "non-hex-signature",
        "short-signature",
        "long-signature",
        "huge-signature",
        "prefixed-signature",
    ],
)
def test_malformed_headers_are_a_signature_error_never_another_exception(timestamp, signature, reason):
    with pytest.raises(SignatureError, match=reason) as raised:
        verify_signature(KEY, timestamp, signature, BODY, now=NOW)
    # The message is a fixed text: nothing of what was received is repeated.
    assert timestamp not in str(raised.value) and signature not in str(raised.value)


def test_surrounding_whitespace_in_headers_is_tolerated():
    verify_signature(KEY, f" {NOW} ", f" {GOOD_SIGNATURE} ", BODY, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301])
def test_timestamp_outside_tolerance_is_rejected_even_with_a_valid_signature(offset):
    stamp = str(NOW + offset)
    with pytest.raises(SignatureError, match="300 s"):
        verify_signature(KEY, stamp, compute_signature(KEY, stamp, BODY), BODY, now=NOW)


def test_tolerance_is_configurable():
    stamp = str(NOW - 3600)
    signature = compute_signature(KEY, stamp, BODY)
    verify_signature(KEY, stamp, signature, BODY, now=NOW, tolerance_seconds=7200)
    with pytest.raises(SignatureError):
        verify_signature(KEY, stamp, signature, BODY, now=NOW, tolerance_seconds=60)
