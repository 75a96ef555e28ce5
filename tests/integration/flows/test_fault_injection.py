"""Whole flows against simulators with injected faults: the final Customer.io state must equal
a fault-free run's, every event must arrive exactly once, and nothing may be lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches
from flows.rerun_failed_batches import rerun_failed_batches
from flows.sync_users import SyncFailed, sync_users
from tests.support.scenario import SETTINGS, assert_events_exactly_once, customerio_state, seed
from tests.support.sims import CIO_API_KEY

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[3]


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
    # Only the work is kept; the settings of the day only tell a rerun what changed since.
    assert batches[0]["payload"]["settings_when_saved"]["synchronized_segments"] == ["VIP", "Trial"]

    cio_sim.faults.down(False)
    result = rerun_failed_batches(**SETTINGS)
    assert {row["result"] for row in result["batches"]} == {"resolved"}
    assert list_failed_batches(engine) == []

    cio_sim.clear_journal()
    again = rerun_failed_batches(batch_ids=[b["id"] for b in batches], **SETTINGS)  # twice sends nothing twice
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


def test_events_failing_after_retries_go_to_a_failed_batch_and_rerun_once(baseline, sim_env, hull_sim, cio_sim):
    expected = baseline(40)
    seed(hull_sim, 40)
    cio_sim.faults.force("/events", 503, method="POST")
    with pytest.raises(SyncFailed, match=r"3 events in a row even after retries, so the events phase stopped"):
        sync_users(**SETTINGS)
    batches = list_failed_batches(db.get_engine(sim_env["STATE_DATABASE_URL"]))
    assert [b["kind"] for b in batches] == ["events"] and cio_sim.events == []

    cio_sim.faults.clear()
    result = rerun_failed_batches(**SETTINGS)
    assert {row["result"] for row in result["batches"]} == {"resolved"}
    rerun_failed_batches(batch_ids=[batches[0]["id"]], **SETTINGS)  # twice: nothing new
    sync_users(**SETTINGS)
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)
