"""Alerts through Prefect, against a real `prefect server start`: `cio-sync setup
--notify-block` creates the automations once (run twice, still one of each), and a failed
`drain-webhooks` run makes Prefect send a notification through a custom webhook block to a
loopback receiver of this test."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.prefect_server import prefect_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BLOCK = "cio-sync-alerts-test"

# A flow named as the connector's drain that fails at once: the alert matches flow names.
FAILING_FLOW = """
from prefect import flow

@flow(name="drain-webhooks")
def drain_webhooks():
    raise RuntimeError("Hull unavailable (test)")

try:
    drain_webhooks()
except RuntimeError:
    pass
"""

MAKE_BLOCK = """
import sys
from prefect.blocks.notifications import CustomWebhookNotificationBlock

CustomWebhookNotificationBlock(
    name="test", url=sys.argv[1], method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"}
).save(sys.argv[2], overwrite=True)
"""

LIST_AUTOMATIONS = """
import json
from prefect.client.orchestration import get_client

with get_client(sync_client=True) as client:
    print(json.dumps([
        {"name": a.name, "actions": [a2.model_dump(mode="json") for a2 in a.actions]}
        for a in client.read_automations()
    ]))
"""


class Receiver:
    """A loopback HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def python(code: str, env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def cio_sync(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cio_sync.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_setup_creates_the_alerts_once_and_a_failed_run_notifies_the_block(tmp_path):
    receiver = Receiver()
    try:
        with prefect_server(tmp_path) as env:
            env = {**env, "STATE_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
            missing = cio_sync(env, "setup", "--notify-block", BLOCK)
            assert missing.returncode == 2 and f"no notification block named {BLOCK!r}" in missing.stderr

            python(MAKE_BLOCK, env, receiver.url, BLOCK)
            for _ in range(2):  # idempotent: the second run updates in place
                done = cio_sync(env, "setup", "--notify-block", BLOCK)
                assert done.returncode == 0, done.stdout + done.stderr
            assert "alert 'cio-sync: run failed': updated" in done.stdout

            listed = json.loads(python(LIST_AUTOMATIONS, env))
            names = sorted(a["name"] for a in listed)
            assert names == sorted(
                [
                    "cio-sync: run failed",
                    "cio-sync: no completed sync-users run",
                    "cio-sync: webhook backlog",
                    "cio-sync: failed batches left open",
                ]
            )
            assert all(a["actions"][0]["type"] == "send-notification" for a in listed)

            # The triggers service loads new automations asynchronously: a run failing before
            # that is not seen, so fail again (a bounded number of times) until one is.
            deadline = time.monotonic() + 60
            while not receiver.bodies and time.monotonic() < deadline:
                python(FAILING_FLOW, env)
                until = min(deadline, time.monotonic() + 15)
                while not receiver.bodies and time.monotonic() < until:
                    time.sleep(0.5)
            assert receiver.bodies, f"no notification within 60 s:\n{(tmp_path / 'prefect-server.log').read_text()}"
            message = receiver.bodies[0]
            assert "drain-webhooks" in message["subject"] and "Failed" in message["subject"]
            assert "Hull unavailable (test)" in message["body"]
    finally:
        receiver.close()
