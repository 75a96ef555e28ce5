"""Shared HTTP plumbing for the simulators.

Everything here exists to make the simulators both *cheap* and *faithful
enough* for benchmarks on a 2-core machine (see shared/reference/performance.md):

* TCP_NODELAY on every accepted socket: with HTTP/1.1 keep-alive, Nagle's
  algorithm plus delayed ACKs otherwise costs ~40 ms per response.
* Each response (status line, headers, body) leaves in a single write, always
  with a Content-Length so keep-alive connections stay usable.
* No per-request logging, no pretty-printing.

It also provides what both simulators share: a tiny router, fault injection
(`Faults`), a request journal and the ``/_sim`` control endpoints that let a
test or benchmark drive a simulator that runs in another process.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

_REASONS = {status.value: status.phrase for status in HTTPStatus}
# A request body larger than this is refused outright (protects the benchmark
# machine from a runaway client, far above any real API limit).
MAX_BODY_BYTES = 64 * 1024 * 1024


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes; ``default=str`` so datetimes never crash a response."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class InvalidJson(ValueError):
    """The request body is not valid JSON."""


class HttpError(Exception):
    """Raised by a route to answer immediately with ``status`` and ``payload``."""

    def __init__(self, status: int, payload: Any = None, headers: dict | None = None):
        super().__init__(status, payload)
        self.status = status
        self.payload = payload
        self.headers = headers


class Request:
    """What a route sees: method, raw (still URL-encoded) path, query, headers, body."""

    __slots__ = ("_json", "_parsed", "body", "headers", "method", "path", "query_string")

    def __init__(self, method: str, path: str, query_string: str, headers, body: bytes):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self._json: Any = None
        self._parsed = False

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def json(self, default: Any = None) -> Any:
        """Parsed body (cached); ``default`` for an empty body; InvalidJson otherwise."""
        if not self.body:
            return default
        if not self._parsed:
            try:
                self._json = json.loads(self.body)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise InvalidJson(str(exc)) from None
            self._parsed = True
        return self._json

    def json_or_none(self) -> Any:
        try:
            return self.json()
        except InvalidJson:
            return None


Handler = Callable[..., Any]


class Router:
    """Method + full-match regex routing; named groups become keyword arguments."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    def match(self, method: str, path: str) -> tuple[Handler | None, dict[str, str]]:
        for route_method, regex, handler in self._routes:
            if route_method == method:
                found = regex.fullmatch(path)
                if found:
                    return handler, found.groupdict()
        return None, {}


# --------------------------------------------------------------------------- faults


@dataclass
class FaultRule:
    status: int = 503
    body: Any = None
    retry_after: float | int | None = None
    path_contains: str | None = None
    method: str | None = None
    drop: bool = False

    def matches(self, method: str, raw_path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        if self.path_contains is None:
            return True
        # Match both spellings so callers can pass a customer id as they know it.
        return self.path_contains in raw_path or self.path_contains in unquote(raw_path)


class FaultDecision(NamedTuple):
    drop: bool
    status: int
    body: Any
    headers: dict | None


def _retry_headers(retry_after) -> dict | None:
    return None if retry_after is None else {"Retry-After": str(retry_after)}


class Faults:
    """Fault injection shared by both simulators; thread-safe and deterministic.

    Precedence for one request: ``down`` > ``fail_next`` queue > ``force``
    rules > ``drop_rate`` > ``error_rate``.  ``latency`` applies to every
    request, faulty or not.  A body of None means "the simulator's usual error
    body for that status".
    """

    # Operations ``POST /_sim/faults {"op": ...}`` may name; a subclass adds its own.
    OPS: tuple[str, ...] = ("fail_next", "error_rate", "drop_rate", "down", "latency", "force", "clear")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    # -- configuration ---------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self._queue: list[list] = []  # [remaining, FaultRule]
            self._forced: list[FaultRule] = []
            self._down = False
            self._latency = 0.0
            self._error_rate = 0.0
            self._error_statuses: tuple[int, ...] = (429, 500, 502, 503)
            self._error_retry_after = None
            self._error_rng = random.Random(0)
            self._drop_rate = 0.0
            self._drop_rng = random.Random(0)
            self._refresh()

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        body: Any = None,
        retry_after=None,
        path_contains: str | None = None,
        method: str | None = None,
        drop: bool = False,
    ) -> None:
        """The next ``n`` matching requests get ``status`` (or are dropped if ``drop``)."""
        if n <= 0:
            return
        rule = FaultRule(int(status), body, retry_after, path_contains, method, bool(drop))
        with self._lock:
            self._queue.append([int(n), rule])
            self._refresh()

    def error_rate(self, rate: float, statuses=(429, 500, 502, 503), seed: int = 0, retry_after=None) -> None:
        """Each request fails with probability ``rate``, status drawn from ``statuses``.

        The generator is re-seeded here so a run is reproducible from this call on.
        """
        with self._lock:
            self._error_rate = float(rate)
            self._error_statuses = tuple(int(s) for s in statuses) or (503,)
            self._error_retry_after = retry_after
            self._error_rng = random.Random(seed)
            self._refresh()

    def drop_rate(self, rate: float, seed: int = 0) -> None:
        """Each request is answered by closing the connection with probability ``rate``."""
        with self._lock:
            self._drop_rate = float(rate)
            self._drop_rng = random.Random(seed)
            self._refresh()

    def down(self, on: bool = True) -> None:
        """While down, every non-control request answers 503."""
        with self._lock:
            self._down = bool(on)
            self._refresh()

    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = max(0.0, float(seconds))

    def force(
        self, path_contains: str, status: int, body: Any = None, method: str | None = None, retry_after=None
    ) -> None:
        """Permanent rule, e.g. always 400 for one customer id, until ``clear()``."""
        with self._lock:
            self._forced.append(FaultRule(int(status), body, retry_after, path_contains, method))
            self._refresh()

    def apply(self, op: str, kwargs: dict) -> None:
        """Entry point for ``POST /_sim/faults`` ({"op": ..., **kwargs})."""
        if op not in self.OPS:
            raise ValueError(f"unknown fault op {op!r}")
        if "statuses" in kwargs:
            kwargs = {**kwargs, "statuses": tuple(kwargs["statuses"])}
        getattr(self, op)(**kwargs)

    def describe(self) -> dict:
        with self._lock:
            return {
                "down": self._down,
                "latency": self._latency,
                "error_rate": self._error_rate,
                "error_statuses": list(self._error_statuses),
                "drop_rate": self._drop_rate,
                "queued": [{"remaining": n, **vars(rule)} for n, rule in self._queue],
                "forced": [vars(rule) for rule in self._forced],
            }

    # -- hot path --------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Read without the lock: a stale value only delays a fault by one request."""
        return self._active

    @property
    def latency_seconds(self) -> float:
        return self._latency

    def _refresh(self) -> None:
        self._active = bool(self._queue or self._forced or self._down or self._error_rate > 0 or self._drop_rate > 0)

    def decide(self, method: str, raw_path: str) -> FaultDecision | None:
        with self._lock:
            if self._down:
                return FaultDecision(False, 503, None, None)
            for index, entry in enumerate(self._queue):
                rule = entry[1]
                if rule.matches(method, raw_path):
                    entry[0] -= 1
                    if entry[0] <= 0:
                        del self._queue[index]
                        self._refresh()
                    return FaultDecision(rule.drop, rule.status, rule.body, _retry_headers(rule.retry_after))
            for rule in self._forced:
                if rule.matches(method, raw_path):
                    return FaultDecision(False, rule.status, rule.body, _retry_headers(rule.retry_after))
            if self._drop_rate > 0 and self._drop_rng.random() < self._drop_rate:
                return FaultDecision(True, 0, None, None)
            if self._error_rate > 0 and self._error_rng.random() < self._error_rate:
                status = self._error_rng.choice(self._error_statuses)
                return FaultDecision(False, status, None, _retry_headers(self._error_retry_after))
        return None


# --------------------------------------------------------------------------- HTTP


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # The single most important line for benchmark numbers (see module doc).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # logging every request would dominate the CPU budget

    def _dispatch(self) -> None:
        self.server.simulator._dispatch(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    block_on_close = False

    def __init__(self, address: tuple[str, int], simulator: SimulatorServer):
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.connections_accepted = 0  # lets a benchmark check that keep-alive works
        super().__init__(address, _RequestHandler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)
            self.connections_accepted += 1

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Idle keep-alive threads would otherwise keep serving after stop()."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        # Clients resetting connections is normal under fault injection; anything
        # else is a simulator bug worth seeing.
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    headers = handler.headers
    encoding = headers.get("Transfer-Encoding")
    if encoding and "chunked" in encoding.lower():
        chunks, total = [], 0
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("request body too large")
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = headers.get("Content-Length")
    if not length:
        return b""
    size = int(length)
    if size < 0 or size > MAX_BODY_BYTES:
        raise ValueError("bad Content-Length")
    return handler.rfile.read(size)


def _write_response(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None) -> None:
    parts = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Length: {len(body)}\r\n"]
    if body:
        parts.append("Content-Type: application/json\r\n")
    if headers:
        parts.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    if handler.close_connection:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    # One write: headers and body in the same segment.
    handler.wfile.write("".join(parts).encode("latin-1") + body)


def _encode(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return dumps(payload)


def _int_param(query: dict, name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError:
        raise HttpError(400, {"error": f"{name} must be an integer"}) from None


class SimulatorServer:
    """Base class: HTTP server lifecycle, routing, faults, journal, /_sim endpoints.

    Subclasses implement ``register_routes(router)``, ``_reset_state()``,
    ``state(summary)`` and may override ``error_payload``/``not_found_payload``
    and ``register_control_routes``.
    """

    name = "simulator"
    faults_class: type[Faults] = Faults  # a simulator may add its own fault switches

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.faults = self.faults_class()
        # One lock guards the simulated service's data; reentrant so helpers compose.
        self.lock = threading.RLock()
        self.record_journal = True
        self._journal: list[dict] = []
        self._journal_lock = threading.Lock()
        self.errors: list[str] = []  # unexpected exceptions inside routes (simulator bugs)
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = Router()
        self._control = Router()
        self._register_base_control_routes()
        self.register_control_routes(self._control)
        self.register_routes(self._routes)
        self._reset_state()

    # -- hooks for subclasses --------------------------------------------------
    def register_routes(self, router: Router) -> None:
        raise NotImplementedError

    def register_control_routes(self, router: Router) -> None:
        pass

    def _reset_state(self) -> None:
        pass

    def state(self, summary: bool = False) -> dict:
        return {}

    def error_payload(self, message: str) -> Any:
        return {"error": message}

    def not_found_payload(self) -> Any:
        return self.error_payload("not found")

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> SimulatorServer:
        if self._httpd is not None:
            return self
        self._httpd = _HttpServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        # `shutdown()` waits for the serve loop's next poll: a short interval keeps stopping a
        # simulator (twice per test) from costing a fifth of a second.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=f"{self.name}-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start (a keep-alive client should open few)."""
        return self._httpd.connections_accepted if self._httpd else 0

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all data, faults and journal entries (the server keeps running)."""
        with self.lock:
            self._reset_state()
        self.faults.clear()
        self.clear_journal()

    # -- journal -----------------------------------------------------------------
    def journal(self) -> list[dict]:
        with self._journal_lock:
            return list(self._journal)

    def clear_journal(self) -> None:
        with self._journal_lock:
            self._journal = []

    def _record(self, req: Request, status: int | None, host: str | None) -> None:
        entry = {
            "ts": time.time(),
            "method": req.method,
            "path": req.path,
            "query": req.query_string,
            "status": status,
            "body": req.json_or_none() if self.record_journal else None,
            "host": host,
        }
        with self._journal_lock:
            self._journal.append(entry)

    # -- request handling --------------------------------------------------------
    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query_string = handler.path.partition("?")
        try:
            body = _read_body(handler)
        except ValueError as exc:
            handler.close_connection = True
            _write_response(handler, 400, dumps(self.error_payload(str(exc))), None)
            return
        req = Request(handler.command, path, query_string, handler.headers, body)

        if path.startswith("/_sim/") or path == "/healthz":
            route, params = self._control.match(req.method, path)
            status, payload, headers = self._call(route, req, params)
            _write_response(handler, status, _encode(payload), headers)
            return

        faults = self.faults
        if faults.latency_seconds:
            time.sleep(faults.latency_seconds)
        decision = faults.decide(req.method, path) if faults.active else None
        if decision is not None and decision.drop:
            # Simulated connection reset: no answer at all, the socket is closed.
            self._record(req, None, handler.headers.get("Host"))
            handler.close_connection = True
            return
        if decision is not None:
            status = decision.status
            payload = (
                decision.body if decision.body is not None else self.error_payload(f"simulated failure ({status})")
            )
            headers = decision.headers
        else:
            route, params = self._routes.match(req.method, path)
            status, payload, headers = self._call(route, req, params)
        encoded = _encode(payload)
        # Journal before answering so a caller that got its response can rely on it.
        self._record(req, status, handler.headers.get("Host"))
        _write_response(handler, status, encoded, headers)

    def _call(self, route: Handler | None, req: Request, params: dict):
        if route is None:
            return 404, self.not_found_payload(), None
        try:
            result = route(req, **params)
        except HttpError as exc:
            return exc.status, exc.payload, exc.headers
        except InvalidJson:
            return 400, self.error_payload("invalid JSON"), None
        except Exception as exc:  # a simulator bug must not kill the connection thread
            self.errors.append(f"{req.method} {req.path}: {exc!r}")
            return 500, self.error_payload(f"simulator error: {exc!r}"), None
        if len(result) == 2:
            return result[0], result[1], None
        return result

    # -- control endpoints (never subject to faults, never journaled) -------------
    def _register_base_control_routes(self) -> None:
        r = self._control
        r.add("GET", r"/healthz", lambda req: (200, {"ok": True, "simulator": self.name}))
        r.add("POST", r"/_sim/faults", self._control_faults)
        r.add("GET", r"/_sim/faults", lambda req: (200, self.faults.describe()))
        r.add("POST", r"/_sim/reset", self._control_reset)
        r.add("GET", r"/_sim/journal", self._control_journal)
        r.add("POST", r"/_sim/journal", self._control_journal_settings)
        r.add("DELETE", r"/_sim/journal", self._control_journal_clear)
        r.add("GET", r"/_sim/state", self._control_state)

    def _control_faults(self, req: Request):
        spec = req.json({})
        if not isinstance(spec, dict) or "op" not in spec:
            raise HttpError(400, {"error": 'expected {"op": ..., ...}'})
        kwargs = dict(spec)
        op = kwargs.pop("op")
        try:
            self.faults.apply(op, kwargs)
        except (TypeError, ValueError) as exc:
            raise HttpError(400, {"error": str(exc)}) from None
        return 200, {"ok": True, "faults": self.faults.describe()}

    def _control_reset(self, req: Request):
        self.reset()
        return 200, {"ok": True}

    def _control_journal(self, req: Request):
        """``?since=N`` returns entries from index N on (poll incrementally)."""
        query = req.query
        since = _int_param(query, "since", 0)
        with self._journal_lock:
            return 200, self._journal[since:]

    def _control_journal_settings(self, req: Request):
        spec = req.json({})
        if "record" in spec:
            self.record_journal = bool(spec["record"])
        if spec.get("clear"):
            self.clear_journal()
        return 200, {"ok": True, "record": self.record_journal}

    def _control_journal_clear(self, req: Request):
        self.clear_journal()
        return 200, {"ok": True}

    def _control_state(self, req: Request):
        summary = req.query.get("summary", "") not in ("", "0", "false")
        with self.lock:
            state = self.state(summary=summary)
            state["connections_accepted"] = self.connections_accepted
            return 200, dumps(state)  # serialised under the lock
