"""The bounded HTTP front: a `ThreadingHTTPServer` extended through its own hooks.

- `process_request` checks the connection caps before a thread exists;
- `service_actions` is the accept loop's heartbeat;
- the handler takes a slot of the bounded semaphore per request (503 + Retry-After when none
  frees up within `web.admission_wait_ms`), frames the body, and hands a `Request` to the API.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("loop.server")
access_log = logging.getLogger("loop.access")

CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class HttpError(Exception):
    """A protocol-level refusal (framing, admission) answered before the API sees the request."""

    def __init__(self, status: int, code: str, message: str, headers=None, close=False):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.close = close


class BodyReader:
    """Reads exactly Content-Length bytes of a body, within the request deadline."""

    def __init__(self, rfile, length: int, deadline: float):
        self._rfile, self.remaining, self.deadline = rfile, length, deadline
        self.length = length

    def read(self, size: int) -> bytes:
        if self.remaining <= 0:
            return b""
        if time.monotonic() > self.deadline:
            raise HttpError(408, "bad_request", "the request body took too long", close=True)
        data = self._rfile.read1(min(size, self.remaining))
        self.remaining -= len(data)
        return data

    def read_all(self) -> bytes:
        chunks = []
        while self.remaining > 0:
            chunk = self.read(self.remaining)
            if not chunk:
                raise HttpError(400, "bad_request", "the body ended early", close=True)
            chunks.append(chunk)
        return b"".join(chunks)

    @property
    def complete(self) -> bool:
        return self.remaining <= 0


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: object  # http.client.HTTPMessage
    client: str
    body: BodyReader | None
    raw_path: str = ""

    def arg(self, name: str, default=None):
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    route_class: str = "none"  # the route's rate class, set by the API; for /metrics


class Counters:
    """Request counters shown in health and /metrics; plain ints, written under the GIL."""

    def __init__(self):
        self.connections_open = 0
        self.connections_rejected = 0
        self.requests = 0
        self.admitted = 0
        self.rejected_busy = 0
        self.by_status: dict[int, int] = {}
        self.by_route: dict[tuple[str, int], int] = {}  # (route class, status) -> count

    def count_status(self, status: int, route_class: str = "none") -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        key = (route_class, status)
        self.by_route[key] = self.by_route.get(key, 0) + 1

    def by_route_items(self) -> list[tuple[tuple[str, int], int]]:
        return list(self.by_route.items())

    def as_dict(self) -> dict:
        return {"connections_open": self.connections_open,
                "connections_rejected": self.connections_rejected,
                "requests": self.requests, "admitted": self.admitted,
                "rejected_busy": self.rejected_busy,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())}}


OVERLOADED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s")
OVERLOADED_BODY = (b'{"success": false, "message": "too many connections", '
                   b'"error": "busy", "data": null}')


class LoopServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with connection caps, admission slots and a heartbeat."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, web_cfg, api):
        self.web = web_cfg
        self.api = api
        self.counters = Counters()
        self.heartbeat = time.monotonic()
        self.slots = threading.BoundedSemaphore(web_cfg.max_concurrent_requests)
        self._per_client: dict[str, int] = {}
        self._conn_lock = threading.Lock()
        self.in_flight = 0
        super().__init__(address, LoopHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def reconfigure(self, web_cfg) -> None:
        """Apply a reloaded `web` section (the slot count needs a restart)."""
        self.web = web_cfg

    def service_actions(self) -> None:
        self.heartbeat = time.monotonic()

    def process_request(self, request, client_address) -> None:
        client = client_address[0]
        with self._conn_lock:
            over = (self.counters.connections_open >= self.web.max_connections
                    or self._per_client.get(client, 0) >= self.web.max_connections_per_client)
            if not over:
                self.counters.connections_open += 1
                self._per_client[client] = self._per_client.get(client, 0) + 1
        if over:
            self.counters.connections_rejected += 1
            _refuse(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            client = client_address[0]
            with self._conn_lock:
                self.counters.connections_open -= 1
                left = self._per_client.get(client, 1) - 1
                if left:
                    self._per_client[client] = left
                else:
                    self._per_client.pop(client, None)

    def handle_error(self, request, client_address) -> None:
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, CLIENT_GONE + (OSError,)):
            log.debug("client %s went away: %r", client_address[0], exc)
            return
        log.exception("unhandled error serving %s", client_address[0])


def _refuse(sock) -> None:
    try:
        sock.settimeout(0.5)
        sock.sendall(OVERLOADED % (len(OVERLOADED_BODY), OVERLOADED_BODY))
    except OSError:
        pass


class LoopHandler(BaseHTTPRequestHandler):
    """One connection; each request takes an admission slot, then goes to the API."""

    protocol_version = "HTTP/1.1"
    server_version = "LOOP"
    sys_version = ""
    error_content_type = "application/json"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.web.header_timeout_sec)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except CLIENT_GONE:
            self.close_connection = True

    def __getattr__(self, name: str):
        # every method goes through one dispatcher; unknown ones get 405/501 from the API
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        server: LoopServer = self.server
        server.counters.requests += 1
        started = time.monotonic()
        if not server.slots.acquire(timeout=server.web.admission_wait_ms / 1000):
            server.counters.rejected_busy += 1
            self._send_error(HttpError(503, "busy", "the server is busy, try again shortly",
                                       {"Retry-After": "1"}, close=True))
            return
        server.counters.admitted += 1
        server.in_flight += 1
        try:
            request = self._build_request()
            response = server.api.handle(request)
            if request.body is not None and not request.body.complete:
                self.close_connection = True
            self._send(response, request)
        except HttpError as exc:
            self._send_error(exc)
        finally:
            server.in_flight -= 1
            server.slots.release()
            self._log_access(started)

    def _build_request(self) -> Request:
        parts = urlsplit(self.path)
        body = None
        if "Transfer-Encoding" in self.headers:
            raise HttpError(501, "not_implemented", "Transfer-Encoding is not supported; "
                            "send Content-Length", close=True)
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            raise HttpError(400, "bad_request", "invalid Content-Length", close=True)
        if lengths:
            deadline = time.monotonic() + self.server.web.request_timeout_seconds
            self.connection.settimeout(self.server.web.request_timeout_seconds)
            body = BodyReader(self.rfile, int(lengths[0]), deadline)
        return Request(method=self.command, path=unquote(parts.path),
                       query=parse_qs(parts.query), headers=self.headers,
                       client=self.client_address[0], body=body, raw_path=parts.path)

    def _send(self, response: Response, request: Request | None = None) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.close_connection = True  # one request per connection until keep-alive lands
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)
        self.server.counters.count_status(response.status, response.route_class)
        self._status = response.status

    def _send_error(self, exc: HttpError) -> None:
        from loop.api import envelope_error
        response = envelope_error(exc.status, exc.code, exc.message)
        response.headers.update(exc.headers)
        if exc.close:
            self.close_connection = True
        try:
            self._send(response)
        except CLIENT_GONE:
            self.close_connection = True

    def send_error(self, code, message=None, explain=None) -> None:
        """The stdlib's own errors (bad request line, 431, 414) as JSON envelopes."""
        from loop.api import STATUS_CODES
        self._send_error(HttpError(code, STATUS_CODES.get(code, "bad_request"),
                                   message or self.responses.get(code, ("error",))[0],
                                   close=True))

    def log_message(self, format, *args) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    def _log_access(self, started: float) -> None:
        if not self.server.web.access_log or self.path.startswith(("/api/poll/", "/metrics")):
            return
        access_log.info("%s %s %s %s %.1fms", self.client_address[0], self.command,
                        self.path[:200], getattr(self, "_status", "-"),
                        (time.monotonic() - started) * 1000)


def bind(host: str, port: int, web_cfg, api) -> LoopServer:
    """Create the server with its socket bound and listening (before privileges drop)."""
    if ":" in host:
        LoopServer.address_family = socket.AF_INET6
    return LoopServer((host, port), web_cfg, api)
