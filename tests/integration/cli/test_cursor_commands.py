"""`cio-sync cursor show|set`: no Prefect server, the state database only."""

import pytest

from cio_sync.cli.main import main
from cio_sync.store import db
from cio_sync.store.cursors import Cursor, read_cursor, write_cursor

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def engine(sim_env):
    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    with engine.begin() as connection:
        write_cursor(connection, "users", Cursor("2026-11-26T10:00:00Z", {"a"}))
        write_cursor(connection, "events:shard:0/2", Cursor("2026-11-26T09:00:00Z"))
    return engine


def test_cursor_show_lists_every_stream(engine, capsys):
    assert main(["cursor", "show"]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "2026-11-26T10:00:00Z" in out
    assert "events:shard:0/2" in out and "2026-11-26T09:00:00Z" in out


def test_cursor_set_moves_the_cursor_with_yes(engine, capsys):
    assert main(["cursor", "set", "users", "2026-11-20T08:00:00+01:00", "--yes"]) == 0
    assert read_cursor(engine, "users") == Cursor("2026-11-20T07:00:00Z", set())
    assert "2026-11-26T10:00:00Z → 2026-11-20T07:00:00Z" in capsys.readouterr().out


def test_cursor_set_without_yes_and_without_a_terminal_changes_nothing(engine, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["cursor", "set", "users", "2026-11-20T08:00:00Z"]) == 1
    assert read_cursor(engine, "users").position == "2026-11-26T10:00:00Z"
    assert "--yes" in capsys.readouterr().err


def test_cursor_set_asks_on_a_terminal(engine, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["cursor", "set", "users", "2026-11-20T08:00:00Z"]) == 1
    assert read_cursor(engine, "users").position == "2026-11-26T10:00:00Z"
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert main(["cursor", "set", "users", "2026-11-20T08:00:00Z"]) == 0
    assert read_cursor(engine, "users").position == "2026-11-20T08:00:00Z"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cursor", "set", "nope", "2026-11-20T08:00:00Z", "--yes"], "no stream cursor named 'nope'"),
        (["cursor", "set", "users", "yesterday", "--yes"], "is not an ISO 8601 time"),
        (["cursor", "set", "users", "2026-11-20T08:00:00", "--yes"], "no time zone"),
    ],
)
def test_cursor_set_refuses_bad_input(engine, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert read_cursor(engine, "users").position == "2026-11-26T10:00:00Z"
