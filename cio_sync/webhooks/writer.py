"""Group commit for the intake: one thread writes every payload waiting to be stored in one
transaction, then answers each request.

Why: with one transaction per request, concurrent requests queue on SQLite's single write
lock (its busy handler sleeps between tries: tens of milliseconds a request at 50 concurrent
senders) and each pays its own commit; on PostgreSQL each commit waits for its own WAL flush.
Here the writer takes whatever arrived while the previous transaction ran (up to
`max_batch`), stores it with one statement and one commit (`inbox.store_payloads`), and only
then resolves each request's future: a request still gets its 2xx only after the transaction
holding its row committed. Under light load a batch is a single row and nothing waits.

Requests waiting in an event loop (`submit_async`) are woken once per batch and loop: one
`call_soon_threadsafe` resolves all of them, instead of one cross-thread wake-up (a write to
the loop's self-pipe and a loop iteration) per request.

If a batch fails, its rows are written again one by one, so a row the database refuses fails
alone (its request gets the error, hence a 503 and Customer.io's retry) and the others are
stored as usual.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError

from sqlalchemy import Engine

from cio_sync.webhooks.inbox import store_payload, store_payloads

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 500

# A waiter: a concurrent future (`submit`), or an asyncio future and its loop (`submit_async`).
_Waiter = Future | tuple[asyncio.AbstractEventLoop, asyncio.Future]
_Item = tuple[str, str, _Waiter]
_Outcome = tuple[_Waiter, str | None, BaseException | None]


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
        self._put((event_id, payload, future))
        return future

    def submit_async(self, event_id: str, payload: str) -> asyncio.Future[str]:
        """As `submit`, for a coroutine of the running event loop: the returned future is
        resolved in that loop, together with the others of the same batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._put((event_id, payload, (loop, future)))
        return future

    def _put(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the inbox writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
                self._thread.start()
            self._queue.put(item)

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
        outcomes: list[_Outcome] = []
        try:
            stored = store_payloads(self.engine, [(event_id, payload) for event_id, payload, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                outcomes.append((batch[0][2], None, exc))
            else:
                logger.warning(
                    "A batch of %d webhooks could not be stored (%s); storing them one by one",
                    len(batch),
                    type(exc).__name__,
                )
                for event_id, payload, waiter in batch:
                    try:
                        outcomes.append((waiter, store_payload(self.engine, event_id, payload), None))
                    except Exception as single:
                        outcomes.append((waiter, None, single))
        else:
            outcomes = [(waiter, outcome, None) for (_, _, waiter), outcome in zip(batch, stored)]
        _settle_all(outcomes)


def _settle_all(outcomes: list[_Outcome]) -> None:
    """Resolves every waiter of a batch: concurrent futures here, asyncio futures with one
    `call_soon_threadsafe` per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, str | None, BaseException | None]]] = {}
    for waiter, result, exception in outcomes:
        if isinstance(waiter, tuple):
            loop, future = waiter
            by_loop.setdefault(loop, []).append((future, result, exception))
        else:
            _settle(waiter, result, exception)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, items)
        except RuntimeError:  # the loop was closed: nobody is waiting any more; the rows are stored
            pass


def _settle_in_loop(items: list[tuple[asyncio.Future, str | None, BaseException | None]]) -> None:
    for future, result, exception in items:
        if future.done():  # cancelled: the client went away; the row is stored all the same
            continue
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


def _settle(future: Future[str], result: str | None = None, exception: BaseException | None = None) -> None:
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            assert result is not None
            future.set_result(result)
    except InvalidStateError:  # cancelled: the client went away; the row is stored all the same
        pass
