"""Whole flows against simulators with injected faults: the final Customer.io state must equal
a fault-free run's, every event must arrive exactly once, and nothing may be lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from cio_sync import db
from cio_sync.failed import list_failed_batches
from flows.rerun_failed_batches import rerun_failed_batches
from flows.sync_users import SyncFailed, sync_users
from simulators.customerio import CustomerIoSimulator
from simulators.hull import HullSimulator
from tests.conftest import CIO_API_KEY, CIO_SITE_ID, HULL_CONNECTOR_ID, HULL_SECRET, point_env_at
from tests.reliability.scenario import SETTINGS, customerio_state, seed

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]


def fault_free_state(monkeypatch, tmp_path, n_users: int) -> dict:
    """The Customer.io state an uninterrupted, fault-free run produces for the same data."""
    hull = HullSimulator(connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET).start()
    cio = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
    try:
        seed(hull, n_users)
        point_env_at(monkeypatch, hull, cio, f"sqlite:///{tmp_path / 'baseline.db'}")
        sync_users(**SETTINGS)
        return customerio_state(cio)
    finally:
        hull.stop()
        cio.stop()


@pytest.fixture
def baseline(monkeypatch, tmp_path, sim_env):
    def make(n_users: int = 120) -> dict:
        state = fault_free_state(monkeypatch, tmp_path, n_users)
        point_env_at(monkeypatch, *sim_env["_sims"], sim_env["STATE_DATABASE_URL"])
        return state

    return make


def assert_events_exactly_once(cio_sim, expected):
    ids = [e["id"] for e in cio_sim.events]
    assert len(ids) == len(set(ids)) == len(expected["events"])


def test_random_429_5xx_and_dropped_connections_converge(baseline, sim_env, hull_sim, cio_sim):
    expected = baseline()
    seed(hull_sim)
    cio_sim.faults.error_rate(0.2, statuses=(429, 500, 502, 503), seed=11)
    cio_sim.faults.drop_rate(0.05, seed=12)
    sync_users(**SETTINGS)
    failures = [e for e in cio_sim.journal() if e["status"] != 200]
    assert len(failures) > 20  # the faults really happened
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)


def test_customerio_down_for_a_whole_run_then_failed_batches_rerun(baseline, sim_env, hull_sim, cio_sim):
    expected = baseline()
    seed(hull_sim)
    cio_sim.faults.down(True)
    with pytest.raises(SyncFailed, match="failed batch"):
        sync_users(**SETTINGS)
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    batches = list_failed_batches(engine)
    assert batches and {b["kind"] for b in batches} == {"users"}
    assert "503" in batches[0]["error"] and CIO_API_KEY not in str(batches[0])
    assert batches[0]["payload"]["settings"]["synchronized_segments"] == ["VIP", "Trial"]

    cio_sim.faults.down(False)
    result = rerun_failed_batches()
    assert {row["result"] for row in result["batches"]} == {"resolved"}
    assert list_failed_batches(engine) == []

    cio_sim.clear_journal()
    again = rerun_failed_batches(batch_ids=[b["id"] for b in batches])  # a rerun twice sends nothing twice
    assert {row["result"] for row in again["batches"]} == {"already resolved"}
    assert [e for e in cio_sim.journal() if not e["path"].startswith("/_sim")] == []

    sync_users(**SETTINGS)  # the next scheduled run carries on (events, later pages)
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)


def test_hull_firehose_down_during_write_back_loses_nothing(sim_env, hull_sim, cio_sim):
    seed(hull_sim, 40)
    hull_sim.faults.force("/firehose", 503)
    summary = sync_users(**SETTINGS)
    synced = summary["decisions"]["insert"]
    assert summary["writeback_pending"] == synced and summary["writeback_sent"] == 0
    assert any("write-back" in w for w in summary["warnings"])
    assert not any("traits_customerio/id" in u for u in hull_sim.users.values())

    hull_sim.faults.clear()
    hull_sim.advance(5)
    after = sync_users(**SETTINGS)
    assert after["writeback_sent"] == synced and after["writeback_pending"] == 0
    assert sum(1 for u in hull_sim.users.values() if u.get("traits_customerio/id")) == synced


def test_sigkill_mid_run_then_rerun_converges(baseline, sim_env, hull_sim, cio_sim, tmp_path):
    n_users = 300
    expected = baseline(n_users)
    seed(hull_sim, n_users)
    cio_sim.faults.latency(0.03)
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PUSH_CONCURRENCY": "2",
        "SYNC_LEASE_TTL_SECONDS": "1",
        "SYNCHRONIZED_SEGMENTS": '["VIP", "Trial"]',
        "SYNCHRONIZED_ATTRIBUTES": '["plan", "coconuts", "last_order_at"]',
        "EVENTS_FILTER": '["Signed Up", "page"]',
        "ENABLE_USER_DELETION": "true",
    }
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session's test server: no start-up wait
    process = subprocess.Popen(
        [sys.executable, "-m", "cio_sync.cli", "sync-users"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if sum(1 for e in cio_sim.journal() if e["method"] == "PUT") >= 40:
                break
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: nothing of the run survives
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    sent_before_kill = len(cio_sim.people)
    assert 0 < sent_before_kill < len(expected["people"])  # it really died mid-run

    cio_sim.faults.latency(0)
    time.sleep(1.2)  # the killed run's lease expires by itself
    sync_users(**SETTINGS)
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)


def test_events_failing_after_retries_go_to_a_failed_batch_and_rerun_once(baseline, sim_env, hull_sim, cio_sim):
    expected = baseline(40)
    seed(hull_sim, 40)
    cio_sim.faults.force("/events", 503, method="POST")
    with pytest.raises(SyncFailed, match=r"0 users and \d+ events could not be sent"):
        sync_users(**SETTINGS)
    batches = list_failed_batches(db.get_engine(sim_env["STATE_DATABASE_URL"]))
    assert [b["kind"] for b in batches] == ["events"] and cio_sim.events == []

    cio_sim.faults.clear()
    result = rerun_failed_batches()
    assert {row["result"] for row in result["batches"]} == {"resolved"}
    rerun_failed_batches(batch_ids=[batches[0]["id"]])  # twice: nothing new
    sync_users(**SETTINGS)
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)
