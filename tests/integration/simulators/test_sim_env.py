"""simulator_environment: the variables that point the connector at the simulators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

import simulators
from simulators import CustomerIoSimulator, HullSimulator, RemoteCustomerIo, RemoteHull, simulator_environment

CONNECTOR_ID = "5bd329d5e2bcf3eeaf00e4a1"
SECRET = "env-test-connector-secret-0123456789abcdef"
KEYS = {
    "HULL_ORGANIZATION",
    "HULL_API_URL",
    "HULL_FIREHOSE_URL",
    "HULL_CONNECTOR_ID",
    "HULL_CONNECTOR_SECRET",
    "CUSTOMERIO_SITE_ID",
    "CUSTOMERIO_API_KEY",
    "CUSTOMERIO_TRACK_URL",
    "STATE_DATABASE_URL",
}


def test_values_come_from_the_simulators_and_work_over_http():
    with (
        HullSimulator("env.hullapp.io", CONNECTOR_ID, SECRET) as hull,
        CustomerIoSimulator(site_id="env-site", api_key="env-key") as cio,
    ):
        env = simulator_environment(hull, cio, "sqlite:///state.db")
        assert set(env) == KEYS
        assert env["HULL_ORGANIZATION"] == "env.hullapp.io"
        assert env["HULL_API_URL"] == f"{hull.url}/api/v1" == hull.api_url
        assert env["HULL_FIREHOSE_URL"] == hull.firehose_url
        assert env["CUSTOMERIO_TRACK_URL"] == cio.url
        assert env["STATE_DATABASE_URL"] == "sqlite:///state.db"

        hull.add_segment("vip", "VIP")
        segments = requests.get(
            f"{env['HULL_API_URL']}/users_segments",
            timeout=5,
            headers={
                "Hull-App-Id": env["HULL_CONNECTOR_ID"],
                "Hull-Access-Token": env["HULL_CONNECTOR_SECRET"],
                "Hull-Organization": env["HULL_ORGANIZATION"],
            },
        )
        assert segments.status_code == 200 and segments.json()[0]["id"] == "vip"
        region = requests.get(
            f"{env['CUSTOMERIO_TRACK_URL']}/api/v1/accounts/region",
            timeout=5,
            auth=(env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_API_KEY"]),
        )
        assert region.status_code == 200


def test_overrides_extras_and_conversions():
    hull, cio = RemoteHull("http://127.0.0.1:1"), RemoteCustomerIo("http://127.0.0.1:2")
    env = simulator_environment(
        hull,
        cio,
        "postgresql://u@h/db",
        {
            "SYNCHRONIZED_SEGMENTS": ["VIP", "Trial"],
            "RATE_LIMIT_PER_SECOND": 0,
            "HULL_ORGANIZATION": "from-mapping.hullapp.io",
        },
        ENABLE_USER_DELETION=True,
        ANONYMOUS_EVENTS=False,
        USER_ID_MAPPING=None,
        HULL_ORGANIZATION="from-keyword.hullapp.io",
        SETTINGS={"a": 1},
        PAIR=("x", "y"),
    )
    assert json.loads(env["SYNCHRONIZED_SEGMENTS"]) == ["VIP", "Trial"]
    assert env["RATE_LIMIT_PER_SECOND"] == "0"
    assert env["ENABLE_USER_DELETION"] == "true" and env["ANONYMOUS_EVENTS"] == "false"
    assert "USER_ID_MAPPING" not in env  # None leaves a variable out
    assert env["HULL_ORGANIZATION"] == "from-keyword.hullapp.io"  # keywords win
    assert json.loads(env["SETTINGS"]) == {"a": 1} and json.loads(env["PAIR"]) == ["x", "y"]
    assert all(isinstance(v, str) for v in env.values())
    # Remote defaults are the simulators' own defaults (python -m simulators without flags).
    assert env["HULL_CONNECTOR_ID"] == HullSimulator().connector_id
    assert (env["HULL_CONNECTOR_SECRET"], env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_API_KEY"]) == (
        "secret",
        "site",
        "key",
    )
    assert os.environ.get("HULL_API_URL") != env["HULL_API_URL"]


def test_remote_simulators_in_another_process():
    root = Path(simulators.__file__).resolve().parents[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators",
            "customerio",
            "--port",
            "0",
            "--site-id",
            "remote-site",
            "--api-key",
            "remote-key",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        url = process.stdout.readline().split()[1]
        env = simulator_environment(
            RemoteHull("http://127.0.0.1:9"), RemoteCustomerIo(url, "remote-site", "remote-key"), "sqlite://"
        )
        response = requests.get(
            f"{env['CUSTOMERIO_TRACK_URL']}/auth",
            timeout=5,
            auth=(env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_API_KEY"]),
        )
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
