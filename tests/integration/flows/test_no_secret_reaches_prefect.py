"""No credential anywhere the Prefect server keeps: every failure the suite can provoke (bad key,
whitespace, a header that cannot be sent, Hull down, Customer.io down, 401, 400, timeout) runs
as real flows against the temporary Prefect server, and then everything the UI can show for
those runs (states and their messages, logs, parameters, task runs, artifacts, pause forms,
events, and the result files Prefect stored) is searched for each secret. The CLI's output too."""

from __future__ import annotations

import json

import pytest

from cio_sync.cli.main import main as cli
from flows.check_connection import check_connection
from flows.drain_webhooks import drain_webhooks
from flows.rerun_failed_batches import rerun_failed_batches
from flows.sync_users import sync_users
from tests.support.builders import hull_user as user
from tests.support.prefect_api import everything_shown_for
from tests.support.sims import CIO_API_KEY, HULL_SECRET

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(synchronized_segments=["VIP"], synchronized_attributes=["plan"], enable_user_deletion=True)
WRONG_CIO_KEY = "wrong-cio-key-5ecret-a1b2c3"
WRONG_HULL_SECRET = "wrong-hull-5ecret-d4e5f6"
BROKEN_SECRET = "broken-5ecret-g7h8i9"
SECRETS = [CIO_API_KEY, HULL_SECRET, WRONG_CIO_KEY, WRONG_HULL_SECRET, BROKEN_SECRET]


def run(flow, **parameters):
    """The flow's run id; a failed run does not raise here."""
    state = flow(**parameters, return_state=True)
    return state.state_details.flow_run_id, state


def test_no_secret_reaches_prefect_or_the_terminal(sim_env, hull_sim, cio_sim, monkeypatch, capsys):
    from prefect.logging.handlers import APILogWorker

    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["VIP"]')  # for the CLI runs
    hull_sim.add_segment("s-vip", "VIP")
    for n in range(6):
        hull_sim.upsert_user(user(n))
    runs: dict[str, object] = {}

    # whitespace around both secrets (a mounted secret's newline): stripped, the run works
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", f" {HULL_SECRET}\n")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", f"{CIO_API_KEY} \r\n")
    runs["whitespace"], state = run(sync_users, **SETTINGS)
    assert state.is_completed() and len(cio_sim.people) == 6

    # 400 whose error text echoes the key, for one user
    hull_sim.advance(10)
    hull_sim.set_trait(user(1)["id"], "plan", "silver")
    cio_sim.faults.force("/customers/u-1", 400, {"meta": {"error": f"rejected for api key {CIO_API_KEY}"}})
    runs["400"], state = run(sync_users, **SETTINGS)
    assert state.is_completed()
    cio_sim.faults.clear()

    # Customer.io down: a failed batch, the run Failed; then the rerun while it is still down
    hull_sim.advance(10)
    hull_sim.set_trait(user(2)["id"], "plan", "bronze")
    cio_sim.faults.down(True)
    runs["customerio down"], state = run(sync_users, **SETTINGS)
    assert state.is_failed()
    runs["rerun, customerio down"], state = run(rerun_failed_batches, **SETTINGS)
    assert state.is_failed()
    cio_sim.faults.down(False)

    # timeout: Customer.io answers later than the client waits
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "0.3")
    monkeypatch.setenv("HTTP_RETRIES", "0")
    cio_sim.faults.latency(1.0)
    hull_sim.advance(10)
    hull_sim.set_trait(user(3)["id"], "plan", "tin")
    runs["timeout"], state = run(sync_users, **SETTINGS)
    assert state.is_failed()
    cio_sim.faults.latency(0)
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "5")

    # 401 from Customer.io (bad key), from the flow and from check-connection
    monkeypatch.setenv("CUSTOMERIO_API_KEY", WRONG_CIO_KEY)
    hull_sim.advance(10)
    hull_sim.set_trait(user(4)["id"], "plan", "lead")
    runs["customerio 401"], state = run(sync_users, **SETTINGS)
    assert state.is_failed() and "CUSTOMERIO_API_KEY" in state.message
    runs["check, customerio 401"], state = run(check_connection, synchronized_segments=["VIP"])
    assert state.is_failed()
    capsys.readouterr()
    assert cli(["sync-users"]) == 1
    assert cli(["check"]) == 1
    terminal = capsys.readouterr()
    monkeypatch.setenv("CUSTOMERIO_API_KEY", CIO_API_KEY)

    # 401 from Hull (bad secret), in the sync and in the drain
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", WRONG_HULL_SECRET)
    runs["hull 401"], state = run(sync_users, **SETTINGS)
    assert state.is_failed() and "HULL_CONNECTOR_SECRET" in state.message
    from cio_sync.store.db import get_engine
    from cio_sync.webhooks import inbox
    from tests.support.webhooks import legacy_payload

    payload = legacy_payload("email_opened", customer_id="u-1")
    inbox.store_payload(get_engine(sim_env["STATE_DATABASE_URL"]), payload["event_id"], json.dumps(payload))
    runs["drain, hull 401"], state = run(drain_webhooks)
    assert state.is_failed()

    # a header that cannot be sent: a line break inside the secret
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", f"{BROKEN_SECRET}\nX-Injected: yes")
    runs["header error"], state = run(sync_users, **SETTINGS)
    assert state.is_failed() and "HULL_CONNECTOR_SECRET contains a control character" in state.message
    capsys.readouterr()
    assert cli(["sync-users"]) == 2
    terminal_header = capsys.readouterr()
    monkeypatch.setenv("HULL_CONNECTOR_SECRET", HULL_SECRET)

    # Hull down
    hull_sim.faults.down(True)
    runs["hull down"], state = run(sync_users, **SETTINGS)
    assert state.is_failed()
    hull_sim.faults.down(False)

    APILogWorker.drain_all(timeout=30)
    shown = {name: everything_shown_for(run_id) for name, run_id in runs.items()}
    for name, text in shown.items():
        assert "log " in text and "state " in text, f"nothing read back for {name}"
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} reached Prefect in the {name!r} run"
    for output in (terminal.out, terminal.err, terminal_header.out, terminal_header.err):
        for secret in SECRETS:
            assert secret not in output
    # the failures really are there, described without the secrets
    assert "[redacted]" in shown["400"] and "rejected for api key" in shown["400"]
    assert "CUSTOMERIO_API_KEY" in shown["customerio 401"] and "HULL_CONNECTOR_SECRET" in shown["hull 401"]
    assert "HTTP 503" in shown["customerio down"] and "artifact sync-users-summary" in shown["timeout"]


def test_the_search_finds_a_planted_secret(sim_env):
    """The check above can fail: a value the scrubber does not know is found where it was put."""
    from prefect import flow, get_run_logger
    from prefect.artifacts import create_table_artifact
    from prefect.logging.handlers import APILogWorker

    canary = "canary-not-registered-0xfeed"

    @flow(name="plant-canary")
    def plant(value: str) -> None:
        get_run_logger().info("log %s", canary)
        create_table_artifact(key="canary", table=[{"value": canary}])
        raise ValueError(f"failed with {canary}")

    state = plant(canary, return_state=True)
    APILogWorker.drain_all(timeout=30)
    text = everything_shown_for(state.state_details.flow_run_id)
    lines = text.splitlines()
    assert f'parameters={{"value": "{canary}"}}' in text
    assert any(line.startswith("log ") and canary in line for line in lines)
    assert any(line.startswith("state FAILED") and canary in line for line in lines)
    assert any(line.startswith("artifact canary") and canary in line for line in lines)
    assert any(line.startswith("stored result: ") and canary in line for line in lines)  # the pickled exception
