"""PostgreSQL for the test variants: a fresh database per test where a server answers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from cio_sync.store import db

POSTGRES_ADMIN_URL = os.environ.get("CIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), connect_timeout=2):
            return True
    except Exception:
        return False


POSTGRES = postgres_available()


def fresh_postgres_database() -> tuple[str, Callable[[], None]]:
    """(url, drop) of a new empty database on the test server."""
    import psycopg

    name = f"cio_sync_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        db.dispose_engines()
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop
