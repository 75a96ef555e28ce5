"""Watermark arithmetic, writer scopes and the future-dated event rule: pure, no clock, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cio_sync.rules.events import SKIP, EventUser, plan_event
from cio_sync.rules.sharding import WHOLE_SCOPE, Shard, cursor_layout, layout_scope, scopes_overlap
from cio_sync.rules.watermarks import (
    earliest,
    events_start_for,
    exact_position,
    format_position,
    is_after,
    latest,
    shift_position,
)
from cio_sync.settings import ConnectorSettings

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)


def test_positions_compare_as_instants_not_as_strings():
    # As strings, "…:03.120Z" sorts before "…:03Z"; as instants it is later.
    assert is_after("2026-11-26T10:00:03.120Z", "2026-11-26T10:00:03Z")
    assert not is_after("2026-11-26T10:00:03Z", "2026-11-26T10:00:03.120Z")
    assert is_after("2026-11-26T11:00:00+01:00", "2026-11-26T09:59:59Z")
    assert is_after("2026-11-26T10:00:00Z", None) and not is_after(None, "2026-11-26T10:00:00Z")
    assert latest("2031-01-01T00:00:00Z", None, "2026-11-26T10:00:00Z") == "2031-01-01T00:00:00Z"
    assert earliest("2031-01-01T00:00:00Z", None, "2026-11-26T10:00:00Z") == "2026-11-26T10:00:00Z"
    assert latest() is None


def test_shifted_and_formatted_positions_are_hull_timestamps():
    assert shift_position("2026-11-26T10:30:00Z", -timedelta(minutes=60)) == "2026-11-26T09:30:00Z"
    assert format_position(datetime(2026, 11, 26, 10, 0, 0, 900_000, tzinfo=timezone.utc)) == "2026-11-26T10:00:00Z"
    assert (
        exact_position(datetime(2026, 11, 26, 10, 0, 0, 900_000, tzinfo=timezone.utc)) == "2026-11-26T10:00:00.900000Z"
    )


def test_events_start_is_the_lookback_or_what_existing_cursors_cover():
    lookback, overlap = timedelta(hours=24), timedelta(minutes=60)
    assert events_start_for(NOW, lookback, [], overlap) == "2026-11-28T12:00:00Z"
    # An installation upgrading with a cursor a week old keeps that week (minus the overlap).
    assert events_start_for(NOW, lookback, ["2026-11-22T12:00:00Z"], overlap) == "2026-11-22T11:00:00Z"
    # A recent cursor changes nothing; one pushed into the future by a bad event is ignored.
    assert (
        events_start_for(NOW, lookback, ["2026-11-29T11:55:00Z", "2031-01-01T00:00:00Z"], overlap)
        == "2026-11-28T12:00:00Z"
    )


def test_writer_scopes_overlap_exactly_where_users_can_meet():
    shards4 = [Shard(i, 4).writer_scope() for i in range(4)]
    assert Shard().writer_scope() == WHOLE_SCOPE == "users:all"
    assert not any(scopes_overlap(a, b) for a in shards4 for b in shards4 if a != b)
    assert all(scopes_overlap(WHOLE_SCOPE, s) and scopes_overlap(s, WHOLE_SCOPE) for s in shards4)
    assert scopes_overlap(shards4[0], Shard(0, 2).writer_scope())  # another layout: shared users
    assert not any(scopes_overlap(layout_scope(4), s) for s in shards4)  # the parent and its shards
    assert scopes_overlap(layout_scope(4), Shard(1, 2).writer_scope())
    assert scopes_overlap(layout_scope(4), WHOLE_SCOPE) and scopes_overlap(layout_scope(4), layout_scope(2))
    assert scopes_overlap(layout_scope(4), layout_scope(4))  # two sharded runs at once
    assert not scopes_overlap(layout_scope(1), WHOLE_SCOPE)  # a parent of one shard and that shard
    assert scopes_overlap("job", "job") and not scopes_overlap("job", WHOLE_SCOPE)


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("events", 1),
        ("events:shard:2/4", 4),
        ("events:shard:0/16", 16),
        ("users", None),
        ("events:shard:x", None),
    ],
)
def test_cursor_layout(name, count):
    assert cursor_layout(name, "events") == count


def test_an_event_dated_after_the_tolerance_is_skipped_as_future_timestamp():
    settings = ConnectorSettings.model_construct(events_filter=["Signed Up"], anonymous_events=False)
    user = EventUser(cio_id="u-1", in_segments=True, has_mapped_id=True)
    not_after = NOW + timedelta(minutes=60)

    def event(created_at: str) -> dict:
        return {"event_id": f"e-{created_at}", "event": "Signed Up", "created_at": created_at, "user_id": "h-1"}

    future = plan_event(event("2031-01-01T00:00:00Z"), user, settings, not_after)
    assert (future.action, future.reason) == (SKIP, "future_timestamp")
    soon = plan_event(event("2026-11-29T12:30:00Z"), user, settings, not_after)  # within the tolerance
    assert soon.action == "send" and soon.body["timestamp"] == int(
        datetime(2026, 11, 29, 12, 30, tzinfo=timezone.utc).timestamp()
    )
    assert plan_event(event("2031-01-01T00:00:00Z"), user, settings).action == "send"  # no bound given
