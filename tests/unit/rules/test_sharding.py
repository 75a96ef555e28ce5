"""Shard assignment and the shard-aware keyset walks (no Prefect: plain functions, and the
Hull simulator over real HTTP for the walks)."""

from __future__ import annotations

from collections import Counter

import pytest

from cio_sync.rules.sharding import WHOLE, Shard, shard_of
from tests.support.builders import object_ids


def test_assignment_is_a_fixed_function_of_the_id():
    # Pinned values: changing the hash would silently move every user to another shard.
    assert [shard_of("abc", 4), shard_of("abc", 7)] == [2, 5]
    assert [shard_of("5bd329d5e2bcf3eeaf000001", 4), shard_of("5bd329d5e2bcf3eeaf000002", 4)] == [1, 3]
    assert shard_of("anything", 1) == 0


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
