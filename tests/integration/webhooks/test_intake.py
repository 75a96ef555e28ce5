"""The intake over real HTTP: uvicorn on a loopback port, requests as the client."""

import asyncio
import hashlib
import json
import logging
import time

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select
from starlette.requests import Request

from cio_sync.store.db import get_engine, webhook_inbox
from cio_sync.webhooks import app as intake_app
from cio_sync.webhooks.app import MAX_BODY_BYTES, SigningKeyRequiredError, app_from_environment, create_app, serve
from cio_sync.webhooks.inbox import ENCODED_PREFIX, decode_payload
from tests.support.webhooks import SIGNING_KEY, legacy_payload, load_fixture, running_server, signed_headers

WEBHOOK_PATH = "/webhooks/customerio"


def stored_rows(engine) -> list[dict]:
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(select(webhook_inbox).order_by(webhook_inbox.c.id)).mappings()]


@pytest.fixture
def intake(database_url):
    """A signed intake on a real port; yields (base URL, engine)."""
    app = create_app(database_url, SecretStr(SIGNING_KEY), tolerance=300, insecure_no_signature=False)
    with running_server(app) as url:
        yield url, get_engine(database_url)


@pytest.fixture
def sqlite_intake(sqlite_url):
    """The same on SQLite only, for checks made before the database is touched."""
    app = create_app(sqlite_url, SecretStr(SIGNING_KEY), tolerance=300, insecure_no_signature=False)
    with running_server(app) as url:
        yield url, get_engine(sqlite_url)


def post(url: str, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(url + WEBHOOK_PATH, data=body, headers=headers or {}, timeout=10)


def test_signed_webhook_is_stored_raw_before_the_200(intake):
    url, engine = intake
    # The bytes as Customer.io sent them (key order, spacing), not a re-serialisation.
    body = json.dumps(load_fixture("reporting-email-opened.json"), indent=1).encode()
    response = post(url, body, signed_headers(body))
    assert (response.status_code, response.json()) == (200, {"status": "stored"})
    (row,) = stored_rows(engine)
    assert row["event_id"] == "01E4C8BES586H0A5PFK1ARB9JW"
    assert row["payload"] == body.decode()
    assert (row["status"], row["attempts"]) == ("pending", 0)


def test_repeated_event_id_is_stored_once_and_answered_200_both_times(intake):
    url, engine = intake
    body = json.dumps(load_fixture("legacy-email-opened.json")).encode()
    first = post(url, body, signed_headers(body))
    second = post(url, body, signed_headers(body))
    assert (first.status_code, first.json()) == (200, {"status": "stored"})
    assert (second.status_code, second.json()) == (200, {"status": "duplicate"})
    assert len(stored_rows(engine)) == 1


def body_key(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()[:56]


# A marker in every part of the rejected requests below: no answer may contain it.
ECHO = "echo-marker-3f9a"


@pytest.mark.parametrize(
    "make_headers, reason",
    [
        (lambda body: signed_headers(body, key="someone-elses-key"), "does not match"),
        (lambda body: signed_headers(body + b" "), "does not match"),
        (lambda body: signed_headers(body, timestamp=int(time.time()) - 301), "from the server clock"),
        (lambda body: signed_headers(body, timestamp=int(time.time()) + 301), "from the server clock"),
        (lambda body: {"Content-Type": "application/json"}, "missing"),
        (lambda body: {**signed_headers(body), "X-CIO-Signature": ""}, "missing"),
        (lambda body: {**signed_headers(body), "X-CIO-Timestamp": "9" * 5000}, "not a unix timestamp"),
        (lambda body: {**signed_headers(body), "X-CIO-Timestamp": ECHO}, "not a unix timestamp"),
        (lambda body: {**signed_headers(body), "X-CIO-Timestamp": "1" * 40}, "not a unix timestamp"),
        (lambda body: {**signed_headers(body), "X-CIO-Signature": ECHO + "z" * 48}, "not a hex HMAC-SHA256"),
        (lambda body: {**signed_headers(body), "X-CIO-Signature": "é" * 64}, "not a hex HMAC-SHA256"),
        (
            lambda body: {**signed_headers(body), "X-CIO-Signature": signed_headers(body)["X-CIO-Signature"][:40]},
            "not a hex HMAC-SHA256",
        ),
        (lambda body: {**signed_headers(body), "X-CIO-Signature": "ab" * 3000}, "not a hex HMAC-SHA256"),
    ],
    ids=[
        "wrong-key",
        "tampered-body",
        "old-timestamp",
        "future-timestamp",
        "unsigned",
        "empty-signature",
        "5000-digit-timestamp",
        "text-timestamp",
        "40-digit-timestamp",
        "non-hex-signature",
        "non-ascii-signature",
        "short-signature",
        "huge-signature",
    ],
)
def test_unproven_request_is_401_never_500_and_nothing_is_stored(sqlite_intake, make_headers, reason):
    # Refused before the database is touched: one backend is enough (the 413 and
    # duplicate tests cover PostgreSQL's path through the same handler).
    url, engine = sqlite_intake
    body = json.dumps(legacy_payload("email_opened", subject=ECHO)).encode()
    response = post(url, body, make_headers(body))
    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert ECHO not in response.text and "jane@example.com" not in response.text
    assert stored_rows(engine) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id": "01E4C8", "object_type": "email", ',
        b'{"object_type": "email", "metric": "opened", "data": {}}',
        b'{"event_id": 12, "event_type": "email_opened"}',
        json.dumps({"event_id": "X" * 65, "event_type": "email_opened"}).encode(),
        b'{"event_id": "bad\\u0000id", "event_type": "email_opened"}',
        b"[1, 2]",
        b"",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "invalid-json",
        "no-event-id",
        "numeric-event-id",
        "long-event-id",
        "nul-in-event-id",
        "not-an-object",
        "empty",
        "nested-100k-deep",
    ],
)
def test_signed_body_of_any_shape_is_stored_under_a_digest_and_answered_200(intake, body):
    url, engine = intake
    response = post(url, body, signed_headers(body))
    assert (response.status_code, response.json()) == (200, {"status": "stored"})
    (row,) = stored_rows(engine)
    assert row["event_id"] == body_key(body)  # deterministic: a retry of it is stored once
    assert (row["payload"], row["status"]) == (body.decode(), "pending")
    again = post(url, body, signed_headers(body))
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert len(stored_rows(engine)) == 1


def test_signed_unknown_format_with_an_event_id_is_stored_under_that_id(intake):
    url, engine = intake
    body = b'{"event_id": "01E4C8BES586H0A5PFK1ARB9JW", "name": "Email Opened", "data": {}}'
    response = post(url, body, signed_headers(body))
    assert (response.status_code, response.json()) == (200, {"status": "stored"})
    assert [row["event_id"] for row in stored_rows(engine)] == ["01E4C8BES586H0A5PFK1ARB9JW"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id": "X", "event_type": "email_opened", "subject": "\xff\xfe"}',
        b"\x00\x01 binary \x00",
        b'{"event_id": "Y", "event_type": "email_opened", "subject": "a\x00b"}',
        ENCODED_PREFIX.encode() + b"looks encoded but is not",
    ],
    ids=["not-utf8", "binary-with-nul", "nul-in-json-text", "starts-like-an-encoded-payload"],
)
def test_signed_body_that_is_not_storable_text_is_stored_byte_for_byte(intake, body):
    # PostgreSQL text holds neither NUL nor invalid UTF-8: such bodies are stored encoded.
    url, engine = intake
    response = post(url, body, signed_headers(body))
    assert (response.status_code, response.json()) == (200, {"status": "stored"})
    (row,) = stored_rows(engine)
    assert row["payload"].startswith(ENCODED_PREFIX)
    assert decode_payload(row["payload"]) == body


def test_oversize_body_is_413(intake):
    url, engine = intake
    body = b'{"event_id": "X", "event_type": "email_opened", "pad": "' + ECHO.encode() * (MAX_BODY_BYTES // 10) + b'"}'
    response = post(url, body, signed_headers(body))
    assert response.status_code == 413
    assert ECHO not in response.text
    assert stored_rows(engine) == []


def test_body_at_the_limit_is_accepted(intake):
    url, engine = intake
    body = b" " * MAX_BODY_BYTES  # not JSON, and exactly at the limit: stored for the drain
    response = post(url, body, signed_headers(body))
    assert response.status_code == 200
    assert len(stored_rows(engine)) == 1


@pytest.mark.parametrize("declared", ["9" * 5000, "１２", str(MAX_BODY_BYTES + 1)])
def test_declared_length_is_read_without_trusting_it(declared):
    # uvicorn answers a malformed Content-Length itself; the check must not rely on that.
    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": WEBHOOK_PATH,
        "query_string": b"",
        "headers": [(b"content-length", declared.encode())],
    }
    request = Request(scope, receive)
    if declared.isascii():
        with pytest.raises(intake_app._BodyTooLarge):
            asyncio.run(intake_app._read_body(request, MAX_BODY_BYTES))
    else:
        assert asyncio.run(intake_app._read_body(request, MAX_BODY_BYTES)) == b"{}"


def test_oversize_chunked_body_without_content_length_is_413(intake):
    url, engine = intake
    chunk = b"x" * 65536

    def chunks():  # a generator makes requests use chunked transfer encoding
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            yield chunk

    response = requests.post(url + WEBHOOK_PATH, data=chunks(), headers=signed_headers(b""), timeout=10)
    assert response.status_code == 413
    assert stored_rows(engine) == []


def test_healthz_checks_the_database(intake):
    url, _ = intake
    response = requests.get(url + "/healthz", timeout=5)
    assert (response.status_code, response.json()) == (200, {"status": "ok", "database": "ok"})


def test_insecure_intake_accepts_unsigned_webhooks(sqlite_url):
    app = create_app(sqlite_url, None, insecure_no_signature=True)
    with running_server(app) as url:
        body = json.dumps(legacy_payload("email_sent")).encode()
        response = post(url, body, {"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"status": "stored"})
    assert len(stored_rows(get_engine(sqlite_url))) == 1


def test_nothing_secret_or_personal_is_logged(intake, caplog):
    url, _ = intake
    payload = legacy_payload("email_opened", email_address="Secret Person <secret.person@example.com>")
    body = json.dumps(payload).encode()
    with caplog.at_level(logging.DEBUG):
        post(url, body, signed_headers(body))
        post(url, body, signed_headers(body, key="wrong"))
        post(url, b"{broken secret.person@example.com", signed_headers(b"{broken secret.person@example.com"))
        post(url, body, {**signed_headers(body), "X-CIO-Timestamp": "secret.person"})
    assert caplog.records  # the rejections were logged...
    assert "secret.person" not in caplog.text  # ...without payload contents
    assert SIGNING_KEY not in caplog.text


# ----- starting from the environment ---------------------------------------------------


@pytest.fixture
def intake_env(monkeypatch, tmp_path, sqlite_url):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", raising=False)
    monkeypatch.setenv("STATE_DATABASE_URL", sqlite_url)
    return monkeypatch


def test_refuses_to_start_without_a_signing_key(intake_env):
    with pytest.raises(SigningKeyRequiredError) as raised:
        serve("127.0.0.1", 0, insecure_no_signature=False)
    message = str(raised.value)
    assert "CUSTOMERIO_WEBHOOK_SIGNING_KEY" in message and "--insecure-no-signature" in message


def test_unsigned_mode_must_be_asked_for_and_is_logged_as_a_warning(intake_env, caplog):
    with caplog.at_level(logging.WARNING, logger="cio_sync.webhooks.app"):
        app = app_from_environment(insecure_no_signature=True)
    assert any(r.levelno == logging.WARNING and "UNSIGNED" in r.getMessage() for r in caplog.records)
    with running_server(app) as url:
        body = json.dumps(legacy_payload("email_sent")).encode()
        assert post(url, body).status_code == 200


def test_signing_key_from_the_environment_is_enforced(intake_env):
    intake_env.setenv("CUSTOMERIO_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
    intake_env.setenv("WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS", "3600")
    app = app_from_environment(insecure_no_signature=False)
    body = json.dumps(legacy_payload("email_sent")).encode()
    with running_server(app) as url:
        assert post(url, body).status_code == 401
        # Within the configured hour, where the default 5 minutes would refuse it.
        assert post(url, body, signed_headers(body, timestamp=int(time.time()) - 1800)).status_code == 200
