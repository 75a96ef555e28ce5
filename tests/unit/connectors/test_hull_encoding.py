"""The Hull client's cheaper encodings give what the standard tools give.

Firehose tokens are signed with `hmac` over a precomputed header instead of PyJWT, and Hull's
JSON is parsed and written with orjson: PyJWT must decode every token to the same claims (and,
for ASCII claims, PyJWT itself must make the very same token), and every body must parse to
what the standard library parses.
"""

from __future__ import annotations

import json

import jwt
import pytest

from connectors.hull import HullClient, TokenSigner, dumps, loads, token_claims, user_token
from simulators.hull import HullSimulator
from simulators.seed import seed_synthetic

SECRET = "hull-test-connector-secret-0123456789abcdef"
CONNECTOR_ID = "5bd329d5e2bcf3eeaf000001"

CLAIMS = [
    {"external_id": "u-123"},
    {"id": "5bd329d5e2bcf3eeaf000099"},
    {"external_id": "u-1", "email": "darth@example.com"},
    {"email": "zoë.søren@exämple.com"},  # non-ASCII
    {"external_id": 'quote " backslash \\ slash / tab \t newline \n control \x01'},
    {"anonymous_id": "web:16", "external_id": "日本語"},
    {"external_id": 2**70},  # beyond 64 bits: orjson refuses it, the fallback writes it
]


def decoded(token: str, secret: str = SECRET) -> dict:
    return jwt.decode(token, secret, algorithms=["HS256"], options={"verify_iat": False})


@pytest.mark.parametrize("claims", CLAIMS)
@pytest.mark.parametrize(("hull_id", "create"), [(None, True), ("5bd329d5e2bcf3eeaf000099", False)])
def test_pyjwt_decodes_every_token_to_its_claims(claims, hull_id, create):
    payload = token_claims(CONNECTOR_ID, claims, hull_id, create)
    token = TokenSigner(SECRET).sign(payload)

    assert decoded(token) == payload
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert ("sub" in payload) == (hull_id is not None) and ("io.hull.create" in payload) == (not create)


@pytest.mark.parametrize("claims", [c for c in CLAIMS if all(isinstance(v, str) and v.isascii() for v in c.values())])
def test_ascii_claims_give_the_very_token_pyjwt_makes(claims):
    payload = token_claims(CONNECTOR_ID, claims, "5bd329d5e2bcf3eeaf000099", create=False)
    assert TokenSigner(SECRET).sign(payload) == jwt.encode(payload, SECRET, algorithm="HS256")


def test_a_token_does_not_verify_with_another_secret():
    token = TokenSigner(SECRET).sign(token_claims(CONNECTOR_ID, {"external_id": "u-1"}))
    with pytest.raises(jwt.InvalidSignatureError):
        decoded(token, SECRET + "x")


def test_client_tokens_and_user_token_carry_the_same_claims():
    client = HullClient(
        "http://127.0.0.1:9/api/v1", "http://127.0.0.1:9/firehose", "acme.hullapp.io", CONNECTOR_ID, SECRET
    )
    try:
        from_client = decoded(client.token({"external_id": "u-1"}, "5bd329d5e2bcf3eeaf000099", create=False))
    finally:
        client.close()
    from_function = decoded(
        user_token(CONNECTOR_ID, SECRET, {"external_id": "u-1"}, "5bd329d5e2bcf3eeaf000099", create=False)
    )
    assert abs(from_client.pop("iat") - from_function.pop("iat")) <= 1
    assert (
        from_client
        == from_function
        == {
            "iss": CONNECTOR_ID,
            "io.hull.asUser": {"external_id": "u-1"},
            "io.hull.subjectType": "user",
            "sub": "5bd329d5e2bcf3eeaf000099",
            "io.hull.create": False,
        }
    )


# ----- JSON ------------------------------------------------------------------------------------


def seeded_page() -> bytes:
    """A realistic search answer: 300 synthetic user reports with events, as Hull's JSON."""
    hull = HullSimulator(connector_id=CONNECTOR_ID, connector_secret=SECRET)  # never started: no HTTP
    seed_synthetic(hull, 300)
    users = [hull.users[i] for i in sorted(hull.users)]
    return json.dumps(
        {"data": users, "events": hull.events, "pagination": {"page": 1, "total": 300}}, default=str
    ).encode("utf-8")


EDGE_BODIES = [
    b'{"big": 123456789012345678901234567890, "neg": -98765432109876543210}',  # beyond 64 bits
    b'{"u64": 18446744073709551615, "n": [12345678901234567890], "below": -9223372036854775809}',
    b'{"i64": -922337203685477580, "max": 922337203685477580, "e": 123456789012345678e3}',  # 18 digits: orjson
    b'{"nan": NaN, "inf": Infinity, "minf": -Infinity}',  # the standard library accepts these
    b'{"dup": 1, "dup": 2}',
    b'{"floats": [0.1, 1e-7, 1.7976931348623157e308, 5e-324, -0.0, 1E+2, 3.141592653589793]}',
    '{"text": "zoë 日本語 \\u00e9 \\n \\" \\\\"}'.encode(),
    b"[]",
    b'  {"spaces" :  [ 1 , 2 ] }  ',
]


@pytest.mark.parametrize("body", [seeded_page(), *EDGE_BODIES])
def test_loads_parses_what_the_standard_library_parses(body):
    expected = json.loads(body)
    got = loads(body)
    # NaN != NaN: compare the canonical re-serialisations.
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_a_lone_surrogate_becomes_the_replacement_character_and_pairs_stay_whole():
    """No UTF-8 text can hold a lone UTF-16 surrogate: kept, it failed the user's hash (and the
    page with it) on every run."""
    body = b'{"lone": "a\\ud800b", "\\uDC00key": ["\\udbff"], "pair": "\\ud83d\\ude00", "n": NaN}'
    got = loads(body)
    assert got["lone"] == "a\ufffdb" and got["\ufffdkey"] == ["\ufffd"] and got["pair"] == "\U0001f600"
    assert json.dumps(got, ensure_ascii=False).encode("utf-8")  # encodable now


def test_loads_refuses_what_is_not_json():
    with pytest.raises(ValueError):
        loads(b"<html>not json</html>")


@pytest.mark.parametrize(
    "value",
    [
        json.loads(seeded_page()),
        {"external_id": 2**70, 1: "int key"},  # both refused by orjson: the standard library writes them
        {"text": "zoë 日本語", "n": None, "b": False, "f": 0.1},
    ],
)
def test_dumps_writes_json_that_parses_back_the_same(value):
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))
