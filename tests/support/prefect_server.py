"""A real `prefect server start` for one e2e test: own PREFECT_HOME, free loopback port,
stopped (process group and all) on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
PREFECT = [str(BIN / "prefect")] if (BIN / "prefect").exists() else [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(tmp_path: Path, api_url: str) -> dict[str, str]:
    """This process's environment without Prefect, Hull or Customer.io settings, pointed at `api_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HULL_", "CUSTOMERIO_"))}
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
    )
    return env


@contextlib.contextmanager
def prefect_server(tmp_path: Path, extra_env: dict[str, str] | None = None, timeout: float = 90) -> Iterator[dict]:
    """Yields the environment (PREFECT_API_URL included) of a running server."""
    port = free_port()
    env = {**clean_environment(tmp_path, f"http://127.0.0.1:{port}/api"), **(extra_env or {})}
    log_path = tmp_path / "prefect-server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            start_new_session=True,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, f"prefect server exited:\n{log_path.read_text(errors='replace')}"
            try:
                if requests.get(f"{env['PREFECT_API_URL']}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"prefect server not healthy:\n{log_path.read_text(errors='replace')}"
            time.sleep(0.3)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
