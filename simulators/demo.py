"""The demo scenario: both simulators, seeded users, and the changes made between runs.

Only the data side of ``cio-sync demo``: the command starts the scenario, points the
connector at it (``environment()``), runs ``sync-users`` between the steps and prints
what each run decided. Nothing here imports the connector (``flows``, ``cio_sync``)::

    with DemoScenario() as demo:           # start(): simulators up, 300 users seeded
        os.environ.update(demo.environment(f"sqlite:///{path}"))
        run()                              # 1st run: initial sync
        demo.second_run_changes()          # plans of 10% changed, 1/30 leave every synced segment
        run()
        demo.third_run_changes()           # 1/6 touched, nothing synchronized changed
        run()

The numbers and the random draws are those of the demo whose output the README shows:
same ``users`` and ``seed``, same decisions.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

from .customerio import CustomerIoSimulator
from .env import simulator_environment
from .hull import HullSimulator
from .seed import seed_synthetic

DEMO_SEGMENTS = ["VIP", "Trial", "Churn Risk"]
DEMO_ATTRIBUTES = [
    "first_name",
    "last_name",
    "traits_plan",
    "traits_coconuts",
    "traits_last_order_at",
    "traits_closeio/title",
    "account.name",
    "traits_tags",
]
DEMO_ORGANIZATION = "demo.hullapp.io"
DEMO_CONNECTOR_ID = "5bd329d5e2bcf3eeaf00d3m0"
DEMO_CONNECTOR_SECRET = "demo-connector-secret-0123456789abcdefgh"
DEMO_SITE_ID = "demo-site"
DEMO_API_KEY = "demo-key"
NOT_SYNCED_SEGMENT = "seg-other"  # seed_synthetic's segment outside DEMO_SEGMENTS


class Step(NamedTuple):
    """What a step changed in Hull (hull ids), and the sentence the demo prints for it."""

    message: str
    changed: list[str]  # traits changed (2nd run: synchronized plan; 3rd: unsynchronized trait)
    left_segments: list[str]  # moved out of every synchronized segment


class DemoScenario:
    """Hull + Customer.io simulators on loopback with ``users`` seeded users."""

    def __init__(self, users: int = 300, seed: int = 7) -> None:
        self.users = users
        self.seed = seed
        self.hull = HullSimulator(
            organization=DEMO_ORGANIZATION, connector_id=DEMO_CONNECTOR_ID, connector_secret=DEMO_CONNECTOR_SECRET
        )
        self.cio = CustomerIoSimulator(site_id=DEMO_SITE_ID, api_key=DEMO_API_KEY)
        self._rng = random.Random(seed)
        self._ids: list[str] = []
        self.seeded: dict[str, Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> DemoScenario:
        """Start both simulators and seed the users (no events); idempotent."""
        self.hull.start()
        self.cio.start()
        if self.seeded is None:
            self.seeded = seed_synthetic(self.hull, self.users, seed=self.seed, events_per_user=(0, 0))
        return self

    def stop(self) -> None:
        self.hull.stop()
        self.cio.stop()

    def __enter__(self) -> DemoScenario:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- what the command prints and sets ----------------------------------------------
    def environment(self, database_url: str) -> dict[str, str]:
        """Every variable the connector needs for the demo: the simulators, the state
        database, the synchronized segments and attributes, deletion on."""
        return simulator_environment(
            self.hull,
            self.cio,
            database_url,
            SYNCHRONIZED_SEGMENTS=DEMO_SEGMENTS,
            SYNCHRONIZED_ATTRIBUTES=DEMO_ATTRIBUTES,
            ENABLE_USER_DELETION=True,
        )

    def describe(self) -> str:
        """The sentence printed after seeding."""
        names = ", ".join(segment["name"] for segment in self.hull.segments.values())
        return (
            f"Seeded {self.users} Hull users in segments {names}; "
            f"synchronizing {', '.join(DEMO_SEGMENTS)}, deletion enabled"
        )

    def summary(self) -> str:
        """The closing line: what the simulators hold after the runs."""
        return (
            f"Customer.io simulator: {len(self.cio.people)} people, {len(self.cio.deleted)} deleted; "
            f"Hull simulator received {len(self.hull.firehose_messages)} write-back messages."
        )

    # -- changes between runs ----------------------------------------------------------
    def second_run_changes(self) -> Step:
        """A minute later: a new plan for 10% of the users, and 1/30 of the others moved
        out of every synchronized segment."""
        hull, rng = self.hull, self._rng
        hull.advance(60)
        self._ids = ids = sorted(hull.users)
        changed = rng.sample(ids, k=max(1, self.users // 10))
        for hull_id in changed:
            hull.set_trait(hull_id, "plan", rng.choice(["gold", "silver", "bronze"]) + "-v2")
        chosen = set(changed)
        leaving = [i for i in ids if i not in chosen][: max(1, self.users // 30)]
        for hull_id in leaving:
            hull.set_segments(hull_id, [NOT_SYNCED_SEGMENT])
        return Step(
            f"Changed the plan of {len(changed)} users and moved {len(leaving)} users out of every synced segment",
            changed,
            leaving,
        )

    def third_run_changes(self) -> Step:
        """A minute later: 1/6 of the users touched in Hull (re-indexed) through a trait that
        is not synchronized, so the next run has nothing to send for them."""
        hull, rng = self.hull, self._rng
        hull.advance(60)
        ids = self._ids or sorted(hull.users)
        touched = rng.sample(ids, k=max(1, self.users // 6))
        for hull_id in touched:
            hull.set_trait(hull_id, "page_views", rng.randint(1, 500))
        return Step(f"Touched {len(touched)} users in Hull without changing anything that is synchronized", touched, [])
