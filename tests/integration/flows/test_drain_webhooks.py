"""The drain-webhooks flow under the Prefect test harness (one real run)."""

import json

import pytest

from cio_sync.settings import MissingSettingsError
from cio_sync.store.db import get_engine
from cio_sync.webhooks import inbox
from simulators.env import simulator_environment
from tests.support.webhooks import legacy_payload, load_fixture, reporting_payload

LAGS = ("p50", "p95", "max")


@pytest.fixture
def drain_env(monkeypatch, tmp_path, hull_sim, cio_sim, sqlite_url):
    monkeypatch.delenv("USER_ID_MAPPING", raising=False)
    for key, value in simulator_environment(hull_sim, cio_sim, sqlite_url).items():
        if not key.startswith("CUSTOMERIO_"):  # the drain talks to Hull only
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("HTTP_BACKOFF_SECONDS", "0.01")  # same retry policy, shorter sleeps (as point_env_at)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return monkeypatch


def test_drain_flow_sends_the_inbox_and_publishes_a_summary(prefect_harness, drain_env, hull_sim, sqlite_url):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.drain_webhooks import SUMMARY_ARTIFACT_KEY, drain_webhooks

    payloads = [
        load_fixture("reporting-email-opened.json"),
        load_fixture("legacy-email-opened.json"),
        legacy_payload("email_sent"),
        legacy_payload("email_bounced", failure_message="5.1.1"),
        legacy_payload("email_opened", customer_id=None, email_address=None),  # no identity
        reporting_payload("webhook", "sent"),
    ]  # another channel
    engine = get_engine(sqlite_url)
    for payload in payloads:
        inbox.store_payload(engine, payload["event_id"], json.dumps(payload))

    state = drain_webhooks(batch_size=4, return_state=True)
    summary = state.result()

    assert {k: summary[k] for k in ("batches", "sent", "ignored", "failed", "pending")} == {
        "batches": 2,
        "sent": 4,
        "ignored": 1,
        "failed": 1,
        "pending": 0,
    }
    assert summary["inbox"] == {"pending": 0, "processing": 0, "done": 4, "ignored": 1, "failed": 1}
    assert len(hull_sim.tracked_events) == 4
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            # This run's artifact only: other tests of the session publish under the same key.
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert artifacts, "the run published no summary artifact"
    table = artifacts[0].data if isinstance(artifacts[0].data, list) else json.loads(artifacts[0].data)
    rows = {row["outcome"]: (row["this run"], row["inbox total"]) for row in table}
    lag = {figure: rows.pop(f"lag from webhook received to Hull accepted, {figure} (seconds)")[0] for figure in LAGS}
    assert rows == {
        "sent": (4, 4),
        "ignored": (1, 1),
        "failed": (1, 1),
        "pending": (0, 0),
        "of them waiting for a retry": ("", 0),
        "oldest pending (seconds since received)": ("", "-"),
    }
    # Freshness: the 4 rows sent were stored just before the run.
    assert lag == summary["hull_lag_seconds"]
    assert 0 <= lag["p50"] <= lag["p95"] <= lag["max"] < 600
    assert hull_sim.connector_secret not in json.dumps(table)


def test_drain_flow_names_missing_hull_settings_before_any_call(prefect_harness, drain_env, hull_sim):
    from flows.drain_webhooks import drain_webhooks

    drain_env.delenv("HULL_CONNECTOR_SECRET")
    with pytest.raises(MissingSettingsError, match="HULL_CONNECTOR_SECRET"):
        drain_webhooks()
    assert hull_sim.journal() == []


def test_drain_flow_with_hull_down_stops_after_one_batch_and_says_so(prefect_harness, drain_env, hull_sim, sqlite_url):
    from cio_sync.pipeline.drain import drain_retry_policy
    from flows.drain_webhooks import DrainStopped, drain_webhooks

    engine = get_engine(sqlite_url)
    for n in range(120):
        payload = legacy_payload("email_opened", customer_id=f"c-{n}")
        inbox.store_payload(engine, payload["event_id"], json.dumps(payload))
    hull_sim.faults.down(True)

    with pytest.raises(DrainStopped, match="Hull unavailable: 3 firehose POSTs in a row failed"):
        drain_webhooks(batch_size=200)

    assert inbox.count_by_status(engine)["pending"] == 120
    posts = [e for e in hull_sim.journal() if "firehose" in e["path"]]
    assert len(posts) == 3 * (1 + drain_retry_policy().total)  # the batch's three POSTs with their retries, no more


def test_drain_reports_an_old_pending_webhook_as_an_event_over_the_threshold(
    prefect_harness, drain_env, hull_sim, sqlite_url
):
    import time
    from datetime import timedelta

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    from cio_sync.pipeline.alert_events import BACKLOG_EVENT
    from cio_sync.store.db import utcnow
    from flows.drain_webhooks import drain_webhooks

    started = utcnow()
    payload = legacy_payload("email_sent")
    inbox.store_payload(
        get_engine(sqlite_url), payload["event_id"], json.dumps(payload), now=started - timedelta(minutes=20)
    )
    summary = drain_webhooks(max_batches=0)  # sends nothing: the row stays pending
    assert summary["oldest_pending_age_seconds"] >= 20 * 60
    assert summary["hull_lag_seconds"] == {"p50": None, "p95": None, "max": None}

    flt = EventFilter(event=EventNameFilter(name=[BACKLOG_EVENT]), occurred=EventOccurredFilter(since=started))
    events: list = []
    deadline = time.monotonic() + 30  # events reach the server's store asynchronously
    with get_client(sync_client=True) as client:
        while not events and time.monotonic() < deadline:
            events = client.read_events(filter=flt, limit=10).events
            if not events:
                time.sleep(0.5)
    assert events, "the drain emitted no backlog event"
    event = events[0]
    assert event.resource["cio-sync.over-threshold"] == "true"
    assert event.payload["oldest_pending_age_seconds"] >= 20 * 60 and event.payload["pending"] == 1
