"""`cio-sync resync`: the next sync-users run sends the requested people again (fetched from
Hull by id, even when the incremental walk does not read them), and nobody else."""

from __future__ import annotations

import pytest

from cio_sync.cli.main import main
from cio_sync.store import db
from cio_sync.store.resync import count_resync_requests
from flows.sync_users import sync_users
from tests.support.builders import hull_user

pytestmark = [
    pytest.mark.usefixtures("prefect_harness"),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

SETTINGS = dict(synchronized_segments=["VIP", "Trial"], synchronized_attributes=["plan"], enable_user_deletion=True)


def identified(cio_sim) -> list[str]:
    """Customer.io ids of the identify calls in the simulator's journal."""
    return sorted(
        e["path"].rsplit("/", 1)[-1]
        for e in cio_sim.journal()
        if e["method"] == "PUT" and e["path"].startswith("/api/v1/customers/")
    )


@pytest.fixture
def synced(sim_env, hull_sim, cio_sim):
    hull_sim.add_segment("s-vip", "VIP")
    hull_sim.add_segment("s-trial", "Trial")
    for n in range(6):
        hull_sim.upsert_user(hull_user(n, segments=["s-vip"] if n % 2 else ["s-trial"]))
    assert sync_users(**SETTINGS)["decisions"] == {"insert": 6}
    # A user outside the synchronized segments, indexed an hour later, carries the users cursor
    # past everyone else: from here on the walk re-reads only it (the overlap is 60 s).
    hull_sim.add_segment("s-other", "Other")
    hull_sim.advance(3600)
    hull_sim.upsert_user(hull_user(99, segments=["s-other"]))
    sync_users(**SETTINGS)
    hull_sim.advance(10)
    cio_sim.clear_journal()
    return sim_env


def test_resync_segment_sends_exactly_its_people_on_the_next_run(synced, hull_sim, cio_sim, capsys):
    assert main(["resync", "--segment", "VIP"]) == 0
    assert "3 people" in capsys.readouterr().out
    assert identified(cio_sim) == []  # nothing is sent by the command
    dry = sync_users(**SETTINGS, dry_run=True)
    assert "3 people wait for a resync: a dry run does not send them" in dry["warnings"]
    assert identified(cio_sim) == []

    summary = sync_users(**SETTINGS)
    assert identified(cio_sim) == ["u-1", "u-3", "u-5"]
    assert summary["resync"] == {"handled": 3}
    assert summary["decisions"].get("update") == 3  # sent by the resync pass, not found by the walk
    assert summary["calls"].get("delete", 0) == 0
    assert count_resync_requests(db.get_engine(synced["STATE_DATABASE_URL"])) == 0

    cio_sim.clear_journal()
    sync_users(**SETTINGS)  # the requests are done: nobody goes out again
    assert identified(cio_sim) == []


def test_resync_never_deletes_a_person_who_left_the_segments(synced, hull_sim, cio_sim):
    left = hull_user(1, segments=[])
    hull_sim.users[left["id"]]["segment_ids"] = []  # left VIP without being re-indexed
    assert main(["resync", "--user", left["id"], hull_user(2)["id"]]) == 0
    summary = sync_users(**SETTINGS)
    assert identified(cio_sim) == ["u-2"]
    assert "u-1" not in cio_sim.deleted and summary["calls"].get("delete", 0) == 0
    assert summary["resync"] == {"handled": 1, "left to the users stream: not in a synchronized segment": 1}


def test_resync_over_the_threshold_needs_yes(synced, cio_sim, monkeypatch, capsys):
    monkeypatch.setenv("MAX_RESYNC_WITHOUT_APPROVAL", "2")
    engine = db.get_engine(synced["STATE_DATABASE_URL"])
    assert main(["resync", "--all"]) == 3
    captured = capsys.readouterr()
    assert "6 people" in captured.out and "--yes" in captured.err
    assert count_resync_requests(engine) == 0
    assert main(["resync", "--all", "--yes"]) == 0
    assert count_resync_requests(engine) == 6
    sync_users(**SETTINGS)
    assert identified(cio_sim) == [f"u-{n}" for n in range(6)]


def test_resync_of_an_unknown_segment_is_an_error(synced, capsys):
    assert main(["resync", "--segment", "Nope"]) == 2
    assert "no Hull segment named 'Nope'" in capsys.readouterr().err
