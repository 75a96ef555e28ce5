"""Two sync runs never overlap: a database lease, respected by runs started by hand."""

from datetime import timedelta

import pytest

from cio_sync.store import db
from cio_sync.store.lease import Lease, LeaseHeld
from flows.sync_users import SyncFailed, lease_name, sync_users

pytestmark = pytest.mark.postgres  # the store layer: SQLite and PostgreSQL


def test_lease_excludes_a_second_holder_until_released_or_expired(database_url):
    engine = db.get_engine(database_url)
    first = Lease(engine, "job", "run-a", ttl=timedelta(minutes=5))
    second = Lease(engine, "job", "run-b", ttl=timedelta(minutes=5))
    first.acquire()
    with pytest.raises(LeaseHeld, match="run-a"):
        second.acquire()
    first.renew()
    first.release()
    second.acquire()  # free again
    second.release()

    expired = Lease(engine, "job", "run-killed", ttl=timedelta(seconds=-1))
    expired.acquire()  # a run that died: its lease is already past its expiry
    second.acquire()
    second.release()


@pytest.mark.usefixtures("prefect_harness")
def test_a_sync_run_started_while_another_holds_the_lease_does_nothing(sim_env, hull_sim, cio_sim):
    hull_sim.add_segment("s-vip", "VIP")
    hull_sim.upsert_user({"id": "5bd329d5e2bcf3eeaf000001", "email": "a@b.c", "external_id": "u-1",
                          "segment_ids": ["s-vip"]})
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    running = Lease(engine, lease_name("users"), "scheduled-run-on-worker-1")
    running.acquire()
    with pytest.raises(SyncFailed, match="scheduled-run-on-worker-1"):
        sync_users(synchronized_segments=["VIP"])
    assert cio_sim.people == {}
    # A dry run changes nothing, so it may look while a real run works.
    assert sync_users(synchronized_segments=["VIP"], dry_run=True)["decisions"] == {"insert": 1}
    running.release()
    assert sync_users(synchronized_segments=["VIP"])["decisions"] == {"insert": 1}
