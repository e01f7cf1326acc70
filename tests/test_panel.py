"""The whole service on the strict fake LED binding: timing, breaker, reset, persistence."""

import importlib
import os
import statistics
import sys

import pytest
from conftest import FAKE_RGBMATRIX, Client, gif_bytes, png_bytes, wait_for, write_config
from PIL import Image

from loop.display.guard import MARKER_NAME
from loop.media import screens

PANEL = {"display.driver": "rgbmatrix", "display.breaker_max_failures": 2,
         "display.breaker_reset_sec": 0.2, "display.breaker_max_reset_sec": 0.4,
         "display.slow_call_ms": 2000}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.syspath_prepend(FAKE_RGBMATRIX)
    monkeypatch.delitem(sys.modules, "rgbmatrix", raising=False)
    module = importlib.import_module("rgbmatrix")
    module.reset()
    yield module
    module.reset()
    sys.modules.pop("rgbmatrix", None)


def status(client):
    return client.get("/api/poll/status").data


def test_gif_plays_through_the_binding_with_its_timings(make_app, fake):
    app = make_app(module=fake, **PANEL, **{"media.loop_count": 50})
    client = Client(app.server.port)
    assert app.driver.name == "rgbmatrix"
    reply = client.upload([("t.gif", gif_bytes(((255, 0, 0), (0, 0, 255)), (100, 250),
                                               size=(64, 32)))])
    assert reply.status == 201
    wait_for(lambda: len(fake.state.swap_times) >= 16, timeout=20)
    colours = [c for c in fake.state.calls if c[0] == "SetImage"]
    assert colours, "frames reached the canvas"
    # 12 gaps past the first frames: the GIF alternates 100 and 250 ms, so half are each.
    # Medians, because on a busy machine a late swap makes one gap longer and the next one
    # shorter (the pacing itself is pinned exactly in test_player, on an injected clock)
    times = fake.state.swap_times[3:16]
    gaps = sorted(round((b - a) * 1000) for a, b in zip(times, times[1:]))
    assert abs(statistics.median(gaps[:6]) - 100) < 40, gaps
    assert abs(statistics.median(gaps[6:]) - 250) < 40, gaps
    front = fake.state.matrices[0].front
    assert front.pixels[:3] in (b"\xff\x00\x00", b"\x00\x00\xff")
    assert fake.state.canvases_created <= 2


def test_failing_panel_degrades_to_headless_and_recovers(make_app, fake):
    app = make_app(module=fake, **PANEL)
    client = Client(app.server.port)
    client.upload([("a.gif", gif_bytes(delays=(30, 30, 30), size=(64, 32)))])
    wait_for(lambda: fake.state.swaps > 3)
    # The one exception the binding raises out of a frame call (a real panel fault never
    # reaches the library; a slow refresh does: tests/test_simulated_pi.py) from now on.
    fake.state.fail_after_swaps = fake.state.swaps
    wait_for(lambda: status(client)["display"]["breaker"] == "open")
    data = status(client)
    assert data["display"]["status"] == "degraded"
    health = client.get("/api/poll/health").data
    assert health["status"] == "degraded"
    assert "Canvas was destroyed or not initialized" in health["checks"]["display"]["reason"]
    # playback goes on without the panel: the preview keeps moving
    shown = app.player.frames_shown
    wait_for(lambda: app.player.frames_shown > shown + 5)
    breaker = client.get("/api/display").data["breaker"]
    assert breaker["openings"] >= 1 and breaker["state"] in ("open", "half_open")
    fake.state.fail_after_swaps = None  # the panel is back
    wait_for(lambda: status(client)["display"]["breaker"] == "closed", timeout=10)
    assert status(client)["display"]["status"] == "ok"
    swaps = fake.state.swaps
    wait_for(lambda: fake.state.swaps > swaps + 3)


def test_bad_media_is_not_a_display_failure(make_app, fake):
    app = make_app(module=fake, **PANEL, **{"media.loop_count": 50})
    client = Client(app.server.port)
    good = client.upload([("b.gif", gif_bytes(delays=(30, 30, 30)))]).data["results"][0]
    bad = client.upload([("a.png", png_bytes((1, 1, 1)))]).data["results"][0]["item"]["id"]
    client.put("/api/loop", json_body={"items": [good["item"]["id"]]})
    # damage the file before the player ever maps it (a mapped file that shrinks is SIGBUS)
    with open(app.store.frames_path(bad), "r+b") as fh:
        fh.truncate(100)
    client.post("/api/playback/select", json_body={"id": bad})
    wait_for(lambda: client.get(f"/api/media/{bad}").data["quarantined"])
    assert app.breaker.snapshot()["consecutive_failures"] == 0
    assert status(client)["display"]["breaker"] == "closed"
    assert status(client)["player"]["item"] == good["item"]["id"]


def test_brightness_redraws_and_zero_clears(make_app, fake):
    app = make_app(module=fake, **PANEL)
    client = Client(app.server.port)
    client.upload([("a.png", png_bytes((200, 200, 200)))])
    wait_for(lambda: fake.state.swaps >= 1)
    client.put("/api/display", json_body={"brightness": 40})
    calls = fake.state.calls
    at = calls.index(("brightness", 40))
    assert any(c[0] == "SetImage" and c[-1] == 40 for c in calls[at:])  # redrawn at once
    client.put("/api/display", json_body={"brightness": 0})
    assert ("Clear",) in fake.state.calls[fake.state.calls.index(("brightness", 40)):]
    assert status(client)["display"]["status"] == "off"
    assert fake.state.canvases_created <= 2


def test_crash_marker_starts_headless_until_reset(make_app, fake, tmp_path):
    data_dir = tmp_path / "data"
    os.makedirs(data_dir, exist_ok=True)
    (data_dir / MARKER_NAME).write_text("2")
    app = make_app(module=fake, **PANEL)
    client = Client(app.server.port)
    assert app.driver.name == "headless"
    health = client.get("/api/poll/health").data
    assert "crashed" in health["checks"]["display"]["reason"]
    assert status(client)["display"]["status"] == "degraded"
    reply = client.post("/api/display/reset")
    assert reply.status == 200 and reply.data["restarting"] is False
    assert "restart" in reply.json["message"]
    assert not (data_dir / MARKER_NAME).exists()


def test_reset_under_systemd_restarts_with_status_75(tmp_path, services):
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config, env={"INVOCATION_ID": "0123abcd"})
    reply = service.client.post("/api/display/reset")
    assert reply.status == 202 and reply.data["restarting"] is True
    assert service.proc.wait(20) == 75


def test_mode_and_brightness_persist_across_restart(make_app):
    first = make_app()
    client = Client(first.server.port)
    client.put("/api/playback/mode", json_body={"mode": "shuffle"})
    client.put("/api/display", json_body={"brightness": 12})
    first.stop()
    second = make_app()
    data = status(Client(second.server.port))
    assert data["player"]["mode"] == "shuffle" and data["player"]["brightness"] == 12


def test_boot_screen_shows_the_address(make_app, fake):
    app = make_app(module=fake, **PANEL, **{"display.boot_screen_sec": 5})
    wait_for(lambda: fake.state.swaps >= 1)
    pixels = fake.state.matrices[0].front.pixels
    img = Image.frombytes("RGB", (64, 32), pixels)
    expected = screens.render(["LOOP"] + app.url_lines(), 64, 32)
    assert img.tobytes() == expected.tobytes()
    assert img.getbbox() is not None


def test_status_screen_fits_a_small_panel():
    lines = ["No media yet", "192.168.100.200", ":8080"]
    img = screens.render(lines, 64, 32)
    box = img.getbbox()
    assert box[2] <= 64 and box[3] <= 32
    # the address is on one line of 15 glyphs: 59 pixels plus the margin
    assert screens.text_width("192.168.100.200") == 59
    assert screens.wrap("192.168.100.200:8080", 62) == ["192.168.100.200", ":8080"]
    # every glyph of the address is drawn in the accent colour on row two (y 7..11)
    row = img.crop((0, 7, 64, 12))
    assert (0, 190, 255) in {c for _, c in row.getcolors()}
