"""The inbox's storage and claim rules, on SQLite and PostgreSQL."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from cio_sync.db import get_engine, utcnow, webhook_inbox
from cio_sync.webhooks import inbox


def _store(engine, count: int, prefix: str = "evt") -> list[str]:
    event_ids = [f"{prefix}-{n:04d}" for n in range(count)]
    for event_id in event_ids:
        assert inbox.store_payload(engine, event_id, '{"raw": true}') == inbox.STORED
    return event_ids


def _row(engine, event_id: str) -> dict:
    with engine.connect() as connection:
        return dict(
            connection.execute(select(webhook_inbox).where(webhook_inbox.c.event_id == event_id)).mappings().one()
        )


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
    for event_id, status, error in [("evt-0000", "done", None), ("evt-0001", "ignored", "sms messages are not mapped"),
                                     ("evt-0002", "failed", "no identity")]:
        row = _row(engine, event_id)
        assert (row["status"], row["last_error"], row["claimed_by"]) == (status, error, None)
        assert row["processed_at"] is not None
    assert inbox.count_by_status(engine) == {"pending": 0, "processing": 0, "done": 1, "ignored": 1, "failed": 1}


def test_transient_failures_count_attempts_until_the_row_fails(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    for attempt in (1, 2):
        (row,) = inbox.claim_batch(engine, "w", 1)
        assert row.attempts == attempt - 1
        assert inbox.release_for_retry(engine, "w", [row.id], f"Hull 503 #{attempt}", max_attempts=3) == (1, 0)
        stored = _row(engine, "evt-0000")
        assert (stored["status"], stored["attempts"], stored["last_error"]) == ("pending", attempt, f"Hull 503 #{attempt}")
    (row,) = inbox.claim_batch(engine, "w", 1)
    assert inbox.release_for_retry(engine, "w", [row.id], "Hull 503 #3", max_attempts=3) == (0, 1)
    stored = _row(engine, "evt-0000")
    assert (stored["status"], stored["attempts"], stored["last_error"]) == ("failed", 3, "Hull 503 #3")
    assert inbox.claim_batch(engine, "w", 1) == []


def test_release_without_attempt_keeps_the_count(database_url):
    engine = get_engine(database_url)
    _store(engine, 1)
    (row,) = inbox.claim_batch(engine, "w", 1)
    assert inbox.release_unattempted(engine, "w", [row.id]) == 1
    stored = _row(engine, "evt-0000")
    assert (stored["status"], stored["attempts"], stored["claimed_by"]) == ("pending", 0, None)


@pytest.mark.parametrize(
    "body",
    [b'{"event_id": "X"}', "Zoë <zoe@example.com>".encode(), b"\xff\xfe not utf-8", b"nul \x00 inside",
     inbox.ENCODED_PREFIX.encode() + b"AAAA", b""],
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
