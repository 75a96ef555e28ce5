"""Watermark arithmetic: where a stream's walk starts, where its cursor may be stored, and
which events are dated in the future. Pure: no SQL, no HTTP, no clock (`now` is passed in).

Positions are Hull timestamps as Hull writes them (`2026-11-26T10:02:03Z`, sometimes with
fractions of a second). They are compared as instants, never as strings: string order breaks
between `...:03Z` and `...:03.120Z`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cio_sync.rules.events import parse_created_at

POSITION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The events cursor is never stored past the run's start minus this, so events Hull indexes a
# little after their `created_at` (and small clock differences) stay ahead of the cursor.
EVENTS_SAFETY_LAG = timedelta(seconds=60)
# Customer.io still triggers campaigns for backdated events up to this old.
CAMPAIGN_TRIGGER_WINDOW = timedelta(hours=72)


def parse_position(position: str) -> datetime:
    return parse_created_at(position)


def format_position(moment: datetime) -> str:
    """Second precision, UTC, rounded down: a bound written this way never skips the second it names."""
    return moment.astimezone(timezone.utc).strftime(POSITION_FORMAT)


def exact_position(moment: datetime) -> str:
    """Like `format_position`, keeping fractions of a second when there are any."""
    moment = moment.astimezone(timezone.utc)
    if not moment.microsecond:
        return format_position(moment)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def shift_position(position: str, delta: timedelta) -> str:
    return format_position(parse_position(position) + delta)


def is_after(a: str | None, b: str | None) -> bool:
    """Whether position `a` is strictly later than `b` (a missing position is earliest)."""
    if a is None:
        return False
    if b is None:
        return True
    return parse_position(a) > parse_position(b)


def latest(*positions: str | None) -> str | None:
    """The latest of the given positions (None when none is given)."""
    found: str | None = None
    for position in positions:
        if position is not None and (found is None or is_after(position, found)):
            found = position
    return found


def earliest(*positions: str | None) -> str | None:
    found: str | None = None
    for position in positions:
        if position is not None and (found is None or is_after(found, position)):
            found = position
    return found


def events_start_for(now: datetime, lookback: timedelta, existing_positions: list[str], overlap: timedelta) -> str:
    """`events_start` of an installation that enables events now: `now - lookback`; an
    installation upgrading with events cursors already stored keeps what they cover (their
    earliest position minus the overlap), so the upgrade itself drops nothing. Positions
    in the future (an old cursor pushed forward by a future-dated event) do not count."""
    start = now - lookback
    sane = [p for p in existing_positions if parse_position(p) <= now]
    if sane:
        start = min(start, parse_position(earliest(*sane) or "") - overlap)
    return format_position(start)
