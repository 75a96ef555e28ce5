"""Hull user documents for tests, in the shape Hull's search returns them."""


def hull_user(n: int, segments=("s-vip",), **extra) -> dict:
    return {
        "id": f"5bd329d5e2bcf3eeaf{n:06d}",
        "email": f"user{n}@example.com",
        "external_id": f"u-{n}",
        "name": f"User {n}",
        "created_at": "2020-01-01T00:00:00Z",
        "segment_ids": list(segments),
        "traits_plan": "gold",
        "traits_coconuts": n,
        **extra,
    }


def object_ids(count: int) -> list[str]:
    """Hull ids look like MongoDB ObjectIds: a shared prefix and a counter, the worst case
    for a weak hash."""
    return [f"5bd329d5e2bcf3ee{n:08x}" for n in range(count)]
