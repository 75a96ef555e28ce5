"""The decision table (pure, vectorised)."""

import pandas as pd
import pytest

from cio_sync.rules.decisions import PAGE_COLUMNS, REJECTED_COLUMN, STATE_COLUMNS, decide, mark_duplicate_ids


def row(hull_id, has_email=True, in_segments=True, has_id=True, id_valid=True, h="h1"):
    return (hull_id, has_email, in_segments, has_id, id_valid, h)


CASES = [
    # (page row, state row or None, deletion, expected action, reason)
    (row("a", has_email=False), None, False, "skip", "no_email"),
    (row("b", in_segments=False), ("b", True, False, "h1"), False, "skip", "not_in_segments"),
    (row("c", in_segments=False), ("c", True, False, "h1"), True, "delete", ""),
    (row("d", in_segments=False), None, True, "skip", "not_in_segments"),
    (row("e", in_segments=False), ("e", True, True, "h1"), True, "skip", "already_deleted"),
    (row("f", has_id=False), None, False, "skip", "no_id_value"),
    (row("g", id_valid=False), None, False, "skip", "invalid_id"),
    (row("h"), None, False, "insert", ""),
    (row("i"), ("i", True, True, "h1"), False, "insert", ""),  # deleted earlier, back in segments
    (row("j"), ("j", True, False, "h1"), False, "skip", "unchanged"),
    (row("k", h="h2"), ("k", True, False, "h1"), False, "update", ""),
    (row("l", has_email=False, in_segments=False), ("l", True, False, "h1"), True, "skip", "no_email"),
]


@pytest.mark.parametrize("page_row, state_row, deletion, action, reason", CASES)
def test_decision_table(page_row, state_row, deletion, action, reason):
    page = pd.DataFrame([page_row], columns=PAGE_COLUMNS)
    state = pd.DataFrame([state_row] if state_row else [], columns=STATE_COLUMNS)
    decided = decide(page, state, deletion)
    assert (decided.loc[0, "action"], decided.loc[0, "reason"]) == (action, reason)


@pytest.mark.parametrize(
    "state_row, rejected, action, reason",
    [
        (None, "h1", "skip", "rejected_unchanged"),  # never created: the insert was rejected
        (("m", True, False, "h0"), "h1", "skip", "rejected_unchanged"),  # the update was rejected
        (("m", True, False, "h0"), "h0-old", "update", ""),  # changed since the rejection: tried again
        (None, None, "insert", ""),
    ],
)
def test_attributes_customerio_rejected_are_not_sent_again_unchanged(state_row, rejected, action, reason):
    page = pd.DataFrame([row("m")], columns=PAGE_COLUMNS)
    state = pd.DataFrame(
        [(*(state_row or ("m", False, False, None)), rejected)], columns=[*STATE_COLUMNS, REJECTED_COLUMN]
    )
    decided = decide(page, state, False)
    assert (decided.loc[0, "action"], decided.loc[0, "reason"]) == (action, reason)


def test_whole_page_at_once_keeps_order():
    page = pd.DataFrame([c[0] for c in CASES if not c[2]], columns=PAGE_COLUMNS)
    states = [c[1] for c in CASES if not c[2] and c[1]]
    decided = decide(page, pd.DataFrame(states, columns=STATE_COLUMNS), False)
    assert list(decided["hull_id"]) == list(page["hull_id"])
    assert list(decided["action"]) == [c[3] for c in CASES if not c[2]]


def duplicates(rows, cio_ids, holders):
    """rows: (hull_id, action); returns the reasons after rule 11."""
    decided = pd.DataFrame([{"hull_id": h, "action": a, "reason": ""} for h, a in rows])
    marked = mark_duplicate_ids(decided, cio_ids, holders)
    return list(zip(marked["action"], marked["reason"]))


def test_second_user_of_a_page_with_the_same_id_is_skipped_duplicate_id():
    assert duplicates([("a", "insert"), ("b", "insert"), ("c", "insert")], ["u-1", "u-1", "u-2"], {}) == [
        ("insert", ""),
        ("skip", "duplicate_id"),
        ("insert", ""),
    ]


def test_the_user_holding_the_id_in_state_keeps_it():
    assert duplicates([("b", "insert")], ["u-1"], {"u-1": "a"}) == [("skip", "duplicate_id")]
    assert duplicates([("a", "update")], ["u-1"], {"u-1": "a"}) == [("update", "")]
    # the holder later on the same page still wins over an earlier newcomer
    assert duplicates([("b", "insert"), ("a", "update")], ["u-1", "u-1"], {"u-1": "a"}) == [
        ("skip", "duplicate_id"),
        ("update", ""),
    ]


def test_a_holder_moving_to_another_id_on_the_page_frees_its_old_one():
    assert duplicates([("a", "update"), ("b", "insert")], ["u-9", "u-1"], {"u-1": "a"}) == [
        ("update", ""),
        ("insert", ""),
    ]


def test_skips_and_deletes_claim_no_id():
    assert duplicates([("a", "skip"), ("b", "insert"), ("c", "delete")], ["u-1", "u-1", "u-1"], {}) == [
        ("skip", ""),
        ("insert", ""),
        ("delete", ""),
    ]
