"""Benchmark of the user sync: `make bench` (or `python bench/run.py --users 100000 --mode both`).

What it does, per mode (v1, v2_batch):
1. Starts the Hull and Customer.io simulators as subprocesses (`--sims inprocess` runs them in
   this process instead; they then share its GIL), seeds N synthetic users into Hull.
2. Measures the raw floor once: a bare `requests.Session` loop sending the same identify calls
   (the connector's own mapping of the seeded users) to the same Customer.io simulator, on one
   thread and on `push_concurrency` threads (one Session each).
3. Runs the sync-users flow in a fresh worker process (client-side rate limit off), against a
   Prefect server started for the benchmark under a temporary PREFECT_HOME, with a fresh
   SQLite state database under bench/out/. Then a rerun with nothing changed in Hull: it reads
   again every user the first run synced, because the write-back of `customerio/*` traits
   re-indexed them, and must find them all unchanged and send nothing.
4. Prints one table and appends it, with the machine, to bench/RESULTS.md (`--no-record` skips).

While a sync runs, the Hull simulator's clock ticks one second per wall-clock second (as
Hull's does), so the write-back's re-indexing spreads over time like in production instead of
piling every user on one `indexed_at` second; the simulators' request journals are cleared
every second so their memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
HULL_CONNECTOR_ID = "5bd329d5e2bcf3eeaf00be0c"
HULL_SECRET = "bench-connector-secret-0123456789abcdefghij"
CIO_SITE_ID, CIO_API_KEY = "bench-site", "bench-key"
SEGMENTS = ["VIP", "Trial", "Churn Risk"]  # the seed's fourth segment is not synced
# 24 whitelisted + id, email, created_at, hull_segments = 28 attributes: one v1 identify each.
ATTRIBUTES = [
    "first_name", "last_name", "plan", "coconuts", "lifetime_value", "is_active", "last_order_at",
    "closeio/title", "closeio/lead_status", "tags", "signup_source", "country", "city", "language",
    "orders_count", "newsletter_opt_in", "nps_score", "trial_ends_at", "company_size", "role",
    "referral_code", "stripe/mrr", "stripe/customer_id", "account.name",
]
EVENTS = ["page", "Order Completed", "Signed Up"]
FLOOR_SAMPLE = 10_000  # identify calls the floor sends (a rate, so a sample is enough)


# ----- processes ---------------------------------------------------------------------------


class Simulator:
    """A simulator subprocess (`python -m simulators ... --port 0`) or an in-process one."""

    def __init__(self, service: str, inprocess: bool):
        self.service = service
        self.process = None
        self.instance = None
        if inprocess:
            from simulators import CustomerIoSimulator, HullSimulator

            if service == "hull":
                self.instance = HullSimulator(connector_id=HULL_CONNECTOR_ID, connector_secret=HULL_SECRET).start()
            else:
                self.instance = CustomerIoSimulator(site_id=CIO_SITE_ID, api_key=CIO_API_KEY).start()
            self.url = self.instance.url
            return
        extra = (["--connector-id", HULL_CONNECTOR_ID, "--connector-secret", HULL_SECRET] if service == "hull"
                 else ["--site-id", CIO_SITE_ID, "--api-key", CIO_API_KEY])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulators", service, "--port", "0", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline().strip()
        if not line.startswith("ready "):
            raise RuntimeError(f"{service} simulator did not start: {line!r}")
        self.url = line.split(" ", 1)[1]

    def peak_rss_mb(self) -> float | None:
        if self.process is None:
            return None  # in-process: counted in this process
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """`prefect server start` under a temporary PREFECT_HOME: flows report to a real API, as
    in production, and nothing touches the developer's own Prefect."""

    def __init__(self):
        self.home = tempfile.mkdtemp(prefix="cio-bench-prefect-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_HOME": self.home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_UI_ENABLED": "false"}
        self.log = open(Path(self.home) / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        import requests

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"Prefect server did not start; see {self.log.name}")

    def count_task_runs(self, flow_run_id: str) -> int:
        import requests

        response = requests.post(f"{self.url}/task_runs/count",
                                 json={"flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=30)
        response.raise_for_status()
        return int(response.json())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


class Ticker:
    """Moves the Hull simulator's clock with wall time and keeps journals from growing."""

    def __init__(self, hull_url: str, cio_url: str):
        import requests

        self.session = requests.Session()
        self.hull_url, self.cio_url = hull_url, cio_url
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            self.session.post(f"{self.hull_url}/_sim/advance", json={"seconds": 1})
            for url in (self.hull_url, self.cio_url):
                self.session.delete(f"{url}/_sim/journal")


# ----- the floor ---------------------------------------------------------------------------


def identify_calls(hull_url: str, limit: int) -> list[tuple[str, dict]]:
    """The connector's own identify calls for the first `limit` seeded users: same mapping,
    same chunking, same paths."""
    from cio_sync.rules.mapping import chunk_attributes, map_user
    from cio_sync.settings import ConnectorSettings
    from connectors.customerio import customer_path
    from connectors.hull import HullClient

    settings = ConnectorSettings.resolve(synchronized_segments=SEGMENTS, synchronized_attributes=ATTRIBUTES)
    hull = HullClient(f"{hull_url}/api/v1", f"{hull_url}/firehose", "acme.hullapp.io", HULL_CONNECTOR_ID,
                      HULL_SECRET)
    names = {s["id"]: s["name"] for s in hull.segments()}
    whitelisted = {i for i, n in names.items() if n in SEGMENTS}
    calls: list[tuple[str, dict]] = []
    page = 1
    while len(calls) < limit:
        users = hull.search_users([], page=page, per_page=100)["data"]
        if not users:
            break
        for user in users:
            mapped = map_user(user, settings, names, whitelisted)
            if mapped.cio_id and mapped.email and mapped.whitelisted_segment_ids:
                for chunk in chunk_attributes(mapped.attributes, settings.max_attributes_per_call):
                    calls.append((customer_path(mapped.cio_id), chunk))
        page += 1
        if page * 100 > 10_000:  # Hull's result window; the sample is big enough by then
            break
    hull.close()
    return calls[:limit]


def raw_floor(cio_url: str, calls: list[tuple[str, dict]], threads: int) -> float:
    """Identify calls/s of bare `requests.Session` loops, `threads` of them, one Session each."""
    import requests

    def run(part: list[tuple[str, dict]]) -> None:
        with requests.Session() as session:
            session.auth = (CIO_SITE_ID, CIO_API_KEY)
            for path, body in part:
                session.put(f"{cio_url}{path}", json=body).raise_for_status()

    parts = [calls[i::threads] for i in range(threads)]
    started = time.perf_counter()
    if threads == 1:
        run(calls)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, parts))
    return len(calls) / (time.perf_counter() - started)


# ----- the worker: one flow process per mode ---------------------------------------------------


def worker(spec: dict) -> dict:
    """Runs in its own process so its peak RSS is the flow's alone."""
    import logging

    os.environ.update(spec["env"])
    import requests
    from prefect import flow

    from flows.sync_users import sync_users

    logging.getLogger("prefect").setLevel(logging.WARNING)

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        """Pays Prefect's one-off client start-up outside the timed runs."""

    warm_up()
    params = dict(synchronized_segments=SEGMENTS, synchronized_attributes=ATTRIBUTES,
                  rate_limit_per_second=0, customerio_api=spec["mode"], **spec["params"])
    if spec["events"]:
        params["events_filter"] = EVENTS
        # The seeded events are dated on the simulator's clock, not the wall clock: reach them.
        params["events_initial_lookback_hours"] = 20 * 365 * 24

    def cio_counts() -> dict:
        return requests.get(f"{spec['env']['CUSTOMERIO_TRACK_URL']}/_sim/state?summary=1", timeout=60).json()["counts"]

    def timed(label: str) -> dict:
        before = cio_counts()
        started = time.perf_counter()
        state = sync_users(**params, return_state=True)
        seconds = time.perf_counter() - started
        summary = state.result()
        after = cio_counts()
        requests_made = sum(after[k] - before[k] for k in ("identify", "delete", "event", "anonymous_event", "batch"))
        return {"label": label, "seconds": seconds, "summary": summary, "cio_requests": requests_made,
                "batch_entries": after["batch_entries"] - before["batch_entries"],
                "flow_run_id": str(state.state_details.flow_run_id),
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    initial = timed("initial")
    rerun = timed("rerun")
    return {"initial": initial, "rerun": rerun}


def run_worker(spec: dict) -> dict:
    spec_file = OUT / f"spec-{spec['mode']}.json"
    result_file = OUT / f"result-{spec['mode']}.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    log = OUT / f"worker-{spec['mode']}.log"
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file),
                                "--worker-result", str(result_file)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if code != 0 or not result_file.exists():
        raise RuntimeError(f"worker for {spec['mode']} failed (exit {code}); see {log}")
    return json.loads(result_file.read_text())


# ----- orchestration -----------------------------------------------------------------------


def seed(hull_url: str, cio_url: str, users: int) -> dict:
    import requests

    for url in (hull_url, cio_url):
        requests.post(f"{url}/_sim/reset", timeout=60).raise_for_status()
        requests.post(f"{url}/_sim/journal", json={"record": False, "clear": True}, timeout=60).raise_for_status()
    response = requests.post(f"{hull_url}/_sim/seed", json={"n_users": users}, timeout=3600)
    response.raise_for_status()
    return response.json()


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    import prefect

    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "prefect": prefect.__version__,
            "load_before": os.getloadavg()[0]}


def fmt(value, digits=0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(rows: list[dict]) -> str:
    header = ("| N | mode | run | users read | seconds | users/s | Customer.io req/s | Customer.io requests | "
              "Prefect task runs | pages | flow peak RSS MB | Hull sim RSS MB | CIO sim RSS MB | vs floor |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {fmt(r['n'])} | {r['mode']} | {r['run']} | {fmt(r.get('read'))} | {fmt(r.get('seconds'), 1)} | "
            f"{fmt(r.get('users_s'))} | "
            f"{fmt(r.get('req_s'))} | {fmt(r.get('requests'))} | {fmt(r.get('tasks'))} | {fmt(r.get('pages'))} | "
            f"{fmt(r.get('rss'))} | {fmt(r.get('hull_rss'))} | {fmt(r.get('cio_rss'))} | {r.get('vs_floor', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from simulators.env import RemoteCustomerIo, RemoteHull, simulator_environment

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--mode", choices=("v1", "v2_batch", "both"), default="both")
    parser.add_argument("--sims", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--push-concurrency", type=int, default=None, help="default: the connector's default")
    parser.add_argument("--users-per-batch", type=int, default=None, help="default: the connector's default")
    parser.add_argument("--events", action="store_true", help="also sync the seeded events (events_filter)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(json.loads(Path(args.worker).read_text()))
        Path(args.worker_result).write_text(json.dumps(result, default=str))
        return 0

    from cio_sync.settings import ConnectorSettings

    concurrency = args.push_concurrency or ConnectorSettings.model_fields["push_concurrency"].default
    params = {"push_concurrency": concurrency}
    if args.users_per_batch:
        params["users_per_batch"] = args.users_per_batch
    modes = ["v1", "v2_batch"] if args.mode == "both" else [args.mode]
    OUT.mkdir(parents=True, exist_ok=True)
    host = machine()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench: {args.users:,} users, modes {modes}, simulators {args.sims}, push_concurrency {concurrency}",
          flush=True)

    hull = Simulator("hull", args.sims == "inprocess")
    cio = Simulator("customerio", args.sims == "inprocess")
    prefect_server = None
    rows: list[dict] = []
    try:
        prefect_server = PrefectServer()
        seeded = seed(hull.url, cio.url, args.users)
        print(f"seeded {seeded['users']:,} users, {seeded['events']:,} events in {seeded['seconds']} s", flush=True)
        calls = identify_calls(hull.url, min(FLOOR_SAMPLE, args.users))
        floor_1 = raw_floor(cio.url, calls, 1)
        floor_n = raw_floor(cio.url, calls, concurrency)
        rows.append({"n": len(calls), "mode": "raw floor", "run": "1 Session", "read": len(calls), "users_s": floor_1, "req_s": floor_1,
                     "requests": len(calls), "seconds": len(calls) / floor_1})
        rows.append({"n": len(calls), "mode": "raw floor", "run": f"{concurrency} threads", "read": len(calls), "users_s": floor_n,
                     "req_s": floor_n, "requests": len(calls), "seconds": len(calls) / floor_n})
        print(f"raw floor: {floor_1:,.0f} identify/s on 1 Session, {floor_n:,.0f}/s on {concurrency} threads",
              flush=True)
        best_floor = max(floor_1, floor_n)

        for number, mode in enumerate(modes):
            if number:
                seed(hull.url, cio.url, args.users)  # each mode starts from the same fresh data
            database = OUT / f"state-{mode}.db"
            database.unlink(missing_ok=True)
            spec = {"mode": mode, "events": args.events, "params": params, "env": {
                "PREFECT_API_URL": prefect_server.url, "PREFECT_HOME": prefect_server.home,
                "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                **simulator_environment(
                    RemoteHull(hull.url, "acme.hullapp.io", HULL_CONNECTOR_ID, HULL_SECRET),
                    RemoteCustomerIo(cio.url, CIO_SITE_ID, CIO_API_KEY),
                    f"sqlite:///{database}", SYNC_LEASE_TTL_SECONDS=3600),
            }}
            with Ticker(hull.url, cio.url):
                result = run_worker(spec)
            for run in ("initial", "rerun"):
                r = result[run]
                s = r["summary"]
                row = {"n": args.users, "mode": mode, "run": run, "seconds": r["seconds"], "read": s["users_seen"],
                       "users_s": s["users_seen"] / r["seconds"], "req_s": r["cio_requests"] / r["seconds"],
                       "requests": r["cio_requests"], "tasks": prefect_server.count_task_runs(r["flow_run_id"]),
                       "pages": s["pages"], "rss": r["rss_mb"], "hull_rss": hull.peak_rss_mb(),
                       "cio_rss": cio.peak_rss_mb(), "summary": s}
                if run == "initial" and mode == "v1":
                    row["vs_floor"] = (f"{100 * row['req_s'] / best_floor:.0f}% req/s, "
                                       f"{100 * row['users_s'] / best_floor:.0f}% users/s")
                rows.append(row)
                print(f"{mode} {run}: {r['seconds']:.1f} s, {row['users_s']:,.0f} users/s, "
                      f"{r['cio_requests']:,} Customer.io requests, {row['tasks']} task runs, "
                      f"decisions {s['decisions']}, failed {s['failed_users']}, users seen {s['users_seen']:,}",
                      flush=True)
    finally:
        if prefect_server is not None:
            prefect_server.stop()
        hull.stop()
        cio.stop()

    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = table(rows)
    print()
    print(text)
    if not args.no_record:
        with open(RESULTS, "a") as out:
            out.write(
                f"\n### {started_at}: `bench/run.py --users {args.users} --mode {args.mode} --sims {args.sims}`\n\n"
                f"Machine: {host['nproc']} CPUs ({host['cpu']}), {host['ram_gb']} GB RAM, Python {host['python']}, "
                f"prefect {host['prefect']}; load average before the run {host['load_before']:.2f}; "
                f"push_concurrency {concurrency}; bench process peak RSS {self_rss:.0f} MB.\n\n{text}\n")
        print(f"\nappended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
