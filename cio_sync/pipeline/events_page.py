"""Events out: one page of Hull events → Customer.io events, exactly once (one Prefect task per page).

Why a separate phase: events are walked as their own stream (keyset on `created_at`, the
`events` cursor) in the same `sync-users` flow run, after every users page, one task per
page of at most `events_per_batch` events (500 by default, read as Hull searches of 100).
They are not fetched per users page because Hull's event stream is independent of user
re-indexing: a user with a new event but no changed trait never shows up in the users
stream, so its event would never be sent. Running after all users pages
means every changed user's identify calls of this run have gone out first; a user that
appeared in Hull after the users phase (its first event usually comes with it) is identified
by the user rules right before its events (`identify_first`).

Where a walk starts and where its cursor may be stored (an overlap window before the cursor,
`events_start`, a cap at the run's start) is `cio_sync/pipeline/watermarks.py`. Because every
run re-reads the overlap window, pages whose events were all decided before are read through
inside one task (`run_events_page`) instead of costing a task each.

Exactly once rests on two things: each event carries a ULID derived from its Hull id (so
Customer.io itself drops a repeat), and `event_state` records every event decided (sent,
skipped or failed), in the same transaction that stores the events cursor. A stream or a
backfill never sends an event `event_state` holds; a rerun of a failed batch redoes its
failed ones. A 401 stops the run before anything of the page is recorded.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cio_sync.pipeline.batch_push import push_events_v2
from cio_sync.pipeline.breaker import Breaker
from cio_sync.pipeline.extract import seen_at_position
from cio_sync.pipeline.phase import Phase
from cio_sync.pipeline.senders import run_groups
from cio_sync.pipeline.summary import SyncSummary
from cio_sync.pipeline.users_page import sync_page
from cio_sync.pipeline.watermarks import EVENTS_CURSOR, EventsWindow
from cio_sync.rules.events import (
    SEND,
    SEND_ANONYMOUS,
    SKIP,
    EventPlan,
    EventUser,
    event_user,
    parse_created_at,
    plan_event,
)
from cio_sync.rules.mapping import MalformedUserError
from cio_sync.rules.sharding import WHOLE, Shard
from cio_sync.runtime import SyncRuntime
from cio_sync.store.cursors import Cursor, write_cursor
from cio_sync.store.db import event_state, upsert, utcnow
from cio_sync.store.events import DECIDED, DONE, decided_event_ids
from cio_sync.store.failed import EVENTS
from cio_sync.store.users import live_people
from connectors.http import PermanentError, TransientError
from connectors.hull import MAX_PER_PAGE


def events_query(runtime: SyncRuntime, cursor: Cursor, until: str | None = None) -> tuple[list[dict], list[dict]]:
    filters: list[dict] = [
        {"terms": {"event": sorted(runtime.settings.events_filter)}},
        {
            "has_parent": {
                "parent_type": "user_report",
                "query": {"terms": {"segment_ids": sorted(runtime.whitelisted_segment_ids)}},
            }
        },
    ]
    if until:
        filters.append({"range": {"created_at": {"lte": until}}})
    if not cursor.position:
        return filters, []
    filters.append({"range": {"created_at": {"gte": cursor.position}}})
    # Hull's raw index documents carry their id in `_id`, connector-form ones in `event_id`:
    # excluding on one field only would let the other form repeat at the cursor's timestamp,
    # and more than a page of such events on one second would stall the walk.
    return filters, [
        *seen_at_position(cursor, "created_at", "event_id"),
        *seen_at_position(cursor, "created_at", "_id"),
    ]


def fetch_events_page(
    runtime: SyncRuntime, cursor: Cursor, per_page: int = MAX_PER_PAGE, shard: Shard = WHOLE, until: str | None = None
):
    """The next page of events and the cursor past it. With a `shard`, only its users' events
    are returned; the cursor still moves past every event read, and pages holding none of the
    shard's events are read through (an empty result must mean the stream is exhausted).
    `until`: only events created at or before it (a backfill's end)."""
    while True:
        filters, must_not = events_query(runtime, cursor, until)
        data = runtime.hull.search_events(filters, page=1, per_page=per_page, must_not=must_not)["data"]
        fresh = [
            e for e in data if not (e.get("created_at") == cursor.position and e.get("event_id") in cursor.seen_ids)
        ]
        keyed = [e for e in fresh if e.get("created_at") and e.get("event_id")]
        next_cursor = cursor.advanced(keyed, "created_at", "event_id")
        own = fresh if shard.is_whole else [e for e in fresh if shard.owns_event(e)]
        if own or len(data) < per_page or next_cursor == cursor:
            return own, next_cursor
        cursor = next_cursor


def event_user_ids(events: list[dict[str, Any]]) -> list[str]:
    """The Hull ids of the events' users, each once, sorted (as Hull is asked for them)."""
    return sorted({e["user_id"] for e in events if e.get("user_id")})


def describe_users(runtime: SyncRuntime, docs: list[dict[str, Any]]) -> dict[str, EventUser]:
    """Current segment membership and id from the Hull documents; whether the person exists
    in Customer.io from state."""
    user_ids = [d["id"] for d in docs if isinstance(d, dict) and isinstance(d.get("id"), str)]
    live = live_people(runtime.engine, user_ids)
    users: dict[str, EventUser] = {}
    mapping, whitelisted = runtime.settings.user_id_mapping, runtime.whitelisted_segment_ids
    for doc in docs:
        try:
            # Only the user's ids and segments: not `map_user`'s every attribute.
            users[doc["id"]] = event_user(doc, mapping, whitelisted, live)
        except MalformedUserError:
            continue
    return users


def identify_first(
    runtime: SyncRuntime,
    docs: list[dict[str, Any]],
    users: dict[str, EventUser],
    flow_run_id: str | None,
    phase: Phase | None = None,
) -> SyncSummary | None:
    """Runs the user rules for event users Customer.io does not know yet, before their events.

    A user and its first event (typically "Signed Up") usually appear in Hull together; when
    that happens after this run's users phase, the users phase will only see the user next
    run, by which time the event would have been skipped for good. Identifying here keeps
    "identify calls before events" and loses nothing. The user rules decide as always (a
    user without an email stays skipped), no users cursor moves (the next users phase finds
    the user unchanged), and a Customer.io outage raises `PageIncomplete` so the events
    cursor stays put. Returns None when there was nobody to identify.
    """
    late = [
        d
        for d in docs
        if (u := users.get(str(d.get("id")))) is not None and u.in_segments and u.has_mapped_id and not u.cio_id
    ]
    if not late or runtime.dry_run:
        return None
    # No cursor: the stream name is never written, and no failed batch is filed (the next
    # users phase sees these users again, as they changed after its cursor).
    # The events phase's breaker: these identify calls count towards its failures in a row.
    summary = sync_page(runtime, late, "users", None, flow_run_id, phase=phase)
    summary.pages = 0  # not a page of the users stream
    return summary


def already_decided(runtime: SyncRuntime, hull_event_ids: list[str], statuses: tuple[str, ...] = DONE) -> set[str]:
    return decided_event_ids(runtime.engine, hull_event_ids, statuses)


def send_event(runtime: SyncRuntime, plan: EventPlan) -> tuple[str, str | None]:
    """Returns (status, error). AuthError propagates: it stops the run."""
    try:
        assert plan.body is not None, "only plans with an action are sent"
        if plan.action == SEND:
            assert plan.target_id is not None
            runtime.customerio.track(plan.target_id, plan.body)
        else:
            runtime.customerio.track_anonymous(plan.body)
        return "sent", None
    except PermanentError as exc:
        return "failed", str(exc)
    except TransientError as exc:
        return "retry", str(exc)


NOT_ATTEMPTED = "not attempted: Customer.io kept failing, the events phase stopped"


def send_events(
    runtime: SyncRuntime, plans: list[EventPlan], breaker: Breaker | None = None
) -> list[tuple[str, str | None]]:
    """Events of one user stay in order on one thread; users run in parallel. Once the
    `breaker` (the events phase's) is open, nothing more is sent: the rest are `retry`."""
    breaker = breaker or Breaker()
    by_user: dict[str, list[int]] = {}
    for index, plan in enumerate(plans):
        by_user.setdefault(plan.target_id or (plan.body or {}).get("anonymous_id", ""), []).append(index)
    results: list[tuple[str, str | None]] = [("failed", "not attempted")] * len(plans)

    def run(indexes: list[int]) -> None:
        for i in indexes:
            if breaker.stopped():
                results[i] = ("retry", NOT_ATTEMPTED)
                continue
            results[i] = send_event(runtime, plans[i])
            breaker.record(results[i][0] == "retry")

    run_groups(list(by_user.values()), run, runtime.settings.push_concurrency, "cio-events")  # re-raises AuthError
    return results


def send_events_v2(
    runtime: SyncRuntime, plans: list[EventPlan], calls=None, breaker: Breaker | None = None
) -> list[tuple[str, str | None]]:
    """v2_batch mode: person events go out packed in `POST /api/v2/batch` requests (one
    user's in order); anonymous events stay on v1, because a v2 entry needs a person identifier."""
    breaker = breaker or Breaker()
    results: list[tuple[str, str | None]] = [("failed", "not attempted")] * len(plans)
    person = [i for i, plan in enumerate(plans) if plan.action == SEND]
    anonymous = [i for i, plan in enumerate(plans) if plan.action != SEND]
    batched = push_events_v2(
        runtime.customerio,
        [(plans[i].target_id or "", plans[i].body or {}) for i in person],
        user_id_mapping=runtime.settings.user_id_mapping,
        concurrency=runtime.settings.push_concurrency,
        calls=calls,
        breaker=breaker,
    )
    for i, result in zip(person, batched):
        results[i] = result
    if anonymous:
        for i, result in zip(anonymous, send_events(runtime, [plans[i] for i in anonymous], breaker)):
            results[i] = result
    return results


def sync_events_page(
    runtime: SyncRuntime,
    events: list[dict[str, Any]],
    next_cursor: Cursor | None,
    flow_run_id: str | None = None,
    cursor_name: str | None = EVENTS_CURSOR,
    *,
    rerun: bool | None = None,
    not_after: datetime | None = None,
    campaign_since: datetime | None = None,
    phase: Phase | None = None,
    user_docs: dict[str, dict[str, Any] | None] | None = None,
) -> SyncSummary:
    """Decides, sends and records `events`; stores `next_cursor` under `cursor_name` in the same
    transaction (None: no cursor moves). `rerun` (default: no `next_cursor`): a rerun of a
    failed batch, which redoes failed events and files no new batch; otherwise every event
    `event_state` holds is skipped and transient failures are filed in the phase's failed batch.
    `not_after`: events dated later are skipped as `future_timestamp`. `campaign_since`: count
    the events sent that are newer (Customer.io may trigger campaigns for them). `phase`: the
    events phase's breaker and failed batch, shared by its pages (default: this page's own).
    `user_docs`: the Hull documents of the events' users, by id, read ahead (`EventsReadAhead`);
    None: read here."""
    rerun = next_cursor is None if rerun is None else rerun
    phase = phase or Phase(EVENTS)
    summary = SyncSummary()
    ids = [str(e.get("event_id")) for e in events if e.get("event_id")]
    done = already_decided(runtime, ids, DONE if rerun else DECIDED)
    todo = [e for e in events if str(e.get("event_id")) not in done]
    if len(todo) < len(events):  # a Counter keeps zero entries: they would clutter the artifact
        summary.events["already_handled"] += len(events) - len(todo)
    user_ids = event_user_ids(todo)
    if user_docs is not None and all(u in user_docs for u in user_ids):
        docs = [doc for doc in (user_docs[u] for u in user_ids) if doc is not None]
    else:
        docs = runtime.hull.users_by_ids(user_ids) if user_ids else []
    users = describe_users(runtime, docs)
    identified = identify_first(runtime, docs, users, flow_run_id, phase)
    if identified is not None:
        summary.merge(identified)
        users = describe_users(runtime, docs)  # who exists in Customer.io now
    plans = [plan_event(e, users.get(str(e.get("user_id"))), runtime.settings, not_after) for e in todo]
    for plan in plans:
        if plan.action == SKIP:
            summary.event_skip_reasons[plan.reason] += 1
    recent = _created_since(todo, campaign_since)
    if runtime.dry_run:
        summary.events["would_send"] += sum(p.action != SKIP for p in plans)
        would_send_recent = sum(p.action != SKIP and p.hull_event_id in recent for p in plans)
        if would_send_recent:
            summary.events[WOULD_SEND_RECENT] += would_send_recent
        return summary

    # A user with an email that is still not in Customer.io after identify_first failed to be
    # identified (Customer.io error): its events wait in a failed batch instead of being skipped.
    identifiable = {d.get("id") for d in docs if d.get("email")}
    unsent_user: list[EventPlan] = []
    for event, plan in zip(todo, plans):
        if plan.reason == "user_not_in_customerio" and event.get("user_id") in identifiable:
            summary.event_skip_reasons[plan.reason] -= 1
            unsent_user.append(plan)
    summary.event_skip_reasons = +summary.event_skip_reasons  # drop zero counts
    waiting = {id(p) for p in unsent_user}  # by identity: `in` on the list compared dataclasses, O(n²)
    plans = [p for p in plans if id(p) not in waiting]

    to_send = [p for p in plans if p.action in (SEND, SEND_ANONYMOUS)]
    if not to_send:
        results = []
    elif runtime.settings.customerio_api == "v2_batch":
        results = send_events_v2(runtime, to_send, summary.calls, phase.breaker)
    else:
        results = send_events(runtime, to_send, phase.breaker)
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
            if plan.hull_event_id in recent:
                summary.events[SENT_RECENT] += 1
            summary.calls["anonymous_event" if plan.action == SEND_ANONYMOUS else "event"] += 1
            rows.append(_row(plan, "sent", None, now))
        else:
            summary.events["failed"] += 1
            summary.add_error(f"event {plan.hull_event_id}: {error}")
            rows.append(_row(plan, "failed", error, now))
            if status == "retry":
                retry_ids.append(plan.hull_event_id)
                first_error = first_error or error
    for plan in unsent_user:
        summary.events["failed"] += 1
        rows.append(_row(plan, "failed", "the user could not be identified in Customer.io", now))
        retry_ids.append(plan.hull_event_id)
        first_error = first_error or "the event's user could not be identified in Customer.io"
    if retry_ids:
        summary.events["retry"] += len(retry_ids)
    user_of = {str(e.get("event_id")): (e.get("user_id"), e.get("event")) for e in todo}
    for row in rows:
        row["hull_user_id"], row["event_name"] = user_of.get(row["hull_event_id"], (None, None))
        row["event_name"] = (row["event_name"] or "")[:255]
    with runtime.engine.begin() as connection:
        upsert(connection, event_state, rows, "hull_event_id")
        if retry_ids and not rerun:  # a rerun reports what is left, files nothing new
            batch_id = phase.file_unsent(
                connection,
                "hull_event_ids",
                retry_ids,
                runtime.settings.snapshot(),
                first_error or "unknown error",
                flow_run_id,
            )
            if batch_id is not None:  # a later page of the phase adds to the same batch
                summary.failed_batches.append(batch_id)
        if next_cursor is not None and cursor_name:  # None: a rerun or a backfill, outside the stream
            write_cursor(connection, cursor_name, next_cursor)
    return summary


# Counted by a backfill: events less than 72 hours old, for which Customer.io may still trigger campaigns.
SENT_RECENT, WOULD_SEND_RECENT = "sent_within_72h", "would_send_within_72h"


def _created_since(events: list[dict[str, Any]], since: datetime | None) -> set[str]:
    if since is None:
        return set()
    recent = set()
    for event in events:
        try:
            if parse_created_at(event.get("created_at")) >= since:
                recent.add(str(event.get("event_id")))
        except (TypeError, ValueError):
            continue
    return recent


def _row(plan: EventPlan, status: str, reason: str | None, now) -> dict[str, Any]:
    return {
        "hull_event_id": plan.hull_event_id,
        "cio_event_id": plan.cio_event_id or "",
        "status": status,
        "reason": reason,
        "attempts": 1,
        "updated_at": now,
    }


@dataclass
class EventsPage:
    """What one events page did, and where the stream resumes (None: nothing was left).
    `last`: the page reached the end of the stream, so the flow need not read another."""

    summary: SyncSummary
    next_cursor: Cursor | None
    last: bool = False


@dataclass
class EventsBatch:
    """Events read after a cursor: up to `events_per_batch` not decided yet, how many read were
    decided before, the cursor past them, whether the stream ended, and (read ahead only) the
    Hull documents of their users by id (None for an id Hull does not know)."""

    cursor: Cursor
    events: list[dict[str, Any]]
    handled: int
    next_cursor: Cursor
    end: bool
    user_docs: dict[str, dict[str, Any] | None] | None = None


def read_events_batch(runtime: SyncRuntime, cursor: Cursor, window: EventsWindow, shard: Shard = WHOLE) -> EventsBatch:
    """Reads events after `cursor` (Hull searches of 100) until `events_per_batch` of them are
    not decided yet or the stream ends; events all decided before (the overlap window,
    future-dated events) are read through and counted."""
    start, handled = cursor, 0
    batch: list[dict[str, Any]] = []
    limit = runtime.settings.events_per_batch
    while True:
        # Never more than the batch's room: a task holds at most `events_per_batch` events.
        per_page = max(1, min(MAX_PER_PAGE, limit - len(batch)))
        events, next_cursor = fetch_events_page(runtime, cursor, per_page, shard=shard, until=window.until)
        decided = already_decided(runtime, [str(e.get("event_id")) for e in events if e.get("event_id")], DECIDED)
        fresh = [e for e in events if str(e.get("event_id")) not in decided]
        handled += len(events) - len(fresh)
        batch.extend(fresh)
        end = not events or next_cursor == cursor  # the end (or events that cannot move the cursor)
        if end or len(batch) >= limit:
            return EventsBatch(start, batch, handled, next_cursor, end)
        cursor = next_cursor


class EventsReadAhead:
    """Reads the next batch of events, and their users' documents, from Hull in a background
    thread while the current batch is decided, sent and recorded: Hull's time (the event
    searches, the users by id) overlaps with Customer.io's instead of adding to it.

    Safe because keyset batches never share an event, so recording batch k cannot change which
    events of batch k+1 were decided before; who exists in Customer.io (which batch k's
    `identify_first` may change) is read from state when batch k+1 is decided, not ahead. A
    batch is used only for the cursor it was read from; a failed read is read again in the
    batch's own task, which raises it there."""

    def __init__(self, runtime: SyncRuntime, window: EventsWindow, shard: Shard = WHOLE):
        self.runtime, self.window, self.shard = runtime, window, shard
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hull-events-ahead")
        self._ahead: Future[EventsBatch] | None = None

    def _read(self, cursor: Cursor) -> EventsBatch:
        batch = read_events_batch(self.runtime, cursor, self.window, self.shard)
        user_ids = event_user_ids(batch.events)
        found = {d.get("id"): d for d in self.runtime.hull.users_by_ids(user_ids)} if user_ids else {}
        batch.user_docs = {u: found.get(u) for u in user_ids}
        return batch

    def submit(self, cursor: Cursor) -> None:
        self._ahead = self._pool.submit(self._read, cursor)

    def take(self, cursor: Cursor) -> EventsBatch | None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        try:
            batch = ahead.result()
        except Exception:  # read again by the caller, which raises it where it belongs
            return None
        return batch if batch.cursor == cursor else None

    def close(self) -> None:
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_events_page(
    runtime: SyncRuntime,
    cursor: Cursor,
    window: EventsWindow,
    shard: Shard = WHOLE,
    flow_run_id: str | None = None,
    phase: Phase | None = None,
    ahead: EventsReadAhead | None = None,
) -> EventsPage:
    """Reads a batch of events after `cursor` (`read_events_batch`), and decides, sends and
    records it (the `sync-events-page` task's work: one Prefect task per page of up to
    `events_per_batch` events). At the end of the walk the cursor is stored where the walk
    ended (within the window's cap), so the next run's overlap starts there; `last` says the
    stream ended. `ahead`: the batch may have been read ahead, and the next one is read ahead
    while this one is sent."""
    batch = ahead.take(cursor) if ahead is not None else None
    if batch is None:
        batch = read_events_batch(runtime, cursor, window, shard)
    next_cursor, end, handled = batch.next_cursor, batch.end, batch.handled
    if ahead is not None and not end:
        ahead.submit(next_cursor)
    if batch.events:
        summary = sync_events_page(
            runtime,
            batch.events,
            window.to_store(next_cursor),
            flow_run_id,
            window.cursor_name,
            rerun=False,
            not_after=window.not_after,
            campaign_since=window.campaign_since,
            phase=phase,
            user_docs=batch.user_docs,
        )
        if handled:
            summary.events["already_handled"] += handled
        return EventsPage(summary, next_cursor, last=end)
    final = window.to_store(next_cursor)
    moved = next_cursor.position != window.start and final != window.stored
    if final is not None and window.cursor_name and not runtime.dry_run and moved:
        with runtime.engine.begin() as connection:
            write_cursor(connection, window.cursor_name, final)
    summary = SyncSummary()
    if handled:
        summary.events["already_handled"] += handled
    return EventsPage(summary, None, last=True)


__all__ = [
    "EVENTS_CURSOR",
    "EventsBatch",
    "EventsPage",
    "EventsReadAhead",
    "fetch_events_page",
    "read_events_batch",
    "run_events_page",
    "sync_events_page",
]
