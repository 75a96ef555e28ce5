"""The inbox's storage and claim rules, on SQLite and PostgreSQL."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from cio_sync.settings import WebhookSettings
from cio_sync.store.db import as_utc, get_engine, utcnow, webhook_inbox
from cio_sync.webhooks import inbox
from cio_sync.webhooks.inbox import RetrySchedule

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)

pytestmark = pytest.mark.postgres  # the store layer: SQLite and PostgreSQL


def _store(engine, count: int, prefix: str = "evt") -> list[str]:
    event_ids = [f"{prefix}-{n:04d}" for n in range(count)]
    for event_id in event_ids:
        assert inbox.store_payload(engine, event_id, '{"raw": true}') == inbox.STORED
    return event_ids


def _row(engine, event_id: str) -> dict:
    with engine.connect() as connection:
        row = dict(
            connection.execute(select(webhook_inbox).where(webhook_inbox.c.event_id == event_id)).mappings().one()
        )
    # SQLite gives naive datetimes back; every one is UTC.
    return {key: as_utc(value) if hasattr(value, "tzinfo") else value for key, value in row.items()}


def test_duplicate_event_id_is_stored_once_and_keeps_the_first_copy(database_url):
    engine = get_engine(database_url)
    assert inbox.store_payload(engine, "E1", "first") == inbox.STORED
    assert inbox.store_payload(engine, "E1", "second") == inbox.DUPLICATE
    row = _row(engine, "E1")
    assert (row["payload"], row["status"], row["attempts"]) == ("first", "pending", 0)
    assert inbox.count_by_status(engine) == {"pending": 1, "processing": 0, "done": 0, "ignored": 0, "failed": 0}


def test_claim_takes_the_oldest_rows_and_hands_each_to_one_worker(database_url):
    engine = get_engine(database_url)
    event_ids = _store(engine, 5)
    first = inbox.claim_batch(engine, "worker-a", 3)
    second = inbox.claim_batch(engine, "worker-b", 3)
    assert [row.event_id for row in first] == event_ids[:3]
    assert [row.event_id for row in second] == event_ids[3:]
    assert inbox.claim_batch(engine, "worker-c", 3) == []
    row = _row(engine, event_ids[0])
    assert (row["status"], row["claimed_by"]) == ("processing", "worker-a")
    assert row["claimed_at"] is not None


def test_concurrent_claims_never_share_a_row(database_url):
    engine = get_engine(database_url)
    event_ids = _store(engine, 200)
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def claim_all(worker: str) -> None:
        start.wait()
        mine = claimed.setdefault(worker, [])
        while batch := inbox.claim_batch(engine, worker, 7):
            mine.extend(row.event_id for row in batch)

    threads = [threading.Thread(target=claim_all, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [event_id for ids in claimed.values() for event_id in ids]
    assert sorted(everything) == event_ids  # every row once, none twice


def test_a_claim_older_than_the_timeout_is_taken_over(database_url):
    engine = get_engine(database_url)
    _store(engine, 2)
    inbox.claim_batch(engine, "crashed", 2)
    with engine.begin() as connection:
        connection.execute(
            update(webhook_inbox)
            .where(webhook_inbox.c.event_id == "evt-0000")
            .values(claimed_at=utcnow() - timedelta(minutes=11))
        )
    taken = inbox.claim_batch(engine, "rescuer", 10, claim_timeout=timedelta(minutes=10))
    assert [row.event_id for row in taken] == ["evt-0000"]
    # The crashed drain cannot settle a row it no longer holds.
    assert inbox.mark_done(engine, "crashed", [taken[0].id]) == 0
    assert inbox.mark_done(engine, "rescuer", [taken[0].id]) == 1
    assert _row(engine, "evt-0000")["status"] == "done"


def test_outcomes_are_recorded_with_their_reason(database_url):
    engine = get_engine(database_url)
    _store(engine, 3)
    done, ignored, failed = inbox.claim_batch(engine, "w", 3)
    assert inbox.mark_done(engine, "w", [done.id]) == 1
    assert inbox.mark_ignored(engine, "w", {ignored.id: "sms messages are not mapped"}) == 1
    assert inbox.mark_failed(engine, "w", {failed.id: "no identity"}) == 1
    for event_id, status, error in [
        ("evt-0000", "done", None),
        ("evt-0001", "ignored", "sms messages are not mapped"),
        ("evt-0002", "failed", "no identity"),
    ]:
        row = _row(engine, event_id)
        assert (row["status"], row["last_error"], row["claimed_by"]) == (status, error, None)
        assert row["processed_at"] is not None
    assert inbox.count_by_status(engine) == {"pending": 0, "processing": 0, "done": 1, "ignored": 1, "failed": 1}


def test_backoff_doubles_from_the_base_up_to_the_cap():
    schedule = RetrySchedule(base_seconds=30, max_seconds=3600)
    assert [schedule.delay(n).total_seconds() for n in range(9)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert schedule.delay(10_000) == timedelta(hours=1)  # no overflow however long it fails


def test_schedule_defaults_come_from_webhook_settings(monkeypatch):
    for name in (
        "WEBHOOK_RETRY_BASE_SECONDS",
        "WEBHOOK_RETRY_MAX_SECONDS",
        "WEBHOOK_RETRY_HOURS",
        "WEBHOOK_MAX_ATTEMPTS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert RetrySchedule.from_settings(WebhookSettings(_env_file=None)) == RetrySchedule(
        base_seconds=30, max_seconds=3600, retry_for=timedelta(hours=24), max_attempts=None
    )
    monkeypatch.setenv("WEBHOOK_RETRY_BASE_SECONDS", "5")
    monkeypatch.setenv("WEBHOOK_RETRY_MAX_SECONDS", "600")
    monkeypatch.setenv("WEBHOOK_RETRY_HOURS", "72")
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "40")
    assert RetrySchedule.from_settings(WebhookSettings(_env_file=None)) == RetrySchedule(
        base_seconds=5, max_seconds=600, retry_for=timedelta(hours=72), max_attempts=40
    )


def test_a_failed_attempt_waits_its_backoff_before_it_is_claimed_again(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    t0 = utcnow()
    now = t0
    for attempt, delay in enumerate([30, 60, 120, 240], start=1):
        (row,) = inbox.claim_batch(engine, "w", 1, now=now)
        assert row.attempts == attempt - 1
        assert inbox.release_for_retry(engine, "w", [row.id], f"Hull 503 #{attempt}", now=now) == (1, 0)
        stored = _row(engine, "evt-0000")
        assert (stored["status"], stored["attempts"], stored["last_error"]) == (
            "pending",
            attempt,
            f"Hull 503 #{attempt}",
        )
        assert stored["next_attempt_at"] == now + timedelta(seconds=delay)
        assert stored["first_failed_at"] == t0  # the retry window starts at the first failure
        assert stored["processed_at"] is None
        # Not due yet, one second before; due at its time.
        assert inbox.claim_batch(engine, "w", 1, now=now + timedelta(seconds=delay - 1)) == []
        now = now + timedelta(seconds=delay)


def test_rows_of_different_attempt_counts_get_their_own_backoff_in_one_release(database_url):
    engine = get_engine(database_url)
    _store(engine, 2)
    now = utcnow()
    (first,) = inbox.claim_batch(engine, "w", 1, now=now)
    inbox.release_for_retry(engine, "w", [first.id], "503", now=now)
    now += MINUTE
    rows = inbox.claim_batch(engine, "w", 2, now=now)
    assert sorted(row.attempts for row in rows) == [0, 1]
    assert inbox.release_for_retry(engine, "w", [row.id for row in rows], "503", now=now) == (2, 0)
    assert _row(engine, "evt-0000")["next_attempt_at"] == now + timedelta(seconds=60)
    assert _row(engine, "evt-0001")["next_attempt_at"] == now + timedelta(seconds=30)


def test_a_row_is_failed_only_after_failing_for_the_whole_retry_window(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    schedule = RetrySchedule(retry_for=timedelta(hours=24))
    t0 = utcnow()
    attempts = 0
    now = t0
    while now < t0 + timedelta(hours=24):
        (row,) = inbox.claim_batch(engine, "w", 1, now=now)
        assert inbox.release_for_retry(engine, "w", [row.id], "Hull 503", schedule, now=now) == (1, 0)
        attempts += 1
        now = _row(engine, "evt-0000")["next_attempt_at"]
    assert attempts == 30  # 30 s ... 32 min, then hourly: far more than 10, over a whole day
    (row,) = inbox.claim_batch(engine, "w", 1, now=now)
    assert inbox.release_for_retry(engine, "w", [row.id], "Hull 503 again", schedule, now=now) == (0, 1)
    stored = _row(engine, "evt-0000")
    assert (stored["status"], stored["attempts"], stored["last_error"]) == ("failed", 31, "Hull 503 again")
    assert (stored["processed_at"], stored["next_attempt_at"], stored["first_failed_at"]) == (now, None, t0)
    assert inbox.claim_batch(engine, "w", 1, now=now + timedelta(days=30)) == []


def test_the_retry_window_starts_at_the_first_failure_not_at_receipt(database_url):
    # A backlog that waited for a drain (drain stopped for two days) still gets its retries.
    engine = get_engine(database_url)
    now = utcnow()
    inbox.store_payload(engine, "old", "{}", now=now - timedelta(days=2))
    (row,) = inbox.claim_batch(engine, "w", 1, now=now)
    assert inbox.release_for_retry(engine, "w", [row.id], "503", RetrySchedule(), now=now) == (1, 0)


def test_zero_retry_window_fails_at_the_first_transient_failure(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    (row,) = inbox.claim_batch(engine, "w", 1)
    assert inbox.release_for_retry(engine, "w", [row.id], "503", RetrySchedule(retry_for=timedelta(0))) == (0, 1)
    assert _row(engine, "evt-0000")["status"] == "failed"


def test_optional_attempt_limit_fails_a_row_before_the_window_ends(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    schedule = RetrySchedule(max_attempts=2)
    now = utcnow()
    (row,) = inbox.claim_batch(engine, "w", 1, now=now)
    assert inbox.release_for_retry(engine, "w", [row.id], "503", schedule, now=now) == (1, 0)
    now += MINUTE
    (row,) = inbox.claim_batch(engine, "w", 1, now=now)
    assert inbox.release_for_retry(engine, "w", [row.id], "503", schedule, now=now) == (0, 1)
    assert (_row(engine, "evt-0000")["status"], _row(engine, "evt-0000")["attempts"]) == ("failed", 2)


def test_a_row_done_after_retries_keeps_its_history(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    t0 = utcnow()
    (row,) = inbox.claim_batch(engine, "w", 1, now=t0)
    inbox.release_for_retry(engine, "w", [row.id], "Hull 503", now=t0)
    (row,) = inbox.claim_batch(engine, "w", 1, now=t0 + MINUTE)
    assert inbox.mark_done(engine, "w", [row.id], now=t0 + MINUTE) == 1
    stored = _row(engine, "evt-0000")
    assert (stored["status"], stored["attempts"], stored["last_error"]) == ("done", 1, "Hull 503")
    assert (stored["processed_at"], stored["next_attempt_at"], stored["first_failed_at"]) == (t0 + MINUTE, None, t0)


def test_requeue_failed_gives_a_fresh_window_and_makes_rows_due_at_once(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    (row,) = inbox.claim_batch(engine, "w", 1)
    inbox.release_for_retry(engine, "w", [row.id], "503", RetrySchedule(retry_for=timedelta(0)))
    assert inbox.requeue_failed(engine) == 1
    stored = _row(engine, "evt-0000")
    assert (stored["status"], stored["attempts"], stored["next_attempt_at"], stored["first_failed_at"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert stored["last_error"] == "503"
    assert len(inbox.claim_batch(engine, "w", 1)) == 1


def test_backlog_counts_what_is_owed_to_hull_and_how_old_it_is(database_url):
    engine = get_engine(database_url)
    now = utcnow()
    assert inbox.backlog(engine, now=now) == {
        "pending": 0,
        "retrying": 0,
        "oldest_pending_age_seconds": None,
        "failed": 0,
    }
    for n, age in enumerate(
        [timedelta(hours=2), timedelta(minutes=5), timedelta(minutes=1), timedelta(days=3), timedelta(seconds=10)]
    ):
        inbox.store_payload(engine, f"evt-{n}", "{}", now=now - age)
    # evt-0 (2 h old) fails once and waits; evt-3 (3 days old) is done; evt-1 is failed;
    # evt-2 is being processed; evt-4 has not been tried.
    rows = {row.event_id: row for row in inbox.claim_batch(engine, "w", 4, now=now)}
    inbox.release_for_retry(engine, "w", [rows["evt-0"].id], "503", now=now)
    inbox.mark_failed(engine, "w", {rows["evt-1"].id: "no identity"}, now=now)
    inbox.mark_done(engine, "w", [rows["evt-3"].id], now=now)
    assert inbox.backlog(engine, now=now) == {
        "pending": 3,
        "retrying": 1,
        "oldest_pending_age_seconds": 7200,
        "failed": 1,
    }
    assert inbox.backlog(engine, now=now + MINUTE)["oldest_pending_age_seconds"] == 7260


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id": "X"}',
        "Zoë <zoe@example.com>".encode(),
        b"\xff\xfe not utf-8",
        b"nul \x00 inside",
        inbox.ENCODED_PREFIX.encode() + b"AAAA",
        b"",
    ],
    ids=["json", "utf8-text", "not-utf8", "nul", "prefix-lookalike", "empty"],
)
def test_any_body_is_stored_and_given_back_byte_for_byte(database_url, body):
    engine = get_engine(database_url)
    stored = inbox.encode_payload(body)
    assert inbox.store_payload(engine, "E", stored) == inbox.STORED
    (row,) = inbox.claim_batch(engine, "w", 1)
    restored = inbox.decode_payload(row.payload)
    assert (restored.encode() if isinstance(restored, str) else restored) == body
    if body in (b'{"event_id": "X"}', "Zoë <zoe@example.com>".encode(), b""):
        assert row.payload == body.decode()  # real webhooks are stored as they came, readable


def test_release_without_attempt_keeps_the_count(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    (row,) = inbox.claim_batch(engine, "w", 1)
    assert inbox.release_unattempted(engine, "w", [row.id]) == 1
    stored = _row(engine, "evt-0000")
    assert (stored["status"], stored["attempts"], stored["claimed_by"]) == ("pending", 0, None)
