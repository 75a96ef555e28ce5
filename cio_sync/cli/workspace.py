"""`cio-sync setup`: what a Prefect workspace needs before `prefect deploy --all`.

Idempotent, run it again any time (after changing the budget, for example):
- the `process` work pool the deployments of prefect.yaml use (created if missing, an
  existing pool is left as it is);
- the global concurrency limit `customerio-requests` that all sync runs, shards and
  workers take Customer.io request slots from (created, or updated to the given budget).
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.global_rate_limit import DEFAULT_REQUESTS_PER_SECOND, GLOBAL_LIMIT_NAME, ensure_global_limit

DEFAULT_WORK_POOL = "cio-sync"


@dataclass
class SetupResult:
    work_pool: str
    work_pool_created: bool
    limit_name: str
    requests_per_second: float
    burst: int

    def lines(self) -> list[str]:
        return [
            f"work pool {self.work_pool!r} (process): {'created' if self.work_pool_created else 'already there'}",
            f"global rate limit {self.limit_name!r}: {self.requests_per_second:g} Customer.io requests/s "
            f"for all runs together, bursts of up to {self.burst}",
        ]


def ensure_process_work_pool(name: str = DEFAULT_WORK_POOL) -> bool:
    """Creates the pool with the process worker's default job template; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="Hull -> Customer.io connector flows (prefect.yaml).",
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


def setup_workspace(
    work_pool: str = DEFAULT_WORK_POOL,
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
    burst: int | None = None,
    limit_name: str = GLOBAL_LIMIT_NAME,
) -> SetupResult:
    from cio_sync.cli.serve import require_api_server

    require_api_server()  # a throwaway server would forget all of this on exit
    created = ensure_process_work_pool(work_pool)
    limit = ensure_global_limit(requests_per_second, burst, name=limit_name, update=True)
    return SetupResult(work_pool, created, limit.name, limit.slot_decay_per_second, limit.limit)
