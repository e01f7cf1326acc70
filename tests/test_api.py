"""The API over real sockets: uploads, library, loop, playback, polling, and every error."""

import io
import json
import os

import pytest
from conftest import Client, gif_bytes, jpeg_bytes, png_bytes, wait_for
from PIL import Image


def library_files(app):
    """Everything on disk under the data dir except logs: to prove nothing changed."""
    out = {}
    root = app.cfg.system.data_dir
    for base, _, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def test_multipart_upload_creates_item(app, client):
    reply = client.upload([("cat.gif", gif_bytes())], upload_id="job-1")
    assert reply.status == 201, reply
    result = reply.data["results"][0]
    assert result["status"] == 201 and result["job"] == "job-1" and result["error"] is None
    item = result["item"]
    assert item["name"] == "cat.gif" and item["kind"] == "animation"
    assert (item["width"], item["height"], item["frames"]) == (32, 16, 3)
    assert item["duration_ms"] == 600 and item["in_loop"] is True
    assert item["thumb"].startswith(f"/api/media/{item['id']}/thumb.png?v=")
    assert len(item["id"]) == 16
    # the job is visible with its final stage and item
    jobs = client.get("/api/poll/progress").data["jobs"]
    job = next(j for j in jobs if j["id"] == "job-1")
    assert job["stage"] == "done" and job["item"] == item["id"] and job["progress"] == 1.0
    # the commit is on disk and in the index
    with open(os.path.join(app.cfg.system.data_dir, "index.json")) as fh:
        index = json.load(fh)
    assert [m["id"] for m in index["items"]] == [item["id"]]
    assert index["loop"] == [item["id"]]
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []


def test_raw_upload_and_duplicate(client):
    data = gif_bytes()
    first = client.post("/api/media?name=cat.gif", body=data)
    assert first.status == 201
    again = client.post("/api/media?name=other.gif", body=data)
    assert again.status == 200
    assert again.data["results"][0]["item"]["id"] == first.data["results"][0]["item"]["id"]
    assert len(client.get("/api/media").data["items"]) == 1


def test_several_files_in_one_request(client):
    reply = client.upload([("a.png", png_bytes()), ("bad.gif", b"GIF89a garbage"),
                           ("b.jpg", jpeg_bytes())])
    assert reply.status == 201
    statuses = [r["status"] for r in reply.data["results"]]
    assert statuses[0] == 201 and statuses[2] == 201
    assert statuses[1] in (415, 422)
    assert len(client.get("/api/media").data["items"]) == 2


@pytest.mark.parametrize("known", [False, True])
def test_a_mix_of_good_and_bad_files_succeeds_when_one_is_in_the_library(client, known):
    good = png_bytes((7, 8, 9))
    if known:
        assert client.upload([("good.png", good)]).status == 201
    reply = client.upload([("good.png", good), ("notes.txt", b"just text, not media")])
    assert reply.status == (200 if known else 201), reply
    assert reply.json["success"] is True
    assert [r["status"] for r in reply.data["results"]] == [200 if known else 201, 415]
    alone = client.upload([("notes.txt", b"just text, not media")])
    assert alone.status == 415 and alone.json["success"] is False
    assert [r["status"] for r in alone.json["data"]["results"]] == [415]


def test_a_fractional_brightness_is_refused_as_not_a_whole_number(client):
    reply = client.put("/api/display", json_body={"brightness": 50.5})
    assert reply.status == 422 and "a whole number 0..100" in reply.json["message"]


def test_the_server_header_has_no_trailing_space(client):
    reply = client.get("/api/poll/health")
    assert reply.headers["Server"] == "LOOP"


def test_the_library_says_what_null_play_times_stand_for_and_status_shows_the_fit(client):
    defaults = client.get("/api/media").data["defaults"]
    assert defaults == {"loop_count": 3, "item_duration_sec": 0.0,
                        "static_image_duration_sec": 10.0}
    assert client.get("/api/poll/status").data["display"]["fit"] == "contain"
    assert client.put("/api/display", json_body={"fit": "cover"}).status == 200
    assert client.get("/api/poll/status").data["display"]["fit"] == "cover"


def test_list_get_delete(app, client):
    ids = [client.upload([(f"{i}.png", png_bytes((i, i, i)))]).data["results"][0]["item"]["id"]
           for i in range(3)]
    listed = [m["id"] for m in client.get("/api/media").data["items"]]
    assert listed == ids
    one = client.get(f"/api/media/{ids[1]}")
    assert one.status == 200 and one.data["id"] == ids[1]
    deleted = client.request("DELETE", f"/api/media/{ids[1]}")
    assert deleted.status == 200
    assert client.get(f"/api/media/{ids[1]}").status == 404
    assert client.get("/api/loop").data["items"] == [ids[0], ids[2]]
    assert not os.path.exists(os.path.join(app.cfg.system.data_dir, "media", ids[1]))
    assert client.request("DELETE", f"/api/media/{ids[1]}").status == 404


def test_thumb_and_original(client):
    data = png_bytes((1, 2, 3))
    item = client.upload([("x.png", data)]).data["results"][0]["item"]
    thumb = client.get(item["thumb"])
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/png"
    assert "immutable" in thumb.headers["Cache-Control"]
    assert Image.open(io.BytesIO(thumb.body)).getpixel((5, 5)) == (1, 2, 3)
    original = client.get(f"/api/media/{item['id']}/original")
    assert original.body == data
    assert original.headers["Content-Type"] == "application/octet-stream"
    assert original.headers["Content-Disposition"].startswith("attachment;")


def test_loop_order_and_validation(client):
    ids = [client.upload([(f"{i}.png", png_bytes((i, 0, 0)))]).data["results"][0]["item"]["id"]
           for i in range(3)]
    reply = client.put("/api/loop", json_body={"items": [ids[2], ids[0]]})
    assert reply.status == 200 and reply.data["items"] == [ids[2], ids[0]]
    items = client.get("/api/media").data["items"]
    assert [m["id"] for m in items] == [ids[2], ids[0], ids[1]]
    assert [m["in_loop"] for m in items] == [True, True, False]
    for bad in ([ids[0], ids[0]], ["0123456789abcdef"], "nope", [1]):
        r = client.put("/api/loop", json_body={"items": bad})
        assert r.status == 422 and r.json["error"] == "validation_failed", bad
    assert client.get("/api/loop").data["items"] == [ids[2], ids[0]]


def test_patch_item(client):
    item = client.upload([("x.png", png_bytes())]).data["results"][0]["item"]
    reply = client.request("PATCH", f"/api/media/{item['id']}",
                           json_body={"name": "Shop sign", "loop_count": 2})
    assert reply.status == 200 and reply.data["name"] == "Shop sign"
    assert reply.data["loop_count"] == 2
    bad = client.request("PATCH", f"/api/media/{item['id']}", json_body={"loop_count": 0})
    assert bad.status == 422
    assert client.get(f"/api/media/{item['id']}").data["loop_count"] == 2


@pytest.mark.parametrize("path", ["/api/media/..", "/api/media/*", "/api/media/%2e%2e",
                                  "/api/media/0123456789ABCDEF", "/api/media/..%2f..%2fetc",
                                  "/api/media/0123456789abcdef/thumb.png",
                                  "/api/media/%2e%2e/original"])
def test_bad_ids_are_404(client, path):
    reply = client.get(path)
    assert reply.status == 404
    assert reply.json == {"success": False, "message": reply.json["message"],
                          "error": "not_found", "data": None}


def test_bad_uploads_lose_nothing(app, client):
    client.upload([("keep.png", png_bytes())])
    before = library_files(app)
    cases = [
        (client.post("/api/media?name=x.txt", body=b"hello, not an image"), 415,
         "unsupported_media"),
        (client.post("/api/media?name=t.gif", body=gif_bytes()[:60]), 422, "invalid_media"),
        (client.post("/api/media", body=b"--b\r\nContent-Disposition: form-data; name=\"x\""
                     b"\r\n\r\nv\r\n--b--\r\n",
                     headers={"Content-Type": "multipart/form-data; boundary=b"}), 400,
         "bad_request"),
        (client.post("/api/media", body=b"--b\r\ngarbage", headers={
            "Content-Type": "multipart/form-data; boundary=b"}), 400, "bad_request"),
    ]
    for reply, status, code in cases:
        assert reply.status == status, reply
        assert reply.json["error"] == code and reply.json["success"] is False
    after = library_files(app)
    # only the debounced settings may differ; the library itself is byte-for-byte the same
    assert {k: v for k, v in before.items() if not k.startswith("index")} == \
        {k: v for k, v in after.items() if not k.startswith("index")}
    assert json.loads(before["index.json"])["items"] == json.loads(after["index.json"])["items"]
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []
    jobs = client.get("/api/poll/progress").data["jobs"]
    assert sum(j["stage"] == "failed" and bool(j["error"]) for j in jobs) == 2  # the two files


def test_upload_limits(make_app):
    app = make_app(**{"media.max_upload_mb": 0.01})
    client = Client(app.server.port)
    big = client.post("/api/media?name=big.png", body=b"x" * 20000)
    assert big.status == 413 and big.json["error"] == "payload_too_large"
    conn_reply = client.request("POST", "/api/media", body=None)
    assert conn_reply.status in (411, 400)


def test_json_errors(client):
    assert client.put("/api/loop", body=b"{nope", headers={
        "Content-Type": "application/json"}).json["error"] == "bad_json"
    assert client.put("/api/loop", body=b"[1]").status == 400
    huge = json.dumps({"items": ["a" * 70000]}).encode()
    assert client.put("/api/loop", body=huge).status == 413


def test_404_405_head(client):
    missing = client.get("/api/nothing")
    assert missing.status == 404 and missing.json["error"] == "not_found"
    wrong = client.request("DELETE", "/api/loop")
    assert wrong.status == 405 and wrong.json["error"] == "method_not_allowed"
    assert set(wrong.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT"}
    head = client.request("HEAD", "/api/poll/status")
    get = client.get("/api/poll/status")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


def test_route_index(client):
    routes = client.get("/api").data["routes"]
    paths = {(r["method"], r["path"]) for r in routes}
    assert ("POST", "/api/media") in paths and ("GET", "/api/poll/status") in paths
    assert all(r["doc"] for r in routes)


def test_status_etag_ignores_frames(app, client):
    client.upload([("a.gif", gif_bytes(delays=(20, 20, 20)))])
    wait_for(lambda: client.get("/api/poll/status").data["player"]["state"] == "playing")
    first = client.get("/api/poll/status")
    etag = first.headers["ETag"]
    assert first.data["version"] in etag
    assert etag.startswith('W/"')
    shown = app.player.frames_shown
    # several loops of the animation (loop_count 3 x 60 ms) go by without a state change
    wait_for(lambda: app.player.frames_shown > shown + 12)
    cached = client.get("/api/poll/status", headers={"If-None-Match": etag})
    assert cached.status == 304 and cached.body == b""
    client.post("/api/playback/pause")
    changed = client.get("/api/poll/status", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert changed.data["player"]["state"] == "paused"


def test_status_shape(client):
    data = client.get("/api/poll/status").data
    assert set(data) >= {"player", "display", "library", "jobs_active", "version"}
    assert set(data["player"]) >= {"state", "item", "name", "frame", "frames", "position",
                                   "length", "mode", "brightness"}
    assert data["display"]["driver"] == "headless"
    assert data["player"]["state"] == "idle" and data["library"]["items"] == 0


def test_playback_commands(client):
    ids = [client.upload([(f"{i}.png", png_bytes((i * 50, 0, 0)))]).data["results"][0]
           ["item"]["id"] for i in range(3)]
    wait_for(lambda: client.get("/api/poll/status").data["player"]["item"] == ids[0])
    assert client.post("/api/playback/next").data["item"] == ids[1]
    assert client.post("/api/playback/previous").data["item"] == ids[0]
    assert client.post("/api/playback/previous").data["item"] == ids[2]
    assert client.post("/api/playback/pause").data["state"] == "paused"
    assert client.post("/api/playback/toggle").data["state"] == "playing"
    selected = client.post("/api/playback/select", json_body={"id": ids[1]})
    assert selected.data["item"] == ids[1]
    assert client.post("/api/playback/select",
                       json_body={"id": "0123456789abcdef"}).status == 404
    assert client.post("/api/playback/fly").status == 404
    mode = client.put("/api/playback/mode", json_body={"mode": "shuffle"})
    assert mode.data["mode"] == "shuffle"
    assert client.put("/api/playback/mode", json_body={"mode": "x"}).status == 422


def test_frame_png_shows_current_frame(client):
    client.upload([("red.png", png_bytes((255, 0, 0)))])
    wait_for(lambda: client.get("/api/poll/status").data["player"]["state"] == "playing")
    reply = client.get("/api/display/frame.png?scale=3")
    img = Image.open(io.BytesIO(reply.body))
    assert img.size == (64 * 3, 32 * 3)
    assert img.convert("RGB").getpixel((100, 50)) == (255, 0, 0)
    assert client.get("/api/display/frame.png?scale=99").status == 400


def test_display_put(client):
    reply = client.put("/api/display", json_body={"brightness": 40})
    assert reply.status == 200 and reply.data["brightness"] == 40
    assert client.get("/api/poll/status").data["player"]["brightness"] == 40
    assert client.put("/api/display", json_body={"brightness": 101}).status == 422
    assert client.put("/api/display", json_body={"fit": "zoom"}).status == 422
    assert client.get("/api/display").data["brightness"] == 40
    off = client.put("/api/display", json_body={"brightness": 0})
    assert off.data["status"] == "off"


def test_health_has_real_numbers(app, client):
    client.get("/api/poll/status")
    health = client.get("/api/poll/health")
    assert health.status == 200
    data = health.data
    assert data["status"] in ("ok", "degraded") and data["healthy"] is True
    assert data["checks"]["memory"]["rss_mb"] > 5
    assert data["checks"]["disk"]["free_mb"] > 0
    assert data["checks"]["system_memory"]["available_mb"] > 0
    assert data["checks"]["http"]["requests"] >= 2
    assert data["uptime_sec"] >= 0 and data["version"]


def test_dashboard_served_with_security_headers(client):
    reply = client.get("/")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/../etc/passwd").status == 404


def test_switching_items_while_paused_shows_the_new_item(client):
    ids = [client.upload([(f"{i}.png", png_bytes(colour))]).data["results"][0]["item"]["id"]
           for i, colour in enumerate([(255, 0, 0), (0, 255, 0)])]
    wait_for(lambda: client.get("/api/poll/status").data["player"]["item"] == ids[0])
    client.post("/api/playback/pause")
    assert client.post("/api/playback/next").data["item"] == ids[1]
    for _ in range(5):  # the preview is the new item, every time, not a released old frame
        reply = client.get("/api/display/frame.png?scale=1")
        assert reply.status == 200
        assert Image.open(io.BytesIO(reply.body)).convert("RGB").getpixel((30, 15)) == \
            (0, 255, 0)


def test_thumb_url_changes_when_the_item_is_rendered_again(client):
    item = client.upload([("wide.png", png_bytes(size=(128, 32)))]).data["results"][0]["item"]
    client.put("/api/display", json_body={"fit": "stretch"})
    wait_for(lambda: client.get(f"/api/media/{item['id']}").data["thumb"] != item["thumb"])
    fresh = client.get(f"/api/media/{item['id']}").data["thumb"]
    assert client.get(fresh).status == 200


def test_status_follows_loop_changes_at_once(client):
    ids = [client.upload([(f"{i}.png", png_bytes((i, 9, 9)))]).data["results"][0]["item"]["id"]
           for i in range(3)]
    wait_for(lambda: client.get("/api/poll/status").data["player"]["item"] == ids[0],
             interval=0.2)
    client.put("/api/loop", json_body={"items": [ids[2], ids[1], ids[0]]})
    player = client.get("/api/poll/status").data["player"]
    assert (player["position"], player["length"]) == (2, 3)
    client.put("/api/loop", json_body={"items": [ids[1]]})
    wait_for(lambda: client.get("/api/poll/status").data["player"]["item"] == ids[1],
             interval=0.2)  # a poller's pace, under the default rate limit
    assert client.get("/api/poll/status").data["player"]["length"] == 1


def test_if_none_match_compares_weakly_and_star_matches(client):
    etag = client.get("/api/poll/status").headers["ETag"]
    strong = etag.removeprefix("W/")
    assert client.get("/api/poll/status", headers={"If-None-Match": strong}).status == 304
    assert client.get("/api/poll/status", headers={"If-None-Match": "*"}).status == 304
    assert client.get("/api/poll/status", headers={"If-None-Match": '"nope"'}).status == 200


def test_each_file_of_a_request_gets_a_job_named_after_the_upload_id(client):
    reply = client.upload([("a.png", png_bytes((1, 2, 3))), ("b.png", png_bytes((3, 2, 1)))],
                          upload_id="myup")
    jobs = [r["job"] for r in reply.data["results"]]
    assert jobs[0] == "myup" and jobs[1].startswith("myup-") and len(set(jobs)) == 2
    # a retry with the same id, once the first request is finished, is followed under it again
    again = client.upload([("c.png", png_bytes((7, 7, 7)))], upload_id="myup")
    assert again.data["results"][0]["job"] == "myup"


def test_full_disk_when_the_upload_starts_is_507(app, client, monkeypatch):
    real_mkdir = os.mkdir

    def full(path, *args, **kwargs):
        if "/tmp/" in str(path):
            raise OSError(28, "No space left on device")
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", full)
    reply = client.post("/api/media?name=x.png", body=png_bytes())
    assert reply.status == 507 and reply.json["error"] == "insufficient_storage"


def test_status_is_encoded_once_per_version_with_the_current_frame_spliced_in(app, client):
    client.upload([("still.png", png_bytes((4, 5, 6)))])
    wait_for(lambda: client.get("/api/poll/status").data["player"]["state"] == "playing")
    app.player.frame_index = 12345  # a still: the display thread leaves it alone
    first = client.get("/api/poll/status")
    cached = app.api._status_body
    app.player.frame_index = 54321
    second = client.get("/api/poll/status")
    assert app.api._status_body is cached  # same version: nothing rebuilt
    assert first.data["player"]["frame"] == 12345 and second.data["player"]["frame"] == 54321
    fresh, version = app.status_snapshot()
    assert second.data == fresh and second.headers["ETag"] == f'W/"{version}"'
    client.post("/api/playback/pause")
    paused = client.get("/api/poll/status")
    assert paused.data["player"]["state"] == "paused" and app.api._status_body is not cached
    assert paused.headers["ETag"] != second.headers["ETag"]
