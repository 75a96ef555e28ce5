"""The webhook intake: `POST /webhooks/customerio` and `GET /healthz`.

Its one job is to get each genuine payload durably into `webhook_inbox` and answer
quickly: Customer.io waits 4 seconds and, after a non-2xx, retries for up to 7 days and
holds back later webhooks until that one succeeds. So a request that is provably from
Customer.io is stored and answered 2xx whatever its content: invalid JSON, an unknown
format or a missing `event_id` is the drain's to mark `ignored` with the reason, never a
reason to refuse it here. Mapping and sending to Hull happen later, in the drain flow, so
a Hull outage never makes the intake fail.

Payloads are written by one thread, `webhooks.writer.InboxWriter`: every payload that arrived
while the previous transaction ran goes into the next one (group commit), and each request is
answered only once the transaction holding its row committed.

Order of checks: size (413) -> signature and timestamp (401) -> store (200). The
signature is checked on the raw bytes before anything parses them, and nothing is stored
for a rejected request. Malformed headers are a 401 like any other unproven request,
never a 500. The only non-2xx a signed request can get is a 503 when the state database
cannot store it (Customer.io's retry is then exactly what is wanted). Responses are fixed
texts that never echo the request; payload bodies and the signing key are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cio_sync.settings import (
    DEFAULT_WEBHOOK_TOLERANCE_SECONDS,
    CustomerIoCredentials,
    MissingSettingsError,
    StateSettings,
    WebhookSettings,
)
from cio_sync.store.db import get_engine
from cio_sync.webhooks.inbox import encode_payload
from cio_sync.webhooks.mapping import dedupe_key
from cio_sync.webhooks.signature import SignatureError, verify_signature
from cio_sync.webhooks.writer import InboxWriter

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/customerio"
MAX_BODY_BYTES = 1024 * 1024  # Customer.io payloads are a few KiB; legacy `variables` can grow


class SigningKeyRequiredError(MissingSettingsError):
    """The intake would accept anyone's requests: refuse unless explicitly allowed."""

    def __init__(self) -> None:
        super().__init__(["CUSTOMERIO_WEBHOOK_SIGNING_KEY"])
        self.args = (
            "CUSTOMERIO_WEBHOOK_SIGNING_KEY is not set, so anyone who knows the URL could write "
            "events into Hull. Set it to the webhook signing key shown in Customer.io's webhook "
            "settings, or start with --insecure-no-signature to accept unsigned requests "
            "(only behind another form of authentication).",
        )


class _BodyTooLarge(Exception):
    pass


def create_app(
    database_url: str,
    signing_key: SecretStr | None,
    tolerance: int = DEFAULT_WEBHOOK_TOLERANCE_SECONDS,
    insecure_no_signature: bool = False,
) -> FastAPI:
    """The intake app. With a `signing_key`, every request must be signed; without one,
    `insecure_no_signature` must be given explicitly."""
    key = signing_key.get_secret_value() if signing_key is not None else ""
    if not key and not insecure_no_signature:
        raise SigningKeyRequiredError()
    engine = get_engine(database_url)  # migrates the schema before the first request
    writer = InboxWriter(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(writer.close)  # after the last request: writes what is queued

    app = FastAPI(
        title="Customer.io webhook intake", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.inbox_writer = writer

    @app.post(WEBHOOK_PATH)
    async def receive_webhook(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except _BodyTooLarge:
            return _error(413, f"body is larger than {MAX_BODY_BYTES} bytes")

        if key:
            try:
                verify_signature(
                    key,
                    request.headers.get("x-cio-timestamp"),
                    request.headers.get("x-cio-signature"),
                    body,
                    tolerance_seconds=tolerance,
                )
            except SignatureError as exc:
                logger.warning("Rejected a webhook from %s: %s", _client(request), exc)
                return _error(401, str(exc))

        # Whatever the body holds: its event_id when it has a usable one, else a digest of it.
        event_id = dedupe_key(body)
        try:
            # Committed by the writer thread, together with the payloads that arrived meanwhile
            # (group commit); the future resolves once the transaction holding it committed.
            outcome = await writer.submit_async(event_id, encode_payload(body))
        except SQLAlchemyError as exc:
            # Only the exception type: SQLAlchemy messages embed the statement parameters,
            # which here is the payload. Customer.io retries on any non-2xx.
            logger.error("Could not store webhook %s: %s", event_id, type(exc).__name__)
            return _error(503, "the webhook could not be stored; retry later")
        logger.debug("Webhook %s %s", event_id, outcome)
        return JSONResponse({"status": outcome})

    @app.get("/healthz")
    def healthz() -> JSONResponse:  # a sync def: FastAPI runs it in its threadpool
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            logger.error("Health check: state database unavailable: %s", type(exc).__name__)
            return JSONResponse({"status": "error", "database": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return app


def app_from_environment(insecure_no_signature: bool) -> FastAPI:
    """The intake configured from environment variables (and `.env`)."""
    signing_key = CustomerIoCredentials().webhook_signing_key
    if signing_key is not None and not signing_key.get_secret_value():
        signing_key = None
    if signing_key is None:
        if not insecure_no_signature:
            raise SigningKeyRequiredError()
        logger.warning(
            "CUSTOMERIO_WEBHOOK_SIGNING_KEY is not set and --insecure-no-signature was given: "
            "accepting UNSIGNED webhooks. Anyone who can reach this URL can write events into Hull."
        )
    elif insecure_no_signature:
        logger.info("A signing key is set: --insecure-no-signature is ignored and signatures are verified.")
    return create_app(
        StateSettings().state_database_url,
        signing_key,
        WebhookSettings().webhook_timestamp_tolerance_seconds,
        insecure_no_signature,
    )


def serve(host: str, port: int, insecure_no_signature: bool) -> None:
    """Runs the intake until interrupted (`cio-sync webhook-server`)."""
    app = app_from_environment(insecure_no_signature)
    logger.info("Webhook intake listening on http://%s:%s%s", host, port, WEBHOOK_PATH)
    uvicorn.run(app, host=host, port=port, log_level="info")


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without reading it all: first by the
    declared Content-Length, then by counting, since a chunked body declares none."""
    declared = (request.headers.get("content-length") or "").strip()
    # Digits only, and their count before int(): a 5,000-digit header must not raise.
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise _BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown client"
