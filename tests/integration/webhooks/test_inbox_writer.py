"""Group commit of the intake: `inbox.store_payloads` and the `InboxWriter` thread, on SQLite and
PostgreSQL. The intake's promise must hold: a request is answered only after its row committed,
and batching changes nothing in what is stored."""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select

from cio_sync.store.db import get_engine, is_postgres, webhook_inbox
from cio_sync.webhooks import inbox
from cio_sync.webhooks.app import WEBHOOK_PATH, create_app
from cio_sync.webhooks.writer import InboxWriter
from tests.support.webhooks import SIGNING_KEY, legacy_payload, running_server, signed_headers

pytestmark = pytest.mark.postgres


def rows(engine) -> list[tuple]:
    with engine.connect() as connection:
        return [
            tuple(r)
            for r in connection.execute(
                select(
                    webhook_inbox.c.event_id, webhook_inbox.c.payload, webhook_inbox.c.status, webhook_inbox.c.attempts
                ).order_by(webhook_inbox.c.id)
            )
        ]


ITEMS = [
    ("E1", '{"n": 1}'),
    ("E2", '{"n": 2}'),
    ("E1", '{"n": "retry of 1"}'),
    ("E3", "not json"),
    ("E2", '{"n": "retry of 2"}'),
    ("E4", '{"n": 4}'),
]


def test_store_payloads_stores_what_store_payload_stores_one_by_one(database_url):
    engine = get_engine(database_url)
    assert inbox.store_payload(engine, "E0", "before") == inbox.STORED
    assert inbox.store_payload(engine, "E4", "already there") == inbox.STORED

    outcomes = inbox.store_payloads(engine, [("E0", "again"), *ITEMS])

    assert outcomes == ["duplicate", "stored", "stored", "duplicate", "stored", "duplicate", "duplicate"]
    assert rows(engine) == [
        ("E0", "before", "pending", 0),
        ("E4", "already there", "pending", 0),
        ("E1", '{"n": 1}', "pending", 0),
        ("E2", '{"n": 2}', "pending", 0),
        ("E3", "not json", "pending", 0),
    ]
    assert inbox.store_payloads(engine, []) == []


@contextlib.contextmanager
def inbox_locked(engine):
    """Another connection holds the inbox's write lock: no insert can commit meanwhile."""
    with engine.connect() as connection:
        if is_postgres(engine):
            transaction = connection.begin()
            connection.exec_driver_sql("LOCK TABLE webhook_inbox IN EXCLUSIVE MODE")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            transaction = None
        try:
            yield
        finally:
            if transaction is not None:
                transaction.commit()
            else:
                connection.exec_driver_sql("COMMIT")


def test_writer_answers_only_after_commit_and_groups_what_waited(database_url):
    engine = get_engine(database_url)
    writer = InboxWriter(engine)
    try:
        with inbox_locked(engine):
            futures = [writer.submit(f"W{n:03d}", f'{{"n": {n}}}') for n in range(100)]
            futures.append(writer.submit("W005", "a retry of W005"))
            # The writer is blocked on the lock: nothing may be acknowledged yet.
            assert not any(f.done() for f in futures)
        outcomes = [f.result(timeout=60) for f in futures]
    finally:
        writer.close()
    assert outcomes == ["stored"] * 100 + ["duplicate"]
    assert [r[0] for r in rows(engine)] == [f"W{n:03d}" for n in range(100)]
    # What queued behind the blocked transaction went out together, not row by row.
    assert writer.batches <= 2


def test_a_row_the_database_refuses_fails_alone(database_url):
    engine = get_engine(database_url)
    writer = InboxWriter(engine)
    try:
        with inbox_locked(engine):  # all three land in one batch
            good = writer.submit("G1", "good")
            bad = writer.submit("B1", None)  # type: ignore[arg-type]  # NOT NULL: refused by the database
            also_good = writer.submit("G2", "good too")
        assert good.result(timeout=60) == also_good.result(timeout=60) == "stored"
        with pytest.raises(Exception) as refused:
            bad.result(timeout=60)
        assert "null" in str(refused.value).lower()
    finally:
        writer.close()
    assert [r[0] for r in rows(engine)] == ["G1", "G2"]


def test_close_writes_what_is_queued_then_refuses_more(database_url):
    engine = get_engine(database_url)
    writer = InboxWriter(engine)
    with inbox_locked(engine):
        futures = [writer.submit(f"C{n}", "x") for n in range(20)]
        closer = threading.Thread(target=writer.close)
        closer.start()
    closer.join(60)
    assert [f.result(timeout=0) for f in futures] == ["stored"] * 20
    with pytest.raises(RuntimeError):
        writer.submit("late", "x")
    assert len(rows(engine)) == 20


def test_concurrent_signed_webhooks_are_each_stored_before_their_200(database_url):
    engine = get_engine(database_url)
    app = create_app(database_url, SecretStr(SIGNING_KEY), tolerance=300)
    bodies = [json.dumps(legacy_payload("email_opened", event_id=f"01CONCURRENT{n:06d}")).encode() for n in range(60)]

    def send(body: bytes) -> tuple[int, str, bool]:
        response = requests.post(url + WEBHOOK_PATH, data=body, headers=signed_headers(body), timeout=30)
        event_id = json.loads(body)["event_id"]
        with engine.connect() as connection:  # another connection, right after the answer
            found = connection.execute(select(webhook_inbox.c.id).where(webhook_inbox.c.event_id == event_id))
            return response.status_code, response.json()["status"], found.first() is not None

    with running_server(app) as url, ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(send, bodies))
        answers += list(pool.map(send, bodies[:10]))  # Customer.io's retries of ten of them

    assert answers[:60] == [(200, "stored", True)] * 60
    assert answers[60:] == [(200, "duplicate", True)] * 10
    assert len(rows(engine)) == 60
    app.state.inbox_writer.close()


def test_requests_waiting_in_an_event_loop_are_woken_once_per_batch(database_url):
    """`submit_async` (what the intake awaits): each future resolves only after the commit,
    with its own outcome, and a whole batch costs the loop one cross-thread wake-up."""
    import asyncio

    engine = get_engine(database_url)
    writer = InboxWriter(engine)

    async def main() -> tuple[list, int, int]:
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe
        wake_ups = 0

        def counted(*args, **kwargs):
            nonlocal wake_ups
            wake_ups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        with inbox_locked(engine):
            futures = [writer.submit_async(f"A{n:03d}", f'{{"n": {n}}}') for n in range(100)]
            futures.append(writer.submit_async("A007", "a retry of A007"))
            futures.append(writer.submit_async("A-bad", None))  # type: ignore[arg-type]  # NOT NULL: refused
            await asyncio.sleep(0.05)
            assert not any(f.done() for f in futures)  # blocked on the lock: nothing acknowledged
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return outcomes, wake_ups, writer.batches

    try:
        outcomes, wake_ups, batches = asyncio.run(main())
    finally:
        writer.close()
    assert outcomes[:101] == ["stored"] * 100 + ["duplicate"]
    assert isinstance(outcomes[101], Exception) and "null" in str(outcomes[101]).lower()
    assert [r[0] for r in rows(engine)] == [f"A{n:03d}" for n in range(100)]
    # The refused row made its batch be written again row by row; still one wake-up per batch.
    assert 1 <= wake_ups <= batches <= 2
