"""The deletion guard end to end: real Prefect flows (and a real temporary Prefect server),
real HTTP to both simulators, real SQL. Nothing destructive without intent."""

from __future__ import annotations

import threading
import time

import pytest

from cio_sync.cli.main import main as cli
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user as user
from tests.support.guard import leave, planned_rows, seed, two_hundred_of_1000_leave
from tests.support.prefect_api import artifacts_of, table_of

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], enable_user_deletion=True)


def deletes(cio_sim) -> list[str]:
    return [e["path"].rsplit("/", 1)[-1] for e in cio_sim.journal() if e["method"] == "DELETE"]


def cio_calls(cio_sim) -> list[dict]:
    return [e for e in cio_sim.journal() if not e["path"].startswith("/_sim")]


def test_a_renamed_segment_with_deletion_on_deletes_nobody_and_fails_naming_it(sim_env, hull, cio_sim):
    seed(hull, 5)
    sync_users(**SETTINGS)
    assert len(cio_sim.people) == 5
    hull.add_segment("s-vip", "VIP customers")  # renamed in Hull
    hull.advance(10)
    for n in range(5):
        hull.set_trait(user(n)["id"], "plan", "touched")
    cio_sim.clear_journal()
    with pytest.raises(SyncFailed) as failure:
        sync_users(**SETTINGS)
    message = str(failure.value)
    assert "'VIP'" in message and "does not exist in Hull" in message
    assert "'VIP customers' (s-vip)" in message and "'Other' (s-other)" in message
    assert cio_calls(cio_sim) == [] and len(cio_sim.people) == 5
    assert planned_rows(sim_env["STATE_DATABASE_URL"]) == []


def test_no_segment_with_deletion_on_deletes_nobody(sim_env, hull, cio_sim):
    seed(hull, 3)
    sync_users(**SETTINGS)
    cio_sim.clear_journal()
    with pytest.raises(SyncFailed, match="synchronized_segments is empty"):
        sync_users(synchronized_segments=[], enable_user_deletion=True)
    assert cio_calls(cio_sim) == [] and len(cio_sim.people) == 3


@pytest.mark.postgres
def test_5_of_30_leaving_are_deleted_without_approval(sim_env, hull, cio_sim):
    seed(hull, 30)
    sync_users(**SETTINGS)
    leave(hull, range(5))
    summary = sync_users(**SETTINGS)
    assert sorted(deletes(cio_sim)) == sorted(f"u-{n}" for n in range(5))
    assert summary["deletions"] == {"sent": 5} and summary["calls"]["delete"] == 5
    assert len(cio_sim.people) == 25
    assert {r.status for r in planned_rows(sim_env["STATE_DATABASE_URL"])} == {"sent"}


def test_200_of_1000_leaving_wait_for_approval_and_the_cli_approves_exactly_them(
    sim_env, hull, cio_sim, monkeypatch, capsys
):
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["VIP"]')
    monkeypatch.setenv("ENABLE_USER_DELETION", "true")
    expected, err = two_hundred_of_1000_leave(hull, cio_sim, capsys)
    assert "200 people would be deleted" in err and "max_deletions_per_run (100)" in err
    assert "cio-sync sync-users --approve-deletions" in err
    assert deletes(cio_sim) == [] and len(cio_sim.people) == 1000
    rows = planned_rows(sim_env["STATE_DATABASE_URL"])
    (plan_run,) = {r.flow_run_id for r in rows}
    (artifact,) = artifacts_of(plan_run, "deletion-plan")
    table = table_of(artifact)
    assert sorted(r["Customer.io id"] for r in table) == expected
    assert {r["why"] for r in table} == {"left every synchronized segment"}
    assert all(r["email"] and r["Hull id"] for r in table)
    assert "200 people" in artifact.description

    assert cli(["sync-users", "--approve-deletions"]) == 0
    assert sorted(deletes(cio_sim)) == expected
    assert len(cio_sim.people) == 800 and not set(expected) & set(cio_sim.people)
    assert cli(["sync-users"]) == 0
    assert sorted(deletes(cio_sim)) == expected  # nothing more


def test_approval_covers_that_plan_only(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "2")
    seed(hull, 10)
    sync_users(**SETTINGS)
    leave(hull, [1, 2, 3])
    with pytest.raises(SyncFailed, match="3 people would be deleted"):
        sync_users(**SETTINGS)
    leave(hull, [4, 5, 6])  # after the plan was published
    hull.set_segments(user(3)["id"], ["s-vip"])  # back before the approval: kept
    with pytest.raises(SyncFailed, match="3 people would be deleted"):  # the three newcomers: a new plan
        sync_users(**SETTINGS, approve_deletions=True)
    assert sorted(deletes(cio_sim)) == ["u-1", "u-2"]
    assert "u-3" in cio_sim.people and {"u-4", "u-5", "u-6"} <= set(cio_sim.people)


def test_turning_deletion_off_cancels_what_was_planned(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "1")
    seed(hull, 4)
    sync_users(**SETTINGS)
    leave(hull, [0, 1])
    with pytest.raises(SyncFailed, match="2 people would be deleted"):
        sync_users(**SETTINGS)
    # No users overlap: re-reading users 0 and 1 would cancel their planned deletes in the page
    # (decided again without a delete) before the guard itself sees deletion is off.
    summary = sync_users(
        synchronized_segments=["VIP"], enable_user_deletion=False, approve_deletions=True, users_overlap_seconds=0
    )
    assert deletes(cio_sim) == []
    assert summary["deletions"] == {"not deleted: enable_user_deletion is off": 2}
    assert {r.status for r in planned_rows(sim_env["STATE_DATABASE_URL"])} == {"cancelled"}


def _deployment_run(parameters: dict):
    """A flow run created from a deployment of `sync-users` on the Prefect server, and a thread
    executing it the way a worker's process would (the run knows its deployment)."""
    from prefect import get_client
    from prefect.flow_engine import run_flow

    deployment_id = sync_users.to_deployment(name="deletion-guard-test").apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    outcome: dict = {}

    def execute() -> None:
        try:
            outcome["result"] = run_flow(sync_users, flow_run=flow_run, parameters=parameters)
        except BaseException as exc:  # reported to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=execute, name="deployment-run")
    thread.start()
    return flow_run.id, thread, outcome


def _wait_until_paused(flow_run_id, thread, timeout: float = 180):
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_paused():
                return client, run
            assert thread.is_alive(), "the run ended without pausing"
            time.sleep(0.5)
    raise AssertionError("the run never paused")


def test_a_deployment_run_pauses_and_deletes_the_plan_once_approved_through_the_api(
    sim_env, hull, cio_sim, monkeypatch
):
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "3")
    monkeypatch.setenv("DELETION_APPROVAL_POLL_SECONDS", "1")
    seed(hull, 12)
    sync_users(**SETTINGS)
    leave(hull, [2, 4, 6, 8])
    run_id, thread, outcome = _deployment_run(SETTINGS)
    _wait_until_paused(run_id, thread)
    assert deletes(cio_sim) == []  # nothing before the answer
    with get_client(sync_client=True) as client:
        keyset = client.read_flow_run(run_id).state.state_details.run_input_keyset
        form = client.read_flow_run_input(run_id, keyset["description"])
    assert "Remove 4 people" in form and "people deleted, more than" in form and "u-4" in form
    resume_flow_run(run_id, run_input={"approve": True, "note": "ticket OPS-1"})
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert sorted(deletes(cio_sim)) == ["u-2", "u-4", "u-6", "u-8"]
    assert outcome["result"]["deletions"] == {"sent": 4}
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).state.is_completed()
    plans = planned_rows(sim_env["STATE_DATABASE_URL"])
    assert {r.status for r in plans} == {"sent"} and len({r.plan_id for r in plans}) == 1


def test_a_deployment_run_rejected_in_the_ui_keeps_everyone(sim_env, hull, cio_sim, monkeypatch):
    from prefect.flow_runs import resume_flow_run

    monkeypatch.setenv("MAX_DELETIONS_PER_RUN", "1")
    monkeypatch.setenv("DELETION_APPROVAL_POLL_SECONDS", "1")
    seed(hull, 4)
    sync_users(**SETTINGS)
    leave(hull, [0, 1])
    run_id, thread, outcome = _deployment_run(SETTINGS)
    _wait_until_paused(run_id, thread)
    resume_flow_run(run_id, run_input={"approve": False})
    thread.join(timeout=180)
    assert "error" not in outcome, outcome.get("error")
    assert deletes(cio_sim) == [] and len(cio_sim.people) == 4
    assert outcome["result"]["deletions"] == {"kept: plan rejected": 2}
    assert {r.status for r in planned_rows(sim_env["STATE_DATABASE_URL"])} == {"rejected"}
    # Nobody changed: nothing is planned again (no users overlap: a re-read within the overlap
    # window would decide them again and plan a new deletion for approval).
    sync_users(**SETTINGS, users_overlap_seconds=0)
    assert deletes(cio_sim) == []
