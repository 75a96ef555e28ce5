"""Approval of a deletion plan from the Prefect UI: the run pauses with a form (approve or
reject, the count in its description) and goes on when someone answers.

Only a run started from a deployment pauses (someone can find it in the UI and resume it); a
run started by hand, from the CLI, fails instead and says which command approves the plan.
While paused the run keeps its lease (`keep_alive` is called in the background), so no other
sync run changes state under the plan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prefect.input import RunInput

from cio_sync.rules.guard import APPROVE_COMMAND, REMOVAL_WORDS, removal_words

LISTED = 20  # people named in the form's description; the artifact lists them all


class DeletionApproval(RunInput):
    """The Resume form: nothing is deleted unless `approve` is set."""

    approve: bool = False
    note: str = ""  # who approves and why, kept in the run's logs


def from_deployment() -> bool:
    from prefect.runtime import deployment

    return deployment.id is not None


def description(plan: dict, limit: int, rows: list[dict]) -> str:
    listed = "\n".join(
        f"- `{r['cio_id']}` (Hull {r['hull_id']}{', ' + r['email'] if r.get('email') else ''})"
        f"{': ' + REMOVAL_WORDS.get(r['action'], r['action']) if r.get('action') not in (None, 'delete') else ''}"
        for r in rows[:LISTED]
    )
    more = (
        f"\n- ... and {len(rows) - LISTED} more (the `deletion-plan` artifact lists everyone)"
        if len(rows) > LISTED
        else ""
    )
    verb, breakdown = removal_words(r.get("action") for r in rows)
    return (
        f"### Remove {plan['size']} people from Customer.io?\n\n"
        f"This run would have **{plan['size']}** people {verb}{breakdown}, more than "
        f"`max_deletions_per_run` ({limit}). Nobody has been {verb}. Deletion plan #{plan['id']}:\n\n"
        f"{listed}{more}\n\n"
        "Set **approve** to go ahead with exactly these people (someone back in a synchronized segment by "
        "then is kept); leave it off to keep them all. Outside the UI: "
        f"`{APPROVE_COMMAND}`."
    )


def ask_for_approval(
    text: str, timeout_seconds: int, poll_seconds: int, keep_alive: Callable[[], None] | None = None
) -> DeletionApproval | None:
    """Pauses this flow run until the form is submitted; None when nobody answered in time."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    stop = threading.Event()
    renewer = None
    if keep_alive is not None:

        def renew() -> None:
            while not stop.wait(30):
                keep_alive()

        renewer = threading.Thread(target=renew, name="lease-keep-alive", daemon=True)
        renewer.start()
    try:
        answer = pause_flow_run(
            wait_for_input=DeletionApproval.with_initial_data(description=text, approve=False),
            timeout=timeout_seconds,
            poll_interval=poll_seconds,
        )
    except FlowPauseTimeout:
        return None
    finally:
        stop.set()
        if renewer is not None:
            renewer.join(timeout=5)
    return answer
