"""The web dashboard (issue 7) driven in a real headless Chromium against a real LOOP process.

Playwright for Python drives Debian's /usr/bin/chromium (a downloaded browser is never used:
do not run `playwright install`). Without that browser the browser tests skip with the reason;
under CI (`CI=true`) a missing browser or Playwright is a failure instead.

One browser and one LOOP server per module keep this fast; every test uses its own browser
context (fresh localStorage) and uploads its own uniquely coloured media, so the tests do not
depend on each other's order. The ids and data-testid hooks used here are listed at the top
of loop/web/app.js.
"""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from conftest import FAKE_RGBMATRIX, ROOT, Client, spawn, wait_for, write_config
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
WEB = os.path.join(ROOT, "loop", "web")
TOKEN = "dashboard-test-token"
TOKEN_KEY = "loop.apiToken"          # localStorage key used by app.js
UI_TIMEOUT_MS = 15_000

# Generous limits so a browser plus the test's own API calls never meet the rate limiter.
WEB_OVERRIDES = {"api_token": TOKEN, "rate_poll_per_sec": 1000.0, "rate_poll_burst": 1000,
                 "rate_control_per_sec": 1000.0, "rate_control_burst": 1000,
                 "rate_upload_per_sec": 1000.0, "rate_upload_burst": 1000,
                 "rate_static_per_sec": 1000.0, "rate_static_burst": 1000}


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing browser is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(reason)


# ---- media ------------------------------------------------------------------------------
_colour_counter = iter(range(1, 10_000))


def unique_colour() -> tuple[int, int, int]:
    """A colour no other upload of this module uses (GIF keeps these exactly)."""
    n = next(_colour_counter)
    return (40 + (n * 67) % 200, 40 + (n * 131) % 200, 40 + (n * 29) % 200)


def make_gif(colour=None, frames=3, size=(64, 32)) -> tuple[bytes, tuple[int, int, int]]:
    """An animated GIF filling a 64x32 panel with one colour and a small moving white dot."""
    colour = colour or unique_colour()
    images = []
    for i in range(frames):
        img = Image.new("RGB", size, colour)
        x = 2 + 4 * i
        img.paste((255, 255, 255), (x, 2, x + 3, 5))
        images.append(img)
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=150, loop=0,
                   disposal=1, optimize=False)
    return out.getvalue(), colour


def item_id(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()[:16]


# ---- the server -------------------------------------------------------------------------
class Loop:
    """A running `loop.py` plus a small authenticated JSON client."""

    def __init__(self, service):
        self.service = service
        self.url = f"http://127.0.0.1:{service.port}"
        self.client = Client(service.port)

    def call(self, method, path, json_body=None, token=TOKEN, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, path, json_body=json_body, headers=headers, **kw)

    def data(self, path):
        reply = self.call("GET", path)
        assert reply.status == 200, reply
        return reply.data

    def upload(self, name: str, data: bytes) -> str:
        boundary = "dashboardtest0b0undary"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{name}"\r\nContent-Type: image/gif\r\n\r\n').encode() + data + \
            f"\r\n--{boundary}--\r\n".encode()
        reply = self.client.request(
            "POST", "/api/media", body=body, timeout=30,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                     "Authorization": f"Bearer {TOKEN}"})
        assert reply.status in (200, 201), reply
        return item_id(data)

    def loop_ids(self) -> list[str]:
        return self.data("/api/loop")["items"]

    def status(self) -> dict:
        return self.data("/api/poll/status")


def start_loop(tmp_path_factory, env=None, **sections) -> Loop:
    base = tmp_path_factory.mktemp("dashboard")
    data_dir = base / "data"
    sections.setdefault("web", {}).update(WEB_OVERRIDES)
    cfg = write_config(base / "config.json", data_dir, **sections)
    service = spawn(cfg, env=env, extra_args=["--data-dir", str(data_dir), "--host", "127.0.0.1",
                                              "--port", "0"])
    return Loop(service)


def stop_loop(loop: Loop) -> None:
    if loop.service.proc.poll() is None:
        try:
            loop.service.terminate(timeout=20)
        except Exception:
            loop.service.proc.kill()
            loop.service.proc.wait(10)


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    loop = start_loop(tmp_path_factory)
    yield loop
    stop_loop(loop)


# ---- the browser ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium package "
                     "(never `playwright install`)")
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except PlaywrightError as exc:
        pw.stop()
        _unavailable(f"{CHROMIUM} does not start under Playwright: {exc}")
    yield browser
    browser.close()
    pw.stop()


class Page:
    """A page plus what the browser complained about (CSP violations, script errors)."""

    def __init__(self, context, page):
        self.context, self.page = context, page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.set_default_timeout(UI_TIMEOUT_MS)

    def open(self, loop: Loop):
        self.page.goto(loop.url + "/")
        self.page.wait_for_selector('body[data-ready="1"]', state="attached")
        return self.page

    def check_clean(self):
        csp = [m for m in self.console_errors if "Content Security Policy" in m]
        assert not csp, f"CSP violations: {csp}"
        assert not self.page_errors, f"uncaught script errors: {self.page_errors}"


def new_page(browser, with_token=True, **context_args) -> Page:
    context_args.setdefault("viewport", {"width": 1280, "height": 900})
    context = browser.new_context(**context_args)
    if with_token:
        context.add_init_script(f"localStorage.setItem({json.dumps(TOKEN_KEY)}, "
                                f"{json.dumps(TOKEN)})")
    return Page(context, context.new_page())


@pytest.fixture
def ui(browser):
    page = new_page(browser)
    yield page
    page.context.close()
    page.check_clean()


def card(page, id_):
    return page.locator(f'[data-testid="item-card"][data-id="{id_}"]')


def eventually(predicate, timeout=10.0, message="condition not met"):
    try:
        return wait_for(predicate, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"{message} within {timeout}s") from None


PREVIEW_CENTRE_JS = """img => {
  if (!img.complete || !img.naturalWidth) return null;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
  return [d[0], d[1], d[2]];
}"""


def close(rgb, colour, tol=12):
    return rgb is not None and all(abs(a - b) <= tol for a, b in zip(rgb, colour, strict=True))


# ---- tests: no browser needed -----------------------------------------------------------
def test_static_files_are_self_contained_and_csp_clean():
    html = open(os.path.join(WEB, "index.html"), encoding="utf-8").read()
    js = open(os.path.join(WEB, "app.js"), encoding="utf-8").read()
    css = open(os.path.join(WEB, "app.css"), encoding="utf-8").read()
    # nothing from the internet: the Pi is often offline
    for name, text in (("index.html", html), ("app.js", js), ("app.css", css)):
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert "@import" not in text and "url(http" not in text, name
    # the CSP forbids inline scripts, inline styles and inline handlers
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None, "inline script body"
    assert not re.search(r"\sstyle\s*=", html), "inline style attribute"
    assert "<style" not in html
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert "eval(" not in js and "new Function" not in js
    assert "image-rendering: pixelated" in css


# ---- tests: in the browser --------------------------------------------------------------
def test_loads_polls_calmly_and_shows_health(ui, loop_server):
    requests = []
    ui.page.on("request", lambda r: requests.append(r))
    page = ui.open(loop_server)
    page.wait_for_selector('#conn-state[data-state="ok"]')
    status = page.locator("#health-status")
    page.wait_for_function(
        "() => document.querySelector('#health-status').dataset.status !== 'unknown'")
    assert status.get_attribute("data-status") in ("ok", "degraded", "failing")
    assert "MB" in page.locator("#health-memory").inner_text()
    assert page.locator("#health-uptime").inner_text() not in ("", "—")
    assert page.locator('#health-checks li[data-check="memory"]').count() == 1
    # the sparkline draws the health history (the monitor samples every 0.2 s here)
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-rss').dataset.points) >= 2")
    assert page.locator("#chart-rss path").count() == 1
    # a calm page: a few status polls with If-None-Match, no progress polls when idle
    # (page.wait_for_timeout, not time.sleep: Playwright delivers events while it waits)
    start = len(requests)
    page.wait_for_timeout(4500)
    recent = requests[start:]
    polls = [r for r in recent if "/api/poll/status" in r.url]
    assert 1 <= len(polls) <= 4, [r.url for r in polls]
    assert any("if-none-match" in r.all_headers() for r in polls)
    assert not [r for r in recent if "/api/poll/progress" in r.url]
    assert len([r for r in recent if "/api/poll/health" in r.url]) <= 1
    assert page.locator("#degraded-banner").is_hidden()


def test_upload_through_file_input_shows_progress_then_thumbnail(ui, loop_server):
    page = ui.open(loop_server)
    # record every state an upload row passes through
    page.evaluate("""() => {
      window.__uploadStates = [];
      new MutationObserver(ms => ms.forEach(m => {
        const row = m.target.closest && m.target.closest('[data-testid=upload-row]');
        if (row) window.__uploadStates.push(row.dataset.state + '|' +
          (row.querySelector('[data-testid=upload-status]') || {}).textContent);
      })).observe(document.querySelector('#upload-list'),
                  {subtree: true, childList: true, attributes: true, characterData: true});
    }""")
    data, colour = make_gif(frames=12)
    id_ = item_id(data)
    page.set_input_files("#file-input", files=[
        {"name": "sunset.gif", "mimeType": "image/gif", "buffer": data}])
    row = page.locator('[data-testid="upload-row"][data-name="sunset.gif"]')
    row.wait_for()
    page.wait_for_selector('[data-testid="upload-row"][data-name="sunset.gif"][data-state="done"]')
    assert row.locator('[data-testid="upload-status"]').inner_text() == "Added to the library"
    states = page.evaluate("window.__uploadStates")
    assert any(s.startswith(("uploading|Uploading", "processing|")) for s in states), states
    assert states.index(next(s for s in states if s.startswith("done"))) > 0
    upload_id = row.get_attribute("data-upload-id")
    assert upload_id and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", upload_id)
    # the server saw our X-Upload-Id as the job id
    jobs = loop_server.data("/api/poll/progress")["jobs"]
    assert any(j["id"] == upload_id and j["stage"] == "done" for j in jobs), jobs
    # then the item appears with a loaded, lazily loaded thumbnail
    thumb = card(page, id_).locator('[data-testid="item-thumb"]')
    thumb.wait_for()
    assert thumb.get_attribute("loading") == "lazy"
    card(page, id_).scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=thumb.element_handle())
    assert card(page, id_).locator('[data-testid="item-name"]').inner_text() == "sunset.gif"
    assert card(page, id_).get_attribute("data-in-loop") == "true"
    assert id_ in loop_server.loop_ids()


def test_upload_errors_are_plain_words(ui, loop_server):
    page = ui.open(loop_server)
    page.set_input_files("#file-input", files=[
        {"name": "notes.gif", "mimeType": "image/gif", "buffer": b"this is not a picture\n" * 20}])
    row = page.locator('[data-testid="upload-row"][data-name="notes.gif"]')
    page.wait_for_selector('[data-testid="upload-row"][data-name="notes.gif"][data-state="failed"]')
    text = row.locator('[data-testid="upload-status"]').inner_text()
    assert re.search(r"not a file type|looks broken", text, re.I), text
    assert "{" not in text and "HTTP" not in text
    assert row.locator('[data-testid="upload-retry"]').is_visible()


def test_reorder_by_buttons_and_by_drag(ui, loop_server):
    a = loop_server.upload("first.gif", make_gif()[0])
    b = loop_server.upload("second.gif", make_gif()[0])
    ids = loop_server.loop_ids()
    assert ids.index(a) + 1 == ids.index(b)
    page = ui.open(loop_server)
    card(page, a).wait_for()
    card(page, a).locator('[data-testid="item-down"]').click()
    eventually(lambda: (lambda ids: ids.index(b) + 1 == ids.index(a))(loop_server.loop_ids()),
               message="down button did not swap the items in /api/loop")
    # the page shows the new order (loop list, DOM order)
    order = page.eval_on_selector_all('#library-loop [data-testid="item-card"]',
                                      "els => els.map(e => e.dataset.id)")
    assert order.index(b) + 1 == order.index(a)
    # and back with the up button
    card(page, a).locator('[data-testid="item-up"]').click()
    eventually(lambda: (lambda ids: ids.index(a) + 1 == ids.index(b))(loop_server.loop_ids()),
               message="up button did not swap the items back")
    # desktop: drag the second card onto the first one's leading half
    page.wait_for_timeout(300)
    target = card(page, a)
    box = target.bounding_box()
    card(page, b).drag_to(target, target_position={"x": 5, "y": box["height"] / 2})
    eventually(lambda: (lambda ids: ids.index(b) + 1 == ids.index(a))(loop_server.loop_ids()),
               message="drag and drop did not reorder /api/loop")


def test_toggle_in_loop_and_rename(ui, loop_server):
    id_ = loop_server.upload("toggle-me.gif", make_gif()[0])
    page = ui.open(loop_server)
    toggle = card(page, id_).locator('[data-testid="item-toggle"]')
    assert toggle.get_attribute("aria-pressed") == "true"
    toggle.click()
    eventually(lambda: id_ not in loop_server.loop_ids(), message="not taken out of the loop")
    assert loop_server.data(f"/api/media/{id_}")["in_loop"] is False
    page.wait_for_selector(f'#library-other [data-testid="item-card"][data-id="{id_}"]')
    card(page, id_).locator('[data-testid="item-toggle"]').click()
    eventually(lambda: loop_server.loop_ids()[-1:] == [id_], message="not appended to the loop")
    # rename
    card(page, id_).locator('[data-testid="item-rename"]').click()
    field = card(page, id_).locator('[data-testid="item-rename-input"]')
    field.fill("Renamed in the browser")
    card(page, id_).locator('[data-testid="item-rename-save"]').click()
    eventually(lambda: loop_server.data(f"/api/media/{id_}")["name"] == "Renamed in the browser",
               message="rename did not reach the server")
    page.wait_for_function(
        "id => document.querySelector(`[data-testid=item-card][data-id='${id}'] "
        "[data-testid=item-name]`).textContent === 'Renamed in the browser'", arg=id_)
    href = card(page, id_).locator('[data-testid="item-download"]').get_attribute("href")
    assert href == f"/api/media/{id_}/original"
    assert loop_server.call("GET", href).status == 200


def test_delete_asks_for_confirmation(ui, loop_server):
    id_ = loop_server.upload("delete-me.gif", make_gif()[0])
    page = ui.open(loop_server)
    answers = iter([False, True])
    messages = []

    def on_dialog(dialog):
        messages.append(dialog.message)
        dialog.accept() if next(answers) else dialog.dismiss()

    page.on("dialog", on_dialog)
    card(page, id_).locator('[data-testid="item-delete"]').click()
    page.wait_for_timeout(500)
    assert messages and "delete-me.gif" in messages[0]
    assert loop_server.call("GET", f"/api/media/{id_}").status == 200   # dismissed: kept
    card(page, id_).locator('[data-testid="item-delete"]').click()
    card(page, id_).wait_for(state="detached")
    eventually(lambda: loop_server.call("GET", f"/api/media/{id_}").status == 404,
               message="the item was not deleted")
    assert id_ not in loop_server.loop_ids()


def test_brightness_slider_is_debounced_and_saved(ui, loop_server):
    puts = []
    ui.page.on("request", lambda r: r.method == "PUT" and "/api/display" in r.url
               and puts.append(r.post_data))
    page = ui.open(loop_server)
    slider = page.locator("#brightness")
    # a person dragging the slider: many input events in quick succession
    page.eval_on_selector("#brightness", """el => {
      for (const v of [70, 60, 50, 45, 40, 37]) {
        el.value = String(v);
        el.dispatchEvent(new Event('input', {bubbles: true}));
      }
    }""")
    assert page.locator("#brightness-value").inner_text() == "37%"
    eventually(lambda: loop_server.data("/api/display")["brightness"] == 37,
               message="brightness 37 not saved")
    page.wait_for_timeout(300)           # let Playwright deliver the request events
    assert len(puts) == 1 and json.loads(puts[0]) == {"brightness": 37}, puts
    # keyboard works too (a real range input)
    slider.focus()
    page.keyboard.press("ArrowRight")
    eventually(lambda: loop_server.data("/api/display")["brightness"] == 38,
               message="keyboard change not saved")
    # polling does not fight the slider, and a change elsewhere shows up here
    loop_server.call("PUT", "/api/display", json_body={"brightness": 55})
    page.wait_for_function("() => document.querySelector('#brightness').value === '55'")
    loop_server.call("PUT", "/api/display", json_body={"brightness": 80})


def test_mode_select(ui, loop_server):
    page = ui.open(loop_server)
    page.select_option("#mode-select", "shuffle")
    eventually(lambda: loop_server.status()["player"]["mode"] == "shuffle",
               message="mode not changed")
    page.select_option("#mode-select", "all")
    eventually(lambda: loop_server.status()["player"]["mode"] == "all",
               message="mode not changed back")


@pytest.fixture
def resume_playing(loop_server):
    """Leave the shared server playing whatever a test did to the transport."""
    yield
    loop_server.call("POST", "/api/playback/play")


def test_show_now_pause_next_and_preview_follows(ui, loop_server, resume_playing):
    red_data, red = make_gif(colour=(220, 20, 20))
    red_id = loop_server.upload("red.gif", red_data)
    other_id = loop_server.upload("other.gif", make_gif()[0])
    assert other_id in loop_server.loop_ids()
    page = ui.open(loop_server)
    preview = page.locator("#preview")
    card(page, red_id).locator('[data-testid="item-show"]').click()
    eventually(lambda: loop_server.status()["player"]["item"] == red_id,
               message="show now did not select the item")
    page.wait_for_function(
        "id => document.querySelector('#preview').dataset.item === id", arg=red_id)
    page.wait_for_function(f"img => ({PREVIEW_CENTRE_JS})(img) && "
                           f"({PREVIEW_CENTRE_JS})(img)[0] > 150", arg=preview.element_handle())
    assert close(preview.evaluate(PREVIEW_CENTRE_JS), red)
    assert page.locator("#current-name").inner_text() == "red.gif"
    assert card(page, red_id).get_attribute("data-current") == "true"
    src_before = preview.get_attribute("src")
    assert src_before.startswith("blob:")
    # pause
    page.wait_for_selector('#btn-play[data-state="playing"]')
    page.click("#btn-play")
    eventually(lambda: loop_server.status()["player"]["state"] == "paused",
               message="pause did not reach the player")
    page.wait_for_selector('#btn-play[data-state="paused"]')
    assert page.locator("#btn-play").inner_text() == "Play"
    # next: another item, and the preview image follows
    page.click("#btn-next")
    eventually(lambda: loop_server.status()["player"]["item"] not in (red_id, None),
               message="next did not move on")
    new_item = loop_server.status()["player"]["item"]
    page.wait_for_function(
        "id => document.querySelector('#preview').dataset.item === id", arg=new_item)
    assert preview.get_attribute("src") != src_before
    page.wait_for_function(f"img => !(({PREVIEW_CENTRE_JS})(img) || [])"
                           f".every((v, i) => Math.abs(v - {list(red)}[i]) <= 12)",
                           arg=preview.element_handle())
    assert page.locator("#current-name").inner_text() != "red.gif"
    # previous comes back to red, play resumes
    page.click("#btn-prev")
    eventually(lambda: loop_server.status()["player"]["item"] == red_id,
               message="previous did not go back")
    page.click("#btn-play")
    eventually(lambda: loop_server.status()["player"]["state"] == "playing",
               message="play did not resume")


def test_connection_loss_shows_reconnecting_and_recovers_without_reload(ui, loop_server):
    page = ui.open(loop_server)
    page.wait_for_selector('#conn-state[data-state="ok"]')
    page.evaluate("window.__sameDocument = true")
    page.route("**/api/**", lambda route: route.abort("connectionrefused"))
    page.wait_for_selector('#conn-state[data-state="reconnecting"]')
    assert "Reconnecting" in page.locator("#conn-state").inner_text()
    assert page.locator("#conn-state").is_visible()
    page.wait_for_timeout(2500)            # a couple of back-off rounds
    page.unroute("**/api/**")
    page.wait_for_selector('#conn-state[data-state="ok"]', timeout=40_000)
    assert page.evaluate("window.__sameDocument") is True    # recovered, not reloaded
    # and it keeps working: a change made elsewhere shows up
    id_ = loop_server.upload("after-reconnect.gif", make_gif()[0])
    card(page, id_).wait_for(timeout=UI_TIMEOUT_MS)


def test_token_is_asked_once_on_401_and_kept(browser, loop_server):
    probe = loop_server.call("PUT", "/api/playback/mode", json_body={"mode": "all"}, token=None)
    assert probe.status == 401, probe
    ui = new_page(browser, with_token=False)
    try:
        page = ui.open(loop_server)
        assert page.locator("#token-overlay").is_hidden()
        page.select_option("#mode-select", "one")
        page.wait_for_selector("#token-overlay", state="visible")
        page.fill("#token-input", TOKEN)
        page.click("#token-submit")
        page.wait_for_selector("#token-overlay", state="hidden")
        eventually(lambda: loop_server.status()["player"]["mode"] == "one",
                   message="the change was not retried with the token")
        assert page.evaluate(f"localStorage.getItem({json.dumps(TOKEN_KEY)})") == TOKEN
        # kept: the next change needs no prompt
        page.select_option("#mode-select", "all")
        eventually(lambda: loop_server.status()["player"]["mode"] == "all",
                   message="second change failed")
        assert page.locator("#token-overlay").is_hidden()
    finally:
        ui.context.close()
    ui.check_clean()


def test_degraded_banner_when_display_breaker_opens(browser, tmp_path_factory):
    # The service drives the strict fake LED binding; its control file makes the "panel" fail
    # every SwapOnVSync, so with breaker_max_failures = 1 the breaker opens at once.
    control = tmp_path_factory.mktemp("panel") / "control"
    control.write_text("fail")
    loop = start_loop(tmp_path_factory,
                      env={"PYTHONPATH": FAKE_RGBMATRIX, "FAKE_RGBMATRIX_CONTROL": str(control)},
                      display={"driver": "rgbmatrix", "breaker_max_failures": 1,
                               "breaker_reset_sec": 300.0, "breaker_max_reset_sec": 300.0})
    ui = new_page(browser)
    try:
        loop.upload("degraded.gif", make_gif()[0])
        eventually(lambda: loop.status()["display"]["status"] == "degraded", timeout=15,
                   message="the failing panel did not open the display breaker")
        page = ui.open(loop)
        banner = page.locator("#degraded-banner")
        banner.wait_for(state="visible")
        text = banner.inner_text().lower()
        assert "display" in text or "panel" in text, text
        assert "breaker" in text, text
        page.wait_for_selector('#health-status[data-status="degraded"]')
        assert page.locator("#health-breaker").inner_text() in ("open", "half-open")
        # the preview still works while the panel is down
        page.wait_for_function("() => document.querySelector('#preview').src.startsWith('blob:')")
    finally:
        ui.context.close()
        stop_loop(loop)
    ui.check_clean()


def test_keyboard_reaches_every_control(ui, loop_server):
    loop_server.upload("keyboard.gif", make_gif()[0])
    page = ui.open(loop_server)
    page.locator('[data-testid="item-card"]').first.wait_for()
    reached = set()
    page.locator("body").focus()
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.add(page.evaluate(
            "() => { const e = document.activeElement; "
            "return e ? (e.id || e.dataset.testid || e.tagName) : null }"))
    wanted = {"btn-prev", "btn-play", "btn-next", "mode-select", "brightness", "file-input",
              "item-up", "item-down", "item-toggle", "item-show", "item-rename",
              "item-download", "item-delete"}
    assert wanted <= reached, wanted - reached


def test_dashboard_at_360px(browser, loop_server):
    for name in ("a-rather-long-file-name-for-a-small-phone-screen.gif", "cat.gif"):
        loop_server.upload(name, make_gif()[0])
    loop_server.call("POST", "/api/playback/play")
    ui = new_page(browser, viewport={"width": 360, "height": 780}, device_scale_factor=2,
                  is_mobile=True, has_touch=True)
    try:
        page = ui.open(loop_server)
        page.locator('[data-testid="item-card"]').first.wait_for()
        page.wait_for_function("() => document.querySelector('#preview').src.startsWith('blob:')")
        page.wait_for_function(
            "() => document.querySelector('#health-status').dataset.status !== 'unknown'")
        # no sideways scrolling, every main control fits on screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        for selector in ("#btn-prev", "#btn-play", "#btn-next", "#mode-select", "#brightness",
                         "#drop-zone", '[data-testid="item-card"]', '[data-testid="item-up"]',
                         '[data-testid="item-delete"]'):
            box = page.locator(selector).first.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360 + 0.5, selector
        # no layout jump while polling: the preview box keeps its size across polls
        before = page.locator("#preview-box").bounding_box()
        page.wait_for_timeout(4500)
        assert page.locator("#preview-box").bounding_box() == before
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "dashboard-360.png"), full_page=True)
    finally:
        ui.context.close()
    ui.check_clean()
