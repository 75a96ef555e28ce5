"""One identity setting: drain-webhooks writes to Hull under the user_id_mapping sync-users sends
people as, set once (parameter or environment) for both."""

from __future__ import annotations

import json

import pytest

from cio_sync.store.db import get_engine
from cio_sync.webhooks import inbox
from flows.drain_webhooks import DrainStopped, drain_webhooks
from flows.sync_users import sync_users
from tests.support.builders import hull_user as user
from tests.support.webhooks import legacy_payload

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def synced_by_hull_id(sim_env, hull_sim, cio_sim):
    """sync-users ran with user_id_mapping=id given as a parameter only (a deployment's)."""
    hull_sim.add_segment("s-vip", "VIP")
    hull_sim.upsert_user(user(1))
    sync_users(synchronized_segments=["VIP"], user_id_mapping="id")
    hull_id = user(1)["id"]
    assert hull_id in cio_sim.people
    engine = get_engine(sim_env["STATE_DATABASE_URL"])
    payload = legacy_payload("email_opened", customer_id=hull_id)
    inbox.store_payload(engine, payload["event_id"], json.dumps(payload))
    return hull_id


def test_the_drain_given_no_mapping_follows_the_sync(synced_by_hull_id, hull_sim):
    summary = drain_webhooks()
    assert summary["sent"] == 1
    (event,) = hull_sim.tracked_events
    assert event["as_user"]["id"] == synced_by_hull_id and "external_id" not in event["as_user"]
    assert event["user_id"] == synced_by_hull_id


def test_a_drain_mapping_that_differs_from_the_sync_stops_the_drain(synced_by_hull_id, hull_sim, monkeypatch):
    monkeypatch.setenv("USER_ID_MAPPING", "external_id")  # set on the drain's worker only
    with pytest.raises(DrainStopped, match="sync-users sends people as 'id'"):
        drain_webhooks()
    assert hull_sim.tracked_events == []
    monkeypatch.delenv("USER_ID_MAPPING")
    assert drain_webhooks(user_id_mapping="id")["sent"] == 1  # the same value is fine
