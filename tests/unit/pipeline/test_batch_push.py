"""v2 batch packing and 207 mapping, as pure functions with a recording fake client (no HTTP)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

from cio_sync.pipeline.batch_push import push_events_v2, push_page_v2, user_entries
from cio_sync.pipeline.push import CustomerIoUnavailable
from cio_sync.rules.mapping import MappedUser, chunk_attributes
from cio_sync.rules.plan import DELETE, INSERT, UPDATE, UserPlan
from connectors.customerio_batch import MAX_ENTRY_BYTES, MAX_REQUEST_BYTES, identify_entries, pack, v2_identifiers
from connectors.http import PermanentError, TransientError
from simulators.customerio import MAX_BATCH_BYTES, MAX_BATCH_ENTRY_BYTES


class FakeResponse:
    def __init__(self, status_code: int, body: dict | None = None):
        self.status_code = status_code
        self._body = body or {}

    def json(self):
        return self._body


class RecordingClient:
    """Stands in for CustomerIoClient: keeps every batch body as sent (raw bytes and parsed),
    answers 200, or 207 for entries `reject(entry)` names, or raises what `fail(n)` returns."""

    def __init__(self, reject=None, fail=None, poison=None):
        self.bodies: list[bytes] = []
        self.reject = reject or (lambda entry: None)
        self.fail = fail or (lambda n: None)
        # A request holding an entry `poison(entry)` is true for is refused whole with a 400
        # naming no entry, as Customer.io answers a malformed request.
        self.poison = poison or (lambda entry: False)
        self.lock = threading.Lock()

    def request_batch(self, body: bytes):
        with self.lock:
            self.bodies.append(body)
            n = len(self.bodies)
        error = self.fail(n)
        if error is not None:
            raise error
        if any(self.poison(entry) for entry in json.loads(body)["batch"]):
            raise PermanentError(
                "Customer.io", "POST", "/api/v2/batch", 400, "the request is malformed: identifiers.id is not valid"
            )
        errors = []
        for index, entry in enumerate(json.loads(body)["batch"]):
            reason = self.reject(entry)
            if reason:
                errors.append({"batch_index": index, "reason": reason, "field": "attributes", "message": "no"})
        return FakeResponse(207, {"errors": errors}) if errors else FakeResponse(200)

    @property
    def batches(self) -> list[list[dict]]:
        return [json.loads(body)["batch"] for body in self.bodies]


def plan(n: int, action: str = INSERT, **attributes) -> UserPlan:
    attrs = {"id": f"u-{n}", "email": f"user{n}@example.com", **attributes}
    mapped = MappedUser(
        hull_id=f"h-{n}", cio_id=f"u-{n}", email=attrs["email"], attributes=attrs, whitelisted_segment_ids=["s"]
    )
    return UserPlan(f"h-{n}", action, "", mapped, f"u-{n}", f"u-{n}")


def push(client, plans, **overrides):
    options = dict(user_id_mapping="external_id", max_attributes_per_call=30, concurrency=1)
    options.update(overrides)
    return push_page_v2(client, plans, **options)


def test_identifiers_are_exactly_one_of_id_email_cio_id():
    assert v2_identifiers("u-1", "external_id") == {"id": "u-1"}
    assert v2_identifiers("ada@example.com", "email") == {"email": "ada@example.com"}
    assert v2_identifiers("cio_03000001", "external_id") == {"cio_id": "03000001"}


def test_identify_honours_max_attributes_per_call_with_id_and_email_first():
    attributes = {"id": "u-1", "email": "a@b.c", **{f"attr_{i:02}": i for i in range(93)}}  # 95 attributes
    entries = identify_entries({"id": "u-1"}, chunk_attributes(attributes, 30))
    assert [len(e["attributes"]) for e in entries] == [30, 30, 30, 5]
    assert set(list(entries[0]["attributes"])[:2]) == {"id", "email"}
    merged = {k: v for e in entries for k, v in e["attributes"].items()}
    assert merged == attributes
    assert all(e["action"] == "identify" and e["identifiers"] == {"id": "u-1"} for e in entries)


def test_a_chunk_too_big_for_one_entry_is_split_not_dropped():
    # 30 attributes of 1,500 bytes: within the count limit, but ~46 KB as one entry.
    attributes = {f"big_{i:02}": "x" * 1500 for i in range(30)}
    entries = identify_entries({"id": "u-1"}, chunk_attributes(attributes, 30))
    sizes = [len(json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode()) for e in entries]
    assert len(entries) > 1 and max(sizes) <= MAX_ENTRY_BYTES
    assert {k for e in entries for k in e["attributes"]} == set(attributes)


def test_an_entry_over_32_kb_is_not_sent_and_fails_its_user_only():
    client = RecordingClient()
    huge = plan(2, notes="é" * 20_000)  # one value of 40,000 bytes: no split can make it fit
    outcomes = push(client, [plan(1), huge, plan(3)])
    by_user = {o.plan.hull_id: o for o in outcomes}
    assert by_user["h-2"].ok is False and by_user["h-2"].error_kind == "permanent"
    assert "32,000 bytes per entry" in by_user["h-2"].error and "not sent" in by_user["h-2"].error
    assert by_user["h-1"].ok and by_user["h-3"].ok
    sent_ids = [e["identifiers"]["id"] for batch in client.batches for e in batch]
    assert "u-2" not in sent_ids and sent_ids.count("u-1") == 1 and sent_ids.count("u-3") == 1
    assert MAX_ENTRY_BYTES <= MAX_BATCH_ENTRY_BYTES  # never looser than what Customer.io (the simulator) accepts


def test_requests_stay_under_500_kb_as_sent_and_carry_every_entry_once_in_order():
    client = RecordingClient()
    # ~2,000 users of ~1.2 KB per identify (multi-byte text included): several requests' worth.
    plans = [plan(n, bio="Zoë Søren " * 60, plan="pro", score=n) for n in range(2000)]
    calls = Counter()
    outcomes = push(client, plans, calls=calls)
    assert all(o.ok and o.identify_calls == 1 for o in outcomes)
    assert len(client.bodies) >= 4 and calls["batch"] == len(client.bodies)
    assert max(len(body) for body in client.bodies) <= MAX_REQUEST_BYTES <= MAX_BATCH_BYTES
    # Packed tight: every request but the last is at least 95% full.
    assert min(len(body) for body in client.bodies[:-1]) > 0.95 * MAX_REQUEST_BYTES
    sent = [e["identifiers"]["id"] for batch in client.batches for e in batch]
    assert sent == [f"u-{n}" for n in range(2000)]


def test_one_users_entries_are_never_split_across_requests_when_they_fit():
    # Each user: 90 attributes = 3 identify entries of ~10 KB; a request holds ~16 users.
    plans = [plan(n, **{f"t{i:02}": "v" * 330 for i in range(88)}) for n in range(100)]
    items = [user_entries(p, i, "external_id", 30) for i, p in enumerate(plans)]
    chains = pack(items)
    assert all(len(chain) == 1 for chain in chains)
    for chain in chains:
        owners = [e.owner for e in chain[0].entries]
        # Contiguous runs: a user's entries sit together and in label order.
        assert owners == sorted(owners)
        for owner in set(owners):
            labels = [e.label for e in chain[0].entries if e.owner == owner]
            assert labels == ["identify 1/3", "identify 2/3", "identify 3/3"]
    assert sum(len(c[0].entries) for c in chains) == 300
    owner_requests = Counter(owner for c in chains for owner in {e.owner for e in c[0].entries})
    assert len(chains) > 1 and set(owner_requests.values()) == {1}  # each user in exactly one request


def test_a_user_bigger_than_one_request_goes_out_as_an_ordered_chain():
    client = RecordingClient()
    many = {f"attr_{i:03}": "y" * 900 for i in range(298)}  # 300 attributes, ~280 KB of identify entries
    plans = [plan(1), plan(2, **many), plan(3)]
    outcomes = push(client, plans, concurrency=4, max_request_bytes=100_000)
    assert all(o.ok for o in outcomes)
    user_two = [e for batch in client.batches for e in batch if e["identifiers"]["id"] == "u-2"]
    assert len(user_two) == 10 and [o.identify_calls for o in outcomes] == [1, 10, 1]
    # In the order identify_entries made them (id/email first), even with 4 threads.
    assert set(list(user_two[0]["attributes"])[:2]) == {"id", "email"}
    names = [name for e in user_two for name in e["attributes"]]
    assert names[2:] == sorted(many)
    assert max(len(body) for body in client.bodies) <= 100_000


def test_a_207_fails_exactly_the_users_named_by_batch_index():
    def reject(entry):
        return "too_long" if entry.get("attributes", {}).get("bio") == "bad" else None

    client = RecordingClient(reject=reject)
    plans = [plan(1), plan(2, bio="bad"), plan(3, action=UPDATE), plan(4, action=DELETE)]
    outcomes = push(client, plans)
    by_user = {o.plan.hull_id: o for o in outcomes}
    assert by_user["h-2"].ok is False and by_user["h-2"].error_kind == "permanent"
    assert "too_long" in by_user["h-2"].error and "identify 1/1" in by_user["h-2"].error
    assert by_user["h-2"].identify_calls == 0 and by_user["h-2"].created is False
    assert all(by_user[h].ok for h in ("h-1", "h-3", "h-4"))
    assert by_user["h-4"].delete_calls == 1 and by_user["h-1"].identify_calls == 1
    assert [e["action"] for e in client.batches[0]] == ["identify", "identify", "identify", "delete"]


def test_a_207_on_a_later_chunk_keeps_the_person_as_created():
    def reject(entry):
        return "too_long" if "zz_bad" in entry.get("attributes", {}) else None

    attributes = {f"a{i:02}": i for i in range(40)} | {"zz_bad": "x"}
    outcome = push(RecordingClient(reject=reject), [plan(1, **attributes)])[0]
    # The first chunk was accepted: the person exists, so a later delete must find it.
    assert outcome.ok is False and outcome.created is True and outcome.identify_calls == 1


def test_transient_failures_fail_the_request_and_stop_the_page_after_three():
    client = RecordingClient(fail=lambda n: TransientError("Customer.io", "POST", "/api/v2/batch", 503, "down"))
    plans = [plan(n, bio="b" * 2000) for n in range(1000)]  # ~5 requests
    with pytest.raises(CustomerIoUnavailable) as stopped:
        push(client, plans)
    outcomes = stopped.value.args[0]
    assert len(outcomes) == 1000 and not any(o.ok for o in outcomes)
    kinds = Counter(o.error_kind for o in outcomes)
    assert len(client.bodies) == 3  # the breaker opened; later requests were never sent
    assert kinds["transient"] > 0 and kinds["not_attempted"] > 0
    assert kinds["transient"] + kinds["not_attempted"] == 1000


def test_events_become_event_and_page_entries_with_their_ulid():
    client = RecordingClient(reject=lambda e: "invalid" if e["name"] == "bad" else None)
    events = [
        ("u-1", {"id": "01J0000000000000000000000A", "timestamp": 1700000000, "name": "Order", "data": {"x": 1}}),
        (
            "u-1",
            {
                "id": "01J0000000000000000000000B",
                "timestamp": 1700000001,
                "type": "page",
                "name": "https://example.com/pricing",
                "data": {"referrer": "https://g.co"},
            },
        ),
        ("u-2", {"id": "01J0000000000000000000000C", "timestamp": 1700000002, "name": "bad", "data": {}}),
    ]
    results = push_events_v2(client, events, user_id_mapping="external_id", concurrency=2)
    assert results[0] == ("sent", None) and results[1] == ("sent", None)
    assert results[2][0] == "failed" and "invalid" in results[2][1]
    first, second, _ = client.batches[0]
    assert first == {
        "type": "person",
        "identifiers": {"id": "u-1"},
        "action": "event",
        "name": "Order",
        "id": "01J0000000000000000000000A",
        "timestamp": 1700000000,
        "attributes": {"x": 1},
    }
    assert second["action"] == "page" and second["attributes"] == {"referrer": "https://g.co"}


# ----- a 400 for a whole request: bisected down to the bad entries ------------------------


def poisoned(*ids):
    return lambda entry: entry["identifiers"].get("id") in ids


def delivered_ids(client) -> Counter:
    """Entries of requests that were accepted (a refused request applies nothing)."""
    accepted = Counter()
    for body in client.bodies:
        batch = json.loads(body)["batch"]
        if not any(client.poison(entry) for entry in batch):
            accepted.update(entry["identifiers"]["id"] for entry in batch)
    return accepted


def test_one_poisoned_entry_fails_only_its_user_and_every_other_user_is_delivered_once():
    client = RecordingClient(poison=poisoned("u-37"))
    calls = Counter()
    outcomes = push(client, [plan(n) for n in range(100)], calls=calls)
    by_user = {o.plan.hull_id: o for o in outcomes}
    bad = by_user.pop("h-37")
    assert bad.ok is False and bad.error_kind == "permanent" and bad.identify_calls == 0
    assert "HTTP 400" in bad.error and "identifiers.id is not valid" in bad.error  # Customer.io's reason
    assert all(o.ok and o.identify_calls == 1 for o in by_user.values())
    assert delivered_ids(client) == Counter({f"u-{n}": 1 for n in range(100) if n != 37})
    # The first request, then two halves per level down to one user: 1 + 2 * ceil(log2(100)).
    assert len(client.bodies) == calls["batch"] <= 1 + 2 * 7


def test_two_poisoned_entries_in_one_request_are_both_isolated():
    client = RecordingClient(poison=poisoned("u-3", "u-60"))
    outcomes = push(client, [plan(n) for n in range(64)], concurrency=4)
    failed = sorted(o.plan.hull_id for o in outcomes if not o.ok)
    assert failed == ["h-3", "h-60"]
    assert all(o.error_kind == "permanent" for o in outcomes if not o.ok)
    assert sum(delivered_ids(client).values()) == 62


def test_a_users_entries_stay_together_and_in_order_while_bisecting():
    # Each user: 3 identify entries. Bisecting splits between users, never inside one.
    plans = [plan(n, **{f"t{i:02}": i for i in range(80)}) for n in range(10)]
    client = RecordingClient(poison=lambda e: e["identifiers"]["id"] == "u-6" and "t70" in e["attributes"])
    outcomes = push(client, plans)
    assert [o.plan.hull_id for o in outcomes if not o.ok] == ["h-6"]
    for batch in client.batches:
        ids = [e["identifiers"]["id"] for e in batch]
        for user_id in set(ids):
            assert ids.count(user_id) == 3  # a user's three entries, together
    assert all(o.identify_calls == 3 for o in outcomes if o.ok)


def test_a_400_for_a_request_of_one_user_fails_that_user_without_resending():
    client = RecordingClient(poison=poisoned("u-1"))
    outcomes = push(client, [plan(1)])
    assert len(client.bodies) == 1 and outcomes[0].error_kind == "permanent"


def test_a_transient_failure_while_bisecting_keeps_those_users_for_a_failed_batch():
    # Request 1 (all 8) → 400; request 2 (first half) → 503 after retries; request 3 (second half) → 400 ...
    client = RecordingClient(
        poison=poisoned("u-6"),
        fail=lambda n: TransientError("Customer.io", "POST", "/api/v2/batch", 503, "down") if n == 2 else None,
    )
    outcomes = push(client, [plan(n) for n in range(8)])
    kinds = {o.plan.hull_id: o.error_kind for o in outcomes}
    assert kinds == {
        "h-0": "transient",
        "h-1": "transient",
        "h-2": "transient",
        "h-3": "transient",
        "h-4": None,
        "h-5": None,
        "h-6": "permanent",
        "h-7": None,
    }


def test_a_poisoned_event_fails_alone_and_the_others_are_sent():
    events = [
        (
            f"u-{n % 5}",
            {
                "id": f"01J00000000000000000000{n:03d}",
                "timestamp": 1700000000 + n,
                "name": "bad" if n == 12 else "Order",
                "data": {},
            },
        )
        for n in range(40)
    ]
    client = RecordingClient(poison=lambda e: e["name"] == "bad")
    results = push_events_v2(client, events, user_id_mapping="external_id", concurrency=2)
    assert results[12][0] == "failed" and "HTTP 400" in results[12][1]
    assert [status for i, (status, _) in enumerate(results) if i != 12] == ["sent"] * 39
    sent = [
        e["id"]
        for body in client.bodies
        for e in json.loads(body)["batch"]
        if not any(x["name"] == "bad" for x in json.loads(body)["batch"])
    ]
    assert sorted(sent) == sorted(body["id"] for i, (_, body) in enumerate(events) if i != 12)
