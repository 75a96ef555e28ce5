"""The `webhook_inbox` table: raw Customer.io payloads and their delivery status.

Life of a row: `pending` (stored by the intake) -> `processing` (claimed by one drain)
-> `done` (Hull accepted it), `ignored` (not mapped or not readable, reason kept) or
`failed` (cannot be sent, or kept failing; last error kept). A transient failure puts it
back to `pending` with a backoff: it is not claimed again before `next_attempt_at`.
Rows are never deleted: the inbox is also the audit trail of what Customer.io sent.

Claiming is what keeps two drains running at once from sending a row twice: a row is
handed to exactly one drain, inside one transaction, and every later status change is
made only by the drain that holds the claim.

Every function that reads the clock takes an optional `now` (an aware UTC datetime; a
naive one is taken as UTC), so tests can move time instead of sleeping.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, and_, any_, bindparam, case, func, literal, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cio_sync.settings import DEFAULT_WEBHOOK_CLAIM_TIMEOUT_SECONDS, WebhookSettings
from cio_sync.store.db import as_utc, is_postgres, utcnow, webhook_inbox

PENDING = "pending"
PROCESSING = "processing"
DONE = "done"
IGNORED = "ignored"
FAILED = "failed"
STATUSES = (PENDING, PROCESSING, DONE, IGNORED, FAILED)

STORED = "stored"
DUPLICATE = "duplicate"

DEFAULT_CLAIM_TIMEOUT = timedelta(seconds=DEFAULT_WEBHOOK_CLAIM_TIMEOUT_SECONDS)
MAX_ERROR_LENGTH = 2000
# Marks a payload stored as base64 because its body was not storable as text as it is.
ENCODED_PREFIX = "cio-sync:base64:"
_MAX_BACKOFF_EXPONENT = 62  # 2**62 times any sane base is far past any cap


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    event_id: str
    payload: str  # as stored: `decode_payload` gives the body back
    attempts: int
    received_at: datetime | None = None  # when the intake stored it (drain freshness)


@dataclass(frozen=True)
class RetrySchedule:
    """When a row whose delivery failed transiently is tried again, and when it is given up.

    After a failure, a row that had `attempts` failed attempts before it waits
    `min(max_seconds, base_seconds * 2**attempts)`: 30 s, 1 min, 2 min, ... then hourly with
    the defaults. It is marked `failed` once it has been failing for `retry_for` or longer
    (measured from its first transient failure, so a backlog that waited for a drain is
    never given up untried), or, only if `max_attempts` is set, after that many attempts.
    A zero `retry_for` fails a row at its first transient failure.
    """

    base_seconds: float = 30.0
    max_seconds: float = 3600.0
    retry_for: timedelta = timedelta(hours=24)
    max_attempts: int | None = None

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> RetrySchedule:
        return cls(
            base_seconds=settings.webhook_retry_base_seconds,
            max_seconds=settings.webhook_retry_max_seconds,
            retry_for=timedelta(hours=settings.webhook_retry_hours),
            max_attempts=settings.webhook_max_attempts,
        )

    def delay(self, attempts: int) -> timedelta:
        """The wait after a failure of a row that had `attempts` failed attempts before it."""
        exponent = min(max(attempts, 0), _MAX_BACKOFF_EXPONENT)
        return timedelta(seconds=min(self.max_seconds, self.base_seconds * 2**exponent))


# ----- intake side ---------------------------------------------------------------------


def encode_payload(body: bytes) -> str:
    """The text stored for a request body: the body itself when it is UTF-8 text without NUL
    characters (every real Customer.io webhook), else `ENCODED_PREFIX` + its base64, so any
    signed body can be stored durably (PostgreSQL text refuses NUL and invalid UTF-8) and
    given back byte for byte by `decode_payload`. A text body that happens to start with
    the prefix is encoded too, which keeps the two forms unambiguous."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text and not text.startswith(ENCODED_PREFIX):
        return text
    return ENCODED_PREFIX + base64.b64encode(body).decode("ascii")


def decode_payload(stored: str) -> str | bytes:
    """A stored payload as the body it came from: the text itself, or the raw bytes of a
    body `encode_payload` had to encode."""
    if stored.startswith(ENCODED_PREFIX):
        return base64.b64decode(stored[len(ENCODED_PREFIX) :])
    return stored


def store_payloads(engine: Engine, items: Sequence[tuple[str, str]], now: datetime | None = None) -> list[str]:
    """Commits several raw payloads (`(event_id, payload)`) as `pending` in one transaction,
    with one statement; returns `STORED` or `DUPLICATE` for each item, in order. `DUPLICATE`:
    a row with this `event_id` already existed, or an earlier item has the same `event_id`
    (only the first copy is kept, as `store_payload` one by one would do)."""
    if not items:
        return []
    received_at = _now(now)
    rows: dict[str, dict[str, Any]] = {}
    for event_id, payload in items:
        rows.setdefault(
            event_id,
            {"event_id": event_id, "payload": payload, "received_at": received_at, "status": PENDING, "attempts": 0},
        )
    dialect_insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    statement = (
        dialect_insert(webhook_inbox)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(webhook_inbox.c.event_id)
    )
    with engine.begin() as connection:
        # One cached statement, executed as SQLAlchemy's "insertmanyvalues" (multi-row
        # VALUES batches); RETURNING names exactly the rows that were inserted.
        inserted = set(connection.execute(statement, list(rows.values())).scalars())
    outcomes = []
    for event_id, _ in items:
        outcomes.append(STORED if event_id in inserted else DUPLICATE)
        inserted.discard(event_id)  # a later item with the same event_id is a duplicate
    return outcomes


def store_payload(engine: Engine, event_id: str, payload: str, now: datetime | None = None) -> str:
    """Commits a raw payload as `pending`; returns `STORED`, or `DUPLICATE` when a row with
    this `event_id` already exists (Customer.io retries; the first copy is kept)."""
    values = {
        "event_id": event_id,
        "payload": payload,
        "received_at": _now(now),
        "status": PENDING,
        "attempts": 0,
    }
    dialect_insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    # ON CONFLICT DO NOTHING rather than catching IntegrityError: a conflict is expected
    # (Customer.io retries), and on PostgreSQL an error would abort the transaction.
    # RETURNING yields a row only when one was inserted (rowcount is not reliable here).
    statement = (
        dialect_insert(webhook_inbox)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(webhook_inbox.c.id)
    )
    with engine.begin() as connection:
        inserted = connection.execute(statement).first()
    return STORED if inserted is not None else DUPLICATE


# ----- drain side ----------------------------------------------------------------------


def claim_batch(
    engine: Engine,
    worker_id: str,
    limit: int,
    claim_timeout: timedelta = DEFAULT_CLAIM_TIMEOUT,
    now: datetime | None = None,
) -> list[ClaimedRow]:
    """Marks up to `limit` claimable rows `processing` for `worker_id` and returns them,
    oldest first. Claimable: `pending` and due (no `next_attempt_at`, or one not after
    `now`), or `processing` under a claim older than `claim_timeout` (its drain died; the
    row would otherwise be stuck forever)."""
    now = _now(now)
    claimable = or_(
        and_(
            webhook_inbox.c.status == PENDING,
            or_(webhook_inbox.c.next_attempt_at.is_(None), webhook_inbox.c.next_attempt_at <= _at(now)),
        ),
        and_(webhook_inbox.c.status == PROCESSING, webhook_inbox.c.claimed_at < _at(now - claim_timeout)),
    )
    claim = {"status": PROCESSING, "claimed_by": worker_id, "claimed_at": now}
    returning = (
        webhook_inbox.c.id,
        webhook_inbox.c.event_id,
        webhook_inbox.c.payload,
        webhook_inbox.c.attempts,
        webhook_inbox.c.received_at,
    )
    with engine.begin() as connection:
        if is_postgres(engine):
            # The SELECT locks the rows it returns until this transaction commits; another
            # drain claiming at the same moment skips locked rows instead of waiting for
            # them, so overlapping drains take disjoint rows without blocking each other.
            ids = (
                connection.execute(
                    select(webhook_inbox.c.id)
                    .where(claimable)
                    .order_by(webhook_inbox.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            if not ids:
                return []
            rows = connection.execute(
                update(webhook_inbox).where(_id_in(engine, ids)).values(**claim).returning(*returning)
            ).all()
        else:
            # SQLite has no row locks; one UPDATE statement is atomic and SQLite admits one
            # writer at a time. The transaction's first statement is this write, so it takes
            # the write lock at once (as BEGIN IMMEDIATE would): two drains serialise here
            # and the second sees the first one's rows as no longer claimable.
            oldest_claimable = select(webhook_inbox.c.id).where(claimable).order_by(webhook_inbox.c.id).limit(limit)
            rows = connection.execute(
                update(webhook_inbox)
                .where(webhook_inbox.c.id.in_(oldest_claimable.scalar_subquery()), claimable)
                .values(**claim)
                .returning(*returning)
            ).all()
    # RETURNING does not promise an order.
    return sorted((ClaimedRow(row[0], row[1], row[2], row[3], as_utc(row[4])) for row in rows), key=lambda row: row.id)


def mark_done(engine: Engine, worker_id: str, ids: Iterable[int], now: datetime | None = None) -> int:
    """Hull accepted these rows' events. Returns rows updated. `attempts`, `last_error` and
    `first_failed_at` stay as they were: the history of a row that needed retries."""
    ids = list(ids)
    return _settle(engine, worker_id, DONE, {None: ids} if ids else {}, now)


def mark_ignored(engine: Engine, worker_id: str, reasons: Mapping[int, str], now: datetime | None = None) -> int:
    """Deliberately not sent; the reason is kept in `last_error`. Returns rows updated."""
    return _settle(engine, worker_id, IGNORED, _ids_by_reason(reasons), now)


def mark_failed(engine: Engine, worker_id: str, reasons: Mapping[int, str], now: datetime | None = None) -> int:
    """Cannot be sent as it is; the reason is kept in `last_error`. Returns rows updated."""
    return _settle(engine, worker_id, FAILED, _ids_by_reason(reasons), now)


def release_for_retry(
    engine: Engine,
    worker_id: str,
    ids: Iterable[int],
    error: str,
    schedule: RetrySchedule | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """After a transient failure: counts an attempt and puts the rows back to `pending`,
    due again after `schedule.delay(attempts)`, or marks them `failed` once `schedule`
    gives them up (see `RetrySchedule`). One UPDATE, whatever the rows' attempt counts.
    Returns (rows back to pending, rows now failed)."""
    ids = list(ids)
    if not ids:
        return 0, 0
    schedule = schedule or RetrySchedule()
    now = _now(now)
    first_failed_at = func.coalesce(webhook_inbox.c.first_failed_at, _at(now))
    give_up = first_failed_at <= _at(now - schedule.retry_for)
    if schedule.max_attempts is not None:
        give_up = or_(give_up, webhook_inbox.c.attempts + 1 >= schedule.max_attempts)
    # SET expressions read the row as it was before the UPDATE (attempts not yet counted).
    statement = (
        update(webhook_inbox)
        .where(_held_by(engine, worker_id, ids))
        .values(
            attempts=webhook_inbox.c.attempts + 1,
            last_error=_trim(error),
            status=case((give_up, FAILED), else_=PENDING),
            processed_at=case((give_up, _at(now)), else_=null()),
            next_attempt_at=case((give_up, null()), else_=_next_attempt_at(schedule, now)),
            first_failed_at=first_failed_at,
            claimed_by=None,
            claimed_at=None,
        )
        .returning(webhook_inbox.c.status)
    )
    with engine.begin() as connection:
        statuses = connection.execute(statement).scalars().all()
    failed = sum(1 for status in statuses if status == FAILED)
    return len(statuses) - failed, failed


def _next_attempt_at(schedule: RetrySchedule, now: datetime):
    """`now + schedule.delay(attempts)` as SQL, per row: one CASE branch per attempt count
    below the cap (about 8 with the defaults), the cap for every count after."""
    cap = timedelta(seconds=schedule.max_seconds)
    branches = []
    attempts = 0
    while attempts <= _MAX_BACKOFF_EXPONENT and schedule.delay(attempts) < cap:
        branches.append((webhook_inbox.c.attempts == attempts, _at(now + schedule.delay(attempts))))
        attempts += 1
    if not branches:
        return _at(now + cap)
    return case(*branches, else_=_at(now + cap))


def release_unattempted(engine: Engine, worker_id: str, ids: Iterable[int]) -> int:
    """Back to `pending` without counting an attempt: the failure was ours (e.g. wrong
    credentials), not the row's, and must not push good rows towards `failed`."""
    ids = list(ids)
    if not ids:
        return 0
    statement = (
        update(webhook_inbox)
        .where(_held_by(engine, worker_id, ids))
        .values(status=PENDING, claimed_by=None, claimed_at=None)
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount


def count_by_status(engine: Engine) -> dict[str, int]:
    """Rows per status, every status present (0 when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    with engine.connect() as connection:
        for status, count in connection.execute(
            select(webhook_inbox.c.status, func.count()).group_by(webhook_inbox.c.status)
        ):
            counts[status] = count
    return counts


def backlog(engine: Engine, now: datetime | None = None) -> dict[str, Any]:
    """What is still owed to Hull, for a run's summary:
    - `pending`: rows not delivered yet (`pending`, waiting for a retry or not, plus
      `processing`, claimed by a drain in progress);
    - `retrying`: those of them that have failed transiently at least once;
    - `oldest_pending_age_seconds`: whole seconds since the oldest of them was received
      (None when there is none): the delay Hull's copy of the email activity is behind;
    - `failed`: rows marked `failed` (given up, or unsendable), waiting for a person.
    """
    now = _now(now)
    waiting = (PENDING, PROCESSING)
    statement = (
        select(
            webhook_inbox.c.status,
            func.count(),
            func.min(webhook_inbox.c.received_at),
            func.sum(case((webhook_inbox.c.attempts > 0, 1), else_=0)),
        )
        .where(webhook_inbox.c.status.in_((*waiting, FAILED)))
        .group_by(webhook_inbox.c.status)
    )
    pending = retrying = failed = 0
    oldest: datetime | None = None
    with engine.connect() as connection:
        for status, count, received_at, with_attempts in connection.execute(statement):
            if status == FAILED:
                failed = count
                continue
            pending += count
            retrying += int(with_attempts or 0)
            received_at = as_utc(received_at)
            if received_at is not None and (oldest is None or received_at < oldest):
                oldest = received_at
    age = None if oldest is None else max(0, int((now - oldest).total_seconds()))
    return {"pending": pending, "retrying": retrying, "oldest_pending_age_seconds": age, "failed": failed}


def _ids_by_reason(reasons: Mapping[int, str]) -> dict[str | None, list[int]]:
    # Rows of a batch tend to share a few reasons: one UPDATE per reason, not per row.
    grouped: dict[str | None, list[int]] = {}
    for row_id, reason in reasons.items():
        grouped.setdefault(reason, []).append(row_id)
    return grouped


def _settle(
    engine: Engine,
    worker_id: str,
    status: str,
    ids_by_reason: Mapping[str | None, list[int]],
    now: datetime | None = None,
) -> int:
    """Final status for rows this worker holds, in one transaction; `None` keeps last_error."""
    if not ids_by_reason:
        return 0
    settled = 0
    now = _now(now)
    with engine.begin() as connection:
        for reason, ids in ids_by_reason.items():
            values = {
                "status": status,
                "processed_at": now,
                "next_attempt_at": None,
                "claimed_by": None,
                "claimed_at": None,
            }
            if reason is not None:
                values["last_error"] = _trim(reason)
            statement = update(webhook_inbox).where(_held_by(engine, worker_id, ids)).values(**values)
            settled += connection.execute(statement).rowcount
    return settled


def _id_in(engine: Engine, ids: Sequence[int]):
    """`id IN (ids)`; on PostgreSQL `id = ANY(:ids)`, one array parameter: a batch's 500 bound
    parameters cost psycopg's query conversion and the planner tens of milliseconds a statement."""
    if is_postgres(engine):
        return webhook_inbox.c.id == any_(bindparam("ids", list(ids), type_=postgresql.ARRAY(webhook_inbox.c.id.type)))
    return webhook_inbox.c.id.in_(ids)


def _held_by(engine: Engine, worker_id: str, ids: list[int]):
    # A drain whose claim expired and was taken over must not overwrite the new owner's
    # outcome; Hull's event_id dedupe covers the event it may have sent meanwhile.
    return and_(
        _id_in(engine, ids),
        webhook_inbox.c.status == PROCESSING,
        webhook_inbox.c.claimed_by == worker_id,
    )


def _trim(error: str) -> str:
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 3] + "..."


def _now(now: datetime | None) -> datetime:
    """`now` as an aware UTC datetime (a naive one is taken as UTC), or the clock."""
    if now is None:
        return utcnow()
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


def _at(moment: datetime):
    """A timestamp as a typed SQL literal (SQLite compares the stored text form)."""
    return literal(moment, webhook_inbox.c.next_attempt_at.type)


def requeue_failed(engine: Engine) -> int:
    """Puts every `failed` row back to `pending`, due at once, with a fresh retry window and
    attempt count, for a manual rerun after the cause was fixed. The last error stays on
    the row until it is retried."""
    with engine.begin() as connection:
        return connection.execute(
            update(webhook_inbox)
            .where(webhook_inbox.c.status == FAILED)
            .values(
                status=PENDING, attempts=0, next_attempt_at=None, first_failed_at=None, claimed_by=None, claimed_at=None
            )
        ).rowcount


# ----- reading -------------------------------------------------------------------------


def rows_mentioning(engine: Engine, needles: Sequence[str], limit: int = 200) -> list[dict[str, Any]]:
    """Rows whose stored payload contains one of `needles` (exact substrings, e.g. a JSON
    string `"u-1"`), newest first; for `cio-sync explain`, which checks the identity of each.
    A scan of the inbox: an operator's question, not a run's."""
    needles = [n for n in needles if n]
    if not needles:
        return []
    with engine.connect() as connection:
        rows = (
            connection.execute(
                select(
                    webhook_inbox.c.id,
                    webhook_inbox.c.event_id,
                    webhook_inbox.c.payload,
                    webhook_inbox.c.received_at,
                    webhook_inbox.c.status,
                    webhook_inbox.c.last_error,
                    webhook_inbox.c.processed_at,
                )
                .where(or_(*(webhook_inbox.c.payload.contains(n, autoescape=True) for n in needles)))
                .order_by(webhook_inbox.c.id.desc())
                .limit(limit)
            )
            .mappings()
            .all()
        )
    return [{**r, "received_at": as_utc(r["received_at"]), "processed_at": as_utc(r["processed_at"])} for r in rows]
