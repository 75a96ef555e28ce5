"""The `rerun-failed-batches` flow: redo work that outlived its retry budget.

Each batch is redone against current state, with the settings of the run that failed:
users are fetched again from Hull (their current attributes) and diffed like any page, so
a user synced since is skipped as unchanged; events already sent are skipped through
`event_state`. Rerunning a batch twice therefore sends nothing twice.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from cio_sync.failed import EVENTS, USERS, list_failed_batches, mark_rerun
from cio_sync.runtime import build_runtime
from cio_sync.settings import ConnectorSettings
from cio_sync.summary import SyncSummary
from connectors.http import ApiError, AuthError
from tasks.extract import load_segments
from tasks.global_rate_limit import use_global_rate_limit
from tasks.events import sync_events_page
from tasks.sync_page import PageIncomplete, sync_page


class RerunIncomplete(Exception):
    """Some batches are still open; the run is marked Failed so the Prefect UI shows it."""


def rerun_batch(batch: dict[str, Any], run_id: str | None, global_rate_limit: bool = False
                ) -> tuple[bool, str | None, SyncSummary]:
    """Returns (resolved, error, summary)."""
    settings = ConnectorSettings.resolve(**(batch["payload"].get("settings") or {}))
    runtime = build_runtime(settings)
    if global_rate_limit:  # reruns spend the same Customer.io budget as the sync runs
        use_global_rate_limit(runtime)
    summary = SyncSummary()
    try:
        load_segments(runtime, summary, get_run_logger())
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
    from cio_sync import db
    from cio_sync.settings import StateSettings

    engine = db.get_engine(StateSettings().state_database_url)
    batches = list_failed_batches(engine, status=None if batch_ids else "open", ids=batch_ids)
    run_id = str(flow_run.get_id() or "") or None
    rows, total = [], SyncSummary()
    if requeue_failed_webhooks:
        rows.append(_rerun_webhooks(engine))
    for batch in batches:
        if batch["status"] != "open":
            rows.append({"batch": batch["id"], "kind": batch["kind"], "result": "already resolved", "error": ""})
            continue
        resolved, error, summary = rerun_batch(batch, run_id, global_rate_limit)
        mark_rerun(engine, batch["id"], resolved, error)
        total.merge(summary)
        rows.append({"batch": batch["id"], "kind": batch["kind"],
                     "result": "resolved" if resolved else "still open", "error": error or ""})
        logger.info("failed batch %s: %s", batch["id"], "resolved" if resolved else f"still open: {error}")
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
