"""The sync log through whole runs: `cio-sync explain` tells each person's history (inserts,
updates, a delete, a 400, a failed batch, a duplicate id, events, email activity); a dry run
publishes old → new; the summary carries freshness."""

from __future__ import annotations

import json

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from cio_sync.cli.main import main
from cio_sync.store import db
from cio_sync.webhooks import inbox
from flows.sync_users import SyncFailed, sync_users
from tests.support.builders import hull_user
from tests.support.sims import poison_v2_entry
from tests.support.webhooks import legacy_payload

pytestmark = pytest.mark.usefixtures("prefect_harness")

SETTINGS = dict(
    synchronized_segments=["VIP"],
    synchronized_attributes=["plan"],
    events_filter=["Signed Up"],
    enable_user_deletion=True,
)


def run(**extra) -> dict | None:
    """A run; one that ends Failed (a failed batch) is part of the story here."""
    try:
        return sync_users(**SETTINGS, push_concurrency=1, **extra)
    except SyncFailed:
        return None


def explain(capsys, person: str, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["explain", person, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def explain_json(capsys, person: str) -> dict:
    code, out, err = explain(capsys, person, "--json")
    assert code == 0, err
    return json.loads(out)


def artifact(flow_run_id, key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert found, f"the run published no {key} artifact"
    return found[0].data


def test_explain_tells_each_persons_history(sim_env, hull, cio_sim, capsys, monkeypatch):
    monkeypatch.setenv("HTTP_RETRIES", "0")
    for n in range(5):
        hull.upsert_user(hull_user(n))
    hull.upsert_user(hull_user(5, external_id="u-0"))  # the same Customer.io id as user 0
    hull.add_event(
        {
            "event_id": "ev-0",
            "event": "Signed Up",
            "user_id": hull_user(0)["id"],
            "created_at": "2026-11-26T09:00:00Z",
            "properties": {},
        }
    )
    cio_sim.faults.force("/customers/u-1", 400, {"meta": {"error": "something is wrong with u-1"}})
    cio_sim.faults.force("/customers/u-3", 503, method="PUT")
    run()  # 0, 2, 4 inserted; 1 rejected (400); 3 in a failed batch; 5 skipped (duplicate id)

    hull.advance(5)
    hull.upsert_user({"id": hull_user(2)["id"], "traits_plan": "platinum"})  # an update
    hull.upsert_user({"id": hull_user(4)["id"], "segment_ids": ["s-other"]})  # leaves: a delete
    run()
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    payload = legacy_payload("email_opened", customer_id="u-0", email_address="user0@example.com")
    inbox.store_payload(engine, payload["event_id"], json.dumps(payload))

    zero = explain_json(capsys, hull_user(0)["id"])
    assert zero["cio_id"] == "u-0" and zero["state"]["last_decision"] == "insert"
    [insert] = zero["sync_log"]  # run 2 found it unchanged: nothing logged
    assert insert["decision"] == "insert" and insert["writeback"] == "sent"
    assert [(c["call"], c["status"]) for c in insert["calls"]] == [("identify 1/1", 200)]
    assert "plan" in insert["changed"] and insert["values"] is None  # names only by default
    assert [(e["hull_event_id"], e["status"]) for e in zero["events"]] == [("ev-0", "sent")]
    assert [(a["event"], a["status"]) for a in zero["email_activity"]] == [("email_opened", "pending")]
    assert explain_json(capsys, "user0@example.com")["hull_id"] == hull_user(0)["id"]  # by email

    one = explain_json(capsys, "u-1")
    assert "something is wrong with u-1" in one["state"]["last_error"]
    rejected = one["sync_log"][-1]
    assert rejected["decision"] == "insert" and rejected["error"].startswith("permanent:")
    assert rejected["calls"] == [{"call": "identify 1/1", "status": 400, "error": "something is wrong with u-1"}]
    assert one["sync_log"][0]["reason"] == "rejected_unchanged"  # run 2: not tried again

    two = explain_json(capsys, "u-2")
    assert (two["sync_log"][0]["decision"], two["sync_log"][0]["changed"]) == ("update", ["plan"])
    assert [r["decision"] for r in two["sync_log"]] == ["update", "insert"]

    three = explain_json(capsys, "u-3")
    assert three["failed_batches"] and three["failed_batches"][0]["kind"] == "users"
    assert three["sync_log"][-1]["error"].startswith("transient:")
    assert three["sync_log"][-1]["calls"][0]["status"] == 503

    four = explain_json(capsys, "u-4")
    decisions = [(r["decision"], r["reason"]) for r in four["sync_log"]]
    assert decisions[0] == ("delete", "sent by the deletion guard: left every synchronized segment")
    assert decisions[1][0] == "delete" and decisions[1][1].startswith("planned")
    assert [(c["call"], c["status"]) for c in four["sync_log"][0]["calls"]] == [("delete", 200)]
    assert four["state"]["deleted_at"] is not None and four["sync_log"][0]["writeback"] == "sent"

    # The screen: the same history, in words.
    code, out, err = explain(capsys, "u-1")
    assert code == 0 and "call identify 1/1: 400 — something is wrong with u-1" in out
    assert "Prefect" not in err  # the database only: no temporary Prefect server
    code, out, _ = explain(capsys, "u-3")
    assert code == 0 and "open failed batches holding the person:\n  #" in out
    code, out, _ = explain(capsys, hull_user(0)["id"])
    assert "email_opened" in out and "ev-0" in out and "write-back: sent" in out

    # Two Hull users logged under one Customer.io id; and nobody.
    code, _, err = explain(capsys, "u-0")
    assert code == 1 and "2 people match" in err and hull_user(5)["id"] in err and hull_user(0)["id"] in err
    code, _, err = explain(capsys, "nobody@example.com")
    assert code == 1 and "nobody matches" in err


def test_v2_calls_and_values_are_logged_when_asked(sim_env, hull, cio_sim, capsys, monkeypatch):
    monkeypatch.setenv("SYNC_LOG_VALUES", "true")
    for n in range(3):
        hull.upsert_user(hull_user(n))
    poison_v2_entry(cio_sim, "u-1")
    run(customerio_api="v2_batch")

    one = explain_json(capsys, "u-1")["sync_log"][0]
    assert one["calls"][-1]["status"] == 400 and one["calls"][-1]["call"] == "batch: identify 1/1"
    zero = explain_json(capsys, "u-0")["sync_log"][0]
    assert [(c["call"], c["status"]) for c in zero["calls"]] == [("batch: identify 1/1", 200)]
    assert zero["values"]["plan"] == "gold"


def test_dry_run_publishes_old_and_new_of_a_changed_attribute(sim_env, hull, cio_sim):
    for n in range(3):
        hull.upsert_user(hull_user(n))
    run()
    hull.advance(5)
    hull.upsert_user({"id": hull_user(1)["id"], "traits_plan": "platinum"})
    state = sync_users(**SETTINGS, dry_run=True, return_state=True)
    summary = state.result()
    assert summary["decisions"].get("update") == 1
    markdown = artifact(state.state_details.flow_run_id, "sync-users-plan")
    assert f"update: Hull user `{hull_user(1)['id']}`" in markdown
    line = next(row for row in markdown.splitlines() if row.startswith("| `plan`"))
    old, new = (cell.strip() for cell in line.split("|")[2:4])
    assert old.startswith("sha256:") and new.startswith("sha256:") and old != new
    assert "platinum" not in markdown and "gold" not in markdown  # values hashed: sync_log_values is off


def test_dry_run_shows_values_logged_before_when_values_are_on(sim_env, hull, cio_sim, monkeypatch):
    monkeypatch.setenv("SYNC_LOG_VALUES", "true")
    hull.upsert_user(hull_user(1))
    run()
    hull.advance(5)
    hull.upsert_user({"id": hull_user(1)["id"], "traits_plan": "platinum"})
    state = sync_users(**SETTINGS, dry_run=True, return_state=True)
    markdown = artifact(state.state_details.flow_run_id, "sync-users-plan")
    assert "| `plan` | 'gold' | 'platinum' |" in markdown


def test_freshness_figures_are_in_the_summary_artifact(sim_env, hull, cio_sim):
    for n in range(4):
        hull.upsert_user(hull_user(n))
    state = sync_users(**SETTINGS, return_state=True)
    summary = state.result()
    assert summary["freshness"]["count"] == 4
    assert 0 <= summary["freshness"]["p50_seconds"] <= summary["freshness"]["max_seconds"]
    table = artifact(state.state_details.flow_run_id, "sync-users-summary")
    rows = table if isinstance(table, list) else json.loads(table)
    metrics = {row["metric"] for row in rows}
    assert {
        "freshness p50: Hull indexed_at → Customer.io accepted",
        "freshness p95: Hull indexed_at → Customer.io accepted",
        "freshness max: Hull indexed_at → Customer.io accepted",
    } <= metrics
