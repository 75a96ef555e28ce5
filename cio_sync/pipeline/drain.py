"""One drain batch: claim inbox rows, map them, send them to Hull, record each outcome.

A row is marked `done` only after Hull accepted the firehose POST that carried it. What
can go wrong, and what happens to the rows still held by this batch:
- Hull unavailable (`TransientError`, after the client's short retry budget): that POST's
  rows go back to `pending` with one more attempt counted and a backoff (`next_attempt_at`,
  30 s doubling up to hourly by default) and the batch goes on with its next POST; the run
  ends after this batch, and a later run claims the rows once they are due. A row is
  marked `failed` only once it has been failing for WEBHOOK_RETRY_HOURS (24)
  (`inbox.RetrySchedule`), so a Hull outage of hours loses nothing and needs no rerun. The
  run's breaker (`cio_sync/pipeline/breaker.py`, shared by every batch of a run) counts
  such POSTs: after three in a row the run stops, and the rows it still holds go back to
  `pending` without an attempt counted (they were not tried).
- Credentials rejected (`AuthError`): back to `pending` without counting an attempt (the
  rows are fine, the settings are not), and the error is raised to stop the run.
- Hull rejects a POST (`PermanentError`, e.g. 400): one bad message fails all 50, so
  that POST's messages are resent one by one and only the rejected ones marked `failed`.
- A stored body that is not a readable webhook (the intake stores every signed request):
  `ignored`, with the reason.
Resending is safe: the webhook's `event_id` is Hull's `event_id`, which Hull dedupes on.

A batch's POSTs go out up to WEBHOOK_DRAIN_CONCURRENCY (4) at once (each a round trip to
Hull; one at a time, a real Hull's latency would cap the drain at a few hundred rows a
second). The first POST of a batch goes alone, and so does each POST after a transient
failure until one succeeds, so an outage stops the batch after the same three failed POSTs
as sending one at a time would. Outcomes are recorded per row as the POSTs complete; the
rows Hull accepted are marked `done` with one UPDATE at the end of the batch.

`now` (tests only) fixes the clock for the claim and every status change of the batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from cio_sync.pipeline.breaker import Breaker
from cio_sync.settings import (
    DEFAULT_WEBHOOK_DRAIN_CONCURRENCY,
    ConnectorSettings,
    HullCredentials,
    RetrySettings,
    WebhookSettings,
)
from cio_sync.store.db import get_engine, utcnow
from cio_sync.webhooks.inbox import (
    ClaimedRow,
    RetrySchedule,
    claim_batch,
    decode_payload,
    mark_done,
    mark_failed,
    mark_ignored,
    release_for_retry,
    release_unattempted,
)
from cio_sync.webhooks.mapping import Failed, Ignored, Mapped, map_stored_payload
from connectors.http import PermanentError, RetryPolicy, TransientError
from connectors.hull import FIREHOSE_BATCH_SIZE, HullClient

# Short on purpose: the drain runs every minute and a row left pending is retried by a
# later run (after its backoff), so long waits here would only delay the rows behind it.
DRAIN_MAX_RETRIES = 3
DRAIN_MAX_BACKOFF_SECONDS = 5.0


def drain_retry_policy(settings: RetrySettings | None = None) -> RetryPolicy:
    """The HTTP retry settings (`HTTP_BACKOFF_SECONDS`, `HTTP_TIMEOUT_SECONDS`, ...), with at
    most DRAIN_MAX_RETRIES retries and waits of at most DRAIN_MAX_BACKOFF_SECONDS."""
    settings = settings or RetrySettings()
    return RetryPolicy(
        total=min(settings.retries, DRAIN_MAX_RETRIES),
        backoff_factor=settings.backoff_seconds,
        backoff_max=min(settings.backoff_max_seconds, DRAIN_MAX_BACKOFF_SECONDS),
        backoff_jitter=settings.backoff_seconds / 2,
        timeout=settings.timeout_seconds,
    )


@dataclass
class BatchCounts:
    claimed: int = 0
    sent: int = 0
    ignored: int = 0
    failed: int = 0
    requeued: int = 0  # back to pending, with a backoff, after a transient Hull failure
    stopped: str | None = None  # set when the run should stop: Hull failed transiently (the breaker may be open)
    # Per row sent: seconds from the intake storing the webhook to Hull accepting its POST.
    lag_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Outgoing = tuple[int, dict[str, Any]]  # inbox row id, firehose message


def drain_batch(
    database_url: str,
    hull_credentials: HullCredentials,
    connector_settings: ConnectorSettings,
    batch_size: int,
    worker_id: str,
    *,
    webhook_settings: WebhookSettings | None = None,
    retry: RetryPolicy | None = None,
    now: datetime | None = None,
    breaker: Breaker | None = None,
) -> dict[str, Any]:
    """Claims up to `batch_size` due rows for `worker_id` and settles every one of them.

    `webhook_settings` defaults to the environment (`WebhookSettings()`); `now` to the
    clock; `breaker` is the run's, shared by its batches (default: one for this batch).
    Returns `BatchCounts` as a dict; `claimed == 0` means nothing was due.
    Raises `AuthError` when Hull rejects the credentials (rows released first).
    """
    webhook_settings = webhook_settings or WebhookSettings()
    schedule = RetrySchedule.from_settings(webhook_settings)
    claim_timeout = timedelta(seconds=webhook_settings.webhook_claim_timeout_seconds)

    engine = get_engine(database_url)
    rows = claim_batch(engine, worker_id, batch_size, claim_timeout, now=now)
    counts = BatchCounts(claimed=len(rows))
    if not rows:
        return counts.to_dict()

    to_send: list[tuple[ClaimedRow, Mapped]] = []
    ignored: dict[int, str] = {}
    failed: dict[int, str] = {}
    for row in rows:
        result = map_stored_payload(decode_payload(row.payload), connector_settings.user_id_mapping)
        if isinstance(result, Mapped):
            to_send.append((row, result))
        elif isinstance(result, Ignored):
            ignored[row.id] = result.reason
        elif isinstance(result, Failed):
            failed[row.id] = result.reason
    counts.ignored += mark_ignored(engine, worker_id, ignored, now=now)
    counts.failed += mark_failed(engine, worker_id, failed, now=now)
    if not to_send:
        return counts.to_dict()

    with HullClient.from_settings(hull_credentials, retry=retry or drain_retry_policy()) as hull:
        outgoing = [(row.id, hull.track_message(mapped.claims, mapped.event)) for row, mapped in to_send]
        received = {row.id: row.received_at for row, _ in to_send if row.received_at is not None}
        send_to_hull(
            engine,
            hull,
            worker_id,
            outgoing,
            counts,
            schedule,
            breaker or Breaker(),
            now,
            concurrency=webhook_settings.webhook_drain_concurrency,
            received=received,
        )
    return counts.to_dict()


def send_to_hull(
    engine: Engine,
    hull: HullClient,
    worker_id: str,
    outgoing: list[Outgoing],
    counts: BatchCounts,
    schedule: RetrySchedule,
    breaker: Breaker,
    now: datetime | None = None,
    concurrency: int = DEFAULT_WEBHOOK_DRAIN_CONCURRENCY,
    received: Mapping[int, datetime] | None = None,
) -> None:
    """Sends `outgoing` in firehose POSTs of at most 50 messages, up to `concurrency` POSTs in
    flight at once, and settles every row.

    Only the HTTP calls run on the pool's threads; every outcome is recorded by this thread,
    POST by POST, in the order they complete (the breaker counts them in that order). The
    first POST of the batch goes alone, and so does every POST after a transient failure,
    until one succeeds: when Hull is down, the batch stops after `breaker.limit` failed POSTs
    as it would sending one at a time. Rows Hull accepted are marked `done` with one UPDATE
    when the batch ends (before an exception is re-raised): a drain that dies before that
    leaves them `processing`, claimable again after the claim timeout and resent, which
    Hull's `event_id` dedupe makes harmless. `received`: when each row was stored, for the lag
    of those Hull accepts (`counts.lag_seconds`).
    """
    posts: deque[list[Outgoing]] = deque(
        outgoing[start : start + FIREHOSE_BATCH_SIZE] for start in range(0, len(outgoing), FIREHOSE_BATCH_SIZE)
    )
    accepted: list[int] = []
    rejected: dict[int, str] = {}
    failed_transiently = given_up_total = 0
    last_error = ""
    fatal: BaseException | None = None
    fatal_ids: list[int] = []
    width = 1  # POSTs allowed in flight: 1 until a POST of this batch succeeded
    pool = _sender_pool(concurrency) if concurrency > 1 else None
    in_flight: dict[Future[None], tuple[int, list[Outgoing]]] = {}
    submitted = 0
    try:
        while posts or in_flight:
            while posts and len(in_flight) < width and fatal is None and not breaker.stopped():
                post = posts.popleft()
                future: Future[None] = Future()
                if pool is None:
                    _call(future, hull.firehose, [message for _, message in post])
                else:
                    future = pool.submit(hull.firehose, [message for _, message in post])
                in_flight[future] = (submitted, post)
                submitted += 1
            if not in_flight:
                break  # stopped: what is left in `posts` is released below
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: in_flight[f][0]):
                _, post = in_flight.pop(future)
                ids = [row_id for row_id, _ in post]
                error = future.exception()
                if error is None:
                    breaker.record(False)
                    accepted.extend(ids)
                    width = concurrency
                    if received:
                        accepted_at = now or utcnow()
                        counts.lag_seconds.extend(
                            (accepted_at - received[i]).total_seconds() for i in ids if i in received
                        )
                elif isinstance(error, PermanentError):
                    breaker.record(False)
                    if len(post) > 1:
                        # Isolate the bad message(s): the same messages again, one per POST.
                        posts.extendleft(reversed([[item] for item in post]))
                    else:
                        rejected[ids[0]] = f"Hull rejected the event: {error}"
                elif isinstance(error, TransientError):
                    requeued, given_up = release_for_retry(engine, worker_id, ids, str(error), schedule, now=now)
                    counts.requeued += requeued
                    counts.failed += given_up
                    given_up_total += given_up
                    breaker.record(True)
                    failed_transiently += len(ids)
                    last_error = str(error)
                    width = 1
                    if breaker.open and counts.stopped is None:
                        left = len(ids) + sum(len(p) for p in posts) + sum(len(p) for _, p in in_flight.values())
                        counts.stopped = (
                            f"Hull unavailable: {breaker.limit} firehose POSTs in a row failed even after retries, "
                            f"so the drain stopped; {left} webhooks are pending, retried with backoff by later "
                            f"runs: {error}"
                        )
                else:
                    # AuthError, or anything unexpected: not the rows' fault. Nothing more is
                    # sent; the POSTs in flight are settled, then these rows and the unsent
                    # ones are released at once (not left claimed until the claim times out).
                    if fatal is None:
                        fatal = error
                    fatal_ids.extend(ids)
    finally:
        if in_flight:  # only if this thread was interrupted: let the POSTs in flight end first
            wait(in_flight)
        unsent = fatal_ids + [row_id for post in posts for row_id, _ in post]
        # POSTs still in flight here (only if this thread was interrupted) stay claimed: their
        # rows are claimable again after the claim timeout.
        counts.sent += mark_done(engine, worker_id, accepted, now=now)
        counts.failed += mark_failed(engine, worker_id, rejected, now=now)
        if unsent and fatal is not None:
            release_unattempted(engine, worker_id, unsent)
        elif unsent:
            # Not attempted: the breaker stopped the run. Back to pending as they were, no attempt counted.
            counts.requeued += release_unattempted(engine, worker_id, unsent)
            counts.stopped = counts.stopped or "Hull unavailable: the drain was stopped by earlier failures"
    if fatal is not None:
        raise fatal
    if failed_transiently and counts.stopped is None:
        # Rows put back to pending wait for their backoff: the run ends after this batch.
        counts.stopped = (
            f"Hull unavailable for {failed_transiently} webhooks (their firehose POSTs failed even "
            f"after retries); they are pending, retried with backoff by later runs: {last_error}"
        )
    if given_up_total and counts.stopped:
        counts.stopped += (
            f" ({given_up_total} of them given up after failing for {schedule.retry_for}: "
            "marked failed, `cio-sync failed rerun --webhooks` sends them again)"
        )


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _sender_pool(concurrency: int) -> ThreadPoolExecutor:
    """The process's pool of `concurrency` firehose senders, started once rather than per batch
    (a batch is a fraction of a second; starting its threads cost a visible part of it)."""
    with _pools_lock:
        pool = _pools.get(concurrency)
        if pool is None:
            pool = _pools[concurrency] = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="drain-send")
        return pool


def _call(
    future: Future[None], function: Callable[[list[dict[str, Any]]], None], messages: list[dict[str, Any]]
) -> None:
    """Runs `function(messages)` on this thread, its outcome in `future` (as a pool would)."""
    try:
        function(messages)
    except BaseException as exc:  # settled by the caller, like a pool thread's exception
        future.set_exception(exc)
    else:
        future.set_result(None)
