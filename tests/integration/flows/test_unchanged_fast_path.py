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


def add_users(hull, count: int) -> list[dict]:
    """Users 1..count in the VIP segment, added to Hull."""
    users = [user(n) for n in range(1, count + 1)]
    for u in users:
        hull.upsert_user(u)
    return users


def touch_all(hull, users):
    """Re-index every user (as a write-back does) without changing a synced field."""
    hull.advance(5)
    for u in users:
        hull.upsert_user({**u, "traits_customerio/synced_at": "2026-11-29T12:00:00Z", "traits_unsynced": "x"})


def cio_writes(cio_sim):
    return [e for e in cio_sim.journal() if not e["path"].startswith("/_sim") and e["method"] in ("PUT", "POST")]


def test_unchanged_users_are_not_mapped_and_changes_still_sync(sim_env, hull, cio_sim, mapped):
    database_url = sim_env["STATE_DATABASE_URL"]
    users = add_users(hull, 5)
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
    users = add_users(hull, 4)
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
    users = add_users(hull, 3)
    sync_users(**SETTINGS)
    with db.get_engine(database_url).begin() as connection:  # as migration 0009 leaves them
        connection.execute(update(db.user_state).values(source_digest=None))

    touch_all(hull, users)
    mapped.clear()
    assert sync_users(**SETTINGS)["skip_reasons"] == {"unchanged": 3} and len(mapped) == 3
    touch_all(hull, users)
    mapped.clear()
    assert sync_users(**SETTINGS)["skip_reasons"] == {"unchanged": 3} and mapped == []


@pytest.fixture
def page_tasks(monkeypatch):
    """What the flow's page tasks did, in order: ("page", hull ids) for a `sync-users-page`
    task, ("quiet", pages) for a `sync-users-quiet-pages` task. The real functions run."""
    import tasks.sync_users_page as task_module

    seen: list[tuple[str, object]] = []
    real_page, real_quiet = task_module.sync_page, task_module.sync_quiet_pages

    def page(runtime, users, *args, **kwargs):
        seen.append(("page", [u["id"] for u in users]))
        return real_page(runtime, users, *args, **kwargs)

    def quiet(runtime, pages, *args, **kwargs):
        seen.append(("quiet", len(pages)))
        return real_quiet(runtime, pages, *args, **kwargs)

    monkeypatch.setattr(task_module, "sync_page", page)
    monkeypatch.setattr(task_module, "sync_quiet_pages", quiet)
    monkeypatch.setattr("flows.sync_users.QUIET_PAGES_PER_TASK", 4)
    return seen


def stored_cursor(url):
    from cio_sync.store.cursors import read_cursor

    return read_cursor(db.get_engine(url), "users")


def test_pages_that_send_nothing_share_one_task_and_the_cursor_still_moves_in_order(sim_env, hull, cio_sim, page_tasks):
    """A page of unchanged users costs no Prefect task of its own: consecutive quiet pages are
    recorded by one task (4 pages here), each in its own transaction with its cursor, and a page
    with something to send is synced only after the quiet pages before it are recorded."""
    database_url = sim_env["STATE_DATABASE_URL"]
    users = add_users(hull, 10)
    settings = {**SETTINGS, "users_per_batch": 1}
    assert sync_users(**settings)["decisions"] == {"insert": 10}
    assert [kind for kind, _ in page_tasks] == ["page"] * 10  # every page sent something
    state = rows(database_url)

    # Nothing changed: the first page is planned by its own task (nothing was planned ahead),
    # the nine after it by tasks of at most four pages.
    touch_all(hull, users)
    page_tasks.clear()
    cio_sim.clear_journal()
    again = sync_users(**settings)
    assert again["pages"] == 10 and again["skip_reasons"] == {"unchanged": 10}
    assert page_tasks == [("page", [users[0]["id"]]), ("quiet", 4), ("quiet", 4), ("quiet", 1)]
    assert cio_writes(cio_sim) == [] and rows(database_url) == state
    last = hull.users[users[-1]["id"]]["indexed_at"]
    assert stored_cursor(database_url).position == last

    # One user changed in the middle of the walk: the quiet pages before it are recorded first,
    # its page has a task of its own, the quiet pages after it share one again.
    touch_all(hull, users[:5])
    hull.upsert_user({**users[5], "traits_plan": "platinum"})
    touch_all(hull, users[6:])
    hull.advance(5)  # the write-back of user 6 re-indexes it after the walk's bound, for the next run
    page_tasks.clear()
    changed = sync_users(**settings)
    assert changed["decisions"] == {"update": 1, "skip": 9}
    assert page_tasks == [("page", [users[0]["id"]]), ("quiet", 4), ("page", [users[5]["id"]]), ("quiet", 4)]
    assert cio_sim.people["u-6"]["plan"] == "platinum"
    assert stored_cursor(database_url).position == hull.users[users[-1]["id"]]["indexed_at"]
