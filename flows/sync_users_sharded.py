"""The `sync-users-sharded` flow: one `sync-users` child run per shard, on any worker.

Each child is a run of a deployment (`run_deployment`), not an in-process subflow, so the
work pool hands the shards to whatever workers it has, on one machine or many. The parent
only waits: it holds no connection to Hull or Customer.io. Children share the Customer.io
budget through the Prefect global concurrency limit (`global_rate_limit`, on in
prefect.yaml), and each shard keeps its own cursors in the shared state database.

While its shards run, the parent holds the users-writer lease `users:layout:<n>`: no
unsharded sync, rerun, backfill or shard of another layout writes users meanwhile, while its
own shards (`users:shard:<i>/<n>`) may (cio_sync/pipeline/leases.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.deployments import arun_deployment
from prefect.runtime import flow_run

from cio_sync.pipeline.leases import users_writer_lease
from cio_sync.rules.sharding import layout_scope
from cio_sync.settings import StateSettings
from cio_sync.store import db
from cio_sync.store.lease import LeaseHeld

# Not `sync-users/sync-users`: that deployment has `concurrency_limit: 1` (scheduled runs
# must not overlap), which would make the shards wait for each other one by one.
SHARD_DEPLOYMENT = "sync-users/sync-users-shard"
SUMMARY_ARTIFACT_KEY = "sync-users-sharded-summary"


class ShardsFailed(Exception):
    """At least one shard's run did not complete; the others ran to their end."""


@flow(name="sync-users-sharded", log_prints=False)
async def sync_users_sharded(
    shard_count: int = 4,
    deployment_name: str = SHARD_DEPLOYMENT,
    parameters: dict[str, Any] | None = None,
    poll_interval_seconds: float = 5,
) -> list[dict[str, Any]]:
    """Starts `shard_count` runs of `deployment_name` (a `sync-users` deployment), shard
    `i` of `shard_count` each, waits for all of them, and fails if any of them failed.

    `parameters` (connector settings) are given to every shard on top of the deployment's
    own parameters; the shard parameters are set here and cannot be overridden.
    """
    logger = get_run_logger()
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    overrides = dict(parameters or {})
    reserved = sorted({"shard_count", "shard_index"} & overrides.keys())
    if reserved:
        raise ValueError(f"parameters may not set {', '.join(reserved)}: the parent assigns the shards")

    parent_name = flow_run.get_name() or "sync-users-sharded"
    engine = db.get_engine(StateSettings().state_database_url)
    try:
        lease = users_writer_lease(
            engine, layout_scope(shard_count), "sync-users-sharded", str(flow_run.get_id() or "") or None
        )
        with lease:
            logger.info("starting %d shard runs of %s", shard_count, deployment_name)
            children = await asyncio.gather(
                *(
                    arun_deployment(
                        deployment_name,
                        parameters={**overrides, "shard_count": shard_count, "shard_index": index},
                        flow_run_name=f"{parent_name}-shard-{index}-of-{shard_count}",
                        timeout=None,  # wait for the end, however long the shard takes
                        poll_interval=poll_interval_seconds,
                        as_subflow=True,  # children appear under this run in the UI
                    )
                    for index in range(shard_count)
                )
            )
    except LeaseHeld as exc:
        raise ShardsFailed(str(exc)) from None

    results = [
        {
            "shard": f"{index}/{shard_count}",
            "flow run": child.name,
            "state": child.state.name if child.state else "unknown",
            "flow run id": str(child.id),
        }
        for index, child in enumerate(children)
    ]
    await acreate_table_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        table=results,
        description=f"The {shard_count} shard runs of this sync-users-sharded run.",
    )
    failed = [r for r, child in zip(results, children) if not (child.state and child.state.is_completed())]
    for result in results:
        logger.info("shard %s: %s (%s)", result["shard"], result["state"], result["flow run"])
    if failed:
        raise ShardsFailed(
            f"{len(failed)} of {shard_count} shards did not complete: "
            + ", ".join(f"{r['shard']} {r['state']} ({r['flow run']})" for r in failed)
        )
    return results
