"""The hardened HTTP front over real sockets: keep-alive, connection caps, admission,
deadlines, framing, Expect: 100-continue, rate limits, counters, access log, client resets.

Distinct clients bind distinct loopback sources (127.0.0.2, 127.0.0.3, ...). Every time limit
is shrunk through its config key; bounds in assertions are generous liveness bounds.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import psutil
import pytest
from conftest import Client, gif_bytes, wait_for, write_config
from rawhttp import (
    closed_by_server,
    connect,
    exchange,
    read_response,
    request_bytes,
)

from loop import config
from loop.http.ratelimit import RateLimiter, rate_classes

MiB = 1024 * 1024


def counters(app) -> dict:
    return app.server.counters.as_dict()


def hold_slot(port, source):
    """A request that takes an admission slot and keeps it: the head of an upload whose body
    does not come (yet); a small JSON body would not (it is read with the slot let go).
    Returns the socket and the body to finish it with (a GIF: 201)."""
    body = gif_bytes(colours=((int(source.rsplit(".", 1)[1]), 0, 0),))
    sock = connect(port, source)
    sock.sendall(request_bytes("POST", "/api/media?name=h.gif", {"Content-Length": len(body)}))
    return sock, body


def reset(sock) -> None:
    """Close with RST (SO_LINGER 0), the way a phone dropping off Wi-Fi looks to the server."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---- keep-alive and connection caps -----------------------------------------------------------
def test_keepalive_serves_several_requests_on_one_connection(make_app):
    app = make_app(**{"web.keepalive_idle_sec": 30})
    before = counters(app)["connections_accepted"]
    conn = http.client.HTTPConnection("127.0.0.1", app.server.port, timeout=10)
    for path in ("/api/poll/status", "/api/poll/progress", "/api/poll/health", "/api", "/"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert resp.getheader("Connection") != "close"
        assert resp.getheader("Keep-Alive") == "timeout=30"
    conn.close()
    assert counters(app)["connections_accepted"] == before + 1


def test_idle_keepalive_connection_is_closed(make_app):
    app = make_app(**{"web.keepalive_idle_sec": 0.3, "web.header_timeout_sec": 60})
    with connect(app.server.port) as sock:
        sock.sendall(request_bytes("GET", "/api/poll/status"))
        assert read_response(sock).status == 200
        assert closed_by_server(sock, 10)
    wait_for(lambda: counters(app)["idle_closed"] == 1)


def _open_idle(port, source):
    """A kept-alive connection that has served one request and now waits."""
    sock = connect(port, source)
    sock.sendall(request_bytes("GET", "/api/poll/status"))
    assert read_response(sock).status == 200
    return sock


def _refused_at_connect(port, source) -> bool:
    """The short 503 of a connection cap arrives without sending anything."""
    with connect(port, source) as sock:
        reply = read_response(sock)
        assert reply.status == 503 and reply.headers["retry-after"] == "1"
        assert reply.json["error"] == "busy" and reply.json["success"] is False
        return closed_by_server(sock, 5)


def test_per_client_connection_cap(make_app):
    app = make_app(**{"web.max_connections_per_client": 2, "web.keepalive_idle_sec": 60})
    port = app.server.port
    held = [_open_idle(port, "127.0.0.2") for _ in range(2)]
    assert _refused_at_connect(port, "127.0.0.2")
    assert counters(app)["connections_rejected"] == 1
    # another client is not affected
    assert Client(port, source="127.0.0.3").get("/api/poll/status").status == 200
    # a freed connection is given back
    held.pop().close()
    wait_for(lambda: counters(app)["connections_open"] == 1)
    assert Client(port, source="127.0.0.2").get("/api/poll/status").status == 200
    for sock in held:
        sock.close()


def _open_busy(port, source):
    """A connection inside a request: part of its head sent (not idle, so never closed to
    make room; the header deadline bounds it)."""
    sock = connect(port, source)
    sock.sendall(b"GET /api/poll/status HTTP/1.1\r\n")
    return sock


def test_overall_connection_cap(make_app):
    app = make_app(**{"web.max_connections": 2, "web.keepalive_idle_sec": 60})
    port = app.server.port
    held = [_open_busy(port, "127.0.0.2"), _open_busy(port, "127.0.0.3")]
    wait_for(lambda: counters(app)["connections_open"] == 2)
    # bytes sent before their threads ran: never counted idle (next test), so never evicted
    assert _refused_at_connect(port, "127.0.0.4")
    for sock in held:
        sock.close()
    wait_for(lambda: counters(app)["connections_open"] == 0)
    assert Client(port, source="127.0.0.4").get("/api/poll/status").status == 200


def test_a_request_already_sent_is_never_idle(make_app):
    """A connection whose request arrived before its thread ran is never offered up to make
    room for a newcomer, not even for the moment before its thread reads (under load that
    moment let a third client in past `web.max_connections`)."""
    app = make_app(**{"web.max_connections": 2, "web.keepalive_idle_sec": 60})
    server = app.server
    offered, sent = [], threading.Event()
    real_idle, real_process = server.idle, server.process_request

    def record_idle(sock, key):
        offered.append(sock.getpeername())
        real_idle(sock, key)

    def process_after_send(request, client_address):
        assert sent.wait(10)  # the accept loop waits until the request is in the kernel
        real_process(request, client_address)

    server.idle, server.process_request = record_idle, process_after_send
    with connect(server.port, "127.0.0.2") as sock:
        sock.sendall(request_bytes("GET", "/api/poll/status"))
        sent.set()
        assert read_response(sock).status == 200
        mine = sock.getsockname()
        # after its answer the kept-alive connection waits, and is idle from then on
        wait_for(lambda: offered.count(mine) == 1)


# ---- admission ------------------------------------------------------------------------------
def test_saturation_exactly_the_overflow_gets_503(make_app):
    # 3 slots, the last kept for polling: two uploads fill what other requests may use
    app = make_app(**{"web.max_concurrent_requests": 3, "web.admission_wait_ms": 200,
                      "web.body_grace_sec": 60})
    port = app.server.port
    holders = [hold_slot(port, f"127.0.0.{i}") for i in (2, 3)]
    wait_for(lambda: counters(app)["admitted"] == 2)
    assert Client(port, source="127.0.0.4").get("/api/poll/status").status == 200
    overflow = Client(port, source="127.0.0.5").put("/api/loop", json_body={"items": []})
    assert overflow.status == 503
    assert overflow.headers["Retry-After"] == "1"
    assert overflow.json["error"] == "busy" and overflow.json["data"] is None
    assert overflow.headers["Connection"] == "close"
    for sock, body in holders:  # the held requests finish normally
        sock.sendall(body)
        assert read_response(sock).status == 201
        sock.close()
    assert counters(app)["rejected"] == 1 and counters(app)["admitted"] == 3
    assert Client(port, source="127.0.0.5").get("/api/poll/status").status == 200


def test_client_sending_20_mib_reads_the_503(make_app):
    # linger_sec 0: only reading the declared body away can save the answer
    app = make_app(**{"web.max_concurrent_requests": 1, "web.admission_wait_ms": 100,
                      "web.body_grace_sec": 60, "web.linger_sec": 0})
    port = app.server.port
    holder, body = hold_slot(port, "127.0.0.2")
    wait_for(lambda: counters(app)["admitted"] == 1)
    # http.client sends the whole body before it reads anything: it sees the 503 only if
    # the server reads the body away instead of closing on it (which would reset it)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=("127.0.0.3", 0))
    conn.request("POST", "/api/media?name=big.gif", body=b"\0" * (20 * MiB))
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    conn.close()
    assert resp.status == 503 and resp.getheader("Retry-After") == "1"
    assert reply["error"] == "busy"
    wait_for(lambda: counters(app)["drained_bytes"] >= 20 * MiB - 64 * 1024)
    holder.sendall(body)
    assert read_response(holder).status == 201
    holder.close()


# ---- deadlines ------------------------------------------------------------------------------
def _trickle(sock, data: bytes, every: float, within: float) -> bool:
    """Send `data` a byte at a time; True when the server closed the connection first."""
    deadline = time.monotonic() + within
    for byte in data:
        if time.monotonic() > deadline:
            return False
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        if closed_by_server(sock, every):
            return True
    return closed_by_server(sock, max(0.0, deadline - time.monotonic()))


def test_slowloris_head_is_cut_by_a_deadline_across_reads(make_app):
    # each byte comes well within any per-read timeout; only a deadline can cut this client
    app = make_app(**{"web.header_timeout_sec": 0.5})
    port = app.server.port
    with connect(port, "127.0.0.2") as sock:
        head = b"GET /api/poll/status HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 1000
        result = {}
        poller = threading.Thread(target=lambda: result.update(
            reply=Client(port, source="127.0.0.3").get("/api/poll/status")))
        poller.start()
        assert _trickle(sock, head, every=0.05, within=15)
        poller.join(15)
    assert result["reply"].status == 200
    assert counters(app)["timeouts"] >= 1


def test_slow_body_is_cut_by_the_minimum_rate(make_app):
    app = make_app(**{"web.min_body_rate_kbps": 1, "web.body_grace_sec": 0.3,
                      "web.request_timeout_seconds": 600})
    port = app.server.port
    with connect(port, "127.0.0.2") as sock:
        sock.sendall(request_bytes("PUT", "/api/loop", {"Content-Length": 10000}))
        assert _trickle(sock, b'{"items": []}' + b" " * 5000, every=0.05, within=15)
        assert Client(port, source="127.0.0.3").get("/api/poll/status").status == 200
    assert counters(app)["by_status"].get("408") == 1


def test_body_must_finish_within_the_request_timeout(make_app):
    # fast enough for any rate rule (no rate rule), but never finishing
    app = make_app(**{"web.min_body_rate_kbps": 0, "web.request_timeout_seconds": 0.5})
    with connect(app.server.port, "127.0.0.2") as sock:
        sock.sendall(request_bytes("POST", "/api/media?name=x.gif",
                                   {"Content-Length": 100000}))
        assert _trickle(sock, gif_bytes() * 100, every=0.05, within=15)
    assert counters(app)["by_status"].get("408") == 1


def test_200_slow_connections_from_one_address_do_not_stop_another(make_app):
    app = make_app(**{"web.max_connections_per_client": 8, "web.max_connections": 32,
                      "web.header_timeout_sec": 60})
    port = app.server.port
    threads_before = threading.active_count()
    rss_before = psutil.Process().memory_info().rss
    slow = []
    try:
        for _ in range(200):
            try:
                sock = connect(port, "127.0.0.2", timeout=5)
                sock.sendall(b"GET /api/poll/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                slow.append(sock)
            except OSError:
                pass  # a refused connection may be reset already: that is fine
        wait_for(lambda: counters(app)["connections_rejected"] >= 150, timeout=20)
        started = time.monotonic()
        reply = Client(port, source="127.0.0.3").get("/api/poll/status", timeout=10)
        assert reply.status == 200
        assert time.monotonic() - started < 10
        assert counters(app)["connections_open"] <= 8 + 1
        assert threading.active_count() <= threads_before + 32 + 2
        # loose: proves the slow heads are not piling up, nothing about efficiency
        assert psutil.Process().memory_info().rss - rss_before < 64 * MiB
    finally:
        for sock in slow:
            sock.close()


# ---- framing --------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, status", [
    ({"Transfer-Encoding": "chunked", "Content-Length": "5"}, 501),
    ({"Transfer-Encoding": "chunked"}, 411),
    ([("Content-Length", "2"), ("Content-Length", "2")], 400),
    ([("Content-Length", "2"), ("Content-Length", "3")], 400),
    ({"Content-Length": "2, 3"}, 400),
    ({"Content-Length": "abc"}, 400),
    ({"Content-Length": "-1"}, 400),
    ({"Content-Length": "+2"}, 400),
    ({"Content-Length": "\u0662"}, 400),  # an Arabic-Indic two: str.isdigit() says yes
])
def test_framing_errors_answer_and_close(make_app, headers, status):
    app = make_app()
    data = request_bytes("PUT", "/api/loop", headers, body=b"{}")
    reply, closed = exchange(app.server.port, data)
    assert reply.status == status, reply
    assert reply.json["success"] is False
    assert reply.headers["connection"] == "close" and closed


def test_upload_without_length_is_411(make_app):
    app = make_app()
    reply, _ = exchange(app.server.port, request_bytes("POST", "/api/media"), close_wait=0)
    assert reply.status == 411 and reply.json["error"] == "length_required"


def test_over_the_upload_limit_is_413_before_the_body(make_app):
    app = make_app(**{"media.max_upload_mb": 1, "web.linger_sec": 0.2})
    with connect(app.server.port) as sock:
        # the head only: the answer must not wait for a body that never comes
        sock.sendall(request_bytes("POST", "/api/media", {"Content-Length": 50 * MiB}))
        reply = read_response(sock)
        assert reply.status == 413 and reply.json["error"] == "payload_too_large"
        assert closed_by_server(sock, 10)


@pytest.mark.parametrize("data, status", [
    (request_bytes("GET", "/api/poll/status", [(f"X-H{i}", "v") for i in range(80)]), 431),
    (request_bytes("GET", "/api/poll/status", {"X-Big": "v" * 9000}), 431),
    (request_bytes("GET", "/api/poll/status", [(f"X-B{i}", "v" * 7000) for i in range(6)]),
     431),
    (request_bytes("GET", "/api/poll/status?" + "q" * 9000), 414),
])
def test_header_limits(make_app, data, status):
    app = make_app()
    reply, closed = exchange(app.server.port, data)
    assert reply.status == status and reply.json["success"] is False
    assert closed


# ---- Expect: 100-continue -------------------------------------------------------------------
def test_expect_continue_is_answered_only_after_every_check(make_app):
    app = make_app(**{"media.max_upload_mb": 1, "web.api_token": "s3cret",
                      "web.linger_sec": 0.2})
    port = app.server.port
    body = json.dumps({"items": []}).encode()
    auth = {"Authorization": "Bearer s3cret"}
    with connect(port) as sock:
        sock.sendall(request_bytes("PUT", "/api/loop", dict(
            auth, **{"Content-Length": len(body), "Expect": "100-continue"})))
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        assert read_response(sock).status == 200
    # too large, no token, no such route: a final answer, no 100, and no body read
    for headers, path, status in (
            (dict(auth, **{"Content-Length": 2 * MiB}), "/api/media", 413),
            ({"Content-Length": 10}, "/api/media", 401),
            (dict(auth, **{"Content-Length": 10}), "/api/nothing", 404)):
        with connect(port) as sock:
            sock.sendall(request_bytes("POST", path, dict(headers, Expect="100-continue")))
            reply = read_response(sock)
            assert reply.status == status and reply.interim == []
    assert counters(app)["continues"] == 1


def test_curl_gets_413_without_sending_the_file(make_app, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("curl is missing under CI; .ci/run must install it")
        pytest.skip("curl is not installed on this machine")
    app = make_app(**{"media.max_upload_mb": 1, "web.linger_sec": 5})
    big = tmp_path / "big.gif"
    big.write_bytes(b"\0" * (4 * MiB))
    before = counters(app)
    proc = subprocess.run(
        [curl, "-sS", "-o", "-", "-w", "%{http_code}", "--data-binary", f"@{big}",
         "-H", "Expect: 100-continue", f"http://127.0.0.1:{app.server.port}/api/media"],
        capture_output=True, timeout=60)
    assert proc.stdout.endswith(b"413"), proc
    assert json.loads(proc.stdout[:-3])["error"] == "payload_too_large"
    # the connection is over and the server took in the head only, none of the 4 MiB
    wait_for(lambda: counters(app)["closed"] == before["closed"] + 1)
    after = counters(app)
    assert after["bytes_in"] - before["bytes_in"] < 4096
    assert after["drained_bytes"] == before["drained_bytes"]
    assert after["continues"] == 0


# ---- rate limits ----------------------------------------------------------------------------
def test_rate_limit_429_then_recovery_after_retry_after(make_app):
    app = make_app(**{"web.rate_poll_per_sec": 1, "web.rate_poll_burst": 3})
    port = app.server.port
    client = Client(port, source="127.0.0.2")
    # the burst, then 429 (however slowly this machine sends them, it outpaces 1/s)
    statuses = []
    while 429 not in statuses and len(statuses) < 50:
        limited = client.get("/api/poll/status")
        statuses.append(limited.status)
    assert statuses[:3] == [200] * 3 and statuses[-1] == 429
    assert limited.json["error"] == "rate_limited"
    wait = int(limited.headers["Retry-After"])
    assert wait == 1  # 1 token/s: due within a second, rounded up
    # another client and another class are not affected
    assert Client(port, source="127.0.0.3").get("/api/poll/status").status == 200
    assert client.get("/").status == 200
    time.sleep(wait)
    assert client.get("/api/poll/status").status == 200
    assert counters(app)["rate_limited"] == 1


def test_default_rates_never_bother_a_dashboard_but_stop_a_curl_loop():
    clock = [0.0]
    limiter = RateLimiter(rate_classes(config.defaults().web), clock=lambda: clock[0])
    refused = 0
    # one hour of a dashboard: status every 2 s, progress every 1 s, health every 10 s,
    # a page (re)load with 200 thumbnails every 10 minutes, a person clicking in bursts
    for tick in range(3600 * 10):  # 0.1 s steps
        clock[0] = tick / 10
        second, step = divmod(tick, 10)
        calls = []
        if step == 0:
            calls.append("poll")  # progress
            if second % 2 == 0:
                calls.append("poll")  # status
            if second % 10 == 0:
                calls.append("poll")  # health
            if second % 600 == 0:
                calls += ["static"] * 203 + ["poll"] * 4  # page, thumbnails, lists
            if second % 30 == 5:
                calls += ["control"] * 8 + ["poll"] * 2  # clicks and the views they refresh
            if second % 300 == 7:
                calls += ["upload"] * 5  # dropping a few files
        refused += sum(limiter.check("dashboard", cls) > 0 for cls in calls)
    assert refused == 0
    # a tight curl loop: a thousand requests within a second
    for cls in ("poll", "control", "upload"):
        clock[0] += 100
        loop = [limiter.check("curl", cls) > 0 for _ in range(1000)]
        assert sum(loop) > 900, cls


def test_limiter_comes_from_config_and_evicts_idle_buckets(make_app):
    app = make_app(**{"web.rate_control_per_sec": 7})
    limiter = app.server.limiter
    assert limiter._classes == rate_classes(app.cfg.web)
    Client(app.server.port).get("/api/poll/status")
    assert len(limiter) == 1
    wait_for(lambda: limiter.evict_idle() == 1 or len(limiter) == 0)
    assert len(limiter) == 0


# ---- counters and logging -------------------------------------------------------------------
def test_health_shows_admitted_rejected_closed(make_app):
    app = make_app()
    client = Client(app.server.port)
    client.get("/api/poll/status")
    wait_for(lambda: counters(app)["closed"] >= 1)
    http_check = client.get("/api/poll/health").data["checks"]["http"]
    for key in ("admitted", "rejected", "closed", "connections_open", "connections_rejected",
                "rate_limited", "timeouts", "idle_closed", "requests", "by_status"):
        assert key in http_check, key
    assert http_check["admitted"] >= 2 and http_check["closed"] >= 1


def test_access_log_one_line_per_request_polling_counted(make_app, caplog):
    app = make_app()
    client = Client(app.server.port)
    with caplog.at_level(logging.INFO, logger="loop.access"):
        for _ in range(5):
            client.get("/api/poll/status")
            client.get("/api/display/frame.png")  # an open dashboard's live preview
        client.get("/")
        client.post("/api/playback/pause")
        client.get("/api/nothing")
        # refused before the rate limiter: counted, not a line each
        client.get("/api/poll/status", headers={"Host": "evil.example"})
        exchange(app.server.port, request_bytes("GET", "/x", {"X-Big": "v" * 9000}))
        wait_for(lambda: len([r for r in caplog.records if r.name == "loop.access"]) >= 2)
    lines = [r.getMessage() for r in caplog.records
             if r.name == "loop.access" and r.levelno >= logging.INFO]
    assert len(lines) == 2, lines
    # a line is logged once the answer is out, so the next request (a new connection, its
    # own thread) may log first on a busy machine: the lines in either order
    pause, nothing = sorted(lines, key=lambda line: "/api/nothing" in line)
    assert 'method="POST" path="/api/playback/pause" status=200' in pause
    assert pause.startswith("client=127.0.0.1 ") and " ms=" in pause
    assert 'path="/api/nothing" status=404' in nothing
    wait_for(lambda: counters(app)["polls"] == 5)
    assert counters(app)["by_status"]["421"] == 1 and counters(app)["by_status"]["431"] == 1


def test_no_tracebacks_when_clients_reset(tmp_path, services):
    path = write_config(tmp_path / "config.json", tmp_path / "data",
                        web={"body_grace_sec": 30, "keepalive_idle_sec": 30})
    service = services(path)
    port = service.port
    payload = gif_bytes() * 2000
    for _ in range(3):
        # reset before the head is complete
        sock = connect(port)
        sock.sendall(b"GET /api/poll/st")
        reset(sock)
        # reset in the middle of an upload body
        sock = connect(port)
        sock.sendall(request_bytes("POST", "/api/media?name=a.gif",
                                   {"Content-Length": len(payload)}) + payload[:50000])
        time.sleep(0.05)
        reset(sock)
        # reset in the middle of a JSON body
        sock = connect(port)
        sock.sendall(request_bytes("PUT", "/api/loop", {"Content-Length": 100}) + b'{"it')
        time.sleep(0.05)
        reset(sock)
        # reset instead of reading a response (a big one) and on a kept-alive connection
        sock = connect(port)
        sock.sendall(request_bytes("GET", "/api/display/frame.png?scale=16"))
        reset(sock)
        sock = connect(port)
        sock.sendall(request_bytes("GET", "/api/poll/status"))
        read_response(sock)
        reset(sock)
    assert service.client.get("/api/poll/status").status == 200
    time.sleep(0.5)
    assert service.terminate() == 0
    assert "Traceback" not in service.stderr()
