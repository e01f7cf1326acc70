"""Fair admission (issue 16, items 2 and 3): connections a client holds without using them
yield to new clients, and slow requests from one client hold neither every request slot nor
every processing slot. An uninvolved client's polling stays answered (a generous liveness
bound, no performance threshold)."""

from __future__ import annotations

import json
import time

import pytest
from conftest import Client, gif_bytes, wait_for
from rawhttp import connect, read_response, request_bytes


def open_idle(port, source):
    """A kept-alive connection that served one request and now waits."""
    sock = connect(port, source)
    sock.sendall(request_bytes("GET", "/api/poll/status"))
    assert read_response(sock).status == 200
    return sock


def polls_answered(port, source, count=20, within=30.0) -> list[int]:
    """Statuses of `count` polls from one client on fresh connections."""
    client = Client(port, source=source)
    deadline = time.monotonic() + within
    statuses = []
    for _ in range(count):
        assert time.monotonic() < deadline, statuses
        statuses.append(client.get("/api/poll/status", timeout=10).status)
    return statuses


def test_idle_keepalive_connections_yield_to_a_new_client(make_app):
    app = make_app(**{"web.max_connections": 16, "web.max_connections_per_client": 4,
                      "web.keepalive_idle_sec": 120})
    port = app.server.port
    held = [open_idle(port, f"127.0.0.{c}") for c in (2, 3, 4, 5) for _ in range(4)]
    wait_for(lambda: app.server.counters.as_dict()["connections_accepted"] >= 16)
    assert polls_answered(port, "127.0.0.9") == [200] * 20
    counters = app.server.counters.as_dict()
    assert counters["idle_evicted"] >= 1 and counters["connections_rejected"] == 0
    assert counters["connections_open"] <= 16
    for sock in held:
        sock.close()


def test_connections_that_never_send_yield_too(make_app):
    app = make_app(**{"web.max_connections": 16, "web.max_connections_per_client": 4,
                      "web.header_timeout_sec": 120})
    port = app.server.port
    held = [connect(port, f"127.0.0.{c}") for c in (2, 3, 4, 5) for _ in range(4)]
    wait_for(lambda: app.server.counters.as_dict()["connections_accepted"] >= 16)
    assert polls_answered(port, "127.0.0.9") == [200] * 20
    for sock in held:
        sock.close()


@pytest.mark.timeout(120)
def test_one_client_dribbling_bodies_does_not_starve_the_others(make_app):
    """The attack of the issue: 3 uploads declaring 100 MB and 6 schedule PUTs of 64 KiB,
    all from one address, all sending slowly (here: not at all, with the rate rule's grace
    long enough to hold them)."""
    app = make_app(**{"web.body_grace_sec": 300, "web.request_timeout_seconds": 300,
                      "web.header_timeout_sec": 5})
    port = app.server.port
    attacker = "127.0.0.2"
    held = []
    for _ in range(3):
        sock = connect(port, attacker)
        sock.sendall(request_bytes("POST", "/api/media?name=x.mp4",
                                   {"Content-Length": 100 * 1024 * 1024}) + b"\0" * 100)
        held.append(sock)
    body = json.dumps({"rules": []}).encode().ljust(64 * 1024)
    for _ in range(6):
        sock = connect(port, attacker)
        sock.sendall(request_bytes("PUT", "/api/schedule", {"Content-Length": len(body)})
                     + body[:100])
        held.append(sock)
    time.sleep(0.5)
    # the attacker holds what its share allows, no more
    assert polls_answered(port, "127.0.0.3") == [200] * 20
    upload = Client(port, source="127.0.0.4").post("/api/media?name=ok.gif", body=gif_bytes())
    assert upload.status == 201, upload
    put = Client(port, source="127.0.0.5").put("/api/schedule", json_body={"rules": []})
    assert put.status == 200, put
    # a schedule PUT that dribbles is cut by its own short deadline (408), not held for 300 s
    started = time.monotonic()
    reply = read_response(held[3])
    assert reply.status == 408 and time.monotonic() - started < 30
    for sock in held:
        sock.close()
