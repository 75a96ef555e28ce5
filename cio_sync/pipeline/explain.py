"""`cio-sync explain`: everything the state database knows about one person, on one screen.

The person is named by a Hull id, a Customer.io id or an email (emails are matched on the
sync log's hashes and on the deletion plans). Only the database is read: no Hull, no
Customer.io, no Prefect.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from cio_sync.store.events import event_user_ids, events_of_user
from cio_sync.store.failed import EVENTS, USERS, list_failed_batches
from cio_sync.store.sync_log import find_people, recent_rows, state_row
from cio_sync.webhooks.inbox import rows_mentioning
from cio_sync.webhooks.mapping import InvalidPayload, customer_id_of, email_of, event_key, parse_payload

LOG_ROWS = 20
EVENT_ROWS = 20
WEBHOOK_ROWS = 20

STATE_FIELDS = (
    "cio_id",
    "cio_id_mapping",
    "segment_ids",
    "last_decision",
    "created_at",
    "synced_at",
    "deleted_at",
    "suppressed_at",
    "writeback_pending",
    "last_error",
    "last_error_at",
)


class ExplainError(Exception):
    """Nobody matches, or several people do (`candidates`: Hull id → Customer.io id)."""

    def __init__(self, message: str, candidates: dict[str, str | None] | None = None):
        self.candidates = candidates or {}
        super().__init__(message)


def explain(engine: Engine, query: str) -> dict[str, Any]:
    query = query.strip()
    people = find_people(engine, query)
    if not people:
        raise ExplainError(f"nobody matches {query!r} (a Hull id, a Customer.io id or an email the sync has logged)")
    if len(people) > 1:
        raise ExplainError(f"{len(people)} people match {query!r}; name one by its Hull id", people)
    hull_id, cio_id = next(iter(people.items()))
    state = state_row(engine, hull_id)
    if state is not None:
        cio_id = state["cio_id"] or cio_id
    log = recent_rows(engine, hull_id, LOG_ROWS)
    return {
        "hull_id": hull_id,
        "cio_id": cio_id,
        "state": {k: state[k] for k in STATE_FIELDS} if state is not None else None,
        "sync_log": [_log_entry(r) for r in log],
        "events": [
            {
                "hull_event_id": r["hull_event_id"],
                "event": r["event_name"],
                "status": r["status"],
                "reason": r["reason"],
                "attempts": r["attempts"],
                "updated_at": r["updated_at"],
            }
            for r in events_of_user(engine, hull_id, EVENT_ROWS)
        ],
        "failed_batches": open_work_of(engine, hull_id),
        "email_activity": email_activity(engine, cio_id, query if "@" in query else None),
    }


def _log_entry(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "at": row["logged_at"],
        "decision": row["decision"],
        "reason": row["reason"],
        "changed": row["changed"] or [],
        "values": row["attribute_values"],
        "calls": row["calls"] or [],
        "error": row["error"],
        "writeback": row["writeback"],
        "writeback_at": row["writeback_at"],
        "writeback_error": row["writeback_error"],
    }


def open_work_of(engine: Engine, hull_id: str) -> list[dict[str, Any]]:
    """Open failed batches holding the person, or one of its events."""
    found = []
    for batch in list_failed_batches(engine):
        payload = batch["payload"] or {}
        holds = False
        if batch["kind"] == USERS:
            holds = hull_id in (payload.get("hull_ids") or [])
        elif batch["kind"] == EVENTS:
            owners = event_user_ids(engine, payload.get("hull_event_ids") or [])
            holds = hull_id in owners.values()
        if holds:
            found.append(
                {
                    "id": batch["id"],
                    "kind": batch["kind"],
                    "error": batch["error"],
                    "attempts": batch["attempts"],
                    "created_at": batch["created_at"],
                }
            )
    return found


def email_activity(engine: Engine, cio_id: str | None, email: str | None) -> list[dict[str, Any]]:
    """Webhooks received about the person (its Customer.io id, or the email asked about)."""
    needles = [json.dumps(v) for v in (cio_id, email) if v]
    activity = []
    for row in rows_mentioning(engine, needles):
        try:
            payload = parse_payload(row["payload"])
        except InvalidPayload:
            continue
        found = payload.get("data")
        data: dict[str, Any] = found if isinstance(found, dict) else {}
        found_email = email_of(data)
        if not (
            (cio_id and customer_id_of(data) == cio_id)
            or (email and found_email and found_email.lower() == email.lower())
        ):
            continue
        try:
            kind = event_key(payload)
        except (KeyError, TypeError):
            kind = "?"
        activity.append(
            {
                "received_at": row["received_at"],
                "event": kind,
                "status": row["status"],
                "error": row["last_error"],
                "event_id": row["event_id"],
            }
        )
        if len(activity) >= WEBHOOK_ROWS:
            break
    return activity


# ----- rendering -----------------------------------------------------------------------------


def _t(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return "-" if value is None else str(value)


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", title, *(lines or ["  (none)"])]


def _event_line(event: dict[str, Any]) -> str:
    line = f"  {_t(event['updated_at'])}  {event['status']:<8} {event['event'] or '-'}  {event['hull_event_id']}"
    return line + (f"  ({event['reason']})" if event["reason"] else "")


def _batch_line(batch: dict[str, Any]) -> str:
    return f"  #{batch['id']} {batch['kind']} attempts={batch['attempts']} since {_t(batch['created_at'])}: {batch['error']}"


def _activity_line(item: dict[str, Any]) -> str:
    line = f"  {_t(item['received_at'])}  {item['event']:<20} {item['status']}"
    return line + (f"  ({item['error']})" if item["error"] else "")


def render(report: dict[str, Any]) -> list[str]:
    lines = [f"Hull user {report['hull_id']}   Customer.io id {report['cio_id'] or '-'}", ""]
    state = report["state"]
    if state is None:
        lines.append("state: no row (never acted on: only skipped)")
    else:
        lines += [
            f"state: last decision {state['last_decision'] or '-'}; segments {state['segment_ids'] or []}",
            f"  created {_t(state['created_at'])}  synced {_t(state['synced_at'])}  "
            f"deleted {_t(state['deleted_at'])}  suppressed {_t(state['suppressed_at'])}",
            f"  write-back pending: {'yes' if state['writeback_pending'] else 'no'}"
            f"   last error: {state['last_error'] or '-'}"
            + (f" ({_t(state['last_error_at'])})" if state["last_error"] else ""),
        ]
    lines += ["", f"sync log (last {LOG_ROWS}, newest first):"]
    if not report["sync_log"]:
        lines.append("  (none)")
    for entry in report["sync_log"]:
        lines.append(
            f"  {_t(entry['at'])}  {entry['decision']:<14} {entry['reason'] or ''}  run {entry['run_id']}".rstrip()
        )
        if entry["changed"]:
            lines.append(f"      changed: {', '.join(entry['changed'])}")
        if entry["values"]:
            lines.append(f"      values: {json.dumps(entry['values'], default=str, ensure_ascii=False)}")
        for call in entry["calls"]:
            lines.append(
                f"      call {call.get('call')}: {call.get('status') or 'no answer'}"
                + (f" — {call['error']}" if call.get("error") else "")
            )
        if entry["error"]:
            lines.append(f"      failed: {entry['error']}")
        if entry["writeback"]:
            wb = f"      write-back: {entry['writeback']}"
            if entry["writeback_at"]:
                wb += f" {_t(entry['writeback_at'])}"
            if entry["writeback_error"]:
                wb += f" (last attempt postponed: {entry['writeback_error']})"
            lines.append(wb)
    lines += _section(f"events (last {EVENT_ROWS}):", [_event_line(e) for e in report["events"]])
    lines += _section("open failed batches holding the person:", [_batch_line(b) for b in report["failed_batches"]])
    lines += _section(
        f"email activity from Customer.io webhooks (last {WEBHOOK_ROWS}):",
        [_activity_line(item) for item in report["email_activity"]],
    )
    return lines


def candidates_lines(candidates: dict[str, str | None]) -> list[str]:
    return [f"  Hull id {hull_id}   Customer.io id {cio_id or '-'}" for hull_id, cio_id in sorted(candidates.items())]
