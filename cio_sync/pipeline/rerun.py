"""Redo one failed batch: work that outlived its retry budget (`failed_batches`).

Each batch is redone against current Hull data and current state: users are fetched again
from Hull (their current attributes) and diffed like any page, so a user synced since is
skipped as unchanged; events already sent are skipped through `event_state`. Rerunning a
batch twice therefore sends nothing twice.

A batch is resolved only when every item in it was found in Hull and nothing is left to
retry. An item Hull no longer returns (a removed user, an event id in neither `event_id` nor
`_id`) keeps the batch open, with that reason as its error: unfound work is never counted
as done.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cio_sync.pipeline.events_page import sync_events_page
from cio_sync.pipeline.extract import resolve_run_segments
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.users_page import PageIncomplete, sync_page
from cio_sync.runtime import SyncRuntime
from cio_sync.store.failed import EVENTS, USERS
from cio_sync.store.identity import latest_stream_mapping
from connectors.http import ApiError, AuthError


def rerun_batch(runtime: SyncRuntime, batch: dict[str, Any], run_id: str | None) -> tuple[bool, str | None, SyncSummary]:
    """Returns (resolved, error, summary). AuthError propagates: it stops the whole rerun."""
    summary = SyncSummary()
    runtime = _with_current_id_mapping(runtime)
    try:
        runtime = runtime.with_segments(resolve_run_segments(runtime.hull, runtime.settings.synchronized_segments))
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
            return False, f"unknown batch kind {batch['kind']!r}", summary
        summary.merge(result)
        if unfound:
            return False, (f"{len(unfound)} of the batch's {len(wanted)} {batch['kind']} were not found in Hull, "
                           f"so the batch stays open: {', '.join(unfound[:10])}{' ...' if len(unfound) > 10 else ''}"), summary
        return left == 0, (result.errors[0] if left else None), summary
    except PageIncomplete as exc:
        summary.merge(exc.summary)
        return False, str(exc), summary
    except AuthError:
        raise
    except ApiError as exc:
        return False, str(exc), summary


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
