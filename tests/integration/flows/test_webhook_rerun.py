"""Webhook rows that exhausted their attempts during a long Hull outage are not lost: a manual
rerun puts them back and sends each exactly once."""

import json

import pytest

from cio_sync.cli.main import main
from cio_sync.store import db
from cio_sync.webhooks import inbox
from flows.drain_webhooks import DrainStopped, drain_webhooks
from flows.rerun_failed_batches import rerun_failed_batches
from tests.support.webhooks import reporting_payload

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_failed_webhook_rows_are_requeued_and_sent_once(sim_env, hull_sim, monkeypatch, capsys):
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    payloads = [reporting_payload("email", "opened") for _ in range(5)]
    for payload in payloads:
        inbox.store_payload(engine, payload["event_id"], json.dumps(payload))
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "1")
    hull_sim.faults.down(True)
    with pytest.raises(DrainStopped):
        drain_webhooks()
    assert inbox.count_by_status(engine)[inbox.FAILED] == 5

    assert main(["failed", "list"]) == 0
    assert "webhook inbox: 5 rows failed" in capsys.readouterr().out

    hull_sim.faults.down(False)
    result = rerun_failed_batches(requeue_failed_webhooks=True)
    assert result["batches"][0]["result"] == "resolved"
    assert inbox.count_by_status(engine)[inbox.DONE] == 5
    rerun_failed_batches(requeue_failed_webhooks=True)  # nothing failed: nothing sent again
    assert sorted(e["event_id"] for e in hull_sim.tracked_events) == sorted(p["event_id"] for p in payloads)
