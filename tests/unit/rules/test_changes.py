"""Which attributes changed, told from per-attribute digests."""

from cio_sync.rules.changes import DIGEST_CHARS, Change, attribute_changes, attribute_digests, value_digest


def test_digests_are_short_stable_and_tell_values_apart():
    assert len(value_digest("gold")) == DIGEST_CHARS
    assert value_digest({"a": 1, "b": 2}) == value_digest({"b": 2, "a": 1})
    assert value_digest("1") != value_digest(1) and value_digest("gold") != value_digest("silver")


def test_only_differing_new_and_removed_attributes_are_changes():
    before = attribute_digests({"plan": "gold", "n": 1, "bio": "x"})
    now = attribute_digests({"plan": "silver", "n": 1, "city": "Paris"})
    changes = attribute_changes(before, now, removed=["bio"])
    assert [c.name for c in changes] == ["bio", "city", "plan"]
    bio, city, plan = changes
    assert bio == Change("bio", before["bio"], None)  # removed
    assert city == Change("city", None, now["city"])  # new
    assert plan.old == before["plan"] and plan.new == now["plan"] and plan.known


def test_without_stored_digests_every_attribute_is_a_change_of_unknown_origin():
    changes = attribute_changes(None, attribute_digests({"plan": "gold"}), removed=["bio"])
    assert [(c.name, c.known) for c in changes] == [("bio", False), ("plan", False)]


def test_no_change():
    digests = attribute_digests({"plan": "gold"})
    assert attribute_changes(dict(digests), digests) == []
