"""The bounded HTTP front: a `ThreadingHTTPServer` extended through its own hooks.

- `process_request` checks the connection caps (overall and per client) before a thread
  exists; over a cap the client gets a short 503 and the socket is closed.
- `handle` is the stdlib's keep-alive loop; `handle_one_request` puts each turn of it under
  deadlines: the idle wait for the next request (`web.keepalive_idle_sec`), then the head
  (`web.header_timeout_sec`). They are deadlines across reads, not per-read timeouts: the
  socket is read through `_DeadlineStream`, whose every `recv` may only wait for the time
  left, so a client trickling a byte now and then cannot stretch them.
- `parse_request` reads the head through `_HeadReader`, which bounds its size (414/431).
- `handle_expect_100` defers `100 Continue` until the handler first reads the body, i.e.
  until every check (access, admission, rate, framing, route, size, slots) has passed.
- `Api.handle` runs the checks in the design's order; this handler lends it the transport
  steps: `admission()` (a slot of the bounded semaphore, else 503 + Retry-After) and
  `frame_body()` (Content-Length framing, 400/411/413/501, and the body deadlines).
- A response to a request whose body was not read closes the connection, lingering: the rest
  of a body of sane length is read and thrown away under the body deadlines, anything else
  for at most `web.linger_sec`, so the client reads the answer instead of a reset.
- `service_actions` is the accept loop's heartbeat.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import ipaddress
import json
import logging
import re
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from loop.http.envelope import STATUS_CODES, HttpError, Response, envelope_error
from loop.http.ratelimit import RateLimiter, rate_classes

log = logging.getLogger("loop.server")
access_log = logging.getLogger("loop.access")

CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)

# Size limits of a request head. Browsers send well under 2 KiB and ~15 fields; LOOP sets no
# cookies. 32 KiB still leaves room for cookies another service on the same host name set.
MAX_REQUEST_LINE = 8 * 1024   # longer: 414
MAX_HEADER_LINE = 8 * 1024    # longer: 431
MAX_HEAD_BYTES = 32 * 1024    # the whole head; more: 431
MAX_HEADER_FIELDS = 64        # more: 431
READ_BUFFER = 64 * 1024       # per connection
_LENGTH = re.compile(r"[0-9]{1,15}")


class _DeadlineStream(io.RawIOBase):
    """The socket as a raw byte stream whose reads fail once `deadline` (monotonic) passed.

    Each `recv` waits at most for the time left, so the deadline holds across reads.
    `received` counts every byte read from the connection.
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock
        self.deadline: float | None = None
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self._sock.settimeout(left)
        count = self._sock.recv_into(buffer)
        self.received += count
        return count


class _HeadTooLarge(http.client.HTTPException):
    pass


class _MalformedHead(ValueError):
    """A request head RFC 9112 says to refuse (400, then close): not an HTTPException, which
    the stdlib's parse_request would turn into a 431."""


# RFC 9112/9110: field-name ":" OWS field-value OWS, the name a token with nothing between it
# and the colon, the value free of control characters but HTAB (NUL, CR and the rest are
# refused, not cleaned), each line ending in CRLF (a bare LF is accepted). A line that does
# not match, including obs-fold (a line starting with white space), is a 400: the stdlib's
# parser would silently drop every later field, Content-Length too, and run the body as a
# second request on the same connection.
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n\Z")
_REQUEST_LINE_CTL = re.compile(rb"[\x00-\x1f\x7f](?!\n?\Z)")
_END_OF_HEAD = (b"\r\n", b"\n")
VERSIONS = ("HTTP/1.0", "HTTP/1.1")  # and the stdlib's HTTP/0.9 (a GET without a version)


class _HeadReader:
    """Stands in for `rfile` while the stdlib reads a request head, bounding its size."""

    def __init__(self, rfile, counters: Counters):
        self._rfile, self._counters = rfile, counters
        self.lines = 0
        self.size = 0
        self._ended = False

    def readline(self, limit: int = -1) -> bytes:
        cap = MAX_REQUEST_LINE if self.lines == 0 else MAX_HEADER_LINE
        try:
            line = self._rfile.readline(cap + 1)
        except TimeoutError:
            self._counters.add("timeouts")
            raise
        self.lines += 1
        self.size += len(line)
        if len(line) > cap:
            raise http.client.LineTooLong("request line" if self.lines == 1 else "header line")
        if self.size > MAX_HEAD_BYTES or self.lines > MAX_HEADER_FIELDS + 2:
            raise _HeadTooLarge("request head too large")
        if self.lines == 1:
            if _REQUEST_LINE_CTL.search(line):
                raise _MalformedHead("a control character in the request line")
        elif not self._ended:
            if line in _END_OF_HEAD:
                self._ended = True
            elif not line.endswith(b"\n"):
                raise _MalformedHead("the request head ended inside a header line")
            elif not _FIELD_LINE.match(line):
                raise _MalformedHead("a malformed header line (a field needs a name, then "
                                     "a colon with no space before it, and a value without "
                                     "control characters; no folded lines)")
        return line


class BodyReader:
    """Reads exactly Content-Length bytes of a body under the body deadlines.

    All of it must arrive within `web.request_timeout_seconds` of the first read, and after
    `web.body_grace_sec` at least `web.min_body_rate_kbps` KiB/s on average: the next byte is
    due by `start + grace + received / rate`. A trickle cannot stretch either deadline.
    """

    def __init__(self, rfile, stream: _DeadlineStream, length: int, web,
                 on_first_read=None, clock=time.monotonic):
        self._rfile, self._stream, self._clock = rfile, stream, clock
        self.length = self.remaining = length
        self._web = web
        self._on_first_read = on_first_read
        self.started: float | None = None
        self.failed = False
        self._until: float | None = None  # a deadline of its own for the whole body
        self._prefetched: bytes | None = None
        self._served = 0

    @property
    def received(self) -> int:
        return self.length - self.remaining

    def deadline(self) -> float:
        """When the next byte must have arrived (monotonic)."""
        if self.started is None:
            self.started = self._clock()
        overall = self.started + self._web.request_timeout_seconds
        if self._until is not None:
            overall = min(overall, self._until)
        rate = self._web.min_body_rate_kbps * 1024
        if rate <= 0:
            return overall
        return min(overall, self.started + self._web.body_grace_sec + self.received / rate)

    def prefetch(self, seconds: float) -> None:
        """Read the whole (small) body now, all of it within `seconds`; later reads get it."""
        self._until = self._clock() + seconds
        try:
            self._prefetched = self.read_all()
        finally:
            self._until = None

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (b"" at the end or when the client stopped sending)."""
        if self._prefetched is not None:
            chunk = self._prefetched[self._served:self._served + size]
            self._served += len(chunk)
            return chunk
        if self.remaining <= 0:
            return b""
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        self._stream.deadline = self.deadline()
        try:
            data = self._rfile.read1(min(size, self.remaining))
        except TimeoutError:
            self.failed = True
            raise HttpError(408, "bad_request", "the request body arrived too slowly "
                            "(web.min_body_rate_kbps, web.request_timeout_seconds)",
                            close=True) from None
        except OSError:
            self.failed = True
            raise HttpError(400, "bad_request", "the connection broke while the body was "
                            "sent", close=True) from None
        if not data:
            self.failed = True
        self.remaining -= len(data)
        return data

    def read_all(self) -> bytes:
        if self._prefetched is not None:
            return self._prefetched
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
    version: str = "HTTP/1.1"
    client_key: str = ""  # what per-client limits count by (see `client_key`)
    rate_class: str = ""  # set by the API once the route is known

    def arg(self, name: str, default=None):
        values = self.query.get(name)
        return values[0] if values else default


class Counters:
    """Connection and request counters shown in health (`checks.http`) and /metrics."""

    NAMES = ("connections_accepted", "connections_rejected", "closed", "idle_closed",
             "idle_evicted", "timeouts", "requests", "admitted", "rejected",
             "rejected_per_client", "rate_limited", "polls", "continues", "bytes_in",
             "drained_bytes")

    def __init__(self):
        self._lock = threading.Lock()
        self.connections_open = 0
        self.in_flight = 0
        for name in self.NAMES:
            setattr(self, name, 0)
        self.by_status: dict[int, int] = {}
        self.by_route: dict[tuple[str, int], int] = {}  # (route class, status) -> count

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def count_status(self, status: int, route_class: str = "none") -> None:
        with self._lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            key = (route_class, status)
            self.by_route[key] = self.by_route.get(key, 0) + 1

    def by_route_items(self) -> list[tuple[tuple[str, int], int]]:
        with self._lock:
            return list(self.by_route.items())

    def as_dict(self) -> dict:
        with self._lock:
            out = {name: getattr(self, name) for name in self.NAMES}
            out.update(connections_open=self.connections_open, in_flight=self.in_flight,
                       by_status={str(k): v for k, v in sorted(self.by_status.items())})
        return out


@functools.lru_cache(maxsize=256)  # per request otherwise, and LAN addresses repeat
def client_key(address: str) -> str:
    """What per-client limits count by: the IPv4 address, or the /64 of an IPv6 one (a single
    IPv6 host may use any address of its /64)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RequestSlots:
    """`web.max_concurrent_requests` slots for requests doing work, shared fairly: one client
    (address, IPv6 /64) holds at most half of them, and the last one is kept for polling, so
    slow requests from one client can neither starve other clients nor the dashboards."""

    def __init__(self, slots: int):
        self.slots = slots
        self.per_client = max(1, slots // 2)
        self._held: dict[str, int] = {}
        self._in_use = 0
        self._cond = threading.Condition()

    def _refusal(self, client: str, poll: bool) -> str | None:
        if self._held.get(client, 0) >= self.per_client:
            return "client"
        if self._in_use >= self.slots or (not poll and self._in_use >= self.slots - 1
                                         and self.slots > 1):
            return "full"
        return None

    def acquire(self, client: str, poll: bool, wait: float) -> str | None:
        """None once a slot is held; else why not ('client' or 'full') after `wait` s."""
        deadline = time.monotonic() + wait
        with self._cond:
            while (why := self._refusal(client, poll)) is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return why
                self._cond.wait(left)
            self._in_use += 1
            self._held[client] = self._held.get(client, 0) + 1
            return None

    def release(self, client: str) -> None:
        with self._cond:
            self._in_use -= 1
            left = self._held.get(client, 1) - 1
            if left:
                self._held[client] = left
            else:
                self._held.pop(client, None)
            self._cond.notify_all()


OVERLOADED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s")
OVERLOADED_BODY = (b'{"success":false,"message":"too many connections","error":"busy",'
                   b'"data":null}')


class LoopServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with connection caps, admission slots, rate limits, a heartbeat."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, web_cfg, api):
        self.web = web_cfg
        self.api = api
        self.counters = Counters()
        self.heartbeat = time.monotonic()
        self.closing = False
        self.request_slots = RequestSlots(web_cfg.max_concurrent_requests)
        # connections waiting for a request (the first, or the next on a kept-alive one):
        # socket -> (client key, since); the oldest yield when the overall cap is near
        self._idle: dict[socket.socket, tuple[str, float]] = {}
        self._evicted: set[socket.socket] = set()
        # The monitor calls `limiter.evict_idle()` now and then to drop refilled buckets.
        self.limiter = RateLimiter(rate_classes(web_cfg), web_cfg.rate_table_size)
        self._per_client: dict[str, int] = {}
        self._conn_lock = threading.Lock()
        super().__init__(address, LoopHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def in_flight(self) -> int:
        return self.counters.in_flight

    def reconfigure(self, web_cfg) -> None:
        """Apply a reloaded `web` section (the slot count needs a restart)."""
        old, self.web = self.web, web_cfg
        if (rate_classes(old), old.rate_table_size) != (rate_classes(web_cfg),
                                                        web_cfg.rate_table_size):
            self.limiter = RateLimiter(rate_classes(web_cfg), web_cfg.rate_table_size)

    def shutdown(self) -> None:
        self.closing = True  # keep-alive connections close after their current request
        super().shutdown()

    def service_actions(self) -> None:
        self.heartbeat = time.monotonic()

    def process_request(self, request, client_address) -> None:
        key = client_key(client_address[0])
        with self._conn_lock:
            if self._per_client.get(key, 0) < self.web.max_connections_per_client:
                self._make_room()
            over = (self.counters.connections_open >= self.web.max_connections
                    or self._per_client.get(key, 0) >= self.web.max_connections_per_client)
            if not over:
                self.counters.connections_open += 1
                self._per_client[key] = self._per_client.get(key, 0) + 1
        if over:
            self.counters.add("connections_rejected")
            _refuse(request)
            self.shutdown_request(request)
            return
        self.counters.add("connections_accepted")
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._release(key)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_key(client_address[0]), request)

    def _release(self, key: str, request=None) -> None:
        with self._conn_lock:
            self._idle.pop(request, None)
            if request in self._evicted:  # already uncounted when it was told to go
                self._evicted.discard(request)
            else:
                self._uncount(key)
        self.counters.add("closed")

    def _uncount(self, key: str) -> None:
        self.counters.connections_open -= 1
        left = self._per_client.get(key, 1) - 1
        if left:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)

    # ---- idle connections yield under pressure ------------------------------------------
    @property
    def spare_connections(self) -> int:
        """Room kept for new clients: when fewer connections than this are left under
        `web.max_connections`, the oldest idle ones are closed (at least 1, 1/8 of the cap)."""
        return max(1, self.web.max_connections // 8)

    def idle(self, sock, key: str) -> None:
        """A connection waits for a request: it may be closed to make room."""
        with self._conn_lock:
            self._idle[sock] = (key, time.monotonic())

    def busy(self, sock) -> bool:
        """A request arrived on `sock`; False when it was closed to make room meanwhile."""
        with self._conn_lock:
            self._idle.pop(sock, None)
            return sock not in self._evicted

    def _make_room(self) -> None:
        """(under the lock) Near the overall cap, close the oldest idle connections so a new
        client finds room: a client holding connections it does not use must not lock out
        one that polls. The closed connection stops counting at once."""
        need = self.counters.connections_open + self.spare_connections - \
            self.web.max_connections
        for sock in list(self._idle)[:max(0, need)]:
            key, _ = self._idle.pop(sock)
            self._evicted.add(sock)
            self._uncount(key)
            self.counters.add("idle_evicted")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # its thread sees the end and leaves

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # resets, broken pipes, timeouts: the client's business
            log.debug("client %s went away: %r", client_address[0], exc)
            return
        log.exception("unhandled error serving %s", client_address[0])


def _readable_now(sock) -> bool:
    """Bytes (or the end) already wait on `sock`. A poll, not recv(MSG_DONTWAIT): on a socket
    with a timeout Python waits for readability before any recv."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _refuse(sock) -> None:
    """The short 503 over a connection cap, from the accept loop: never blocks for long."""
    try:
        sock.settimeout(0.5)
        sock.sendall(OVERLOADED % (len(OVERLOADED_BODY), OVERLOADED_BODY))
        # take what already arrived, so closing does not reset the answer away
        sock.recv(READ_BUFFER, socket.MSG_DONTWAIT)
    except OSError:
        pass


class LoopHandler(BaseHTTPRequestHandler):
    """One connection: its requests in turn (keep-alive), each under deadlines."""

    protocol_version = "HTTP/1.1"
    server_version = "LOOP"
    sys_version = ""
    error_content_type = "application/json"
    disable_nagle_algorithm = True  # a response goes out at once, not after a delayed ACK

    # ---- connection --------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader; ours reads under deadlines
        self.accepted = time.monotonic()
        self._stream = _DeadlineStream(self.connection)
        self._buffered = self.rfile = io.BufferedReader(self._stream, READ_BUFFER)
        self._served = 0
        self._linger = False
        self._request: Request | None = None
        self._slot: tuple[str, bool] | None = None  # the request slot held, (client, poll)

    def handle(self) -> None:
        try:
            super().handle()  # the stdlib's loop over handle_one_request
        finally:
            if self._linger:
                self._linger_close()
            self.server.counters.add("bytes_in", self._stream.received)

    def handle_one_request(self) -> None:
        web = self.server.web
        self._request = None
        self.headers = None  # not the previous request's, should this one fail early
        self._expect_continue = False
        self._status = None
        if self._served:
            if self.server.closing or not self._await_next_request(web.keepalive_idle_sec):
                self.close_connection = True
                return
        elif not self._await_next_request(web.header_timeout_sec, self.accepted):
            self.close_connection = True
            return
        self._started = self.accepted if not self._served else time.monotonic()
        self._stream.deadline = self._started + web.header_timeout_sec
        self.rfile = reader = _HeadReader(self._buffered, self.server.counters)
        try:
            super().handle_one_request()  # parse_request, then do_<METHOD> -> _dispatch
        except http.client.HTTPException:  # from the request line; header lines: 431 there
            self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
            self.send_error(414)
        except _MalformedHead as exc:
            if reader.lines <= 1:  # the request line itself: nothing of it was parsed
                self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
            self._send_error(HttpError(400, "bad_request", f"bad request head: {exc}",
                                       close=True))
        except OSError as exc:  # reset, broken pipe, a write that timed out
            log.debug("client %s went away: %r", self.client_address[0], exc)
            self.close_connection = True
            self._linger = False
        finally:
            self.rfile = self._buffered
            self._served += 1

    def _await_next_request(self, idle: float, since: float | None = None) -> bool:
        """Wait for the first byte of a request (the first one, under the header deadline,
        or another on a kept-alive connection); meanwhile the connection is idle and may be
        closed to make room for a new client (`LoopServer._make_room`)."""
        self._stream.deadline = (since or time.monotonic()) + idle
        server = self.server
        # a request whose bytes are already here is not idle, not even for a moment
        waiting = not _readable_now(self.connection)
        if waiting:
            server.idle(self.connection, client_key(self.client_address[0]))
        try:
            arrived = bool(self._buffered.peek(1))
        except TimeoutError:
            server.counters.add("idle_closed" if self._served else "timeouts")
            arrived = False
        except OSError:
            arrived = False
        still_ours = server.busy(self.connection) if waiting else True
        return still_ours and arrived

    def parse_request(self) -> bool:
        """The stdlib's parser, then the version rule: HTTP/1.0 and HTTP/1.1 only. RFC 9110
        would have a server treat an unknown minor version such as HTTP/1.2 as 1.1; no
        real client sends one, so it is refused with 505 (the stdlib answers 505 from
        HTTP/2.0 up) rather than guessed at."""
        if not super().parse_request():
            return False
        if self.request_version not in VERSIONS and self.request_version != "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # the version of our answer
            self._send_error(HttpError(505, "version_not_supported", "only HTTP/1.0 and "
                                       "HTTP/1.1 are spoken here", close=True))
            return False
        return True

    def handle_expect_100(self) -> bool:
        """Defer `100 Continue` to the first read of the body: by then every check passed."""
        self._expect_continue = True
        return True

    def _send_continue(self) -> None:
        self._expect_continue = False
        self.connection.settimeout(self.server.web.request_timeout_seconds)
        self.send_response_only(100)
        self.end_headers()
        self.server.counters.add("continues")

    # ---- one request -------------------------------------------------------------------
    _date = (0, "")  # (second, Date header), shared: formatting it costs more than the rest

    def date_time_string(self, timestamp=None) -> str:
        """The stdlib's Date header, formatted once per second instead of per response."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        second = int(time.time())
        cached = LoopHandler._date
        if cached[0] != second:
            cached = LoopHandler._date = (second, super().date_time_string(second))
        return cached[1]

    def version_string(self) -> str:
        return self.server_version  # the stdlib appends " " + sys_version, here empty

    def __getattr__(self, name: str):
        # every method goes through one dispatcher; unknown ones get 405/404 from the API
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        server: LoopServer = self.server
        server.counters.add("requests")
        parts = urlsplit(self.path)
        request = self._request = Request(
            method=self.command, path=unquote(parts.path), query=parse_qs(parts.query),
            headers=self.headers, client=self.client_address[0], body=None,
            version=self.request_version,
            client_key=client_key(self.client_address[0]))
        server.counters.add("in_flight")
        try:
            response = server.api.handle(request, self)
            self._respond(response)
        finally:
            server.counters.add("in_flight", -1)

    @property
    def limiter(self) -> RateLimiter:
        return self.server.limiter

    @contextlib.contextmanager
    def admission(self, client: str = "", rate_class: str = ""):
        """A request slot for the request's work (`RequestSlots`: per-client share, one kept
        for polling), or 503 + Retry-After."""
        server = self.server
        self._take_slot(client, rate_class == "poll")
        server.counters.add("admitted")
        try:
            yield
        finally:
            if self._slot is not None:
                server.request_slots.release(client)
                self._slot = None

    def _take_slot(self, client: str, poll: bool) -> None:
        server = self.server
        why = server.request_slots.acquire(client, poll, server.web.admission_wait_ms / 1000)
        if why:
            server.counters.add("rejected")
            if why == "client":
                server.counters.add("rejected_per_client")
            raise HttpError(503, "busy", "the server is busy; try again shortly"
                            if why == "full" else "this client already has its share of "
                            "the server's request slots; try again shortly",
                            {"Retry-After": "1"}, close=True)
        self._slot = (client, poll)

    def read_outside_slot(self, body: BodyReader, seconds: float) -> None:
        """Read a small body whole with the request slot let go (all of it within `seconds`:
        408 after), then take a slot again for the handler (503 when none frees up)."""
        client, poll = self._slot
        self.server.request_slots.release(client)
        self._slot = None
        body.prefetch(seconds)
        self._take_slot(client, poll)

    def frame_body(self, limit: int, key: str = "media.max_upload_mb") -> BodyReader | None:
        """The framing rules, before a byte of the body is read: Transfer-Encoding 501 (411
        without a length), a duplicate or non-numeric Content-Length 400, over `limit` 413."""
        length = self._declared_length()
        if length is None:
            return None
        if length > limit:
            raise HttpError(413, "payload_too_large", f"the body ({length} bytes) is larger "
                            f"than {key} allows ({limit} bytes)", close=True)
        return self._body_reader(length)

    def _declared_length(self) -> int | None:
        if self.headers is None:
            raise HttpError(400, "bad_request", "no request head", close=True)
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get_all("Transfer-Encoding"):
            if lengths:
                raise HttpError(501, "not_implemented", "Transfer-Encoding is not supported; "
                                "send the body with a Content-Length only", close=True)
            raise HttpError(411, "length_required", "Transfer-Encoding is not supported; "
                            "send a Content-Length", close=True)
        if not lengths:
            return None
        if len(lengths) > 1:
            raise HttpError(400, "bad_request", "more than one Content-Length", close=True)
        if not _LENGTH.fullmatch(lengths[0].strip()):
            raise HttpError(400, "bad_request", "Content-Length must be a number of bytes",
                            close=True)
        return int(lengths[0].strip())

    def _body_reader(self, length: int) -> BodyReader:
        return BodyReader(self._buffered, self._stream, length, self.server.web,
                          on_first_read=self._send_continue if self._expect_continue else None)

    def _body_unread(self) -> bool:
        body = self._request.body if self._request else None
        if body is not None:
            return not body.complete
        try:
            return bool(self._declared_length())
        except HttpError:
            return True  # broken framing: where the request ends is unknown

    def _respond(self, response: Response) -> None:
        if self._body_unread():
            self.close_connection = True
            self._linger = True
        if response.status == 503 or self.server.closing:
            self.close_connection = True  # shed connections under overload
        self._send(response)

    # ---- writing -----------------------------------------------------------------------
    def _send(self, response: Response) -> None:
        web = self.server.web
        if self.request_version == "HTTP/0.9":  # no status line to send it in
            self.close_connection = True
            return
        body = b"" if self.command == "HEAD" else response.body
        self.connection.settimeout(web.request_timeout_seconds)  # the whole write
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(response.content_length))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            if self.request_version == "HTTP/1.0":
                self.send_header("Connection", "keep-alive")
            self.send_header("Keep-Alive", f"timeout={max(1, int(web.keepalive_idle_sec))}")
        self._status = response.status
        self.server.counters.count_status(response.status,
                                          response.route_class)
        try:
            self._headers_buffer.append(b"\r\n")
            if len(body) <= READ_BUFFER:  # one write: head and body in one segment
                self._headers_buffer.append(body)
                body = b""
            self.flush_headers()
            if body:
                self.wfile.write(body)
            if response.stream is not None and self.command != "HEAD":
                self._send_stream(response)
        finally:
            close = getattr(response.stream, "close", None)
            if close is not None:  # a body not sent (HEAD, a broken write) still lets go
                close()
            self._log_access(response.status, response.content_length)

    def _send_stream(self, response: Response) -> None:
        """Write a streamed body; if it fails or does not add up to its Content-Length the
        client must not take it for complete: the connection is cut without a linger."""
        sent = 0
        chunks = iter(response.stream)
        try:
            for chunk in chunks:
                sent += len(chunk)
                if sent > response.length:
                    break
                self.wfile.write(chunk)
        except CLIENT_GONE:
            raise  # the client left: handled like any other broken write
        except OSError as exc:  # the source failed (a file vanished)
            log.error("streamed answer to %s broken after %d of %d bytes: %s",
                      self.client_address[0], sent, response.length, exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if sent != response.length:
            log.error("streamed answer to %s cut: %d of %d bytes", self.client_address[0],
                      sent, response.length)
            self.close_connection = True
            self._linger = False
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_error(self, exc: HttpError) -> None:
        response = envelope_error(exc.status, exc.code, exc.message)
        response.headers.update(exc.headers)
        if exc.close:
            self.close_connection = True
            self._linger = True
        self._send(response)

    def send_error(self, code, message=None, explain=None) -> None:
        """The stdlib's own refusals (request line, head size, version) as envelopes."""
        if code == 431:
            message = (f"request header fields too large (at most {MAX_HEADER_FIELDS} fields, "
                       f"{MAX_HEADER_LINE // 1024} KiB a line, {MAX_HEAD_BYTES // 1024} KiB "
                       "in all)")
        elif code == 414:
            message = f"request line longer than {MAX_REQUEST_LINE // 1024} KiB"
        self._send_error(HttpError(code, STATUS_CODES.get(code, "bad_request"),
                                   message or self.responses.get(code, ("error",))[0],
                                   close=True))

    def _linger_close(self) -> None:
        """Close without resetting the answer away: stop sending, then read and discard what
        the client still sends, the declared rest of a body no larger than the upload limit
        under the body deadlines, anything else for at most `web.linger_sec`."""
        counters, stream = self.server.counters, self._stream
        before = stream.received
        try:
            self.connection.shutdown(socket.SHUT_WR)
            body = self._drainable()
            if body is not None:
                while body.read(READ_BUFFER):
                    pass
            elif not (self._request and self._request.body and self._request.body.failed):
                stream.deadline = time.monotonic() + self.server.web.linger_sec
                while self._buffered.read1(READ_BUFFER):
                    pass
        except (HttpError, OSError):
            pass
        counters.add("drained_bytes", stream.received - before)

    def _drainable(self) -> BodyReader | None:
        if self._expect_continue:  # the client waits for our word before it sends the body
            return None
        body = self._request.body if self._request else None
        if body is None:
            try:
                length = self._declared_length()
            except HttpError:
                return None
            body = self._body_reader(length) if length else None
        if body is None or body.failed or body.length > self.server.api.body_limit()[0]:
            return None
        return body

    # ---- logging -----------------------------------------------------------------------
    def log_message(self, format, *args) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    def _log_access(self, status: int, size: int) -> None:
        """One INFO line per request that got past the rate limiter, except what an open
        dashboard does all day: polling (only counted) and successful reads of the page,
        thumbnails and the live preview (DEBUG). Refusals before the limiter (protocol
        errors, allowlist, Host, admission) and 429s are counted in `by_status` and logged at
        DEBUG: a flood must not turn into a line per request on the SD card."""
        counters = self.server.counters
        if status == 429:
            counters.add("rate_limited")
        rate_class = self._request.rate_class if self._request else ""
        if rate_class == "poll" and status < 400:
            counters.add("polls")
            return
        level = logging.INFO
        if not rate_class or status == 429 or not self.server.web.access_log or \
                (rate_class == "static" and status < 400):
            level = logging.DEBUG
        access_log.log(level, "client=%s method=%s path=%s status=%d bytes=%d ms=%.1f",
                       self.client_address[0], json.dumps(self.command or "-"),
                       json.dumps((getattr(self, "path", None) or "-")[:200]), status, size,
                       (time.monotonic() - self._started) * 1000)


class LoopServer6(LoopServer):
    """The same server on an IPv6 address: the family is a class attribute the stdlib reads
    before binding, so it gets a class of its own (setting it on LoopServer would make every
    later IPv4 bind in the process fail)."""

    address_family = socket.AF_INET6


def bind(host: str, port: int, web_cfg, api) -> LoopServer:
    """Create the server with its socket bound and listening (before privileges drop)."""
    server_class = LoopServer6 if ":" in host else LoopServer
    return server_class((host, port), web_cfg, api)
