"""Redo one failed batch: work that outlived its retry budget (`failed_batches`).

Each batch is redone against current Hull data, current state and the settings of the
`runtime` given (today's: a batch keeps only the work, never the settings of the run that
saved it): users are fetched again from Hull (their current attributes) and diffed like any
page, so a user synced since is skipped as unchanged; events already sent are skipped through
`event_state`. Rerunning a batch twice therefore sends nothing twice. A user the rerun decides
to delete is planned, never deleted here (the deletion guard of a sync run sends it).
"""

from __future__ import annotations

from typing import Any

from cio_sync.pipeline.events_page import sync_events_page
from cio_sync.pipeline.extract import resolve_run_segments
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.users_page import PageIncomplete, sync_page
from cio_sync.rules.guard import segments_problem
from cio_sync.runtime import SyncRuntime
from cio_sync.settings import ConnectorSettings
from cio_sync.store.failed import EVENTS, USERS
from connectors.http import ApiError, AuthError


def changed_settings(saved: dict[str, Any] | None, current: ConnectorSettings) -> list[str]:
    """`name: saved → now` for each setting that differs from the one saved with a batch (for
    the rerun's summary only: the rerun applies `current`). A batch saved with none reports
    nothing."""
    if not saved:
        return []
    now = current.snapshot()
    return [f"{name}: {saved[name]!r} → {now[name]!r}" for name in sorted(now) if name in saved and saved[name] != now[name]]


def rerun_batch(runtime: SyncRuntime, batch: dict[str, Any], run_id: str | None) -> tuple[bool, str | None, SyncSummary]:
    """Returns (resolved, error, summary), redone with `runtime`'s settings (today's). AuthError
    propagates: it stops the whole rerun."""
    summary = SyncSummary()
    try:
        runtime = runtime.with_segments(resolve_run_segments(runtime.hull, runtime.settings.synchronized_segments))
        refused = segments_problem(runtime.settings, runtime.segments.unknown, runtime.segments.names)
        if refused:
            return False, refused, summary
        if not runtime.settings.synchronized_segments:
            # Everyone would be skipped and the batch called resolved: keep it open instead.
            return False, "synchronized_segments is empty, so nothing would be sent: set it and rerun", summary
        if batch["kind"] == USERS:
            users = runtime.hull.users_by_ids(batch["payload"]["hull_ids"])
            result = sync_page(runtime, users, cursor_name="", next_cursor=None, flow_run_id=run_id)
            left = result.failed_users.get("transient", 0) + result.failed_users.get("not_attempted", 0)
        elif batch["kind"] == EVENTS:
            events = runtime.hull.events_by_ids(batch["payload"]["hull_event_ids"])
            result = sync_events_page(runtime, events, None, run_id)
            left = result.events.get("retry", 0)
        else:
            return False, f"unknown batch kind {batch['kind']!r}", summary
        summary.merge(result)
        return left == 0, (result.errors[0] if left else None), summary
    except PageIncomplete as exc:
        summary.merge(exc.summary)
        return False, str(exc), summary
    except AuthError:
        raise
    except ApiError as exc:
        return False, str(exc), summary
