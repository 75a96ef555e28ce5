"""Helpers shared by the webhook tests (a plain module they import): real payloads,
payload builders, request signing, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from cio_sync.webhooks.signature import compute_signature

# Real payload shapes, kept in the repository so a fresh clone runs every test.
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "webhooks"
SIGNING_KEY = "whsec-test-signing-key"


def load_fixture(name: str) -> dict:
    """A payload from tests/fixtures/webhooks; a missing file is an error, never a skip."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def new_event_id() -> str:
    return uuid.uuid4().hex[:26].upper()  # ULID-sized; only uniqueness matters here


def legacy_payload(event_type: str, event_id: str | None = None, **data) -> dict:
    base = {
        "customer_id": "cust-1",
        "email_address": "Jane Doe <jane@example.com>",
        "email_id": "ZI6aBAABYnJ3muVry9xcBjL7Aj-e",
        "subject": "Welcome",
        "campaign_id": "12",
        "campaign_name": "Trial welcome",
        "template_id": "35",
    }
    base.update(data)
    return {
        "event_id": event_id or new_event_id(),
        "event_type": event_type,
        "timestamp": 1585254348,
        "data": {k: v for k, v in base.items() if v is not None},
    }


def reporting_payload(object_type: str, metric: str, event_id: str | None = None, **data) -> dict:
    if object_type == "customer":
        base = {
            "customer_id": "cust-1",
            "email_address": "jane@example.com",
            "identifiers": {"id": "cust-1", "email": "jane@example.com", "cio_id": "d9c106000001"},
        }
    else:
        base = {
            "customer_id": "cust-1",
            "identifiers": {"id": "cust-1"},
            "campaign_id": 9,
            "action_id": 36,
            "delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
            "recipient": "jane@example.com",
            "subject": "Welcome",
        }
    base.update(data)
    return {
        "event_id": event_id or new_event_id(),
        "object_type": object_type,
        "metric": metric,
        "timestamp": 1585254348,
        "data": {k: v for k, v in base.items() if v is not None},
    }


def signed_headers(body: bytes, key: str = SIGNING_KEY, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "X-CIO-Timestamp": stamp,
        "X-CIO-Signature": compute_signature(key, stamp, body),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serves `app` with uvicorn in a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
