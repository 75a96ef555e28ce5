"""The Customer.io simulator over real HTTP (no mocks)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import requests

from simulators import CustomerIoSimulator

ULID_A = "01E4C8BES586H0A5PFK1ARB9JW"
ULID_B = "01E4C8BES586H0A5PFK1ARB9JX"


@pytest.fixture(scope="module")
def server():
    with CustomerIoSimulator(site_id="site", api_key="key") as sim:
        yield sim


@pytest.fixture
def cio(server):
    server.reset()
    server.record_journal = True
    return server


@pytest.fixture
def http():
    with requests.Session() as session:
        session.auth = ("site", "key")
        yield session


def customer_url(sim, identifier: str, suffix: str = "") -> str:
    return f"{sim.url}/api/v1/customers/{quote(identifier, safe='')}{suffix}"


# -- auth and account endpoints ------------------------------------------------------


def test_region_and_auth_answer_with_valid_credentials(cio, http):
    region = http.get(f"{cio.url}/api/v1/accounts/region")
    assert region.status_code == 200
    assert region.json() == {"url": cio.url, "region": "us", "environment_id": 1}
    auth = http.get(f"{cio.url}/auth")
    assert auth.json() == {"meta": {"message": "nice credentials."}}


@pytest.mark.parametrize("auth", [None, ("site", "wrong"), ("other", "key")])
def test_bad_or_missing_credentials_get_401(cio, auth):
    response = requests.put(customer_url(cio, "u-1"), json={"a": 1}, auth=auth)
    assert response.status_code == 401
    assert response.json() == {"meta": {"error": "Unauthorized request"}}
    assert cio.people == {}


# -- identify ------------------------------------------------------------------------


def test_identify_creates_merges_and_null_removes(cio, http):
    assert http.put(customer_url(cio, "u-1"), json={"email": "a@x.com", "plan": "pro"}).json() == {}
    http.put(customer_url(cio, "u-1"), json={"plan": None, "seats": 3, "_timestamp": 1700000000})
    assert cio.people["u-1"] == {"email": "a@x.com", "seats": 3}
    assert cio.people_calls["u-1"] == 2


def test_identifier_is_url_decoded(cio, http):
    response = http.put(customer_url(cio, "a b/c@x"), json={"k": "v"})
    assert response.status_code == 200
    assert cio.people == {"a b/c@x": {"k": "v"}}
    # An unencoded slash makes another path: not an identify call at all.
    assert http.put(f"{cio.url}/api/v1/customers/a b/c@x", json={}).status_code == 404


def test_update_only_does_not_create(cio, http):
    assert http.put(customer_url(cio, "ghost"), json={"_update": True, "a": 1}).status_code == 200
    assert "ghost" not in cio.people
    http.put(customer_url(cio, "ghost"), json={"a": 1})
    http.put(customer_url(cio, "ghost"), json={"_update": True, "b": 2})
    assert cio.people["ghost"] == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "attributes, message",
    [
        ({f"a{i}": i for i in range(301)}, "cannot identify more than 300 attributes in one request"),
        ({"n" * 151: 1}, "attribute name cannot be longer than 150 bytes"),
        ({"bio": "é" * 501}, "value for attribute 'bio' cannot be longer than 1000 bytes"),
        ({"tags": ["x" * 300] * 4}, "value for attribute 'tags' cannot be longer than 1000 bytes"),
        ({"_secret": 1}, "attribute name '_secret' is reserved"),
    ],
)
def test_identify_limits_answer_400_with_customerio_messages(cio, http, attributes, message):
    response = http.put(customer_url(cio, "u-1"), json=attributes)
    assert response.status_code == 400
    assert response.json() == {"meta": {"error": message}}
    assert cio.people == {}


def test_identify_limits_boundaries_are_accepted(cio, http):
    attributes = {f"a{i}": i for i in range(300)}
    attributes.update({"n" * 150: "é" * 500, "_timestamp": 1, "_update": False})
    attributes.pop("a0")
    attributes.pop("a1")  # 298 + the long name = 299 countable attributes
    assert http.put(customer_url(cio, "i" * 150), json=attributes).status_code == 200


def test_identifier_longer_than_150_bytes_is_rejected(cio, http):
    response = http.put(customer_url(cio, "é" * 76), json={"a": 1})
    assert response.status_code == 400
    assert "150 bytes" in response.json()["meta"]["error"]


def test_configurable_attribute_limit():
    with CustomerIoSimulator(max_attributes_per_request=30) as sim:
        response = requests.put(customer_url(sim, "u"), json={f"a{i}": i for i in range(31)}, auth=("site", "key"))
    assert response.json() == {"meta": {"error": "cannot identify more than 30 attributes in one request"}}


def test_invalid_json_is_400(cio, http):
    response = http.put(customer_url(cio, "u-1"), data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"meta": {"error": "invalid JSON"}}


def test_delete_then_identify_recreates(cio, http):
    http.put(customer_url(cio, "u-1"), json={"a": 1})
    assert http.delete(customer_url(cio, "u-1")).status_code == 200
    assert "u-1" not in cio.people and "u-1" in cio.deleted
    http.put(customer_url(cio, "u-1"), json={"b": 2})
    assert cio.people["u-1"] == {"b": 2} and "u-1" not in cio.deleted


# -- events --------------------------------------------------------------------------


def test_event_is_stored_and_deduplicated_on_ulid(cio, http):
    event = {"name": "Order Completed", "id": ULID_A, "timestamp": 1700000000, "data": {"revenue": 12.5}}
    assert http.post(customer_url(cio, "u-1", "/events"), json=event).status_code == 200
    assert http.post(customer_url(cio, "u-1", "/events"), json=event).status_code == 200
    lowercase_repeat = {**event, "id": ULID_A.lower()}
    assert http.post(customer_url(cio, "u-1", "/events"), json=lowercase_repeat).status_code == 200
    http.post(customer_url(cio, "u-1", "/events"), json={**event, "id": ULID_B})
    assert [e["id"] for e in cio.events] == [ULID_A, ULID_B]
    assert cio.events[0] == {
        "customer": "u-1",
        "anonymous_id": None,
        "name": "Order Completed",
        "type": "event",
        "timestamp": 1700000000,
        "id": ULID_A,
        "data": {"revenue": 12.5},
    }
    assert cio.counts["duplicate_events"] == 2


def test_events_without_id_are_never_deduplicated(cio, http):
    for _ in range(2):
        http.post(customer_url(cio, "u-1", "/events"), json={"name": "page", "type": "page"})
    assert len(cio.events) == 2


@pytest.mark.parametrize(
    "event, message",
    [
        ({}, "event name is required"),
        ({"name": "x" * 101}, "event name cannot be longer than 100 bytes"),
        ({"name": "e", "data": {"blob": "x" * 100_000}}, "event data cannot be longer than 100000 bytes"),
        ({"name": "e", "type": "track"}, "type must be one of event, page, screen"),
        ({"name": "e", "id": "not-a-ulid"}, "event id must be a valid ULID"),
        ({"name": "e", "id": "81E4C8BES586H0A5PFK1ARB9JW"}, "event id must be a valid ULID"),
        ({"name": "e", "timestamp": "2026-11-26T10:00:00Z"}, "timestamp must be a unix timestamp in seconds"),
    ],
)
def test_invalid_events_are_400(cio, http, event, message):
    response = http.post(customer_url(cio, "u-1", "/events"), json=event)
    assert response.status_code == 400
    assert response.json() == {"meta": {"error": message}}
    assert cio.events == []


def test_anonymous_events(cio, http):
    missing = http.post(f"{cio.url}/api/v1/events", json={"name": "page", "type": "page"})
    assert missing.status_code == 400
    ok = http.post(
        f"{cio.url}/api/v1/events",
        json={
            "name": "https://x.com/pricing",
            "type": "page",
            "anonymous_id": "web:16",
            "data": {"referrer": "https://google.com"},
        },
    )
    assert ok.status_code == 200
    assert cio.events == [
        {
            "customer": None,
            "anonymous_id": "web:16",
            "name": "https://x.com/pricing",
            "type": "page",
            "timestamp": None,
            "id": None,
            "data": {"referrer": "https://google.com"},
        }
    ]


def test_original_connector_bug_path_is_404(cio, http):
    response = http.post(f"{cio.url}/api/v1/customers/events", json={"name": "x"})
    assert response.status_code == 404
    assert response.json() == {"meta": {"error": "not found"}}


# -- v2 batch ------------------------------------------------------------------------


def test_batch_applies_valid_entries_and_reports_invalid_ones(cio, http):
    batch = [
        {"type": "person", "identifiers": {"id": "42"}, "action": "identify", "attributes": {"first_name": "Jane"}},
        {"type": "person", "identifiers": {"id": "42", "email": "j@x.com"}, "action": "identify"},
        {
            "type": "person",
            "identifiers": {"id": "42"},
            "action": "event",
            "id": ULID_A,
            "name": "purchase",
            "attributes": {"price": 29.99},
        },
        {
            "type": "person",
            "identifiers": {"email": "j@x.com"},
            "action": "identify",
            "attributes": {"bio": "x" * 1001},
        },
        {
            "type": "person",
            "identifiers": {"cio_id": "a1"},
            "action": "page",
            "name": "https://example.com/pricing",
            "attributes": {"referrer": "https://example.com"},
        },
        {"type": "person", "identifiers": {"id": "7"}, "action": "merge"},
        {
            "type": "person",
            "identifiers": {"id": "8"},
            "action": "identify",
            "attributes": {f"a{i}": "x" * 200 for i in range(170)},
        },
        {"type": "person", "identifiers": {"id": "9"}, "action": "delete"},
    ]
    response = http.post(f"{cio.url}/api/v2/batch", json={"batch": batch})
    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [e["batch_index"] for e in errors] == [1, 3, 5, 6]
    assert errors[0]["field"] == "identifiers"
    assert errors[1]["message"] == "value for attribute 'bio' cannot be longer than 1000 bytes"
    assert errors[3]["reason"] == "too_large"
    assert all(set(e) == {"batch_index", "reason", "field", "message"} for e in errors)
    assert cio.people == {"42": {"first_name": "Jane"}}
    assert [(e["customer"], e["type"], e["data"]) for e in cio.events] == [
        ("42", "event", {"price": 29.99}),
        ("cio_a1", "page", {"referrer": "https://example.com"}),
    ]
    assert "9" in cio.deleted


def test_batch_all_valid_is_200_and_dedupes_with_v1(cio, http):
    http.post(customer_url(cio, "u-1", "/events"), json={"name": "e", "id": ULID_A})
    entry = {"type": "person", "identifiers": {"id": "u-1"}, "action": "event", "id": ULID_A, "name": "e"}
    response = http.post(f"{cio.url}/api/v2/batch", json={"batch": [entry]})
    assert (response.status_code, response.json()) == (200, {})
    assert len(cio.events) == 1


def test_batch_over_500kb_is_rejected_whole(cio, http):
    entry = {"type": "person", "identifiers": {"id": "1"}, "action": "identify", "attributes": {"a": "x" * 900}}
    batch = [entry] * 600  # ~570 KB
    assert len(json.dumps({"batch": batch})) > 500 * 1024
    response = http.post(f"{cio.url}/api/v2/batch", json={"batch": batch})
    assert response.status_code == 400
    assert "meta" in response.json()
    assert cio.people == {}


@pytest.mark.parametrize("body", [{}, {"batch": {}}, [1, 2]])
def test_malformed_batch_is_400(cio, http, body):
    assert http.post(f"{cio.url}/api/v2/batch", json=body).status_code == 400


# -- faults ----------------------------------------------------------------------------


def test_fail_next_then_recover(cio, http):
    cio.faults.fail_next(2, status=503, retry_after=3)
    first = http.put(customer_url(cio, "u-1"), json={"a": 1})
    second = http.put(customer_url(cio, "u-1"), json={"a": 1})
    third = http.put(customer_url(cio, "u-1"), json={"a": 1})
    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 200]
    assert first.headers["Retry-After"] == "3"
    assert cio.people_calls["u-1"] == 1  # failed calls were not applied


def test_fail_next_with_path_filter_and_custom_body(cio, http):
    cio.faults.fail_next(1, status=429, body={"meta": {"error": "slow down"}}, path_contains="a b/c")
    assert http.put(customer_url(cio, "other"), json={}).status_code == 200
    response = http.put(customer_url(cio, "a b/c"), json={})
    assert (response.status_code, response.json()) == (429, {"meta": {"error": "slow down"}})


def test_error_rate_is_deterministic_for_a_seed(cio, http):
    def statuses():
        cio.faults.error_rate(0.5, statuses=(429, 500), seed=42)
        return [http.put(customer_url(cio, f"u-{i}"), json={}).status_code for i in range(40)]

    first, second = statuses(), statuses()
    assert first == second
    assert {200, 429, 500} == set(first)


def test_dropped_connection_raises_connection_error(cio, http):
    cio.faults.fail_next(1, drop=True)
    with pytest.raises(requests.ConnectionError):
        http.put(customer_url(cio, "u-1"), json={"a": 1})
    assert http.put(customer_url(cio, "u-1"), json={"a": 1}).status_code == 200
    cio.faults.drop_rate(1.0)
    with pytest.raises(requests.ConnectionError):
        http.put(customer_url(cio, "u-2"), json={"a": 1})
    assert "u-2" not in cio.people
    assert cio.journal()[-1]["status"] is None


def test_down_answers_503_but_control_endpoints_work(cio, http):
    cio.faults.down(True)
    assert http.get(f"{cio.url}/api/v1/accounts/region").status_code == 503
    assert http.get(f"{cio.url}/healthz").status_code == 200
    assert http.post(f"{cio.url}/_sim/faults", json={"op": "down", "on": False}).status_code == 200
    assert http.get(f"{cio.url}/api/v1/accounts/region").status_code == 200


def test_force_rule_is_permanent_until_cleared(cio, http):
    cio.faults.force("bad-customer", 400, body={"meta": {"error": "forced"}})
    for _ in range(3):
        assert http.put(customer_url(cio, "bad-customer"), json={}).status_code == 400
    assert http.put(customer_url(cio, "good"), json={}).status_code == 200
    cio.faults.clear()
    assert http.put(customer_url(cio, "bad-customer"), json={}).status_code == 200


def test_latency_delays_answers(cio, http):
    import time

    cio.faults.latency(0.05)
    started = time.perf_counter()
    http.get(f"{cio.url}/auth")
    assert time.perf_counter() - started >= 0.05


def test_faults_driven_over_http(cio, http):
    ops = [{"op": "fail_next", "n": 1, "status": 500}, {"op": "error_rate", "rate": 0.0, "statuses": [503]}]
    for op in ops:
        assert http.post(f"{cio.url}/_sim/faults", json=op).status_code == 200
    assert http.get(f"{cio.url}/auth").status_code == 500
    assert http.post(f"{cio.url}/_sim/faults", json={"op": "explode"}).status_code == 400
    assert http.post(f"{cio.url}/_sim/faults", json={"op": "down", "bogus": 1}).status_code == 400


# -- journal and control endpoints --------------------------------------------------------


def test_journal_records_requests_but_not_control_calls(cio, http):
    http.put(customer_url(cio, "a b"), json={"x": 1}, headers={"Host": "track.customer.io"})
    http.get(f"{cio.url}/auth?check=1")
    http.get(f"{cio.url}/_sim/state")
    entries = http.get(f"{cio.url}/_sim/journal").json()
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("PUT", "/api/v1/customers/a%20b", 200),
        ("GET", "/auth", 200),
    ]
    assert entries[0]["body"] == {"x": 1} and entries[0]["host"] == "track.customer.io"
    assert entries[1]["query"] == "check=1"
    assert http.get(f"{cio.url}/_sim/journal?since=1").json() == entries[1:]
    assert cio.journal() == entries


def test_journal_without_bodies(cio, http):
    cio.record_journal = False
    http.put(customer_url(cio, "u"), json={"x": 1})
    (entry,) = cio.journal()
    assert entry["body"] is None and entry["status"] == 200 and entry["method"] == "PUT"
    cio.clear_journal()
    assert cio.journal() == []


def test_state_and_reset_over_http(cio, http):
    http.put(customer_url(cio, "u-1"), json={"a": 1})
    http.delete(customer_url(cio, "u-2"))
    state = http.get(f"{cio.url}/_sim/state").json()
    assert state["people"] == {"u-1": {"a": 1}} and state["deleted"] == ["u-2"]
    assert state["counts"]["identify"] == 1
    summary = http.get(f"{cio.url}/_sim/state?summary=1").json()
    assert summary["people_count"] == 1 and "people" not in summary
    assert http.post(f"{cio.url}/_sim/reset").status_code == 200
    assert cio.people == {} and cio.journal() == []


def test_keep_alive_reuses_one_connection(cio, http):
    before = cio.connections_accepted
    for i in range(20):
        assert http.put(customer_url(cio, f"u-{i}"), json={"a": i}).status_code == 200
    assert cio.connections_accepted - before == 1
    assert http.get(f"{cio.url}/_sim/state?summary=1").json()["connections_accepted"] >= 1


def test_accepted_sockets_have_tcp_nodelay(cio, http):
    import socket

    http.get(f"{cio.url}/auth")  # leaves the keep-alive connection open
    connections = list(cio._httpd._connections)
    assert connections
    assert all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in connections)
