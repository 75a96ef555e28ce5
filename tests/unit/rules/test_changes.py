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


def test_the_scalar_fast_path_digests_exactly_what_the_standard_encoder_would():
    """Digests already in state were taken of `json.dumps(..., ensure_ascii=False)`: the faster
    encoding of strings and numbers must give the very same bytes, or every stored digest
    would read as changed."""
    from cio_sync.rules.changes import _scalar_json, canonical_json

    texts = ["", "gold", 'quote " and \\ backslash', "naïve café", "😀 emoji", "\u2028\u2029\ufeff"]
    texts += [f"x{chr(cp)}y" for cp in range(0x800) if not 0xD800 <= cp < 0xE000]
    numbers = [0, -1, 2**63 - 1, 2**63, -(2**80), 1.5, -0.0, 1e16, 1e-7, 123456789.123, 5e-324, 1.7976931348623157e308]
    for value in [*texts, *numbers, True, False, None]:
        assert _scalar_json(value) == canonical_json(value), repr(value)
    # Everything else takes the standard encoder itself.
    for other in [float("nan"), float("inf"), [1, "a"], {"b": 1, "a": 2}, "lone \ud800 surrogate"]:
        assert _scalar_json(other) is None
    assert value_digest([1, "a"]) == value_digest([1, "a"]) and value_digest(1) != value_digest(1.0)
