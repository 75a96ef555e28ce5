"""The resync requests store (cio_sync/store/resync.py), on SQLite and PostgreSQL."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from cio_sync.store import db
from cio_sync.store.resync import (
    ResyncRequest,
    count_resync_requests,
    finish_resync,
    forget_sent_state,
    pending_resync,
    request_resync,
    state_hull_ids,
)
from cio_sync.store.users import record_user_outcomes

pytestmark = pytest.mark.postgres


def seed_state(engine) -> None:
    rows = [
        {"hull_id": f"h{n}", "cio_id": f"u-{n}", "attributes_hash": "abc", "rejected_hash": "bad", "segment_ids": seg}
        for n, seg in enumerate([["s-vip"], ["s-trial"], ["s-vip", "s-trial"], [], None])
    ]
    with engine.begin() as connection:
        record_user_outcomes(connection, rows)


def test_people_of_a_segment_at_their_last_sync(database_url):
    engine = db.get_engine(database_url)
    seed_state(engine)
    assert list(state_hull_ids(engine, {"s-vip"})) == ["h0", "h2"]
    assert list(state_hull_ids(engine)) == ["h0", "h1", "h2", "h3", "h4"]


def test_requests_are_read_in_keyset_chunks_and_a_newer_request_survives_finishing(database_url):
    engine = db.get_engine(database_url)
    assert request_resync(engine, ["h2", "h0", "h1", "h0"], "resync --user") == 3
    first = pending_resync(engine, "", 2)
    assert [r.hull_id for r in first] == ["h0", "h1"]
    assert [r.hull_id for r in pending_resync(engine, first[-1].hull_id, 2)] == ["h2"]
    # h1 is asked for again after it was read: finishing the old read keeps the new request.
    stale = [ResyncRequest(first[0].hull_id, first[0].requested_at), ResyncRequest("h1", first[1].requested_at)]
    request_resync(engine, ["h1"], "again")
    with engine.begin() as connection:
        connection.execute(
            db.resync_requests.update()
            .where(db.resync_requests.c.hull_id == "h1")
            .values(requested_at=first[1].requested_at + timedelta(seconds=5))
        )
    finish_resync(engine, stale)
    assert [r.hull_id for r in pending_resync(engine, "", 10)] == ["h1", "h2"]
    assert count_resync_requests(engine) == 2


def test_forgetting_sent_state_clears_both_hashes_of_those_people_only(database_url):
    engine = db.get_engine(database_url)
    seed_state(engine)
    forget_sent_state(engine, ["h1"])
    with engine.connect() as connection:
        rows = {
            r.hull_id: (r.attributes_hash, r.rejected_hash)
            for r in connection.execute(
                select(db.user_state.c.hull_id, db.user_state.c.attributes_hash, db.user_state.c.rejected_hash)
            )
        }
    assert rows["h1"] == (None, None) and rows["h0"] == ("abc", "bad")
