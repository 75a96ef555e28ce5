"""Group commit for the intake: one thread writes every payload waiting to be stored in one
transaction, then answers each request.

Why: with one transaction per request, concurrent requests queue on SQLite's single write
lock (its busy handler sleeps between tries: tens of milliseconds a request at 50 concurrent
senders) and each pays its own commit; on PostgreSQL each commit waits for its own WAL flush.
Here the writer takes whatever arrived while the previous transaction ran (up to
`max_batch`), stores it with one statement and one commit (`inbox.store_payloads`), and only
then resolves each request's future: a request still gets its 2xx only after the transaction
holding its row committed. Under light load a batch is a single row and nothing waits.

If a batch fails, its rows are written again one by one, so a row the database refuses fails
alone (its request gets the error, hence a 503 and Customer.io's retry) and the others are
stored as usual.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError

from sqlalchemy import Engine

from cio_sync.webhooks.inbox import store_payload, store_payloads

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 500

_Item = tuple[str, str, "Future[str]"]


class InboxWriter:
    """`submit(event_id, payload)` returns a future resolved with `STORED` or `DUPLICATE` once
    the payload is committed to `webhook_inbox` (or with the database's exception). The writing
    thread starts with the first submit; `close()` writes what is queued and stops it."""

    def __init__(self, engine: Engine, max_batch: int = DEFAULT_MAX_BATCH):
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # transactions committed (or attempted), for tests and logs

    def submit(self, event_id: str, payload: str) -> Future[str]:
        future: Future[str] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the inbox writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
                self._thread.start()
            self._queue.put((event_id, payload, future))
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stopping = True
                    break
                batch.append(following)
            self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[_Item]) -> None:
        self.batches += 1
        try:
            outcomes = store_payloads(self.engine, [(event_id, payload) for event_id, payload, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][2], exception=exc)
                return
            logger.warning(
                "A batch of %d webhooks could not be stored (%s); storing them one by one",
                len(batch),
                type(exc).__name__,
            )
            for event_id, payload, future in batch:
                try:
                    _settle(future, store_payload(self.engine, event_id, payload))
                except Exception as single:
                    _settle(future, exception=single)
            return
        for (_, _, future), outcome in zip(batch, outcomes):
            _settle(future, outcome)


def _settle(future: Future[str], result: str | None = None, exception: BaseException | None = None) -> None:
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            assert result is not None
            future.set_result(result)
    except InvalidStateError:  # cancelled: the client went away; the row is stored all the same
        pass
