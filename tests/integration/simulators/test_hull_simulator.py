"""The Hull simulator over real HTTP (no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import jwt
import pytest
import requests

from simulators import HullSimulator, seed_synthetic, sign_user_token

CONNECTOR_ID = "5bd329d5e2bcf3eeaf000001"
SECRET = "s3cret-long-enough-for-hs256-keys-0123"  # PyJWT warns below 32 bytes


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
        session.headers.update(
            {"Hull-App-Id": CONNECTOR_ID, "Hull-Access-Token": SECRET, "Hull-Organization": "acme.hullapp.io"}
        )
        yield session


def hid(n: int) -> str:
    return f"{n:024x}"


def search_users(hull, http, query=None, page=1, per_page=100, **extra):
    body = {"sort": {"indexed_at": "asc"}, "raw": True, "page": page, "per_page": per_page, **extra}
    if query is not None:
        body["query"] = query
    return http.post(f"{hull.api_url}/search/user_reports", json=body)


def since(op: str, iso: str) -> dict:
    return {"bool": {"filter": [{"range": {"indexed_at": {op: iso}}}]}}


def firehose(hull, http, messages, **kwargs):
    return http.post(hull.firehose_url, json={"batch": messages, "sentAt": "x"}, **kwargs)


def traits_message(as_user, body, secret=SECRET, issuer=CONNECTOR_ID, **claims):
    token = sign_user_token(issuer, secret, as_user, **claims)
    return {
        "type": "traits",
        "headers": {"Hull-Access-Token": token},
        "body": body,
        "timestamp": "2026-11-26T10:05:00Z",
    }


# -- auth and segments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Hull-App-Id": CONNECTOR_ID, "Hull-Access-Token": "no"},
        {"Hull-App-Id": "0" * 24, "Hull-Access-Token": SECRET},
    ],
)
def test_rest_and_firehose_reject_bad_credentials(hull, headers):
    for method, url in (
        ("GET", f"{hull.api_url}/users_segments"),
        ("POST", f"{hull.api_url}/search/user_reports"),
        ("POST", hull.firehose_url),
    ):
        response = requests.request(method, url, json={"batch": []}, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"message": "Invalid credentials"}


def test_segments_are_paginated_with_user_counts(hull, http):
    for i in range(5):
        hull.add_segment(f"seg-{i}", f"Segment {i}")
    hull.upsert_user({"id": hid(1), "segment_ids": ["seg-0", "seg-1"]})
    hull.upsert_user({"id": hid(2), "segment_ids": ["seg-1"]})
    first = http.get(f"{hull.api_url}/users_segments", params={"page": 1, "per_page": 3}).json()
    last = http.get(f"{hull.api_url}/users_segments", params={"page": 2, "per_page": 3}).json()
    assert [s["id"] for s in first] == ["seg-0", "seg-1", "seg-2"]
    assert [s["id"] for s in last] == ["seg-3", "seg-4"]  # shorter page: the last one
    assert first[1] == {
        "id": "seg-1",
        "name": "Segment 1",
        "type": "users_segment",
        "created_at": "2026-11-26T10:00:00Z",
        "updated_at": "2026-11-26T10:00:00Z",
        "stats": {"users": 2},
    }
    too_big = http.get(f"{hull.api_url}/users_segments", params={"per_page": 201})
    assert too_big.status_code == 400


# -- user search ---------------------------------------------------------------------


def test_indexed_at_follows_the_clock_with_second_precision(hull):
    hull.upsert_user({"id": hid(1)})
    hull.advance(1.7)
    hull.set_trait(hid(1), "coconuts", 3)
    user = hull.user(hid(1))
    assert user["indexed_at"] == "2026-11-26T10:00:01Z"
    assert user["traits_coconuts"] == 3
    hull.now = datetime(2027, 1, 1, tzinfo=timezone.utc)
    hull.set_segments(hid(1), ["seg-a"])
    assert hull.user(hid(1))["indexed_at"] == "2027-01-01T00:00:00Z"
    assert hull.user(hid(1))["segment_ids"] == ["seg-a"]


def test_search_paginates_and_breaks_ties_by_id(hull, http):
    for n in (5, 3, 9, 1, 7):  # inserted out of id order, all at one indexed_at
        hull.upsert_user({"id": hid(n)})
    hull.advance(1)
    hull.upsert_user({"id": hid(2)})
    pages = [search_users(hull, http, page=p, per_page=2).json() for p in (1, 2, 3, 4)]
    ids = [u["id"] for page in pages for u in page["data"]]
    assert ids == [hid(n) for n in (1, 3, 5, 7, 9, 2)]
    assert pages[0]["pagination"] == {"page": 1, "per_page": 2, "pages": 3, "total": 6}
    assert pages[3]["data"] == []


def test_search_window_and_per_page_limits(hull, http):
    too_many = search_users(hull, http, per_page=101)
    assert too_many.status_code == 400
    window = search_users(hull, http, page=101, per_page=100)
    assert window.status_code == 400
    assert window.json() == {"message": "Result window is too large"}
    assert search_users(hull, http, page=100, per_page=100).status_code == 200


def test_search_range_filters_compare_as_datetimes(hull, http):
    for second in range(4):
        hull.upsert_user({"id": hid(second)})
        hull.advance(1)

    # Stored at 10:00:00 .. 10:00:03.
    def ids(query):
        response = search_users(hull, http, query)
        assert response.status_code == 200, response.text
        return [int(u["id"], 16) for u in response.json()["data"]]

    assert ids(since("gte", "2026-11-26T10:00:01Z")) == [1, 2, 3]
    assert ids(since("gt", "2026-11-26T10:00:01Z")) == [2, 3]
    assert ids(since("gt", "2026-11-26T10:00:01.500Z")) == [2, 3]
    assert ids(since("gte", "2026-11-26T11:00:01+01:00")) == [1, 2, 3]
    assert ids(since("lt", "2026-11-26T10:00:01Z")) == [0]
    assert ids(since("lte", "2026-11-26T10:00:01Z")) == [0, 1]
    both = {
        "bool": {"filter": [{"range": {"indexed_at": {"gt": "2026-11-26T10:00:00Z", "lt": "2026-11-26T10:00:03Z"}}}]}
    }
    assert ids(both) == [1, 2]
    assert ids({"match_all": {}}) == [0, 1, 2, 3]
    assert ids(None) == [0, 1, 2, 3]
    bad = search_users(hull, http, since("gte", "yesterday"))
    assert bad.status_code == 400


def test_search_terms_filters(hull, http):
    hull.upsert_user({"id": hid(1), "segment_ids": ["vip"]})
    hull.upsert_user({"id": hid(2), "segment_ids": ["trial", "vip"]})
    hull.upsert_user({"id": hid(3), "segment_ids": []})
    by_ids = search_users(hull, http, {"bool": {"filter": [{"terms": {"id": [hid(3), hid(1), "missing"]}}]}}).json()
    assert [u["id"] for u in by_ids["data"]] == [hid(1), hid(3)]
    by_segment = search_users(hull, http, {"bool": {"filter": [{"terms": {"segment_ids": ["trial"]}}]}}).json()
    assert [u["id"] for u in by_segment["data"]] == [hid(2)]
    combined = search_users(
        hull,
        http,
        {
            "bool": {
                "filter": [
                    {"terms": {"segment_ids": ["vip"]}},
                    {"terms": {"id": [hid(2), hid(3)]}},
                    {"range": {"indexed_at": {"gte": "2026-11-26T10:00:00Z"}}},
                ]
            }
        },
    ).json()
    assert [u["id"] for u in combined["data"]] == [hid(2)]
    unsupported = search_users(hull, http, {"bool": {"should": []}})
    assert unsupported.status_code == 400


def test_keyset_walk_over_seeded_users_sees_everyone_once(hull, http):
    # 150 users per indexed_at value and pages of 100: ties cross page boundaries,
    # so a walk that only moves its watermark would stall; it must also page on.
    summary = seed_synthetic(hull, 700, seed=3, users_per_tick=150, events_per_user=(0, 0))
    assert summary["users"] == 700
    seen, watermark, page_number = {}, "1970-01-01T00:00:00Z", 1
    while True:
        response = search_users(hull, http, since("gte", watermark), page=page_number, per_page=100)
        page = response.json()["data"]
        if not page:
            break
        for user in page:
            seen.setdefault(user["id"], user["indexed_at"])
        last = page[-1]["indexed_at"]
        page_number = page_number + 1 if last == watermark else 1
        if last != watermark and page[0]["indexed_at"] == last and len(page) == 100:
            page_number = 2  # the whole page shares the new watermark
        watermark = last
    assert sorted(seen) == sorted(hull.users)
    assert list(seen.values()) == sorted(seen.values())


def test_keyset_walk_with_must_not_on_seen_ids(hull, http):
    # The connector's way: always page 1 of indexed_at >= watermark, excluding the
    # ids already handled at exactly the watermark.
    seed_synthetic(hull, 700, seed=4, users_per_tick=150, events_per_user=(0, 0))
    seen, watermark, seen_at_watermark = [], None, set()
    while True:
        query = {
            "bool": {
                "filter": [{"range": {"indexed_at": {"gte": watermark}}}] if watermark else [],
                "must_not": [{"terms": {"id": sorted(seen_at_watermark)}}],
            }
        }
        page = search_users(hull, http, query, per_page=100).json()["data"]
        if not page:
            break
        seen.extend(u["id"] for u in page)
        last = page[-1]["indexed_at"]
        same = {u["id"] for u in page if u["indexed_at"] == last}
        seen_at_watermark = seen_at_watermark | same if last == watermark else same
        watermark = last
    assert len(seen) == 700 and set(seen) == set(hull.users)


def test_must_not_accepts_any_supported_clause(hull, http):
    hull.upsert_user({"id": hid(1), "segment_ids": ["vip"]})
    hull.upsert_user({"id": hid(2), "segment_ids": ["trial"]})
    hull.advance(5)
    hull.upsert_user({"id": hid(3), "segment_ids": ["vip", "trial"]})
    query = {"bool": {"must_not": [{"terms": {"segment_ids": ["trial"]}}]}}
    assert [u["id"] for u in search_users(hull, http, query).json()["data"]] == [hid(1)]
    nested = {
        "bool": {
            "must_not": {
                "bool": {
                    "filter": [
                        {"terms": {"segment_ids": ["vip"]}},
                        {"range": {"indexed_at": {"lt": "2026-11-26T10:00:05Z"}}},
                    ]
                }
            }
        }
    }
    assert [u["id"] for u in search_users(hull, http, nested).json()["data"]] == [hid(2), hid(3)]


def test_seeded_users_look_like_hull_user_reports(hull):
    seed_synthetic(hull, 50, seed=1)
    user = hull.find_user(external_id="u-7")
    assert len(user["id"]) == 24 and int(user["id"], 16) >= 0
    assert user["email"] and user["anonymous_ids"] == ["web:7"]
    assert 1 <= len(user["segment_ids"]) <= 3
    assert isinstance(user["account"], dict) and "domain" in user["account"]
    traits = {k: v for k, v in user.items() if k.startswith("traits_")}
    assert len(traits) == 25
    assert "traits_closeio/title" in traits and isinstance(traits["traits_tags"], list)
    assert user["indexed_at"].endswith("Z") and len(user["indexed_at"]) == 20
    assert hull.events and {e["event"] for e in hull.events} <= {"Signed Up", "Order Completed", "page"}
    again = HullSimulator()
    seed_synthetic(again, 50, seed=1)
    assert again.users == hull.users  # deterministic for a seed


# -- event search ----------------------------------------------------------------------


def events_query(*filters, page=1, per_page=100):
    return {
        "query": {"bool": {"filter": list(filters)}},
        "sort": {"created_at": "asc"},
        "raw": True,
        "page": page,
        "per_page": per_page,
    }


def test_event_search_filters_and_both_event_forms(hull, http):
    hull.upsert_user({"id": hid(1), "segment_ids": ["vip"]})
    hull.upsert_user({"id": hid(2)})
    hull.add_event(
        {
            "event_id": "e-b",
            "event": "Signed Up",
            "user_id": hid(1),
            "created_at": "2026-11-26T10:00:05Z",
            "properties": {"plan": "pro"},
        }
    )
    hull.add_event(
        {
            "event_id": "e-a",
            "event": "page",
            "user_id": hid(1),
            "created_at": "2026-11-26T10:00:05Z",
            "properties": {"url": "https://x.com/pricing", "referrer": None},
        }
    )
    hull.add_raw_event(
        {
            "event_id": "e-c",
            "event": "page",
            "user_id": hid(1),
            "created_at": "2026-11-26T10:00:09Z",
            "properties": {"url": "https://x.com/", "count": 2, "ok": True},
        }
    )
    hull.add_event({"event_id": "e-d", "event": "page", "user_id": hid(2), "created_at": "2026-11-26T10:00:01Z"})
    parent = {"has_parent": {"parent_type": "user_report", "query": {"terms": {"id": [hid(1)]}}}}
    response = http.post(f"{hull.api_url}/search/events", json=events_query(parent)).json()
    assert [e.get("event_id") or e.get("_id") for e in response["data"]] == ["e-a", "e-b", "e-c"]
    assert response["pagination"]["total"] == 3
    normal, raw = response["data"][0], response["data"][2]
    assert normal["properties"] == {"url": "https://x.com/pricing", "referrer": None}
    assert normal["event_source"] == "track" and normal["context"] == {}
    assert "event_id" not in raw and "properties" not in raw
    assert raw["props"][0] == {
        "field_name": "url",
        "text_value": "https://x.com/",
        "num_value": None,
        "bool_value": None,
        "date_value": None,
    }
    assert raw["props"][1]["num_value"] == 2 and raw["props"][2]["bool_value"] is True

    pages_only = events_query(
        parent, {"terms": {"event": ["page"]}}, {"range": {"created_at": {"gt": "2026-11-26T10:00:05Z"}}}
    )
    response = http.post(f"{hull.api_url}/search/events", json=pages_only).json()
    assert [e["_id"] for e in response["data"]] == ["e-c"]

    by_segment = {"has_parent": {"parent_type": "user_report", "query": {"terms": {"segment_ids": ["vip"]}}}}
    response = http.post(f"{hull.api_url}/search/events", json=events_query(by_segment)).json()
    assert response["pagination"]["total"] == 3
    everything = http.post(f"{hull.api_url}/search/events", json=events_query()).json()
    first = everything["data"][0]
    assert (first.get("event_id") or first.get("_id")) == "e-d"
    window = http.post(f"{hull.api_url}/search/events", json=events_query(page=200, per_page=100))
    assert window.status_code == 400

    # Terms filter the field they name: `event_id` never matches a raw event's `_id`.
    not_seen = {
        "query": {"bool": {"filter": [parent], "must_not": [{"terms": {"event_id": ["e-a", "e-c"]}}]}},
        "page": 1,
        "per_page": 10,
    }
    response = http.post(f"{hull.api_url}/search/events", json=not_seen).json()
    assert [e.get("event_id") or e.get("_id") for e in response["data"]] == ["e-b", "e-c"]
    not_seen["query"]["bool"]["must_not"].append({"terms": {"_id": ["e-a", "e-c"]}})
    response = http.post(f"{hull.api_url}/search/events", json=not_seen).json()
    assert [e["event_id"] for e in response["data"]] == ["e-b"]


# -- firehose ----------------------------------------------------------------------------


def test_firehose_applies_valid_traits_and_bumps_indexed_at(hull, http):
    hull.upsert_user({"id": hid(1), "external_id": "u-1", "email": "darth@example.com", "traits_customerio/id": "old"})
    hull.advance(60)
    messages = [
        traits_message(
            {"external_id": "u-1"},
            {"customerio/id": "u-1", "customerio/synced_at": "2026-11-26T10:01:00Z", "customerio/deleted_at": None},
        ),
        traits_message(
            {"email": "DARTH@example.com"}, {"customerio/created_at": {"operation": "setIfNull", "value": "first"}}
        ),
        traits_message(
            {"id": hid(1)},
            {
                "customerio/created_at": {"operation": "setIfNull", "value": "second"},
                "traits_coconuts": {"operation": "set", "value": 4},
            },
        ),
    ]
    response = firehose(hull, http, messages)
    assert response.status_code == 204
    assert response.content == b"" and response.headers["Content-Length"] == "0"
    user = hull.user(hid(1))
    assert user["traits_customerio/id"] == "u-1"
    assert user["traits_customerio/deleted_at"] is None
    assert user["traits_customerio/created_at"] == "first"
    assert user["traits_coconuts"] == 4
    assert user["indexed_at"] == "2026-11-26T10:01:00Z"
    assert len(hull.firehose_messages) == 3
    assert hull.firehose_messages[0]["claims"]["io.hull.asUser"] == {"external_id": "u-1"}
    assert all(m["user_id"] == hid(1) for m in hull.firehose_messages)


def test_firehose_creates_unknown_users_unless_told_not_to(hull, http):
    firehose(
        hull,
        http,
        [
            traits_message({"external_id": "new-1", "email": "n@x.com"}, {"a": 1}),
            traits_message({"external_id": "new-2"}, {"a": 2}, create=False),
        ],
    )
    created = hull.find_user(external_id="new-1")
    assert created["traits_a"] == 1 and created["email"] == "n@x.com" and len(created["id"]) == 24
    assert hull.find_user(external_id="new-2") is None


def test_firehose_rejects_whole_batch_on_bad_token(hull, http):
    hull.upsert_user({"id": hid(1), "external_id": "u-1"})
    good = traits_message({"external_id": "u-1"}, {"a": 1})
    for bad in (
        traits_message({"external_id": "u-1"}, {"a": 2}, secret="wrong" * 8),
        traits_message({"external_id": "u-1"}, {"a": 2}, issuer="f" * 24),
        traits_message({}, {"a": 2}),
        traits_message({"external_id": "u-1"}, {"a": 2}, **{"io.hull.subjectType": "account"}),
        {**good, "headers": {}},
    ):
        response = firehose(hull, http, [good, bad])
        assert response.status_code == 400
        assert response.json()["message"].startswith("invalid token")
    unsigned = jwt.encode(
        {"iss": CONNECTOR_ID, "io.hull.asUser": {"id": hid(1)}, "io.hull.subjectType": "user"},
        "x" * 64,
        algorithm="HS512",
    )
    response = firehose(hull, http, [{**good, "headers": {"Hull-Access-Token": unsigned}}])
    assert response.status_code == 400
    assert "traits_a" not in hull.user(hid(1)) and hull.firehose_messages == []


def test_firehose_batch_limit_and_shape(hull, http):
    message = traits_message({"external_id": "u-1"}, {"a": 1})
    assert firehose(hull, http, [message] * 101).status_code == 400
    assert firehose(hull, http, [message] * 100).status_code == 204
    assert http.post(hull.firehose_url, json={"nope": []}).status_code == 400
    assert firehose(hull, http, [{**message, "type": "screen"}]).status_code == 400


def test_firehose_track_is_deduplicated_on_event_id(hull, http):
    token = sign_user_token(CONNECTOR_ID, SECRET, {"external_id": "u-1"})

    def track(event_id):
        return {
            "type": "track",
            "headers": {"Hull-Access-Token": token},
            "body": {
                "event": "Email Opened",
                "event_id": event_id,
                "properties": {"email_subject": "hello"},
                "source": "customerio",
            },
        }

    first = track("01E4C8BES586H0A5PFK1ARB9JW")
    assert firehose(hull, http, [first, first]).status_code == 204
    assert firehose(hull, http, [first, track("01E4C8BES586H0A5PFK1ARB9JX")]).status_code == 204
    assert [e["event_id"] for e in hull.tracked_events] == ["01E4C8BES586H0A5PFK1ARB9JW", "01E4C8BES586H0A5PFK1ARB9JX"]
    assert hull.tracked_events[0]["body"]["properties"] == {"email_subject": "hello"}
    assert len(hull.firehose_messages) == 4
    assert sum(bool(m.get("duplicate")) for m in hull.firehose_messages) == 2


# -- faults, journal and control endpoints ---------------------------------------------------


def test_faults_apply_to_hull_too(hull, http):
    hull.faults.fail_next(1, status=500, path_contains="/firehose")
    assert search_users(hull, http).status_code == 200
    assert firehose(hull, http, []).status_code == 500
    assert firehose(hull, http, []).status_code == 204
    hull.faults.fail_next(1, drop=True)
    with pytest.raises(requests.ConnectionError):
        search_users(hull, http)
    entries = hull.journal()
    assert [e["status"] for e in entries] == [200, 500, 204, None]
    assert entries[2]["body"] == {"batch": [], "sentAt": "x"}


def test_seeding_and_state_over_http(hull, http):
    sim = hull.url + "/_sim"
    assert http.post(f"{sim}/segments", json=[{"id": "vip", "name": "VIP"}]).status_code == 200
    users = {
        "users": [{"id": hid(1), "email": "a@x.com", "segment_ids": ["vip"]}, {"id": hid(2), "external_id": "u-2"}]
    }
    assert http.post(f"{sim}/users", json=users).json()["upserted"] == 2
    assert http.post(f"{sim}/users", json={"email": "no-id"}).status_code == 400
    assert http.post(f"{sim}/advance", json={"seconds": 90}).json() == {"now": "2026-11-26T10:01:30Z"}
    http.post(
        f"{sim}/events", json=[{"event": "page", "user_id": hid(1)}, {"event": "page", "user_id": hid(2), "raw": True}]
    )
    token = http.post(f"{sim}/token", json={"as_user": {"id": hid(2)}, "sub": hid(2)}).json()["token"]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=CONNECTOR_ID)
    assert claims["sub"] == hid(2)
    state = http.get(f"{sim}/state").json()
    assert set(state["users"]) == {hid(1), hid(2)}
    assert state["segments"][0]["id"] == "vip" and state["events_count"] == 2
    assert state["now"] == "2026-11-26T10:01:30Z" and state["firehose_messages"] == 0
    assert "_id" in hull.events[1] and hull.events[1]["created_at"] == "2026-11-26T10:01:30Z"
    assert http.delete(f"{sim}/users/{hid(1)}").status_code == 200
    assert hid(1) not in hull.users and len(hull.events) == 1
    seeded = http.post(f"{sim}/seed", json={"n_users": 20, "seed": 5}).json()
    assert seeded["users"] == 20 and len(hull.users) == 21


def test_module_entry_point_serves_until_sigterm():
    root = Path(__file__).resolve().parents[3]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators",
            "hull",
            "--port",
            "0",
            "--connector-id",
            CONNECTOR_ID,
            "--connector-secret",
            SECRET,
            "--seed-users",
            "10",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("ready http://127.0.0.1:")
        url = line.split()[1]
        response = requests.get(f"{url}/_sim/state?summary=1", timeout=5)
        assert response.json()["users_count"] == 10
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sort_variants(hull, http):
    for n in (2, 1):
        hull.upsert_user({"id": hid(n)})

    def ids(sort):
        response = http.post(f"{hull.api_url}/search/user_reports", json={"sort": sort, "page": 1, "per_page": 10})
        return response.json()["data"] if response.ok else response.status_code

    assert [u["id"] for u in ids([{"indexed_at": "asc"}, {"id": "asc"}])] == [hid(1), hid(2)]
    assert [u["id"] for u in ids({"indexed_at": {"order": "desc"}})] == [hid(2), hid(1)]
    assert ids({"email": "asc"}) == 400
    assert ids([{"indexed_at": "asc"}, {"id": "desc"}]) == 400


def test_clock_can_be_set_over_http(hull, http):
    response = http.post(f"{hull.url}/_sim/advance", json={"now": "2027-03-01T08:00:00Z", "seconds": 5})
    assert response.json() == {"now": "2027-03-01T08:00:05Z"}
    hull.upsert_user({"id": hid(1)})
    assert hull.user(hid(1))["indexed_at"] == "2027-03-01T08:00:05Z"
    assert http.post(f"{hull.url}/_sim/advance", json={"now": "soon"}).status_code == 400


def _pyjwt_verdict(token: str):
    try:
        return jwt.decode(
            token, SECRET, algorithms=["HS256"], issuer=CONNECTOR_ID, leeway=60, options={"require": ["iss"]}
        )
    except jwt.PyJWTError as exc:
        return type(exc)


def _sim_verdict(hull, token: str):
    try:
        return hull._verify_token(token)
    except jwt.PyJWTError as exc:
        return type(exc)


def test_firehose_token_check_agrees_with_pyjwt(hull):
    """The simulator checks tokens of the usual shape with hmac directly (PyJWT is ~50 µs a
    token): every token gets the verdict PyJWT gives it, claims included."""
    from connectors.hull import TokenSigner, token_claims

    now = int(datetime.now(timezone.utc).timestamp())
    signer = TokenSigner(SECRET)
    good = signer.sign(token_claims(CONNECTOR_ID, {"external_id": "u-1", "email": "ä@example.com"}, "hid-1"))
    header, payload, signature = good.split(".")
    tokens = {
        "connector's own, non-ASCII claims": good,
        "pyjwt, create false": sign_user_token(CONNECTOR_ID, SECRET, {"email": "a@b.c"}, sub="x", create=False),
        "tampered signature": f"{header}.{payload}.{signature[:-2]}AA",
        "tampered payload": f"{header}.{payload[:-2]}AA.{signature}",
        "wrong secret": TokenSigner("another-secret-long-enough-for-hs256-0123").sign(
            token_claims(CONNECTOR_ID, {"external_id": "u-1"})
        ),
        "wrong issuer": signer.sign(token_claims("f" * 24, {"external_id": "u-1"})),
        "no issuer": jwt.encode({"iat": now, "io.hull.asUser": {"id": "1"}}, SECRET, algorithm="HS256"),
        "iat two minutes ahead": jwt.encode({"iss": CONNECTOR_ID, "iat": now + 120}, SECRET, algorithm="HS256"),
        "iat 30 s ahead (leeway)": jwt.encode({"iss": CONNECTOR_ID, "iat": now + 30}, SECRET, algorithm="HS256"),
        "iat not a number": jwt.encode({"iss": CONNECTOR_ID, "iat": "soon"}, SECRET, algorithm="HS256"),
        "expired": jwt.encode({"iss": CONNECTOR_ID, "iat": now, "exp": now - 600}, SECRET, algorithm="HS256"),
        "other header": jwt.encode({"iss": CONNECTOR_ID, "iat": now}, SECRET, algorithm="HS256", headers={"kid": "k"}),
        "HS512": jwt.encode({"iss": CONNECTOR_ID, "iat": now}, SECRET * 2, algorithm="HS512"),
        "not a token": "not-a-jwt",
    }
    for name, token in tokens.items():
        assert _sim_verdict(hull, token) == _pyjwt_verdict(token), name
    assert _sim_verdict(hull, good)["io.hull.asUser"] == {"external_id": "u-1", "email": "ä@example.com"}
