"""Migrations: applied on first use, idempotent, and safe when processes start together."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cio_sync.store import db
from tests.support.postgres import POSTGRES, fresh_postgres_database

pytestmark = pytest.mark.postgres  # the store layer: SQLite and PostgreSQL

REPO = Path(__file__).resolve().parents[3]

TABLES = {
    "user_state",
    "sync_cursor",
    "event_state",
    "webhook_inbox",
    "failed_batches",
    "leases",
    "alembic_version",
    "stream_identity",
    "sync_meta",
    "sync_log",
    "resync_requests",  # 0008
}


def test_upgrade_creates_every_table_and_is_idempotent(database_url):
    engine = db.get_engine(database_url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    columns = {c["name"] for c in inspect(engine).get_columns("user_state")}
    assert {"cio_id_mapping", "attribute_names", "suppressed_at"} <= columns  # 0006
    db.upgrade(engine)  # again: nothing to do, no error


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_starting_together_on_an_empty_database(backend, tmp_path):
    if backend == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path / 'fresh.db'}", (lambda: None)
    elif not POSTGRES:
        pytest.skip("no PostgreSQL server answers")
    else:
        url, cleanup = fresh_postgres_database()
    try:
        code = "import sys; from cio_sync.store import db; db.upgrade(db.make_engine(sys.argv[1]))"
        workers = [
            subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO, stderr=subprocess.PIPE) for _ in range(3)
        ]
        errors = [w.communicate(timeout=60)[1].decode() for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0], errors
        engine = db.make_engine(url)
        assert set(inspect(engine).get_table_names()) >= TABLES
        engine.dispose()
    finally:
        cleanup()
