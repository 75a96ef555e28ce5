"""One drain batch: claim inbox rows, map them, send them to Hull, record each outcome.

A row is marked `done` only after Hull accepted the firehose POST that carried it. What
can go wrong, and what happens to the rows still held by this batch:
- Hull unavailable (`TransientError`, after the client's short retry budget): back to
  `pending` with one more attempt counted (`failed` once out of attempts); the run stops,
  the next scheduled run retries.
- Credentials rejected (`AuthError`): back to `pending` without counting an attempt (the
  rows are fine, the settings are not), and the error is raised to stop the run.
- Hull rejects a POST (`PermanentError`, e.g. 400): one bad message fails all 50, so
  that POST's messages are resent one by one and only the rejected ones marked `failed`.
- A stored body that is not a readable webhook (the intake stores every signed request):
  `ignored`, with the reason.
Resending is safe: the webhook's `event_id` is Hull's `event_id`, which Hull dedupes on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cio_sync.db import get_engine
from cio_sync.settings import ConnectorSettings, HullCredentials
from cio_sync.webhooks import WebhookSettings
from cio_sync.webhooks.inbox import (
    ClaimedRow,
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

# Short on purpose: the drain runs every minute and a row left pending is retried by the
# next run, so long backoffs here would only delay the rows behind it.
DRAIN_RETRY = RetryPolicy(total=3, backoff_factor=0.5, backoff_max=5.0, timeout=10.0)


@dataclass
class BatchCounts:
    claimed: int = 0
    sent: int = 0
    ignored: int = 0
    failed: int = 0
    requeued: int = 0  # back to pending after a transient Hull failure
    stopped: str | None = None  # set when the run should stop (Hull unavailable)

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
    max_attempts: int | None = None,
    claim_timeout_seconds: int | None = None,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Claims up to `batch_size` rows for `worker_id` and settles every one of them.

    Returns `BatchCounts` as a dict; `claimed == 0` means the inbox had nothing to do.
    Raises `AuthError` when Hull rejects the credentials (rows released first).
    """
    if max_attempts is None or claim_timeout_seconds is None:
        webhook_settings = WebhookSettings()
        max_attempts = max_attempts or webhook_settings.webhook_max_attempts
        claim_timeout_seconds = claim_timeout_seconds or webhook_settings.webhook_claim_timeout_seconds

    engine = get_engine(database_url)
    rows = claim_batch(engine, worker_id, batch_size, timedelta(seconds=claim_timeout_seconds))
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
    counts.ignored += mark_ignored(engine, worker_id, ignored)
    counts.failed += mark_failed(engine, worker_id, failed)
    if not to_send:
        return counts.to_dict()

    with HullClient.from_settings(hull_credentials, retry=retry or DRAIN_RETRY) as hull:
        outgoing = [(row.id, hull.track_message(mapped.claims, mapped.event)) for row, mapped in to_send]
        send_to_hull(engine, hull, worker_id, outgoing, counts, max_attempts)
    return counts.to_dict()


def send_to_hull(engine, hull: HullClient, worker_id: str, outgoing: list[Outgoing], counts: BatchCounts,
                 max_attempts: int) -> None:
    """Sends `outgoing` in firehose POSTs of at most 50 messages, settling each row."""
    posts: deque[list[Outgoing]] = deque(
        outgoing[start : start + FIREHOSE_BATCH_SIZE] for start in range(0, len(outgoing), FIREHOSE_BATCH_SIZE)
    )
    while posts:
        post = posts.popleft()
        ids = [row_id for row_id, _ in post]
        try:
            hull.firehose([message for _, message in post])
        except PermanentError as exc:
            if len(post) > 1:
                # Isolate the bad message(s): the same messages again, one per POST.
                posts.extendleft(reversed([[item] for item in post]))
            else:
                counts.failed += mark_failed(engine, worker_id, {ids[0]: f"Hull rejected the event: {exc}"})
            continue
        except TransientError as exc:
            unsent = ids + [row_id for later in posts for row_id, _ in later]
            requeued, out_of_attempts = release_for_retry(engine, worker_id, unsent, str(exc), max_attempts)
            counts.requeued += requeued
            counts.failed += out_of_attempts
            counts.stopped = f"Hull unavailable, {len(unsent)} webhooks left for the next run: {exc}"
            return
        except BaseException:
            # AuthError, or anything unexpected: not the rows' fault, so release them at
            # once rather than leave them claimed until the claim times out.
            release_unattempted(engine, worker_id, ids + [row_id for later in posts for row_id, _ in later])
            raise
        counts.sent += mark_done(engine, worker_id, ids)


@task(name="drain-webhook-batch", cache_policy=NO_CACHE)
def drain_batch_task(
    database_url: str,
    hull_credentials: HullCredentials,
    connector_settings: ConnectorSettings,
    batch_size: int,
    worker_id: str,
) -> dict[str, Any]:
    """One Prefect task per batch (never per row: task runs cost ~10-20 ms each)."""
    return drain_batch(database_url, hull_credentials, connector_settings, batch_size, worker_id)
