"""The web dashboard (issues 7 and 20) driven in a real headless Chromium against a real LOOP
process.

Playwright for Python drives Debian's /usr/bin/chromium (a downloaded browser is never used:
do not run `playwright install`). Without that browser the browser tests skip with the reason;
under CI (`CI=true`) a missing browser or Playwright is a failure instead.

One browser and one LOOP server per module keep this fast; every test uses its own browser
context (fresh localStorage) and uploads its own uniquely coloured media, so the tests do not
depend on each other's order. The ids and data-testid hooks used here are listed at the top
of loop/web/app.js. The phone layout (touch targets, the README screenshot) is in
test_dashboard_phone.py, going offline and coming back in test_dashboard_offline.py.
"""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from conftest import FAKE_RGBMATRIX, ROOT, Client, png_bytes, spawn, wait_for, write_config
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
        # app.js catches what a panel's listener or a poller throws and logs it: still a bug
        caught = [m for m in self.console_errors if m.startswith("LOOP dashboard")]
        assert not caught, f"script errors caught by the dashboard: {caught}"


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


def assert_health_card_reads_well(page, loop):
    """The Health card: one verdict, four facts in MB/GB and °C, the rest behind "Details"."""
    checks = loop.data("/api/poll/health")["checks"]
    verdict = page.locator('[data-testid="health-verdict"]').inner_text()
    assert verdict and "{" not in verdict and "_" not in verdict, verdict
    memory = page.locator("#health-memory").inner_text()
    assert re.fullmatch(r"\d+ MB of 160 MB", memory), memory     # memory_limit_mb default
    disk = page.locator("#health-disk").inner_text()
    assert re.fullmatch(r"\d+(\.\d)? (MB|GB) free \(\d+%\)", disk), disk
    shown_percent = int(re.search(r"\((\d+)%\)", disk).group(1))
    assert abs(shown_percent - checks["disk"]["free_percent"]) <= 1, disk  # (read at another time)
    temp = page.locator("#health-temp").inner_text()
    assert temp == "no sensor" if checks["temperature"]["temp_c"] is None \
        else re.fullmatch(r"\d+ °C", temp), temp
    assert page.locator("#health-panel-state").inner_text() == "none (preview only)"  # headless
    # the raw dump is gone from the first view: details are folded away...
    details = page.locator("#health-details")
    assert details.get_attribute("open") is None
    assert page.locator("#health-checks").is_hidden()
    box = page.locator("#health-panel").bounding_box()
    assert box["height"] < 400, box        # was a 1,500 px dump
    # ...and readable when unfolded
    page.click('[data-testid="health-details-toggle"]')
    page.locator("#health-checks").wait_for(state="visible")
    assert page.locator("#health-uptime").inner_text() not in ("", "—")
    assert page.locator('#health-checks li[data-check="memory"]').count() == 1
    disk_line = page.locator('#health-checks li[data-check="disk"] .check-nums').inner_text()
    assert re.search(r"free \d+(\.\d)? (MB|GB)", disk_line), disk_line
    assert not re.search(r"\bmb\b|_", disk_line), disk_line     # not "free mb 78633.1"
    beats = page.locator('#health-checks li[data-check="heartbeats"] .check-nums').inner_text()
    assert "systemd watchdog not used" in beats and not re.search(r"watchdog no\b", beats), beats
    # the sparkline draws the health history (the monitor samples every 0.2 s here)
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-rss').dataset.points) >= 2")
    assert page.locator("#chart-rss path").count() == 1


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


@pytest.mark.parametrize("script", ["operator.js", "notify.js"])
def test_add_on_scripts_are_self_contained(script):
    """The scripts that plug into app.js: loaded by the page, nothing remote, no eval, no
    innerHTML (app.js itself names the SVG namespace URL, hence the check above)."""
    js = open(os.path.join(WEB, script), encoding="utf-8").read()
    assert "eval(" not in js and "new Function" not in js and "innerHTML" not in js
    assert "http://" not in js and "https://" not in js
    html = open(os.path.join(WEB, "index.html"), encoding="utf-8").read()
    assert f'<script src="/{script}" defer></script>' in html


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
    assert_health_card_reads_well(page, loop_server)
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


def failed_row(page, name):
    page.wait_for_selector(f'[data-testid="upload-row"][data-name="{name}"][data-state="failed"]')
    return page.locator(f'[data-testid="upload-row"][data-name="{name}"]')


def test_upload_errors_are_plain_words_without_a_useless_retry(ui, loop_server):
    page = ui.open(loop_server)
    page.set_input_files("#file-input", files=[
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not a picture\n" * 20},
        {"name": "broken.gif", "mimeType": "image/gif", "buffer": b"GIF89a\x40\x00\x20\x00"}])
    # 415: plain words, no machine code, no tool name, and no Retry (the file will not change)
    row = failed_row(page, "notes.txt")
    text = row.locator('[data-testid="upload-status"]').inner_text()
    assert text == ("LOOP cannot show this kind of file. GIF, PNG, JPEG, WebP, BMP and "
                    "common videos work."), text
    assert row.locator('[data-testid="upload-retry"]').is_hidden()
    assert row.locator('[data-testid="upload-dismiss"]').is_visible()
    # one line of words: the server's sentence is not repeated under it
    assert row.inner_text().count("not a supported image") == 0, row.inner_text()
    assert row.locator("text=/ffmpeg/i").count() == 0
    # 422: a damaged file, no Retry either
    row = failed_row(page, "broken.gif")
    assert row.locator('[data-testid="upload-status"]').inner_text() == \
        "The file looks damaged: LOOP could not read it."
    assert row.locator('[data-testid="upload-retry"]').is_hidden()


def test_upload_of_a_video_without_ffmpeg_says_so_plainly(ui, loop_server):
    # what a LOOP without ffmpeg answers (loop/video.py): the phone user is not told to apt install
    body = {"success": False, "error": "unsupported_media",
            "message": "video uploads need ffmpeg, which is not installed on this device "
                       "(apt install ffmpeg); images still work",
            "data": {"results": [{"name": "clip.mp4", "status": 415, "item": None,
                                  "code": "unsupported_media",
                                  "error": "video uploads need ffmpeg, which is not installed "
                                           "on this device (apt install ffmpeg); images still "
                                           "work"}]}}
    ui.page.route("**/api/media", lambda route: route.fulfill(
        status=415, content_type="application/json", body=json.dumps(body))
        if route.request.method == "POST" else route.continue_())
    page = ui.open(loop_server)
    page.set_input_files("#file-input", files=[
        {"name": "clip.mp4", "mimeType": "video/mp4", "buffer": b"\x00\x00\x00\x18ftypmp42"}])
    row = failed_row(page, "clip.mp4")
    assert row.locator('[data-testid="upload-status"]').inner_text() == \
        "This LOOP cannot play videos. Pictures and GIFs work."
    assert "ffmpeg" not in row.inner_text() and "apt" not in row.inner_text()
    assert row.locator('[data-testid="upload-retry"]').is_hidden()


def test_upload_error_that_retrying_can_fix_offers_retry(ui, loop_server):
    answers = iter([507])     # the first try finds the storage full; the retry goes through

    def full_once(route):
        status = next(answers, None) if route.request.method == "POST" else None
        if status is None:
            return route.continue_()
        route.fulfill(status=status, content_type="application/json", body=json.dumps(
            {"success": False, "error": "insufficient_storage",
             "message": "the device's storage is full", "data": None}))

    ui.page.route("**/api/media", full_once)
    page = ui.open(loop_server)
    data, _ = make_gif()
    page.set_input_files("#file-input", files=[
        {"name": "after-cleanup.gif", "mimeType": "image/gif", "buffer": data}])
    row = failed_row(page, "after-cleanup.gif")
    assert row.locator('[data-testid="upload-status"]').inner_text() == \
        "LOOP's storage is full. Delete something, then retry."
    row.locator('[data-testid="upload-retry"]').click()
    page.wait_for_selector('[data-testid="upload-row"][data-name="after-cleanup.gif"]'
                           '[data-state="done"]')
    assert item_id(data) in loop_server.loop_ids()


def test_files_picked_together_enter_the_loop_in_pick_order_running_row_on_top(ui, loop_server):
    page = ui.open(loop_server)
    # every change to the list: the rows' names and states, top to bottom
    page.evaluate("""() => {
      window.__rowOrders = [];
      const list = document.querySelector('#upload-list');
      const snap = () => window.__rowOrders.push(Array.from(list.children,
        r => [r.dataset.name, r.dataset.state]));
      new MutationObserver(snap).observe(list, {subtree: true, childList: true,
        attributes: true, attributeFilter: ['data-state']});
    }""")
    # a long animation first, two small ones after it: sent together, the small ones would
    # finish (and be appended to the loop) first
    big, _ = make_gif(frames=150)
    small_a, _ = make_gif()
    small_b, _ = make_gif()
    names = ["long-one.gif", "small-a.gif", "small-b.gif"]
    page.set_input_files("#file-input", files=[
        {"name": n, "mimeType": "image/gif", "buffer": d}
        for n, d in zip(names, (big, small_a, small_b), strict=True)])
    for name in names:
        page.wait_for_selector(f'[data-testid="upload-row"][data-name="{name}"][data-state="done"]')
    ids = [item_id(d) for d in (big, small_a, small_b)]
    assert loop_server.loop_ids()[-3:] == ids
    orders = page.evaluate("window.__rowOrders")
    active = {"queued", "uploading", "processing", "retrying", "waiting"}
    for order in orders:
        states = [state for _, state in order]
        # nothing finished sits above something still to do, and what runs is on top
        finished_at = [i for i, s in enumerate(states) if s not in active]
        active_at = [i for i, s in enumerate(states) if s in active]
        assert not finished_at or not active_at or max(active_at) < min(finished_at), order
        running = [i for i, s in enumerate(states) if s in ("uploading", "processing")]
        assert running in ([], [0]), order
        queued = [n for n, s in order if s == "queued"]
        assert queued == sorted(queued, key=names.index), order
    # the second file ran after the first was done, and was moved above its finished row
    assert any(o[0][0] == "small-a.gif" and o[0][1] in ("uploading", "processing")
               and ["long-one.gif", "done"] in o for o in orders), orders
    # finished rows: newest first
    final = page.eval_on_selector_all('[data-testid="upload-row"]',
                                      "rows => rows.map(r => r.dataset.name)")
    assert final == list(reversed(names))


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
    # desktop: drag the second card (by its edge, not a button) onto the first one's
    # leading corner (before it, whether the cards stand in a row or a column)
    page.wait_for_timeout(300)
    card(page, b).drag_to(card(page, a), source_position={"x": 4, "y": 4},
                          target_position={"x": 4, "y": 4})
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
    # rename: an empty name is refused next to the field...
    card(page, id_).locator('[data-testid="item-rename"]').click()
    field = card(page, id_).locator('[data-testid="item-rename-input"]')
    message = card(page, id_).locator('[data-testid="item-rename-message"]')
    field.fill("   ")
    card(page, id_).locator('[data-testid="item-rename-save"]').click()
    message.wait_for(state="visible")
    assert message.inner_text() == "A name cannot be empty."
    # ...and the message goes when the next try starts (here: a good one)
    field.fill("Renamed in the browser")
    card(page, id_).locator('[data-testid="item-rename-save"]').click()
    message.wait_for(state="hidden")
    assert page.locator("#message").is_hidden()
    eventually(lambda: loop_server.data(f"/api/media/{id_}")["name"] == "Renamed in the browser",
               message="rename did not reach the server")
    page.wait_for_function(
        "id => document.querySelector(`[data-testid=item-card][data-id='${id}'] "
        "[data-testid=item-name]`).textContent === 'Renamed in the browser'", arg=id_)
    href = card(page, id_).locator('[data-testid="item-download"]').get_attribute("href")
    assert href == f"/api/media/{id_}/original"
    assert loop_server.call("GET", href).status == 200


def test_play_time_per_item(ui, loop_server):
    anim = loop_server.upload("timed.gif", make_gif()[0])
    still = loop_server.upload("still.png", png_bytes(colour=unique_colour()))
    page = ui.open(loop_server)
    anim_card = card(page, anim)
    summary = anim_card.locator('[data-testid="item-timing-summary"]')
    assert summary.is_hidden()                  # defaults: nothing to say
    anim_card.locator('[data-testid="item-timing"]').click()
    count = anim_card.locator('[data-testid="item-loop-count"]')
    seconds = anim_card.locator('[data-testid="item-duration"]')
    message = anim_card.locator('[data-testid="item-timing-message"]')
    # the form says what an empty field means: the server's default (media.loop_count = 3)
    assert "the default, 3 times" in \
        anim_card.locator('[data-testid="item-timing-hint"]').inner_text()
    # a wrong number is refused here, nothing is sent
    count.fill("2.5")
    anim_card.locator('[data-testid="item-timing-save"]').click()
    message.wait_for(state="visible")
    assert "whole number" in message.inner_text()
    assert loop_server.data(f"/api/media/{anim}")["loop_count"] is None
    # times through
    count.fill("5")
    anim_card.locator('[data-testid="item-timing-save"]').click()
    eventually(lambda: loop_server.data(f"/api/media/{anim}")["loop_count"] == 5,
               message="loop_count not saved")
    page.wait_for_function("el => el.textContent === 'plays 5 times'", arg=summary.element_handle())
    assert anim_card.get_attribute("data-sheet") == ""
    # seconds win; empty fields go back to the default (null)
    anim_card.locator('[data-testid="item-timing"]').click()
    assert count.input_value() == "5"
    count.fill("")
    seconds.fill("12.5")
    anim_card.locator('[data-testid="item-timing-save"]').click()
    eventually(lambda: (lambda d: d["loop_count"] is None and d["duration_sec"] == 12.5)(
        loop_server.data(f"/api/media/{anim}")), message="duration_sec not saved")
    page.wait_for_function("el => el.textContent === 'plays 12.5 s'", arg=summary.element_handle())
    anim_card.locator('[data-testid="item-timing"]').click()
    seconds.fill("")
    anim_card.locator('[data-testid="item-timing-save"]').click()
    eventually(lambda: loop_server.data(f"/api/media/{anim}")["duration_sec"] is None,
               message="duration_sec not reset to the default")
    summary.wait_for(state="hidden")
    # a still picture has no "times through", only its seconds on screen
    still_card = card(page, still)
    still_card.locator('[data-testid="item-timing"]').click()
    assert still_card.locator('[data-testid="item-loop-count"]').is_hidden()
    still_card.locator('[data-testid="item-duration"]').fill("4")
    still_card.locator('[data-testid="item-timing-save"]').click()
    eventually(lambda: loop_server.data(f"/api/media/{still}")["duration_sec"] == 4,
               message="still's seconds not saved")
    page.wait_for_function("el => el.textContent === 'shows 4 s'",
                           arg=still_card.locator('[data-testid="item-timing-summary"]')
                           .element_handle())


def test_fit_select_changes_the_fit(ui, loop_server):
    assert loop_server.data("/api/display")["fit"] == "contain"
    page = ui.open(loop_server)
    page.wait_for_function("() => document.querySelector('#fit-select').value === 'contain'")
    try:
        page.select_option("#fit-select", "cover")
        eventually(lambda: loop_server.data("/api/display")["fit"] == "cover",
                   message="fit not changed")
        # what the page shows comes from the server: a fresh page says "cover" too
        page.reload()
        page.wait_for_selector('body[data-ready="1"]', state="attached")
        page.wait_for_function("() => document.querySelector('#fit-select').value === 'cover'")
    finally:
        loop_server.call("PUT", "/api/display", json_body={"fit": "contain"})
        # the items are rendered again for the fit: let them finish before other tests
        eventually(lambda: not any(i["pending"] for i in loop_server.data("/api/media")["items"]),
                   timeout=30, message="re-render after the fit change did not finish")


def test_a_message_goes_when_the_next_action_starts(ui, loop_server, resume_playing):
    loop_server.upload("message.gif", make_gif()[0])
    busy = {"success": False, "error": "busy", "message": "LOOP is busy", "data": None}
    ui.page.route("**/api/playback/mode", lambda route: route.fulfill(
        status=422, content_type="application/json",
        body=json.dumps(dict(busy, error="validation_failed",
                             message="mode must be one of all, one, shuffle"))))
    page = ui.open(loop_server)
    page.select_option("#mode-select", "shuffle")
    toast = page.locator("#message")
    toast.wait_for(state="visible")
    assert "mode must be one of" in toast.inner_text()
    # the next action (pause) starts: the old error goes at once, not 8 s later
    page.click("#btn-play")
    toast.wait_for(state="hidden", timeout=2000)
    eventually(lambda: loop_server.status()["player"]["state"] == "paused",
               message="pause did not reach the player")


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
        # (inside the folded details: text_content, not the rendered text)
        assert page.locator("#health-breaker").text_content() in ("open", "half-open")
        assert page.locator("#health-panel-state").inner_text() == "not responding"
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
    wanted = {"btn-prev", "btn-play", "btn-next", "mode-select", "fit-select", "brightness",
              "file-input", "item-up", "item-down", "item-toggle", "item-show", "item-rename",
              "item-timing", "item-download", "item-delete", "health-details-toggle"}
    reached = set()
    page.locator("body").focus()
    for _ in range(400):            # the shared library has many cards by now
        page.keyboard.press("Tab")
        reached.add(page.evaluate(
            "() => { const e = document.activeElement; "
            "return e ? (e.id || e.dataset.testid || e.tagName) : null }"))
        if wanted <= reached:
            break
    assert wanted <= reached, wanted - reached
