"""Alerts through Prefect: the automations `cio-sync setup --notify-block NAME` creates.

Each notifies through the named Prefect notification block (Slack, email, custom webhook...;
the README shows how to make one). Created by name, idempotently: an automation of the same
name is updated in place, so running `setup` again never duplicates one.

1. `cio-sync: run failed` — a `sync-users` (shards included), `sync-users-sharded` or
   `drain-webhooks` run enters Failed or Crashed.
2. `cio-sync: no completed sync-users run` — no `sync-users` run completed within
   ALERT_MISSED_SYNC_INTERVALS (3) schedule intervals (SYNC_USERS_INTERVAL_SECONDS, 300 as in
   prefect.yaml); proactive.
3. `cio-sync: webhook backlog` — a drain found the oldest pending webhook older than
   ALERT_WEBHOOK_BACKLOG_MINUTES (10) (its `cio-sync.webhooks.backlog` event).
4. `cio-sync: failed batches left open` — a sync run found a failed batch open for longer than
   ALERT_FAILED_BATCH_HOURS (24) (its `cio-sync.failed-batches.open` event).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from cio_sync.pipeline.alert_events import (
    BACKLOG_EVENT,
    FAILED_BATCHES_EVENT,
    FAILED_BATCHES_RESOURCE,
    INBOX_RESOURCE,
    OVER_THRESHOLD_LABEL,
)
from cio_sync.settings import OperationsSettings

PREFIX = "cio-sync: "
RUN_FAILED = PREFIX + "run failed"
NO_COMPLETED_SYNC = PREFIX + "no completed sync-users run"
WEBHOOK_BACKLOG = PREFIX + "webhook backlog"
FAILED_BATCHES_OPEN = PREFIX + "failed batches left open"
WATCHED_FLOWS = ["sync-users", "sync-users-sharded", "drain-webhooks"]


class NotifyBlockNotFound(LookupError):
    pass


@dataclass
class AlertsResult:
    block: str
    created: list[str]
    updated: list[str]

    def lines(self) -> list[str]:
        return [f"alert {name!r}: created, notifies {self.block!r}" for name in self.created] + [
            f"alert {name!r}: updated, notifies {self.block!r}" for name in self.updated
        ]


def find_notification_block(client: Any, name: str) -> UUID:
    """The block document id of notification block `name` (`NAME`, or `TYPE-SLUG/NAME` when
    several notification blocks share the name)."""
    slug, _, block_name = name.rpartition("/")
    matches = []
    for document in client.read_block_documents(include_secrets=False):
        if document.name != block_name or document.is_anonymous:
            continue
        type_slug = document.block_type.slug if document.block_type else ""
        capabilities = document.block_schema.capabilities if document.block_schema else []
        if (slug and type_slug != slug) or "notify" not in capabilities:
            continue
        matches.append((type_slug, document.id))
    if not matches:
        raise NotifyBlockNotFound(
            f"no notification block named {name!r} on this Prefect server (make one first: see the README, "
            "'Alerts through Prefect')"
        )
    if len(matches) > 1:
        raise NotifyBlockNotFound(
            f"several notification blocks are named {block_name!r}: say which with "
            + " or ".join(f"{slug_}/{block_name}" for slug_, _ in matches)
        )
    return matches[0][1]


def automations(block_id: UUID, settings: OperationsSettings | None = None) -> list[Any]:
    """The four automations, as `prefect.automations.Automation` objects (not yet saved)."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification

    settings = settings or OperationsSettings()
    quiet = timedelta(seconds=settings.sync_users_interval_seconds * settings.alert_missed_sync_intervals)

    def notify(subject: str, body: str) -> list[Any]:
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    def over_threshold(name: str, description: str, event: str, resource_id: str, subject: str, body: str) -> Any:
        """Fires on each `event` a run emitted with its resource labelled over the threshold
        (cio_sync/pipeline/alert_events.py)."""
        return Automation(
            name=name,
            description=description,
            trigger=EventTrigger(
                expect={event},
                match={"prefect.resource.id": resource_id, OVER_THRESHOLD_LABEL: "true"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=notify(subject, body),
        )

    return [
        Automation(
            name=RUN_FAILED,
            description="A sync-users (or shard), sync-users-sharded or drain-webhooks run failed or crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": WATCHED_FLOWS},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=notify(
                "cio-sync: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}",
                "Flow run {{ flow_run.name }} of {{ flow.name }} entered {{ flow_run.state.name }}: "
                "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
            ),
        ),
        Automation(
            name=NO_COMPLETED_SYNC,
            description=f"No sync-users run completed within {quiet} "
            f"({settings.alert_missed_sync_intervals} schedule intervals).",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Completed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": "sync-users"},
                posture=Posture.Proactive,
                threshold=1,
                within=quiet,
            ),
            actions=notify(
                "cio-sync: no sync-users run completed recently",
                f"No sync-users run has completed in the last {quiet}: check the schedule, the workers "
                "and the latest runs in the Prefect UI.",
            ),
        ),
        over_threshold(
            WEBHOOK_BACKLOG,
            f"The oldest pending webhook is older than {settings.alert_webhook_backlog_minutes:g} minutes.",
            BACKLOG_EVENT,
            INBOX_RESOURCE,
            "cio-sync: Customer.io webhooks are waiting",
            "The oldest webhook waiting for Hull was received "
            "{{ event.payload.oldest_pending_age_seconds|int }} s ago "
            "({{ event.payload.pending }} pending). See the latest drain-webhooks run.",
        ),
        over_threshold(
            FAILED_BATCHES_OPEN,
            f"A failed batch has been open for more than {settings.alert_failed_batch_hours:g} hours.",
            FAILED_BATCHES_EVENT,
            FAILED_BATCHES_RESOURCE,
            "cio-sync: failed batches left open",
            "{{ event.payload.open_batches }} failed batches are open, the oldest for "
            "{{ (event.payload.oldest_open_age_seconds / 3600)|round(1) }} hours: "
            "`cio-sync failed list`, fix the cause, `cio-sync failed rerun`.",
        ),
    ]


def ensure_alerts(block_name: str, settings: OperationsSettings | None = None) -> AlertsResult:
    """Creates the automations, or updates those that exist by name (duplicates of one name,
    made by hand, are reduced to one)."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    result = AlertsResult(block_name, [], [])
    with get_client(sync_client=True) as client:
        block_id = find_notification_block(client, block_name)
        for automation in automations(block_id, settings):
            existing = client.read_automations_by_name(automation.name)
            if not existing:
                client.create_automation(AutomationCore(**automation.model_dump(exclude={"id"})))
                result.created.append(automation.name)
                continue
            # An update takes no `owner_resource` (the server refuses the field, even null).
            client.update_automation(
                existing[0].id, AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"}))
            )
            for duplicate in existing[1:]:
                client.delete_automation(duplicate.id)
            result.updated.append(automation.name)
    return result
