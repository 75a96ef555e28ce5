"""`cio-sync demo`: the whole user sync against local simulators, on embedded defaults."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

DEMO_SEGMENTS = ["VIP", "Trial", "Churn Risk"]
DEMO_ATTRIBUTES = ["first_name", "last_name", "traits_plan", "traits_coconuts", "traits_last_order_at",
                   "traits_closeio/title", "account.name", "traits_tags"]


def _table(runs: list[tuple[str, dict]]) -> str:
    metrics: list[str] = []
    values: dict[str, dict[str, object]] = {}
    # Every run shows the same rows, in the same order, even where one run had none of a kind.
    reasons = sorted({k for _, summary in runs for k in summary["skip_reasons"]})
    calls = sorted({k for _, summary in runs for k in summary["calls"]})
    for title, summary in runs:
        rows = {}
        for key in ("insert", "update", "delete", "skip"):
            rows[f"decision: {key}"] = summary["decisions"].get(key, 0)
        for key in reasons:
            rows[f"  skipped: {key}"] = summary["skip_reasons"].get(key, 0)
        for key in calls:
            rows[f"Customer.io calls: {key}"] = summary["calls"].get(key, 0)
        rows["failed users"] = sum(summary["failed_users"].values())
        rows["Hull write-backs sent"] = summary["writeback_sent"]
        for metric in rows:
            if metric not in metrics:
                metrics.append(metric)
        values[title] = rows
    width = max(len(m) for m in metrics) + 2
    header = "".ljust(width) + "".join(t.rjust(14) for t, _ in runs)
    lines = [header, "-" * len(header)]
    for metric in metrics:
        lines.append(metric.ljust(width) + "".join(str(values[t].get(metric, 0)).rjust(14) for t, _ in runs))
    return "\n".join(lines)


def run_demo(users: int = 300, seed: int = 7) -> int:
    from simulators.customerio import CustomerIoSimulator
    from simulators.hull import HullSimulator
    from simulators.seed import seed_synthetic

    data_dir = Path(os.environ.get("CIO_SYNC_DEMO_DIR") or tempfile.mkdtemp(prefix="cio-sync-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    connector_id, secret = "5bd329d5e2bcf3eeaf00d3m0", "demo-connector-secret-0123456789abcdefgh"
    hull = HullSimulator(organization="demo.hullapp.io", connector_id=connector_id, connector_secret=secret).start()
    cio = CustomerIoSimulator(site_id="demo-site", api_key="demo-key").start()
    try:
        os.environ.update(
            {
                "HULL_ORGANIZATION": "demo.hullapp.io",
                "HULL_API_URL": f"{hull.url}/api/v1",
                "HULL_FIREHOSE_URL": f"{hull.url}/firehose",
                "HULL_CONNECTOR_ID": connector_id,
                "HULL_CONNECTOR_SECRET": secret,
                "CUSTOMERIO_SITE_ID": "demo-site",
                "CUSTOMERIO_API_KEY": "demo-key",
                "CUSTOMERIO_TRACK_URL": cio.url,
                "STATE_DATABASE_URL": f"sqlite:///{data_dir / 'state.db'}",
                "SYNCHRONIZED_SEGMENTS": json.dumps(DEMO_SEGMENTS),
                "SYNCHRONIZED_ATTRIBUTES": json.dumps(DEMO_ATTRIBUTES),
                "ENABLE_USER_DELETION": "true",
            }
        )
        print(f"Hull simulator on {hull.url}, Customer.io simulator on {cio.url}")
        print(f"State database: {data_dir / 'state.db'}")
        seed_synthetic(hull, users, seed=seed, events_per_user=(0, 0))
        print(f"Seeded {users} Hull users in segments {', '.join(s['name'] for s in hull.segments.values())}; "
              f"synchronizing {', '.join(DEMO_SEGMENTS)}, deletion enabled\n")

        from flows.sync_users import sync_users

        runs = []
        started = time.perf_counter()
        runs.append(("1st run", sync_users()))
        print(f"1st run: {time.perf_counter() - started:.1f}s")

        rng = random.Random(seed)
        hull.advance(60)
        ids = sorted(hull.users)
        changed = rng.sample(ids, k=max(1, users // 10))
        for hull_id in changed:
            hull.set_trait(hull_id, "plan", rng.choice(["gold", "silver", "bronze"]) + "-v2")
        leaving = [i for i in ids if i not in changed][: max(1, users // 30)]
        for hull_id in leaving:
            hull.set_segments(hull_id, ["seg-other"])
        print(f"Changed the plan of {len(changed)} users and moved {len(leaving)} users out of every synced segment")

        started = time.perf_counter()
        runs.append(("2nd run", sync_users()))
        print(f"2nd run: {time.perf_counter() - started:.1f}s")
        hull.advance(60)
        touched = rng.sample(ids, k=max(1, users // 6))
        for hull_id in touched:  # a trait that is not synchronized: Hull re-indexes, nothing to send
            hull.set_trait(hull_id, "page_views", rng.randint(1, 500))
        print(f"Touched {len(touched)} users in Hull without changing anything that is synchronized")
        started = time.perf_counter()
        runs.append(("3rd run", sync_users()))
        print(f"3rd run: {time.perf_counter() - started:.1f}s\n")

        print(_table(runs))
        print(
            f"\nCustomer.io simulator: {len(cio.people)} people, {len(cio.deleted)} deleted; "
            f"Hull simulator received {len(hull.firehose_messages)} write-back messages."
        )
        print("Watch these runs in the Prefect UI: run `prefect server start`, set PREFECT_API_URL as it "
              "prints, and run `make demo` again (see README).")
        return 0
    finally:
        hull.stop()
        cio.stop()
