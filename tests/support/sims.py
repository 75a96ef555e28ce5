"""Credentials of the test simulators, and the environment that points the connector at them."""

from __future__ import annotations

import os

from cio_sync.settings import ConnectorSettings
from simulators.env import simulator_environment

# Every connector setting, as its environment variable: a test starts from the defaults.
CONNECTOR_SETTING_NAMES = {name.upper() for name in ConnectorSettings.model_fields}

HULL_CONNECTOR_ID = "5bd329d5e2bcf3eeaf000001"
HULL_SECRET = "hull-test-connector-secret-0123456789abcdef"
CIO_SITE_ID = "test-site"
CIO_API_KEY = "test-api-key"
# The simulators' data is dated around their own clock (from 2026-11-26T10:00:00Z), while a
# run's `events_start` is the wall clock minus `events_initial_lookback_hours`. Tests that are
# not about the lookback model an installation that enabled events long before that data.
LONG_AGO_LOOKBACK_HOURS = str(20 * 365 * 24)


def point_env_at(monkeypatch, hull_sim, cio_sim, database_url) -> dict[str, str]:
    """Points this test's environment at the simulators (simulators/env.py) and a database,
    with the client-side rate limit off and short retry waits (same policy, shorter sleeps);
    connector settings a developer may have exported are removed first. The events lookback
    is long: the simulators' data is dated 2026-11-26, and a run's `events_start` is the wall
    clock minus `events_initial_lookback_hours`; tests that are not about the lookback model an
    installation that enabled events long before that data."""
    values = simulator_environment(
        hull_sim, cio_sim, database_url, RATE_LIMIT_PER_SECOND=0, EVENTS_INITIAL_LOOKBACK_HOURS=LONG_AGO_LOOKBACK_HOURS
    )
    for key in list(os.environ):
        if key.startswith(("HULL_", "CUSTOMERIO_", "SYNC_LEASE_")) or key.upper() in CONNECTOR_SETTING_NAMES:
            monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HTTP_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "5")
    return values


def poison_v2_entry(cio_sim, person_id: str) -> None:
    """Every `POST /api/v2/batch` holding an entry for `person_id` is answered 400 as a whole,
    nothing applied (what a client bisecting failed batches needs)."""
    cio_sim.faults.poison_batch_entry(id=person_id)
