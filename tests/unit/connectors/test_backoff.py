"""The retry waits of connectors/http.py, as pure functions."""

from __future__ import annotations

from datetime import datetime, timezone

from connectors.http import RetryPolicy, retry_after_seconds


def test_backoff_doubles_per_retry_and_stops_at_the_maximum():
    policy = RetryPolicy(backoff_factor=0.5, backoff_max=3.0, backoff_jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_adds_at_most_its_amount_and_never_passes_the_maximum():
    policy = RetryPolicy(backoff_factor=1.0, backoff_max=2.5, backoff_jitter=0.25)
    waits = [policy.backoff(1) for _ in range(200)]
    assert all(1.0 <= w <= 1.25 for w in waits) and len(set(waits)) > 1
    assert all(policy.backoff(3) == 2.5 for _ in range(50))


def test_retry_after_is_honoured_when_longer_but_capped_at_the_maximum():
    policy = RetryPolicy(backoff_factor=0.5, backoff_max=2.0, backoff_jitter=0.0)
    assert policy.backoff(1, retry_after=60) == 2.0
    assert policy.backoff(1, retry_after=1.5) == 1.5
    assert policy.backoff(2, retry_after=0) == 1.0  # "retry now" never shortens the backoff


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 11, 26, 10, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("60") == 60.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("Thu, 26 Nov 2026 10:00:30 GMT", now=lambda: now) == 30.0
    assert retry_after_seconds("Thu, 26 Nov 2026 09:00:00 GMT", now=lambda: now) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
