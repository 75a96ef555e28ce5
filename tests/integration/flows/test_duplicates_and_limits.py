"""Two Hull users never become one Customer.io person; limits Customer.io enforces are kept
before sending (hull_segments' value limit, reserved `_` names)."""

from __future__ import annotations

import pytest

from flows.sync_users import sync_users
from tests.support.builders import hull_user as user

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def hull(hull_sim):
    hull_sim.add_segment("s-vip", "VIP")
    return hull_sim


def puts(cio_sim, identifier):
    return [e for e in cio_sim.journal() if e["method"] == "PUT" and e["path"].endswith(f"/{identifier}")]


@pytest.mark.postgres
def test_one_mapped_id_shared_by_two_users_sends_one_person(sim_env, hull, cio_sim):
    hull.upsert_user(user(1, external_id="shared"))
    hull.upsert_user(user(2, external_id="shared", email="other@example.com"))
    hull.upsert_user(user(3))
    summary = sync_users(synchronized_segments=["VIP"])
    assert summary["decisions"] == {"insert": 2, "skip": 1}
    assert summary["skip_reasons"] == {"duplicate_id": 1}
    (listed,) = summary["duplicates"]
    assert "'shared'" in listed and user(2)["id"] in listed
    assert cio_sim.people["shared"]["email"] == "user1@example.com"  # the first one only
    assert {e["body"].get("email") for e in puts(cio_sim, "shared")} == {"user1@example.com"}

    # Against state: a later user taking an id a live person already holds is skipped too.
    hull.advance(10)
    hull.upsert_user(user(4, external_id="u-3"))
    # No users overlap: the first user of the id, re-read, would count its duplicate again.
    again = sync_users(synchronized_segments=["VIP"], users_overlap_seconds=0)
    assert again["skip_reasons"].get("duplicate_id") == 1 and again["decisions"].get("insert", 0) == 0
    assert cio_sim.people["u-3"]["email"] == "user3@example.com"


def test_an_id_claimed_by_the_page_before_is_a_duplicate_though_planned_ahead(sim_env, hull, cio_sim):
    """One user per page: page 2 is planned while page 1 is pushed, before page 1's insert of
    the shared id is recorded. Its plans are checked again and it is planned anew: the second
    user is a duplicate, as without planning ahead."""
    hull.upsert_user(user(1, external_id="shared"))
    hull.upsert_user(user(2, external_id="shared", email="other@example.com"))
    hull.upsert_user(user(3))
    summary = sync_users(synchronized_segments=["VIP"], users_per_batch=1)
    assert summary["pages"] == 3
    assert summary["decisions"] == {"insert": 2, "skip": 1}
    assert summary["skip_reasons"] == {"duplicate_id": 1}
    assert len({e["body"].get("email") for e in puts(cio_sim, "shared")}) == 1
    assert set(cio_sim.people) == {"shared", "u-3"}


def test_a_user_in_60_segments_still_syncs(sim_env, hull, cio_sim):
    segments = [f"s-{i:02d}" for i in range(60)]
    for i, segment in enumerate(segments):
        hull.add_segment(segment, f"Customers of sales region number {i:02d}")
    hull.upsert_user(user(1, segments=["s-vip", *segments]))
    summary = sync_users(synchronized_segments=["VIP"])
    assert summary["decisions"] == {"insert": 1} and summary["failed_users"] == {}
    person = cio_sim.people["u-1"]
    kept = person["hull_segments"]
    assert 0 < len(kept) < 61 and kept == sorted(kept)
    assert summary["segments_left_out"] == {"users": 1, "segments": 61 - len(kept)}


def test_reserved_underscore_names_are_dropped_and_counted(sim_env, hull, cio_sim):
    hull.upsert_user(user(1, traits__score=5))
    summary = sync_users(synchronized_segments=["VIP"], synchronized_attributes=["_score", "plan"])
    assert summary["decisions"] == {"insert": 1} and summary["failed_users"] == {}
    assert summary["dropped_attributes"] == {"_score": 1}
    assert cio_sim.people["u-1"]["plan"] == "gold" and "_score" not in cio_sim.people["u-1"]


def test_a_trait_with_a_lone_surrogate_syncs_with_the_replacement_character(sim_env, hull, cio_sim):
    """Hull's JSON may escape half a UTF-16 pair ("\\ud800"): no UTF-8 text can hold it. It
    becomes U+FFFD when read, so the user is synced and the run does not fail at its page."""
    hull.upsert_user(user(1, traits_plan="gold \ud800"))
    hull.upsert_user(user(2))
    summary = sync_users(synchronized_segments=["VIP"], synchronized_attributes=["plan"])
    assert summary["decisions"] == {"insert": 2} and summary["failed_users"] == {}
    assert cio_sim.people["u-1"]["plan"] == "gold \ufffd" and cio_sim.people["u-2"]["plan"] == "gold"


@pytest.mark.parametrize("api", ["v1", "v2_batch"])
def test_a_trait_that_is_not_a_json_number_is_dropped_and_the_rest_syncs(sim_env, hull, cio_sim, api):
    """Hull may send NaN or Infinity (its JSON is not strict); JSON for Customer.io cannot hold
    them. The attribute is left out and counted, the user and the run go on."""
    hull.upsert_user(user(1, traits_coconuts=float("nan")))
    hull.upsert_user(user(2, traits_coconuts=float("inf")))
    hull.upsert_user(user(3))
    summary = sync_users(
        synchronized_segments=["VIP"], synchronized_attributes=["plan", "coconuts"], customerio_api=api
    )
    assert summary["decisions"] == {"insert": 3} and summary["failed_users"] == {}
    assert summary["dropped_attributes"] == {"coconuts": 2}
    assert "coconuts" not in cio_sim.people["u-1"] and "coconuts" not in cio_sim.people["u-2"]
    assert cio_sim.people["u-1"]["plan"] == "gold" and cio_sim.people["u-3"]["coconuts"] == 3


def test_a_user_whose_segment_ids_are_not_strings_is_skipped_and_the_page_goes_on(sim_env, hull, cio_sim):
    """Sorting a segment list holding a number raised TypeError: the page (and every run after
    it) failed on that one user. Now it is skipped as malformed, with the reason."""
    hull.upsert_user(user(1, segments=("s-vip", 7)))
    hull.upsert_user(user(2))
    summary = sync_users(synchronized_segments=["VIP"])
    assert summary["decisions"] == {"insert": 1, "skip": 1} and summary["failed_users"] == {}
    assert summary["skip_reasons"] == {"malformed": 1}
    assert set(cio_sim.people) == {"u-2"}
