"""Shared fixtures: one Prefect test harness per session, real simulators per test, and a
fresh state database per test: SQLite always, and PostgreSQL too for tests marked
`postgres` wherever a server answers (the store layer and a few whole flows)."""

from __future__ import annotations

import pytest

from cio_sync.store import db
from tests.support.postgres import POSTGRES, POSTGRES_ADMIN_URL, fresh_postgres_database
from tests.support.sims import CIO_API_KEY, CIO_SITE_ID, HULL_CONNECTOR_ID, HULL_SECRET, point_env_at


def pytest_generate_tests(metafunc):
    """`database_url` is SQLite, plus PostgreSQL for tests marked `postgres`."""
    explicit = any("database_url" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "database_url" in metafunc.fixturenames and not explicit:
        backends = ["sqlite"]
        if metafunc.definition.get_closest_marker("postgres") is not None:
            backends.append("postgresql")
        metafunc.parametrize("database_url", backends, indirect=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server per test process. Prefect's flow-run heartbeat (crash detection
    for runs on workers, every 180 s by default) is off here: its thread sleeps in 1 s steps and
    each flow run waits for it to wake at exit, about half a second per run, a few minutes over
    the suite. The end-to-end tests run their flows in subprocesses with Prefect's defaults."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


def _sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def database_url(request, tmp_path):
    """A migrated, empty state database (see pytest_generate_tests for the backends)."""
    if request.param == "sqlite":
        url = _sqlite_url(tmp_path)
        db.get_engine(url)
        yield url
        return
    if not POSTGRES:
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_ADMIN_URL}")
    url, drop = fresh_postgres_database()
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


@pytest.fixture
def baseline(monkeypatch, tmp_path, sim_env):
    """`baseline(n)`: the Customer.io state a fault-free run produces for the scenario's data
    (tests/support/scenario.py), computed on separate simulators; the environment is pointed
    back at this test's simulators afterwards."""
    from tests.support.scenario import fault_free_state

    def make(n_users: int = 120) -> dict:
        state = fault_free_state(monkeypatch, tmp_path, n_users)
        point_env_at(monkeypatch, *sim_env["_sims"], sim_env["STATE_DATABASE_URL"])
        return state

    return make


def pytest_collection_modifyitems(config, items):
    """Longest first (e2e, then integration, then unit): with two xdist workers the few
    minute-long end-to-end tests start at once and overlap the many short ones, instead of
    running alone at the end."""
    tier = {"e2e": 0, "integration": 1, "unit": 2}

    def rank(item) -> int:
        parts = item.path.parts
        return next((tier[p] for p in parts if p in tier), 1)

    items.sort(key=rank)  # stable: the order within a tier is kept
