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

from cio_sync.store import db
from cio_sync.store.lease import list_leases
from tests.support.scenario import assert_events_exactly_once, customerio_state, seed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.postgres
def test_sigkill_mid_run_then_an_immediate_rerun_exits_0_and_converges(baseline, sim_env, hull_sim, cio_sim, tmp_path):
    n_users = 300
    expected = baseline(n_users)
    seed(hull_sim, n_users)
    cio_sim.faults.latency(0.03)
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PUSH_CONCURRENCY": "2",
        "SYNCHRONIZED_SEGMENTS": '["VIP", "Trial"]',
        "SYNCHRONIZED_ATTRIBUTES": '["plan", "coconuts", "last_order_at"]',
        "EVENTS_FILTER": '["Signed Up", "page"]',
        "ENABLE_USER_DELETION": "true",
    }
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session's test server: no start-up wait
    process = subprocess.Popen(
        [sys.executable, "-m", "cio_sync.cli.main", "sync-users"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
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

    # At once, no waiting: the killed run's lease (TTL 60 s by default) names a process of this
    # host that is gone, so the next run takes it over and carries on.
    (left_behind,) = list_leases(db.get_engine(sim_env["STATE_DATABASE_URL"]))
    assert not left_behind.expired() and left_behind.pid == process.pid and left_behind.process_gone()
    cio_sim.faults.latency(0)
    rerun = subprocess.run(
        [sys.executable, "-m", "cio_sync.cli.main", "sync-users"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert customerio_state(cio_sim) == expected
    assert_events_exactly_once(cio_sim, expected)
