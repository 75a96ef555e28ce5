"""Plain loopback HTTP servers for the connector tests that need a peer the simulators are not:
a recording origin (with redirects on demand) and a forwarding proxy."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with `[]` and records (path, headers with lower-case names).
    `/redirect?to=URL` redirects there; `/redirect` alone redirects to itself (a loop)."""

    def do_GET(self):
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))  # type: ignore[attr-defined]
        if self.path.startswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", self.path.split("to=", 1)[1] if "to=" in self.path else self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ForwardingProxy(Recorder):
    """A plain HTTP proxy: records each absolute-form GET, then forwards it (without the
    proxy's own credentials) and relays the answer."""

    def do_GET(self):
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))  # type: ignore[attr-defined]
        target = urlsplit(self.path)
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "host")}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
        try:
            upstream.request("GET", target.path or "/", headers=forwarded)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serving(
    *handlers: type[BaseHTTPRequestHandler], tls: tuple[str, str] | None = None
) -> Iterator[list[ThreadingHTTPServer]]:
    """One loopback server per handler, each with its `seen` list; shut down on exit.
    `tls`: (certificate file, key file) to serve HTTPS with."""
    started = []
    for handler in handlers:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.seen = []  # type: ignore[attr-defined]
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    try:
        yield started
    finally:
        for server in started:
            server.shutdown()
            server.server_close()
