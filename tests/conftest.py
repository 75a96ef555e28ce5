"""Shared fixtures: one Prefect test harness per session, real simulators per test, and a
fresh state database per test (SQLite always; PostgreSQL too where a server answers)."""

from __future__ import annotations

import os
import uuid

import pytest

from cio_sync import db

POSTGRES_ADMIN_URL = os.environ.get(
    "CIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
HULL_CONNECTOR_ID = "5bd329d5e2bcf3eeaf000001"
HULL_SECRET = "hull-test-connector-secret-0123456789abcdef"
CIO_SITE_ID = "test-site"
CIO_API_KEY = "test-api-key"


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), connect_timeout=2):
            return True
    except Exception:
        return False


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


POSTGRES = _postgres_available()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def _fresh_postgres_database() -> tuple[str, callable]:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A migrated, empty state database; tests using it run on both backends."""
    if request.param == "sqlite":
        url = _sqlite_url(tmp_path)
        db.get_engine(url)
        yield url
        return
    if not POSTGRES:
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_ADMIN_URL}")
    url, drop = _fresh_postgres_database()
    db.get_engine(url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def sqlite_url(tmp_path):
    url = _sqlite_url(tmp_path)
    db.get_engine(url)
    return url


@pytest.fixture
def hull_sim():
    from simulators.hull import HullSimulator

    sim = HullSimulator(
        organization="acme.hullapp.io", connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET
    ).start()
    yield sim
    sim.stop()


@pytest.fixture
def cio_sim():
    from simulators.customerio import CustomerIoSimulator

    sim = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim_env(monkeypatch, tmp_path, hull_sim, cio_sim, database_url):
    """Environment pointing every setting at the simulators and the test database."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    values = point_env_at(monkeypatch, hull_sim, cio_sim, database_url)
    return {**values, "_sims": (hull_sim, cio_sim)}


def point_env_at(monkeypatch, hull_sim, cio_sim, database_url) -> dict[str, str]:
    values = {
        "HULL_ORGANIZATION": "acme.hullapp.io",
        "HULL_API_URL": f"{hull_sim.url}/api/v1",
        "HULL_FIREHOSE_URL": f"{hull_sim.url}/firehose",
        "HULL_CONNECTOR_ID": HULL_CONNECTOR_ID,
        "HULL_CONNECTOR_SECRET": HULL_SECRET,
        "CUSTOMERIO_SITE_ID": CIO_SITE_ID,
        "CUSTOMERIO_API_KEY": CIO_API_KEY,
        "CUSTOMERIO_TRACK_URL": cio_sim.url,
        "STATE_DATABASE_URL": database_url,
        "RATE_LIMIT_PER_SECOND": "0",
    }
    for key in list(os.environ):
        if key.startswith(("HULL_", "CUSTOMERIO_")) or key in {
            "SYNCHRONIZED_SEGMENTS", "SYNCHRONIZED_ATTRIBUTES", "USER_ID_MAPPING",
            "ENABLE_USER_DELETION", "EVENTS_FILTER", "ANONYMOUS_EVENTS",
        }:
            monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    # Fast retries: the policy is the same, only the waits are shorter.
    monkeypatch.setenv("HTTP_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "5")
    return values
