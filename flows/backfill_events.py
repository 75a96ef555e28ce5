"""The `backfill-events` flow: send Hull events of a past window on purpose.

The scheduled flow never sends events created before `events_start` (README, "Events"). Older
history goes out only through this flow (or `cio-sync backfill-events`): it walks the events
created between `since` and `until` (default: the run's start) exactly like the scheduled
walk (same rules, same deterministic ULIDs, same `event_state`, so running it twice sends
nothing twice), but it moves no cursor, and its summary counts the events it sent that are
less than 72 hours old, for which Customer.io may still trigger campaigns. It holds the
`users:all` writer lease (it may identify an event's user first), so it never overlaps a sync.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from cio_sync.pipeline.events_page import SENT_RECENT, WOULD_SEND_RECENT
from cio_sync.pipeline.extract import resolve_run_segments
from cio_sync.pipeline.leases import users_writer_lease
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.watermarks import backfill_window
from cio_sync.rules.sharding import WHOLE_SCOPE
from cio_sync.runtime import build_runtime
from cio_sync.settings import ConnectorSettings
from cio_sync.store.db import utcnow
from cio_sync.store.lease import LeaseHeld, LeaseLost
from connectors.http import AuthError
from flows.sync_users import SyncFailed, run_id_or_none, walk_events

SUMMARY_ARTIFACT_KEY = "backfill-events-summary"


@flow(name="backfill-events", log_prints=False)
def backfill_events(
    since: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    synchronized_segments: list[str] | None = None,
    synchronized_attributes: list[str] | None = None,
    user_id_mapping: str | None = None,
    enable_user_deletion: bool | None = None,
    events_filter: list[str] | None = None,
    anonymous_events: bool | None = None,
    max_attributes_per_call: int | None = None,
    max_attribute_name_length: int | None = None,
    max_attribute_value_length: int | None = None,
    max_identifier_value_length: int | None = None,
    rate_limit_per_second: float | None = None,
    push_concurrency: int | None = None,
    users_per_batch: int | None = None,
    customerio_api: Literal["v1", "v2_batch"] | None = None,
    events_per_batch: int | None = None,
    max_deletions_per_run: int | None = None,
    on_id_change: Literal["merge", "delete_old", "ignore"] | None = None,
    unset_removed_attributes: bool | None = None,
    sync_mode: Literal["upsert", "update_only"] | None = None,
    on_segment_exit: Literal["keep", "delete", "suppress", "unset_segments"] | None = None,
    events_overlap_minutes: float | None = None,
    events_initial_lookback_hours: float | None = None,
    events_future_tolerance_minutes: float | None = None,
    users_overlap_seconds: float | None = None,
    failed_batch_auto_retries: int | None = None,
    global_rate_limit: bool = False,
) -> dict[str, Any]:
    """Sends the whitelisted Hull events created from `since` to `until` (ISO 8601; `until`
    defaults to now) that were never decided. `dry_run`: decide and count, send nothing.
    Settings as in `sync-users` (parameter, else environment variable, else default)."""
    logger = get_run_logger()
    if not since:
        raise ValueError("`since` is required: the start of the window, e.g. 2026-10-01T00:00:00Z")
    started = utcnow()
    settings = ConnectorSettings.resolve(**locals())
    window = backfill_window(since, until, started, settings)  # a bad date fails before any call
    runtime = build_runtime(settings, dry_run=dry_run, global_rate_limit=global_rate_limit)
    summary = SyncSummary()
    failure: str | None = None
    try:
        if not settings.events_filter:
            summary.warnings.append("events_filter is empty: no event is ever sent, so there is nothing to backfill")
        else:
            try:
                runtime = runtime.with_segments(resolve_run_segments(runtime.hull, settings.synchronized_segments))
            except AuthError as exc:
                raise SyncFailed(f"Hull rejected the credentials: {exc}") from None
            run_id = run_id_or_none()
            if dry_run:
                failure = walk_events(runtime, window, summary, logger, run_id or "")
            else:
                with users_writer_lease(runtime.engine, WHOLE_SCOPE, "backfill-events", run_id) as lease:
                    failure = walk_events(runtime, window, summary, logger, run_id or "", lease=lease)
    except (LeaseHeld, LeaseLost) as exc:
        raise SyncFailed(str(exc)) from None
    finally:
        runtime.close()

    recent = summary.events.get(WOULD_SEND_RECENT if dry_run else SENT_RECENT, 0)
    if recent:
        summary.warnings.append(
            f"{recent} of the events {'this backfill would send' if dry_run else 'sent'} are less than 72 hours "
            "old: Customer.io may trigger campaigns for them."
        )
    create_table_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        table=[{"metric": "window", "value": f"{window.start} .. {window.until}"}, *summary.table()],
        description=("Dry run: nothing was sent. " if dry_run else "") + "What this backfill-events run did.",
    )
    for line in summary.lines():
        logger.info(line)
    if failure:
        raise SyncFailed(failure)
    if summary.failed_batches:
        raise SyncFailed(
            f"{summary.events.get('retry', 0)} events could not be sent after retries; they are saved as failed "
            f"batches {summary.failed_batches} (see `cio-sync failed list`)."
        )
    return {"since": window.start, "until": window.until, **summary.to_dict()}
