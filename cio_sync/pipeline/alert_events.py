"""The Prefect events the alerts of `cio-sync setup --notify-block` (cio_sync/cli/alerts.py)
trigger on. Prefect triggers match labels, not numbers: each run measures its figure against
the threshold itself and labels the resource `cio-sync.over-threshold` "true" or "false"."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect.events import emit_event

from cio_sync.settings import OperationsSettings
from cio_sync.store.db import utcnow

OVER_THRESHOLD_LABEL = "cio-sync.over-threshold"
# Every drain-webhooks run: the inbox's backlog and this run's lag.
BACKLOG_EVENT = "cio-sync.webhooks.backlog"
INBOX_RESOURCE = "cio-sync.webhooks.inbox"
# Every sync-users run that is not a dry run: the open failed batches and the oldest one's age.
FAILED_BATCHES_EVENT = "cio-sync.failed-batches.open"
FAILED_BATCHES_RESOURCE = "cio-sync.failed-batches"


def emit_threshold_event(event: str, resource_id: str, over_threshold: bool, payload: dict[str, Any]) -> None:
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id, OVER_THRESHOLD_LABEL: "true" if over_threshold else "false"},
        payload=payload,
    )


def emit_backlog_event(summary: dict[str, Any]) -> None:
    """Over the threshold when the oldest pending webhook is older than ALERT_WEBHOOK_BACKLOG_MINUTES."""
    oldest = summary["oldest_pending_age_seconds"]
    limit = OperationsSettings().alert_webhook_backlog_minutes * 60
    emit_threshold_event(
        BACKLOG_EVENT,
        INBOX_RESOURCE,
        oldest is not None and oldest > limit,
        {
            "oldest_pending_age_seconds": oldest,
            "pending": summary["pending"],
            "threshold_seconds": limit,
            "hull_lag_seconds": summary["hull_lag_seconds"],
        },
    )


def emit_failed_batches_event(open_batches: int, oldest_opened_at: datetime | None) -> None:
    """Over the threshold when a batch has been open longer than ALERT_FAILED_BATCH_HOURS."""
    age = None if oldest_opened_at is None else max(0.0, (utcnow() - oldest_opened_at).total_seconds())
    limit = OperationsSettings().alert_failed_batch_hours * 3600
    emit_threshold_event(
        FAILED_BATCHES_EVENT,
        FAILED_BATCHES_RESOURCE,
        age is not None and age > limit,
        {"open_batches": open_batches, "oldest_open_age_seconds": age, "threshold_seconds": limit},
    )
