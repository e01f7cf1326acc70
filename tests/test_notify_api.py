"""Text and clock items, notifications and night rules through the HTTP API, on the headless
driver: `GET /api/display/frame.png` shows what is on the panel."""

import io
import os
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from conftest import Client, gif_bytes, png_bytes
from conftest import wait_for as poll_for
from PIL import Image
from test_api import library_files
from test_text import FONTS, reference, requires_fonts

from loop.media.frames import FrameFile

BERLIN = ZoneInfo("Europe/Berlin")


def wait_for(predicate, timeout=5.0):
    """Poll gently: /api/poll/* is rate-limited (10/s per client) like for any client."""
    return poll_for(predicate, timeout, interval=0.2)


def panel(client) -> Image.Image:
    reply = client.get("/api/display/frame.png?scale=1")
    assert reply.status == 200
    return Image.open(io.BytesIO(reply.body)).convert("RGB")


def colours(img) -> set:
    return {c for _, c in img.getcolors(img.width * img.height)}


def status(client) -> dict:
    return client.get("/api/poll/status").data


def listed(client) -> list:
    return [(n["id"], n["state"]) for n in client.get("/api/notify").data["notifications"]]


class Wall:
    """An injected wall clock: starts at `start`, moves with real time, can jump."""

    def __init__(self, start: datetime):
        import time
        self._time = time
        self.offset = start.timestamp() - time.time()

    def __call__(self):
        return self._time.time() + self.offset

    def set(self, when: datetime):
        self.offset = when.timestamp() - self._time.time()


# ---- text items ------------------------------------------------------------------------------
@requires_fonts
def test_a_text_item_is_a_library_item_with_its_content_as_id(app, client):
    reply = client.post("/api/media", json_body={"text": "OPEN", "color": "#00FF00"})
    assert reply.status == 201, reply
    item = reply.data["results"][0]["item"]
    assert item["kind"] == "text" and item["name"] == "OPEN" and item["in_loop"]
    assert item["spec"]["color"] == "#00ff00" and item["spec"]["scroll"] == "auto"
    again = client.post("/api/media", json_body={"color": "#00ff00", "text": "OPEN",
                                                  "font": "auto"})
    assert again.status == 200 and again.data["results"][0]["item"]["id"] == item["id"]
    # on the panel: OPEN in 9x18B, centred on 64x32
    width = 4 * 9
    expected = reference("OPEN", "9x18B", 18, 1, (64, 32), (64 - width) // 2, 7,
                         (0, 255, 0))
    wait_for(lambda: panel(client).tobytes() == expected.tobytes())
    original = client.get(f"/api/media/{item['id']}/original")
    assert original.body.startswith(b'{"background":"#000000","color":"#00ff00"')


@requires_fonts
def test_a_marquees_thumbnail_shows_its_text(app, client):
    reply = client.post("/api/media", json_body={"text": "BACK IN FIVE MINUTES",
                                                  "color": "#ff0000", "scroll": "always"})
    item = reply.data["results"][0]["item"]
    thumb = Image.open(io.BytesIO(client.get(item["thumb"]).body)).convert("RGB")
    # the first frame is all background (the text enters from the right); the thumb is not
    assert (255, 0, 0) in colours(thumb)


def test_bad_text_items_are_400_naming_the_field_and_change_nothing(app, client):
    client.upload([("a.png", png_bytes())])
    before = library_files(app)
    for body, field in [({"text": ""}, "text"), ({"text": "a", "color": "blue"}, "color"),
                        ({"text": "a", "speed_px_s": 1000}, "speed_px_s"),
                        ({"text": "a", "bold": True}, "bold"), ({"txt": "a"}, "text"),
                        ({"clock": {"format": "HHMM"}}, "clock.format")]:
        reply = client.post("/api/media", json_body=body)
        assert reply.status == 400 and reply.json["message"].startswith(f"{field}:"), reply
    assert library_files(app) == before
    long_text = client.post("/api/media", json_body={"text": "W" * 500, "font": "9x18B"})
    assert long_text.status in (201, 422)  # 64x32: 4563 frames fit the default budget
    assert client.post("/api/media", body=b"{not json",
                       headers={"Content-Type": "application/json"}).status == 400


@requires_fonts
def test_patch_edits_a_text_into_a_new_item_at_the_same_place(app, client):
    first = client.upload([("a.png", png_bytes())]).data["results"][0]["item"]["id"]
    sign = client.post("/api/media", json_body={"text": "Open"}).data["results"][0]["item"]
    last = client.upload([("b.png", png_bytes((1, 2, 3)))]).data["results"][0]["item"]["id"]
    client.request("PATCH", f"/api/media/{sign['id']}", json_body={"loop_count": 2})
    reply = client.request("PATCH", f"/api/media/{sign['id']}",
                           json_body={"text": "Back in 5 minutes", "color": "#ff0000"})
    assert reply.status == 200, reply
    edited = reply.data
    assert edited["id"] != sign["id"] and edited["name"] == "Back in 5 minutes"
    assert edited["spec"]["text"] == "Back in 5 minutes" and edited["loop_count"] == 2
    assert client.get("/api/loop").data["items"] == [first, edited["id"], last]
    assert client.get(f"/api/media/{sign['id']}").status == 404
    assert edited["frames"] > 1  # too wide for 64 px: a marquee now
    bad = client.request("PATCH", f"/api/media/{edited['id']}", json_body={"scroll": "up"})
    assert bad.status == 400 and bad.json["message"].startswith("scroll:")
    clock_item = client.post("/api/media", json_body={"clock": {}}).data["results"][0]["item"]
    reply = client.request("PATCH", f"/api/media/{clock_item['id']}",
                           json_body={"clock": {"seconds": True}})
    assert reply.status == 200 and reply.data["spec"]["clock"]["seconds"] is True


@requires_fonts
def test_text_and_clock_items_come_back_from_a_backup(app, client):
    text_id = client.post("/api/media", json_body={"text": "Hello"}) \
        .data["results"][0]["item"]["id"]
    clock_id = client.post("/api/media", json_body={"clock": {"format": "h:MM"}}) \
        .data["results"][0]["item"]["id"]
    archive = client.get("/api/backup").body
    for item_id in (text_id, clock_id):
        assert client.request("DELETE", f"/api/media/{item_id}").status == 200
    reply = client.post("/api/restore", body=archive,
                        headers={"Content-Type": "application/x-tar"})
    assert reply.status == 200 and sorted(reply.data["added"]) == sorted([text_id, clock_id])

    def rendered():
        items = {m["id"]: m for m in client.get("/api/media").data["items"]}
        return all(not items[i]["pending"] for i in (text_id, clock_id)) and items
    items = wait_for(rendered, timeout=20)
    assert items[text_id]["kind"] == "text" and items[clock_id]["kind"] == "clock"
    assert items[clock_id]["spec"] == {"clock": {"format": "h:MM", "seconds": False,
                                                 "color": "#ff8000",
                                                 "background": "#000000", "font": "auto"}}
    frames = FrameFile(os.path.join(app.cfg.system.data_dir, "media", clock_id, "frames.bin"))
    assert frames.count == 13


# ---- notifications ---------------------------------------------------------------------------
def test_a_notification_interrupts_and_the_loop_resumes_at_the_same_frame(app, client):
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    gif = gif_bytes((red, green, blue), delays=(400, 8000, 400), size=(64, 32))
    item = client.upload([("slow.gif", gif)]).data["results"][0]["item"]["id"]
    wait_for(lambda: status(client)["player"]["frame"] == 1, timeout=10)
    assert colours(panel(client)) == {green}
    reply = client.post("/api/notify", json_body={
        "text": "DING", "color": "#ffffff", "background": "#0000ff", "priority": "high",
        "duration_sec": 1.5, "id": "doorbell"})
    assert reply.status == 201 and reply.data["id"] == "doorbell"
    wait_for(lambda: colours(panel(client)) == {(255, 255, 255), (0, 0, 255)}, timeout=5)
    now = status(client)
    assert now["player"]["notification"] == "doorbell"
    assert now["notifications"]["showing"] == "doorbell"
    assert now["notifications"]["queue"][0]["state"] == "showing"
    wait_for(lambda: status(client)["player"]["notification"] is None, timeout=10)
    after = status(client)["player"]
    assert (after["item"], after["frame"]) == (item, 1)  # same item, same frame
    assert colours(panel(client)) == {green}
    assert listed(client) == []


def test_priorities_queue_replace_retract_and_the_bound(make_app):
    app = make_app(**{"notify.max_queued": 3})
    client = Client(app.server.port)

    def post(note_id, priority, text="x"):
        return client.post("/api/notify", json_body={"text": text, "id": note_id,
                                                     "priority": priority,
                                                     "duration_sec": 60})
    assert post("a", "low").status == 201
    wait_for(lambda: listed(client) == [("a", "showing")])
    assert post("b", "normal").status == 201  # higher: interrupts at once
    wait_for(lambda: listed(client) == [("b", "showing"), ("a", "queued")])
    assert post("c", "normal").status == 201  # equal: waits its turn
    assert listed(client) == [("b", "showing"), ("c", "queued"), ("a", "queued")]
    full = post("d", "critical")
    assert full.status == 429 and full.json["error"] == "queue_full"
    assert int(full.headers["Retry-After"]) >= 1
    assert [n for n, _ in listed(client)] == ["b", "c", "a"]
    replaced = post("c", "normal", text="passed")
    assert replaced.status == 200 and replaced.json["message"] == "replaced"
    assert client.get("/api/notify").data["notifications"][1]["text"] == "passed"
    assert client.request("DELETE", "/api/notify/b").status == 200
    wait_for(lambda: listed(client) == [("c", "showing"), ("a", "queued")])
    assert client.request("DELETE", "/api/notify/b").status == 404
    assert status(client)["notifications"]["showing"] == "c"


def test_the_queue_listing_says_the_defaults_a_form_needs(client):
    data = client.get("/api/notify").data
    assert data["defaults"] == {"duration_sec": 10.0, "night_priority": "high"}
    assert data["max_queued"] == 16 and data["notifications"] == []


def test_expired_notifications_are_never_shown(app, client):
    client.post("/api/notify", json_body={"text": "busy", "priority": "critical",
                                          "duration_sec": 60, "id": "long"})
    reply = client.post("/api/notify", json_body={"text": "stale", "id": "stale",
                                                  "expires_sec": 1})
    assert reply.data["expires_at"] is not None
    assert ("stale", "queued") in listed(client)
    wait_for(lambda: [n for n, _ in listed(client)] == ["long"], timeout=5)
    client.request("DELETE", "/api/notify/long")
    wait_for(lambda: status(client)["player"]["notification"] is None)
    assert app.notifications.expired == 1 and len(app.notifications) == 0


def test_an_uploaded_image_notification_is_not_added_to_the_library(app, client):
    before = library_files(app)
    reply = client.post("/api/notify?priority=high&duration_sec=5&id=cam",
                        body=png_bytes((10, 200, 30), size=(64, 32)))
    assert reply.status == 201 and reply.data["kind"] == "upload"
    wait_for(lambda: colours(panel(client)) == {(10, 200, 30)})
    assert client.get("/api/media").data["items"] == []
    assert library_files(app) == before  # nothing kept on disk, tmp/ included
    form = client.upload([("ring.gif", gif_bytes())])  # multipart goes to the library route
    assert form.status == 201
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.gif\"\r\n\r\n").encode() + gif_bytes() + f"\r\n--{boundary}--\r\n" \
        .encode()
    multi = client.post("/api/notify?id=cam", body=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert multi.status == 200 and multi.data["name"] == "x.gif"  # replaced "cam"
    bad = client.post("/api/notify", body=b"GIF89a broken")
    assert bad.status in (415, 422)
    json_without_type = client.post("/api/notify", body=b'{"text": "hi"}')
    assert json_without_type.status == 415 and "application/json" in json_without_type.json[
        "message"]
    assert client.post("/api/notify?priority=urgent", body=png_bytes()).status == 400
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []


def test_a_library_item_as_notification_and_bad_requests(app, client):
    item = client.upload([("p.png", png_bytes((9, 9, 9), size=(64, 32)))]) \
        .data["results"][0]["item"]["id"]
    other = client.upload([("q.png", png_bytes((200, 0, 0), size=(64, 32)))]) \
        .data["results"][0]["item"]["id"]
    client.post("/api/playback/select", json_body={"id": item})
    client.post("/api/playback/pause")
    reply = client.post("/api/notify", json_body={"item": other, "duration_sec": 1})
    assert reply.status == 201 and reply.data["item"] == other
    wait_for(lambda: colours(panel(client)) == {(200, 0, 0)})
    wait_for(lambda: colours(panel(client)) == {(9, 9, 9)}, timeout=5)
    assert status(client)["player"]["state"] == "paused"  # still paused afterwards
    for body, code, field in [({"item": "0123456789abcdef"}, 404, "item"),
                              ({"item": other, "text": "x"}, 400, "item"),
                              ({"text": "x", "priority": "urgent"}, 400, "priority"),
                              ({"text": "x", "sound": "on"}, 400, "sound"),
                              ({"text": "x", "repeat": 0}, 400, "repeat"),
                              ({"priority": "high"}, 400, "text"),
                              ({"text": "x", "color": "red"}, 400, "color")]:
        bad = client.post("/api/notify", json_body=body)
        assert bad.status == code and bad.json["message"].startswith(f"{field}:"), bad
    assert listed(client) == []


def test_notify_follows_the_token_and_cross_site_rules(make_app):
    app = make_app(**{"web.api_token": "sekrit"})
    client = Client(app.server.port)
    body = {"text": "hi"}
    assert client.post("/api/notify", json_body=body).status == 401
    auth = {"Authorization": "Bearer sekrit"}
    cross = client.post("/api/notify", json_body=body,
                        headers=dict(auth, Origin="http://evil.example"))
    assert cross.status == 403
    assert client.post("/api/notify", json_body=body, headers=auth).status == 201
    assert client.get("/api/notify").status == 200
    assert client.request("DELETE", "/api/notify/x").status == 401


# ---- clocks and night rules ------------------------------------------------------------------
def clock_on_panel(label, colour=(255, 128, 0)):
    return reference(label, "9x18B", 18, 1, (64, 32), (64 - 45) // 2, 7, colour)


@requires_fonts
def test_a_clock_item_is_right_across_a_dst_change_and_a_clock_jump(make_app):
    wall = Wall(datetime(2026, 3, 29, 1, 59, 57, tzinfo=BERLIN))
    app = make_app(wall=wall, **{"schedule.timezone": "Europe/Berlin"})
    client = Client(app.server.port)
    reply = client.post("/api/media", json_body={"clock": {"format": "HH:MM"}})
    assert reply.status == 201
    wait_for(lambda: panel(client).tobytes() == clock_on_panel("01:59").tobytes())
    # a few seconds later the clock springs forward: 01:59:59 CET -> 03:00:00 CEST
    wait_for(lambda: panel(client).tobytes() == clock_on_panel("03:00").tobytes(), timeout=8)
    wall.set(datetime(2026, 3, 29, 7, 42, 10, tzinfo=BERLIN))  # NTP sets a Pi's clock
    wait_for(lambda: panel(client).tobytes() == clock_on_panel("07:42").tobytes(), timeout=3)
    wall.set(datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN).replace(fold=1))  # autumn, 2nd 02:30
    wait_for(lambda: panel(client).tobytes() == clock_on_panel("02:30").tobytes(), timeout=3)


@requires_fonts
def test_a_night_clock_rule_shows_the_clock_and_only_high_notifications(make_app):
    wall = Wall(datetime(2026, 7, 1, 23, 15, 5, tzinfo=BERLIN))
    app = make_app(wall=wall, **{"schedule.timezone": "Europe/Berlin"})
    client = Client(app.server.port)
    client.upload([("day.png", png_bytes((0, 0, 200), size=(64, 32)))])
    wait_for(lambda: colours(panel(client)) == {(0, 0, 200)})
    rules = {"rules": [{"name": "night", "start": "22:00", "end": "07:00", "brightness": 10,
                        "show": "clock"}]}
    assert client.put("/api/schedule", json_body=rules).status == 200
    night = clock_on_panel("23:15", (255, 48, 0))
    wait_for(lambda: panel(client).tobytes() == night.tobytes())
    now = status(client)
    assert now["player"]["show"] == "clock" and now["schedule"]["show"] == "clock"
    assert now["player"]["brightness"] == 10 and app.driver.brightness == 10
    client.post("/api/notify", json_body={"text": "mail", "id": "mail"})
    assert listed(client) == [("mail", "held")]
    client.post("/api/notify", json_body={"text": "FIRE", "priority": "critical",
                                          "brightness": 100, "duration_sec": 1, "id": "fire"})
    wait_for(lambda: status(client)["player"]["notification"] == "fire")
    assert app.driver.brightness == 100  # at its own brightness, even at night
    wait_for(lambda: panel(client).tobytes() == night.tobytes(), timeout=5)
    assert app.driver.brightness == 10 and listed(client) == [("mail", "held")]
    wall.set(datetime(2026, 7, 2, 7, 0, 1, tzinfo=BERLIN))  # morning: the next minute tick
    wait_for(lambda: status(client)["player"]["show"] == "loop", timeout=10)
    wait_for(lambda: status(client)["player"]["notification"] == "mail")


@pytest.mark.parametrize("show", ["off"])
def test_an_off_rule_darkens_the_panel_until_morning(make_app, show):
    wall = Wall(datetime(2026, 7, 1, 23, 0, tzinfo=BERLIN))
    app = make_app(wall=wall, **{"schedule.timezone": "Europe/Berlin"})
    client = Client(app.server.port)
    client.upload([("day.png", png_bytes((0, 0, 200), size=(64, 32)))])
    reply = client.put("/api/schedule", json_body={"rules": [
        {"start": "22:00", "end": "07:00", "show": show}]})
    assert reply.status == 200 and reply.data["rules"][0]["show"] == show
    wait_for(lambda: app.driver.brightness == 0)
    assert status(client)["player"]["show"] == "off"
    bad = client.put("/api/schedule", json_body={"rules": [
        {"start": "22:00", "end": "07:00", "brightness": 5, "show": "dark"}]})
    assert bad.status == 422 and "rules[0].show" in bad.json["message"]
    assert FONTS  # the module's fonts loaded once for the suite


def test_the_night_clock_is_drawn_only_once_a_rule_wants_it(make_app):
    wall = Wall(datetime(2026, 7, 1, 12, 0, 5, tzinfo=BERLIN))
    app = make_app(wall=wall, **{"schedule.timezone": "Europe/Berlin"})
    client = Client(app.server.port)
    assert app.player.night_clock is None  # no night rule: no fonts, no glyphs in memory
    rules = {"rules": [{"name": "day", "start": "11:00", "end": "13:00", "brightness": 50,
                        "show": "clock"}]}
    assert client.put("/api/schedule", json_body=rules).status == 200
    wait_for(lambda: app.player.night_clock is not None)
    wait_for(lambda: panel(client).tobytes() ==
             clock_on_panel("12:00", (255, 48, 0)).tobytes())
