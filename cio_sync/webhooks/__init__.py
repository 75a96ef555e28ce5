"""Customer.io email activity webhooks into Hull.

Two halves that share only the `webhook_inbox` table:
- the intake (`app`): an always-on HTTP endpoint that verifies the signature
  (`signature`) and commits each raw payload (`inbox`) before answering, so Customer.io
  gets its 2xx fast and nothing is lost if Hull is down;
- the drain (`tasks.drain`, `flows.drain_webhooks`): claims stored rows, maps them to
  Hull track events (`mapping`) and sends them through the firehose.

The operational knobs of both halves live in `WebhookSettings` below.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebhookSettings(BaseSettings):
    """Environment variables of the webhook intake and drain (none is a secret).

    The signing key is not here: it is a Customer.io credential and lives in
    `CustomerIoCredentials.webhook_signing_key` (`CUSTOMERIO_WEBHOOK_SIGNING_KEY`).
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # How far X-CIO-Timestamp may be from our clock; bounds how long a captured request
    # can be replayed.
    webhook_timestamp_tolerance_seconds: int = Field(default=300, ge=1)
    # Retries of a row whose delivery to Hull fails transiently (Hull down, 5xx, timeouts):
    # after a failure, a row that had n failed attempts before waits
    # min(WEBHOOK_RETRY_MAX_SECONDS, WEBHOOK_RETRY_BASE_SECONDS * 2**n) before a drain
    # claims it again: 30 s, 1 min, 2 min, ... 32 min, then hourly.
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    # A row is marked failed once it has been failing for this long, counted from its first
    # transient failure (a row that waited for a drain is never given up untried). 0 fails
    # a row at its first transient failure.
    webhook_retry_hours: float = Field(default=24.0, ge=0)
    # Optional extra bound, unset by default: when set, a row is also marked failed after
    # this many transient failures, whichever of the two comes first. Kept for operators
    # who prefer a count; the time window above is what protects rows through an outage.
    webhook_max_attempts: int | None = Field(default=None, ge=1)
    # A row claimed by a drain that died is claimable again after this long.
    webhook_claim_timeout_seconds: int = Field(default=600, ge=1)
