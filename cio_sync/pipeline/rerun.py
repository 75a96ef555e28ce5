"""Redo failed batches: work that outlived its retry budget (`failed_batches`).

Each batch is redone against current Hull data, current state and the settings of the
`runtime` given (today's: a batch keeps only the work, never the settings of the run that
saved it): users are fetched again from Hull (their current attributes) and diffed
like any page, so a user synced since is skipped as unchanged; events already sent are
skipped through `event_state`. Rerunning a batch twice therefore sends nothing twice.

Two callers: `rerun-failed-batches` (`cio-sync failed rerun`, by a person) and the start of
every scheduled `sync-users` run (`retry_failed_batches`), which retries the batches whose
last failure was transient (429, 5xx, timeouts, connection errors, the breaker) at most
`failed_batch_auto_retries` times each. Both hold the users-writer lease of the users they
write (cio_sync/pipeline/leases.py), so a rerun never overlaps a sync of the same users.

A batch is resolved only when every item in it was found in Hull and nothing is left to
retry. An item Hull no longer returns (a removed user, an event id in neither `event_id` nor
`_id`) keeps the batch open, with that reason as its error: unfound work is never counted
as done (and not retried automatically: it waits for a person).
A user the rerun decides to delete is planned, never deleted here (the deletion guard of a
sync run sends it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from cio_sync.pipeline.events_page import sync_events_page
from cio_sync.pipeline.extract import resolve_run_segments
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.users_page import PageIncomplete, sync_page
from cio_sync.rules.guard import segments_problem
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import SyncRuntime
from cio_sync.settings import ConnectorSettings
from cio_sync.store.events import event_user_ids
from cio_sync.store.failed import EVENTS, USERS, mark_rerun, open_work_batches
from cio_sync.store.identity import latest_stream_mapping
from connectors.http import ApiError, AuthError, TransientError


def changed_settings(saved: dict[str, Any] | None, current: ConnectorSettings) -> list[str]:
    """`name: saved → now` for each setting that differs from the one saved with a batch (for
    the rerun's summary only: the rerun applies `current`). A batch saved with none reports
    nothing."""
    if not saved:
        return []
    now = current.snapshot()
    return [
        f"{name}: {saved[name]!r} → {now[name]!r}" for name in sorted(now) if name in saved and saved[name] != now[name]
    ]


class RerunOutcome(NamedTuple):
    resolved: bool
    error: str | None
    summary: SyncSummary
    transient: bool = True  # the error left is transient: the batch may be retried automatically


def prepare_rerun(runtime: SyncRuntime) -> tuple[SyncRuntime, str | None]:
    """Today's settings made ready to redo batches (segments resolved, the `user_id_mapping` in
    force), or why they cannot redo any: empty or unknown synchronized segments (a rerun
    started without the sync's settings, a renamed segment). A refusal is the rerun's problem,
    not the batches': they are left exactly as they are, attempts and automatic retries
    included, so the next run with good settings heals them. Hull errors propagate."""
    runtime = _with_current_id_mapping(runtime)
    if not runtime.settings.synchronized_segments:
        # Everyone would be skipped and the batch called resolved: keep it open instead.
        return runtime, "synchronized_segments is empty, so nothing would be sent: set it and rerun"
    if not runtime.segments.names:
        runtime = runtime.with_segments(resolve_run_segments(runtime.hull, runtime.settings.synchronized_segments))
    refused = segments_problem(runtime.settings, runtime.segments.unknown, runtime.segments.names)
    if refused is None and runtime.segments.unknown:
        # Even with deletion off: the batch's people in that segment would be skipped as "not in
        # segments" and the batch called resolved with nothing sent.
        refused = (
            f"synchronized segments {', '.join(map(repr, runtime.segments.unknown))} do not exist in Hull "
            "(renamed, misspelt, or missing from this worker's settings?): fix the setting and rerun"
        )
    return runtime, refused


def rerun_batch(runtime: SyncRuntime, batch: dict[str, Any], run_id: str | None) -> RerunOutcome:
    """Redoes one batch with `runtime`, today's settings as `prepare_rerun` returned them.
    AuthError propagates: it stops the whole rerun."""
    summary = SyncSummary()
    try:
        if batch["kind"] == USERS:
            wanted = [str(i) for i in batch["payload"]["hull_ids"]]
            users = runtime.hull.users_by_ids(wanted)
            unfound = _unfound(wanted, [u.get("id") for u in users if isinstance(u, dict)])
            result = sync_page(runtime, users, cursor_name="", next_cursor=None, flow_run_id=run_id)
            left = result.failed_users.get("transient", 0) + result.failed_users.get("not_attempted", 0)
        elif batch["kind"] == EVENTS:
            wanted = [str(i) for i in batch["payload"]["hull_event_ids"]]
            events = runtime.hull.events_by_ids(wanted)
            unfound = _unfound(wanted, [e.get("event_id") for e in events])
            result = sync_events_page(runtime, events, None, run_id)
            left = result.events.get("retry", 0)
        else:
            return RerunOutcome(False, f"unknown batch kind {batch['kind']!r}", summary, transient=False)
        summary.merge(result)
        if unfound:
            return RerunOutcome(
                False,
                (
                    f"{len(unfound)} of the batch's {len(wanted)} {batch['kind']} were not found in Hull, "
                    f"so the batch stays open: {', '.join(unfound[:10])}{' ...' if len(unfound) > 10 else ''}"
                ),
                summary,
                transient=False,
            )
        return RerunOutcome(left == 0, result.errors[0] if left else None, summary)
    except PageIncomplete as exc:
        summary.merge(exc.summary)
        return RerunOutcome(False, str(exc), summary)
    except AuthError:
        raise
    except ApiError as exc:
        return RerunOutcome(False, str(exc), summary, transient=isinstance(exc, TransientError))


def owned_by(runtime: SyncRuntime, shard: Shard, batch: dict[str, Any]) -> bool:
    """Whether every user (or event's user) of the batch belongs to `shard`: a shard retries
    only batches it may write under its lease. The unsharded run owns every batch."""
    if shard.is_whole:
        return True
    payload = batch["payload"] or {}
    if batch["kind"] == USERS:
        return all(shard.owns(hull_id) for hull_id in payload.get("hull_ids") or [])
    users = event_user_ids(runtime.engine, payload.get("hull_event_ids") or [])
    return all(
        shard.owns_event({"user_id": users.get(event_id), "event_id": event_id})
        for event_id in payload.get("hull_event_ids") or []
    )


def retry_failed_batches(runtime: SyncRuntime, run_id: str | None, shard: Shard = WHOLE) -> SyncSummary:
    """The start of a scheduled run: retries this shard's failed batches whose last failure was
    transient, oldest first, each at most `failed_batch_auto_retries` times (a batch's
    `attempts` counts the first failure and every rerun). Stops at the first batch that fails
    again: the service is still failing, and the others keep their attempts for a later run.
    Batches out of automatic retries, or whose last error was permanent, wait for a person
    (`cio-sync failed rerun`); the summary says which. AuthError propagates."""
    summary = SyncSummary()
    limit = runtime.settings.failed_batch_auto_retries
    waiting: list[int] = []
    stopped = False
    batches = open_work_batches(runtime.engine)
    if not batches:
        return summary
    try:
        runtime, refused = prepare_rerun(runtime)
    except ApiError as exc:
        refused = f"Hull did not answer: {exc}"
    if refused:
        summary.warnings.append(f"failed batches not retried by this run (they are left as they are): {refused}")
        return summary
    for batch in batches:
        if not owned_by(runtime, shard, batch):
            continue
        if batch["attempts"] > limit or not batch["transient"]:
            waiting.append(batch["id"])
            continue
        if stopped:
            continue
        outcome = rerun_batch(runtime, batch, run_id)
        mark_rerun(runtime.engine, batch["id"], outcome.resolved, outcome.error, outcome.transient)
        outcome.summary.pages = 0  # not pages of the users stream
        summary.merge(outcome.summary)
        if outcome.resolved:
            summary.batch_retries["resolved"] += 1
            continue
        summary.batch_retries["still_open"] += 1
        summary.warnings.append(f"failed batch {batch['id']} retried automatically and still open: {outcome.error}")
        if batch["attempts"] + 1 > limit or not outcome.transient:
            waiting.append(batch["id"])
        stopped = True
    if waiting:
        summary.batch_retries["waiting_for_a_person"] += len(waiting)
        summary.warnings.append(
            f"failed batches {waiting} are not retried automatically any more (retried "
            f"{limit} times, or failed permanently): see `cio-sync failed list`, fix the cause, "
            "then `cio-sync failed rerun`."
        )
    return summary


def _unfound(wanted: list[str], found: list[object]) -> list[str]:
    seen = {str(i) for i in found if i}
    return [i for i in dict.fromkeys(wanted) if i not in seen]


def _with_current_id_mapping(runtime: SyncRuntime) -> SyncRuntime:
    """A batch saved before a migration of `user_id_mapping` is redone with the mapping in
    force now: with the saved one, its people would be moved back to their old ids."""
    current = latest_stream_mapping(runtime.engine)
    if current is None or current == runtime.settings.user_id_mapping:
        return runtime
    return replace(runtime, settings=runtime.settings.model_copy(update={"user_id_mapping": current}))
