"""The dashboard on a phone (360 px wide Chromium) and on a 1280x800 laptop, against a real
LOOP process: touch targets, the full-width rename, the layouts, and the phone screenshot the
README shows (docs/dashboard-phone.png, regenerated here). The browser and helpers are
test_dashboard.py's; this module has its own server so the screenshot's library is known."""

from __future__ import annotations

import io
import os

import pytest
import test_dashboard as dash
from conftest import ROOT
from PIL import Image, ImageDraw
from test_dashboard import card, make_gif, start_loop, stop_loop

browser = dash.browser  # the module's fixtures, shared (one Chromium per module)

PHONE = {"viewport": {"width": 360, "height": 780}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}
LAPTOP = {"viewport": {"width": 1280, "height": 800}}
MIN_TARGET_PX = 44          # WCAG 2.5.5 (AAA) target size, in CSS px
SCREENSHOT = os.path.join(ROOT, "docs", "dashboard-phone.png")
SHOT_HEIGHT = 1360          # CSS px: a phone's first screen and most of the second

# Every control a person can tap: what the browser treats as interactive. A native input
# hidden on purpose (class visually-hidden: the file pickers) is measured by the label that
# stands for it on screen.
MEASURE_TARGETS_JS = """() => {
  const found = [];
  const seen = new Set();
  const sel = 'button, a[href], input, select, textarea, summary, [role=button], [tabindex]';
  for (const el of document.querySelectorAll(sel)) {
    if (el.type === 'hidden') continue;
    const target = el.matches('.visually-hidden') ? el.closest('label') : el;
    if (!target || seen.has(target)) continue;
    seen.add(target);
    if (!target.getClientRects().length || getComputedStyle(target).visibility === 'hidden') {
      continue;                                  // not on screen in this state
    }
    const r = target.getBoundingClientRect();
    found.push({what: target.tagName.toLowerCase() + (target.id ? '#' + target.id : '') +
                  (el.dataset.testid ? '[' + el.dataset.testid + ']' : '') +
                  (target !== el && target.dataset.testid ? '[' + target.dataset.testid + ']'
                                                          : '') +
                  (target.textContent.trim() ? ' "' + target.textContent.trim().slice(0, 20) + '"'
                                             : ''),
                w: Math.round(r.width * 10) / 10, h: Math.round(r.height * 10) / 10});
  }
  return found;
}"""


def sign_png(text_colour, background) -> bytes:
    """A 64x32 still with a frame and stripes: something recognisable in a screenshot."""
    img = Image.new("RGB", (64, 32), background)
    draw = ImageDraw.Draw(img)
    draw.rectangle((1, 1, 62, 30), outline=text_colour)
    for x in range(8, 56, 8):
        draw.rectangle((x, 10, x + 3, 21), fill=text_colour)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def phone_server(tmp_path_factory):
    loop = start_loop(tmp_path_factory)
    # the screenshot's library: a still first, then two animations (fixed colours: the same
    # bytes, the same ids and thumbnails on every run)
    loop.still = loop.upload("shop-sign.png", sign_png((255, 210, 60), (120, 20, 40)))
    loop.upload("sunset-over-the-harbour.gif", make_gif(colour=(240, 120, 40), frames=4)[0])
    loop.upload("cat.gif", make_gif(colour=(40, 150, 220), frames=4)[0])
    yield loop
    stop_loop(loop)


def phone_page(browser, server, **extra):
    ui = dash.new_page(browser, **dict(PHONE, **extra))
    page = ui.open(server)
    page.locator('[data-testid="item-card"]').first.wait_for()
    page.wait_for_function(
        "() => document.querySelector('#health-status').dataset.status !== 'unknown'")
    return ui, page


def test_every_control_is_at_least_44px_on_a_phone(browser, phone_server):
    # a text item (for its edit sheet) and a message (for the queue's dismiss button); both
    # go again before the screenshot below
    made = phone_server.call("POST", "/api/media", json_body={"text": "Touch me"})
    assert made.status == 201, made
    text_id = made.data["results"][0]["item"]["id"]
    note = phone_server.call("POST", "/api/notify", json_body={
        "text": "Measuring", "priority": "low", "duration_sec": 600, "id": "touch"})
    assert note.status == 201, note
    ui, page = phone_page(browser, phone_server)
    try:
        cards = page.locator('[data-testid="item-card"]')
        # open what hides controls: a rename sheet, a play-time sheet, a text's edit sheet, the
        # health details, a schedule rule (days, times, brightness, what it shows), a failed
        # upload row, the Add text form (then the Add clock form), the token form; a message
        # waits in the queue
        cards.nth(0).locator('[data-testid="item-rename"]').click()
        cards.nth(1).locator('[data-testid="item-timing"]').click()
        dash.card(page, text_id).locator('[data-testid="item-edit"]').click()
        page.click('[data-testid="health-details-toggle"]')
        page.click('[data-testid="schedule-add"]')
        page.set_input_files("#file-input", files=[
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture\n" * 9}])
        page.wait_for_selector('[data-testid="upload-row"][data-state="failed"]')
        page.wait_for_selector('[data-testid="notify-entry"][data-id="touch"]')
        page.click('[data-testid="add-text"]')
        measured = page.evaluate(MEASURE_TARGETS_JS)
        page.click('[data-testid="add-clock"]')
        measured += [m for m in page.evaluate(MEASURE_TARGETS_JS) if "new-clock" in m["what"]]
        page.click("#token-open")
        page.locator("#token-overlay").wait_for(state="visible")
        measured += [m for m in page.evaluate(MEASURE_TARGETS_JS) if "token" in m["what"]]
        page.click("#token-cancel")

        kinds = {m["what"].split("[")[0].split(" ")[0].split("#")[0] for m in measured}
        assert {"button", "a", "input", "select", "summary", "label"} <= kinds, kinds
        for testid in ("rule-day", "rule-start", "rule-show", "item-rename-input",
                       "item-loop-count", "restore-choose", "upload-dismiss",
                       "health-details-toggle", "notify-text", "notify-priority",
                       "notify-duration", "notify-color", "notify-send", "notify-dismiss",
                       "add-text", "add-clock", "new-text-text", "new-text-color",
                       "new-text-background", "new-text-scroll", "new-text-speed",
                       "new-text-save", "new-clock-format", "new-clock-seconds",
                       "new-clock-color", "new-clock-save", "item-edit-text", "item-edit-color",
                       "item-edit-save", "item-edit-cancel"):
            assert any(f"[{testid}]" in m["what"] for m in measured), testid
        small = [m for m in measured if m["w"] < MIN_TARGET_PX or m["h"] < MIN_TARGET_PX]
        assert not small, f"controls under {MIN_TARGET_PX}x{MIN_TARGET_PX} px: {small}"
        # and nothing makes the page scroll sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        # the whole page with everything open, for a person to look at (not committed)
        os.makedirs(dash.ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(dash.ARTIFACTS, "dashboard-360.png"), full_page=True)
    finally:
        ui.context.close()
        phone_server.call("DELETE", f"/api/media/{text_id}")
        phone_server.call("DELETE", "/api/notify/touch")
    ui.check_clean()


def test_rename_on_a_phone_gets_the_cards_full_width(browser, phone_server):
    ui, page = phone_page(browser, phone_server)
    try:
        first = card(page, phone_server.still)
        first.locator('[data-testid="item-rename"]').click()
        field = first.locator('[data-testid="item-rename-input"]')
        assert field.evaluate("el => el === document.activeElement")
        inner = first.evaluate("el => el.clientWidth - parseFloat(getComputedStyle(el)"
                               ".paddingLeft) - parseFloat(getComputedStyle(el).paddingRight)")
        width = field.bounding_box()["width"]
        assert width >= inner - 1 and width >= 280, (width, inner)   # it was 28 px
        # the buttons make room for it instead of sharing its line
        assert first.locator('[data-testid="item-show"]').is_hidden()
        first.locator('[data-testid="item-rename-cancel"]').click()
        assert first.locator('[data-testid="item-show"]').is_visible()
        assert first.locator('[data-testid="item-rename"]').evaluate(
            "el => el === document.activeElement")
    finally:
        ui.context.close()
    ui.check_clean()


def test_laptop_shows_player_upload_and_library_without_scrolling(browser, phone_server):
    ui = dash.new_page(browser, **LAPTOP)
    try:
        page = ui.open(phone_server)
        page.locator('[data-testid="item-card"]').first.wait_for()
        page.locator("#schedule-panel").wait_for(state="visible")
        for selector in ("#btn-play", "#brightness", "#drop-zone",
                         '#library-loop [data-testid="item-card"]', "#health-verdict"):
            box = page.locator(selector).first.bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 800, (selector, box)
        # no tall column beside a short one: the operator panels stand in their own column
        # (it used to be a 2,800 px left column)
        columns = page.eval_on_selector_all(
            ".col", "cols => cols.map(c => [c.getBoundingClientRect().x, c.offsetHeight])")
        assert len({x for x, _ in columns}) == 3, columns
        assert max(h for _, h in columns) < 1600, columns
        os.makedirs(dash.ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(dash.ARTIFACTS, "dashboard-1280.png"))
    finally:
        ui.context.close()
    ui.check_clean()


def test_phone_screenshot_for_the_readme(browser, phone_server):
    """Regenerates docs/dashboard-phone.png when the dashboard looks different (an unchanged
    look leaves the file, and git, alone): the top SHOT_HEIGHT px of the page on a 360 px
    phone, twice the pixels: the player, the message box, the upload box and the start of
    the library."""
    server = phone_server
    server.call("PUT", "/api/display", json_body={"brightness": 80, "fit": "contain"})
    server.call("PUT", "/api/playback/mode", json_body={"mode": "all"})
    server.call("POST", "/api/playback/select", json_body={"id": server.still})
    server.call("POST", "/api/playback/pause")
    ui, page = phone_page(browser, server)
    try:
        page.wait_for_selector('#conn-state[data-state="ok"]')
        page.wait_for_function("id => document.querySelector('#preview').dataset.item === id",
                               arg=server.still)
        page.wait_for_selector('#btn-play[data-state="paused"]')
        page.wait_for_function("() => Array.from(document.querySelectorAll("
                               "'[data-testid=item-thumb]')).every(i => i.complete && "
                               "i.naturalWidth > 0)")
        shot = Image.open(io.BytesIO(page.screenshot(
            full_page=True, clip={"x": 0, "y": 0, "width": 360, "height": SHOT_HEIGHT})))
        assert shot.size == (720, 2 * SHOT_HEIGHT)
        # it shows the dashboard with its library: the paused still in the preview...
        preview = page.locator("#preview").bounding_box()
        centre = shot.getpixel((int(2 * (preview["x"] + preview["width"] / 2)),
                                int(2 * (preview["y"] + preview["height"] / 2))))
        assert centre[:3] == (120, 20, 40) or centre[:3] == (255, 210, 60), centre
        # ...the message box and the Add text / Add clock buttons...
        for selector in ("#notify-send", "#add-clock"):
            box = page.locator(selector).bounding_box()
            assert box["y"] + box["height"] < SHOT_HEIGHT, (selector, box)
        # ...and the first library card, whole
        first_card = page.locator('[data-testid="item-card"]').first.bounding_box()
        assert first_card["y"] + first_card["height"] < SHOT_HEIGHT, first_card
    finally:
        ui.context.close()
    ui.check_clean()
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    if os.path.exists(SCREENSHOT):
        with Image.open(SCREENSHOT) as old:
            if old.size == shot.size and old.convert("RGB").tobytes() == \
                    shot.convert("RGB").tobytes():
                return
    shot.save(SCREENSHOT, optimize=True)
    with Image.open(SCREENSHOT) as saved:
        assert saved.size == (720, 2 * SHOT_HEIGHT)
