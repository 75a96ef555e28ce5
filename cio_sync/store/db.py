"""The state database: table definitions, engine creation and migrations.

SQLite is the embedded default; PostgreSQL is supported. The schema is owned by the
Alembic migrations in `cio_sync/migrations`; the `Table` objects below mirror them for
queries and must be changed together with a new migration.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite

metadata = MetaData()

# One row per Hull user that the sync has ever decided about.
user_state = Table(
    "user_state",
    metadata,
    Column("hull_id", String(64), primary_key=True),
    Column("cio_id", String(255)),  # identifier used in Customer.io paths
    Column("attributes_hash", String(64)),  # hash of the last attributes Customer.io accepted
    Column("segment_ids", JSON),  # whitelisted segments the user was in at the last decision
    Column("created_at", DateTime(timezone=True)),  # first creation in Customer.io
    Column("synced_at", DateTime(timezone=True)),
    Column("deleted_at", DateTime(timezone=True)),
    Column("last_decision", String(16)),
    Column("last_error", Text),
    Column("last_error_at", DateTime(timezone=True)),
    Column("writeback_pending", Boolean, nullable=False, default=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # 0006: the user_id_mapping `cio_id` was sent under (NULL: rows from before 0006, sent
    # under the mapping of the stream's last run), the names of the attributes Customer.io
    # last accepted (not values; the always-sent ones left out), and when the person was
    # suppressed (on_segment_exit=suppress; cleared when unsuppressed).
    Column("rejected_hash", String(64)),  # 0003: hash of the attributes Customer.io last rejected (400)
    Column("cio_id_mapping", String(255)),
    Column("attribute_names", JSON),
    Column("suppressed_at", DateTime(timezone=True)),
    # 0007: name → short digest of each attribute value Customer.io last accepted (not the
    # values): which attributes a change touches, and the dry run's old → new.
    Column("attribute_digests", JSON),
    # 0009: the digest of the Hull fields and mapping settings that gave `attributes_hash`,
    # sealed with it (cio_sync/rules/mapping.py): equal again means unchanged without mapping.
    Column("source_digest", String(32)),
    Index("ix_user_state_cio_id", "cio_id"),  # who holds a Customer.io id (`duplicate_id`)
)

# The user_id_mapping in force at each users stream's last run (one row per stream: shards
# have their own): a run whose mapping differs is a migration of every id.
stream_identity = Table(
    "stream_identity",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("user_id_mapping", String(255), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Where each incremental stream resumes: a timestamp plus the ids already handled at it.
sync_cursor = Table(
    "sync_cursor",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", String(64)),
    Column("seen_ids", JSON),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per Hull event the connector decided about (sent, skipped or failed).
event_state = Table(
    "event_state",
    metadata,
    Column("hull_event_id", String(128), primary_key=True),
    Column("cio_event_id", String(26), nullable=False),
    Column("hull_user_id", String(64)),
    Column("event_name", String(255)),
    Column("status", String(16), nullable=False),  # sent | skipped | failed
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Raw Customer.io webhook payloads, committed before the intake answers 200.
webhook_inbox = Table(
    "webhook_inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("payload", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending|processing|done|ignored|failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("claimed_by", String(64)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("processed_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True)),  # pending after a failure: not claimed before
    Column("first_failed_at", DateTime(timezone=True)),  # start of the current retry window
)

# Work that failed after the retry budget was spent, kept until a rerun completes it.
failed_batches = Table(
    "failed_batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # users | events | webhooks | writeback
    Column("payload", JSON, nullable=False),  # what is needed to redo it; never secrets
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=1),
    Column("flow_run_id", String(64)),
    Column("status", String(16), nullable=False, index=True),  # open | resolved
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The last failure was transient (429, 5xx, timeout, connection, breaker): scheduled runs
    # retry the batch by themselves (`failed_batch_auto_retries`).
    Column("transient", Boolean, nullable=False, default=True),
)

# Deletions decided by the users phase, sent only by the deletion guard at the end of a run
# (cio_sync/pipeline/deletions.py). One `planned` row per Hull user at most.
planned_deletions = Table(
    "planned_deletions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hull_id", String(64), nullable=False, index=True),
    Column("action", String(16), nullable=False),  # delete | suppress | delete_old (of an id change)
    Column("cio_id", String(255), nullable=False),  # the person that would be deleted
    Column("email", String(255)),
    Column("reason", Text, nullable=False),  # why the person would be deleted
    Column("status", String(16), nullable=False, index=True),  # planned|sent|failed|cancelled|rejected
    Column("plan_id", Integer, index=True),  # the deletion plan awaiting approval that lists it
    Column("flow_run_id", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("planned_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# A set of planned deletions over the limit, published for approval; approval covers it only.
deletion_plans = Table(
    "deletion_plans",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(64), nullable=False),  # the users stream (shard) whose run made it
    Column("digest", String(64), nullable=False),  # SHA-256 of its (Hull id, Customer.io id) pairs
    Column("size", Integer, nullable=False),
    Column("status", String(16), nullable=False, index=True),  # open|approved|rejected|superseded
    Column("flow_run_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", String(255)),
)

# Settings a sync run used that other flows must agree with (the drain's `user_id_mapping`).
settings_in_use = Table(
    "settings_in_use",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", JSON),
    Column("flow_run_id", String(64)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per person per run whenever something other than "unchanged" was decided
# (cio_sync/store/sync_log.py; `cio-sync explain`). Kept `sync_log_retention_days`.
sync_log = Table(
    "sync_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),  # Prefect flow run id, or a local id
    Column("logged_at", DateTime(timezone=True), nullable=False),
    Column("hull_id", String(64), nullable=False),
    Column("cio_id", String(255)),
    Column("email_hash", String(64)),  # SHA-256 of the lower-cased email: found by email, never stored
    Column("decision", String(16), nullable=False),  # insert|update|delete|suppress|unset_segments|skip
    Column("reason", Text),
    Column("changed", JSON(none_as_null=True)),  # names of the attributes that changed (never values)
    Column("attribute_values", JSON(none_as_null=True)),  # their new values, only with `sync_log_values` on
    Column("calls", JSON(none_as_null=True)),  # [{"call", "status", "error"}] each Customer.io call for the person
    Column("error", Text),  # the person's outcome when it failed
    Column("writeback", String(16)),  # pending|sent (the Hull write-back of this decision)
    Column("writeback_at", DateTime(timezone=True)),
    Column("writeback_error", Text),  # why the last write-back attempt was postponed
    Index("ix_sync_log_hull_id", "hull_id"),
    Index("ix_sync_log_logged_at", "logged_at"),
)

# Mutual exclusion between runs of the same job, across processes and machines.

# Who may write which users right now, across processes and machines (cio_sync/store/lease.py).
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),  # a label: what, host, pid, flow run
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("host", String(255)),  # hostname + PID namespace: where `pid` means something
    Column("pid", Integer),
    Column("process_start", String(32)),  # the process's start time (Linux), against PID reuse
    Column("flow_run_id", String(64)),
    Column("acquired_at", DateTime(timezone=True)),
    Column("renewed_at", DateTime(timezone=True)),
)

# People `cio-sync resync` asked to be sent again: the next sync run fetches them from Hull by id
# and sends them whatever their stored hash (cio_sync/pipeline/resync.py, cio_sync/store/resync.py).
resync_requests = Table(
    "resync_requests",
    metadata,
    Column("hull_id", String(64), primary_key=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("requested_by", String(255)),  # the command line that asked (`resync --segment VIP`)
)

# Per-installation values kept across runs, e.g. `events_start` (cio_sync/store/cursors.py).
sync_meta = Table(
    "sync_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_migrated: set[str] = set()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:  # pragma: no cover - driver hook
        cursor = dbapi_connection.cursor()
        # WAL lets the webhook intake write while a drain or sync reads; busy_timeout
        # makes concurrent writers wait instead of failing with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def get_engine(url: str, migrate: bool = True) -> Engine:
    """One engine per URL per process, migrated to the latest schema on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        if migrate and url not in _migrated:
            upgrade(engine)
            _migrated.add(url)
    return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


MIGRATION_LOCK_ID = 0x63696F73  # "cios": any constant shared by every process of this project


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision`."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        # Processes starting together on an empty database would otherwise all migrate at once:
        # each takes a lock first, and the later ones find the schema done.
        if is_postgres(engine):
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        elif engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _insert(connection: Connection) -> Any:
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def upsert(connection: Connection, table: Table, rows: list[dict[str, Any]], key: str) -> None:
    if not rows:
        return
    statement = _insert(connection)(table)
    columns = {c for row in rows for c in row} - {key}
    # Rows with different column sets are grouped so one statement fits each group.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for names, group in groups.items():
        stmt = statement.on_conflict_do_update(
            index_elements=[key], set_={c: statement.excluded[c] for c in names if c != key and c in columns}
        )
        # executemany of one cached statement: a multi-VALUES statement of a whole page was
        # compiled anew for every page (~0.1 s a page of 500 rows).
        connection.execute(stmt, group)
