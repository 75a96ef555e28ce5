"""The drain against the Hull simulator, on SQLite and PostgreSQL."""

import json
import threading
from collections import Counter
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from cio_sync.pipeline.drain import drain_batch
from cio_sync.settings import ConnectorSettings, HullCredentials, WebhookSettings
from cio_sync.store.db import as_utc, get_engine, utcnow, webhook_inbox
from cio_sync.webhooks import inbox
from cio_sync.webhooks.mapping import dedupe_key, map_webhook
from connectors.http import AuthError, RetryPolicy
from connectors.hull import HullClient
from tests.support.webhooks import legacy_payload, load_fixture, reporting_payload

pytestmark = pytest.mark.postgres  # the store layer: SQLite and PostgreSQL

# Hull outages must show up in the test within a second, not after the real backoff.
FAST_RETRY = RetryPolicy(total=1, backoff_factor=0.01, backoff_max=0.05, timeout=5)
MINUTE = timedelta(minutes=1)
FIXTURE_NAMES = [
    "legacy-email-opened.json",
    "legacy-email-drafted-noemail.json",
    "reporting-customer-subscribed.json",
    "reporting-email-clicked.json",
    "reporting-email-opened.json",
]


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
        # The defaults, whatever the developer's environment says (tests that read the
        # environment pass webhook_settings=None).
        kwargs.setdefault("webhook_settings", WebhookSettings(_env_file=None, **DEFAULT_SETTINGS))
        return drain_batch(
            database_url,
            credentials or hull_credentials,
            ConnectorSettings(user_id_mapping=user_id_mapping),
            batch_size,
            worker_id,
            **kwargs,
        )

    return run


DEFAULT_SETTINGS = {
    "webhook_retry_base_seconds": 30,
    "webhook_retry_max_seconds": 3600,
    "webhook_retry_hours": 24,
    "webhook_max_attempts": None,
    "webhook_claim_timeout_seconds": 600,
}


def store(database_url, payloads: list[dict]) -> None:
    engine = get_engine(database_url)
    for payload in payloads:
        assert inbox.store_payload(engine, payload["event_id"], json.dumps(payload)) == inbox.STORED


def rows_by_event_id(database_url) -> dict[str, dict]:
    with get_engine(database_url).connect() as connection:
        rows = connection.execute(select(webhook_inbox)).mappings().all()
    # SQLite gives naive datetimes back; every one is UTC.
    return {row["event_id"]: {k: as_utc(v) if hasattr(v, "tzinfo") else v for k, v in row.items()} for row in rows}


def many_payloads(count: int) -> list[dict]:
    return [
        legacy_payload("email_opened", customer_id=f"cust-{n}", email_address=f"u{n}@example.com") for n in range(count)
    ]


def test_every_row_is_sent_once_with_its_mapping_and_event_id(database_url, hull_sim, drain):
    fixtures = [load_fixture(name) for name in FIXTURE_NAMES]
    payloads = fixtures + many_payloads(115)  # 120 rows: three firehose POSTs
    store(database_url, payloads)

    counts = drain()

    lags = counts.pop("lag_seconds")
    assert counts == {"claimed": 120, "sent": 120, "ignored": 0, "failed": 0, "requeued": 0, "stopped": None}
    assert len(lags) == 120 and all(0 <= lag < 600 for lag in lags)  # one lag per row Hull accepted
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
    now = utcnow()

    hull_sim.faults.down(True)
    first = drain(now=now)
    assert (first["sent"], first["requeued"]) == (0, 70)
    assert first["stopped"].startswith("Hull unavailable for 70 webhooks")  # two POSTs: the breaker is still closed
    rows = rows_by_event_id(database_url)
    assert {(row["status"], row["attempts"], row["next_attempt_at"]) for row in rows.values()} == {
        ("pending", 1, now + timedelta(seconds=30))
    }
    assert "503" in rows[payloads[0]["event_id"]]["last_error"]
    assert hull_sim.tracked_events == []

    hull_sim.faults.down(False)
    assert drain(now=now + timedelta(seconds=29))["claimed"] == 0  # backing off: not yet due
    second = drain(now=now + timedelta(seconds=30))
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
    # The 70 never tried are due at once; the 150 tried wait for their backoff (30 s).
    assert drain()["sent"] == 70
    later = utcnow() + timedelta(seconds=31)
    assert drain(now=later)["sent"] == 150 and len(hull_sim.firehose_messages) == 220


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
    counting = threading.Lock()  # POSTs after the first go out in parallel

    def firehose_then_outage(self, messages):
        with counting:
            posts["n"] += 1
            if posts["n"] == 2:
                hull_sim.faults.down(True)
        return original_firehose(self, messages)

    now = utcnow()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HullClient, "firehose", firehose_then_outage)
        counts = drain(now=now)
    assert (counts["sent"], counts["requeued"]) == (50, 70)
    statuses = Counter(row["status"] for row in rows_by_event_id(database_url).values())
    assert statuses == {"done": 50, "pending": 70}

    hull_sim.faults.down(False)
    assert drain(now=now + MINUTE)["sent"] == 70
    assert len(hull_sim.firehose_messages) == 120


def test_a_two_hour_hull_outage_loses_nothing_and_sends_each_webhook_once(database_url, hull_sim, drain):
    # One drain a minute for two hours, Hull down throughout; the clock is moved, not waited.
    payloads = many_payloads(3)
    store(database_url, payloads)
    engine = get_engine(database_url)
    t0 = utcnow()
    hull_sim.faults.down(True)
    tried_at = []
    for minute in range(121):
        counts = drain(now=t0 + minute * MINUTE)
        if counts["claimed"]:
            tried_at.append(minute)
            assert (counts["requeued"], counts["failed"]) == (3, 0)
        assert inbox.count_by_status(engine)["pending"] == 3  # never failed, never lost
    # Backoff 30 s, 1, 2, 4, 8, 16, 32 min, then hourly: 8 attempts where the old
    # 10-attempts-a-minute rule had failed every row after 10 minutes.
    assert tried_at == [0, 1, 2, 4, 8, 16, 32, 64]
    assert hull_sim.tracked_events == []
    assert inbox.backlog(engine, now=t0 + 120 * MINUTE)["retrying"] == 3

    hull_sim.faults.down(False)
    assert drain(now=t0 + 121 * MINUTE)["claimed"] == 0  # next attempt is due at 124 min
    counts = drain(now=t0 + 124 * MINUTE)
    assert (counts["sent"], counts["requeued"], counts["failed"], counts["stopped"]) == (3, 0, 0, None)
    rows = rows_by_event_id(database_url).values()
    assert {(row["status"], row["attempts"], row["first_failed_at"]) for row in rows} == {("done", 8, t0)}
    assert sorted(m["body"]["event_id"] for m in hull_sim.firehose_messages) == sorted(p["event_id"] for p in payloads)
    assert inbox.backlog(engine, now=t0 + 124 * MINUTE) == {
        "pending": 0,
        "retrying": 0,
        "oldest_pending_age_seconds": None,
        "failed": 0,
    }


def test_a_row_failing_for_longer_than_the_retry_window_is_marked_failed(database_url, hull_sim, drain):
    (payload,) = many_payloads(1)
    store(database_url, [payload])
    t0 = utcnow()
    hull_sim.faults.down(True)
    assert drain(now=t0)["requeued"] == 1
    assert drain(now=t0 + timedelta(hours=23, minutes=59))["requeued"] == 1  # still within 24 h
    counts = drain(now=t0 + timedelta(hours=24, minutes=1))
    assert (counts["requeued"], counts["failed"]) == (0, 1)
    assert "given up" in counts["stopped"]
    row = rows_by_event_id(database_url)[payload["event_id"]]
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("failed", 3, None)
    assert "Hull" in row["last_error"] and "503" in row["last_error"]
    assert inbox.backlog(get_engine(database_url), now=t0 + timedelta(hours=25))["failed"] == 1


def test_rejected_credentials_stop_the_drain_and_cost_no_attempt(database_url, hull_sim, hull_credentials, drain):
    store(database_url, many_payloads(3))
    wrong = hull_credentials.model_copy(
        update={"connector_secret": SecretStr("not-the-connector-secret-but-long-enough-for-hs256")}
    )
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


def test_retry_settings_come_from_the_environment(database_url, hull_sim, drain, monkeypatch):
    for name in ("WEBHOOK_RETRY_HOURS", "WEBHOOK_MAX_ATTEMPTS", "WEBHOOK_RETRY_MAX_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEBHOOK_RETRY_BASE_SECONDS", "5")
    first, second = many_payloads(2)
    store(database_url, [first])
    hull_sim.faults.down(True)
    now = utcnow()
    assert drain(webhook_settings=None, now=now)["requeued"] == 1
    assert rows_by_event_id(database_url)[first["event_id"]]["next_attempt_at"] == now + timedelta(seconds=5)

    monkeypatch.setenv("WEBHOOK_RETRY_HOURS", "0")  # no retry window: fail at once
    store(database_url, [second])
    counts = drain(webhook_settings=None, now=now + MINUTE)
    assert (counts["requeued"], counts["failed"]) == (0, 2)


def test_unreadable_stored_bodies_are_ignored_with_their_reason_and_not_sent(database_url, hull_sim, drain):
    engine = get_engine(database_url)
    good = legacy_payload("email_opened")
    bodies = {
        "invalid-json": b'{"event_id": "01E4C8", "object_type": "email", ',
        "no-event-id": b'{"object_type": "email", "metric": "opened", "data": {}}',
        "unknown-format": b'{"event_id": "01E4C8BES586H0A5PFK1ARB9JW", "name": "Email Opened"}',
        "not-utf8": b'{"event_id": "X", "event_type": "email_opened", "subject": "\xff"}',
        "deep": b"[" * 100_000,
        "good": json.dumps(good).encode(),
    }
    keys = {}
    for name, body in bodies.items():
        keys[name] = dedupe_key(body)
        assert inbox.store_payload(engine, keys[name], inbox.encode_payload(body)) == inbox.STORED

    counts = drain()

    assert (counts["claimed"], counts["sent"], counts["ignored"], counts["failed"]) == (6, 1, 5, 0)
    rows = rows_by_event_id(database_url)
    expected = {
        "invalid-json": "body is not valid JSON",
        "no-event-id": "event_id is missing",
        "unknown-format": "neither a Customer.io reporting webhook",
        "not-utf8": "body is not UTF-8 text",
        "deep": "nested too deeply",
    }
    for name, reason in expected.items():
        row = rows[keys[name]]
        assert row["status"] == "ignored", name
        assert row["last_error"].startswith("not a Customer.io webhook this connector can read")
        assert reason in row["last_error"], name
    assert [event["event_id"] for event in hull_sim.tracked_events] == [good["event_id"]]


def test_parallel_posts_send_every_row_exactly_once(database_url, hull_sim, drain):
    payloads = many_payloads(1_000)  # 20 firehose POSTs
    store(database_url, payloads)
    original_firehose = HullClient.firehose
    lock = threading.Lock()
    in_flight = Counter()
    # The second and third POSTs of the batch meet here: they can only pass it together, so the
    # test fails (BrokenBarrierError) unless POSTs really go out side by side after the first.
    together = threading.Barrier(2, timeout=30)
    calls = Counter()

    def observed_firehose(self, messages):
        with lock:
            calls["n"] += 1
            number = calls["n"]
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            if number in (2, 3):
                together.wait()
            return original_firehose(self, messages)
        finally:
            with lock:
                in_flight["now"] -= 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HullClient, "firehose", observed_firehose)
        counts = drain(batch_size=1_000)

    assert len(counts.pop("lag_seconds")) == 1_000  # one lag per row, whichever POST carried it
    assert counts == {"claimed": 1_000, "sent": 1_000, "ignored": 0, "failed": 0, "requeued": 0, "stopped": None}
    assert calls["n"] == hull_sim.firehose_batches == 20
    assert 2 <= in_flight["most"] <= WebhookSettings(_env_file=None).webhook_drain_concurrency
    sent = [message["body"]["event_id"] for message in hull_sim.firehose_messages]
    assert len(sent) == 1_000 and set(sent) == {p["event_id"] for p in payloads}  # each exactly once
    assert {row["status"] for row in rows_by_event_id(database_url).values()} == {"done"}
    assert drain()["claimed"] == 0


def test_parallel_posts_record_each_rows_own_failure(database_url, hull_sim, drain):
    """POSTs in flight together fail differently: each row ends with its own outcome."""
    from connectors.http import TransientError

    payloads = many_payloads(400)  # 8 POSTs of 50, in claim order
    store(database_url, payloads)
    poisoned = {payloads[i]["event_id"] for i in (60, 170, 390)}  # one bad message in POSTs 2, 4 and 8
    outage_marker = payloads[260]["event_id"]  # POST 6 fails transiently, past its retries
    original_track_message = HullClient.track_message
    original_firehose = HullClient.firehose

    def with_bad_tokens(self, claims, event):
        message = original_track_message(self, claims, event)
        if event["event_id"] in poisoned:
            message["headers"]["Hull-Access-Token"] = "not-a-jwt"
        return message

    def with_one_transient_failure(self, messages):
        if any(message["body"]["event_id"] == outage_marker for message in messages):
            raise TransientError("Hull", "POST", "(firehose)", 503, "unavailable (after 1 retries)")
        return original_firehose(self, messages)

    now = utcnow()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HullClient, "track_message", with_bad_tokens)
        patch.setattr(HullClient, "firehose", with_one_transient_failure)
        counts = drain(now=now)

    transient = {p["event_id"] for p in payloads[250:300]}
    assert (counts["sent"], counts["failed"], counts["requeued"]) == (400 - 50 - 3, 3, 50)
    assert counts["stopped"].startswith("Hull unavailable for 50 webhooks")
    rows = rows_by_event_id(database_url)
    for event_id, row in rows.items():
        if event_id in poisoned:
            assert (row["status"], row["attempts"]) == ("failed", 0)
            assert "Hull rejected the event" in row["last_error"]
        elif event_id in transient:
            assert (row["status"], row["attempts"], row["next_attempt_at"]) == (
                "pending",
                1,
                now + timedelta(seconds=30),
            )
        else:
            assert (row["status"], row["attempts"], row["last_error"]) == ("done", 0, None)
    sent = [message["body"]["event_id"] for message in hull_sim.firehose_messages]
    assert len(sent) == len(set(sent)) == 347  # accepted once each; rejected POSTs applied nothing
    assert set(sent) == {p["event_id"] for p in payloads} - poisoned - transient

    counts = drain(now=now + MINUTE)  # the 50 are due again: sent once, nothing else resent
    assert (counts["sent"], counts["requeued"], counts["stopped"]) == (50, 0, None)
    assert len(hull_sim.firehose_messages) == 397


def test_the_concurrency_setting_bounds_the_posts_in_flight(database_url, hull_sim, drain):
    store(database_url, many_payloads(300))
    original_firehose = HullClient.firehose
    lock = threading.Lock()
    in_flight = Counter()

    def observed_firehose(self, messages):
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            return original_firehose(self, messages)
        finally:
            with lock:
                in_flight["now"] -= 1

    hull_sim.faults.latency(0.01)
    one_at_a_time = WebhookSettings(_env_file=None, **DEFAULT_SETTINGS, webhook_drain_concurrency=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HullClient, "firehose", observed_firehose)
        counts = drain(webhook_settings=one_at_a_time)
    assert counts["sent"] == 300 and in_flight["most"] == 1
    assert len(hull_sim.firehose_messages) == 300
