"""`cio-sync demo` end to end in-process: the scenario's three runs, with the numbers they imply."""

from __future__ import annotations

import os
import re

import pytest

from cio_sync.cli.main import main

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def restored_environment(monkeypatch, tmp_path):
    """The demo points os.environ at its simulators, as the command should; put it back after."""
    saved = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIO_SYNC_DEMO_DIR", str(tmp_path / "demo"))
    yield
    os.environ.clear()
    os.environ.update(saved)


def row(output: str, metric: str) -> list[int]:
    match = re.search(rf"^\s*{re.escape(metric)}\s+(\d+)\s+(\d+)\s+(\d+)\s*$", output, re.M)
    assert match, f"no row {metric!r} in:\n{output}"
    return [int(v) for v in match.groups()]


def test_demo_runs_three_syncs_and_prints_what_each_decided(restored_environment, capsys):
    assert main(["demo", "--users", "60"]) == 0
    out = capsys.readouterr().out
    inserts, updates, deletes = row(out, "decision: insert"), row(out, "decision: update"), row(out, "decision: delete")
    skips = row(out, "decision: skip")
    assert inserts[0] + skips[0] == 60  # the first run decides about every seeded user
    assert inserts[0] > 0 and inserts[1:] == [0, 0]
    assert updates[1] > 0 and deletes[1] > 0  # the 2nd run's plan changes and segment exits
    assert row(out, "Customer.io calls: identify")[2] == 0  # 3rd run: touched, nothing synchronized changed
    assert row(out, "skipped: unchanged")[2] > 0
    assert os.path.exists(os.path.join(os.environ["CIO_SYNC_DEMO_DIR"], "state.db"))
