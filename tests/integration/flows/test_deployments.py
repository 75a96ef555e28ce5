"""prefect.yaml, `cio-sync serve`, the check-connection flow and the Secret block fallback."""

from __future__ import annotations

import inspect
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SECRET_LIKE = re.compile(r"secret|api_key|password|token|signing_key", re.I)


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def deployments(config: dict) -> dict[str, dict]:
    return {d["name"]: d for d in config["deployments"]}


def load_flow(entrypoint: str):
    import importlib

    path, function = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, function)


def test_every_deployment_of_the_issue_is_declared_with_its_schedule(prefect_yaml):
    declared = deployments(prefect_yaml)
    intervals = {name: [s["interval"] for s in d.get("schedules") or []] for name, d in declared.items()}
    assert intervals == {
        "sync-users": [300],
        "drain-webhooks": [60],
        "check-connection": [1800],
        "rerun-failed-batches": [],
        "backfill-events": [],
        "sync-users-sharded": [],
        "sync-users-shard": [],
    }
    assert declared["sync-users"]["concurrency_limit"] == 1
    assert declared["sync-users-sharded"]["concurrency_limit"] == 1
    # The shards of one run must be able to run side by side.
    assert "concurrency_limit" not in declared["sync-users-shard"]
    assert declared["sync-users-sharded"]["parameters"]["deployment_name"] == "sync-users/sync-users-shard"
    assert {d["work_pool"]["name"] for d in declared.values()} == {"cio-sync"}


def test_the_code_is_found_where_prefect_deploy_ran(prefect_yaml):
    (build,) = prefect_yaml["build"]
    (pull,) = prefect_yaml["pull"]
    step = build["prefect.deployments.steps.run_shell_script"]
    assert step["script"] == "pwd"
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == f"{{{{ {step['id']}.stdout }}}}"


def test_entrypoints_and_parameters_match_the_flows(prefect_yaml):
    """A misspelt parameter would only fail when a run starts; catch it here."""
    for name, deployment in deployments(prefect_yaml).items():
        assert (REPO / deployment["entrypoint"].split(":")[0]).is_file(), name
        flow = load_flow(deployment["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters") or {}) <= accepted, name
    assert load_flow(deployments(prefect_yaml)["sync-users"]["entrypoint"]).name == "sync-users"
    assert deployments(prefect_yaml)["sync-users"]["parameters"]["global_rate_limit"] is True


def test_no_parameter_carries_a_secret(prefect_yaml):
    for deployment in prefect_yaml["deployments"]:
        for key in deployment.get("parameters") or {}:
            assert not SECRET_LIKE.search(key), (deployment["name"], key)
    text = (REPO / "prefect.yaml").read_text()
    assert "CONNECTOR_SECRET:" not in text and "API_KEY:" not in text


def test_serve_runs_the_same_deployments_on_the_same_schedules(prefect_yaml):
    from cio_sync.cli.serve import build_deployments

    served = {d.name: d for d in build_deployments()}
    assert set(served) == {
        "sync-users",
        "drain-webhooks",
        "check-connection",
        "rerun-failed-batches",
        "backfill-events",
    }
    for name, deployment in served.items():
        declared = deployments(prefect_yaml)[name]
        expected = [timedelta(seconds=s["interval"]) for s in declared.get("schedules") or []]
        assert [s.schedule.interval for s in deployment.schedules] == expected, name
        assert deployment.entrypoint.replace("\\", "/").endswith(declared["entrypoint"]), name
    assert served["sync-users"].concurrency_limit == 1


def test_serve_and_setup_refuse_to_run_without_a_prefect_server(monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cio_sync.cli.main import main

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["serve"]) == 2
        assert main(["setup"]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


# -- the check-connection flow -----------------------------------------------------------------


def flow_run_artifacts(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return [a for a in artifacts if a.key]  # keyless ones are Prefect's own (e.g. a failure's result)


@pytest.mark.usefixtures("prefect_harness")
def test_check_connection_publishes_its_findings(sim_env, hull_sim, cio_sim):
    from flows.check_connection import check_connection

    hull_sim.add_segment("seg-vip", "VIP")
    state = check_connection(synchronized_segments=["VIP", "Gone"], return_state=True)

    assert state.is_completed()
    levels = [f["level"] for f in state.result()]
    assert levels.count("ok") == 2 and levels.count("warning") == 1
    (artifact,) = flow_run_artifacts(state)
    assert artifact.key == "check-connection" and artifact.type == "markdown"
    assert "✅ Customer.io credentials accepted" in artifact.data
    assert "⚠️ Synchronized segment 'Gone' does not exist in Hull." in artifact.data


@pytest.mark.usefixtures("prefect_harness")
def test_check_connection_fails_the_run_on_an_error(sim_env, hull_sim, cio_sim, monkeypatch):
    from flows.check_connection import ConnectionCheckFailed, check_connection

    monkeypatch.setenv("CUSTOMERIO_API_KEY", "wrong-key")
    state = check_connection(synchronized_segments=["VIP"], return_state=True)

    assert state.is_failed()
    with pytest.raises(ConnectionCheckFailed, match="Invalid Credentials"):
        state.result()
    (artifact,) = flow_run_artifacts(state)
    assert "❌ Invalid Credentials" in artifact.data  # the artifact still says why


# -- Secret blocks -----------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_secret_blocks_fill_only_missing_credentials():
    from prefect.blocks.system import Secret

    from cio_sync.secrets import load_secret_blocks

    Secret(value="hull-secret-from-block").save("hull-connector-secret", overwrite=True)
    try:
        environ: dict[str, str] = {}
        assert load_secret_blocks(environ) == ["HULL_CONNECTOR_SECRET"]  # no customerio-api-key block
        assert environ == {"HULL_CONNECTOR_SECRET": "hull-secret-from-block"}

        environ = {}
        # Only the blocks asked for: the hull-connector-secret block exists but is not read.
        assert load_secret_blocks(environ, names=["CUSTOMERIO_API_KEY"]) == []
        assert environ == {}

        environ = {"HULL_CONNECTOR_SECRET": "from-env", "CUSTOMERIO_API_KEY": "from-env"}
        assert load_secret_blocks(environ) == []
        assert environ["HULL_CONNECTOR_SECRET"] == "from-env"  # the environment wins
    finally:
        Secret.delete("hull-connector-secret")
