"""Migrations: applied on first use, idempotent, and safe when processes start together."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cio_sync import db
from tests.conftest import POSTGRES, _fresh_postgres_database

REPO = Path(__file__).resolve().parents[2]

TABLES = {"user_state", "sync_cursor", "event_state", "webhook_inbox", "failed_batches", "leases", "alembic_version"}


def test_upgrade_creates_every_table_and_is_idempotent(database_url):
    engine = db.get_engine(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    db.upgrade(engine)  # again: nothing to do, no error


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_starting_together_on_an_empty_database(backend, tmp_path):
    if backend == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path / 'fresh.db'}", (lambda: None)
    elif not POSTGRES:
        pytest.skip("no PostgreSQL server answers")
    else:
        url, cleanup = _fresh_postgres_database()
    try:
        code = "import sys; from cio_sync import db; db.upgrade(db.make_engine(sys.argv[1]))"
        workers = [subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO, stderr=subprocess.PIPE)
                   for _ in range(3)]
        errors = [w.communicate(timeout=60)[1].decode() for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0], errors
        engine = db.make_engine(url)
        assert TABLES <= set(inspect(engine).get_table_names())
        engine.dispose()
    finally:
        cleanup()
