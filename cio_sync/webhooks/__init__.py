"""Customer.io email activity webhooks into Hull.

Two halves that share only the `webhook_inbox` table:
- the intake (`app`): an always-on HTTP endpoint that verifies the signature
  (`signature`) and commits each raw payload (`inbox`) before answering, so Customer.io
  gets its 2xx fast and nothing is lost if Hull is down;
- the drain (`cio_sync.pipeline.drain`, `flows.drain_webhooks`): claims stored rows, maps them to
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
    # A row whose delivery to Hull keeps failing transiently is marked failed after this
    # many attempts (one attempt per drain run that tried it).
    webhook_max_attempts: int = Field(default=10, ge=1)
    # A row claimed by a drain that died is claimable again after this long.
    webhook_claim_timeout_seconds: int = Field(default=600, ge=1)
