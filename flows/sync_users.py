"""The `sync-users` flow: Hull users changed since the last run → Customer.io, then write-back."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from cio_sync.lease import Lease, LeaseHeld
from cio_sync.runtime import build_runtime
from cio_sync.settings import ConnectorSettings
from cio_sync.sharding import WHOLE, Shard
from cio_sync.state import count_pending_writebacks, read_cursor
from cio_sync.summary import SyncSummary
from connectors.http import AuthError
from cio_sync.progress import SyncProgress
from tasks.extract import UserPagePrefetcher, load_segments, walk_bound
from tasks.events import EVENTS_CURSOR, fetch_events_task, sync_events_page_task
from tasks.global_rate_limit import use_global_rate_limit
from tasks.sync_page import PageIncomplete, sync_page_task
from tasks.writeback import WriteBackPipeline, write_back

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
    customerio_api: Literal["v1", "v2_batch"] | None = None,
    dry_run: bool = False,
    max_pages: int | None = None,
    shard_count: int = 1,
    shard_index: int = 0,
    global_rate_limit: bool = False,
) -> dict[str, Any]:
    """Pushes users changed in Hull since the last run to Customer.io.

    Every setting left empty falls back to the environment variable of the same name in
    upper case, then to the original connector's default. Credentials come only from the
    environment, never from parameters.

    `shard_count`/`shard_index`: this run handles only the users whose Hull id hashes to
    `shard_index` (see cio_sync/sharding.py), with its own cursors. `global_rate_limit`: also
    take Customer.io request slots from the Prefect limit shared by all shards and workers.
    """
    logger = get_run_logger()
    shard = Shard(shard_index, shard_count)
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
        customerio_api=customerio_api,
    )
    runtime = build_runtime(settings, dry_run=dry_run)
    if global_rate_limit:
        use_global_rate_limit(runtime)
    summary = SyncSummary()
    try:
        if not dry_run:  # a dry run changes nothing, so it may overlap a real run
            ttl = timedelta(seconds=float(os.environ.get("SYNC_LEASE_TTL_SECONDS", "600")))
            runtime.lease = Lease(runtime.engine, lease_name(shard.cursor_name(USERS_CURSOR)), lease_holder(), ttl)
            try:
                runtime.lease.acquire()
            except LeaseHeld as exc:
                raise SyncFailed(str(exc)) from None
        return _run(runtime, summary, logger, max_pages, shard)
    finally:
        if runtime.lease is not None:
            runtime.lease.release()
        runtime.close()


def lease_name(cursor_name: str) -> str:
    return f"sync-users:{cursor_name}"


def lease_holder() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{flow_run.get_id() or uuid.uuid4()}"


def _run(runtime, summary: SyncSummary, logger, max_pages: int | None, shard: Shard = WHOLE) -> dict[str, Any]:
    settings = runtime.settings
    if not shard.is_whole:
        logger.info("syncing %s", shard.label())
    if not settings.synchronized_segments:
        summary.warnings.append(NO_SEGMENTS_WARNING)
        logger.warning(NO_SEGMENTS_WARNING)
    try:
        load_segments(runtime, summary, logger)
    except AuthError as exc:
        raise SyncFailed(f"Hull rejected the credentials: {exc}") from None

    if not runtime.dry_run:
        sent, error = write_back(runtime.hull, runtime.engine, settings.user_id_mapping)
        summary.writeback_sent += sent
        if error:
            summary.warnings.append(error)

    run_id = str(flow_run.get_id() or "")
    users_cursor = shard.cursor_name(USERS_CURSOR)
    cursor = read_cursor(runtime.engine, users_cursor)
    pages = 0
    failure: str | None = None
    progress = SyncProgress(logger)
    # Bounded by what Hull had indexed when the run started: users re-indexed meanwhile (this
    # run's own write-backs among them) are the next run's.
    pages_ahead = UserPagePrefetcher(runtime.hull, settings.users_per_batch, shard, until=walk_bound(runtime.hull))
    if not runtime.dry_run:
        runtime.write_backs = WriteBackPipeline(runtime.hull, runtime.engine, settings.user_id_mapping)
    while max_pages is None or pages < max_pages:
        try:
            # A plain call, not a task: the page's one Prefect task is the sync below.
            fetched = pages_ahead.fetch(cursor)
            users, next_cursor = fetched.users, fetched.cursor
            if not users:
                break
            # quote(): Prefect would otherwise walk every value of every argument to track
            # dependencies (~2 s for a page of 500 users).
            page_summary = sync_page_task(quote(runtime), quote(users), users_cursor, quote(next_cursor), run_id)
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
        progress.page_done(len(users), fetched.remaining)
        runtime.renew_lease()
        logger.info(
            "page %d: %d users, %s", pages, page_summary.users_seen,
            ", ".join(f"{k}={v}" for k, v in sorted(page_summary.decisions.items())),
        )

    pages_ahead.close()
    if runtime.write_backs is not None:
        try:
            sent, errors = runtime.write_backs.drain()
            summary.writeback_sent += sent
            summary.warnings.extend(e for e in errors if e not in summary.warnings)
        except AuthError as exc:
            failure = failure or f"Stopped while writing back to Hull: {exc}"
        runtime.write_backs = None
    if failure is None:
        progress.finish()
    if failure is None and settings.events_filter and runtime.whitelisted_segment_ids:
        failure = _sync_events(runtime, summary, logger, run_id, shard)

    if not runtime.dry_run:
        summary.writeback_pending = count_pending_writebacks(runtime.engine)
    publish_summary(summary, runtime.dry_run)
    for line in summary.lines():
        logger.info(line)
    if failure:
        raise SyncFailed(failure)
    if summary.failed_batches:
        users = summary.failed_users.get("transient", 0) + summary.failed_users.get("not_attempted", 0)
        raise SyncFailed(
            f"{users} users and {summary.events.get('retry', 0)} events could not be sent after retries; "
            f"they are saved as failed batches {summary.failed_batches} (see `cio-sync failed list`)."
        )
    return summary.to_dict()


def _sync_events(runtime, summary: SyncSummary, logger, run_id: str, shard: Shard = WHOLE) -> str | None:
    """Events go out after every changed user's identify calls of this run."""
    events_cursor = shard.cursor_name(EVENTS_CURSOR)
    cursor = read_cursor(runtime.engine, events_cursor)
    while True:
        try:
            events, next_cursor = fetch_events_task(runtime, cursor, shard)
            if not events:
                return None
            page_summary = sync_events_page_task(quote(runtime), quote(events), quote(next_cursor), run_id,
                                                 events_cursor)
        except AuthError as exc:
            return f"Stopped while sending events: {exc}"
        except PageIncomplete as exc:  # Customer.io down while identifying an event's new user
            summary.merge(exc.summary)
            return str(exc)
        summary.merge(page_summary)
        cursor = next_cursor
        logger.info("events page: %s", dict(page_summary.events))
