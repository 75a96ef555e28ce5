"""The `send-deletions` task: the deletion guard at the end of a sync run (one task, not per user)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cio_sync.pipeline.deletions import GuardResult, settle_deletions
from cio_sync.redact import scrubbed_errors
from cio_sync.rules.sharding import Shard
from cio_sync.runtime import SyncRuntime


@task(name="send-deletions", cache_policy=NO_CACHE)
def send_deletions_task(
    runtime: SyncRuntime,
    scope: str,
    flow_run_id: str | None,
    shard: Shard,
    approved_plan_id: int | None = None,
    decided_by: str = "",
) -> GuardResult:
    with scrubbed_errors():
        return settle_deletions(runtime, scope, flow_run_id, shard, approved_plan_id, decided_by)
