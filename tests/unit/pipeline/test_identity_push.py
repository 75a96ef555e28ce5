"""What v1 calls and v2 entries an identity plan becomes, in order (a recording fake client, no HTTP)."""

from __future__ import annotations

import json

from cio_sync.pipeline.batch_push import push_page_v2
from cio_sync.pipeline.push import push_page
from cio_sync.rules.mapping import MappedUser
from cio_sync.rules.plan import DELETE_OLD, INSERT, MERGE, SUPPRESS, UNSET_SEGMENTS, UPDATE, UserPlan
from connectors.http import PermanentError


class RecordingV1:
    """Stands in for CustomerIoClient's v1 calls; `fail` maps a call name to an exception."""

    def __init__(self, fail=None):
        self.calls: list[tuple] = []
        self.fail = fail or {}

    def _record(self, *call):
        self.calls.append(call)
        if call[0] in self.fail:
            raise self.fail[call[0]]

    def identify(self, identifier, attributes):
        self._record("identify", identifier, attributes)

    def delete(self, identifier):
        self._record("delete", identifier)

    def suppress(self, identifier):
        self._record("suppress", identifier)

    def unsuppress(self, identifier):
        self._record("unsuppress", identifier)

    def merge(self, primary, secondary):
        self._record("merge", primary, secondary)


class RecordingV2:
    def __init__(self):
        self.batches: list[list[dict]] = []

    def request_batch(self, body: bytes):
        self.batches.append(json.loads(body)["batch"])
        return type("Response", (), {"status_code": 200, "json": lambda self: {}})()


def plan(action=UPDATE, target="new@example.com", mapping="email", **kw) -> UserPlan:
    attributes = {"id": target, "email": "a@example.com", "plan": "gold"}
    mapped = MappedUser("h-1", target, "a@example.com", attributes, ["s"], indexed_at=1764151205)
    return UserPlan("h-1", action, "", mapped, "u-1", target, target_mapping=mapping, timestamp=1764151205, **kw)


MERGING = dict(previous_id="u-1", previous_mapping="external_id", id_change=MERGE, unset_attributes=["bio"])


def v1(plans, client=None):
    client = client or RecordingV1()
    return client, push_page(client, plans, max_attributes_per_call=30, concurrency=1)


def test_v1_merge_creates_the_primary_merges_then_identifies_with_removals_and_timestamp():
    client, [outcome] = v1([plan(**MERGING)])
    assert [c[0] for c in client.calls] == ["identify", "merge", "identify"]
    assert client.calls[0] == ("identify", "new@example.com", {})
    assert client.calls[1] == ("merge", {"email": "new@example.com"}, {"id": "u-1"})
    body = client.calls[2][2]
    assert body["bio"] == "" and body["plan"] == "gold" and body["_timestamp"] == 1764151205
    assert "_update" not in body
    assert outcome.ok and outcome.moved and outcome.calls == {"merge": 1} and outcome.identify_calls == 2


def test_v1_merge_of_an_old_person_customerio_no_longer_knows_goes_on():
    gone = PermanentError("Customer.io", "POST", "/api/v1/merge_customers", 404, "not found")
    client, [outcome] = v1([plan(**MERGING)], RecordingV1(fail={"merge": gone}))
    assert outcome.ok and [c[0] for c in client.calls] == ["identify", "merge", "identify"]
    invalid = PermanentError("Customer.io", "POST", "/api/v1/merge_customers", 400, "invalid")
    client, [outcome] = v1([plan(**MERGING)], RecordingV1(fail={"merge": invalid}))
    assert outcome.error_kind == "permanent" and not outcome.moved and len(client.calls) == 2


def test_v1_delete_old_identifies_the_new_person_only_and_update_only_adds_update():
    # The old person is deleted later, by the deletion guard (cio_sync/pipeline/deletions.py).
    client, [outcome] = v1(
        [plan(previous_id="u-1", previous_mapping="external_id", id_change=DELETE_OLD, update_only=True)]
    )
    assert [c[0] for c in client.calls] == ["identify"] and client.calls[0][2]["_update"] is True
    assert outcome.ok and not outcome.moved and outcome.delete_calls == 0


def test_v1_suppress_unsuppress_and_unset_segments():
    client, outcomes = v1(
        [
            plan(SUPPRESS, target="u-2", mapping="external_id"),
            plan(INSERT, target="u-3", mapping="external_id", unsuppress_id="u-3", unsuppress_mapping="external_id"),
            plan(UNSET_SEGMENTS, target="u-4", mapping="external_id"),
        ]
    )
    assert client.calls[0] == ("suppress", "u-2")
    assert client.calls[1] == ("unsuppress", "u-3") and client.calls[2][:2] == ("identify", "u-3")
    assert client.calls[3] == ("identify", "u-4", {"hull_segments": [], "_update": True, "_timestamp": 1764151205})
    assert all(o.ok for o in outcomes) and outcomes[1].unsuppressed and outcomes[0].calls == {"suppress": 1}


def test_v2_entries_follow_the_same_order_with_typed_identifiers():
    client = RecordingV2()
    outcomes = push_page_v2(
        client,
        [
            plan(**MERGING, unsuppress_id="u-0", unsuppress_mapping="external_id", update_only=True),
            plan(SUPPRESS, target="u-2", mapping="external_id"),
        ],
        user_id_mapping="external_id",
        max_attributes_per_call=30,
        concurrency=1,
    )
    entries = client.batches[0]
    assert [e["action"] for e in entries] == ["unsuppress", "identify", "merge", "identify", "suppress"]
    assert entries[0]["identifiers"] == {"id": "u-0"}
    assert entries[1] == {
        "type": "person",
        "identifiers": {"email": "new@example.com"},
        "action": "identify",
        "attributes": {},
    }  # the merge's primary, created without `_update`
    assert entries[2] == {
        "type": "person",
        "action": "merge",
        "primary": {"email": "new@example.com"},
        "secondary": {"id": "u-1"},
    }
    assert entries[3]["timestamp"] == 1764151205 and entries[3]["attributes"]["_update"] is True
    assert entries[3]["attributes"]["bio"] == ""
    assert entries[4] == {"type": "person", "identifiers": {"id": "u-2"}, "action": "suppress"}
    first, second = outcomes
    assert first.ok and first.moved and first.unsuppressed and first.calls == {"merge": 1, "unsuppress": 1}
    assert first.identify_calls == 2 and second.calls == {"suppress": 1}


def test_v2_delete_old_identifies_the_new_person_only():
    client = RecordingV2()
    [outcome] = push_page_v2(
        client,
        [plan(previous_id="u-1", previous_mapping="external_id", id_change=DELETE_OLD)],
        user_id_mapping="email",
        max_attributes_per_call=30,
        concurrency=1,
    )
    assert [e["action"] for e in client.batches[0]] == ["identify"]  # the deletion guard deletes u-1 later
    assert client.batches[0][0]["identifiers"] == {"email": "new@example.com"}
    assert outcome.ok and not outcome.moved and outcome.delete_calls == 0
