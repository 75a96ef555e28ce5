"""The `sync-users` flow: Hull users changed since the last run → Customer.io, then write-back."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from cio_sync.mapping import resolve_segments
from cio_sync.runtime import build_runtime
from cio_sync.settings import ConnectorSettings
from cio_sync.state import count_pending_writebacks, read_cursor
from cio_sync.summary import SyncSummary
from connectors.http import AuthError
from tasks.extract import fetch_users_task, segment_names
from tasks.events import EVENTS_CURSOR, fetch_events_task, sync_events_page_task
from tasks.sync_page import PageIncomplete, sync_page_task
from tasks.writeback import write_back

USERS_CURSOR = "users"
NO_SEGMENTS_WARNING = (
    "No users will be synchronized because you have not specified at least one whitelisted "
    "segment in Settings (synchronized_segments)."
)


class SyncFailed(Exception):
    """The run did its best and is marked Failed so the Prefect UI flags it."""


def publish_summary(summary: SyncSummary, dry_run: bool) -> None:
    create_table_artifact(
        key="sync-users-summary",
        table=summary.table(),
        description=("Dry run: nothing was sent. " if dry_run else "") + "What this sync-users run did.",
    )


@flow(name="sync-users", log_prints=False)
def sync_users(
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
    dry_run: bool = False,
    max_pages: int | None = None,
) -> dict[str, Any]:
    """Pushes users changed in Hull since the last run to Customer.io.

    Every setting left empty falls back to the environment variable of the same name in
    upper case, then to the original connector's default. Credentials come only from the
    environment, never from parameters.
    """
    logger = get_run_logger()
    settings = ConnectorSettings.resolve(
        synchronized_segments=synchronized_segments,
        synchronized_attributes=synchronized_attributes,
        user_id_mapping=user_id_mapping,
        enable_user_deletion=enable_user_deletion,
        events_filter=events_filter,
        anonymous_events=anonymous_events,
        max_attributes_per_call=max_attributes_per_call,
        max_attribute_name_length=max_attribute_name_length,
        max_attribute_value_length=max_attribute_value_length,
        max_identifier_value_length=max_identifier_value_length,
        rate_limit_per_second=rate_limit_per_second,
        push_concurrency=push_concurrency,
        users_per_batch=users_per_batch,
    )
    runtime = build_runtime(settings, dry_run=dry_run)
    summary = SyncSummary()
    try:
        return _run(runtime, summary, logger, max_pages)
    finally:
        runtime.close()


def _run(runtime, summary: SyncSummary, logger, max_pages: int | None) -> dict[str, Any]:
    settings = runtime.settings
    if not settings.synchronized_segments:
        summary.warnings.append(NO_SEGMENTS_WARNING)
        logger.warning(NO_SEGMENTS_WARNING)
    try:
        runtime.segment_names = segment_names(runtime.hull)
    except AuthError as exc:
        raise SyncFailed(f"Hull rejected the credentials: {exc}") from None
    runtime.whitelisted_segment_ids, unknown = resolve_segments(
        settings.synchronized_segments, [{"id": k, "name": v} for k, v in runtime.segment_names.items()]
    )
    for entry in unknown:
        summary.warnings.append(f"synchronized segment {entry!r} does not exist in Hull")
        logger.warning("synchronized segment %r does not exist in Hull", entry)

    if not runtime.dry_run:
        sent, error = write_back(runtime.hull, runtime.engine, settings.user_id_mapping)
        summary.writeback_sent += sent
        if error:
            summary.warnings.append(error)

    run_id = str(flow_run.get_id() or "")
    cursor = read_cursor(runtime.engine, USERS_CURSOR)
    pages = 0
    failure: str | None = None
    while max_pages is None or pages < max_pages:
        try:
            users, next_cursor = fetch_users_task(runtime.hull, cursor, settings.users_per_batch)
            if not users:
                break
            page_summary = sync_page_task(runtime, users, USERS_CURSOR, next_cursor, run_id)
        except AuthError as exc:
            failure = f"Stopped: {exc}. Nothing from the failing page was marked as synced."
            break
        except PageIncomplete as exc:
            summary.merge(exc.summary)
            failure = str(exc)
            break
        summary.merge(page_summary)
        cursor = next_cursor
        pages += 1
        logger.info(
            "page %d: %d users, %s", pages, page_summary.users_seen,
            ", ".join(f"{k}={v}" for k, v in sorted(page_summary.decisions.items())),
        )

    if failure is None and settings.events_filter and runtime.whitelisted_segment_ids:
        failure = _sync_events(runtime, summary, logger, run_id)

    if not runtime.dry_run:
        summary.writeback_pending = count_pending_writebacks(runtime.engine)
    publish_summary(summary, runtime.dry_run)
    for line in summary.lines():
        logger.info(line)
    if failure:
        raise SyncFailed(failure)
    if summary.failed_batches:
        raise SyncFailed(
            f"{summary.failed_users.get('transient', 0)} users could not be sent after retries; they are "
            f"saved as failed batches {summary.failed_batches} (see `cio-sync failed list`)."
        )
    return summary.to_dict()


def _sync_events(runtime, summary: SyncSummary, logger, run_id: str) -> str | None:
    """Events go out after every changed user's identify calls of this run."""
    cursor = read_cursor(runtime.engine, EVENTS_CURSOR)
    while True:
        try:
            events, next_cursor = fetch_events_task(runtime, cursor)
            if not events:
                return None
            page_summary = sync_events_page_task(runtime, events, next_cursor, run_id)
        except AuthError as exc:
            return f"Stopped while sending events: {exc}"
        summary.merge(page_summary)
        cursor = next_cursor
        logger.info("events page: %s", dict(page_summary.events))
