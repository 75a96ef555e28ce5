"""The users-writer lease of a run: who may write which users' state right now.

Every writer of user state holds one lease for its whole run, named by the users it writes
(`cio_sync.rules.sharding`): `users:all` for `sync-users`, `rerun-failed-batches` and
`backfill-events`; `users:shard:<i>/<n>` for one shard; `users:layout:<n>` for the
`sync-users-sharded` parent while its shards run. Leases whose users may meet exclude each
other, in one state database, whichever machine or process the runs are on.

The lease is renewed by a heartbeat thread (`SYNC_LEASE_HEARTBEAT_SECONDS`) while the run
lives and expires `SYNC_LEASE_TTL_SECONDS` after the last renewal. A run that finds the lease
held by a dead process on its own host, or by a Prefect flow run that has ended, takes it
over at once (cio_sync/store/lease.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine

from cio_sync.rules.sharding import scopes_overlap
from cio_sync.settings import LeaseSettings
from cio_sync.store.lease import Holder, Lease

ENDED_STATE_TYPES = frozenset({"CRASHED", "FAILED", "CANCELLED", "COMPLETED"})


def flow_run_ended(flow_run_id: str) -> bool:
    """Whether the Prefect flow run `flow_run_id` is Crashed, Failed, Cancelled or Completed
    (asked of the Prefect API this process talks to; any error means "don't know": False)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    return run.state is not None and run.state.type.value in ENDED_STATE_TYPES


def writer_lease(engine: Engine, scope: str, what: str, flow_run_id: str | None = None) -> Lease:
    settings = LeaseSettings()
    return Lease(
        engine,
        scope,
        Holder.this_process(what, flow_run_id),
        timedelta(seconds=settings.lease_ttl_seconds),
        conflicts=scopes_overlap,
        holder_gone=flow_run_ended,
    )


@contextmanager
def users_writer_lease(engine: Engine, scope: str, what: str, flow_run_id: str | None = None) -> Iterator[Lease]:
    """Holds the lease `scope` for the `with` block, renewed by a heartbeat; raises LeaseHeld
    (naming the holder) when another writer of the same users holds one."""
    lease = writer_lease(engine, scope, what, flow_run_id)
    lease.acquire()
    try:
        lease.start_heartbeat(LeaseSettings().heartbeat_seconds)
        yield lease
    finally:
        lease.release()
