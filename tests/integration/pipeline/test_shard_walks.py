"""Shard assignment and the shard-aware keyset walks (no Prefect: plain functions, and the
Hull simulator over real HTTP for the walks)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cio_sync.pipeline.events_page import fetch_events_page
from cio_sync.pipeline.extract import fetch_users_page
from cio_sync.rules.sharding import WHOLE, Shard, shard_of
from cio_sync.settings import ConnectorSettings
from cio_sync.store.cursors import Cursor
from connectors.hull import HullClient
from simulators.seed import seed_synthetic
from tests.support.builders import object_ids
from tests.support.sims import HULL_CONNECTOR_ID, HULL_SECRET


def test_assignment_does_not_depend_on_the_process():
    """Python's hash() is salted per process; the assignment must not be."""
    ids = object_ids(50)
    script = (
        "import sys; from cio_sync.rules.sharding import shard_of; "
        "print(','.join(str(shard_of(i, 4)) for i in sys.argv[1:]))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script, *ids],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        )
        outputs.add(result.stdout.strip())
    assert outputs == {",".join(str(shard_of(i, 4)) for i in ids)}


# -- the keyset walks, against the Hull simulator --------------------------------------------


@pytest.fixture
def seeded_hull(hull_sim):
    # 150 users per indexed_at second: ties cross every page boundary of 100.
    seed_synthetic(hull_sim, 700, seed=3, events_per_user=(0, 3))
    client = HullClient(hull_sim.api_url, hull_sim.firehose_url, hull_sim.organization, HULL_CONNECTOR_ID, HULL_SECRET)
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
        hull_sim.add_event(
            {
                "event_id": f"e-other-{n:03d}",
                "event": "page",
                "user_id": other["id"],
                "created_at": "2026-11-20T10:00:00Z",
            }
        )
    hull_sim.add_event(
        {"event_id": "e-mine", "event": "page", "user_id": mine["id"], "created_at": "2026-11-21T10:00:00Z"}
    )
    client = HullClient(hull_sim.api_url, hull_sim.firehose_url, hull_sim.organization, HULL_CONNECTOR_ID, HULL_SECRET)
    try:
        runtime = events_runtime(client, {"seg-a"})
        shard = Shard(shard_of(mine["id"], 2), 2)
        events, cursor = fetch_events_page(runtime, Cursor(), per_page=10, shard=shard)
        assert [e["event_id"] for e in events] == ["e-mine"]
        assert cursor.position and cursor.position.startswith("2026-11-21")
    finally:
        client.close()
