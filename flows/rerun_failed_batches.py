"""The `rerun-failed-batches` flow: redo work that outlived its retry budget
(cio_sync/pipeline/rerun.py says how a batch is redone). It holds the `users:all` writer
lease while it reruns users or events batches, so it never overlaps a sync, a shard or a
backfill (cio_sync/pipeline/leases.py).

A batch keeps only the work (ids, kind, error, attempts); the rerun applies today's settings,
resolved like `sync-users` (a parameter per setting, else the environment, else the default),
and its summary names every setting that changed since the batch was saved. Deletes a rerun
decides are planned, never sent: the deletion guard of the next `sync-users` run sends them.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from cio_sync.pipeline.leases import users_writer_lease
from cio_sync.pipeline.rerun import changed_settings, prepare_rerun, rerun_batch
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.redact import scrub_obj, scrubbed_errors
from cio_sync.rules.sharding import WHOLE_SCOPE
from cio_sync.runtime import build_runtime
from cio_sync.settings import ConnectorSettings, StateSettings
from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches, mark_rerun
from cio_sync.store.lease import LeaseHeld

NOT_RERUN = "not rerun"


class RerunIncomplete(Exception):
    """Some batches are still open; the run is marked Failed so the Prefect UI shows it."""


@flow(name="rerun-failed-batches", log_prints=False)
def rerun_failed_batches(
    batch_ids: list[int] | None = None,
    global_rate_limit: bool = False,
    requeue_failed_webhooks: bool = False,
    synchronized_segments: list[str] | None = None,
    synchronized_attributes: list[str] | None = None,
    user_id_mapping: str | None = None,
    enable_user_deletion: bool | None = None,
    events_filter: list[str] | None = None,
    anonymous_events: bool | None = None,
    max_attributes_per_call: int | None = None,
    max_attribute_name_length: int | None = None,
    max_attribute_value_length: int | None = None,
    max_identifier_value_length: int | None = None,
    rate_limit_per_second: float | None = None,
    push_concurrency: int | None = None,
    users_per_batch: int | None = None,
    customerio_api: Literal["v1", "v2_batch"] | None = None,
    events_per_batch: int | None = None,
    on_id_change: Literal["merge", "delete_old", "ignore"] | None = None,
    unset_removed_attributes: bool | None = None,
    sync_mode: Literal["upsert", "update_only"] | None = None,
    on_segment_exit: Literal["keep", "delete", "suppress", "unset_segments"] | None = None,
    events_overlap_minutes: float | None = None,
    events_initial_lookback_hours: float | None = None,
    events_future_tolerance_minutes: float | None = None,
    users_overlap_seconds: float | None = None,
    failed_batch_auto_retries: int | None = None,
    max_deletions_per_run: int | None = None,
) -> dict[str, Any]:
    """Reruns the given failed batches, or every open one when `batch_ids` is empty, with
    today's settings: each setting left empty falls back to the environment variable of the
    same name in upper case, then to its default, exactly as for `sync-users`.
    `global_rate_limit`: take Customer.io request slots from the limit shared with sync runs.
    `requeue_failed_webhooks`: also put webhook inbox rows marked `failed` back to pending and
    drain them now (after fixing what made them fail, e.g. a long Hull outage)."""
    logger = get_run_logger()
    settings = ConnectorSettings.resolve(**locals())
    engine = db.get_engine(StateSettings().state_database_url)
    batches = list_failed_batches(engine, status=None if batch_ids else "open", ids=batch_ids)
    run_id = str(flow_run.get_id() or "") or None
    rows, total = [], SyncSummary()
    changes: list[str] = []
    if requeue_failed_webhooks:
        rows.append(_rerun_webhooks(engine))
    todo = [b for b in batches if b["status"] == "open"]
    rows += [
        {"batch": b["id"], "kind": b["kind"], "result": "already resolved", "error": ""}
        for b in batches
        if b["status"] != "open"
    ]
    refused: str | None = None
    if todo:
        # global_rate_limit: reruns spend the same Customer.io budget as the sync runs.
        runtime = build_runtime(settings, global_rate_limit=global_rate_limit)
        try:
            with scrubbed_errors():  # a Failed state's message, and the result Prefect stores, keep no credential
                runtime, refused = prepare_rerun(runtime)
            if refused:
                # Today's settings cannot redo any batch: each is left as it was (attempts, automatic retries).
                rows += [{"batch": b["id"], "kind": b["kind"], "result": NOT_RERUN, "error": refused} for b in todo]
            else:
                with users_writer_lease(engine, WHOLE_SCOPE, "rerun-failed-batches", run_id):
                    with scrubbed_errors():
                        for batch in todo:
                            changes += _rerun_one(runtime, engine, batch, settings, run_id, rows, total, logger)
        except LeaseHeld as exc:
            raise RerunIncomplete(f"nothing was rerun: {exc}") from None
        finally:
            runtime.close()
    table = list(rows) or [{"batch": "-", "result": "nothing to rerun"}]
    table += [{"batch": "-", "kind": "setting changed", "result": c, "error": ""} for c in changes]
    if total.decisions.get("delete"):
        table.append(
            {
                "batch": "-",
                "kind": "deletions",
                "error": "",
                "result": f"{total.decisions['delete']} planned; the next sync-users run sends them "
                "(within the deletion guard)",
            }
        )
    create_table_artifact(
        key="rerun-failed-batches",
        table=scrub_obj(table),
        description="Failed batches rerun by this run, with today's settings.",
    )
    if refused:
        raise RerunIncomplete(f"nothing was rerun, every batch is left as it was: {refused}")
    still_open = [r["batch"] for r in rows if r["result"] == "still open"]
    if still_open:
        raise RerunIncomplete(f"failed batches still open after this rerun: {still_open}")
    return {"batches": rows, "summary": total.to_dict(), "settings_changed": changes}


def _rerun_one(
    runtime,
    engine,
    batch: dict[str, Any],
    settings: ConnectorSettings,
    run_id: str | None,
    rows: list[dict[str, Any]],
    total: SyncSummary,
    logger,
) -> list[str]:
    """Reruns one open batch with `runtime` (today's settings); returns the settings changed since it was saved."""
    changes = [f"batch {batch['id']}: {change}" for change in changed_settings(_saved_settings(batch), settings)]
    for change in changes:
        logger.warning("setting changed since the failed batch was saved: %s", change)
    resolved, error, summary, transient = rerun_batch(runtime, batch, run_id)
    mark_rerun(engine, batch["id"], resolved, error, transient)
    total.merge(summary)
    rows.append(
        {
            "batch": batch["id"],
            "kind": batch["kind"],
            "result": "resolved" if resolved else "still open",
            "error": error or "",
        }
    )
    logger.info("failed batch %s: %s", batch["id"], "resolved" if resolved else f"still open: {error}")
    return changes


def _saved_settings(batch: dict[str, Any]) -> dict[str, Any] | None:
    payload = batch["payload"] or {}
    # `settings`: batches saved before reruns stopped applying them; compared the same way.
    return payload.get("settings_when_saved") or payload.get("settings")


def _rerun_webhooks(engine) -> dict[str, Any]:
    from cio_sync.webhooks.inbox import FAILED, count_by_status, requeue_failed
    from flows.drain_webhooks import drain_webhooks

    requeued = requeue_failed(engine)
    if requeued:
        drain_webhooks()
    left = count_by_status(engine)[FAILED]
    return {
        "batch": "webhooks",
        "kind": "webhooks",
        "result": "resolved" if not left else "still open",
        "error": f"{requeued} failed inbox rows requeued, {left} failed again" if requeued else "",
    }
