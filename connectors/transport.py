"""Sending one HTTP request: urllib3's connection pools, set up once per client.

Why urllib3 and not a `requests.Session` (which sends through urllib3 itself): per request,
`requests` merges the session's settings, hooks, cookies and auth into a new prepared request
and wraps the answer in a new `Response`; that was 0.35 ms of CPU per Customer.io call here,
against 0.20 ms for the same call through this transport (bench/RESULTS.md, round four). A v1
sync makes one such call per user, from sender threads that share one GIL: 10k users, the
flow's CPU went from 9.0 to 6.7 s.

What `requests` did per request is done here once per origin (scheme, host, port), with
`requests`' own functions, so a client behaves as it did:
- proxies from `HTTP(S)_PROXY`/`ALL_PROXY`, with `NO_PROXY` (`requests.utils.get_environ_proxies`
  and `select_proxy`), credentials in the proxy URL sent as `Proxy-Authorization`;
- the CA bundle: `REQUESTS_CA_BUNDLE`, else `CURL_CA_BUNDLE`, else certifi's (requests' default);
- `~/.netrc` credentials for a client that sends no `Authorization` of its own.
Redirects are followed (at most `MAX_REDIRECTS`); to another host (or port, or scheme) they
never carry `Authorization`, `Cookie` or the client's own credential headers (urllib3 strips
the headers named in `remove_headers_on_redirect`). Nothing is retried here: the retry loop
is `ApiClient.request`'s, where the rate limiter sees every attempt.

Failures come out as two exceptions, which `ApiClient.request` classifies:
- `ConnectionFailed`: nothing (or not all) came back; the request may be retried;
- `Unsendable`: the request cannot be sent as it is (a header value that would be refused or
  would inject a header, an invalid URL, a redirect loop); every retry would fail the same way.
Both name the type of the underlying error (or the environment setting to fix), never a value:
a refused header's value may be a secret.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import certifi
import urllib3
from requests.auth import _basic_auth_str
from requests.exceptions import InvalidHeader
from requests.utils import check_header_validity, get_auth_from_url, get_environ_proxies, get_netrc_auth, select_proxy
from urllib3.exceptions import HTTPError, LocationValueError, MaxRetryError, ResponseError
from urllib3.util import Retry, Timeout, make_headers

MAX_REDIRECTS = 10
DEFAULT_HEADERS = {
    "User-Agent": "hull-customerio-sync",
    "Accept": "*/*",
    **make_headers(accept_encoding=True),  # gzip, deflate (what requests asked for)
}


class SendFailed(Exception):
    """The request got no complete answer. `reason` names the cause's type, or the setting to
    fix (a CA bundle that cannot be read, a SOCKS proxy without PySocks); never a header value."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConnectionFailed(SendFailed):
    """Connection refused, reset or timed out, a TLS failure, a truncated answer: retriable."""


class Unsendable(SendFailed):
    """The request cannot be sent as it is (every attempt would fail the same way)."""


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    content: bytes
    reason: str

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def basic_auth(username: str, password: str) -> str:
    """An `Authorization` header value, as requests builds it (latin-1, then base64)."""
    return _basic_auth_str(username, password)


@dataclass(frozen=True)
class Environment:
    """What the process environment says for requests to one origin."""

    proxy: str | None  # the proxy URL, with its credentials if any
    ca_bundle: str  # a file or a directory of CA certificates
    netrc_auth: tuple[str, str] | None


def read_environment(url: str, *, has_auth: bool) -> Environment:
    """What `requests` would read from the environment for a request to `url`."""
    proxy = select_proxy(url, get_environ_proxies(url)) or None
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    netrc_auth = None if has_auth else get_netrc_auth(url)
    return Environment(proxy, bundle, tuple(netrc_auth) if netrc_auth else None)  # type: ignore[arg-type]


def verifying_context(ca_bundle: str) -> ssl.SSLContext:
    """A TLS context that verifies certificates and host names against `ca_bundle` only."""
    if os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    return ssl.create_default_context(cafile=ca_bundle)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].split('?', 1)[0].lower()}"


class Transport:
    """Sends requests with fixed default headers through per-origin urllib3 pool managers."""

    def __init__(
        self,
        headers: Mapping[str, str],
        *,
        credential_headers: frozenset[str] = frozenset(),
        pool_size: int = 16,
        timeout: float = 10.0,
    ):
        self.headers = {**DEFAULT_HEADERS, **headers}
        self.pool_size = pool_size
        self.timeout = Timeout(connect=timeout, read=timeout)
        # Retries off, redirects on; urllib3 drops these headers on a redirect to another origin.
        self.retries = Retry(
            total=None,
            connect=0,
            read=0,
            status=0,
            other=0,
            redirect=MAX_REDIRECTS,
            raise_on_redirect=True,
            remove_headers_on_redirect=Retry.DEFAULT_REMOVE_HEADERS_ON_REDIRECT | credential_headers,
        )
        self._invalid_header = self._check_headers(self.headers)
        self._managers: dict[str, tuple[urllib3.PoolManager, dict[str, str]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _check_headers(headers: Mapping[str, str]) -> str | None:
        """The type name of the error a default header would raise, or None. Checked once:
        the values are the client's constants (its credentials among them)."""
        for name, value in headers.items():
            try:
                check_header_validity((name, value))  # leading/trailing whitespace, CR/LF
                value.encode("latin-1")
            except InvalidHeader:
                return "InvalidHeader"
            except UnicodeError:
                return "UnicodeEncodeError"
        return None

    def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        if self._invalid_header is not None:
            raise Unsendable(self._invalid_header)
        try:
            manager, origin_headers = self._manager(url)
        except LocationValueError as exc:  # an invalid URL, or a proxy URL of an unknown scheme
            raise Unsendable(type(exc).__name__) from None
        merged = {**origin_headers, **headers} if headers else origin_headers
        failure: SendFailed | None = None
        try:
            answer = manager.urlopen(
                method,
                url,
                body=body,
                headers=merged,
                retries=self.retries,
                timeout=self.timeout,
                redirect=True,
                preload_content=True,
            )
        except MaxRetryError as exc:
            cause = exc.reason
            if isinstance(cause, ResponseError):  # redirects beyond MAX_REDIRECTS
                failure = Unsendable("TooManyRedirects")
            else:
                failure = ConnectionFailed(type(cause or exc).__name__)
        except LocationValueError as exc:  # an invalid URL (a redirect's included)
            failure = Unsendable(type(exc).__name__)
        except HTTPError as exc:  # read timeouts, dropped connections, undecodable bodies
            failure = ConnectionFailed(type(exc).__name__)
        except (ValueError, UnicodeError) as exc:  # http.client refused a header or the URL
            failure = Unsendable(type(exc).__name__)
        if failure is not None:  # raised outside the handler: no __context__ keeps the original
            raise failure
        return Response(answer.status, answer.headers, answer.data, answer.reason or "")

    def _manager(self, url: str) -> tuple[urllib3.PoolManager, dict[str, str]]:
        origin = _origin(url)
        found = self._managers.get(origin)
        if found is None:
            with self._lock:
                found = self._managers.get(origin)
                if found is None:
                    found = self._managers[origin] = self._new_manager(origin)
        return found

    def _new_manager(self, origin: str) -> tuple[urllib3.PoolManager, dict[str, str]]:
        environment = read_environment(origin + "/", has_auth="Authorization" in self.headers)
        headers = dict(self.headers)
        if environment.netrc_auth is not None:
            headers["Authorization"] = basic_auth(*environment.netrc_auth)
        pool: dict[str, Any] = {"num_pools": 4, "maxsize": self.pool_size, "block": False}
        if origin.startswith("https:") or (environment.proxy or "").lower().startswith("https:"):
            try:
                pool["ssl_context"] = verifying_context(environment.ca_bundle)
            except (OSError, ValueError):  # ssl.SSLError is an OSError
                raise Unsendable(
                    f"the CA bundle {environment.ca_bundle} cannot be read: check REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE"
                ) from None
        if environment.proxy is None:
            return urllib3.PoolManager(**pool), headers
        if environment.proxy.lower().startswith("socks"):
            try:
                from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as in requests
            except ImportError:
                raise Unsendable("a SOCKS proxy is set but PySocks is not installed: pip install pysocks") from None
            return SOCKSProxyManager(environment.proxy, **pool), headers  # credentials read from its URL
        username, password = get_auth_from_url(environment.proxy)  # unquoted
        proxy_headers = make_headers(proxy_basic_auth=f"{username}:{password}") if username else {}
        return urllib3.ProxyManager(environment.proxy, proxy_headers=proxy_headers, **pool), headers

    def close(self) -> None:
        with self._lock:
            for manager, _ in self._managers.values():
                manager.clear()
            self._managers.clear()
