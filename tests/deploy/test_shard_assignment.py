"""Shard assignment and the shard-aware keyset walks (no Prefect: plain functions, and the
Hull simulator over real HTTP for the walks)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from cio_sync.settings import ConnectorSettings
from cio_sync.sharding import WHOLE, Shard, shard_of
from cio_sync.state import Cursor
from connectors.hull import HullClient
from simulators.seed import seed_synthetic
from tasks.events import fetch_events_page
from tasks.extract import fetch_users_page
from tests.conftest import HULL_CONNECTOR_ID, HULL_SECRET


def object_ids(count: int) -> list[str]:
    """Hull ids look like MongoDB ObjectIds: a shared prefix and a counter, the worst case
    for a weak hash."""
    return [f"5bd329d5e2bcf3ee{n:08x}" for n in range(count)]


def test_assignment_is_a_fixed_function_of_the_id():
    # Pinned values: changing the hash would silently move every user to another shard.
    assert [shard_of("abc", 4), shard_of("abc", 7)] == [2, 5]
    assert [shard_of("5bd329d5e2bcf3eeaf000001", 4), shard_of("5bd329d5e2bcf3eeaf000002", 4)] == [1, 3]
    assert shard_of("anything", 1) == 0


def test_assignment_does_not_depend_on_the_process():
    """Python's hash() is salted per process; the assignment must not be."""
    ids = object_ids(50)
    script = (
        "import sys; from cio_sync.sharding import shard_of; "
        "print(','.join(str(shard_of(i, 4)) for i in sys.argv[1:]))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", script, *ids], env=env, capture_output=True,
                                text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        outputs.add(result.stdout.strip())
    assert outputs == {",".join(str(shard_of(i, 4)) for i in ids)}


@pytest.mark.parametrize("shard_count", [2, 3, 4, 8])
def test_assignment_is_balanced(shard_count):
    ids = object_ids(20_000)
    counts = Counter(shard_of(i, shard_count) for i in ids)
    expected = len(ids) / shard_count
    assert sorted(counts) == list(range(shard_count))
    for shard, count in counts.items():
        assert abs(count - expected) < 0.05 * expected, (shard, count, expected)


def test_every_user_belongs_to_exactly_one_shard():
    ids = object_ids(5_000)
    shards = [Shard(index, 4) for index in range(4)]
    owners = {i: [s.index for s in shards if s.owns(i)] for i in ids}
    assert all(len(found) == 1 for found in owners.values())
    union = {i for s in shards for i in ids if s.owns(i)}
    assert union == set(ids)


def test_cursor_names_keep_the_unsharded_name_and_separate_shards():
    assert WHOLE.cursor_name("users") == "users"
    assert Shard(0, 1).cursor_name("events") == "events"
    names = {Shard(i, 4).cursor_name(stream) for i in range(4) for stream in ("users", "events")}
    assert names == {f"{stream}:shard:{i}/4" for i in range(4) for stream in ("users", "events")}
    # A different layout never reuses another layout's cursor.
    assert Shard(1, 2).cursor_name("users") != Shard(1, 4).cursor_name("users")
    assert all(len(name) <= 64 for name in names)  # sync_cursor.name is VARCHAR(64)


@pytest.mark.parametrize("index, count", [(-1, 4), (4, 4), (0, 0)])
def test_invalid_shards_are_refused(index, count):
    with pytest.raises(ValueError):
        Shard(index, count)


def test_events_follow_their_user():
    user_id = object_ids(1)[0]
    owner = shard_of(user_id, 4)
    event = {"event_id": "e-1", "user_id": user_id}
    assert [Shard(i, 4).owns_event(event) for i in range(4)] == [i == owner for i in range(4)]
    orphan = {"event_id": "e-without-user"}
    assert sum(Shard(i, 4).owns_event(orphan) for i in range(4)) == 1


# -- the keyset walks, against the Hull simulator --------------------------------------------


@pytest.fixture
def seeded_hull(hull_sim):
    # 150 users per indexed_at second: ties cross every page boundary of 100.
    seed_synthetic(hull_sim, 700, seed=3, events_per_user=(0, 3))
    client = HullClient(hull_sim.api_url, hull_sim.firehose_url, hull_sim.organization,
                        HULL_CONNECTOR_ID, HULL_SECRET)
    yield hull_sim, client
    client.close()


def walk_users(client: HullClient, shard: Shard, batch_size: int) -> list[list[str]]:
    cursor, batches = Cursor(), []
    while True:
        page = fetch_users_page(client, cursor, batch_size, shard)
        if not page.users:
            return batches
        assert len(page.users) <= batch_size
        batches.append([u["id"] for u in page.users])
        cursor = page.cursor


@pytest.mark.parametrize("batch_size", [7, 100, 500])
def test_shard_walks_together_return_every_user_once(seeded_hull, batch_size):
    hull_sim, client = seeded_hull
    everyone = set(hull_sim.users)
    seen: list[str] = []
    for index in range(4):
        shard = Shard(index, 4)
        ids = [i for batch in walk_users(client, shard, batch_size) for i in batch]
        assert all(shard.owns(i) for i in ids)
        assert len(ids) == len(set(ids))  # the cursor never steps back over a user
        seen.extend(ids)
    assert len(seen) == len(everyone) and set(seen) == everyone


def test_a_shard_batch_is_full_unless_the_stream_ends(seeded_hull):
    """The cursor moves over other shards' users too: a batch is filled from as many Hull
    pages as it takes, instead of stopping at the first page without own users."""
    hull_sim, client = seeded_hull
    shard = Shard(2, 4)
    batches = walk_users(client, shard, 50)
    own = sum(shard.owns(i) for i in hull_sim.users)
    assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1)
    assert sum(len(b) for b in batches) == own


def test_unsharded_walk_is_unchanged(seeded_hull):
    hull_sim, client = seeded_hull
    ids = [i for batch in walk_users(client, WHOLE, 100) for i in batch]
    assert sorted(ids) == sorted(hull_sim.users) and len(ids) == len(set(ids))


def events_runtime(client: HullClient, segment_ids: set[str]):
    settings = ConnectorSettings(events_filter=["page", "Order Completed", "Signed Up"])
    return SimpleNamespace(hull=client, settings=settings, whitelisted_segment_ids=segment_ids)


def walk_events(runtime, shard: Shard) -> list[dict]:
    cursor, events = Cursor(), []
    while True:
        page, cursor = fetch_events_page(runtime, cursor, per_page=20, shard=shard)
        if not page:
            return events
        events.extend(page)


def test_shard_event_walks_together_return_every_event_once(seeded_hull):
    hull_sim, client = seeded_hull
    runtime = events_runtime(client, set(hull_sim.segments))
    everything = walk_events(runtime, WHOLE)
    assert len(everything) > 200
    per_shard = {index: walk_events(runtime, Shard(index, 4)) for index in range(4)}
    for index, events in per_shard.items():
        assert all(shard_of(e["user_id"], 4) == index for e in events)
    found = [e["event_id"] for events in per_shard.values() for e in events]
    assert sorted(found) == sorted(e["event_id"] for e in everything)


def test_event_pages_without_own_events_are_read_through(hull_sim):
    """Forty events of another shard's user come first: the walk must not mistake the pages
    holding none of its events for the end of the stream."""
    hull_sim.add_segment("seg-a", "A")
    users = [{"id": i, "external_id": f"u-{n}", "segment_ids": ["seg-a"]} for n, i in enumerate(object_ids(40))]
    other, mine = users[0], next(u for u in users if shard_of(u["id"], 2) != shard_of(users[0]["id"], 2))
    for user in (other, mine):
        hull_sim.upsert_user(user)
    for n in range(40):
        hull_sim.add_event({"event_id": f"e-other-{n:03d}", "event": "page", "user_id": other["id"],
                            "created_at": "2026-11-20T10:00:00Z"})
    hull_sim.add_event({"event_id": "e-mine", "event": "page", "user_id": mine["id"],
                        "created_at": "2026-11-21T10:00:00Z"})
    client = HullClient(hull_sim.api_url, hull_sim.firehose_url, hull_sim.organization,
                        HULL_CONNECTOR_ID, HULL_SECRET)
    try:
        runtime = events_runtime(client, {"seg-a"})
        shard = Shard(shard_of(mine["id"], 2), 2)
        events, cursor = fetch_events_page(runtime, Cursor(), per_page=10, shard=shard)
        assert [e["event_id"] for e in events] == ["e-mine"]
        assert cursor.position and cursor.position.startswith("2026-11-21")
    finally:
        client.close()
