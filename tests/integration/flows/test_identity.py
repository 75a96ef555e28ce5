"""Identity as Customer.io holds it, end to end in both API modes: id changes, a change of
`user_id_mapping` (migration), removed attributes, update-only mode, segment exit actions,
anonymous activity and `_timestamp`. Real flow, real HTTP to both simulators, real SQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cio_sync.rules.mapping import to_unix_seconds
from cio_sync.store import db
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.parametrize("api", ["v1", "v2_batch"])]

# No users overlap: these tests count each run's decisions exactly, and the overlap (issue 11)
# would add `unchanged` re-reads of users the previous run had just synced.
SETTINGS = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan", "coconuts"], users_overlap_seconds=0)


def hid(n: int) -> str:
    return hull_user(n)["id"]


def run(api: str, **overrides):
    return sync_users(**{**SETTINGS, "customerio_api": api, **overrides})


def cio_requests(cio_sim) -> list[dict]:
    return [e for e in cio_sim.journal() if not e["path"].startswith("/_sim")]


def sent(cio_sim) -> list[tuple[str, dict]]:
    """What the connector asked Customer.io, one (action, body) per v1 call or v2 entry."""
    calls = []
    for request in cio_requests(cio_sim):
        if request["path"] == "/api/v2/batch":
            calls += [(entry["action"], entry) for entry in request["body"]["batch"]]
        elif request["path"] == "/api/v1/merge_customers":
            calls.append(("merge", request["body"]))
        elif request["path"].endswith(("/suppress", "/unsuppress")):
            calls.append((request["path"].rsplit("/", 1)[1], {}))
        elif request["method"] == "PUT":
            calls.append(("identify", request["body"]))
        elif request["method"] == "DELETE":
            calls.append(("delete", {}))
    return calls


def people_with_email(cio_sim, email: str) -> list[str]:
    return sorted(key for key, person in cio_sim.people.items() if person.get("email") == email)


def state_row(url: str, hull_id: str):
    with db.get_engine(url).connect() as connection:
        return connection.execute(select(db.user_state).where(db.user_state.c.hull_id == hull_id)).one()


def test_an_id_change_merges_the_old_person_into_the_new_one(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1))
    hull.add_event(
        {
            "event_id": "ev-1",
            "event": "Signed Up",
            "created_at": "2026-11-26T09:00:00Z",
            "properties": {},
            "user_id": hid(1),
        }
    )
    run(api, events_filter=["Signed Up"])
    assert [e["customer"] for e in cio_sim.events] == ["u-1"]

    hull.advance(10)
    hull.upsert_user({"id": hid(1), "external_id": "acct-1"})  # the id corrected in Hull
    cio_sim.clear_journal()
    summary = run(api, events_filter=["Signed Up"])

    assert summary["id_changes"] == {"merge": 1} and summary["calls"]["merge"] == 1
    # The new person exists before the merge (Customer.io merges only into an existing one).
    assert [action for action, _ in sent(cio_sim)][:3] == ["identify", "merge", "identify"]
    assert people_with_email(cio_sim, "user1@example.com") == ["acct-1"]  # one person, the new id
    assert "u-1" not in cio_sim.people and cio_sim.merges[-1]["applied"] is True
    assert cio_sim.people["acct-1"]["plan"] == "gold"
    assert [e["name"] for e in cio_sim.events_for("acct-1")] == ["Signed Up"]  # activity moved over
    assert state_row(sim_env["STATE_DATABASE_URL"], hid(1)).cio_id == "acct-1"
    assert hull.users[hid(1)]["traits_customerio/id"] == "acct-1"  # write-back reports the new id

    cio_sim.clear_journal()
    assert run(api)["decisions"].get("update", 0) == 0 and cio_requests(cio_sim) == []


def test_an_id_change_with_delete_old_deletes_the_old_person(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1))
    run(api, on_id_change="delete_old")
    hull.advance(10)
    hull.upsert_user({"id": hid(1), "external_id": "acct-1"})
    cio_sim.clear_journal()
    summary = run(api, on_id_change="delete_old")

    assert summary["id_changes"] == {"delete_old": 1}
    # The new person is identified by the page; the old one is deleted by the deletion guard at the end.
    assert [action for action, _ in sent(cio_sim)] == ["identify", "delete"]
    assert summary["deletions"] == {"old ids deleted": 1}
    assert "u-1" in cio_sim.deleted and "u-1" not in cio_sim.people
    assert people_with_email(cio_sim, "user1@example.com") == ["acct-1"]


def test_an_id_change_with_ignore_keeps_the_original_behaviour(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1))
    run(api, on_id_change="ignore")
    hull.advance(10)
    hull.upsert_user({"id": hid(1), "external_id": "acct-1"})
    summary = run(api, on_id_change="ignore")
    assert summary["id_changes"] == {"ignore": 1} and "merge" not in summary["calls"]
    assert people_with_email(cio_sim, "user1@example.com") == ["acct-1", "u-1"]


def test_a_changed_user_id_mapping_is_refused_until_migrate_ids_then_merges_everyone(sim_env, hull, cio_sim, api):
    for n in range(3):
        hull.upsert_user(hull_user(n))
    hull.upsert_user(hull_user(3, segments=("s-other",)))  # never sent: nothing to move
    run(api)
    assert sorted(cio_sim.people) == ["u-0", "u-1", "u-2"]

    cio_sim.clear_journal()
    with pytest.raises(SyncFailed, match="--migrate-ids") as refused:
        run(api, user_id_mapping="email")
    assert "'external_id' to 'email'" in str(refused.value)
    assert cio_requests(cio_sim) == []  # nothing sent

    # No user changed in Hull: the migration reads every user again anyway.
    summary = run(api, user_id_mapping="email", migrate_ids=True)
    assert summary["id_changes"] == {"merge": 3} and summary["calls"]["merge"] == 3
    assert any("migrating every id" in w for w in summary["warnings"])
    assert sorted(cio_sim.people) == [f"user{n}@example.com" for n in range(3)]
    assert all(cio_sim.people[f"user{n}@example.com"]["plan"] == "gold" for n in range(3))
    merged = [m for m in cio_sim.merges if m["applied"]]
    assert sorted(m["secondary"]["id"] for m in merged) == ["u-0", "u-1", "u-2"]
    assert all("email" in m["primary"] for m in merged)

    cio_sim.clear_journal()
    again = run(api, user_id_mapping="email")  # the new mapping is now the stream's own
    assert cio_requests(cio_sim) == [] and again["decisions"].get("update", 0) == 0


def test_removed_attributes_disappear_from_the_person(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1, traits_bio="hello", traits_color="red", traits_plan="gold"))
    hull.upsert_user(hull_user(2))
    attributes = ["plan", "coconuts", "bio", "color"]
    run(api, synchronized_attributes=attributes)
    assert {"plan", "coconuts", "bio", "color"} <= set(cio_sim.people["u-1"])

    hull.advance(10)
    hull.set_trait(hid(1), "coconuts", None)  # removed in Hull (a null trait)
    hull.set_trait(hid(1), "plan", "p" * 1001)  # now over the 1,000-byte value limit
    with hull.lock:
        del hull.users[hid(1)]["traits_color"]  # gone from the document
    hull.set_segments(hid(1), ["s-vip"])  # re-index
    cio_sim.clear_journal()
    summary = run(api, synchronized_attributes=["plan", "coconuts", "color"])  # bio no longer whitelisted

    person = cio_sim.people["u-1"]
    assert not {"plan", "coconuts", "bio", "color"} & set(person)
    assert person["email"] == "user1@example.com" and person["hull_segments"] == ["VIP"]
    assert summary["removed_attributes"] == {"bio": 1, "color": 1, "coconuts": 1, "plan": 1}
    assert summary["dropped_attributes"] == {"plan": 1}
    identify = [body for action, body in sent(cio_sim) if action == "identify"]
    removals = {k: v for body in identify for k, v in body.get("attributes", body).items() if v == ""}
    assert removals == dict.fromkeys(["bio", "color", "coconuts", "plan"], "")
    assert cio_sim.people["u-2"]["plan"] == "gold"  # nobody else touched

    cio_sim.clear_journal()
    run(api, synchronized_attributes=["plan", "coconuts", "color"])
    assert cio_requests(cio_sim) == []  # the names Customer.io holds now are recorded


def test_update_only_creates_nobody(sim_env, hull, cio_sim, api):
    for n in (1, 2):
        hull.upsert_user(hull_user(n))
    run(api)
    del cio_sim.people["u-2"]  # deleted in Customer.io by someone else
    hull.advance(10)
    hull.upsert_user(hull_user(3))  # new in Hull
    hull.set_trait(hid(1), "plan", "silver")
    hull.set_trait(hid(2), "plan", "silver")
    cio_sim.clear_journal()
    summary = run(api, sync_mode="update_only")

    assert summary["skip_reasons"] == {"not_in_customerio": 1}
    assert summary["decisions"]["update"] == 2 and summary["decisions"].get("insert", 0) == 0
    assert sorted(cio_sim.people) == ["u-1"] and cio_sim.people["u-1"]["plan"] == "silver"
    identify = [body for action, body in sent(cio_sim) if action == "identify"]
    assert identify and all(body.get("attributes", body)["_update"] is True for body in identify)


def test_suppress_on_segment_exit_and_unsuppress_on_return(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1))
    hull.upsert_user(hull_user(2))
    run(api, on_segment_exit="suppress")
    hull.advance(10)
    hull.set_segments(hid(1), ["s-other"])
    summary = run(api, on_segment_exit="suppress")

    assert summary["decisions"]["suppress"] == 1 and summary["calls"]["suppress"] == 1
    assert cio_sim.is_suppressed("u-1") and "u-1" not in cio_sim.people
    assert "u-2" in cio_sim.people
    row = state_row(sim_env["STATE_DATABASE_URL"], hid(1))
    assert row.suppressed_at is not None and row.deleted_at is not None
    assert hull.users[hid(1)]["traits_customerio/deleted_at"] is not None

    hull.advance(10)
    hull.set_trait(hid(1), "plan", "touched")  # still out of the segments
    assert run(api, on_segment_exit="suppress")["skip_reasons"] == {"already_suppressed": 1}

    hull.advance(10)
    hull.set_segments(hid(1), ["s-vip"])  # back
    cio_sim.clear_journal()
    back = run(api, on_segment_exit="suppress")
    assert back["decisions"]["insert"] == 1 and back["calls"]["unsuppress"] == 1
    assert [action for action, _ in sent(cio_sim)][:2] == ["unsuppress", "identify"]
    assert not cio_sim.is_suppressed("u-1") and cio_sim.people["u-1"]["plan"] == "touched"
    assert state_row(sim_env["STATE_DATABASE_URL"], hid(1)).suppressed_at is None


def test_unset_segments_keeps_the_person_with_no_segments(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1))
    run(api, on_segment_exit="unset_segments")
    hull.advance(10)
    hull.set_segments(hid(1), ["s-other"])
    summary = run(api, on_segment_exit="unset_segments")
    assert summary["decisions"]["unset_segments"] == 1
    assert cio_sim.people["u-1"]["hull_segments"] == [] and cio_sim.people["u-1"]["plan"] == "gold"

    hull.advance(10)
    hull.set_trait(hid(1), "plan", "silver")  # still out: nothing more to say
    cio_sim.clear_journal()
    assert run(api, on_segment_exit="unset_segments")["skip_reasons"] == {"not_in_segments": 1}
    assert cio_requests(cio_sim) == []

    hull.advance(10)
    hull.set_segments(hid(1), ["s-vip"])
    assert run(api, on_segment_exit="unset_segments")["decisions"]["update"] == 1
    assert cio_sim.people["u-1"]["hull_segments"] == ["VIP"] and cio_sim.people["u-1"]["plan"] == "silver"


def test_anonymous_events_sent_before_the_identify_join_the_person(sim_env, hull, cio_sim, api):
    hull.upsert_user(hull_user(1, external_id=None, anonymous_ids=["web:old", "web:1"]))
    hull.add_event(
        {
            "event_id": "ev-anon",
            "event": "Signed Up",
            "created_at": "2026-11-26T09:00:00Z",
            "properties": {},
            "user_id": hid(1),
            "anonymous_id": "web:1",
        }
    )
    first = run(api, events_filter=["Signed Up"], anonymous_events=True)
    assert first["skip_reasons"] == {"no_id_value": 1} and first["calls"]["anonymous_event"] == 1
    assert cio_sim.events[0]["customer"] is None and cio_sim.events[0]["anonymous_id"] == "web:1"

    hull.advance(10)
    hull.upsert_user({"id": hid(1), "external_id": "u-1"})  # signs up: now has an id
    run(api, events_filter=["Signed Up"], anonymous_events=True)
    assert cio_sim.people["u-1"]["anonymous_id"] == "web:1"  # the most recent anonymous id
    assert [e["name"] for e in cio_sim.events_for("u-1")] == ["Signed Up"]


def test_identify_carries_hull_indexed_at_as_its_timestamp(sim_env, hull, cio_sim, api):
    hull.advance(3600)
    hull.upsert_user(hull_user(1))
    indexed_at = to_unix_seconds(hull.user(hid(1))["indexed_at"])
    run(api, max_attributes_per_call=2)  # several identify calls, each stamped
    stamps = [body.get("timestamp", body.get("_timestamp")) for action, body in sent(cio_sim) if action == "identify"]
    assert len(stamps) >= 3 and set(stamps) == {indexed_at}
    assert cio_sim.updated_at["u-1"] == indexed_at


def test_a_batch_failed_before_a_migration_is_rerun_with_the_new_mapping(sim_env, hull, cio_sim, api):
    from flows.rerun_failed_batches import rerun_failed_batches

    for n in (1, 2):
        hull.upsert_user(hull_user(n))
    run(api)
    hull.advance(10)
    hull.set_trait(hid(1), "plan", "silver")
    cio_sim.faults.force("/api/", 503)  # Customer.io down for the whole run
    with pytest.raises(SyncFailed, match="failed batches"):
        run(api)
    cio_sim.faults.clear()
    summary = run(api, user_id_mapping="email", migrate_ids=True)
    # The batch was saved under user_id_mapping=external_id; the migration run retries it first
    # (healing, issue 11) with the mapping now in force.
    assert summary["batch_retries"] == {"resolved": 1}
    assert sorted(cio_sim.people) == ["user1@example.com", "user2@example.com"]

    result = rerun_failed_batches()  # nothing is left for a person
    assert result["batches"] == []
    assert sorted(cio_sim.people) == ["user1@example.com", "user2@example.com"]  # nobody moved back
    assert cio_sim.people["user1@example.com"]["plan"] == "silver"
