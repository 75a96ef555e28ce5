"""The `sync-users` flow: Hull users changed since the last run → Customer.io, then write-back."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from cio_sync.pipeline import approval
from cio_sync.pipeline.alert_events import emit_failed_batches_event
from cio_sync.pipeline.deletions import GuardResult, plan_table
from cio_sync.pipeline.events_page import EventsReadAhead
from cio_sync.pipeline.extract import UserPagePrefetcher, resolve_run_segments, walk_bound
from cio_sync.pipeline.identity import IdMappingChanged, check_id_mapping
from cio_sync.pipeline.leases import users_writer_lease
from cio_sync.pipeline.phase import Phase
from cio_sync.pipeline.progress import SyncProgress
from cio_sync.pipeline.rerun import retry_failed_batches
from cio_sync.pipeline.resync import resync_requested
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.sync_log import plan_markdown
from cio_sync.pipeline.users_page import PageIncomplete, PagePlanner, QuietPage
from cio_sync.pipeline.watermarks import EventsWindow, events_window, not_behind, users_walk_start
from cio_sync.pipeline.writeback import WriteBackPipeline, write_back
from cio_sync.redact import scrub, scrub_obj, scrubbed_errors
from cio_sync.rules.guard import deletion_limit, over_limit_message, segments_problem
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import SyncRuntime, build_runtime
from cio_sync.settings import QUIET_PAGES_PER_TASK, ApprovalSettings, ConnectorSettings
from cio_sync.store.cursors import Cursor, read_cursor
from cio_sync.store.db import utcnow
from cio_sync.store.deletions import open_plan, reject_plan
from cio_sync.store.failed import EVENTS, USERS, open_batches_age
from cio_sync.store.lease import Lease, LeaseHeld, LeaseLost
from cio_sync.store.settings_in_use import record_setting
from cio_sync.store.sync_log import prune_sync_log
from cio_sync.store.users import count_live_people, count_pending_writebacks
from connectors.http import ApiError, AuthError
from tasks.send_deletions import send_deletions_task
from tasks.sync_events_page import sync_events_page_task
from tasks.sync_users_page import sync_quiet_pages_task, sync_users_page_task

USERS_CURSOR = "users"
NO_SEGMENTS_WARNING = (
    "No users will be synchronized because you have not specified at least one whitelisted "
    "segment in Settings (synchronized_segments)."
)


T = TypeVar("T")


def quoted(value: T) -> T:
    """`quote(value)`, typed as the value: Prefect passes it through untouched instead of walking
    every element of every argument to track dependencies (~2 s for a page of 500 users)."""
    return cast(T, quote(value))


class SyncFailed(Exception):
    """The run did its best and is marked Failed so the Prefect UI flags it."""


def counts_text(counts: Counter[str]) -> str:
    """`insert=3, skip=2`: a page's decisions in its log line."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def publish_summary(summary: SyncSummary, dry_run: bool) -> None:
    create_table_artifact(
        key="sync-users-summary",
        table=scrub_obj(summary.table()),
        description=("Dry run: nothing was sent. " if dry_run else "") + "What this sync-users run did.",
    )


def publish_plan_sample(summary: SyncSummary, values: bool) -> None:
    """A dry run's plan: up to 50 people it would change, old → new per attribute."""
    create_markdown_artifact(
        key="sync-users-plan",
        markdown=scrub(plan_markdown(summary.plan_sample, dict(summary.decisions), values)),
        description="Dry run: a sample of the people sync-users would change, and how.",
    )


PLAN_ARTIFACT_ROWS = 10_000  # the artifact's table; the description always gives the full count


def publish_plan(result: GuardResult, message: str) -> None:
    assert result.plan is not None
    create_table_artifact(
        key="deletion-plan",
        table=scrub_obj(plan_table(result.plan_rows[:PLAN_ARTIFACT_ROWS])),
        description=f"Deletion plan #{result.plan['id']} ({result.plan['size']} people; digest "
        f"{result.plan['digest'][:12]}). {message}",
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
    events_per_batch: int | None = None,
    customerio_api: Literal["v1", "v2_batch"] | None = None,
    on_id_change: Literal["merge", "delete_old", "ignore"] | None = None,
    unset_removed_attributes: bool | None = None,
    sync_mode: Literal["upsert", "update_only"] | None = None,
    on_segment_exit: Literal["keep", "delete", "suppress", "unset_segments"] | None = None,
    events_overlap_minutes: float | None = None,
    events_initial_lookback_hours: float | None = None,
    events_future_tolerance_minutes: float | None = None,
    users_overlap_seconds: float | None = None,
    failed_batch_auto_retries: int | None = None,
    max_deletions_per_run: int | None = None,
    dry_run: bool = False,
    migrate_ids: bool = False,
    max_pages: int | None = None,
    shard_count: int = 1,
    shard_index: int = 0,
    global_rate_limit: bool = False,
    approve_deletions: bool = False,
) -> dict[str, Any]:
    """Pushes users changed in Hull since the last run to Customer.io.

    Every setting left empty falls back to the environment variable of the same name in
    upper case, then to the original connector's default (cio_sync/settings.py). Credentials
    come only from the environment, never from parameters.

    `shard_count`/`shard_index`: this run handles only the users whose Hull id hashes to
    `shard_index` (see cio_sync/rules/sharding.py), with its own cursors. `global_rate_limit`:
    also take Customer.io request slots from the Prefect limit shared by all shards and workers.
    `migrate_ids`: allow a run whose `user_id_mapping` differs from the last run's (every id
    changes): every user is read again and moved to its new id (cio_sync/pipeline/identity.py).

    Unless `dry_run`, the run holds the users-writer lease of its users (`users:all`, or
    `users:shard:<i>/<n>`) from start to end, renewed by a heartbeat (cio_sync/pipeline/leases.py).

    `approve_deletions`: delete the people of the deletion plan awaiting approval (published by
    an earlier run as the `deletion-plan` artifact), even though they are over
    `max_deletions_per_run`; approval covers that plan's people only.
    """
    logger = get_run_logger()
    shard = Shard(shard_index, shard_count)
    started = utcnow()
    # Every parameter that names a setting (the others are dropped by `resolve`).
    settings = ConnectorSettings.resolve(**locals())
    runtime = build_runtime(settings, dry_run=dry_run, global_rate_limit=global_rate_limit)
    try:
        if dry_run:  # a dry run changes nothing, so it may overlap a real run
            with scrubbed_errors():  # a Failed state's message, and the result Prefect stores, keep no credential
                return _run(runtime, None, logger, max_pages, shard, migrate_ids, started, approve_deletions)
        with users_writer_lease(runtime.engine, shard.writer_scope(), "sync-users", run_id_or_none()) as lease:
            with scrubbed_errors():
                return _run(runtime, lease, logger, max_pages, shard, migrate_ids, started, approve_deletions)
    except (LeaseHeld, LeaseLost) as exc:
        raise SyncFailed(str(exc)) from None
    finally:
        runtime.close()


def run_id_or_none() -> str | None:
    return str(flow_run.get_id() or "") or None


def _run(
    runtime: SyncRuntime,
    lease: Lease | None,
    logger: logging.Logger | logging.LoggerAdapter,
    max_pages: int | None,
    shard: Shard = WHOLE,
    migrate_ids: bool = False,
    started: datetime | None = None,
    approve_deletions: bool = False,
) -> dict[str, Any]:
    settings = runtime.settings
    started = started or utcnow()
    summary = SyncSummary()
    if not shard.is_whole:
        logger.info("syncing %s", shard.label())
    try:  # before anything is sent
        identity = check_id_mapping(runtime, shard.cursor_name(USERS_CURSOR), migrate_ids)
    except IdMappingChanged as exc:
        raise SyncFailed(str(exc)) from None
    if identity.warning:
        summary.warnings.append(identity.warning)
        logger.warning(identity.warning)
    if not settings.synchronized_segments:
        summary.warnings.append(NO_SEGMENTS_WARNING)
        logger.warning(NO_SEGMENTS_WARNING)
    try:
        runtime = runtime.with_segments(resolve_run_segments(runtime.hull, settings.synchronized_segments))
    except AuthError as exc:
        raise SyncFailed(f"Hull rejected the credentials: {exc}") from None
    # Deletion on, and a segment that does not resolve (or none given): every user read would
    # count as "not in segments". Fail before any Customer.io call.
    refused = segments_problem(settings, runtime.segments.unknown, runtime.segments.names)
    if refused:
        raise SyncFailed(refused)
    for entry in runtime.segments.unknown:
        summary.warnings.append(f"synchronized segment {entry!r} does not exist in Hull")
        logger.warning("synchronized segment %r does not exist in Hull", entry)

    run_id = str(flow_run.get_id() or "")
    if not runtime.dry_run:
        # The drain writes webhooks to Hull under the identity this run sends people as.
        record_setting(runtime.engine, "user_id_mapping", settings.user_id_mapping, run_id or None)
        sent, error = write_back(runtime.hull, runtime.engine, settings.user_id_mapping)
        summary.writeback_sent += sent
        if error:
            summary.warnings.append(error)

    run_id = str(flow_run.get_id() or "")
    if not runtime.dry_run:  # transient failures of earlier runs heal here, without a person
        try:
            retried = retry_failed_batches(runtime, run_id, shard)
        except AuthError as exc:
            raise SyncFailed(f"Stopped while retrying failed batches: {exc}") from None
        summary.merge(retried)
        for warning in retried.warnings:
            logger.warning(warning)
    try:  # people `cio-sync resync` asked for: fetched by id, sent whatever their hash
        resynced = resync_requested(runtime, run_id or None, shard)
    except AuthError as exc:
        raise SyncFailed(f"Stopped while sending the people asked for by `cio-sync resync`: {exc}") from None
    summary.merge(resynced)
    for warning in resynced.warnings:
        logger.warning(warning)
    failure = _sync_users_stream(runtime, lease, summary, logger, max_pages, shard, run_id, identity.walk_from_start)
    walked = failure is None
    if failure is None and settings.events_filter and runtime.whitelisted_segment_ids:
        window = events_window(runtime.engine, settings, shard, started, runtime.dry_run)
        failure = walk_events(runtime, window, summary, logger, run_id, shard, lease)
    if runtime.dry_run:
        _note_dry_run_deletions(runtime, summary)
    elif walked:
        # Only once the users walk is complete are all of the run's deletes known.
        failure = _settle_deletions(runtime, lease, summary, logger, shard, run_id, approve_deletions) or failure
    elif summary.decisions.get("delete"):
        summary.warnings.append(
            f"{summary.decisions['delete']} deletions stay planned: the users walk did not "
            "complete, so the next run decides them with every other one"
        )

    if not runtime.dry_run:
        summary.writeback_pending = count_pending_writebacks(runtime.engine)
        # Bounded: a backlog (a first run after a long pause) is worked off over several runs.
        summary.sync_log_pruned = prune_sync_log(runtime.engine, settings.sync_log_retention_days)
    if failure:
        summary.stopped.append(failure)
    publish_summary(summary, runtime.dry_run)
    if runtime.dry_run:
        publish_plan_sample(summary, settings.sync_log_values)
    else:
        emit_failed_batches_event(*open_batches_age(runtime.engine))
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


def _sync_users_stream(
    runtime: SyncRuntime,
    lease: Lease | None,
    summary: SyncSummary,
    logger,
    max_pages: int | None,
    shard: Shard,
    run_id: str,
    from_start: bool = False,
) -> str | None:
    """The users phase, page by page; returns why it stopped early, or None. The walk starts
    `users_overlap_seconds` before the stored cursor; the stored cursor never moves back.
    `from_start`: a migration of every id walks every user from the first."""
    users_cursor = shard.cursor_name(USERS_CURSOR)
    stored = Cursor() if from_start else read_cursor(runtime.engine, users_cursor)
    cursor = users_walk_start(stored, runtime.settings.users_overlap_seconds)
    pages = 0
    failure: str | None = None
    progress = SyncProgress(logger)
    # Bounded by what Hull had indexed when the run started: users re-indexed meanwhile (this
    # run's own write-backs among them) are the next run's.
    pages_ahead = UserPagePrefetcher(
        runtime.hull, runtime.settings.users_per_batch, shard, until=walk_bound(runtime.hull)
    )
    write_backs = (
        None if runtime.dry_run else WriteBackPipeline(runtime.hull, runtime.engine, runtime.settings.user_id_mapping)
    )
    # Plans page k+1 (map, diff) while page k is pushed: Customer.io is not left waiting.
    planner = PagePlanner(runtime)
    phase = Phase(USERS)  # one breaker and one failed batch for every page of the phase
    quiet: list[QuietPage] = []  # planned pages that send nothing, recorded together

    def record_quiet() -> None:
        if not quiet:
            return
        summaries = sync_quiet_pages_task(
            quoted(runtime),
            quoted(list(quiet)),
            users_cursor,
            run_id,
            quoted(write_backs),
            quoted(phase),
            SyncSummary.MAX_PLAN_SAMPLE - len(summary.plan_sample),
        )
        decisions: Counter[str] = Counter()
        for page, page_summary in zip(quiet, summaries, strict=True):
            planner.recorded(page.users)
            summary.merge(page_summary)
            decisions.update(page_summary.decisions)
            progress.page_done(len(page.users), page.remaining)
        logger.info(
            "pages %d-%d: %d users, nothing to send (%s)",
            pages - len(quiet) + 1,
            pages,
            sum(len(page.users) for page in quiet),
            counts_text(decisions),
        )
        quiet.clear()

    try:
        while max_pages is None or pages < max_pages:
            try:
                # A plain call, not a task: the page's one Prefect task is the sync below.
                fetched = pages_ahead.fetch(cursor)
                if not fetched.users:
                    break
                if lease is not None:
                    lease.check()  # raises LeaseLost: another run took the lease over
                planned = planner.take(fetched.users)
                planner.submit(pages_ahead.next_users())
                next_cursor = not_behind(stored, fetched.cursor)
                if planned is not None and planned.sends_nothing:
                    quiet.append(QuietPage(fetched.users, next_cursor, planned, fetched.remaining))
                    cursor = fetched.cursor
                    pages += 1
                    if len(quiet) >= QUIET_PAGES_PER_TASK:
                        record_quiet()
                    continue
                record_quiet()  # before this page: the cursor moves in order
                page_summary = sync_users_page_task(
                    quoted(runtime),
                    quoted(fetched.users),
                    users_cursor,
                    quoted(next_cursor),
                    run_id,
                    quoted(write_backs),
                    quoted(phase),
                    SyncSummary.MAX_PLAN_SAMPLE - len(summary.plan_sample),
                    quoted(planned),
                )
                planner.recorded(fetched.users)
            except AuthError as exc:
                failure = f"Stopped: {exc}. Nothing from the failing page was marked as synced."
                break
            except PageIncomplete as exc:
                summary.merge(exc.summary)
                failure = str(exc)
                break
            summary.merge(page_summary)
            cursor = fetched.cursor
            pages += 1
            progress.page_done(len(fetched.users), fetched.remaining)
            logger.info(
                "page %d: %d users, %s",
                pages,
                page_summary.users_seen,
                counts_text(page_summary.decisions),
            )
        if failure is None:
            record_quiet()  # the walk's last quiet pages (after a failed page there are none: recorded before it)
    finally:
        planner.close()
        pages_ahead.close()
        if write_backs is not None:
            try:
                sent, errors = write_backs.drain()
                summary.writeback_sent += sent
                summary.warnings.extend(e for e in errors if e not in summary.warnings)
            except AuthError as exc:
                failure = failure or f"Stopped while writing back to Hull: {exc}"
    if failure is None:
        progress.finish()
    return failure


def walk_events(
    runtime: SyncRuntime,
    window: EventsWindow,
    summary: SyncSummary,
    logger,
    run_id: str,
    shard: Shard = WHOLE,
    lease: Lease | None = None,
) -> str | None:
    """Events go out after every changed user's identify calls of this run: one task per page
    of the `window` (cio_sync/pipeline/watermarks.py). Returns why the walk stopped early, or None."""
    cursor = window.start_cursor()
    phase = Phase(EVENTS)  # one breaker and one failed batch for every page of the phase
    # Reads page k+1 (events and their users) from Hull while page k is sent.
    ahead = EventsReadAhead(runtime, window, shard)
    try:
        while True:
            if lease is not None:
                lease.check()
            try:
                page = sync_events_page_task(
                    quoted(runtime), quoted(cursor), quoted(window), shard, run_id, quoted(phase), quoted(ahead)
                )
            except AuthError as exc:
                return f"Stopped while sending events: {exc}"
            except PageIncomplete as exc:  # Customer.io down while identifying an event's new user
                summary.merge(exc.summary)
                return str(exc)
            summary.merge(page.summary)
            if phase.breaker.open:
                return (
                    f"Customer.io kept failing (429/5xx/timeouts) for {phase.breaker.limit} events in a row even "
                    f"after retries, so the events phase stopped; the unsent events are saved in failed batch "
                    f"{phase.failed_batch_id} and later events wait for the next run."
                )
            if page.next_cursor is None:
                return None
            cursor = page.next_cursor
            logger.info("events page: %s", dict(page.summary.events))
            if page.last:  # Hull had no more: another task would only find nothing
                return None
    finally:
        ahead.close()


def _settle_deletions(
    runtime: SyncRuntime,
    lease: Lease | None,
    summary: SyncSummary,
    logger,
    shard: Shard,
    run_id: str,
    approve_deletions: bool,
) -> str | None:
    """The deletion guard (cio_sync/pipeline/deletions.py); returns why the run must fail, or None."""
    scope = shard.cursor_name(USERS_CURSOR)
    approved, decided_by = None, ""
    if approve_deletions:
        plan = open_plan(runtime.engine, scope)
        if plan is None:
            summary.warnings.append("approve_deletions was given, but no deletion plan awaits approval")
        else:
            approved, decided_by = plan["id"], f"approve_deletions (flow run {run_id or '-'})"
            logger.warning("approving deletion plan #%s (%s people)", plan["id"], plan["size"])
    try:
        result = send_deletions_task(quoted(runtime), scope, run_id or None, shard, approved, decided_by)
        result.add_to(summary)
        if result.plan is None:
            return _postponed(result)
        deployment_run = approval.from_deployment()
        message = over_limit_message(
            result.plan["size"],
            result.limit,
            result.plan["id"],
            deployment_run,
            actions=[r.get("action") for r in result.plan_rows],
        )
        publish_plan(result, message)
        summary.warnings.append(message)
        logger.warning(message)
        if not deployment_run:
            return message
        settings = ApprovalSettings()
        answer = approval.ask_for_approval(
            approval.description(result.plan, result.limit, result.plan_rows),
            settings.approval_timeout_seconds,
            settings.approval_poll_seconds,
            keep_alive=lease.renew if lease is not None else None,
        )
        if answer is None:
            return (
                f"Nobody answered the approval form within {settings.approval_timeout_seconds} s: nobody was "
                f"deleted; deletion plan #{result.plan['id']} stays open for the next run or for "
                "approve_deletions."
            )
        who = f"the Prefect UI (flow run {run_id or '-'}){': ' + answer.note if answer.note else ''}"
        if not answer.approve:
            kept = reject_plan(runtime.engine, result.plan["id"], who)
            summary.deletions["awaiting approval"] -= result.plan["size"]
            summary.deletions["kept: plan rejected"] += kept
            logger.warning("deletion plan #%s rejected in %s: %d people kept", result.plan["id"], who, kept)
            return None
        logger.warning("deletion plan #%s approved in %s", result.plan["id"], who)
        summary.deletions["awaiting approval"] -= result.plan["size"]
        approved_result = send_deletions_task(quoted(runtime), scope, run_id or None, shard, result.plan["id"], who)
        approved_result.add_to(summary)
        return _postponed(approved_result)
    except AuthError as exc:
        return f"Stopped while deleting: {exc}"
    except ApiError as exc:
        return f"Deletions postponed: Hull could not be asked whether they still hold ({exc}); every one stays planned."
    finally:
        summary.deletions = +summary.deletions  # drop the zero counts


def _postponed(result: GuardResult) -> str | None:
    if not result.postponed:
        return None
    return (
        f"{result.postponed} deletions could not be sent after retries; they stay planned and the next run "
        "sends them (within the deletion guard)."
    )


def _note_dry_run_deletions(runtime: SyncRuntime, summary: SyncSummary) -> None:
    # Everything the deletion guard would count: deletes, suppresses, old persons of id changes.
    count = summary.decisions.get("delete", 0) + summary.decisions.get("suppress", 0)
    count += summary.id_changes.get("delete_old", 0)
    limit = deletion_limit(runtime.settings.max_deletions_per_run, count_live_people(runtime.engine))
    if count > limit:
        summary.warnings.append(
            f"{count} deletions decided, more than max_deletions_per_run ({limit}): a real run "
            "would delete nobody until the plan is approved"
        )
