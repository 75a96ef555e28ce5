"""The Customer.io simulator's people semantics over real HTTP: merge, suppress/unsuppress,
`_update`, empty-string removal, anonymous_id linking, `_timestamp`, and the v2 equivalents;
plus the poisoned-batch-entry switch."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import requests

from simulators import CustomerIoSimulator

ULID_A = "01E4C8BES586H0A5PFK1ARB9JW"
ULID_B = "01E4C8BES586H0A5PFK1ARB9JX"
ULID_C = "01E4C8BES586H0A5PFK1ARB9JY"


@pytest.fixture(scope="module")
def server():
    with CustomerIoSimulator(site_id="site", api_key="key") as sim:
        yield sim


@pytest.fixture
def cio(server):
    server.reset()
    return server


@pytest.fixture
def http():
    with requests.Session() as session:
        session.auth = ("site", "key")
        yield session


def customer_url(sim, identifier: str, suffix: str = "") -> str:
    return f"{sim.url}/api/v1/customers/{quote(identifier, safe='')}{suffix}"


def identify(sim, http, identifier, **attributes):
    response = http.put(customer_url(sim, identifier), json=attributes)
    assert response.status_code == 200, response.text
    return response


def event(sim, http, identifier, name, ulid=None):
    body = {"name": name, **({"id": ulid} if ulid else {})}
    return http.post(customer_url(sim, identifier, "/events"), json=body)


def merge(sim, http, primary, secondary):
    return http.post(f"{sim.url}/api/v1/merge_customers", json={"primary": primary, "secondary": secondary})


def batch(sim, http, *entries):
    return http.post(f"{sim.url}/api/v2/batch", json={"batch": list(entries)})


def person(identifier, action, **extra):
    return {"type": "person", "identifiers": {"id": identifier}, "action": action, **extra}


# -- merge (v1) ------------------------------------------------------------------------


def test_merge_fills_the_primary_moves_events_and_deletes_the_secondary(cio, http):
    identify(cio, http, "u-1", email="a@x.com", plan="pro", city=None)
    identify(cio, http, "u-2", email="b@x.com", plan="free", city="Paris", seats=3)
    event(cio, http, "u-1", "one", ULID_A)
    event(cio, http, "u-2", "two", ULID_B)
    response = merge(cio, http, {"id": "u-1"}, {"id": "u-2"})
    assert (response.status_code, response.json()) == (200, {})
    # The primary keeps its values; the secondary only fills what the primary lacks.
    assert cio.people == {"u-1": {"email": "a@x.com", "plan": "pro", "city": "Paris", "seats": 3}}
    assert "u-2" in cio.deleted
    assert [e["name"] for e in cio.events_for("u-1")] == ["one", "two"]
    assert cio.events_for("u-2") == []
    assert cio.merges == [
        {
            "primary": {"id": "u-1"},
            "secondary": {"id": "u-2"},
            "applied": True,
            "primary_key": "u-1",
            "secondary_key": "u-2",
        }
    ]
    assert cio.counts["merge"] == 1
    # Any later call for the secondary's id makes a new person: the merge removed it.
    identify(cio, http, "u-2", plan="again")
    assert cio.people["u-2"] == {"plan": "again"} and "u-2" not in cio.deleted


def test_merge_by_email_and_cio_id(cio, http):
    identify(cio, http, "u-1", email="Jane@X.com")
    identify(cio, http, "cio_abc", first_name="Jane")
    assert merge(cio, http, {"email": "jane@x.com"}, {"cio_id": "abc"}).status_code == 200
    assert cio.people == {"u-1": {"email": "Jane@X.com", "first_name": "Jane"}}
    assert cio.deleted == {"cio_abc"}


@pytest.mark.parametrize(
    "primary, secondary",
    [
        ({"id": "ghost"}, {"id": "u-2"}),  # documented: the primary must already exist
        ({"id": "u-1"}, {"id": "ghost"}),  # undocumented: an unknown secondary changes nothing
        ({"id": "u-1"}, {"id": "u-1"}),
        ({"id": "u-1"}, {"email": "a@x.com"}),  # the same person by another identifier
    ],
)
def test_merge_that_cannot_apply_is_a_200_no_op(cio, http, primary, secondary):
    identify(cio, http, "u-1", email="a@x.com", plan="pro")
    identify(cio, http, "u-2", plan="free", seats=2)
    before = {k: dict(v) for k, v in cio.people.items()}
    assert merge(cio, http, primary, secondary).json() == {}
    assert cio.people == before and cio.deleted == set()
    assert cio.merges[-1]["applied"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"primary": {"id": "u-1"}},
        {"secondary": {"id": "u-2"}},
        {"primary": {"id": "u-1", "email": "a@x.com"}, "secondary": {"id": "u-2"}},
        {"primary": {"id": "u-1"}, "secondary": {"phone": "+14155552671"}},
        {"primary": {"id": ""}, "secondary": {"id": "u-2"}},
        {"primary": "u-1", "secondary": {"id": "u-2"}},
        {"primary": {"id": "u-1"}, "secondary": {"id": "x" * 151}},
    ],
)
def test_malformed_merge_is_400(cio, http, body):
    identify(cio, http, "u-1", a=1)
    identify(cio, http, "u-2", b=2)
    response = http.post(f"{cio.url}/api/v1/merge_customers", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"meta"} and response.json()["meta"]["error"]
    assert set(cio.people) == {"u-1", "u-2"} and cio.merges == []


# -- suppress / unsuppress (v1) ----------------------------------------------------------


def test_suppress_deletes_and_blocks_the_identifiers_until_unsuppressed(cio, http):
    identify(cio, http, "u-1", email="Jane@X.com", id="u-1", plan="pro")
    event(cio, http, "u-1", "before", ULID_A)
    assert http.post(customer_url(cio, "u-1", "/suppress")).json() == {}
    assert "u-1" not in cio.people and "u-1" in cio.deleted
    assert {"u-1", "Jane@X.com", "jane@x.com"} <= cio.suppressed
    assert cio.is_suppressed("u-1") and cio.is_suppressed("JANE@x.com")

    # Every later call naming a suppressed identifier is answered 200 and ignored.
    identify(cio, http, "u-1", plan="back")
    identify(cio, http, "jane@x.com", first_name="Jane")
    identify(cio, http, "u-9", email="jane@x.com")
    assert event(cio, http, "u-1", "after", ULID_B).status_code == 200
    assert cio.people == {} and [e["name"] for e in cio.events] == ["before"]
    assert cio.counts["suppressed_ignored"] == 4

    # Unsuppressing one identifier frees all those suppressed with it; the person is not
    # restored: identifying again creates a new profile without the old attributes.
    assert http.post(customer_url(cio, "jane@x.com", "/unsuppress")).json() == {}
    assert cio.suppressed == set()
    identify(cio, http, "u-1", first_name="Jane")
    assert cio.people == {"u-1": {"first_name": "Jane"}}
    assert (cio.counts["suppress"], cio.counts["unsuppress"]) == (1, 1)


def test_suppressing_an_unknown_identifier_blocks_it(cio, http):
    assert http.post(customer_url(cio, "never-seen", "/suppress")).status_code == 200
    identify(cio, http, "never-seen", a=1)
    assert cio.people == {} and cio.suppressed == {"never-seen"}
    assert http.post(customer_url(cio, "other", "/unsuppress")).status_code == 200  # no-op
    assert cio.suppressed == {"never-seen"}


def test_suppress_needs_credentials_and_a_valid_identifier(cio, http):
    assert requests.post(customer_url(cio, "u-1", "/suppress")).status_code == 401
    assert http.post(customer_url(cio, "é" * 76, "/suppress")).status_code == 400
    assert http.post(customer_url(cio, "u-1", "/suppress"), json={}).status_code == 200


def test_merge_naming_a_suppressed_person_is_ignored(cio, http):
    identify(cio, http, "u-1", a=1)
    identify(cio, http, "u-2", b=2)
    http.post(customer_url(cio, "u-2", "/suppress"))
    assert merge(cio, http, {"id": "u-1"}, {"id": "u-2"}).status_code == 200
    assert cio.people == {"u-1": {"a": 1}} and cio.merges[-1]["applied"] is False


# -- identify: _update, "", anonymous_id, _timestamp --------------------------------------


def test_empty_string_removes_an_attribute_and_is_never_stored(cio, http):
    identify(cio, http, "u-1", plan="pro", city="Paris", zero=0, no=False)
    identify(cio, http, "u-1", plan="", city=None, seats="")
    assert cio.people["u-1"] == {"zero": 0, "no": False}
    identify(cio, http, "u-2", plan="")
    assert cio.people["u-2"] == {}


def test_update_only_never_creates_and_never_undoes_a_delete(cio, http):
    identify(cio, http, "ghost", _update=True, a=1)
    assert "ghost" not in cio.people
    identify(cio, http, "u-1", a=1)
    identify(cio, http, "u-1", _update=True, b=2, a="")
    assert cio.people["u-1"] == {"b": 2}
    http.delete(customer_url(cio, "u-1"))
    identify(cio, http, "u-1", _update=True, c=3)
    assert "u-1" not in cio.people and "u-1" in cio.deleted
    identify(cio, http, "u-1", _update=False, c=3)  # only `true` means update-only
    assert cio.people["u-1"] == {"c": 3}


def test_anonymous_id_links_earlier_anonymous_events_to_the_person(cio, http):
    for name, anonymous_id, ulid in (
        ("visit", "web:1", ULID_A),
        ("visit", "web:2", ULID_B),
        ("pricing", "web:1", ULID_C),
    ):
        assert (
            http.post(
                f"{cio.url}/api/v1/events", json={"name": name, "anonymous_id": anonymous_id, "id": ulid}
            ).status_code
            == 200
        )
    assert cio.events_for("u-1") == []
    identify(cio, http, "u-1", email="a@x.com", anonymous_id="web:1")
    linked = cio.events_for("u-1")
    assert [(e["name"], e["anonymous_id"], e["customer"]) for e in linked] == [
        ("visit", "web:1", "u-1"),
        ("pricing", "web:1", "u-1"),
    ]
    assert [e["customer"] for e in cio.events if e["anonymous_id"] == "web:2"] == [None]
    assert cio.people["u-1"]["anonymous_id"] == "web:1"  # the attribute itself is kept
    state = http.get(f"{cio.url}/_sim/state").json()
    assert [e["customer"] for e in state["events"]] == ["u-1", None, "u-1"]
    # Linked once: a later identify of someone else with the same anonymous_id takes nothing.
    identify(cio, http, "u-2", anonymous_id="web:1")
    assert cio.events_for("u-2") == [] and len(cio.events_for("u-1")) == 2


def test_timestamp_orders_updates_and_is_not_stored(cio, http):
    identify(cio, http, "u-1", plan="gold", seats=5, _timestamp=1_700_000_100)
    # An update stamped earlier arrives later: it cannot overwrite what the later one set,
    # but sets what the later one did not touch.
    identify(cio, http, "u-1", plan="silver", city="Paris", _timestamp=1_700_000_000)
    assert cio.people["u-1"] == {"plan": "gold", "seats": 5, "city": "Paris"}
    assert cio.updated_at["u-1"] == 1_700_000_100
    identify(cio, http, "u-1", plan="", _timestamp=1_700_000_200)
    assert "plan" not in cio.people["u-1"] and cio.updated_at["u-1"] == 1_700_000_200
    identify(cio, http, "u-1", plan="platinum")  # unstamped: always applies
    assert cio.people["u-1"]["plan"] == "platinum" and "_timestamp" not in cio.people["u-1"]
    bad = http.put(customer_url(cio, "u-1"), json={"a": 1, "_timestamp": "yesterday"})
    assert bad.status_code == 400
    assert bad.json() == {"meta": {"error": "_timestamp must be a unix timestamp in seconds"}}


# -- v2 batch ----------------------------------------------------------------------------


def test_batch_person_actions(cio, http):
    identify(cio, http, "u-1", email="a@x.com", plan="pro", city="Paris")
    identify(cio, http, "u-2", plan="free", seats=2)
    event(cio, http, "u-2", "two", ULID_A)
    response = batch(
        cio,
        http,
        person("u-1", "identify", attributes={"city": "", "_update": True}),
        person("ghost", "identify", attributes={"a": 1, "_update": True}),
        {"type": "person", "action": "merge", "primary": {"id": "u-1"}, "secondary": {"id": "u-2"}},
        person("u-3", "identify", attributes={"x": 1}),
        person("u-3", "suppress"),
        person("u-3", "identify", attributes={"x": 2}),
        person("u-4", "suppress"),
        person("u-4", "unsuppress"),
        person("u-4", "identify", attributes={"y": 1}),
        person("u-1", "identify", timestamp=1_700_000_000, attributes={"plan": "late"}),
    )
    assert (response.status_code, response.json()) == (200, {})
    assert cio.people == {"u-1": {"email": "a@x.com", "plan": "late", "seats": 2}, "u-4": {"y": 1}}
    assert cio.deleted == {"u-2", "u-3"} and cio.suppressed == {"u-3"}
    assert [e["customer"] for e in cio.events] == ["u-1"]
    assert cio.updated_at == {"u-1": 1_700_000_000}  # applied: no later stamp on `plan`
    assert cio.people_calls["ghost"] == 1 and cio.counts["batch_entries"] == 10


def test_batch_timestamp_orders_updates(cio, http):
    response = batch(
        cio,
        http,
        person("u-1", "identify", timestamp=200, attributes={"plan": "new"}),
        person("u-1", "identify", timestamp=100, attributes={"plan": "old", "a": 1}),
        person("u-1", "identify", attributes={"_timestamp": 150, "plan": "mid"}),
    )
    assert response.status_code == 200
    assert cio.people["u-1"] == {"plan": "new", "a": 1}


def test_batch_invalid_person_actions_are_207_entries(cio, http):
    response = batch(
        cio,
        http,
        {"type": "person", "action": "merge", "primary": {"id": "u-1"}},
        {"type": "person", "action": "merge", "primary": {"id": "u-1", "email": "a@x.com"}, "secondary": {"id": "u-2"}},
        {"type": "person", "action": "suppress", "identifiers": {"id": "u-1", "email": "a@x.com"}},
        person("u-1", "identify", timestamp="now", attributes={"a": 1}),
        person("u-1", "unsuppress"),
        person("u-1", "identify", attributes={"a": 1}),
    )
    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [(e["batch_index"], e["field"]) for e in errors] == [
        (0, "secondary"),
        (1, "primary"),
        (2, "identifiers"),
        (3, "timestamp"),
    ]
    assert cio.people == {"u-1": {"a": 1}}


# -- poisoned v2 entries -------------------------------------------------------------------


def test_a_poisoned_entry_makes_its_whole_request_400(cio, http):
    cio.faults.poison_batch_entry(id="u-7")
    entries = [person(f"u-{i}", "identify", attributes={"n": i}) for i in range(1, 11)]
    response = batch(cio, http, *entries)
    assert response.status_code == 400
    assert response.json()["errors"][0]["reason"] == "malformed"
    assert "batch_index" not in response.json()["errors"][0]  # a 400 names no entry
    assert cio.people == {} and cio.counts["poisoned_batches"] == 1 and cio.counts["batch"] == 0

    # Splitting the request in halves finds it: what a bisecting client does.
    def send(part):
        status = batch(cio, http, *part).status_code
        if status == 400 and len(part) > 1:
            middle = len(part) // 2
            return send(part[:middle]) + send(part[middle:])
        return [] if status == 200 else [part[0]["identifiers"]["id"]]

    assert send(entries) == ["u-7"]
    assert set(cio.people) == {f"u-{i}" for i in range(1, 11)} - {"u-7"}

    # v1 is not affected; curing (or clearing all faults) lets the entry through.
    identify(cio, http, "u-7", v1=True)
    cio.faults.cure_batch_entry(id="u-7")
    assert batch(cio, http, entries[6]).status_code == 200
    assert cio.people["u-7"] == {"v1": True, "n": 7}


def test_poison_over_http_by_email_matches_merge_sides_and_clears(cio, http):
    assert (
        http.post(
            f"{cio.url}/_sim/faults",
            json={
                "op": "poison_batch_entry",
                "email": "bad@x.com",
                "status": 400,
                "body": {"errors": [{"reason": "custom"}]},
            },
        ).status_code
        == 200
    )
    described = http.get(f"{cio.url}/_sim/faults").json()["poisoned_batch_entries"]
    assert described == [{"email": "bad@x.com", "status": 400}]
    merge_entry = {"type": "person", "action": "merge", "primary": {"id": "u-1"}, "secondary": {"email": "bad@x.com"}}
    response = batch(cio, http, person("u-1", "identify", attributes={"a": 1}), merge_entry)
    assert (response.status_code, response.json()) == (400, {"errors": [{"reason": "custom"}]})
    assert http.post(f"{cio.url}/_sim/faults", json={"op": "poison_batch_entry"}).status_code == 400
    assert http.post(f"{cio.url}/_sim/faults", json={"op": "clear"}).status_code == 200
    assert batch(cio, http, person("u-1", "identify", attributes={"a": 1}), merge_entry).status_code == 200
    cio.faults.poison_batch_entry(cio_id="abc")
    assert batch(cio, http, {"type": "person", "identifiers": {"cio_id": "abc"}, "action": "delete"}).status_code == 400
    cio.reset()  # reset clears every fault, poison included
    assert cio.faults.describe()["poisoned_batch_entries"] == []
