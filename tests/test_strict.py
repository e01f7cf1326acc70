"""Issue 16, items 4-8: restore validation is linear and capped, the job table is bounded,
request heads are parsed strictly (RFC 9112), deep JSON is a 400, and one rule cleans names
everywhere (upload, PATCH, restore)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from conftest import Client, gif_bytes, png_bytes, wait_for
from rawhttp import closed_by_server, connect, exchange, read_response, request_bytes

from loop.library import backup, jobs
from loop.library.jobs import Jobs


# ---- item 4: restore validation --------------------------------------------------------------
class CountingId(str):
    """An item id that counts how often it is compared: membership tests in a list compare
    against every element, in a set against one."""
    comparisons = 0

    def __eq__(self, other):
        CountingId.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def index_doc(count: int) -> dict:
    ids = [f"{n:016x}" for n in range(count)]
    return {"format": backup.FORMAT_NAME, "version": backup.FORMAT_VERSION,
            "items": [{"id": CountingId(i)} for i in ids],
            "loop": [CountingId(i) for i in ids], "settings": {}}


def test_restore_index_check_is_linear():
    count = 3000
    doc = index_doc(count)
    CountingId.comparisons = 0
    checked = backup.check_index(doc)
    assert len(checked["ids"]) == count
    # a list lookup per loop entry would be ~count**2 / 2 = 4.5 million comparisons
    assert CountingId.comparisons <= 4 * count


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_restore_over_the_item_cap_is_refused_and_changes_nothing(app, client):
    client.post("/api/media?name=keep.gif", body=gif_bytes())
    before = client.get("/api/media").data
    ids = [f"{n:016x}" for n in range(backup.MAX_ITEMS + 1)]
    index = {"format": backup.FORMAT_NAME, "version": backup.FORMAT_VERSION,
             "items": [{"id": i} for i in ids], "loop": ids, "settings": {}}
    archive = tar_bytes([("index.json", json.dumps(index).encode())])
    reply = client.post("/api/restore", body=archive,
                        headers={"Content-Type": "application/x-tar"}, timeout=60)
    assert reply.status == 422, reply
    assert f"at most {backup.MAX_ITEMS}" in reply.json["message"]
    assert client.get("/api/media").data == before


def test_restore_with_a_deeply_nested_index_is_a_clear_refusal(app, client):
    archive = tar_bytes([("index.json", b"[" * 60_000 + b"]" * 60_000)])
    reply = client.post("/api/restore", body=archive,
                        headers={"Content-Type": "application/x-tar"})
    assert reply.status == 422, reply
    assert "nested" in reply.json["message"]


# ---- item 5: the job table ---------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_job_table_is_bounded_by_count_oldest_finished_first():
    clock = Clock()
    table = Jobs(keep_sec=3600, clock=clock)
    running = table.create("still receiving")
    for n in range(jobs.MAX_FINISHED * 5):
        clock.now += 1
        job = table.create(f"f{n}")
        table.update(job, stage="failed", error="refused")
    assert len(table) == jobs.MAX_FINISHED + 1
    listed = table.list()
    assert len(listed) == jobs.PROGRESS_LIMIT
    assert listed[0]["id"] == running.id  # unfinished first
    assert listed[-1]["name"] == f"f{jobs.MAX_FINISHED * 5 - 1}"  # the newest finished last
    assert listed[1]["name"] == f"f{jobs.MAX_FINISHED * 5 - jobs.PROGRESS_LIMIT + 1}"
    clock.now += 3601
    assert table.expire() == jobs.MAX_FINISHED
    assert [j["id"] for j in table.list()] == [running.id]


def multipart(files: list[tuple[str, bytes]], boundary="b7") -> tuple[bytes, dict]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="{name}"\r\n\r\n'.encode() + data + b"\r\n"
                    for name, data in files) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_refused_parts_of_one_request_are_one_job(make_app):
    app = make_app(**{"web.rate_upload_per_sec": 1000.0, "web.rate_upload_burst": 1000})
    client = Client(app.server.port)
    body, headers = multipart([(f"bad{n}.gif", b"not an image") for n in range(60)])
    for _ in range(10):
        reply = client.post("/api/media", body=body, headers=headers)
        assert reply.status == 415, reply
        assert len(reply.json["data"]["results"]) == 60  # every part still answered
    progress = client.get("/api/poll/progress").data
    assert progress["total"] == 10 and len(progress["jobs"]) == 10
    assert all("60 files of this upload failed" in j["error"] for j in progress["jobs"])


def test_progress_answers_are_capped(make_app):
    app = make_app(**{"web.rate_upload_per_sec": 1000.0, "web.rate_upload_burst": 1000})
    client = Client(app.server.port)
    for n in range(jobs.PROGRESS_LIMIT + 20):
        assert client.post(f"/api/media?name=bad{n}.gif", body=b"nope").status == 415
    progress = client.get("/api/poll/progress").data
    assert progress["total"] == jobs.PROGRESS_LIMIT + 20
    assert len(progress["jobs"]) == jobs.PROGRESS_LIMIT


# ---- item 6: strict request heads ----------------------------------------------------------
def two_items(client) -> None:
    for colour in ((255, 0, 0), (0, 0, 255)):
        assert client.post("/api/media?name=c.png", body=png_bytes(colour)).status == 201


SMUGGLED = request_bytes("POST", "/api/playback/next", {"Content-Length": "0"})


@pytest.mark.parametrize("bad_line", [
    "X-No-Colon-Here",
    "Host2 : 127.0.0.1",
    "X-Nul: a\x00b",
    " folded-continuation",
    "X-Bare-CR: a\rb",
], ids=["no-colon", "space-before-colon", "nul", "obs-fold", "bare-cr"])
def test_malformed_header_line_is_400_and_the_body_never_runs(app, client, bad_line):
    two_items(client)
    wait_for(lambda: client.get("/api/poll/status").data["player"]["item"] is not None)
    before = client.get("/api/poll/status").data["player"]["item"]
    head = (f"GET /api/poll/status HTTP/1.1\r\nHost: 127.0.0.1\r\n{bad_line}\r\n"
            f"Content-Length: {len(SMUGGLED)}\r\n\r\n").encode("latin-1")
    with connect(app.server.port) as sock:
        sock.sendall(head + SMUGGLED)
        reply = read_response(sock)
        assert reply.status == 400, reply
        assert reply.json["error"] == "bad_request"
        assert closed_by_server(sock, 5)
    assert client.get("/api/poll/status").data["player"]["item"] == before
    counters = app.server.counters.as_dict()
    assert counters["by_status"].get("500", 0) == 0


def test_control_character_in_the_request_line_is_400(app):
    reply, closed = exchange(app.server.port,
                             b"GET /api/poll/status\x00x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.status == 400 and closed


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/1.10"])
def test_unknown_minor_version_is_505(app, version):
    reply, closed = exchange(app.server.port,
                             request_bytes("GET", "/api/poll/status", version=version))
    assert reply.status == 505 and closed
    assert reply.json["error"] == "version_not_supported"


def test_well_formed_heads_still_pass(app):
    for version in ("HTTP/1.0", "HTTP/1.1"):
        reply, _ = exchange(app.server.port, request_bytes(
            "GET", "/api/poll/status", {"X-Tab": "a\tb", "X-Latin": "caf\xe9",
                                        "X-Empty": ""}, version=version), close_wait=0)
        assert reply.status == 200, reply
    with connect(app.server.port) as sock:  # bare LF line ends are accepted (RFC 9112 2.2)
        sock.sendall(b"GET /api/poll/status HTTP/1.1\nHost: 127.0.0.1\n\n")
        assert read_response(sock).status == 200


# ---- item 7: deep JSON ------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [("PUT", "/api/schedule"), ("PUT", "/api/loop"),
                                          ("PATCH", "/api/media/{id}")])
def test_deep_json_is_400_not_500(app, client, method, path):
    item = client.post("/api/media?name=a.gif", body=gif_bytes()).data["results"][0]["item"]
    body = b'{"rules": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    reply = client.request(method, path.format(id=item["id"]), body=body,
                           headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply
    assert reply.json["error"] == "bad_json" and "nested" in reply.json["message"]
    assert app.server.counters.as_dict()["by_status"].get("500", 0) == 0


# ---- item 8: one rule for names ---------------------------------------------------------------
UNSAFE = "evil\u202egpj.exe\x00\x1b[31m\nline2\ttab\u2028end"
CLEAN = "evilgpj.exe[31m line2 tab end"


def test_patch_cleans_names_like_upload_does(app, client):
    uploaded = client.post("/api/media?name=" + "evil%E2%80%AEgpj.exe%00%1B%5B31m%0Aline2"
                           "%09tab%E2%80%A8end", body=gif_bytes()).data["results"][0]["item"]
    assert uploaded["name"] == CLEAN
    reply = client.request("PATCH", f"/api/media/{uploaded['id']}",
                           json_body={"name": "x" + UNSAFE})
    assert reply.status == 200, reply
    assert reply.data["name"] == "x" + CLEAN
    assert client.get(f"/api/media/{uploaded['id']}").data["name"] == "x" + CLEAN
    for invisible in ("\u202e\x00\x1b", "   ", "\n\t"):
        reply = client.request("PATCH", f"/api/media/{uploaded['id']}",
                               json_body={"name": invisible})
        assert reply.status == 422, reply


def test_restore_cleans_names_by_the_same_rule():
    meta = backup.clean_meta({"id": "0123456789abcdef", "name": UNSAFE},
                             {"ext": "gif", "size": 1, "sha256": "0" * 64})
    assert meta["name"] == CLEAN
    meta = backup.clean_meta({"id": "0123456789abcdef", "name": "\u202e\x00"},
                             {"ext": "gif", "size": 1, "sha256": "0" * 64})
    assert meta["name"] == "0123456789abcdef.gif"
