"""Credentials of the test simulators, and the environment that points the connector at them."""

from __future__ import annotations

import os

HULL_CONNECTOR_ID = "5bd329d5e2bcf3eeaf000001"
HULL_SECRET = "hull-test-connector-secret-0123456789abcdef"
CIO_SITE_ID = "test-site"
CIO_API_KEY = "test-api-key"
# The simulators' data is dated around their own clock (from 2026-11-26T10:00:00Z), while a
# run's `events_start` is the wall clock minus `events_initial_lookback_hours`. Tests that are
# not about the lookback model an installation that enabled events long before that data.
LONG_AGO_LOOKBACK_HOURS = str(20 * 365 * 24)


def point_env_at(monkeypatch, hull_sim, cio_sim, database_url) -> dict[str, str]:
    values = {
        "HULL_ORGANIZATION": "acme.hullapp.io",
        "HULL_API_URL": f"{hull_sim.url}/api/v1",
        "HULL_FIREHOSE_URL": f"{hull_sim.url}/firehose",
        "HULL_CONNECTOR_ID": HULL_CONNECTOR_ID,
        "HULL_CONNECTOR_SECRET": HULL_SECRET,
        "CUSTOMERIO_SITE_ID": CIO_SITE_ID,
        "CUSTOMERIO_API_KEY": CIO_API_KEY,
        "CUSTOMERIO_TRACK_URL": cio_sim.url,
        "STATE_DATABASE_URL": database_url,
        "RATE_LIMIT_PER_SECOND": "0",
        "EVENTS_INITIAL_LOOKBACK_HOURS": LONG_AGO_LOOKBACK_HOURS,
    }
    for key in list(os.environ):
        if key.startswith(("HULL_", "CUSTOMERIO_")) or key in {
            "SYNCHRONIZED_SEGMENTS", "SYNCHRONIZED_ATTRIBUTES", "USER_ID_MAPPING",
            "ENABLE_USER_DELETION", "EVENTS_FILTER", "ANONYMOUS_EVENTS", "EVENTS_OVERLAP_MINUTES",
            "EVENTS_FUTURE_TOLERANCE_MINUTES", "USERS_OVERLAP_SECONDS", "FAILED_BATCH_AUTO_RETRIES",
        } or key.startswith("SYNC_LEASE_"):
            monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    # Fast retries: the policy is the same, only the waits are shorter.
    monkeypatch.setenv("HTTP_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "5")
    return values
