"""Events pages of `events_per_batch` events: one `sync-events-page` task reads up to that many
events as Hull searches of 100 and sends them together. Whatever the page size, a run must leave
the same Customer.io events, the same `event_state` rows and the same events cursor, on both API
modes; only the number of tasks changes (one per page, and none after the end of the stream).
"""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

import tasks.sync_events_page as events_task
from cio_sync.pipeline.events_page import EVENTS_CURSOR, EventsReadAhead
from cio_sync.store import db
from cio_sync.store.cursors import read_cursor
from flows.sync_users import sync_users
from simulators.customerio import CustomerIoSimulator
from simulators.hull import HullSimulator
from tests.support.sims import CIO_API_KEY, CIO_SITE_ID, HULL_CONNECTOR_ID, HULL_SECRET, point_env_at

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], events_filter=["Signed Up", "page"], anonymous_events=True)
NAMES = ["Signed Up", "page", "Order Completed"]  # the last is not whitelisted


def seed(hull: HullSimulator) -> int:
    """40 users and 400 events; returns how many events Hull's events search matches (events
    of users in the synchronized segment whose name is whitelisted). Many events share one
    `created_at` second, so ties cross every page boundary of 100."""
    hull.add_segment("s-vip", "VIP")
    hull.add_segment("s-other", "Other")
    matched = 0
    for n in range(40):
        in_vip = n % 5 != 4
        user = {
            "id": f"5bd329d5e2bcf3eeaf{n:06d}",
            "email": None if n == 7 else f"user{n}@example.com",
            "external_id": None if n == 3 else f"u-{n}",
            "anonymous_ids": [f"web:{n}"],
            "created_at": "2020-01-01T00:00:00Z",
            "segment_ids": ["s-vip"] if in_vip else ["s-other"],
        }
        hull.upsert_user(user)
        for k in range(10):
            name = NAMES[(n + k) % 3]
            hull.add_event(
                {
                    "event_id": f"ev-{n:02d}-{k}",
                    "event": name,
                    "user_id": user["id"],
                    "anonymous_id": f"web:{n}",
                    "created_at": f"2026-11-26T09:{k % 4:02d}:{(n * k) % 3:02d}Z",
                    "properties": {"url": f"https://example.com/{n}/{k}", "n": n, "k": k},
                    "context": {},
                }
            )
            matched += in_vip and name != "Order Completed"
    return matched


def run(monkeypatch, tmp_path, api: str, events_per_batch: int | None, read_ahead: bool = True) -> dict:
    """One sync (and a rerun) on fresh simulators and a fresh database. `read_ahead=False`: every
    batch is read by its own task, none while the batch before is sent."""
    hull = HullSimulator(connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET).start()
    cio = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
    tasks: list[int] = []
    real = events_task.run_events_page

    def counted(*args, **kwargs):
        page = real(*args, **kwargs)
        tasks.append(page.summary.events.total() + page.summary.event_skip_reasons.total())
        return page

    monkeypatch.setattr(events_task, "run_events_page", counted)
    served: list[bool] = []  # per task: was its batch read ahead?
    real_take = EventsReadAhead.take

    def take(self, cursor):
        batch = real_take(self, cursor) if read_ahead else None
        served.append(batch is not None)
        return batch

    monkeypatch.setattr(EventsReadAhead, "take", take)
    try:
        matched = seed(hull)
        url = f"sqlite:///{tmp_path / f'{api}-{events_per_batch}-{read_ahead}.db'}"
        point_env_at(monkeypatch, hull, cio, url)
        extra = {} if events_per_batch is None else {"events_per_batch": events_per_batch}
        summary = sync_users(**SETTINGS, customerio_api=api, **extra)
        first_tasks, first_served = list(tasks), list(served)
        tasks.clear()
        cio.clear_journal()
        again = sync_users(**SETTINGS, customerio_api=api, **extra)
        engine = db.get_engine(url)
        with engine.connect() as connection:
            rows = sorted(
                repr((r.hull_event_id, r.cio_event_id, r.hull_user_id, r.event_name, r.status, r.reason))
                for r in connection.execute(select(db.event_state))
            )
        return {
            "matched": matched,
            "events": sorted(
                repr((e["id"], e["customer"], e["anonymous_id"], e["name"], e["type"], e["timestamp"], e["data"]))
                for e in cio.events
            ),
            "people": {k: dict(v) for k, v in cio.people.items()},
            "rows": rows,
            "cursor": read_cursor(engine, EVENTS_CURSOR),
            "sent": summary["events"].get("sent", 0),
            "skipped": dict(summary["event_skip_reasons"]),
            "tasks": first_tasks,
            "read_ahead": first_served,
            "rerun_tasks": list(tasks),
            "rerun_posts": [e for e in cio.journal() if e["method"] == "POST"],
            "rerun_sent": again["events"].get("sent", 0),
        }
    finally:
        hull.stop()
        cio.stop()


@pytest.mark.parametrize("api", ["v1", "v2_batch"])
def test_page_size_changes_the_task_count_and_nothing_else(monkeypatch, tmp_path, api):
    one_search = run(monkeypatch, tmp_path, api, 100)  # a task per Hull search, as before
    odd = run(monkeypatch, tmp_path, api, 130)  # a search of 100 and one of 30 per task
    default = run(monkeypatch, tmp_path, api, None)  # 500
    unhurried = run(monkeypatch, tmp_path, api, 100, read_ahead=False)

    matched = default["matched"]
    assert matched > 200 and default["sent"] > 150 and default["skipped"]
    # Every batch after the first was read while the one before it was sent; without that,
    # the same end state.
    assert one_search["read_ahead"] == [False] + [True] * (len(one_search["tasks"]) - 1)
    assert not any(unhurried["read_ahead"]) and unhurried["tasks"] == one_search["tasks"]
    for result in (one_search, odd, unhurried):
        for key in ("events", "people", "rows", "cursor", "sent", "skipped"):
            assert result[key] == default[key], key
    assert len({e.split(",")[0] for e in default["events"]}) == len(default["events"]) == default["sent"]
    assert len(default["rows"]) == matched

    # One task per page, every page full but the last, and no task after the end of the stream.
    for result, size in ((one_search, 100), (odd, 130), (default, 500)):
        pages = math.ceil(matched / size)
        assert result["tasks"] == [size] * (pages - 1) + [matched - size * (pages - 1)]
        # The rerun reads only its overlap window again (issue 11: events already decided are read
        # through inside one task), sends nothing and posts nothing.
        assert len(result["rerun_tasks"]) == 1 and result["rerun_posts"] == [] and result["rerun_sent"] == 0
