"""Events out: one coarse task per page of Hull events → Customer.io events, exactly once.

Exactly once rests on two things: each event carries a ULID derived from its Hull id (so
Customer.io itself drops a repeat), and `event_state` records every event decided, in the
same transaction that moves the events cursor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import insert, select

from cio_sync.db import event_state, failed_batches, user_state, utcnow
from cio_sync.events import SEND, SEND_ANONYMOUS, SKIP, EventPlan, EventUser, plan_event
from cio_sync.mapping import MalformedUserError, map_user
from cio_sync.runtime import SyncRuntime
from cio_sync.state import Cursor, upsert, write_cursor
from cio_sync.summary import SyncSummary
from tasks.extract import seen_at_position
from connectors.http import AuthError, PermanentError, TransientError
from connectors.hull import MAX_PER_PAGE

EVENTS_CURSOR = "events"


def events_query(runtime: SyncRuntime, cursor: Cursor) -> tuple[list[dict], list[dict]]:
    filters: list[dict] = [
        {"terms": {"event": sorted(runtime.settings.events_filter)}},
        {"has_parent": {"parent_type": "user_report",
                        "query": {"terms": {"segment_ids": sorted(runtime.whitelisted_segment_ids)}}}},
    ]
    if not cursor.position:
        return filters, []
    filters.append({"range": {"created_at": {"gte": cursor.position}}})
    return filters, seen_at_position(cursor, "created_at", "event_id")


def fetch_events_page(runtime: SyncRuntime, cursor: Cursor, per_page: int = MAX_PER_PAGE):
    filters, must_not = events_query(runtime, cursor)
    data = runtime.hull.search_events(filters, page=1, per_page=per_page, must_not=must_not)["data"]
    fresh = [e for e in data if not (e.get("created_at") == cursor.position and e.get("event_id") in cursor.seen_ids)]
    keyed = [e for e in fresh if e.get("created_at") and e.get("event_id")]
    return fresh, cursor.advanced(keyed, "created_at", "event_id")


def event_users(runtime: SyncRuntime, user_ids: list[str]) -> dict[str, EventUser]:
    """Current segment membership and id from Hull; whether the person exists from state."""
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(user_state.c.hull_id, user_state.c.cio_id, user_state.c.created_at, user_state.c.deleted_at)
            .where(user_state.c.hull_id.in_(user_ids))
        ).all()
    live = {r.hull_id: r.cio_id for r in rows if r.created_at is not None and r.deleted_at is None}
    users: dict[str, EventUser] = {}
    for doc in runtime.hull.users_by_ids(user_ids):
        try:
            mapped = map_user(doc, runtime.settings, runtime.segment_names, runtime.whitelisted_segment_ids)
        except MalformedUserError:
            continue
        anonymous_ids = doc.get("anonymous_ids") or []
        users[mapped.hull_id] = EventUser(
            cio_id=live.get(mapped.hull_id) if mapped.cio_id == live.get(mapped.hull_id) else None,
            in_segments=bool(mapped.whitelisted_segment_ids),
            has_mapped_id=mapped.cio_id is not None,
            anonymous_id=anonymous_ids[0] if anonymous_ids else None,
        )
    return users


def already_decided(runtime: SyncRuntime, hull_event_ids: list[str]) -> set[str]:
    with runtime.engine.connect() as connection:
        return set(
            connection.execute(
                select(event_state.c.hull_event_id)
                .where(event_state.c.hull_event_id.in_(hull_event_ids))
                .where(event_state.c.status.in_(("sent", "skipped")))
            ).scalars()
        )


def send_event(runtime: SyncRuntime, plan: EventPlan) -> tuple[str, str | None]:
    """Returns (status, error). AuthError propagates: it stops the run."""
    try:
        if plan.action == SEND:
            runtime.customerio.track(plan.target_id, plan.body)
        else:
            runtime.customerio.track_anonymous(plan.body)
        return "sent", None
    except PermanentError as exc:
        return "failed", str(exc)
    except TransientError as exc:
        return "retry", str(exc)


def send_events(runtime: SyncRuntime, plans: list[EventPlan]) -> list[tuple[str, str | None]]:
    """Events of one user stay in order on one thread; users run in parallel."""
    by_user: dict[str, list[int]] = {}
    for index, plan in enumerate(plans):
        by_user.setdefault(plan.target_id or plan.body.get("anonymous_id", ""), []).append(index)
    results: list[tuple[str, str | None]] = [("failed", "not attempted")] * len(plans)

    def run(indexes: list[int]) -> None:
        for i in indexes:
            results[i] = send_event(runtime, plans[i])

    workers = max(1, runtime.settings.push_concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cio-events") as pool:
        for future in [pool.submit(run, idx) for idx in by_user.values()]:
            future.result()  # re-raises AuthError
    return results


def sync_events_page(
    runtime: SyncRuntime, events: list[dict[str, Any]], next_cursor: Cursor, flow_run_id: str | None = None
) -> SyncSummary:
    summary = SyncSummary()
    ids = [str(e.get("event_id")) for e in events if e.get("event_id")]
    done = already_decided(runtime, ids)
    todo = [e for e in events if str(e.get("event_id")) not in done]
    summary.events["already_handled"] += len(events) - len(todo)
    user_ids = sorted({e["user_id"] for e in todo if e.get("user_id")})
    users = event_users(runtime, user_ids) if user_ids else {}
    plans = [plan_event(e, users.get(e.get("user_id")), runtime.settings) for e in todo]
    for plan in plans:
        if plan.action == SKIP:
            summary.event_skip_reasons[plan.reason] += 1
    if runtime.dry_run:
        summary.events["would_send"] += sum(p.action != SKIP for p in plans)
        return summary

    to_send = [p for p in plans if p.action in (SEND, SEND_ANONYMOUS)]
    results = send_events(runtime, to_send) if to_send else []
    now = utcnow()
    rows: list[dict[str, Any]] = []
    retry_ids: list[str] = []
    first_error = None
    for plan in plans:
        if plan.action == SKIP:
            if plan.hull_event_id:
                rows.append(_row(plan, "skipped", plan.reason, now))
    for plan, (status, error) in zip(to_send, results):
        if status == "sent":
            summary.events["sent"] += 1
            summary.calls["anonymous_event" if plan.action == SEND_ANONYMOUS else "event"] += 1
            rows.append(_row(plan, "sent", None, now))
        else:
            summary.events["failed"] += 1
            summary.add_error(f"event {plan.hull_event_id}: {error}")
            rows.append(_row(plan, "failed", error, now))
            if status == "retry":
                retry_ids.append(plan.hull_event_id)
                first_error = first_error or error
    user_of = {str(e.get("event_id")): (e.get("user_id"), e.get("event")) for e in todo}
    for row in rows:
        row["hull_user_id"], row["event_name"] = user_of.get(row["hull_event_id"], (None, None))
        row["event_name"] = (row["event_name"] or "")[:255]
    with runtime.engine.begin() as connection:
        upsert(connection, event_state, rows, "hull_event_id")
        if retry_ids:
            batch_id = connection.execute(
                insert(failed_batches).values(
                    kind="events", payload={"hull_event_ids": retry_ids}, error=first_error, attempts=1,
                    flow_run_id=flow_run_id, status="open", created_at=now, updated_at=now,
                )
            ).inserted_primary_key[0]
            summary.failed_batches.append(batch_id)
        write_cursor(connection, EVENTS_CURSOR, next_cursor)
    return summary


def _row(plan: EventPlan, status: str, reason: str | None, now) -> dict[str, Any]:
    return {
        "hull_event_id": plan.hull_event_id,
        "cio_event_id": plan.cio_event_id or "",
        "status": status,
        "reason": reason,
        "attempts": 1,
        "updated_at": now,
    }


@task(name="fetch-events", cache_policy=NO_CACHE)
def fetch_events_task(runtime: SyncRuntime, cursor: Cursor):
    return fetch_events_page(runtime, cursor)


@task(name="sync-events-page", cache_policy=NO_CACHE)
def sync_events_page_task(runtime: SyncRuntime, events: list[dict[str, Any]], next_cursor: Cursor,
                          flow_run_id: str | None = None) -> SyncSummary:
    return sync_events_page(runtime, events, next_cursor, flow_run_id)


__all__ = ["EVENTS_CURSOR", "fetch_events_task", "sync_events_page_task", "AuthError"]
