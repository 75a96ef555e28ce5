"""How a Hull event becomes a Customer.io event. Pure functions: no HTTP, no Prefect, no SQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ulid import ULID

from cio_sync.rules.mapping import byte_length, document_segment_ids, latest_anonymous_id, lookup
from cio_sync.settings import ConnectorSettings

MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
PAGE_EVENT = "page"

SEND, SEND_ANONYMOUS, SKIP = "send", "send_anonymous", "skip"


@dataclass(frozen=True)
class EventUser:
    """What the event step knows of the event's user (from the state table or from Hull)."""

    cio_id: str | None  # set when the person exists in Customer.io
    in_segments: bool
    has_mapped_id: bool
    anonymous_id: str | None = None


@dataclass
class EventPlan:
    hull_event_id: str
    cio_event_id: str
    action: str  # send | send_anonymous | skip
    reason: str = ""
    target_id: str | None = None
    body: dict[str, Any] | None = None


def user_identity(user: Any, user_id_mapping: str, whitelisted_ids: AbstractSet[str]) -> tuple[str, str | None, bool]:
    """(Hull id, Customer.io id, in a synchronized segment) of a Hull user document: the three
    facts of `map_user` the events phase needs, without mapping every attribute (the events
    phase looks up each event's user; `map_user` costs several times more). Raises
    `MalformedUserError` exactly when `map_user` does."""
    segment_ids = document_segment_ids(user)
    _found, id_value = lookup(user, user_id_mapping)
    cio_id = None if id_value in (None, "") else str(id_value)
    return user["id"], cio_id, any(s in whitelisted_ids for s in segment_ids)


def event_user(
    user: dict[str, Any], user_id_mapping: str, whitelisted_ids: AbstractSet[str], live: Mapping[str, str | None]
) -> EventUser:
    """The `EventUser` of a Hull user document; `live`: Hull id -> the Customer.io id the person
    exists under in Customer.io (from state). Raises `MalformedUserError` as `map_user` does."""
    hull_id, cio_id, in_segments = user_identity(user, user_id_mapping, whitelisted_ids)
    known = live.get(hull_id)
    return EventUser(
        cio_id=known if cio_id == known else None,
        in_segments=in_segments,
        has_mapped_id=cio_id is not None,
        # The same anonymous id the user's identify will carry, so these events join it.
        anonymous_id=latest_anonymous_id(user),
    )


def parse_created_at(value: Any) -> datetime:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def event_ulid(hull_event_id: str, created_at: datetime) -> str:
    """A ULID that is a pure function of the Hull event: its time part is the event's
    creation time, its random part a hash of the Hull event id. Customer.io drops events
    whose id it has seen, so a retry or a rerun can never create a duplicate."""
    millis = int(created_at.timestamp() * 1000) & ((1 << 48) - 1)
    digest = hashlib.sha256(hull_event_id.encode("utf-8")).digest()[:10]
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + digest))


def event_body(event: dict[str, Any], created_at: datetime, cio_event_id: str) -> tuple[dict[str, Any] | None, str]:
    """The Customer.io event body, or (None, reason) when it cannot be sent."""
    properties = event.get("properties") or {}
    context = event.get("context") or {}
    body: dict[str, Any] = {"id": cio_event_id, "timestamp": int(created_at.timestamp())}
    if event.get("event") == PAGE_EVENT:
        url = properties.get("url") or context.get("page_url")
        if not url:
            return None, "page_without_url"
        referrer = properties.get("referrer") or context.get("referrer_url")
        body.update(type="page", name=url, data={"referrer": referrer} if referrer else {})
    else:
        body.update(name=event.get("event"), data=dict(properties))
    if not body["name"]:
        return None, "no_event_name"
    if byte_length(body["name"]) > MAX_EVENT_NAME_BYTES:
        return None, "name_too_long"
    try:
        data = json.dumps(body["data"], separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:  # NaN or Infinity: no JSON number; v1 could not even send the call
        return None, "data_not_json"
    if len(data.encode()) > MAX_EVENT_DATA_BYTES:
        return None, "data_too_large"
    return body, ""


def plan_event(
    event: dict[str, Any], user: EventUser | None, settings: ConnectorSettings, not_after: datetime | None = None
) -> EventPlan:
    """What to do with one event. `not_after`: an event dated later (the run's start plus
    `events_future_tolerance_minutes`) is skipped as `future_timestamp`; the skip is recorded,
    so the event is decided once and never sent, even after its date has passed."""
    hull_event_id = str(event.get("event_id") or "")
    if not hull_event_id:
        return EventPlan("", "", SKIP, "no_event_id")
    try:
        created_at = parse_created_at(event.get("created_at"))
    except (TypeError, ValueError):
        return EventPlan(hull_event_id, "", SKIP, "invalid_created_at")
    cio_event_id = event_ulid(hull_event_id, created_at)
    plan = EventPlan(hull_event_id, cio_event_id, SKIP)

    if event.get("event") not in settings.events_filter:
        plan.reason = "not_in_events_filter"
        return plan
    if not_after is not None and created_at > not_after:
        plan.reason = "future_timestamp"
        return plan
    if user is None:  # Hull no longer returns the user (removed, or unreadable)
        plan.reason = "user_not_found"
        return plan
    if not user.in_segments:
        plan.reason = "user_not_in_segments"
        return plan
    body, reason = event_body(event, created_at, cio_event_id)
    if body is None:
        plan.reason = reason
        return plan
    if user.has_mapped_id:
        if not user.cio_id:
            plan.reason = "user_not_in_customerio"
            return plan
        plan.action, plan.target_id, plan.body = SEND, user.cio_id, body
        return plan
    if not settings.anonymous_events:
        plan.reason = "anonymous_events_disabled"
        return plan
    anonymous_id = event.get("anonymous_id") or user.anonymous_id
    if not anonymous_id:
        plan.reason = "no_anonymous_id"
        return plan
    plan.action, plan.body = SEND_ANONYMOUS, {**body, "anonymous_id": anonymous_id}
    return plan
