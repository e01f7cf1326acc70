"""Access control over real sockets: token, client allowlist, Host check, cross-site guard,
no wildcard CORS, and the order in which the checks run (first failure wins)."""

from __future__ import annotations

import socket

import pytest
from conftest import Client, gif_bytes, png_bytes, wait_for
from rawhttp import connect, exchange, read_response, request_bytes

from loop.config import defaults
from loop.http.access import Access, split_host

TOKEN = "s3cret-token"


# ---- token ----------------------------------------------------------------------------------
def test_token_required_accepted_rejected(make_app):
    app = make_app(**{"web.api_token": TOKEN})
    client = Client(app.server.port)
    missing = client.post("/api/playback/pause")
    assert missing.status == 401 and missing.json["error"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.post("/api/playback/pause", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = client.post("/api/playback/pause", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401
    good = client.post("/api/playback/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status == 200 and good.data["state"] in ("paused", "idle")
    lower = client.post("/api/playback/play", headers={"Authorization": f"bearer {TOKEN}"})
    assert lower.status == 200
    # reading needs no token; the backup download does (404 until that route lands)
    assert client.get("/api/poll/status").status == 200
    assert client.get("/").status == 200
    assert client.get("/api/backup").status == 401
    assert client.get("/api/backup", headers={"Authorization": f"Bearer {TOKEN}"}).status \
        in (200, 404)
    # uploads and deletes too, before a byte of the body is read
    upload = client.post("/api/media?name=a.png", body=png_bytes())
    assert upload.status == 401
    assert client.get("/api/media").data["items"] == []


def test_no_token_configured_means_open(make_app):
    app = make_app()
    assert Client(app.server.port).post("/api/playback/pause").status == 200


# ---- allowlist ------------------------------------------------------------------------------
def test_allow_networks(make_app):
    app = make_app(**{"web.allow_networks": ["127.0.0.3/32", "10.0.0.0/8"]})
    port = app.server.port
    refused = Client(port, source="127.0.0.2").get("/api/poll/status")
    assert refused.status == 403 and refused.json["error"] == "forbidden"
    assert Client(port, source="127.0.0.3").get("/api/poll/status").status == 200


def test_allowlist_understands_ipv4_mapped_ipv6():
    web = defaults().web
    access = Access(type(web)(**dict(web.__dict__, allow_networks=("192.168.1.0/24",))))

    class Req:
        client = "::ffff:192.168.1.7"
    access.check_network(Req)  # no exception
    Req.client = "::ffff:192.168.2.7"
    with pytest.raises(Exception, match="allow_networks"):
        access.check_network(Req)


# ---- Host check -----------------------------------------------------------------------------
def _status_with_host(port, host, version="HTTP/1.1"):
    reply, _ = exchange(port, request_bytes("GET", "/api/poll/status", {"Connection": "close"},
                                            host=host, version=version))
    return reply


def test_host_check_refuses_rebinding_names(make_app):
    app = make_app(**{"web.allowed_hosts": ["loop.example.lan", "Sign.Example:8080"]})
    port = app.server.port
    name = socket.gethostname()
    for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}",
                 "[::1]", f"[::1]:{port}", name, f"{name}.local", f"{name.upper()}:{port}",
                 "loop.example.lan", "loop.example.lan.", "192.168.1.20:80", "sign.example"):
        assert _status_with_host(port, host).status == 200, host
    rebound = _status_with_host(port, "attacker.example")
    assert rebound.status == 421 and rebound.json["error"] == "forbidden"
    for host in (f"attacker.example:{port}", f"{name}.attacker.example", "localhost.evil"):
        assert _status_with_host(port, host).status == 421, host
    for host in ("", "bad host", "[::1", "127.0.0.1:port", "a:1:2"):
        assert _status_with_host(port, host).status == 400, host


def test_host_header_required_on_http11_only(make_app):
    app = make_app()
    port = app.server.port
    missing = _status_with_host(port, None)
    assert missing.status == 400 and "Host" in missing.json["message"]
    assert _status_with_host(port, None, version="HTTP/1.0").status == 200
    twice, _ = exchange(port, request_bytes("GET", "/api/poll/status", {"Host": "localhost"}),
                        close_wait=0)
    assert twice.status == 400


def test_allowed_hosts_star_disables_the_check(make_app):
    app = make_app(**{"web.allowed_hosts": ["*"]})
    assert _status_with_host(app.server.port, "anything.example").status == 200


def test_split_host():
    assert split_host("Loop.Local:8080") == ("loop.local", 8080)
    assert split_host("[fe80::1]:80") == ("fe80::1", 80)
    assert split_host("host.") == ("host", None)
    assert split_host("host:") is None
    assert split_host("ho st") is None


# ---- cross-site guard -----------------------------------------------------------------------
def test_cross_site_origin_refused_same_origin_accepted(make_app):
    app = make_app()
    port = app.server.port
    client = Client(port)
    evil = client.post("/api/playback/pause", headers={"Origin": "http://evil.example"})
    assert evil.status == 403 and evil.json["error"] == "forbidden"
    other_port = client.post("/api/playback/pause", headers={"Origin": "http://127.0.0.1:1"})
    assert other_port.status == 403
    null = client.post("/api/playback/pause", headers={"Origin": "null"})
    assert null.status == 403
    fetch_site = client.post("/api/playback/pause", headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch_site.status == 403
    same = client.post("/api/playback/pause", headers={
        "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert same.status == 200
    assert client.post("/api/playback/play").status == 200  # curl sends no Origin
    # deleting media from another site's page is what this guard is for
    item = client.upload([("x.png", png_bytes())]).data["results"][0]["item"]
    gone = client.request("DELETE", f"/api/media/{item['id']}",
                          headers={"Origin": "http://evil.example"})
    assert gone.status == 403
    assert client.get(f"/api/media/{item['id']}").status == 200
    # reading is not refused (and with no CORS header a foreign page cannot read the answer)
    read = client.get("/api/poll/status", headers={"Origin": "http://evil.example"})
    assert read.status == 200 and "Access-Control-Allow-Origin" not in read.headers


def test_default_port_origin_matches_host_without_port(make_app):
    app = make_app()
    port = app.server.port
    raw = request_bytes("POST", "/api/playback/pause", {
        "Origin": "http://loop.local", "Content-Length": 0}, host="127.0.0.1")
    assert exchange(port, raw, close_wait=0)[0].status == 403
    access = Access(defaults().web, hostname="loop")

    class Req:
        method = "POST"
        headers = None
    from email.message import Message
    Req.headers = Message()
    Req.headers["Host"] = "loop.local"
    Req.headers["Origin"] = "http://loop.local:80"
    access.check_origin(Req)  # same origin: no exception


def test_no_wildcard_cors_anywhere(make_app):
    app = make_app()
    client = Client(app.server.port)
    item = client.upload([("x.png", png_bytes())]).data["results"][0]["item"]
    for path in ("/", "/api", "/api/poll/status", "/api/media", item["thumb"],
                 f"/api/media/{item['id']}/original", "/api/nothing"):
        reply = client.get(path, headers={"Origin": "http://evil.example"})
        assert not any(k.lower().startswith("access-control-") for k in reply.headers), path
    preflight = client.request("OPTIONS", "/api/media", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"})
    assert preflight.status in (403, 405)
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_user_bytes_never_served_with_an_active_type(make_app):
    app = make_app()
    client = Client(app.server.port)
    item = client.upload([("<script>.png", png_bytes())]).data["results"][0]["item"]
    original = client.get(f"/api/media/{item['id']}/original")
    assert original.headers["Content-Type"] == "application/octet-stream"
    assert original.headers["Content-Disposition"].startswith("attachment;")
    assert "<" not in original.headers["Content-Disposition"]
    assert original.headers["X-Content-Type-Options"] == "nosniff"
    page = client.get("/")
    assert page.headers["Referrer-Policy"] and "frame-ancestors 'none'" in \
        page.headers["Content-Security-Policy"]


# ---- the order of the checks ----------------------------------------------------------------
def test_check_order_first_failure_wins(make_app):
    app = make_app(**{"web.allow_networks": ["127.0.1.0/24"],
                      "web.api_token": TOKEN, "web.rate_control_per_sec": 0.01,
                      "web.rate_control_burst": 1, "media.max_upload_mb": 1})
    port = app.server.port
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sources = (f"127.0.1.{i}" for i in range(2, 250))  # a fresh client (and bucket) each

    def status(data, source=None):
        return exchange(port, data, source=source or next(sources), close_wait=0)[0].status

    # allowlist before Host
    assert status(request_bytes("GET", "/api/poll/status", host="evil.example"),
                  source="127.0.0.2") == 403
    # Host before rate limit, token, cross-site, framing, route
    assert status(request_bytes("POST", "/nothing", {"Transfer-Encoding": "chunked",
                                                     "Origin": "http://evil.example"},
                                host="evil.example")) == 421
    # token before cross-site, framing and route
    assert status(request_bytes("POST", "/nothing", {"Transfer-Encoding": "chunked",
                                                     "Origin": "http://evil.example"})) == 401
    # cross-site before framing and route
    assert status(request_bytes("POST", "/nothing", dict(auth, **{
        "Transfer-Encoding": "chunked", "Origin": "http://evil.example"}))) == 403
    # framing before route: 411/501/400/413 on a path that does not exist
    assert status(request_bytes("POST", "/nothing", dict(
        auth, **{"Transfer-Encoding": "chunked"}))) == 411
    assert status(request_bytes("POST", "/api/nothing", dict(
        auth, **{"Content-Length": 2 * 1024 * 1024}))) == 413
    assert status(request_bytes("POST", "/api/nothing", [
        *auth.items(), ("Content-Length", "1"), ("Content-Length", "1")], b"x")) == 400
    # route before the handler: 405 even with a body the handler would refuse
    assert status(request_bytes("DELETE", "/api/loop", dict(auth, **{"Content-Length": 5}),
                                b"{nope")) == 405
    # rate limit before token: the control bucket (burst 1) is spent by one request
    client = Client(port, source=next(sources))
    assert client.post("/api/playback/pause", headers=auth).status == 200
    assert client.post("/api/playback/pause").status == 429  # not 401


def test_admission_comes_after_host_and_before_rate_limit(make_app):
    app = make_app(**{"web.max_concurrent_requests": 1, "web.admission_wait_ms": 50,
                      "web.body_grace_sec": 60, "web.rate_poll_per_sec": 0.01,
                      "web.rate_poll_burst": 1})
    port = app.server.port
    body = gif_bytes()  # an upload holds its slot while its body comes (a JSON body does not)
    holder = connect(port, "127.0.0.2")
    holder.sendall(request_bytes("POST", "/api/media?name=a.gif",
                                 {"Content-Length": len(body)}))
    wait_for(lambda: app.server.counters.as_dict()["admitted"] == 1)
    # a bad Host is refused without waiting for a slot
    assert _status_with_host(port, "evil.example").status == 421
    # while busy, 503 comes before the rate limit, and does not spend the client's token
    client = Client(port, source="127.0.0.3")
    assert client.get("/api/poll/status").status == 503
    holder.sendall(body)
    assert read_response(holder).status == 201
    holder.close()
    assert client.get("/api/poll/status").status == 200
    assert client.get("/api/poll/status").status == 429
