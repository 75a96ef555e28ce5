"""The `rerun-failed-batches` flow: redo work that outlived its retry budget
(cio_sync/pipeline/rerun.py says how a batch is redone). It holds the `users:all` writer
lease while it reruns users or events batches, so it never overlaps a sync, a shard or a
backfill (cio_sync/pipeline/leases.py)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from cio_sync.pipeline.leases import users_writer_lease
from cio_sync.pipeline.rerun import RerunOutcome, rerun_batch
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.rules.sharding import WHOLE_SCOPE
from cio_sync.runtime import build_runtime
from cio_sync.settings import ConnectorSettings, StateSettings
from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches, mark_rerun
from cio_sync.store.lease import LeaseHeld


class RerunIncomplete(Exception):
    """Some batches are still open; the run is marked Failed so the Prefect UI shows it."""


def _rerun(batch: dict[str, Any], run_id: str | None, global_rate_limit: bool) -> RerunOutcome:
    # The settings saved with the batch: a rerun redoes it as the failed run would have.
    settings = ConnectorSettings.resolve(**(batch["payload"].get("settings") or {}))
    # global_rate_limit: reruns spend the same Customer.io budget as the sync runs.
    runtime = build_runtime(settings, global_rate_limit=global_rate_limit)
    try:
        return rerun_batch(runtime, batch, run_id)
    finally:
        runtime.close()


@flow(name="rerun-failed-batches", log_prints=False)
def rerun_failed_batches(
    batch_ids: list[int] | None = None, global_rate_limit: bool = False, requeue_failed_webhooks: bool = False
) -> dict[str, Any]:
    """Reruns the given failed batches, or every open one when `batch_ids` is empty.
    `global_rate_limit`: take Customer.io request slots from the limit shared with sync runs.
    `requeue_failed_webhooks`: also put webhook inbox rows marked `failed` back to pending and
    drain them now (after fixing what made them fail, e.g. a long Hull outage)."""
    logger = get_run_logger()
    engine = db.get_engine(StateSettings().state_database_url)
    batches = list_failed_batches(engine, status=None if batch_ids else "open", ids=batch_ids)
    run_id = str(flow_run.get_id() or "") or None
    rows, total = [], SyncSummary()
    if requeue_failed_webhooks:
        rows.append(_rerun_webhooks(engine))
    rows.extend({"batch": b["id"], "kind": b["kind"], "result": "already resolved", "error": ""}
                for b in batches if b["status"] != "open")
    batches = [b for b in batches if b["status"] == "open"]
    if batches:
        try:
            with users_writer_lease(engine, WHOLE_SCOPE, "rerun-failed-batches", run_id):
                for batch in batches:
                    resolved, error, summary, transient = _rerun(batch, run_id, global_rate_limit)
                    mark_rerun(engine, batch["id"], resolved, error, transient)
                    total.merge(summary)
                    rows.append({"batch": batch["id"], "kind": batch["kind"],
                                 "result": "resolved" if resolved else "still open", "error": error or ""})
                    logger.info("failed batch %s: %s", batch["id"], "resolved" if resolved else f"still open: {error}")
        except LeaseHeld as exc:
            raise RerunIncomplete(f"nothing was rerun: {exc}") from None
    create_table_artifact(key="rerun-failed-batches", table=rows or [{"batch": "-", "result": "nothing to rerun"}],
                          description="Failed batches rerun by this run.")
    still_open = [r["batch"] for r in rows if r["result"] == "still open"]
    if still_open:
        raise RerunIncomplete(f"failed batches still open after this rerun: {still_open}")
    return {"batches": rows, "summary": total.to_dict()}


def _rerun_webhooks(engine) -> dict[str, Any]:
    from cio_sync.webhooks.inbox import FAILED, count_by_status, requeue_failed
    from flows.drain_webhooks import drain_webhooks

    requeued = requeue_failed(engine)
    if requeued:
        drain_webhooks()
    left = count_by_status(engine)[FAILED]
    return {"batch": "webhooks", "kind": "webhooks",
            "result": "resolved" if not left else "still open",
            "error": f"{requeued} failed inbox rows requeued, {left} failed again" if requeued else ""}
