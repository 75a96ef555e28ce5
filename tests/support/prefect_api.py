"""Reading back what the Prefect server holds for a flow run, as the UI would show it."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

PAGE = 200


def artifacts_of(flow_run_id, key: str | None = None) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    if key is not None:
        flt.key = ArtifactFilterKey(any_=[key])
    found, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_artifacts(artifact_filter=flt, limit=PAGE, offset=offset)
            found += page
            if len(page) < PAGE:
                return found
            offset += PAGE


def table_of(artifact) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def everything_shown_for(flow_run_id, _depth: int = 0) -> str:
    """Name, parameters, states and their messages, logs, task runs and their states, artifacts,
    run inputs (pause forms), events and subflow runs of one flow run, as one text; plus the
    files of results Prefect stored for it (a Failed run keeps its exception there)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import LogSort
    from prefect.events.filters import EventAnyResourceFilter, EventFilter

    run_id = UUID(str(flow_run_id))
    out: list[str] = []
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        out.append(f"flow run {run.name} parameters={json.dumps(run.parameters, default=str)}")
        out.append(f"tags={run.tags} job_variables={json.dumps(run.job_variables, default=str)}")
        for state in client.read_flow_run_states(run_id):
            out.append(
                f"state {state.type.value} {state.name} message={state.message!r} "
                f"details={state.state_details.model_dump_json()}"
            )
            out.append(_stored_result(state))
        offset = 0
        while True:
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=PAGE,
                offset=offset,
                sort=LogSort.TIMESTAMP_ASC,
            )
            out += [f"log {log.level} {log.name} {log.message}" for log in logs]
            if len(logs) < PAGE:
                break
            offset += PAGE
        offset = 0
        while True:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=PAGE, offset=offset
            )
            for task_run in task_runs:
                out.append(f"task run {task_run.name} inputs={task_run.task_inputs}")
                for state in client.read_task_run_states(task_run.id):
                    out.append(f"task state {state.type.value} {state.name} message={state.message!r}")
                    out.append(_stored_result(state))
            if len(task_runs) < PAGE:
                break
            offset += PAGE
        for artifact in artifacts_of(run_id):
            out.append(f"artifact {artifact.key} {artifact.type} {artifact.description!r} {artifact.data!r}")
            out.append(_stored_result_data(artifact.data))
        for run_input in client.filter_flow_run_input(run_id, key_prefix="", limit=1000, exclude_keys=set()):
            out.append(f"run input {run_input.key} {run_input.value}")
        page = client.read_events(
            EventFilter(any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"])), limit=50
        )
        while True:
            out += [f"event {e.event} {dict(e.resource)} {json.dumps(e.payload, default=str)}" for e in page.events]
            if not page.next_page:
                break
            page = client.read_events_page(page.next_page)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
    for child in children:
        if child.id != run_id and _depth < 3:
            out.append(everything_shown_for(child.id, _depth + 1))
    return "\n".join(out)


def _stored_result(state) -> str:
    data = getattr(state, "data", None)
    return _stored_result_data(data.model_dump() if hasattr(data, "model_dump") else data)


def _stored_result_data(data) -> str:
    """The bytes of a result file a state or result artifact points at (a pickled exception
    for a Failed run), decoded loosely so a secret inside shows up as text."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return ""
    key = None
    if isinstance(data, dict):
        key = data.get("storage_key") or (data.get("metadata") or {}).get("storage_key")
    if not key or not Path(str(key)).is_file():
        return ""
    import base64

    raw = Path(str(key)).read_bytes()
    # A stored result is the base64 of the serialised value (cloudpickle, which keeps strings as
    # UTF-8), alone or in a JSON record: decode it so a secret inside shows as text.
    try:
        record = json.loads(raw)
        encoded = record.get("result", "").encode() if isinstance(record, dict) else b""
    except ValueError:
        encoded = b"".join(raw.split())
    try:
        decoded = base64.b64decode(encoded)
    except ValueError:
        decoded = b""
    raw = raw + b" " + decoded
    return "stored result: " + raw.decode("utf-8", "replace").replace("\n", " ")
