"""No two runs write the same users at once, and a crashed run never blocks the next one:
the users-writer leases (cio_sync/store/lease.py, cio_sync/pipeline/leases.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cio_sync.pipeline.leases import writer_lease
from cio_sync.rules.sharding import WHOLE_SCOPE, Shard, layout_scope, scopes_overlap
from cio_sync.store import db
from cio_sync.store.db import utcnow
from cio_sync.store.failed import list_failed_batches, record_failed_batch
from cio_sync.store.lease import Holder, Lease, LeaseHeld, LeaseLost, _proc_stat, list_leases
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user

REPO = Path(__file__).resolve().parents[3]
ELSEWHERE = "another-machine pid-namespace:[1]"


def other_machine(label: str, flow_run_id: str | None = None) -> Holder:
    """A holder on another host: its pid cannot be judged from here."""
    return Holder(label, host=ELSEWHERE, pid=4242, flow_run_id=flow_run_id)


def scoped(engine, scope: str, holder: Holder | str, ttl=timedelta(minutes=5)) -> Lease:
    return Lease(engine, scope, holder, ttl, conflicts=scopes_overlap)


# -- the store: SQLite and PostgreSQL ----------------------------------------------------------


@pytest.mark.postgres
def test_lease_excludes_a_second_holder_until_released_or_expired(database_url):
    engine = db.get_engine(database_url)
    first = Lease(engine, "job", other_machine("run-a"), ttl=timedelta(minutes=5))
    second = Lease(engine, "job", other_machine("run-b"), ttl=timedelta(minutes=5))
    first.acquire()
    with pytest.raises(LeaseHeld, match="run-a"):
        second.acquire()
    first.renew()
    first.release()
    second.acquire()  # free again
    second.release()

    expired = Lease(engine, "job", other_machine("run-killed"), ttl=timedelta(seconds=-1))
    expired.acquire()  # a run that stopped renewing: its lease is already past its expiry
    second.acquire()
    with pytest.raises(LeaseLost):
        expired.renew()  # the old holder finds out at its next renewal
    second.release()


@pytest.mark.postgres
def test_writers_of_the_same_users_exclude_each_other_and_shards_of_one_layout_do_not(database_url):
    engine = db.get_engine(database_url)
    shard = [Shard(i, 4).writer_scope() for i in range(4)]
    held = [scoped(engine, s, other_machine(f"shard {s}")) for s in shard]
    for lease in held:
        lease.acquire()  # the four shards of one layout run side by side
    for intruder in (WHOLE_SCOPE, Shard(0, 2).writer_scope(), layout_scope(2), shard[1]):
        with pytest.raises(LeaseHeld):
            scoped(engine, intruder, other_machine(f"intruder {intruder}")).acquire()
    for lease in held:
        lease.release()

    parent = scoped(engine, layout_scope(4), other_machine("sharded parent"))
    parent.acquire()
    child = scoped(engine, shard[2], other_machine("its shard"))
    child.acquire()  # the parent's own shards may write
    with pytest.raises(LeaseHeld, match="sharded parent"):
        scoped(engine, WHOLE_SCOPE, other_machine("rerun-failed-batches")).acquire()
    with pytest.raises(LeaseHeld, match="sharded parent"):
        scoped(engine, layout_scope(4), other_machine("a second sharded run")).acquire()
    child.release()
    parent.release()

    whole = scoped(engine, WHOLE_SCOPE, other_machine("sync-users"))
    whole.acquire()
    with pytest.raises(LeaseHeld, match="sync-users"):
        scoped(engine, shard[0], other_machine("a shard")).acquire()
    whole.release()
    assert list_leases(engine) == []


@pytest.mark.postgres
def test_a_dead_process_on_this_host_is_taken_over_at_once(database_url):
    engine = db.get_engine(database_url)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stat = _proc_stat(process.pid)
        assert stat is not None
        here = Holder.this_process("probe")
        killed_run = Holder("sync-users (pid about to die)", host=here.host, pid=process.pid, process_start=stat[1])
        Lease(engine, WHOLE_SCOPE, killed_run, ttl=timedelta(minutes=10)).acquire()
        with pytest.raises(LeaseHeld):  # alive: its lease holds
            writer_lease(engine, WHOLE_SCOPE, "next run").acquire()
    finally:
        process.kill()
        process.wait()
    nxt = writer_lease(engine, WHOLE_SCOPE, "next run")
    nxt.acquire()  # at once, although the dead run's lease has ten minutes left
    (row,) = list_leases(engine)
    assert row.holder == nxt.holder.label and row.pid == os.getpid()
    nxt.release()

    # A pid reused by a process that started later is not the holder: taken over too.
    reused = Holder("a run whose pid was reused", host=here.host, pid=os.getpid(), process_start="1")
    Lease(engine, WHOLE_SCOPE, reused, ttl=timedelta(minutes=10)).acquire()
    nxt.acquire()
    nxt.release()

    # The same pid on another host says nothing about the holder: it keeps its lease.
    Lease(
        engine, WHOLE_SCOPE, Holder("elsewhere", host=ELSEWHERE, pid=process.pid), ttl=timedelta(minutes=10)
    ).acquire()
    with pytest.raises(LeaseHeld, match="elsewhere"):
        nxt.acquire()


@pytest.mark.postgres
def test_a_heartbeat_keeps_the_lease_past_its_ttl_and_notices_when_it_is_lost(database_url):
    engine = db.get_engine(database_url)
    ttl = timedelta(seconds=2)
    lease = Lease(engine, WHOLE_SCOPE, other_machine("a long run"), ttl, conflicts=scopes_overlap)
    lease.acquire()
    first_expiry = list_leases(engine)[0].expires_at
    lease.start_heartbeat(0.1)
    try:
        while utcnow() < first_expiry + timedelta(seconds=0.5):
            time.sleep(0.05)
        with pytest.raises(LeaseHeld, match="a long run"):  # past the first expiry: still held
            scoped(engine, WHOLE_SCOPE, other_machine("intruder"), ttl).acquire()
        lease.check()

        # Taken by hand (`cio-sync lease release`) and by another run: the heartbeat notices.
        from cio_sync.store.lease import force_release

        force_release(engine, WHOLE_SCOPE)
        scoped(engine, WHOLE_SCOPE, other_machine("the other run"), ttl).acquire()
        deadline = time.monotonic() + 30
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match="taken over"):
            lease.check()
    finally:
        lease.stop_heartbeat()


# -- whole flows ------------------------------------------------------------------------------


@pytest.fixture
def vip(hull_sim):
    hull_sim.add_segment("s-vip", "VIP")
    for n in range(3):
        hull_sim.upsert_user(hull_user(n))
    return hull_sim


@pytest.mark.usefixtures("prefect_harness")
def test_a_sync_run_started_while_another_holds_the_lease_does_nothing(sim_env, vip, cio_sim):
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    running = scoped(engine, WHOLE_SCOPE, other_machine("scheduled-run-on-worker-1"))
    running.acquire()
    with pytest.raises(SyncFailed, match="scheduled-run-on-worker-1"):
        sync_users(synchronized_segments=["VIP"])
    with pytest.raises(SyncFailed, match="scheduled-run-on-worker-1"):  # nor does a shard
        sync_users(synchronized_segments=["VIP"], shard_count=2, shard_index=1)
    assert cio_sim.people == {}
    # A dry run changes nothing, so it may look while a real run works.
    assert sync_users(synchronized_segments=["VIP"], dry_run=True)["decisions"] == {"insert": 3}
    running.release()
    assert sync_users(synchronized_segments=["VIP"])["decisions"] == {"insert": 3}
    assert list_leases(engine) == []  # released at the end


@pytest.mark.usefixtures("prefect_harness")
def test_a_lease_of_a_flow_run_that_ended_is_taken_over_at_once(sim_env, vip, cio_sim):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="lease-holder-that-ended")
    def ended() -> None:
        """A run that crashed or finished without releasing its lease."""

    finished = ended(return_state=True).state_details.flow_run_id
    with get_client(sync_client=True) as client:
        still_running = client.create_flow_run(ended, state=Running()).id
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])

    Lease(
        engine, WHOLE_SCOPE, other_machine("a run on a lost worker", str(still_running)), ttl=timedelta(minutes=10)
    ).acquire()
    with pytest.raises(SyncFailed, match="a run on a lost worker"):
        sync_users(synchronized_segments=["VIP"])

    from cio_sync.store.lease import force_release

    force_release(engine, WHOLE_SCOPE)
    Lease(engine, WHOLE_SCOPE, other_machine("a run that ended", str(finished)), ttl=timedelta(minutes=10)).acquire()
    assert sync_users(synchronized_segments=["VIP"])["decisions"] == {"insert": 3}


@pytest.mark.usefixtures("prefect_harness")
def test_an_events_phase_longer_than_the_lease_ttl_keeps_its_lease(sim_env, vip, cio_sim, monkeypatch):
    import cio_sync.pipeline.events_page as events_page

    monkeypatch.setenv("SYNC_LEASE_TTL_SECONDS", "2")
    monkeypatch.setenv("SYNC_LEASE_HEARTBEAT_SECONDS", "0.1")
    for n in range(3):
        vip.add_event(
            {
                "event_id": f"e-{n}",
                "event": "Signed Up",
                "user_id": hull_user(n)["id"],
                "created_at": "2026-11-26T10:00:00Z",
            }
        )
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    original, intruders = events_page.fetch_events_page, []

    def slow_events_phase(*args, **kwargs):
        if not intruders:
            (row,) = list_leases(engine)
            while utcnow() < row.acquired_at + timedelta(seconds=2.5):  # longer than the TTL
                time.sleep(0.05)
            try:
                scoped(engine, WHOLE_SCOPE, other_machine("a run started meanwhile")).acquire()
                intruders.append("took the lease")
            except LeaseHeld as exc:
                intruders.append(str(exc))
        return original(*args, **kwargs)

    monkeypatch.setattr(events_page, "fetch_events_page", slow_events_phase)
    summary = sync_users(synchronized_segments=["VIP"], events_filter=["Signed Up"])

    assert len(intruders) == 1 and "sync-users on" in intruders[0]
    assert summary["events"]["sent"] == 3 and len(cio_sim.events) == 3


@pytest.mark.usefixtures("prefect_harness")
def test_a_rerun_of_failed_batches_started_during_a_sync_does_not_overwrite_newer_state(
    sim_env, vip, cio_sim, monkeypatch, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    import cio_sync.pipeline.users_page as users_page

    settings = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan"])
    sync_users(**settings)
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    user = hull_user(1)
    with engine.begin() as connection:  # an earlier outage left user 1 in a failed batch
        batch_id = record_failed_batch(connection, "users", {"hull_ids": [user["id"]]}, "Customer.io 503", None)
    vip.advance(10)
    vip.set_trait(user["id"], "plan", "platinum")  # the newer copy the running sync will send

    original, reruns = users_page.record_page, []

    def rerun_while_this_page_is_being_recorded(*args, **kwargs):
        if not reruns:
            env = {
                **os.environ,
                **{k: v for k, v in sim_env.items() if isinstance(v, str)},
                "SYNCHRONIZED_SEGMENTS": '["VIP"]',
                "SYNCHRONIZED_ATTRIBUTES": '["plan"]',
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "PREFECT_HOME": str(tmp_path / "prefect-home"),
            }
            reruns.append(
                subprocess.run(
                    [sys.executable, "-m", "cio_sync.cli.main", "failed", "rerun"],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            )
        return original(*args, **kwargs)

    monkeypatch.setattr(users_page, "record_page", rerun_while_this_page_is_being_recorded)
    cio_sim.clear_journal()
    summary = sync_users(**settings, failed_batch_auto_retries=0)

    (rerun,) = reruns
    assert rerun.returncode == 1 and "holds the lease 'users:all'" in rerun.stderr, rerun.stderr
    puts = [e for e in cio_sim.journal() if e["method"] == "PUT"]
    assert [e["body"].get("plan") for e in puts] == ["platinum"]  # the sync's copy only, once
    assert summary["decisions"] == {"update": 1, "skip": 2}
    assert cio_sim.people["u-1"]["plan"] == "platinum"
    (open_batch,) = list_failed_batches(engine)
    assert open_batch["id"] == batch_id and open_batch["attempts"] == 1  # the rerun did nothing

    # Rerun afterwards: the user is already in sync, nothing is sent, the batch is resolved.
    monkeypatch.setattr(users_page, "record_page", original)
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["VIP"]')
    monkeypatch.setenv("SYNCHRONIZED_ATTRIBUTES", '["plan"]')
    cio_sim.clear_journal()
    from flows.rerun_failed_batches import rerun_failed_batches

    assert [r["result"] for r in rerun_failed_batches()["batches"]] == ["resolved"]
    assert [e for e in cio_sim.journal() if not e["path"].startswith("/_sim")] == []
    with engine.connect() as connection:
        row = connection.execute(select(db.user_state).where(db.user_state.c.hull_id == user["id"])).one()
    assert row.last_decision == "update"
