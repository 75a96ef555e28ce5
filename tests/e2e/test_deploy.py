"""Production shape, end to end: a real `prefect server start`, `prefect deploy --all` from a
clean copy of the checkout, process workers, `prefect deployment run`, and the simulators as
separate processes seeded over HTTP.

Part 1: `sync-users` and `drain-webhooks` on one worker (SQLite state) complete and publish
their artifacts; then `cio-sync serve --replace` takes over the same deployment names and
runs `check-connection` without any worker. Part 2 (needs PostgreSQL): `sync-users-sharded` runs 4 shards on 2 workers
against an identically seeded second pair of simulators, with PostgreSQL state; the union of
the shards equals part 1's unsharded result, and the Customer.io request rate stayed under
the shared budget set by `cio-sync setup`.

Every process started here is stopped in a `finally`, process group and all (a worker's flow
runs are its child processes).
"""

from __future__ import annotations

import bisect
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from simulators.env import RemoteCustomerIo, RemoteHull, simulator_environment
from tests.support.postgres import POSTGRES, fresh_postgres_database
from tests.support.prefect_server import PREFECT, clean_environment, free_port
from tests.support.sims import (
    CIO_API_KEY,
    CIO_SITE_ID,
    HULL_CONNECTOR_ID,
    HULL_SECRET,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CIO_SYNC = [sys.executable, "-m", "cio_sync.cli.main"]

USERS = 240
SEED = {"n_users": USERS, "seed": 7, "events_per_user": [0, 2]}
CONNECTOR_SETTINGS = {
    "SYNCHRONIZED_SEGMENTS": json.dumps(["VIP", "Trial"]),
    "SYNCHRONIZED_ATTRIBUTES": json.dumps(["plan", "coconuts", "company_size"]),
    "EVENTS_FILTER": json.dumps(["Order Completed", "Signed Up"]),
    "RATE_LIMIT_PER_SECOND": "0",  # no in-process limiter: only the shared budget limits
    # The seeded events are dated on the simulators' clock (2026-11-26): reach back before it.
    "EVENTS_INITIAL_LOOKBACK_HOURS": str(20 * 365 * 24),
}
BUDGET_PER_SECOND = 40  # part 2's `cio-sync setup --requests-per-second`
BUDGET_BURST = 6  # blocks of 2 slots
RUN_TIMEOUT = 150
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Processes:
    """Subprocesses of this test, each in its own process group, output to a log file."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, args: list[str], env: dict, cwd: Path | None = None, capture_stdout: bool = False
    ) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            start_new_session=True,
            stdout=subprocess.PIPE if capture_stdout else log,
            stderr=log,
        )
        self.running.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Flow-run processes of a worker live in its group; make sure none outlives it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.stdout:
            proc.stdout.close()

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            self.stop(proc)


def start_simulator(processes: Processes, name: str, kind: str, env: dict) -> str:
    args = [sys.executable, "-m", "simulators", kind, "--port", "0"]
    if kind == "hull":
        args += ["--connector-id", HULL_CONNECTOR_ID, "--connector-secret", HULL_SECRET]
    else:
        args += ["--site-id", CIO_SITE_ID, "--api-key", CIO_API_KEY]
    proc = processes.start(name, args, env, cwd=REPO, capture_stdout=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode().strip() if ready else ""
    assert line.startswith("ready "), f"{name} did not start: {line!r}\n{processes.log(name)}"
    return line.split(" ", 1)[1]


def wait_for_health(api_url: str, server: subprocess.Popen, processes: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{processes.log('prefect-server')}"
        try:
            if requests.get(f"{api_url}/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout} s:\n{processes.log('prefect-server')}")


def run(args: list[str], env: dict, cwd: Path, timeout: float = 120) -> str:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def trigger(deployment: str, env: dict, cwd: Path, *params: str) -> str:
    args = [*PREFECT, "deployment", "run", deployment]
    for param in params:
        args += ["--param", param]
    output = run(args, env, cwd)
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def wait_for_runs(client, run_ids: list[str], processes: Processes, timeout: float = RUN_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        runs = {run_id: client.read_flow_run(run_id) for run_id in run_ids}
        if all(r.state and r.state.type.value in FINAL_STATES for r in runs.values()):
            return runs
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name}\n{processes.log(name)[-3000:]}" for name, _ in processes.running)
            states = {r.name: r.state and r.state.name for r in runs.values()}
            raise AssertionError(f"runs not finished after {timeout} s: {states}\n{logs}")
        time.sleep(1)


def keyed_artifacts(client, flow_run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return {a.key: a for a in artifacts if a.key}


def customerio_state(cio_url: str) -> tuple[dict, list]:
    state = requests.get(f"{cio_url}/_sim/state", timeout=10).json()
    events = sorted((e["customer"] or "", e["name"], e["id"], e["timestamp"]) for e in state["events"])
    return state["people"], events


def customerio_request_times(cio_url: str) -> list[float]:
    journal = requests.get(f"{cio_url}/_sim/journal", timeout=10).json()
    return sorted(e["ts"] for e in journal if e["path"].startswith("/api/"))


def max_in_any_window(times: list[float], seconds: float = 1.0) -> int:
    return max(bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times))


def copy_checkout(destination: Path) -> Path:
    """What a clean checkout holds: what .gitignore lists stays behind (virtualenv, state
    database, caches, benchmark output, and a developer's `.env`, which the flow runs would
    otherwise read from their working directory)."""
    skipped = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "data", ".env", "build"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = {name for name in names if name in skipped or name.endswith(".egg-info")}
        if Path(directory) == REPO / "bench":
            ignored.add("out")
        return ignored

    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def webhook_payload(event_id: str) -> dict:
    """An `email opened` reporting webhook for the seeded user u-1."""
    return {
        "event_id": event_id,
        "object_type": "email",
        "metric": "opened",
        "timestamp": 1585254348,
        "data": {
            "customer_id": "u-1",
            "identifiers": {"id": "u-1"},
            "campaign_id": 9,
            "action_id": 36,
            "delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
            "recipient": "u1@example.com",
            "subject": "Welcome",
        },
    }


def worker_env(base: dict, hull_url: str, cio_url: str, state_url: str) -> dict:
    """A worker's environment: where the services are, the credentials (here and nowhere
    else: never in prefect.yaml), and the connector settings the deployments leave null."""
    return {
        **base,
        **CONNECTOR_SETTINGS,
        **simulator_environment(
            RemoteHull(hull_url, "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET),
            RemoteCustomerIo(cio_url, CIO_SITE_ID, CIO_API_KEY),
            state_url,
        ),
    }


def test_deployments_run_on_workers_and_shards_match_the_unsharded_run(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    from cio_sync.store import db
    from cio_sync.webhooks import inbox

    logs = tmp_path / "logs"
    logs.mkdir()
    processes = Processes(logs)
    checkout = copy_checkout(tmp_path / "checkout")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    # Runs here start only when the test triggers them, never from a schedule (the scheduler is off).
    base_env = {
        key: value
        for key, value in clean_environment(tmp_path, api_url).items()
        if key not in CONNECTOR_SETTINGS
        and key not in {"STATE_DATABASE_URL", "USER_ID_MAPPING", "ENABLE_USER_DELETION", "ANONYMOUS_EVENTS"}
    }
    base_env.update(
        {
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick up triggered runs within a second
            # The flow-run processes import the copy, installed or not.
            "PYTHONPATH": str(checkout),
        }
    )
    try:
        server = processes.start(
            "prefect-server",
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", api_url.split(":")[-1].split("/")[0]],
            base_env,
            cwd=tmp_path,
        )
        # The simulators start while the server boots (11-16 s).
        urls = {
            name: start_simulator(processes, name, kind, base_env)
            for name, kind in (("hull-a", "hull"), ("cio-a", "customerio"), ("hull-b", "hull"), ("cio-b", "customerio"))
        }
        for hull in ("hull-a", "hull-b"):  # identical data: same seed, same simulated clock
            response = requests.post(f"{urls[hull]}/_sim/seed", json=SEED, timeout=60)
            assert response.ok, response.text
        wait_for_health(api_url, server, processes)

        # -- deploy from the clean copy ------------------------------------------------------
        run([*PREFECT, "work-pool", "create", "cio-sync", "--type", "process"], base_env, checkout)
        run([*PREFECT, "--no-prompt", "deploy", "--all"], base_env, checkout, timeout=180)

        with SyncPrefectClient(api_url) as client:
            deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
            assert set(deployments) == {
                "sync-users/sync-users",
                "drain-webhooks/drain-webhooks",
                "check-connection/check-connection",
                "rerun-failed-batches/rerun-failed-batches",
                "sync-users-sharded/sync-users-sharded",
                "backfill-events/backfill-events",
                "sync-users/sync-users-shard",
            }
            intervals = {
                name: [s.schedule.interval.total_seconds() for s in d.schedules] for name, d in deployments.items()
            }
            assert intervals["sync-users/sync-users"] == [300]
            assert intervals["drain-webhooks/drain-webhooks"] == [60]
            assert intervals["check-connection/check-connection"] == [1800]
            assert intervals["rerun-failed-batches/rerun-failed-batches"] == []
            assert deployments["sync-users/sync-users"].global_concurrency_limit.limit == 1
            for deployment in deployments.values():
                assert deployment.work_pool_name == "cio-sync"
                # The pull step points at the checkout the deploy ran from.
                (step,) = deployment.pull_steps
                assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(checkout)
                assert not any(SECRET in json.dumps(deployment.parameters) for SECRET in (HULL_SECRET, CIO_API_KEY))

        # -- part 1: sync-users and drain-webhooks on one worker, SQLite state ---------------
        state_a = f"sqlite:///{tmp_path / 'state-a.db'}"
        webhook_id = uuid.uuid4().hex[:26].upper()
        engine = db.get_engine(state_a)
        assert inbox.store_payload(engine, webhook_id, json.dumps(webhook_payload(webhook_id))) == inbox.STORED
        engine.dispose()
        worker_a = processes.start(
            "worker-a",
            [*PREFECT, "worker", "start", "--pool", "cio-sync", "--name", "worker-a"],
            worker_env(base_env, urls["hull-a"], urls["cio-a"], state_a),
            cwd=tmp_path,
        )
        sync_id = trigger("sync-users/sync-users", base_env, checkout)
        drain_id = trigger("drain-webhooks/drain-webhooks", base_env, checkout)
        with SyncPrefectClient(api_url) as client:
            runs = wait_for_runs(client, [sync_id, drain_id], processes)
            assert {r.state.type.value for r in runs.values()} == {"COMPLETED"}, {
                r.name: r.state.message for r in runs.values()
            }
            sync_artifacts = keyed_artifacts(client, sync_id)
            drain_artifacts = keyed_artifacts(client, drain_id)
            assert "sync-users-summary" in sync_artifacts
            assert "drain-webhooks-summary" in drain_artifacts
            sync_table = {row["metric"]: row["value"] for row in json.loads(sync_artifacts["sync-users-summary"].data)}
            drain_table = {
                row["outcome"]: row["this run"] for row in json.loads(drain_artifacts["drain-webhooks-summary"].data)
            }
            # The first run ever created the shared budget itself (no `cio-sync setup` yet).
            limit = client.read_global_concurrency_limit_by_name("customerio-requests")
            assert (limit.limit, limit.slot_decay_per_second) == (10, 100.0)
        unsharded_people, unsharded_events = customerio_state(urls["cio-a"])
        assert sync_table["decision: insert"] == len(unsharded_people) > 100
        assert len(unsharded_events) > 20
        assert drain_table["sent"] == 1
        hull_a = requests.get(f"{urls['hull-a']}/_sim/state", timeout=10).json()
        assert webhook_id in {e["event_id"] for e in hull_a["tracked_events"]}
        processes.stop(worker_a)

        # -- `cio-sync serve`: the same deployments from one process, no worker -------------
        env_a = worker_env(base_env, urls["hull-a"], urls["cio-a"], state_a)
        refused = subprocess.run(
            [*CIO_SYNC, "serve"], env=env_a, cwd=checkout, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2 and "cio-sync serve --replace" in refused.stderr, refused.stderr
        serve = processes.start("cio-sync-serve", [*CIO_SYNC, "serve", "--replace"], env_a, cwd=checkout)
        deadline = time.monotonic() + 60
        while "deployments are being served" not in processes.log("cio-sync-serve"):
            assert serve.poll() is None and time.monotonic() < deadline, processes.log("cio-sync-serve")
            time.sleep(0.5)
        with SyncPrefectClient(api_url) as client:
            check_id = trigger("check-connection/check-connection", base_env, checkout)
            check_run = wait_for_runs(client, [check_id], processes)[check_id]
            assert check_run.state.is_completed(), check_run.state.message
            check_artifact = keyed_artifacts(client, check_id)["check-connection"]
            assert "✅ Customer.io credentials accepted" in check_artifact.data
            assert "✅ Hull credentials accepted" in check_artifact.data
        processes.stop(serve)

        # -- part 2: 4 shards on 2 workers, PostgreSQL state, shared budget -------------------
        if not POSTGRES:
            pytest.skip("no PostgreSQL server answers: the sharded part needs one")
        state_b, drop_state_b = fresh_postgres_database()
        try:
            output = run(
                [*CIO_SYNC, "setup", "--requests-per-second", str(BUDGET_PER_SECOND), "--burst", str(BUDGET_BURST)],
                base_env,
                checkout,
            )
            assert "already there" in output  # the pool created above is kept as it is
            env_b = worker_env(base_env, urls["hull-b"], urls["cio-b"], state_b)
            # Once, before the workers: four shards starting together on an empty database
            # would otherwise all run the migrations at the same moment.
            assert "latest schema" in run([*CIO_SYNC, "db", "upgrade"], env_b, checkout)
            # Three runs at most each: the parent and two shards cannot all land on one worker.
            workers_b = [
                processes.start(
                    name,
                    [*PREFECT, "worker", "start", "--pool", "cio-sync", "--name", name, "--limit", "3"],
                    env_b,
                    cwd=tmp_path,
                )
                for name in ("worker-b1", "worker-b2")
            ]
            parent_id = trigger(
                "sync-users-sharded/sync-users-sharded", base_env, checkout, "shard_count=4", "poll_interval_seconds=1"
            )
            with SyncPrefectClient(api_url) as client:
                parent = wait_for_runs(client, [parent_id], processes)[parent_id]
                assert parent.state.is_completed(), parent.state.message
                children = [
                    r
                    for r in client.read_flow_runs()
                    if r.deployment_id == deployments["sync-users/sync-users-shard"].id
                ]
                assert sorted(r.parameters["shard_index"] for r in children) == [0, 1, 2, 3]
                assert all(r.parameters["shard_count"] == 4 and r.state.is_completed() for r in children)
                assert "sync-users-sharded-summary" in keyed_artifacts(client, parent_id)
            # Both workers ran shards.
            for name in ("worker-b1", "worker-b2"):
                assert any(str(child.id) in processes.log(name) for child in children), processes.log(name)

            sharded_people, sharded_events = customerio_state(urls["cio-b"])
            assert sharded_people == unsharded_people
            assert sharded_events == unsharded_events

            times = customerio_request_times(urls["cio-b"])
            busiest = max_in_any_window(times)
            # Slots decay at the budget; a block of `burst` slots can be out on top of it.
            assert busiest <= BUDGET_PER_SECOND + 2 * BUDGET_BURST, busiest
            # ... and the budget was really in force: the shards together could not go faster.
            assert times[-1] - times[0] >= (len(times) - BUDGET_BURST) / BUDGET_PER_SECOND * 0.95
        finally:
            for worker in workers_b if "workers_b" in locals() else []:
                processes.stop(worker)  # before the database they write to is dropped
            drop_state_b()
    finally:
        processes.stop_all()
