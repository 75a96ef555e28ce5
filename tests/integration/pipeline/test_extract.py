"""Progress reporting, the prefetching page reader, and the Hull simulator's keyset fast path
(which keeps the benchmark's walk over a large workspace linear)."""

from __future__ import annotations

import pytest

from cio_sync.pipeline.extract import UserPagePrefetcher, fetch_users_page, users_query, walk_bound
from cio_sync.store.cursors import Cursor
from connectors.hull import HullClient
from simulators._search import paginate
from simulators.seed import seed_synthetic
from tests.support.sims import HULL_CONNECTOR_ID, HULL_SECRET


@pytest.fixture
def seeded_hull(hull_sim):
    # 150 users per indexed_at second: ties cross every page boundary.
    seed_synthetic(hull_sim, 1234, events_per_user=(0, 0))
    client = HullClient(
        f"{hull_sim.url}/api/v1", f"{hull_sim.url}/firehose", "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET
    )
    yield hull_sim, client
    client.close()


def walk(read) -> list[str]:
    cursor, ids = Cursor(), []
    while True:
        page = read(cursor)
        if not page.users:
            return ids
        ids.extend(u["id"] for u in page.users)
        cursor = page.cursor


def test_prefetching_reader_walks_exactly_like_the_plain_one(seeded_hull):
    _hull_sim, client = seeded_hull
    plain = walk(lambda c: fetch_users_page(client, c, 200))
    reader = UserPagePrefetcher(client, 200)
    try:
        prefetched = walk(reader.fetch)
        # A cursor other than the one read ahead is read afresh, not answered from the prefetch.
        first = reader.fetch(Cursor())
        other = reader.fetch(Cursor())
    finally:
        reader.close()
    assert prefetched == plain and len(plain) == 1234 == len(set(plain))
    assert [u["id"] for u in first.users] == [u["id"] for u in other.users] == plain[:200]
    assert first.remaining == 1234


@pytest.mark.parametrize("sweep_every", [5_000, 7])
def test_hull_simulator_keyset_fast_path_matches_the_general_search(seeded_hull, monkeypatch, sweep_every):
    import simulators.hull

    monkeypatch.setattr(simulators.hull, "DEAD_KEYS_SWEEP", sweep_every)
    hull_sim, client = seeded_hull
    cursors = [Cursor()]
    cursor = Cursor()
    for _ in range(8):
        page = fetch_users_page(client, cursor, 130)
        cursor = page.cursor
        cursors.append(cursor)
        # As the write-back does: re-index some users just read, leaving stale index entries.
        hull_sim.advance(1)
        for user in page.users[:20]:
            hull_sim.set_trait(user["id"], "customerio/id", user.get("external_id"))
    hull_sim.remove_user(page.users[-1]["id"])
    assert any(len(c.seen_ids) > 1 for c in cursors)
    with hull_sim.lock:
        assert len(hull_sim._order) - len(hull_sim._dead_keys) == len(hull_sim.users) == 1233
        for c in cursors:
            filters, must_not = users_query(c)
            query = {"bool": {"filter": filters, "must_not": must_not}}
            for page_number, direction in ((1, "asc"), (3, "asc"), (2, "desc")):
                fast = hull_sim._keyset_page(query, page_number, 100, direction)
                keys = hull_sim._matching_user_keys(query)
                if direction == "desc":
                    keys.reverse()
                assert fast == paginate(keys, page_number, 100)
        # Anything else still takes the general path.
        other = {"bool": {"filter": [{"terms": {"segment_ids": ["seg-vip"]}}]}}
        assert hull_sim._keyset_page(other, 1, 100, "asc") is None


def test_a_run_reads_up_to_what_hull_had_indexed_when_it_started(seeded_hull):
    hull_sim, client = seeded_hull
    until = walk_bound(client)
    assert until == max(u["indexed_at"] for u in hull_sim.users.values())
    first_page = fetch_users_page(client, Cursor(), 500, until=until)
    # A user is re-indexed mid-run (as the run's own write-back does): this run does not chase it...
    hull_sim.advance(5)
    touched = first_page.users[0]["id"]
    hull_sim.set_trait(touched, "customerio/id", "u-x")
    cursor, rest = first_page.cursor, []
    while (page := fetch_users_page(client, cursor, 500, until=until)).users:
        rest.extend(u["id"] for u in page.users)
        cursor = page.cursor
    assert len(first_page.users) + len(rest) == 1234 and touched not in rest
    # ...the next run does, from where this one stopped.
    assert [u["id"] for u in fetch_users_page(client, cursor, 500, until=walk_bound(client)).users] == [touched]
