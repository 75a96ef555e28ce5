"""The demo scenario (simulators/demo.py) without the connector: the data each step leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

import simulators
from simulators.demo import DEMO_ATTRIBUTES, DEMO_SEGMENTS, DemoScenario


def changed_since(demo: DemoScenario, env: dict, iso: str) -> set[str]:
    headers = {"Hull-App-Id": env["HULL_CONNECTOR_ID"], "Hull-Access-Token": env["HULL_CONNECTOR_SECRET"]}
    found, page = set(), 1
    while True:
        body = {
            "query": {"bool": {"filter": [{"range": {"indexed_at": {"gte": iso}}}]}},
            "sort": {"indexed_at": "asc"},
            "page": page,
            "per_page": 100,
        }
        data = requests.post(
            f"{env['HULL_API_URL']}/search/user_reports", json=body, headers=headers, timeout=10
        ).json()["data"]
        found |= {user["id"] for user in data}
        if len(data) < 100:
            return found
        page += 1


def test_demo_steps_over_http(tmp_path):
    with DemoScenario() as demo:
        env = demo.environment(f"sqlite:///{tmp_path / 'state.db'}")
        assert json.loads(env["SYNCHRONIZED_SEGMENTS"]) == DEMO_SEGMENTS
        assert json.loads(env["SYNCHRONIZED_ATTRIBUTES"]) == DEMO_ATTRIBUTES
        assert env["ENABLE_USER_DELETION"] == "true" and env["HULL_ORGANIZATION"] == "demo.hullapp.io"
        assert (
            requests.get(
                f"{env['CUSTOMERIO_TRACK_URL']}/auth",
                timeout=5,
                auth=(env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_API_KEY"]),
            ).status_code
            == 200
        )
        assert len(demo.hull.users) == 300 and demo.hull.events == []
        assert demo.describe() == (
            "Seeded 300 Hull users in segments VIP, Trial, Churn Risk, Not synced; "
            "synchronizing VIP, Trial, Churn Risk, deletion enabled"
        )

        second = demo.second_run_changes()
        assert second.message == ("Changed the plan of 30 users and moved 10 users out of every synced segment")
        assert len(second.changed) == 30 and len(second.left_segments) == 10
        assert not set(second.changed) & set(second.left_segments)
        for hull_id in second.changed:
            assert demo.hull.user(hull_id)["traits_plan"].endswith("-v2")
        for hull_id in second.left_segments:
            assert demo.hull.user(hull_id)["segment_ids"] == ["seg-other"]
        assert changed_since(demo, env, demo.hull.now.strftime("%Y-%m-%dT%H:%M:%SZ")) == set(second.changed) | set(
            second.left_segments
        )

        third = demo.third_run_changes()
        assert third.message == "Touched 50 users in Hull without changing anything that is synchronized"
        assert len(set(third.changed)) == 50 and third.left_segments == []
        assert all("traits_page_views" in demo.hull.user(i) for i in third.changed)
        assert changed_since(demo, env, demo.hull.now.strftime("%Y-%m-%dT%H:%M:%SZ")) == set(third.changed)
        assert demo.summary() == (
            "Customer.io simulator: 0 people, 0 deleted; Hull simulator received 0 write-back messages."
        )


def test_same_seed_same_changes():
    runs = []
    for _ in range(2):
        demo = DemoScenario(users=60, seed=3).start()
        try:
            runs.append(
                (demo.second_run_changes(), demo.third_run_changes(), {k: dict(v) for k, v in demo.hull.users.items()})
            )
        finally:
            demo.stop()
    assert runs[0] == runs[1]
    assert (len(runs[0][0].changed), len(runs[0][0].left_segments), len(runs[0][1].changed)) == (6, 2, 10)


def test_demo_module_does_not_import_the_connector():
    root = Path(simulators.__file__).resolve().parents[1]
    code = (
        "import sys, simulators.demo\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('cio_sync', 'flows', 'tasks', 'connectors', 'prefect')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
