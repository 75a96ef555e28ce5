"""The `sync-events-page` task: read, decide and send one page of Hull events."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cio_sync.pipeline.events_page import EventsPage, EventsReadAhead, run_events_page
from cio_sync.pipeline.phase import Phase
from cio_sync.pipeline.watermarks import EventsWindow
from cio_sync.redact import scrubbed_errors
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import SyncRuntime
from cio_sync.store.cursors import Cursor


@task(name="sync-events-page", cache_policy=NO_CACHE)
def sync_events_page_task(
    runtime: SyncRuntime,
    cursor: Cursor,
    window: EventsWindow,
    shard: Shard = WHOLE,
    flow_run_id: str | None = None,
    phase: Phase | None = None,
    ahead: EventsReadAhead | None = None,
) -> EventsPage:
    with scrubbed_errors():  # a Failed task state shows the message in the UI
        return run_events_page(runtime, cursor, window, shard, flow_run_id, phase, ahead)
