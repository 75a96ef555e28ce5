"""The `drain-webhook-batch` task: one Prefect task per batch of inbox rows (never per row)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cio_sync.pipeline.breaker import Breaker
from cio_sync.pipeline.drain import drain_batch
from cio_sync.redact import scrubbed_errors
from cio_sync.settings import ConnectorSettings, HullCredentials, WebhookSettings


@task(name="drain-webhook-batch", cache_policy=NO_CACHE)
def drain_webhook_batch_task(
    database_url: str,
    hull_credentials: HullCredentials,
    connector_settings: ConnectorSettings,
    batch_size: int,
    worker_id: str,
    breaker: Breaker | None = None,
    webhook_settings: WebhookSettings | None = None,
) -> dict[str, Any]:
    with scrubbed_errors():  # a Failed task state shows the message in the UI
        return drain_batch(
            database_url,
            hull_credentials,
            connector_settings,
            batch_size,
            worker_id,
            breaker=breaker,
            webhook_settings=webhook_settings,
        )
