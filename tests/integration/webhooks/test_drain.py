"""The drain against the Hull simulator, on SQLite and PostgreSQL."""

import json
import threading
from collections import Counter

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from cio_sync.pipeline.drain import drain_batch
from cio_sync.settings import ConnectorSettings, HullCredentials
from cio_sync.store.db import get_engine, webhook_inbox
from cio_sync.webhooks import inbox
from cio_sync.webhooks.mapping import map_webhook
from connectors.http import AuthError, RetryPolicy
from connectors.hull import HullClient
from tests.support.webhooks import legacy_payload, load_fixture, reporting_payload

pytestmark = pytest.mark.postgres  # the store layer: SQLite and PostgreSQL

# Hull outages must show up in the test within a second, not after the real backoff.
FAST_RETRY = RetryPolicy(total=1, backoff_factor=0.01, backoff_max=0.05, timeout=5)
FIXTURE_NAMES = ["legacy-email-opened.json", "legacy-email-drafted-noemail.json",
                 "reporting-customer-subscribed.json", "reporting-email-clicked.json",
                 "reporting-email-opened.json"]


@pytest.fixture
def hull_credentials(hull_sim):
    return HullCredentials(
        organization=hull_sim.organization,
        api_url=hull_sim.api_url,
        firehose_url=hull_sim.firehose_url,
        connector_id=hull_sim.connector_id,
        connector_secret=SecretStr(hull_sim.connector_secret),
    )


@pytest.fixture
def drain(database_url, hull_credentials):
    """Runs one drain batch with the test's database and the simulator."""

    def run(batch_size=500, worker_id="test-drain", user_id_mapping="external_id", credentials=None, **kwargs):
        kwargs.setdefault("retry", FAST_RETRY)
        return drain_batch(database_url, credentials or hull_credentials,
                           ConnectorSettings(user_id_mapping=user_id_mapping), batch_size, worker_id, **kwargs)

    return run


def store(database_url, payloads: list[dict]) -> None:
    engine = get_engine(database_url)
    for payload in payloads:
        assert inbox.store_payload(engine, payload["event_id"], json.dumps(payload)) == inbox.STORED


def rows_by_event_id(database_url) -> dict[str, dict]:
    with get_engine(database_url).connect() as connection:
        return {row["event_id"]: dict(row) for row in connection.execute(select(webhook_inbox)).mappings()}


def many_payloads(count: int) -> list[dict]:
    return [legacy_payload("email_opened", customer_id=f"cust-{n}", email_address=f"u{n}@example.com")
            for n in range(count)]


def test_every_row_is_sent_once_with_its_mapping_and_event_id(database_url, hull_sim, drain):
    fixtures = [load_fixture(name) for name in FIXTURE_NAMES]
    payloads = fixtures + many_payloads(115)  # 120 rows: three firehose POSTs
    store(database_url, payloads)

    counts = drain()

    assert counts == {"claimed": 120, "sent": 120, "ignored": 0, "failed": 0, "requeued": 0, "stopped": None}
    assert hull_sim.firehose_batches == 3  # at most 50 messages per POST
    tracked = {event["event_id"]: event for event in hull_sim.tracked_events}
    assert sorted(tracked) == sorted(p["event_id"] for p in payloads)
    for payload in fixtures:
        expected = map_webhook(payload, "external_id")
        sent = tracked[payload["event_id"]]
        assert sent["body"] == expected.event
        assert sent["as_user"] == expected.claims
    clicked = tracked["01E4C8BES5XT87ZWRJFTB35YJ3"]["body"]
    assert (clicked["event"], clicked["properties"]["href"]) == ("Email Link Clicked", "http://google.com")
    assert clicked["created_at"] == "2020-03-26T20:25:48Z"
    assert {row["status"] for row in rows_by_event_id(database_url).values()} == {"done"}
    assert drain()["claimed"] == 0  # nothing left, nothing sent again
    assert len(hull_sim.firehose_messages) == 120


def test_unmappable_rows_are_kept_with_their_reason_and_not_sent(database_url, hull_sim, drain):
    no_identity = legacy_payload("email_opened", customer_id=None, email_address=None)
    unknown_metric = reporting_payload("email", "teleported")
    other_channel = reporting_payload("sms", "delivered")
    good = legacy_payload("email_clicked", href="https://example.com/x")
    store(database_url, [no_identity, unknown_metric, other_channel, good])

    counts = drain()

    assert (counts["sent"], counts["ignored"], counts["failed"]) == (1, 2, 1)
    rows = rows_by_event_id(database_url)
    assert rows[no_identity["event_id"]]["status"] == "failed"
    assert rows[no_identity["event_id"]]["last_error"].startswith("no identity")
    assert rows[unknown_metric["event_id"]]["status"] == "ignored"
    assert "email_teleported" in rows[unknown_metric["event_id"]]["last_error"]
    assert rows[other_channel["event_id"]]["status"] == "ignored"
    assert [event["event_id"] for event in hull_sim.tracked_events] == [good["event_id"]]


def test_hull_down_then_back_up_loses_nothing_and_sends_nothing_twice(database_url, hull_sim, drain):
    payloads = many_payloads(70)
    store(database_url, payloads)

    hull_sim.faults.down(True)
    first = drain()
    assert (first["sent"], first["requeued"]) == (0, 70)
    assert first["stopped"].startswith("Hull unavailable for 70 webhooks")  # two POSTs: the breaker is still closed
    rows = rows_by_event_id(database_url)
    assert {(row["status"], row["attempts"]) for row in rows.values()} == {("pending", 1)}
    assert "503" in rows[payloads[0]["event_id"]]["last_error"]
    assert hull_sim.tracked_events == []

    hull_sim.faults.down(False)
    second = drain()
    assert (second["sent"], second["requeued"], second["stopped"]) == (70, 0, None)
    assert {row["status"] for row in rows_by_event_id(database_url).values()} == {"done"}
    assert sorted(e["event_id"] for e in hull_sim.tracked_events) == sorted(p["event_id"] for p in payloads)
    assert len(hull_sim.firehose_messages) == 70  # not one message sent twice


def test_three_failed_posts_in_a_row_open_the_breaker_and_the_rest_is_not_tried(database_url, hull_sim, drain):
    payloads = many_payloads(220)  # five POSTs of at most 50
    store(database_url, payloads)
    hull_sim.faults.down(True)

    counts = drain()

    assert (counts["sent"], counts["requeued"], counts["failed"]) == (0, 220, 0)
    assert counts["stopped"].startswith("Hull unavailable: 3 firehose POSTs in a row failed")
    # Three POSTs, each tried 1 + FAST_RETRY.total times; the last two were never sent.
    assert len([e for e in hull_sim.journal() if "firehose" in e["path"]]) == 3 * (1 + FAST_RETRY.total)
    rows = rows_by_event_id(database_url)
    attempts = Counter(rows[p["event_id"]]["attempts"] for p in payloads)
    assert attempts == {1: 150, 0: 70}  # not tried: no attempt counted
    assert {row["status"] for row in rows.values()} == {"pending"}

    hull_sim.faults.down(False)
    assert drain()["sent"] == 220 and len(hull_sim.firehose_messages) == 220


def test_the_breaker_counts_across_the_batches_of_a_run(database_url, hull_sim, drain):
    from cio_sync.pipeline.breaker import Breaker

    store(database_url, many_payloads(150))
    hull_sim.faults.down(True)
    run_breaker = Breaker()
    first = drain(batch_size=50, breaker=run_breaker)
    second = drain(batch_size=50, worker_id="test-drain-2", breaker=run_breaker)
    assert not run_breaker.open and "in a row" not in first["stopped"] + second["stopped"]
    third = drain(batch_size=50, worker_id="test-drain-3", breaker=run_breaker)
    assert run_breaker.open and third["stopped"].startswith("Hull unavailable: 3 firehose POSTs")


def test_outage_mid_batch_keeps_what_hull_accepted(database_url, hull_sim, drain):
    store(database_url, many_payloads(120))
    # The first POST (50 messages) gets through; the second fails past the retry budget.
    original_firehose = HullClient.firehose
    posts = Counter()

    def firehose_then_outage(self, messages):
        posts["n"] += 1
        if posts["n"] == 2:
            hull_sim.faults.down(True)
        return original_firehose(self, messages)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HullClient, "firehose", firehose_then_outage)
        counts = drain()
    assert (counts["sent"], counts["requeued"]) == (50, 70)
    statuses = Counter(row["status"] for row in rows_by_event_id(database_url).values())
    assert statuses == {"done": 50, "pending": 70}

    hull_sim.faults.down(False)
    assert drain()["sent"] == 70
    assert len(hull_sim.firehose_messages) == 120


def test_a_row_that_keeps_failing_is_marked_failed_after_max_attempts(database_url, hull_sim, drain):
    (payload,) = many_payloads(1)
    store(database_url, [payload])
    hull_sim.faults.down(True)
    assert drain(max_attempts=2)["requeued"] == 1
    counts = drain(max_attempts=2)
    assert (counts["requeued"], counts["failed"]) == (0, 1)
    row = rows_by_event_id(database_url)[payload["event_id"]]
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert "Hull" in row["last_error"] and "503" in row["last_error"]


def test_rejected_credentials_stop_the_drain_and_cost_no_attempt(database_url, hull_sim, hull_credentials, drain):
    store(database_url, many_payloads(3))
    wrong = hull_credentials.model_copy(update={"connector_secret": SecretStr("not-the-connector-secret-but-long-enough-for-hs256")})
    with pytest.raises(AuthError, match="HULL_CONNECTOR_SECRET"):
        drain(credentials=wrong)
    rows = rows_by_event_id(database_url).values()
    assert {(row["status"], row["attempts"], row["claimed_by"]) for row in rows} == {("pending", 0, None)}
    assert drain()["sent"] == 3


def test_a_message_hull_rejects_is_isolated_and_failed_alone(database_url, hull_sim, drain):
    payloads = many_payloads(30)
    poisoned = payloads[17]["event_id"]
    store(database_url, payloads)
    original_track_message = HullClient.track_message

    def with_one_bad_token(self, claims, event):
        message = original_track_message(self, claims, event)
        if event["event_id"] == poisoned:
            message["headers"]["Hull-Access-Token"] = "not-a-jwt"
        return message

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HullClient, "track_message", with_one_bad_token)
        counts = drain()

    assert (counts["sent"], counts["failed"]) == (29, 1)
    row = rows_by_event_id(database_url)[poisoned]
    assert row["status"] == "failed"
    assert "Hull rejected the event" in row["last_error"] and "invalid token" in row["last_error"]
    assert poisoned not in {event["event_id"] for event in hull_sim.tracked_events}
    assert len(hull_sim.tracked_events) == 29


def test_two_concurrent_drains_send_each_row_exactly_once(database_url, hull_sim, drain):
    payloads = many_payloads(300)
    store(database_url, payloads)
    hull_sim.faults.latency(0.02)  # keep both drains busy at the same time
    start = threading.Barrier(2)
    totals: dict[str, Counter] = {}
    errors: list[BaseException] = []

    def drain_until_empty(worker: str) -> None:
        total = totals.setdefault(worker, Counter())
        try:
            start.wait()
            while (counts := drain(batch_size=60, worker_id=worker))["claimed"]:
                total.update(sent=counts["sent"], claimed=counts["claimed"])
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=drain_until_empty, args=(f"drain-{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert all(total["sent"] > 0 for total in totals.values())  # both really took part
    assert sum(total["sent"] for total in totals.values()) == 300
    sent_event_ids = [message["body"]["event_id"] for message in hull_sim.firehose_messages]
    assert len(sent_event_ids) == 300 and sorted(sent_event_ids) == sorted(p["event_id"] for p in payloads)
    assert {row["status"] for row in rows_by_event_id(database_url).values()} == {"done"}


def test_max_attempts_comes_from_the_environment(database_url, hull_sim, drain, monkeypatch):
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "1")
    store(database_url, many_payloads(1))
    hull_sim.faults.down(True)
    counts = drain()
    assert (counts["requeued"], counts["failed"]) == (0, 1)
