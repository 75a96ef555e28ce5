"""The deletion guard's rules (pure): the limit, when a run must refuse, plan digests."""

from cio_sync.rules.guard import APPROVE_COMMAND, deletion_limit, over_limit_message, plan_digest, segments_problem
from cio_sync.settings import ConnectorSettings

HULL = {"s-vip": "VIP", "s-trial": "Trial"}


def test_limit_is_the_larger_of_100_and_5_percent_unless_set():
    assert deletion_limit(None, 0) == 100
    assert deletion_limit(None, 1_000) == 100
    assert deletion_limit(None, 10_000) == 500
    assert deletion_limit(None, 123_456) == 6_172
    assert deletion_limit(7, 1_000_000) == 7
    assert deletion_limit(0, 10) == 0


def test_unknown_segment_with_deletion_on_refuses_and_lists_hull_segments():
    settings = ConnectorSettings(synchronized_segments=["VIP renamed", "Trial"], enable_user_deletion=True)
    message = segments_problem(settings, ["VIP renamed"], HULL)
    assert message is not None
    assert "'VIP renamed'" in message and "'Trial' (s-trial)" in message and "'VIP' (s-vip)" in message
    assert segments_problem(settings, [], HULL) is None


def test_unknown_segment_with_deletion_off_is_not_refused():
    settings = ConnectorSettings(synchronized_segments=["VIP renamed"], enable_user_deletion=False)
    assert segments_problem(settings, ["VIP renamed"], HULL) is None


def test_unknown_or_no_segment_refuses_every_exit_action_that_acts_on_people():
    for action in ("delete", "suppress", "unset_segments"):
        settings = ConnectorSettings(synchronized_segments=["VIP renamed"], on_segment_exit=action)
        message = segments_problem(settings, ["VIP renamed"], HULL)
        assert message is not None and "'VIP renamed'" in message
        assert "synchronized_segments is empty" in (
            segments_problem(ConnectorSettings(on_segment_exit=action), [], HULL) or ""
        )
    keep = ConnectorSettings(synchronized_segments=["VIP renamed"], on_segment_exit="keep")
    assert segments_problem(keep, ["VIP renamed"], HULL) is None


def test_no_segment_with_deletion_on_refuses():
    message = segments_problem(ConnectorSettings(enable_user_deletion=True), [], HULL)
    assert message is not None and "synchronized_segments is empty" in message
    assert segments_problem(ConnectorSettings(), [], HULL) is None


def test_over_limit_message_names_what_the_people_would_undergo():
    only_deletes = over_limit_message(3, 2, 7, from_deployment=False, actions=["delete", None, "delete"])
    assert "3 people would be deleted from Customer.io, more than" in only_deletes
    mixed = over_limit_message(3, 2, 7, from_deployment=False, actions=["suppress", "delete", "delete_old"])
    assert (
        "3 people would be removed from Customer.io (1 deleted, 1 deleted under an old id after an id change, " in mixed
    )
    assert "1 deleted and suppressed)" in mixed and "nobody was removed" in mixed


def test_plan_digest_depends_on_the_people_not_their_order():
    a = plan_digest([("h1", "u-1"), ("h2", "u-2")])
    assert a == plan_digest([("h2", "u-2"), ("h1", "u-1")])
    assert a != plan_digest([("h1", "u-1"), ("h2", "u-3")])


def test_over_limit_message_says_the_count_and_how_to_approve():
    cli = over_limit_message(200, 100, 7, from_deployment=False)
    assert "200 people" in cli and "(100)" in cli and APPROVE_COMMAND in cli and "#7" in cli
    assert "Prefect UI" in over_limit_message(200, 100, 7, from_deployment=True)
