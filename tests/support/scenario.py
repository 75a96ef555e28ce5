"""A realistic scenario shared by the fault-injection tests: users in and out of segments,
with events, and the settings a user would deploy with."""

from __future__ import annotations

SETTINGS = dict(
    synchronized_segments=["VIP", "Trial"],
    synchronized_attributes=["plan", "coconuts", "last_order_at"],
    events_filter=["Signed Up", "page"],
    enable_user_deletion=True,
)


def seed(hull, n_users: int = 120) -> None:
    hull.add_segment("s-vip", "VIP")
    hull.add_segment("s-trial", "Trial")
    hull.add_segment("s-other", "Other")
    for n in range(n_users):
        segments = [["s-vip"], ["s-trial"], ["s-other"], ["s-vip", "s-trial"]][n % 4]
        hull.upsert_user(
            {
                "id": f"5bd329d5e2bcf3eeaf{n:06d}",
                "email": f"user{n}@example.com",
                "external_id": f"u-{n}",
                "created_at": "2020-01-01T00:00:00Z",
                "segment_ids": segments,
                "traits_plan": ["gold", "silver"][n % 2],
                "traits_coconuts": n,
                "traits_last_order_at": "2026-11-01T12:00:00Z",
            }
        )
        hull.add_event(
            {
                "event_id": f"ev-signup-{n}",
                "event": "Signed Up",
                "created_at": "2026-11-26T09:00:00Z",
                "properties": {"plan": "gold", "n": n},
                "context": {},
                "user_id": f"5bd329d5e2bcf3eeaf{n:06d}",
            }
        )
        hull.add_event(
            {
                "event_id": f"ev-page-{n}",
                "event": "page",
                "created_at": "2026-11-26T09:00:01Z",
                "properties": {"url": f"https://example.com/p/{n}"},
                "context": {},
                "user_id": f"5bd329d5e2bcf3eeaf{n:06d}",
            }
        )
        if n % 10 == 0:
            hull.advance(1)


def customerio_state(cio) -> dict:
    """What a user of Customer.io would see: people with attributes, deletions, events by id."""
    return {
        "people": {k: dict(v) for k, v in cio.people.items()},
        "deleted": set(cio.deleted),
        "events": sorted((e["customer"], e["name"], e["id"], e.get("type")) for e in cio.events),
    }


def fault_free_state(monkeypatch, tmp_path, n_users: int) -> dict:
    """The Customer.io state an uninterrupted, fault-free run produces for the same data."""
    from flows.sync_users import sync_users
    from simulators.customerio import CustomerIoSimulator
    from simulators.hull import HullSimulator
    from tests.support.sims import CIO_API_KEY, CIO_SITE_ID, HULL_CONNECTOR_ID, HULL_SECRET, point_env_at

    hull = HullSimulator(connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET).start()
    cio = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
    try:
        seed(hull, n_users)
        point_env_at(monkeypatch, hull, cio, f"sqlite:///{tmp_path / 'baseline.db'}")
        sync_users(**SETTINGS)
        return customerio_state(cio)
    finally:
        hull.stop()
        cio.stop()


def assert_events_exactly_once(cio_sim, expected) -> None:
    ids = [e["id"] for e in cio_sim.events]
    assert len(ids) == len(set(ids)) == len(expected["events"])
