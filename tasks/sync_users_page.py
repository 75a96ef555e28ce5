"""The `sync-users-page` task: one Prefect task per page of users (never per user), and
`sync-users-quiet-pages`: one task for a run of consecutive pages that send nothing."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cio_sync.pipeline.phase import Phase
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.users_page import PlannedPage, QuietPage, sync_page, sync_quiet_pages
from cio_sync.pipeline.writeback import WriteBackPipeline
from cio_sync.redact import scrubbed_errors
from cio_sync.runtime import SyncRuntime
from cio_sync.store.cursors import Cursor


# NO_CACHE: the arguments hold clients and an engine, which no cache key can describe.
@task(name="sync-users-page", cache_policy=NO_CACHE)
def sync_users_page_task(
    runtime: SyncRuntime,
    users: list[dict[str, Any]],
    cursor_name: str,
    next_cursor: Cursor,
    flow_run_id: str | None = None,
    write_backs: WriteBackPipeline | None = None,
    phase: Phase | None = None,
    room: int = SyncSummary.MAX_PLAN_SAMPLE,
    planned: PlannedPage | None = None,
) -> SyncSummary:
    with scrubbed_errors():  # a Failed task state shows the message in the UI
        return sync_page(runtime, users, cursor_name, next_cursor, flow_run_id, write_backs, phase, room, planned)


@task(name="sync-users-quiet-pages", cache_policy=NO_CACHE)
def sync_quiet_pages_task(
    runtime: SyncRuntime,
    pages: list[QuietPage],
    cursor_name: str,
    flow_run_id: str | None = None,
    write_backs: WriteBackPipeline | None = None,
    phase: Phase | None = None,
    room: int = SyncSummary.MAX_PLAN_SAMPLE,
) -> list[SyncSummary]:
    with scrubbed_errors():
        return sync_quiet_pages(runtime, pages, cursor_name, flow_run_id, write_backs, phase, room)
