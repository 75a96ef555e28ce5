"""`cio-sync serve`: every deployment of prefect.yaml in one long-running process.

For small setups: no work pool and no worker, just this process next to a Prefect server
(`prefect server start`, or Prefect Cloud). Prefect's `serve` registers the deployments
with their schedules and starts each scheduled run as a subprocess of this one.

Serving uses the same deployment names as prefect.yaml (`sync-users/sync-users`, ...):
use one or the other. Prefect cannot turn a worker deployment into a served one in place
(the served version keeps the old storage path and its runs crash while loading the flow),
so when the names exist on a work pool, `serve` refuses, and `serve --replace` deletes
those deployments (and their scheduled runs; past runs stay) before serving. The sharded
sync is left out on purpose: its shards need workers to spread over.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

# Deployment name -> interval between scheduled runs (None: run on demand only).
SCHEDULES: dict[str, timedelta | None] = {
    "sync-users": timedelta(minutes=5),
    "drain-webhooks": timedelta(minutes=1),
    "check-connection": timedelta(minutes=30),
    "rerun-failed-batches": None,
    "backfill-events": None,
}


class NeedsPrefectServer(RuntimeError):
    """Schedules need a Prefect server that outlives this process."""


class DeployedOnWorkPool(RuntimeError):
    """The deployment names are taken by `prefect deploy` deployments of a work pool."""


def build_deployments() -> list[Any]:
    """The served deployments. Settings come from this process's environment (parameters
    left empty fall back to it); credentials never go into parameters."""
    from flows.backfill_events import backfill_events
    from flows.check_connection import check_connection
    from flows.drain_webhooks import drain_webhooks
    from flows.rerun_failed_batches import rerun_failed_batches
    from flows.sync_users import sync_users

    flows: dict[str, Any] = {
        "sync-users": sync_users,
        "drain-webhooks": drain_webhooks,
        "check-connection": check_connection,
        "rerun-failed-batches": rerun_failed_batches,
        "backfill-events": backfill_events,
    }
    return [
        flows[name].to_deployment(
            name=name,
            interval=interval,
            # Two sync runs at once would fight over the same cursor: the second waits.
            concurrency_limit=1 if name == "sync-users" else None,
            description=(flows[name].description or "").strip().splitlines()[0] if flows[name].description else None,
        )
        for name, interval in SCHEDULES.items()
    ]


def require_api_server() -> str:
    """Without PREFECT_API_URL, Prefect would start a throwaway server that dies with this
    process and cannot run schedules: refuse clearly instead."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise NeedsPrefectServer(
            "PREFECT_API_URL is not set. Start a server (`prefect server start`) and run "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`, or log in to Prefect Cloud."
        )
    return url


def take_over_worker_deployments(deployments: list, replace: bool) -> list[str]:
    """Names of `deployments` that exist on a work pool; deleted when `replace`, otherwise
    DeployedOnWorkPool is raised before anything changes."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        taken = []
        for deployment in deployments:
            full_name = f"{deployment.flow_name}/{deployment.name}"
            try:
                existing = client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                taken.append((full_name, existing))
        if taken and not replace:
            names = ", ".join(f"{name} (work pool {d.work_pool_name!r})" for name, d in taken)
            raise DeployedOnWorkPool(
                f"{names} already run on workers (`prefect deploy`). Serve instead of the workers with "
                "`cio-sync serve --replace`, which deletes those deployments and their scheduled runs first."
            )
        for _, existing in taken:
            client.delete_deployment(existing.id)
    return [name for name, _ in taken]


def serve_deployments(limit: int | None = None, replace: bool = False) -> None:
    """Blocks until interrupted (Ctrl-C / SIGTERM); `limit` caps concurrent runs."""
    from prefect import serve

    require_api_server()
    deployments = build_deployments()
    for name in take_over_worker_deployments(deployments, replace):
        print(f"replaced the work-pool deployment {name}")
    serve(*deployments, limit=limit)
