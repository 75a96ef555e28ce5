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


def point_env_at(monkeypatch, hull_sim, cio_sim, database_url) -> dict[str, str]:
    """Points this test's environment at the simulators (simulators/env.py) and a database,
    with the client-side rate limit off and short retry waits (same policy, shorter sleeps);
    connector settings a developer may have exported are removed first."""
    values = simulator_environment(hull_sim, cio_sim, database_url, RATE_LIMIT_PER_SECOND=0)
    for key in list(os.environ):
        if key.startswith(("HULL_", "CUSTOMERIO_")) or key.upper() in CONNECTOR_SETTING_NAMES:
            monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HTTP_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "5")
    return values
