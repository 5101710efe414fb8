"""A fault-injecting HTTP proxy for the tests: sits between s3fs and the moto server and breaks
requests with seeded probabilities, the ways a real network and a real S3 do.

Kinds of fault (each with its own rate, drawn once per request):

- ``slowdown``: answer 503 SlowDown (an S3 XML error body) without forwarding;
- ``internal``: answer 500 InternalError without forwarding;
- ``reset``: reset the connection (RST) before forwarding;
- ``lost_reply``: forward the request (the write happens), then close without answering;
- ``truncate``: forward, then send the headers with the full Content-Length and half the body, and close;
- ``slow``: forward, then wait ``slow_s`` before answering (not a failure: replies late).

The proxy speaks HTTP/1.1 with keep-alive (aiohttp reuses connections) and forwards each request on a
fresh upstream connection. ``counts`` says what was injected; ``history`` lists every request as
``(method, target, kind)``, kind None when it was forwarded untouched. Request order across threads
is not deterministic, so a seed fixes the sequence of draws, not which request gets which fault.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal", "reset", "lost_reply", "truncate", "slow")
FAILURES = frozenset(KINDS) - {"slow"}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}


class FaultProxy:
    """Forwards to *upstream* (``http://host:port``), injecting faults at the given *rates*."""

    def __init__(self, upstream: str, *, seed: int = 0, slow_s: float = 0.3) -> None:
        """Start with every rate at 0; set :attr:`rates` (kind -> probability) to inject."""
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rates: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        self.slow_s = slow_s
        self.counts: Counter[str] = Counter()
        self.history: list[tuple[str, str, str | None]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        """The URL clients use instead of the upstream's."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def configure(self, rates: dict[str, float], seed: int) -> None:
        """Inject faults at *rates* (kind -> probability per request), drawn from a generator seeded *seed*."""
        with self._lock:
            self.rates = dict(rates)
            self._rng = random.Random(seed)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw(self, method: str, target: str) -> str | None:
        """The fault for this request, if any (at most one), recorded in counts and history."""
        with self._lock:
            roll = self._rng.random()
            kind = None
            for name in KINDS:
                rate = self.rates.get(name, 0.0)
                if roll < rate:
                    kind = name
                    break
                roll -= rate
            self.history.append((method, target, kind))
            if kind is not None:
                self.counts[kind] += 1
            return kind

    def uncount(self, kind: str) -> None:
        """A drawn fault that could not be applied (a truncation of an empty body) is not counted."""
        with self._lock:
            self.counts[kind] -= 1
            method, target, _ = self.history[-1]
            self.history[-1] = (method, target, None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests per connection
    timeout = 120  # an idle client connection is dropped eventually
    server: _Server

    def do_request(self) -> None:
        if self.headers.get("Transfer-Encoding"):  # botocore sends Content-Length; refuse rather than guess
            self._close(reset=True)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        proxy = self.server.proxy
        kind = proxy.draw(self.command, self.path)
        if kind in _ERRORS:
            self._send_error(*_ERRORS[kind])
        elif kind == "reset":
            self._close(reset=True)
        else:
            status, reason, headers, reply = self._forward(body)
            if kind == "lost_reply":
                self._close(reset=False)
                return
            if kind == "slow":
                time.sleep(proxy.slow_s)
            if kind == "truncate" and len(reply) < 2:  # nothing to cut in half
                proxy.uncount(kind)
                kind = None
            self.send_response_only(status, reason)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if kind == "truncate":
                self.wfile.write(reply[: len(reply) // 2])
                self._close(reset=False)
            else:
                self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_request  # noqa: N815 - http.server's names

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"expect"}}
        upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            reply = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(reply))
        finally:
            upstream.close()
        if length is not None:
            kept.append(("Content-Length", length))
        return response.status, response.reason, kept, reply

    def _send_error(self, status: int, code: str, message: str) -> None:
        reply = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    def _close(self, *, reset: bool) -> None:
        """Drop the connection without (the rest of) an answer; *reset* sends RST instead of FIN."""
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        """Quiet: the tests read counts and history instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy
