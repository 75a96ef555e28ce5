"""The sync-users flow end to end: real Prefect flow, real HTTP to both simulators, real SQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cio_sync.settings import MissingSettingsError
from cio_sync.store import db
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user
from tests.support.sims import HULL_CONNECTOR_ID

pytestmark = pytest.mark.usefixtures("prefect_harness")


user = hull_user


@pytest.fixture
def hull(hull_sim):
    hull_sim.add_segment("s-vip", "VIP")
    hull_sim.add_segment("s-trial", "Trial")
    hull_sim.add_segment("s-other", "Other")
    return hull_sim


def cio_calls(cio_sim, method=None):
    return [
        e for e in cio_sim.journal() if not e["path"].startswith("/_sim") and (method is None or e["method"] == method)
    ]


def state_rows(url):
    with db.get_engine(url).connect() as connection:
        return {r.hull_id: r for r in connection.execute(select(db.user_state))}


SETTINGS = dict(synchronized_segments=["VIP", "s-trial"], synchronized_attributes=["plan", "coconuts"])


@pytest.mark.postgres
def test_insert_then_rerun_makes_zero_calls(sim_env, hull, cio_sim):
    for n in range(3):
        hull.upsert_user(user(n))
    summary = sync_users(**SETTINGS)
    assert summary["decisions"] == {"insert": 3}
    person = cio_sim.people["u-1"]
    assert person["email"] == "user1@example.com"
    assert person["plan"] == "gold" and person["coconuts"] == 1
    assert person["created_at"] == 1577836800 and person["hull_segments"] == ["VIP"]

    rows = state_rows(sim_env["STATE_DATABASE_URL"])
    assert rows[user(1)["id"]].cio_id == "u-1" and rows[user(1)["id"]].created_at is not None
    assert not any(r.writeback_pending for r in rows.values())

    # Write-back: traits under customerio/, each message with a user JWT the simulator verified.
    hull_user = hull.users[user(1)["id"]]
    assert hull_user["traits_customerio/id"] == "u-1"
    assert hull_user["traits_customerio/deleted_at"] is None
    assert hull_user["traits_customerio/synced_at"]
    # The simulator verified every token with the connector secret before applying it.
    claims = hull.firehose_messages[0]["claims"]
    assert len(hull.firehose_messages) == 3
    assert claims["iss"] == HULL_CONNECTOR_ID and claims["io.hull.subjectType"] == "user"
    assert claims["io.hull.asUser"]["external_id"].startswith("u-")

    cio_sim.clear_journal()
    again = sync_users(**SETTINGS)
    assert cio_calls(cio_sim) == []
    assert again["calls"].get("identify", 0) == 0


def test_update_only_changed_users(sim_env, hull, cio_sim):
    for n in range(4):
        hull.upsert_user(user(n))
    sync_users(**SETTINGS)
    cio_sim.clear_journal()
    hull.advance(10)
    hull.set_trait(user(2)["id"], "plan", "silver")
    summary = sync_users(**SETTINGS)
    assert summary["decisions"].get("update") == 1
    assert [e["path"] for e in cio_calls(cio_sim)] == ["/api/v1/customers/u-2"]
    assert cio_sim.people["u-2"]["plan"] == "silver"


def test_skip_reasons(sim_env, hull, cio_sim):
    hull.upsert_user(user(1, segments=("s-other",)))
    hull.upsert_user(user(2, external_id=None))
    hull.upsert_user(user(3, email=None))
    hull.upsert_user(user(4, external_id="x" * 151))
    hull.upsert_user(user(5))
    summary = sync_users(**SETTINGS)
    assert summary["skip_reasons"] == {"not_in_segments": 1, "no_id_value": 1, "no_email": 1, "invalid_id": 1}
    assert summary["decisions"]["insert"] == 1
    assert set(cio_sim.people) == {"u-5"}


def test_user_with_315_attributes_takes_11_calls(sim_env, hull, cio_sim):
    many = {f"traits_attr_{i:03}": i for i in range(311)}
    hull.upsert_user(user(1, **many))
    summary = sync_users(synchronized_segments=["VIP"], synchronized_attributes=list(many))
    puts = cio_calls(cio_sim, "PUT")
    # 311 traits + id, email, created_at, hull_segments = 315 attributes; reserved `_` keys
    # (`_timestamp`) are not attributes and do not count against the limit.
    attributes = [[k for k in e["body"] if not k.startswith("_")] for e in puts]
    assert len(puts) == 11 and all(len(names) <= 30 for names in attributes)
    assert sum(len(names) for names in attributes) == 315
    assert summary["calls"]["identify"] == 11
    assert len(cio_sim.people["u-1"]) == 315


def test_delete_when_leaving_all_segments_only_if_enabled(sim_env, hull, cio_sim):
    hull.upsert_user(user(1))
    hull.upsert_user(user(2))
    sync_users(**SETTINGS)
    hull.advance(10)
    hull.set_segments(user(1)["id"], ["s-other"])

    disabled = sync_users(**SETTINGS)
    assert disabled["decisions"].get("delete", 0) == 0 and "u-1" in cio_sim.people
    assert cio_calls(cio_sim, "DELETE") == []

    hull.advance(10)
    hull.set_trait(user(1)["id"], "plan", "touched")  # re-index so the user is seen again
    enabled = sync_users(**SETTINGS, enable_user_deletion=True)
    assert enabled["decisions"]["delete"] == 1
    assert "u-1" not in cio_sim.people and "u-1" in cio_sim.deleted
    row = state_rows(sim_env["STATE_DATABASE_URL"])[user(1)["id"]]
    assert row.deleted_at is not None
    assert hull.users[user(1)["id"]]["traits_customerio/deleted_at"] is not None
    assert hull.users[user(1)["id"]]["traits_customerio/id"] is None

    hull.advance(10)
    hull.set_trait(user(1)["id"], "plan", "touched again")
    after = sync_users(**SETTINGS, enable_user_deletion=True)
    assert after["skip_reasons"].get("already_deleted") == 1


def test_wrong_customerio_credentials_stop_the_run(sim_env, hull, cio_sim, monkeypatch):
    hull.upsert_user(user(1))
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "wrong-key-1234")
    with pytest.raises(SyncFailed) as failure:
        sync_users(**SETTINGS)
    message = str(failure.value)
    assert "CUSTOMERIO_API_KEY" in message and "wrong-key-1234" not in message
    rows = state_rows(sim_env["STATE_DATABASE_URL"])
    assert all(r.synced_at is None for r in rows.values())
    monkeypatch.setenv("CUSTOMERIO_API_KEY", sim_env["CUSTOMERIO_API_KEY"])
    assert sync_users(**SETTINGS)["decisions"] == {"insert": 1}  # nothing was lost


def test_wrong_hull_credentials_stop_the_run(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", "not-the-secret")
    with pytest.raises(SyncFailed, match="HULL_CONNECTOR_SECRET"):
        sync_users(**SETTINGS)
    assert cio_calls(cio_sim) == []


def test_missing_settings_fail_before_any_call(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.delenv("CUSTOMERIO_SITE_ID")
    monkeypatch.delenv("HULL_CONNECTOR_SECRET")
    with pytest.raises(MissingSettingsError) as failure:
        sync_users(**SETTINGS)
    assert failure.value.names == ["HULL_CONNECTOR_SECRET", "CUSTOMERIO_SITE_ID"]
    assert cio_calls(cio_sim) == [] and [e for e in hull.journal() if not e["path"].startswith("/_sim")] == []


def test_a_400_for_one_user_is_recorded_and_the_run_goes_on(sim_env, hull, cio_sim):
    for n in range(3):
        hull.upsert_user(user(n))
    cio_sim.faults.force("/customers/u-1", 400, {"meta": {"error": "something is wrong with u-1"}})
    summary = sync_users(**SETTINGS)
    assert summary["decisions"]["insert"] == 3
    assert summary["failed_users"] == {"permanent": 1}
    assert set(cio_sim.people) == {"u-0", "u-2"}
    row = state_rows(sim_env["STATE_DATABASE_URL"])[user(1)["id"]]
    assert "something is wrong with u-1" in row.last_error and row.synced_at is None


def test_dry_run_sends_nothing_and_changes_no_state(sim_env, hull, cio_sim):
    for n in range(3):
        hull.upsert_user(user(n))
    summary = sync_users(**SETTINGS, dry_run=True)
    assert summary["decisions"] == {"insert": 3}
    assert cio_calls(cio_sim) == [] and hull.firehose_messages == []
    assert state_rows(sim_env["STATE_DATABASE_URL"]) == {}
    assert sync_users(**SETTINGS)["decisions"] == {"insert": 3}


def test_users_sharing_one_indexed_at_across_pages_are_all_synced_once(sim_env, hull, cio_sim):
    for n in range(250):  # the simulator's clock does not move: one indexed_at for all
        hull.upsert_user(user(n))
    summary = sync_users(**SETTINGS, users_per_batch=40)
    assert summary["decisions"] == {"insert": 250}
    puts = cio_calls(cio_sim, "PUT")
    assert len(puts) == 250 and len({e["path"] for e in puts}) == 250
    assert summary["pages"] >= 7


def test_malformed_user_is_skipped_with_a_reason(sim_env, hull, cio_sim):
    hull.upsert_user(user(1, segment_ids="s-vip"))
    hull.upsert_user(user(2))
    summary = sync_users(**SETTINGS)
    assert summary["skip_reasons"].get("malformed") == 1
    assert set(cio_sim.people) == {"u-2"}


def test_ids_are_url_encoded(sim_env, hull, cio_sim):
    hull.upsert_user(user(1, external_id="a b/c@x.io"))
    sync_users(**SETTINGS)
    assert cio_calls(cio_sim, "PUT")[0]["path"] == "/api/v1/customers/a%20b%2Fc%40x.io"
    assert "a b/c@x.io" in cio_sim.people
