"""`sync-users` with shards, as real Prefect flow runs against the simulators: four shards
run one after the other must leave Customer.io exactly as one unsharded run does."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cio_sync.store import db
from connectors.global_rate_limit import GLOBAL_LIMIT_NAME
from flows.sync_users import sync_users
from simulators.customerio import CustomerIoSimulator
from simulators.hull import HullSimulator
from simulators.seed import seed_synthetic
from tests.support.sims import CIO_API_KEY, CIO_SITE_ID, HULL_CONNECTOR_ID, HULL_SECRET, point_env_at

pytestmark = pytest.mark.usefixtures("prefect_harness")

USERS = 400
SETTINGS = dict(
    synchronized_segments=["VIP", "Trial"],
    synchronized_attributes=["plan", "coconuts", "company_size", "closeio/lead_status"],
    events_filter=["Order Completed", "Signed Up", "page"],
    users_per_batch=60,  # several pages per shard
)


def seed(hull: HullSimulator) -> None:
    seed_synthetic(hull, USERS, seed=11, events_per_user=(0, 3))


def customerio_state(cio: CustomerIoSimulator) -> tuple[dict, list]:
    events = sorted((e["customer"] or "", e["name"], e["id"], e["timestamp"]) for e in cio.events)
    return dict(cio.people), events


def cursor_names(database_url: str) -> set[str]:
    with db.get_engine(database_url).connect() as connection:
        return set(connection.execute(select(db.sync_cursor.c.name)).scalars())


def run_reference(monkeypatch, tmp_path) -> tuple[dict, list, dict]:
    """One unsharded run on a second pair of simulators seeded the same way, with its own
    state database; returns the Customer.io state it produced and its summary. The caller
    points the environment back at its own simulators afterwards."""
    with (
        HullSimulator(
            organization="acme.hullapp.io", connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET
        ) as hull,
        CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY) as cio,
    ):
        seed(hull)
        point_env_at(monkeypatch, hull, cio, f"sqlite:///{tmp_path / 'reference.db'}")
        summary = sync_users(**SETTINGS)
        people, events = customerio_state(cio)
    return people, events, summary


def test_four_shards_in_sequence_equal_one_unsharded_run(
    sim_env, hull_sim, cio_sim, database_url, monkeypatch, tmp_path
):
    seed(hull_sim)
    summaries = [sync_users(**SETTINGS, shard_count=4, shard_index=index) for index in range(4)]
    people, events = customerio_state(cio_sim)

    expected_people, expected_events, expected = run_reference(monkeypatch, tmp_path)
    point_env_at(monkeypatch, hull_sim, cio_sim, database_url)
    assert len(expected_people) > 100 and len(expected_events) > 100  # the comparison means something
    assert people == expected_people
    assert events == expected_events
    # Every person was created by exactly one shard.
    inserts = [s["decisions"].get("insert", 0) for s in summaries]
    assert all(inserts) and sum(inserts) == expected["decisions"]["insert"] == len(people)

    # Each shard kept its own cursors; the unsharded names were never touched.
    names = cursor_names(sim_env["STATE_DATABASE_URL"])
    assert names == {f"{stream}:shard:{i}/4" for i in range(4) for stream in ("users", "events")}

    # Nothing changed in Hull since: a second round of shards sends nothing at all.
    cio_sim.clear_journal()
    for index in range(4):
        sync_users(**SETTINGS, shard_count=4, shard_index=index)
    assert [e for e in cio_sim.journal() if not e["path"].startswith("/_sim")] == []


def test_an_invalid_shard_fails_before_any_call(sim_env, hull_sim, cio_sim):
    with pytest.raises(ValueError, match="shard_index"):
        sync_users(**SETTINGS, shard_count=4, shard_index=4)
    assert cio_sim.journal() == [] and hull_sim.journal() == []


def test_global_rate_limit_is_created_on_the_first_run(sim_env, hull_sim, cio_sim):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(GLOBAL_LIMIT_NAME)
        except ObjectNotFound:
            pass
    seed_synthetic(hull_sim, 30, seed=5, events_per_user=(0, 0))

    summary = sync_users(**SETTINGS, global_rate_limit=True, rate_limit_per_second=60)

    assert summary["decisions"].get("insert", 0) > 0 and len(cio_sim.people) == summary["decisions"]["insert"]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GLOBAL_LIMIT_NAME)
    # Created from the run's own per-process budget, since `cio-sync setup` never ran.
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (6, 60.0, True)
