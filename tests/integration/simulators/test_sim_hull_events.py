"""Hull simulator event search over real HTTP: lookups by id filter the field they name,
results match a brute-force reference, and a keyset walk costs O(page) per query."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
import requests

from simulators import HullSimulator

CONNECTOR_ID = "5bd329d5e2bcf3eeaf000002"
SECRET = "s3cret-long-enough-for-hs256-keys-0456"
START = datetime(2026, 11, 26, 10, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def server():
    with HullSimulator(connector_id=CONNECTOR_ID, connector_secret=SECRET) as sim:
        yield sim


@pytest.fixture
def hull(server):
    server.reset()
    return server


@pytest.fixture
def http():
    with requests.Session() as session:
        session.headers.update({"Hull-App-Id": CONNECTOR_ID, "Hull-Access-Token": SECRET})
        yield session


def hid(n: int) -> str:
    return f"{n:024x}"


def iso(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def search(hull, http, filters=(), must_not=(), page=1, per_page=100, sort="asc"):
    body = {
        "query": {"bool": {"filter": list(filters), "must_not": list(must_not)}},
        "sort": {"created_at": sort},
        "raw": True,
        "page": page,
        "per_page": per_page,
    }
    response = http.post(f"{hull.api_url}/search/events", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def event_id(event: dict) -> str:
    return event.get("event_id") or event["_id"]


# -- lookups by id ---------------------------------------------------------------------


def test_id_lookup_filters_the_field_it_names(hull, http):
    hull.upsert_user({"id": hid(1)})
    hull.add_event({"event_id": "e-1", "event": "page", "user_id": hid(1), "created_at": iso(1)})
    hull.add_raw_event(
        {
            "event_id": "e-2",
            "event": "page",
            "user_id": hid(1),
            "created_at": iso(2),
            "properties": {"url": "https://x.com/"},
        }
    )
    # Raw form as stored documents look (`_id` + `props`), seeded over HTTP.
    raw = {
        "_id": "e-3",
        "event": "Signed Up",
        "user_id": hid(1),
        "created_at": iso(3),
        "props": [
            {"field_name": "plan", "text_value": "pro", "num_value": None, "bool_value": None, "date_value": None}
        ],
    }
    assert http.post(f"{hull.url}/_sim/events", json=[raw]).status_code == 200

    ids = ["e-1", "e-2", "e-3", "e-404"]
    by_event_id = search(hull, http, [{"terms": {"event_id": ids}}])
    assert [e["event_id"] for e in by_event_id["data"]] == ["e-1"]
    assert hull.last_event_search["index"] == "event id"
    by_raw_id = search(hull, http, [{"terms": {"_id": ids}}])
    assert [e["_id"] for e in by_raw_id["data"]] == ["e-2", "e-3"]
    assert by_raw_id["data"][1]["props"] == raw["props"] and "event_id" not in by_raw_id["data"][1]
    # A client asking with the wrong field finds nothing.
    assert search(hull, http, [{"terms": {"event_id": ["e-2", "e-3"]}}])["data"] == []
    assert search(hull, http, [{"term": {"_id": "e-1"}}])["data"] == []
    assert search(hull, http, [{"term": {"_id": {"value": "e-3"}}}])["pagination"]["total"] == 1
    # Combined with other clauses, every clause still holds.
    both = search(
        hull,
        http,
        [{"terms": {"_id": ids}}, {"terms": {"event": ["page"]}}, {"range": {"created_at": {"gte": iso(2)}}}],
    )
    assert [e["_id"] for e in both["data"]] == ["e-2"]


def test_removed_users_events_leave_every_index(hull, http):
    for n in (1, 2):
        hull.upsert_user({"id": hid(n)})
        hull.add_event({"event_id": f"e-{n}", "event": "page", "user_id": hid(n), "created_at": iso(n)})
    assert search(hull, http)["pagination"]["total"] == 2
    hull.remove_user(hid(1))
    assert [event_id(e) for e in search(hull, http)["data"]] == ["e-2"]
    assert search(hull, http, [{"terms": {"event_id": ["e-1", "e-2"]}}])["pagination"]["total"] == 1
    parent = {"has_parent": {"parent_type": "user_report", "query": {"terms": {"id": [hid(1)]}}}}
    assert search(hull, http, [parent])["data"] == []


def test_events_added_between_searches_are_found_in_order(hull, http):
    hull.upsert_user({"id": hid(1)})
    for n in (5, 3):
        hull.add_event({"event_id": f"e-{n}", "event": "page", "user_id": hid(1), "created_at": iso(n)})
    assert [event_id(e) for e in search(hull, http)["data"]] == ["e-3", "e-5"]
    hull.add_event({"event_id": "e-4", "event": "page", "user_id": hid(1), "created_at": iso(4)})
    for n in range(100, 180):  # more than a few at once: merged by one sort
        hull.add_event({"event_id": f"e-{n}", "event": "page", "user_id": hid(1), "created_at": iso(200 - n)})
    found = search(hull, http, per_page=100)["data"]
    assert [(e["created_at"], e["event_id"]) for e in found] == sorted(
        (e["created_at"], e["event_id"]) for e in hull.events
    )
    assert [e["event_id"] for e in found[:4]] == ["e-3", "e-4", "e-5", "e-179"] and len(found) == 83


# -- results equal a brute-force reference --------------------------------------------------


def seed_events(hull, rng: random.Random, users=30, events=500, seconds=40):
    segments = ["vip", "trial", "churn"]
    for n in range(users):
        hull.upsert_user({"id": hid(n), "segment_ids": rng.sample(segments, rng.randint(0, 2))})
    for k in range(events):
        event = {
            "event_id": f"e-{k:04d}",
            "event": rng.choice(["page", "Signed Up", "Order"]),
            "user_id": hid(rng.randrange(users)),
            "created_at": iso(rng.randrange(seconds)),
        }
        (hull.add_raw_event if k % 3 == 0 else hull.add_event)(event)


def reference(hull, names, segment, since, excluded, direction):
    """What the search must answer, computed naively from hull.events and hull.users."""
    rows = []
    for event in hull.events:
        ident, created = event_id(event), event["created_at"]
        if event["event"] not in names:
            continue
        if segment is not None and segment not in hull.users[event["user_id"]]["segment_ids"]:
            continue
        if since is not None and created < since:
            continue
        field = "event_id" if "event_id" in event else "_id"
        if since is not None and created == since and ident in excluded.get(field, ()):
            continue
        rows.append((created, ident))
    rows.sort(reverse=direction == "desc")
    return [ident for _, ident in rows]


def test_searches_match_a_brute_force_reference(hull, http):
    rng = random.Random(11)
    seed_events(hull, rng)
    for _ in range(40):
        names = rng.sample(["page", "Signed Up", "Order"], rng.randint(1, 3))
        segment = rng.choice([None, "vip", "trial"])
        since = rng.choice([None, iso(rng.randrange(40))])
        direction = rng.choice(["asc", "asc", "desc"])
        filters = [{"terms": {"event": names}}]
        if segment:
            filters.append(
                {"has_parent": {"parent_type": "user_report", "query": {"terms": {"segment_ids": [segment]}}}}
            )
        excluded, must_not = {}, []
        if since:
            filters.append({"range": {"created_at": {"gte": since}}})
            at_since = [e for e in hull.events if e["created_at"] == since]
            for field in ("event_id", "_id"):
                excluded[field] = [e[field] for e in at_since if field in e and rng.random() < 0.5]
                if excluded[field]:
                    must_not.append(
                        {
                            "bool": {
                                "filter": [
                                    {"terms": {field: excluded[field]}},
                                    {"range": {"created_at": {"gte": since, "lte": since}}},
                                ]
                            }
                        }
                    )
        expected = reference(hull, names, segment, since, excluded, direction)
        got, page, per_page = [], 1, rng.choice([10, 40, 100])
        while True:
            answer = search(hull, http, filters, must_not, page=page, per_page=per_page, sort=direction)
            got += [event_id(e) for e in answer["data"]]
            pagination = answer["pagination"]
            if pagination.get("total_relation") == "gte":  # more than this page: a lower bound
                assert pagination["total"] == page * per_page + 1 <= len(expected)
            else:
                assert pagination["total"] == len(expected) == len(got)
            if page >= pagination["pages"]:
                break
            page += 1
        assert got == expected


# -- cost: O(page) ------------------------------------------------------------------------


def test_keyset_walk_reads_each_event_once_at_a_cost_bounded_by_the_page(hull, http):
    """The connector's walk: `created_at >= cursor` minus the ids already handled at the
    cursor (in both id fields), always page 1. Many events share each second."""
    hull.upsert_user({"id": hid(1), "segment_ids": ["vip"]})
    ties, per_page = 30, 10
    for k in range(3000):
        event = {"event_id": f"e-{k:05d}", "event": "page", "user_id": hid(1), "created_at": iso(k // ties)}
        (hull.add_raw_event if k % 4 == 0 else hull.add_event)(event)
    parent = {"has_parent": {"parent_type": "user_report", "query": {"terms": {"segment_ids": ["vip"]}}}}
    cursor, seen_at_cursor, walked, most_examined = None, {"event_id": [], "_id": []}, [], 0
    while True:
        filters, must_not = [parent, {"terms": {"event": ["page"]}}], []
        if cursor:
            filters.append({"range": {"created_at": {"gte": cursor}}})
            must_not = [
                {
                    "bool": {
                        "filter": [{"terms": {field: ids}}, {"range": {"created_at": {"gte": cursor, "lte": cursor}}}]
                    }
                }
                for field, ids in seen_at_cursor.items()
                if ids
            ]
        data = search(hull, http, filters, must_not, per_page=per_page)["data"]
        most_examined = max(most_examined, hull.last_event_search["examined"])
        assert hull.last_event_search["index"] == "created_at"
        for event in data:
            walked.append(event_id(event))
            if event["created_at"] != cursor:
                cursor, seen_at_cursor = event["created_at"], {"event_id": [], "_id": []}
            seen_at_cursor["event_id" if "event_id" in event else "_id"].append(event_id(event))
        if len(data) < per_page:
            break
    assert walked == sorted(walked) and len(walked) == len(set(walked)) == 3000
    # Each query looks at the excluded ties, one page, and one more: never at the rest.
    assert most_examined <= ties + per_page + 1


def test_large_results_stop_one_past_the_page(hull, http):
    hull.upsert_user({"id": hid(1)})
    for k in range(12_000):
        hull.add_event({"event_id": f"e-{k:05d}", "event": "page", "user_id": hid(1), "created_at": iso(k // 50)})
    first = search(hull, http, per_page=100)
    assert [event_id(e) for e in first["data"]] == [f"e-{k:05d}" for k in range(100)]
    assert first["pagination"] == {"page": 1, "per_page": 100, "pages": 2, "total": 101, "total_relation": "gte"}
    assert hull.last_event_search["examined"] == 101
    tenth = search(hull, http, page=10, per_page=100)
    assert event_id(tenth["data"][0]) == "e-00900" and tenth["pagination"]["pages"] == 11
    latest = search(hull, http, per_page=5, sort="desc")
    assert [event_id(e) for e in latest["data"]] == [f"e-{k:05d}" for k in range(11_999, 11_994, -1)]
    # A page reaching the last match knows the exact total.
    tail = search(hull, http, [{"range": {"created_at": {"gte": iso(239)}}}], per_page=100)
    assert tail["pagination"] == {"page": 1, "per_page": 100, "pages": 1, "total": 50}
