"""Looking failed events up by id finds both forms Hull stores: `event_id` and raw `_id`."""

from __future__ import annotations

from connectors.hull import HullClient, normalize_event


class IndexOnlyMatchingTheFieldAsked(HullClient):
    """A Hull client whose search runs against an in-memory index that, like Elasticsearch,
    matches a `terms` clause on the field it names only (no HTTP)."""

    def __init__(self, documents):
        super().__init__("http://hull.invalid/api/v1", "http://hull.invalid/firehose", "org", "id", "secret")
        self.documents = documents
        self.queries: list[tuple[str, list[str]]] = []

    def search_events(self, filters, page, per_page=100, must_not=None):
        ((field, values),) = filters[0]["terms"].items()
        self.queries.append((field, list(values)))
        hits = [d for d in self.documents if d.get(field) in values]
        return {"data": [normalize_event(d) for d in hits[:per_page]]}


def test_raw_form_events_are_found_by_their_underscore_id():
    client = IndexOnlyMatchingTheFieldAsked(
        [
            {"event_id": "e-1", "event": "Signed Up", "user_id": "h-1", "created_at": "2026-11-26T09:00:00Z"},
            {
                "_id": "raw-2",
                "event": "page",
                "user_id": "h-1",
                "created_at": "2026-11-26T09:00:01Z",
                "props": [{"field_name": "url", "text_value": "https://example.com/"}],
            },
        ]
    )
    events = client.events_by_ids(["raw-2", "e-1", "ghost"])
    assert [e["event_id"] for e in events] == ["raw-2", "e-1"]  # in the order asked; the unknown id absent
    assert events[0]["properties"] == {"url": "https://example.com/"}
    assert client.queries == [("event_id", ["raw-2", "e-1", "ghost"]), ("_id", ["raw-2", "ghost"])]


def test_one_query_when_every_id_is_found_by_event_id():
    client = IndexOnlyMatchingTheFieldAsked([{"event_id": "e-1", "event": "x", "user_id": "h", "created_at": "t"}])
    assert [e["event_id"] for e in client.events_by_ids(["e-1", "e-1"])] == ["e-1"]
    assert client.queries == [("event_id", ["e-1"])]
