"""The soak: scheduled-like runs for SOAK_MINUTES (default 30) against the simulators while
about 20% of the requests to either service fail (429, 5xx, dropped connections) and answers
are randomly slow in both directions; users and events change in Hull and webhooks arrive the
whole time. At the end the faults stop, the runs settle, and nothing may be lost: every user
in Customer.io as a fault-free sync of Hull's final data makes it, every whitelisted event
there exactly once, every webhook in Hull.

`make soak` (`pytest -m soak`); never part of `make test`. SOAK_MINUTES=3 for a short one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter

import pytest

from cio_sync.rules.events import event_ulid, parse_created_at
from cio_sync.store import db
from cio_sync.store.failed import list_failed_batches
from cio_sync.store.users import count_pending_writebacks
from cio_sync.webhooks import inbox
from flows.drain_webhooks import drain_webhooks
from flows.rerun_failed_batches import rerun_failed_batches
from flows.sync_users import sync_users
from tests.support.sims import CIO_API_KEY, CIO_SITE_ID, HULL_CONNECTOR_ID, HULL_SECRET, point_env_at
from tests.support.webhooks import legacy_payload, reporting_payload

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("prefect_harness")]

SETTINGS = dict(
    synchronized_segments=["VIP", "Trial"],
    synchronized_attributes=["plan", "coconuts"],
    events_filter=["Signed Up", "page"],
    enable_user_deletion=True,
    users_per_batch=100,
    rate_limit_per_second=200,
)
EVENT_NAMES = ["Signed Up", "page", "Order Completed"]  # the last is never sent
SEGMENT_CHOICES = [["s-trial"], ["s-other"], [], ["s-vip", "s-other"]]
FAULT_RATE = 0.2  # of every request to either simulator: 429/5xx 15%, dropped connections 5%
SETTLE_BACKOFF_SECONDS = 20  # the longest webhook retry backoff in the soak
CYCLE_SECONDS = 3.0  # one sync-users run and one drain-webhooks run, as their schedules would


@pytest.fixture(autouse=True)
def only_on_demand(request):
    if "soak" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the soak runs only on demand: make soak (pytest -m soak)")


def hull_id(n: int) -> str:
    return f"5bd329d5e2bcf3ee{n:08x}"


def is_loyal(n: int) -> bool:
    """Even users stay in VIP with an id and an email for good: their events must all arrive.
    Odd users move in and out of the synchronized segments (inserts, deletes) and get no events,
    so which events are due never depends on timing."""
    return n % 2 == 0


class World:
    """Hull changing under the sync, and Customer.io's webhooks arriving, from background threads."""

    def __init__(self, hull, engine, seed: int = 13):
        self.hull, self.engine = hull, engine
        self.rng = random.Random(seed)
        self.users = 0
        self.events = 0
        self.webhook_ids: list[str] = []
        self.webhook_payloads: dict[str, str] = {}
        self.webhooks_stored: Counter = Counter()
        self.stop = threading.Event()
        self.mutations = Counter()

    def add_user(self) -> None:
        n = self.users
        self.users += 1
        self.hull.upsert_user(
            {
                "id": hull_id(n),
                "external_id": f"u-{n}",
                "email": f"user{n}@example.com",
                "created_at": "2020-01-01T00:00:00Z",
                "segment_ids": ["s-vip"] if is_loyal(n) else self.rng.choice(SEGMENT_CHOICES),
                "traits_plan": self.rng.choice(["gold", "silver"]),
                "traits_coconuts": n,
            }
        )
        self.mutations["users added"] += 1
        if is_loyal(n) and self.rng.random() < 0.5:
            self.add_event(n, "Signed Up")  # born with its user: the events phase identifies it first

    def add_event(self, n: int, name: str) -> None:
        event_id = f"ev-{self.events:06d}"
        self.events += 1
        event = {
            "event_id": event_id,
            "event": name,
            "user_id": hull_id(n),
            "created_at": self.hull.now,
            "properties": {"url": f"https://example.com/{event_id}"} if name == "page" else {"k": event_id},
        }
        if self.rng.random() < 0.3:
            self.hull.add_raw_event(event)  # Hull's raw index form: `_id` and a `props` list
            self.mutations["events added (raw form)"] += 1
        else:
            self.hull.add_event(event)
            self.mutations["events added"] += 1

    def change_user(self, n: int) -> None:
        if is_loyal(n):
            choice = self.rng.random()
            if choice < 0.4:
                self.hull.set_trait(hull_id(n), "plan", self.rng.choice(["gold", "silver", "bronze"]))
            elif choice < 0.8:
                self.hull.set_trait(hull_id(n), "coconuts", self.rng.randrange(1000))
            else:
                extra = [] if "s-trial" in (self.hull.user(hull_id(n)) or {}).get("segment_ids", []) else ["s-trial"]
                self.hull.set_segments(hull_id(n), ["s-vip", *extra])
            self.mutations["loyal users changed"] += 1
        else:
            self.hull.set_segments(hull_id(n), self.rng.choice(SEGMENT_CHOICES))
            self.mutations["users moved between segments"] += 1

    def tick(self) -> None:
        # The clock moves, then this second's changes, all under the simulator's lock: no read
        # falls between two changes of one second (Hull's second-precision `indexed_at` cannot
        # tell them apart, for this connector or any other).
        with self.hull.lock:
            self.hull.advance(1)
            for n in self.rng.sample(range(self.users), k=min(4, self.users)):
                self.change_user(n)
            if self.rng.random() < 0.4:
                self.add_user()
            for _ in range(self.rng.randint(1, 3)):
                loyal = self.rng.randrange(0, self.users, 2)
                self.add_event(loyal, self.rng.choice(EVENT_NAMES))
        self.webhook()

    def webhook(self) -> None:
        if self.webhook_ids and self.rng.random() < 0.1:  # Customer.io retries a delivery
            event_id = self.rng.choice(self.webhook_ids)
            row = self.webhook_payloads[event_id]
        else:
            n = self.rng.randrange(0, self.users, 2)
            if self.rng.random() < 0.5:
                payload = legacy_payload(
                    self.rng.choice(["email_opened", "email_clicked", "email_delivered"]),
                    customer_id=f"u-{n}",
                    email_address=f"user{n}@example.com",
                )
            else:
                payload = reporting_payload(
                    "email",
                    self.rng.choice(["opened", "clicked", "delivered"]),
                    customer_id=f"u-{n}",
                    identifiers={"id": f"u-{n}"},
                    recipient=f"user{n}@example.com",
                )
            event_id, row = payload["event_id"], json.dumps(payload)
            self.webhook_ids.append(event_id)
            self.webhook_payloads[event_id] = row
        self.webhooks_stored[inbox.store_payload(self.engine, event_id, row)] += 1

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.3, 0.7)):
            self.tick()


class Weather:
    """Random slow answers: every second or two, each simulator's latency is redrawn; now and
    then a short outage (every request 503) outlasts the clients' retries, so breakers open
    and failed batches are filed and rerun."""

    def __init__(self, sims, seed: int = 17):
        self.sims, self.rng, self.stop = sims, random.Random(seed), threading.Event()
        self.spells: Counter = Counter()
        self.down_until = {sim.name: 0.0 for sim in sims}

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.0, 2.5)):
            for sim in self.sims:
                latency = self.rng.choices([0.0, 0.05, 0.3, 1.0, 2.5], weights=[60, 20, 12, 6, 2])[0]
                sim.faults.latency(latency)
                if latency >= 2.5:
                    self.spells[f"{sim.name}: slower than the client's timeout"] += 1
                elif latency:
                    self.spells[f"{sim.name}: slow"] += 1
                now = time.monotonic()
                if now >= self.down_until[sim.name] and self.rng.random() < 0.04:
                    self.down_until[sim.name] = now + self.rng.uniform(3, 8)  # outlasts the retries
                    self.spells[f"{sim.name}: down (3-8 s)"] += 1
                sim.faults.down(now < self.down_until[sim.name])


def storm(sim, seed: int) -> None:
    sim.faults.error_rate(FAULT_RATE * 0.75 / (1 - FAULT_RATE * 0.25), statuses=(429, 500, 502, 503), seed=seed)
    sim.faults.drop_rate(FAULT_RATE * 0.25, seed=seed + 1)


def attempt(outcomes: Counter, label: str, run) -> dict | None:
    try:
        result = run()
    except Exception as exc:  # a failed scheduled run: the next one carries on
        outcomes[f"{label}: {type(exc).__name__}"] += 1
        return None
    outcomes[f"{label}: completed"] += 1
    return result


def fault_free_people(monkeypatch, tmp_path, hull_final) -> dict:
    """Customer.io's people after one fault-free sync of a copy of Hull's final users."""
    from simulators.customerio import CustomerIoSimulator
    from simulators.hull import HullSimulator

    hull = HullSimulator(connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET).start()
    cio = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
    try:
        for segment in hull_final.segments.values():
            hull.add_segment(segment["id"], segment["name"])
        with hull_final.lock:
            users = [dict(u) for u in hull_final.users.values()]
        for user in users:
            hull.upsert_user(user)
        point_env_at(monkeypatch, hull, cio, f"sqlite:///{tmp_path / 'fault-free.db'}")
        sync_users(**{**SETTINGS, "events_filter": [], "users_per_batch": 1000, "rate_limit_per_second": 0})
        return {k: dict(v) for k, v in cio.people.items()}
    finally:
        hull.stop()
        cio.stop()


def test_soak(sim_env, hull_sim, cio_sim, monkeypatch, tmp_path):
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(logging.WARNING)
    monkeypatch.setenv("HTTP_BACKOFF_SECONDS", "0.05")
    monkeypatch.setenv("HTTP_BACKOFF_MAX_SECONDS", "1")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "2")
    # Webhook rows Hull failed wait for a backoff (30 s doubling to an hour by default): the
    # soak compresses time, as it does for the HTTP retries, so rows can settle in seconds.
    monkeypatch.setenv("WEBHOOK_RETRY_BASE_SECONDS", "1")
    monkeypatch.setenv("WEBHOOK_RETRY_MAX_SECONDS", str(SETTLE_BACKOFF_SECONDS))
    for sim in (hull_sim, cio_sim):
        sim.record_journal = False  # keep statuses, not bodies: half an hour of requests
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    for segment_id, name in (("s-vip", "VIP"), ("s-trial", "Trial"), ("s-other", "Other")):
        hull_sim.add_segment(segment_id, name)

    world = World(hull_sim, engine)
    for _ in range(200):
        world.add_user()
    weather = Weather([hull_sim, cio_sim])
    storm(hull_sim, seed=1)
    storm(cio_sim, seed=3)
    threads = [
        threading.Thread(target=world.run, name="soak-hull-changes", daemon=True),
        threading.Thread(target=weather.run, name="soak-weather", daemon=True),
    ]
    for thread in threads:
        thread.start()

    outcomes: Counter = Counter()
    rng = random.Random(5)
    deadline = time.monotonic() + minutes * 60
    cycles = 0
    try:
        while time.monotonic() < deadline:
            started = time.monotonic()
            api = "v2_batch" if rng.random() < 0.3 else "v1"
            attempt(outcomes, f"sync-users ({api})", lambda api=api: sync_users(**SETTINGS, customerio_api=api))
            attempt(outcomes, "drain-webhooks", lambda: drain_webhooks(batch_size=rng.choice([50, 200, 500])))
            if cycles % 5 == 4:
                attempt(
                    outcomes,
                    "rerun-failed-batches",
                    lambda: rerun_failed_batches(**SETTINGS, requeue_failed_webhooks=True),
                )
            cycles += 1
            time.sleep(max(0.0, CYCLE_SECONDS - (time.monotonic() - started)))
    finally:
        world.stop.set()
        weather.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    failed_batches_filed = len(list_failed_batches(engine, status=None))

    # The storm is over: the next runs settle everything that is still owed.
    hull_sim.faults.clear()
    cio_sim.faults.clear()
    # Rows Hull failed last are still in their backoff: rounds go on (a few seconds apart) until
    # the longest backoff has passed, so every row is due once more.
    settle_until = time.monotonic() + SETTLE_BACKOFF_SECONDS + 30
    for _round in range(40):
        if _round and time.monotonic() > settle_until:
            break
        last = attempt(outcomes, "settle: sync-users", lambda: sync_users(**SETTINGS))
        attempt(outcomes, "settle: drain-webhooks", lambda: drain_webhooks())
        attempt(
            outcomes,
            "settle: rerun-failed-batches",
            lambda: rerun_failed_batches(**SETTINGS, requeue_failed_webhooks=True),
        )
        left = inbox.count_by_status(engine)
        quiet = (
            last is not None
            and not ({"insert", "update", "delete"} & set(last["decisions"]))
            and not last["events"].get("sent")
        )
        if (
            quiet
            and not list_failed_batches(engine)
            and left["pending"] + left["processing"] + left["failed"] == 0
            and count_pending_writebacks(engine) == 0
        ):
            break
        time.sleep(3)

    # -- what must hold ------------------------------------------------------------------
    people = {k: dict(v) for k, v in cio_sim.people.items()}
    expected_people = fault_free_people(monkeypatch, tmp_path, hull_sim)
    users_lost = sorted(set(expected_people) - set(people))
    users_wrong = sorted(k for k in set(expected_people) & set(people) if people[k] != expected_people[k])
    users_extra = sorted(set(people) - set(expected_people))
    unwritten = sorted(k for k in people if (hull_sim.find_user(external_id=k) or {}).get("traits_customerio/id") != k)

    with hull_sim.lock:
        hull_events = [dict(e) for e in hull_sim.events]
    due = {}
    for event in hull_events:
        event_id = event.get("event_id") or event.get("_id")
        owner = int(event["user_id"][-8:], 16)
        if event["event"] in SETTINGS["events_filter"] and is_loyal(owner):
            due[event_ulid(event_id, parse_created_at(event["created_at"]))] = event_id
    stored = Counter(e["id"] for e in cio_sim.events)
    events_duplicated = sorted(k for k, v in stored.items() if v > 1)
    events_lost = sorted(due[k] for k in set(due) - set(stored))
    events_unexpected = sorted(set(stored) - set(due))

    webhooks = set(world.webhook_ids)
    tracked = Counter(e["event_id"] for e in hull_sim.tracked_events)
    webhooks_lost = sorted(webhooks - set(tracked))
    inbox_left = inbox.count_by_status(engine)

    cio_statuses = Counter(str(e["status"]) for e in cio_sim.journal())
    hull_statuses = Counter(str(e["status"]) for e in hull_sim.journal())
    figures = {
        "minutes": minutes,
        "scheduled cycles (sync-users + drain-webhooks)": cycles,
        **{f"run {k}": v for k, v in sorted(outcomes.items())},
        **{f"Hull {k}": v for k, v in sorted(world.mutations.items())},
        "webhooks stored (distinct)": len(webhooks),
        "webhook deliveries repeated by Customer.io": world.webhooks_stored[inbox.DUPLICATE],
        **{f"spells of {k}": v for k, v in sorted(weather.spells.items())},
        "Customer.io requests": sum(cio_statuses.values()),
        "Customer.io requests failed on purpose (429/5xx/dropped)": sum(
            v for k, v in cio_statuses.items() if k in ("429", "500", "502", "503", "None")
        ),
        "Hull requests": sum(hull_statuses.values()),
        "Hull requests failed on purpose (429/5xx/dropped)": sum(
            v for k, v in hull_statuses.items() if k in ("429", "500", "502", "503", "None")
        ),
        "failed batches filed": failed_batches_filed,
        "failed batches still open": len(list_failed_batches(engine)),
        "Customer.io people": len(people),
        "Customer.io people deleted (left the segments)": len(cio_sim.deleted - set(people)),
        "events due / in Customer.io": f"{len(due)} / {len(stored)}",
        "event resends Customer.io dropped by ULID": cio_sim.counts["duplicate_events"],
        "webhooks in Hull / resends Hull dropped by event_id": f"{len(set(tracked) & webhooks)} / "
        f"{sum(1 for m in hull_sim.firehose_messages if m.get('duplicate'))}",
        "users lost / wrong / unexpected": f"{len(users_lost)} / {len(users_wrong)} / {len(users_extra)}",
        "users not written back": len(unwritten),
        "events lost / duplicated / unexpected": f"{len(events_lost)} / {len(events_duplicated)} / "
        f"{len(events_unexpected)}",
        "webhooks lost": len(webhooks_lost),
        "inbox": ", ".join(f"{k} {v}" for k, v in inbox_left.items()),
    }
    print("\nsoak figures")
    for key, value in figures.items():
        print(f"  {key:<60} {value}")

    assert sum(cio_statuses[k] for k in ("429", "500", "502", "503", "None")) > 0  # the storm happened
    assert users_lost == [] and users_wrong == [] and users_extra == []
    assert unwritten == []
    assert events_duplicated == [] and events_lost == [] and events_unexpected == []
    assert webhooks_lost == [] and inbox_left["pending"] == inbox_left["processing"] == inbox_left["failed"] == 0
    assert list_failed_batches(engine) == []
