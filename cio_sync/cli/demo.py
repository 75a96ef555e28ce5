"""`cio-sync demo`: the whole user sync against local simulators, on embedded defaults.

The scenario (simulators, seeded users, changes between runs) is `simulators/demo.py`, a
development-only package; this command runs the flows between its steps and prints the table."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _table(runs: list[tuple[str, dict[str, Any]]]) -> str:
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
    """Three `sync-users` runs against the demo scenario (simulators/demo.py), then the table."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "simulators" / "demo.py").is_file() and str(checkout) not in sys.path:
        # The simulators are development-only and not installed as a package: use the
        # checkout's own copy (an editable install runs from the checkout).
        sys.path.append(str(checkout))
    try:
        from simulators.demo import DemoScenario
    except ImportError:
        print("cio-sync demo needs the simulators of a source checkout (git clone, then `make demo`).", file=sys.stderr)
        return 2
    from flows.sync_users import sync_users

    data_dir = Path(os.environ.get("CIO_SYNC_DEMO_DIR") or tempfile.mkdtemp(prefix="cio-sync-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    with DemoScenario(users=users, seed=seed) as demo:
        os.environ.update(demo.environment(f"sqlite:///{data_dir / 'state.db'}"))
        print(f"Hull simulator on {demo.hull.url}, Customer.io simulator on {demo.cio.url}")
        print(f"State database: {data_dir / 'state.db'}")
        print(demo.describe() + "\n")

        runs = []
        for title, change in (
            ("1st run", None),
            ("2nd run", demo.second_run_changes),
            ("3rd run", demo.third_run_changes),
        ):
            if change is not None:
                print(change().message)
            started = time.perf_counter()
            runs.append((title, sync_users()))
            print(f"{title}: {time.perf_counter() - started:.1f}s")

        print("\n" + _table(runs))
        print("\n" + demo.summary())
        print(
            "Watch these runs in the Prefect UI: run `prefect server start`, set PREFECT_API_URL as it "
            "prints, and run `make demo` again (see README)."
        )
        return 0
