"""The clients go through the proxy the environment names (and around it for NO_PROXY), over
real loopback HTTP: a forwarding proxy in front of a recording origin."""

from __future__ import annotations

import base64
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from connectors.customerio import CustomerIoClient
from connectors.http import RetryPolicy

FAST = RetryPolicy(total=0, timeout=5)


class Origin(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))  # type: ignore[attr-defined]
        body = json.dumps({"region": "us"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ForwardingProxy(BaseHTTPRequestHandler):
    """A plain HTTP proxy: takes absolute-form requests and forwards them."""

    def do_GET(self):
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))  # type: ignore[attr-defined]
        target = urlsplit(self.path)
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "host")}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
        upstream.request("GET", target.path or "/", headers=forwarded)
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()

    def log_message(self, *args):
        pass


@pytest.fixture
def origin_and_proxy():
    started = []
    for handler in (Origin, ForwardingProxy):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.seen = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("no_proxy", "")


def test_requests_go_through_the_proxy_with_its_credentials_kept_from_the_service(origin_and_proxy, monkeypatch):
    origin, proxy = origin_and_proxy
    monkeypatch.setenv("http_proxy", f"http://proxy-user:proxy%20pass@127.0.0.1:{proxy.server_address[1]}")
    base = f"http://127.0.0.1:{origin.server_address[1]}"

    with CustomerIoClient(base, "site", "key", retry=FAST) as cio:
        assert cio.check_credentials() == {"region": "us"}

    ((proxied_path, proxy_headers),) = proxy.seen
    assert proxied_path == f"{base}/api/v1/accounts/region"  # absolute form: a proxied request
    assert proxy_headers["proxy-authorization"] == "Basic " + base64.b64encode(b"proxy-user:proxy pass").decode()
    ((path, headers),) = origin.seen
    assert path == "/api/v1/accounts/region"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"site:key").decode()
    assert "proxy-authorization" not in headers


def test_no_proxy_hosts_are_reached_directly(origin_and_proxy, monkeypatch):
    origin, proxy = origin_and_proxy
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    with CustomerIoClient(f"http://127.0.0.1:{origin.server_address[1]}", "site", "key", retry=FAST) as cio:
        cio.check_credentials()

    assert proxy.seen == [] and len(origin.seen) == 1
