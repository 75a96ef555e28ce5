"""The one place that decides which HTTP failures are transient and which are fatal.

Every client in `connectors/` sends through `ApiClient.request`, which:
- takes a slot from the client's rate limiter (the in-process token bucket, or the
  Prefect global budget in front of it) before EVERY attempt, retries included, so a
  storm of 429s cannot push the real request rate past the limit;
- retries 429, 5xx (`TRANSIENT_STATUSES`), timeouts and dropped connections up to
  `RetryPolicy.total` times; before retry n it waits `backoff_factor * 2**(n-1)` plus a
  random jitter of up to `backoff_jitter`, at most `backoff_max`; a `Retry-After` header
  (seconds or an HTTP date) is honoured when longer, but never past `backoff_max`;
- raises `AuthError` on 401/403 (the run must stop: the credentials are wrong);
- raises `PermanentError` on other 4xx (this request will never succeed as it is);
- raises `TransientError` once the retry budget is spent.

Requests go out through `connectors/transport.py` (urllib3's pools, set up once per client;
it retries nothing, so every attempt passes through `request`, and so through the limiter).

Exception messages carry the method, the path and the service's own error text, never
headers, credentials or request bodies, and pass through the scrubber (cio_sync/redact.py)
in case a service echoes a credential. A request that cannot even be sent (a header value
that would be refused, a malformed URL, a redirect loop) raises `AuthError` naming only the
exception type: the offending header value may be the secret.

Redirects are followed, but a redirect to another host (or port, or scheme) never carries a
credential: the transport drops `Authorization` and the client's `credential_headers`
(`Hull-Access-Token`, ...) there.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from typing_extensions import Self

from cio_sync.redact import scrub
from connectors.ratelimit import LocalLimiter
from connectors.transport import ConnectionFailed, Response, Transport, Unsendable

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
JSON_HEADERS = {"Content-Type": "application/json"}


class ApiError(Exception):
    """Base of every error raised by a connector client."""

    def __init__(self, service: str, method: str, path: str, status: int | None, message: str):
        self.service = service
        self.method = method
        self.path = path
        self.status = status
        self.message = message = scrub(message)
        status_text = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{service} {method} {path}: {status_text}: {message}")


class AuthError(ApiError):
    """401/403: the credentials are wrong. Stops the run."""


class PermanentError(ApiError):
    """A 4xx other than auth: retrying the same request cannot help."""


class TransientError(ApiError):
    """429, 5xx, timeouts, connection errors that outlived the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    total: int = 5  # retries after the first attempt
    backoff_factor: float = 0.5  # waits 0.5, 1, 2, 4 ... seconds (plus jitter) before retries 1, 2, 3, 4 ...
    backoff_max: float = 30.0  # no wait is longer, whatever Retry-After asks
    backoff_jitter: float = 0.25  # up to this many seconds added at random to each backoff
    timeout: float = 10.0

    def backoff(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1 for the first retry)."""
        wait = float(self.backoff_factor) * 2.0 ** (retry_number - 1)
        if self.backoff_jitter > 0:
            wait += random.uniform(0, self.backoff_jitter)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return max(0.0, min(self.backoff_max, wait))


def retry_after_seconds(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now() if now is not None else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


def error_text(response: Response) -> str:
    """The service's own error message, trimmed; both services answer JSON errors."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:300]
    if isinstance(body, dict):
        meta = body.get("meta")
        if isinstance(meta, dict):
            if meta.get("error"):
                return str(meta["error"])[:300]
            if meta.get("errors"):
                return "; ".join(str(e) for e in meta["errors"])[:300]
        for key in ("message", "error", "errors"):
            if body.get(key):
                value = body[key]
                return (value if isinstance(value, str) else json.dumps(value))[:300]
    return json.dumps(body)[:300]


class ApiClient:
    service = "API"
    auth_hint = ""  # appended to AuthError messages: which settings to fix
    credential_headers: frozenset[str] = frozenset()  # session headers that hold credentials

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        retry: RetryPolicy | None = None,
        rate_limiter: LocalLimiter | None = None,
        pool_size: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """`headers` go with every request (the credentials among them)."""
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter
        self._sleep = sleep
        self.transport = Transport(
            headers or {},
            credential_headers=self.credential_headers,
            pool_size=pool_size,
            timeout=self.retry.timeout,
        )
        self.requests_sent = 0  # HTTP attempts, retries included

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Response:
        """Sends one request, retrying transient failures (every call here is idempotent:
        Customer.io ids and event ULIDs, Hull event ids dedupe a repeat). `data` is a body
        already serialised (sent as is, e.g. a size-checked v2 batch); `json_body` is written
        as requests wrote it (standard library, NaN refused)."""
        if json_body is not None:
            try:
                data = json.dumps(json_body, allow_nan=False).encode("utf-8")
            except ValueError:  # NaN or Infinity: no service can read it, no retry can mend it
                data = None
            if data is None:
                raise PermanentError(self.service, method, path, None, "the body is not JSON (NaN or Infinity)")
            headers = {**JSON_HEADERS, **headers} if headers else JSON_HEADERS
        retries = self.retry.total
        for attempt in range(retries + 1):
            if self.rate_limiter is not None:
                self.rate_limiter.acquire()
            self.requests_sent += 1
            unsendable: str | None = None
            try:
                response = self.transport.send(method, url or self.url(path), body=data, headers=headers)
            except ConnectionFailed as failed:
                if attempt < retries:
                    self._sleep(self.retry.backoff(attempt + 1))
                    continue
                suffix = f" after {retries} retries" if retries else ""
                raise TransientError(
                    self.service, method, path, None, f"connection failed ({failed.reason}){suffix}"
                ) from None
            except Unsendable as failed:
                # Never sent: a header value that would be refused (its value may be a secret), an
                # invalid URL, a redirect loop. Every later request would fail the same way.
                unsendable = failed.reason
            if unsendable is not None:  # raised outside the handler: no __context__ keeps the original
                hint = f" {self.auth_hint}" if self.auth_hint else ""
                raise AuthError(
                    self.service, method, path, None, f"the request could not be sent ({unsendable}).{hint}"
                )
            if response.status_code in TRANSIENT_STATUSES and attempt < retries:
                wait = self.retry.backoff(attempt + 1, retry_after_seconds(response.headers.get("Retry-After")))
                self._sleep(wait)
                continue
            return self._check(method, path, response)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _check(self, method: str, path: str, response: Response) -> Response:
        status = response.status_code
        if status < 400:
            return response
        message = error_text(response)
        if status in (401, 403):
            hint = f" {self.auth_hint}" if self.auth_hint else ""
            raise AuthError(self.service, method, path, status, f"{message}.{hint}".strip())
        if status in TRANSIENT_STATUSES:
            raise TransientError(self.service, method, path, status, f"{message} (after {self.retry.total} retries)")
        raise PermanentError(self.service, method, path, status, message)
