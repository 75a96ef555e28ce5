"""Progress reporting, the prefetching page reader, and the Hull simulator's keyset fast path
(which keeps the benchmark's walk over a large workspace linear)."""

from __future__ import annotations

import io

import pytest

from cio_sync.pipeline import progress


@pytest.fixture
def artifact_calls(monkeypatch):
    """Records what would reach Prefect's artifact API."""
    import prefect.artifacts

    calls = []
    monkeypatch.setattr(
        prefect.artifacts,
        "create_progress_artifact",
        lambda progress, key=None, description=None: calls.append(("create", progress, key)) or "id-1",
    )
    monkeypatch.setattr(
        prefect.artifacts,
        "update_progress_artifact",
        lambda artifact_id, progress, description=None: calls.append(("update", progress, description)),
    )
    return calls


def test_progress_total_is_done_plus_what_hull_says_is_left(artifact_calls, monkeypatch):
    monkeypatch.setattr(progress.SyncProgress, "ARTIFACT_INTERVAL_SECONDS", 0)
    seen = []
    progress.add_listener(lambda done, total: seen.append((done, total)))
    try:
        tracker = progress.SyncProgress()
        tracker.page_done(500, 1200)  # 1,200 left when page 1 was read
        tracker.page_done(500, 800)  # Hull now says 800 left (100 users were re-indexed)
        tracker.page_done(300, None)  # Hull said nothing: the estimate stands
        tracker.finish()
    finally:
        progress._listeners.clear()
    assert seen == [(500, 1200), (1000, 1300), (1300, 1300), (1300, 1300)]
    assert artifact_calls[0] == ("create", 0.0, "sync-users-progress")
    updates = [(round(p, 1), d) for kind, p, d in artifact_calls[1:]]
    assert updates[0] == (41.7, "500 of 1,200 users done (42%)") and updates[-1][0] == 100.0


def test_artifact_updates_are_throttled_but_the_last_one_always_goes(artifact_calls):
    tracker = progress.SyncProgress()
    for _ in range(50):
        tracker.page_done(500, 100_000)
    tracker.finish()
    updates = [c for c in artifact_calls if c[0] == "update"]
    assert 2 <= len(updates) < 10 and updates[-1][1] == 100.0


def test_terminal_bar_redraws_one_line():
    out = io.StringIO()
    bar = progress.TerminalProgressBar(out)
    bar(250, 1000)
    bar(1000, 1000)
    bar.close()
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "25%  250 of 1,000 users" in text and "[" + "#" * 30 + "] 100%" in text


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_cli_draws_a_bar_only_on_a_terminal(monkeypatch, terminal):
    import flows.sync_users
    from cio_sync.cli import main as cli

    def fake_sync_users(**kwargs):
        for done in (500, 1000):
            for listener in list(progress._listeners):
                listener(done, 1000)
        return {"pages": 2}

    monkeypatch.setattr(flows.sync_users, "sync_users", fake_sync_users)
    for name in (
        "HULL_ORGANIZATION",
        "HULL_CONNECTOR_ID",
        "HULL_CONNECTOR_SECRET",
        "CUSTOMERIO_SITE_ID",
        "CUSTOMERIO_API_KEY",
    ):  # the CLI checks they are set first
        monkeypatch.setenv(name, "set-for-the-test")
    out = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert cli.main(["sync-users"]) == 0
    assert progress._listeners == []  # removed after the run
    if terminal:
        assert "1,000 of 1,000 users" in out.getvalue() and out.getvalue().endswith("\n")
    else:
        assert out.getvalue() == ""
