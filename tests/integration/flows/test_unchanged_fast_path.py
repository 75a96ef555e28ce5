"""The unchanged fast path through the real flow: a rerun of unchanged users maps nobody and
sends nothing; a changed user, a changed setting or state from before the digest was kept is
mapped as before, and the digest written then makes the following run fast again."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from cio_sync.rules import plan as plan_module
from cio_sync.store import db
from flows.sync_users import sync_users
from tests.support.builders import hull_user as user

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan", "coconuts"], users_overlap_seconds=0)


@pytest.fixture
def hull(hull_sim):
    hull_sim.add_segment("s-vip", "VIP")
    hull_sim.add_segment("s-other", "Other")
    return hull_sim


@pytest.fixture
def mapped(monkeypatch):
    """Hull ids the diff maps (the fast path maps nobody)."""
    seen: list[str] = []
    real = plan_module.map_user

    def counting(user, *args):
        seen.append(user["id"])
        return real(user, *args)

    monkeypatch.setattr(plan_module, "map_user", counting)
    return seen


def rows(url):
    with db.get_engine(url).connect() as connection:
        return {r.hull_id: r for r in connection.execute(select(db.user_state))}


def touch_all(hull, users):
    """Re-index every user (as a write-back does) without changing a synced field."""
    hull.advance(5)
    for u in users:
        hull.upsert_user({**u, "traits_customerio/synced_at": "2026-11-29T12:00:00Z", "traits_unsynced": "x"})


def cio_writes(cio_sim):
    return [e for e in cio_sim.journal() if not e["path"].startswith("/_sim") and e["method"] in ("PUT", "POST")]


def test_unchanged_users_are_not_mapped_and_changes_still_sync(sim_env, hull, cio_sim, mapped):
    database_url = sim_env["STATE_DATABASE_URL"]
    users = [user(n) for n in range(1, 6)]
    for u in users:
        hull.upsert_user(u)
    first = sync_users(**SETTINGS)
    assert first["decisions"] == {"insert": 5}
    state = rows(database_url)
    assert all(r.source_digest for r in state.values())

    touch_all(hull, users)
    mapped.clear()
    cio_sim.clear_journal()
    again = sync_users(**SETTINGS)
    assert again["decisions"] == {"skip": 5} and again["skip_reasons"] == {"unchanged": 5}
    assert mapped == [] and cio_writes(cio_sim) == []
    assert rows(database_url) == state  # not a row written

    # One synced trait changed: that user (only) is mapped and updated.
    hull.advance(5)
    hull.upsert_user({**users[0], "traits_plan": "platinum"})
    mapped.clear()
    changed = sync_users(**SETTINGS)
    assert changed["decisions"] == {"update": 1} and mapped == [users[0]["id"]]
    assert cio_sim.people["u-1"]["plan"] == "platinum"


def test_a_settings_change_maps_everyone_once_then_the_digest_is_written_again(sim_env, hull, cio_sim, mapped):
    database_url = sim_env["STATE_DATABASE_URL"]
    users = [user(n) for n in range(1, 5)]
    for u in users:
        hull.upsert_user(u)
    sync_users(**SETTINGS)
    before = rows(database_url)

    # A setting that shapes the mapping, though it changes no attribute of these users.
    settings = {**SETTINGS, "max_attribute_value_length": 999}
    touch_all(hull, users)
    mapped.clear()
    cio_sim.clear_journal()
    remapped = sync_users(**settings)
    assert remapped["skip_reasons"] == {"unchanged": 4} and sorted(mapped) == sorted(u["id"] for u in users)
    assert cio_writes(cio_sim) == []
    after = rows(database_url)
    for hull_id, row in after.items():  # only the digest moved
        assert row.source_digest != before[hull_id].source_digest
        assert {**row._mapping, "source_digest": None} == {**before[hull_id]._mapping, "source_digest": None}

    touch_all(hull, users)
    mapped.clear()
    fast = sync_users(**settings)
    assert fast["skip_reasons"] == {"unchanged": 4} and mapped == []


def test_rows_from_before_the_digest_are_mapped_once(sim_env, hull, cio_sim, mapped):
    database_url = sim_env["STATE_DATABASE_URL"]
    users = [user(n) for n in range(1, 4)]
    for u in users:
        hull.upsert_user(u)
    sync_users(**SETTINGS)
    with db.get_engine(database_url).begin() as connection:  # as migration 0009 leaves them
        connection.execute(update(db.user_state).values(source_digest=None))

    touch_all(hull, users)
    mapped.clear()
    assert sync_users(**SETTINGS)["skip_reasons"] == {"unchanged": 3} and len(mapped) == 3
    touch_all(hull, users)
    mapped.clear()
    assert sync_users(**SETTINGS)["skip_reasons"] == {"unchanged": 3} and mapped == []
