"""Where each stream's walk starts and where its cursor may be stored (README, "How it works").

Users: each run starts `users_overlap_seconds` before the stored cursor, without excluding the
ids handled at the cursor's second, so a user re-indexed in that same second after it was
read, or a document that became searchable after a later one was read, is found again.
Unchanged users in the overlap cost no Customer.io call.

Events: Hull's event documents carry no ingestion or index time (shared/reference/hull.md),
only `created_at`, which the sender sets. So each run
- starts `events_overlap_minutes` before the stored cursor: an event that reached Hull late,
  but within that window, is read and sent once (`event_state` drops what was decided);
- never reads events created before `events_start` (set when events are first enabled, to that
  moment minus `events_initial_lookback_hours`, and kept in `sync_meta`): a first run, or a new
  shard layout, does not replay history (older events go out only through a backfill);
- never stores its cursor past the run's start minus `EVENTS_SAFETY_LAG`, and never behind the
  cursor stored before the run: an event dated in the future is read and decided like any
  other (sent within `events_future_tolerance_minutes`, else skipped `future_timestamp`) and
  cannot carry the cursor with it.
A stream with no cursor of its own (a new shard layout) starts where the layout that ran last
had got to (its earliest shard), so changing `shard_count` re-reads only the overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from cio_sync.rules.sharding import Shard, cursor_layout
from cio_sync.rules.watermarks import (
    CAMPAIGN_TRIGGER_WINDOW,
    EVENTS_SAFETY_LAG,
    earliest,
    events_start_for,
    exact_position,
    format_position,
    is_after,
    latest,
    parse_position,
    shift_position,
)
from cio_sync.settings import ConnectorSettings
from cio_sync.store.cursors import Cursor, StoredCursor, keep_meta, list_cursors, read_cursor, read_meta

EVENTS_CURSOR = "events"
EVENTS_START = "events_start"


def users_walk_start(stored: Cursor, overlap_seconds: float) -> Cursor:
    """Where this run's users walk starts: the overlap before the stored cursor."""
    if not stored.position or overlap_seconds <= 0:
        return stored
    return Cursor(position=shift_position(stored.position, -timedelta(seconds=overlap_seconds)))


def not_behind(stored: Cursor | None, walked: Cursor) -> Cursor:
    """The cursor to store after a page: the walk's, unless the walk is still re-reading the
    overlap before the cursor stored when the run began (a cursor never moves back)."""
    if stored is None or not stored.position or not is_after(stored.position, walked.position):
        return walked
    return stored


@dataclass(frozen=True)
class EventsWindow:
    """What an events walk reads, and where it may leave the stream's cursor."""

    start: str  # events created at or after this
    cursor_name: str | None  # the stream's cursor; None: a backfill, which moves no cursor
    until: str | None = None  # events created at or before this (a backfill's end)
    cap: str | None = None  # the cursor is never stored past this: the run's start minus the safety lag
    stored: Cursor | None = None  # the cursor stored before the run: never moved back
    not_after: datetime | None = None  # events dated later are skipped as `future_timestamp`
    campaign_since: datetime | None = None  # a backfill counts sent events newer than this

    def start_cursor(self) -> Cursor:
        return Cursor(position=self.start)

    def to_store(self, walked: Cursor) -> Cursor | None:
        """The cursor to store with a page walked up to `walked` (None: store none)."""
        if self.cursor_name is None:
            return None
        cursor = not_behind(self.stored, walked)
        if self.cap is not None and is_after(cursor.position, self.cap):
            return Cursor(position=self.cap)
        return cursor


def events_start(
    engine: Engine, now: datetime, settings: ConnectorSettings, cursors: list[StoredCursor], dry_run: bool
) -> str:
    """The installation's `events_start`, set on first use (not by a dry run, which only computes it)."""
    stored = read_meta(engine, EVENTS_START)
    if stored:
        return stored
    positions = [c.position for c in cursors if c.position and cursor_layout(c.name, EVENTS_CURSOR)]
    value = events_start_for(
        now,
        timedelta(hours=settings.events_initial_lookback_hours),
        positions,
        timedelta(minutes=settings.events_overlap_minutes),
    )
    return value if dry_run else keep_meta(engine, EVENTS_START, value)


def resume_position(cursors: list[StoredCursor], name: str, cap: str) -> str | None:
    """Where the stream `name` resumes: its own cursor, unless another shard layout ran more
    recently; then the later of its own cursor and that layout's earliest shard (everything
    before it was decided by one layout or the other). Positions past `cap` count as `cap`."""
    own_count = cursor_layout(name, EVENTS_CURSOR)
    own = next((c for c in cursors if c.name == name), None)
    others: dict[int, list[StoredCursor]] = {}
    for cursor in cursors:
        count = cursor_layout(cursor.name, EVENTS_CURSOR)
        if count is not None and count != own_count and cursor.position:
            others.setdefault(count, []).append(cursor)
    last_layout = max(others.values(), key=lambda layout: max(c.updated_at for c in layout), default=None)
    own_position = earliest(own.position, cap) if own is not None and own.position else None
    if last_layout is None or (own is not None and own.updated_at >= max(c.updated_at for c in last_layout)):
        return own_position
    return latest(own_position, earliest(*(earliest(c.position, cap) for c in last_layout)))


def events_window(
    engine: Engine, settings: ConnectorSettings, shard: Shard, started: datetime, dry_run: bool = False
) -> EventsWindow:
    """The scheduled events walk of one run (or one shard's run) that started at `started`."""
    name = shard.cursor_name(EVENTS_CURSOR)
    cursors = list_cursors(engine)
    floor = events_start(engine, started, settings, cursors, dry_run)
    cap = format_position(started - EVENTS_SAFETY_LAG)
    resume = resume_position(cursors, name, cap)
    overlap = timedelta(minutes=settings.events_overlap_minutes)
    start = floor if resume is None else latest(floor, shift_position(resume, -overlap)) or floor
    own = any(c.name == name for c in cursors)
    return EventsWindow(
        start=start,
        cursor_name=name,
        cap=cap,
        stored=read_cursor(engine, name) if own else None,
        not_after=started + timedelta(minutes=settings.events_future_tolerance_minutes),
    )


def backfill_window(since: str, until: str | None, started: datetime, settings: ConnectorSettings) -> EventsWindow:
    """A backfill of events created between `since` and `until` (default: the run's start).
    It moves no cursor; `event_state` keeps it from sending anything twice."""
    begin = parse_position(since)
    end = parse_position(until) if until else started
    if end < begin:
        raise ValueError(f"--until ({until}) is before --since ({since})")
    return EventsWindow(
        start=exact_position(begin),
        cursor_name=None,
        until=exact_position(end),
        not_after=started + timedelta(minutes=settings.events_future_tolerance_minutes),
        campaign_since=started - CAMPAIGN_TRIGGER_WINDOW,
    )
