"""The `cio-sync` commands that need no Prefect server: check, missing settings, failed list."""

import pytest

from cio_sync.cli.main import main


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_check_passes_against_good_credentials(sim_env, hull_sim, cio_sim, capsys, monkeypatch):
    hull_sim.add_segment("s-vip", "VIP")
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["VIP"]')
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "Customer.io credentials accepted" in out and "Hull credentials accepted (1 segments)" in out


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_check_fails_on_bad_key_missing_segment_and_no_segments(sim_env, hull_sim, cio_sim, capsys, monkeypatch):
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "wrong-key-0000")
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", '["Nope"]')
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "Invalid Credentials: Verify Site ID and API Key" in out
    assert "Synchronized segment 'Nope' does not exist in Hull" in out
    assert "wrong-key-0000" not in out
    monkeypatch.setenv("SYNCHRONIZED_SEGMENTS", "[]")
    main(["check"])
    assert "No users will be synchronized" in capsys.readouterr().out


def test_missing_settings_are_named_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for key in (
        "HULL_ORGANIZATION",
        "HULL_API_URL",
        "HULL_CONNECTOR_ID",
        "HULL_CONNECTOR_SECRET",
        "CUSTOMERIO_SITE_ID",
        "CUSTOMERIO_API_KEY",
    ):
        monkeypatch.delenv(key, raising=False)
    assert main(["sync-users"]) == 2
    err = capsys.readouterr().err
    assert "HULL_CONNECTOR_SECRET" in err and "CUSTOMERIO_API_KEY" in err


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_failed_list_with_nothing_failed(sim_env, capsys):
    assert main(["failed", "list"]) == 0
    assert "no open failed batches" in capsys.readouterr().out


def test_sync_users_migrate_ids_reaches_the_flow(monkeypatch, tmp_path, capsys):
    import flows.sync_users

    monkeypatch.chdir(tmp_path)
    for key, value in {
        "HULL_ORGANIZATION": "acme.hullapp.io",
        "HULL_CONNECTOR_ID": "c",
        "HULL_CONNECTOR_SECRET": "s",
        "CUSTOMERIO_SITE_ID": "site",
        "CUSTOMERIO_API_KEY": "key",
    }.items():
        monkeypatch.setenv(key, value)
    received = []

    def refuse(**parameters):
        received.append(parameters)
        raise flows.sync_users.SyncFailed("user_id_mapping changed from 'external_id' to 'email'")

    monkeypatch.setattr(flows.sync_users, "sync_users", refuse)
    assert main(["sync-users"]) == 1
    assert "user_id_mapping changed" in capsys.readouterr().err
    assert main(["sync-users", "--migrate-ids"]) == 1
    assert [p["migrate_ids"] for p in received] == [False, True]


@pytest.mark.postgres
def test_lease_show_and_release(sim_env, capsys):
    from datetime import timedelta

    from cio_sync.store import db
    from cio_sync.store.lease import Holder, Lease

    engine = db.get_engine(sim_env["STATE_DATABASE_URL"])
    assert main(["lease", "show"]) == 0
    assert "no lease is held" in capsys.readouterr().out
    Lease(
        engine,
        "users:all",
        Holder("sync-users on worker-7 pid 12 flow run abc", host="worker-7 ns", pid=12),
        ttl=timedelta(minutes=1),
    ).acquire()
    assert main(["lease", "show"]) == 0
    out = capsys.readouterr().out
    assert "users:all" in out and "held" in out and "sync-users on worker-7 pid 12 flow run abc" in out
    assert main(["lease", "release", "users:all"]) == 0
    assert "released 'users:all', held by sync-users on worker-7" in capsys.readouterr().out
    assert main(["lease", "release", "users:all"]) == 1
    assert main(["lease", "show"]) == 0
    assert "no lease is held" in capsys.readouterr().out
