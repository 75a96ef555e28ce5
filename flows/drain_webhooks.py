"""The `drain-webhooks` flow: stored Customer.io webhooks -> Hull track events.

Runs on a schedule (every minute). Each run drains the inbox batch by batch until no
claimable row is left (or `max_batches`), then publishes what it did. Several runs may
overlap safely: rows are claimed in a transaction, so each is sent by one run only.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.utilities.annotations import quote

from cio_sync.pipeline.alert_events import emit_backlog_event
from cio_sync.pipeline.breaker import Breaker
from cio_sync.pipeline.drain_identity import IdentityMismatch, drain_settings
from cio_sync.rules.lag import LagHistogram
from cio_sync.secrets import load_secret_blocks
from cio_sync.settings import HullCredentials, StateSettings, WebhookSettings, require
from cio_sync.store.db import get_engine
from cio_sync.webhooks.inbox import DONE, FAILED, IGNORED, backlog, count_by_status
from tasks.drain_webhook_batch import drain_webhook_batch_task

SUMMARY_ARTIFACT_KEY = "drain-webhooks-summary"


class DrainStopped(Exception):
    """Hull was unavailable (some firehose POSTs failed after retries; three in a row open the
    breaker): the rows not sent are pending again; the run is marked Failed so the outage
    shows in the Prefect UI."""


def worker_id() -> str:
    """Unique per run, readable in the inbox's `claimed_by` (fits its 64 characters)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def summary_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    inbox = summary["inbox"]
    return [
        {"outcome": "sent", "this run": summary["sent"], "inbox total": inbox[DONE]},
        {"outcome": "ignored", "this run": summary["ignored"], "inbox total": inbox[IGNORED]},
        {"outcome": "failed", "this run": summary["failed"], "inbox total": inbox[FAILED]},
        {"outcome": "pending", "this run": summary["requeued"], "inbox total": summary["pending"]},
        {"outcome": "of them waiting for a retry", "this run": "", "inbox total": summary["retrying"]},
        {
            "outcome": "oldest pending (seconds since received)",
            "this run": "",
            "inbox total": "-"
            if summary["oldest_pending_age_seconds"] is None
            else summary["oldest_pending_age_seconds"],
        },
        *(
            {
                "outcome": f"lag from webhook received to Hull accepted, {figure} (seconds)",
                "this run": "-" if value is None else value,
                "inbox total": "",
            }
            for figure, value in summary["hull_lag_seconds"].items()
        ),
    ]


@flow(name="drain-webhooks", log_prints=False)
def drain_webhooks(
    batch_size: int = 500,
    max_batches: int | None = None,
    user_id_mapping: str | None = None,
) -> dict[str, Any]:
    """Sends stored Customer.io webhooks to Hull.

    `user_id_mapping` falls back to the USER_ID_MAPPING environment variable, then to the
    value the latest sync-users run used, then to `external_id`; one that differs from the
    sync's stops the drain (cio_sync/pipeline/identity.py). Credentials come only from the
    environment, never from parameters.
    """
    logger = get_run_logger()
    # Only the Hull secret, and only if the environment lacks it (no Prefect call otherwise).
    load_secret_blocks(names=["HULL_CONNECTOR_SECRET"])
    hull_credentials = HullCredentials()
    require(hull_credentials.missing())
    database_url = StateSettings().state_database_url
    try:  # the identity sync-users sends people as (cio_sync/pipeline/identity.py)
        settings = drain_settings(get_engine(database_url), user_id_mapping)
    except IdentityMismatch as exc:
        raise DrainStopped(str(exc)) from None
    worker = worker_id()

    totals = {"batches": 0, "sent": 0, "ignored": 0, "failed": 0, "requeued": 0}
    lag = LagHistogram()  # webhook received → Hull accepted, over the run's batches
    stopped: str | None = None
    breaker = Breaker()  # the run's: consecutive failed firehose POSTs across its batches
    webhook_settings = WebhookSettings()  # read once per run, not per batch
    while max_batches is None or totals["batches"] < max_batches:
        counts = drain_webhook_batch_task(
            database_url,
            hull_credentials,
            settings,
            batch_size,
            worker,
            cast(Breaker, quote(breaker)),
            cast(WebhookSettings, quote(webhook_settings)),
        )
        if counts["claimed"] == 0:
            break
        totals["batches"] += 1
        for key in ("sent", "ignored", "failed", "requeued"):
            totals[key] += counts[key]
        for seconds in counts.get("lag_seconds") or []:
            lag.add(seconds)
        logger.info(
            "batch %d: %d claimed, %d sent, %d ignored, %d failed, %d back to pending",
            totals["batches"],
            counts["claimed"],
            counts["sent"],
            counts["ignored"],
            counts["failed"],
            counts["requeued"],
        )
        if counts["stopped"]:
            stopped = counts["stopped"]
            break
        if counts["claimed"] < batch_size:
            break  # the inbox was emptied; new arrivals wait for the next scheduled run

    engine = get_engine(database_url)
    inbox = count_by_status(engine)
    # Rows claimed by another run still in progress are not done either (backlog counts them).
    owed = backlog(engine)
    summary = {
        **totals,
        "pending": owed["pending"],
        "retrying": owed["retrying"],
        "oldest_pending_age_seconds": owed["oldest_pending_age_seconds"],
        "hull_lag_seconds": lag.figures(),
        "inbox": inbox,
        "stopped": stopped,
    }
    create_table_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        table=summary_table(summary),
        description="Customer.io webhooks this drain-webhooks run sent to Hull, and the inbox totals."
        + (f" Stopped: {stopped}." if stopped else ""),
    )
    emit_backlog_event(summary)
    logger.info(
        "drained %d batches: %d sent, %d ignored, %d failed; %d pending in the inbox",
        totals["batches"],
        totals["sent"],
        totals["ignored"],
        totals["failed"],
        summary["pending"],
    )
    if stopped:
        raise DrainStopped(stopped)
    return summary
