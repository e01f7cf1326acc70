"""The dashboard's message box, message queue, text and clock items and the night rule's `show`
(issue 18) in headless Chromium against a real LOOP process. The browser and helpers are
test_dashboard.py's (one Chromium per module); this module has its own server, with a small
message queue (notify.max_queued = 4) so a full queue is real, not faked. Hooks: the top of
loop/web/notify.js (message box, queue), app.js (cards, Add text / Add clock, the player's
notice) and operator.js (rule-show)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
from zoneinfo import ZoneInfo

import pytest
import test_dashboard as dash
from PIL import Image
from test_dashboard import card, eventually, make_gif, start_loop, stop_loop

browser = dash.browser  # the module's fixtures, shared (one Chromium per module)
ui = dash.ui

ZONE = "Europe/Berlin"
QUEUE = 4

# How many pixels of the <img> are within `tol` of `rgb` (the dashboard's live preview).
PREVIEW_COUNT_JS = """([img, rgb, tol]) => {
  if (!img.complete || !img.naturalWidth) return 0;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - rgb[0]) <= tol && Math.abs(d[i + 1] - rgb[1]) <= tol &&
        Math.abs(d[i + 2] - rgb[2]) <= tol) n += 1;
  }
  return n;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    loop = start_loop(tmp_path_factory, schedule={"timezone": ZONE},
                      notify={"max_queued": QUEUE})
    yield loop
    stop_loop(loop)


@pytest.fixture(autouse=True)
def no_messages(server):
    """Every test starts and ends with no message queued (they would cover the panel)."""
    clear_messages(server)
    yield
    clear_messages(server)


def clear_messages(loop):
    for note in loop.data("/api/notify")["notifications"]:
        loop.call("DELETE", f"/api/notify/{note['id']}")
    eventually(lambda: not loop.data("/api/notify")["notifications"],
               message="messages not cleared")


def panel_pixels(loop, rgb, tol=40) -> int:
    """How many pixels of what the panel shows now (GET /api/display/frame.png) are `rgb`."""
    reply = loop.call("GET", "/api/display/frame.png?scale=1")
    assert reply.status == 200, reply
    img = Image.open(io.BytesIO(reply.body)).convert("RGB")
    return sum(count for count, px in img.getcolors(img.width * img.height)
               if all(abs(a - b) <= tol for a, b in zip(px, rgb, strict=True)))


def device_hhmm(iso: str) -> str:
    """An API time (ISO 8601, UTC) as the dashboard shows it: LOOP's 24-hour clock, with the
    weekday first when it is not today in LOOP's zone (within a week)."""
    zone = ZoneInfo(ZONE)
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(zone)
    today = dt.datetime.now(zone).date()
    if when.date() == today:
        return when.strftime("%H:%M")
    assert abs((when.date() - today).days) < 7, iso
    return when.strftime("%a %H:%M")


def show_still(loop, colour) -> str:
    """Upload a one-colour still (as a one-frame GIF), show it and pause on it."""
    id_ = loop.upload(f"still-{colour[0]}-{colour[1]}-{colour[2]}.gif",
                      make_gif(colour=colour, frames=1)[0])
    loop.call("POST", "/api/playback/select", json_body={"id": id_})
    loop.call("POST", "/api/playback/pause")
    eventually(lambda: loop.status()["player"]["item"] == id_, message="still not shown")
    return id_


def wait_entries(page, loop, ids, timeout=20.0):
    """Wait until the page lists exactly `ids` (in that order); say what it and LOOP had."""
    shown = []

    def listed():
        shown[:] = page.eval_on_selector_all('[data-testid="notify-entry"]',
                                             "els => els.map(e => e.dataset.id)")
        return shown == ids

    try:
        eventually(listed, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"the page lists {shown}, not {ids}; LOOP has "
                             f"{loop.data('/api/notify')['notifications']}") from None


def sent_bodies(page) -> list:
    bodies = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/notify")
            and bodies.append(json.loads(r.post_data)))
    return bodies


# ---- the message box and the queue ------------------------------------------------------
def test_send_a_message_see_it_queued_and_on_the_panel_then_dismiss_it(browser, server):
    green = (30, 170, 60)
    show_still(server, green)
    # a phone in another zone with a 12-hour locale: times are LOOP's, on a 24-hour clock
    page_ui = dash.new_page(browser, locale="en-US", timezone_id="America/New_York")
    try:
        page = page_ui.open(server)
        bodies = sent_bodies(page)
        page.wait_for_selector('#now-notice', state="hidden")
        assert page.locator("#notify-queue-box").is_hidden()
        # the empty Seconds field says what it stands for: the server's notify.duration_sec
        page.wait_for_function("() => document.querySelector('#notify-duration').placeholder"
                               " === '10 (default)'")
        page.fill("#notify-text", "Ring")
        page.select_option("#notify-priority", "high")
        page.fill("#notify-duration", "60")
        page.fill("#notify-color", "#ff0000")
        page.click("#notify-send")
        message = page.locator('[data-testid="notify-message"]')
        page.wait_for_selector('[data-testid="notify-message"][data-kind="ok"]')
        assert message.inner_text().startswith("Sent")
        assert page.locator("#notify-text").input_value() == ""     # ready for the next one
        assert bodies == [{"text": "Ring", "priority": "high", "color": "#ff0000",
                           "duration_sec": 60}], bodies

        # the queue: on the panel now, with LOOP's own times
        queue = server.data("/api/notify")["notifications"]
        assert [n["text"] for n in queue] == ["Ring"], queue
        note = queue[0]
        eventually(lambda: server.status()["notifications"]["showing"] == note["id"],
                   message="the message is not on the panel")
        entry = page.locator(f'[data-testid="notify-entry"][data-id="{note["id"]}"]')
        page.wait_for_selector(f'[data-testid="notify-entry"][data-id="{note["id"]}"]'
                               '[data-state="showing"]')
        assert entry.get_attribute("data-priority") == "high"
        assert entry.locator('[data-testid="notify-what"]').inner_text() == "\u201cRing\u201d"
        when = entry.locator('[data-testid="notify-when"]').inner_text()
        assert when.startswith("On the panel now · for 60 s · sent "), when
        assert re.search(r"sent ((\w{3} )?\d\d:\d\d)$", when).group(1) == \
            device_hhmm(note["posted_at"])
        assert page.locator("#notify-count").inner_text() == f"· 1 of {QUEUE}"
        # the player card says a message covers the loop (the loop's item stays named)
        notice = page.locator('[data-testid="now-notice"]')
        notice.wait_for(state="visible")
        assert notice.get_attribute("data-cover") == "notification"
        assert notice.get_attribute("data-id") == note["id"]
        assert "\u201cRing\u201d" in notice.inner_text() and "high" in notice.inner_text()
        assert page.locator("#current-name").inner_text().startswith("still-")

        # on the panel: red text instead of the green still, and the preview follows
        eventually(lambda: panel_pixels(server, (255, 0, 0)) > 20 and
                   panel_pixels(server, green) == 0, message="the panel does not show it")
        preview = page.locator("#preview")
        page.wait_for_function(f"img => ({PREVIEW_COUNT_JS})([img, [255, 0, 0], 40]) > 20",
                               arg=preview.element_handle())

        # dismissed: gone from the list at once, off the panel, the still is back
        sent_message = message.inner_text()
        entry.locator('[data-testid="notify-dismiss"]').click()
        entry.wait_for(state="detached", timeout=1000)
        assert message.is_hidden(), sent_message       # the next action took it away
        eventually(lambda: not server.data("/api/notify")["notifications"],
                   message="not retracted")
        eventually(lambda: server.status()["notifications"]["showing"] is None,
                   message="still on the panel")
        eventually(lambda: panel_pixels(server, (255, 0, 0)) == 0 and
                   panel_pixels(server, green) > 1000, message="the still did not come back")
        notice.wait_for(state="hidden")
        page.locator("#notify-queue-box").wait_for(state="hidden")
        page.wait_for_function(f"img => ({PREVIEW_COUNT_JS})([img, [255, 0, 0], 40]) === 0",
                               arg=preview.element_handle())
    finally:
        page_ui.context.close()
        server.call("POST", "/api/playback/play")
    page_ui.check_clean()


def test_queue_lists_waiting_ones_in_order_with_their_expiry(ui, server):
    first = server.call("POST", "/api/notify", json_body={
        "text": "first", "priority": "normal", "duration_sec": 300}).data
    later = server.call("POST", "/api/notify", json_body={
        "text": "later", "priority": "low", "duration_sec": 20, "expires_sec": 3600,
        "id": "ci"}).data
    # a slow marquee, twice through: on the panel for a minute
    urgent = server.call("POST", "/api/notify", json_body={
        "text": "urgent: the build on main is broken", "priority": "critical", "repeat": 2,
        "speed_px_s": 6}).data
    # one that may wait for days: its expiry is on another day, which the list says
    days = server.call("POST", "/api/notify", json_body={
        "text": "sale", "priority": "low", "expires_sec": 3 * 86400, "id": "sale"}).data
    assert all(note for note in (first, later, urgent, days)), (first, later, urgent, days)
    page = ui.open(server)
    # the one on the panel first (critical interrupts), then in the order they will show
    eventually(lambda: server.status()["notifications"]["showing"] == urgent["id"],
               message="critical did not interrupt")
    wait_entries(page, server, [urgent["id"], first["id"], "ci", "sale"])
    page.wait_for_selector(f'[data-testid="notify-entry"][data-id="{urgent["id"]}"]'
                           '[data-state="showing"]')
    order = page.eval_on_selector_all('[data-testid="notify-entry"]',
                                      "els => els.map(e => [e.dataset.id, e.dataset.state])")
    assert order == [[urgent["id"], "showing"], [first["id"], "queued"], ["ci", "queued"],
                     ["sale", "queued"]], order
    ci = page.locator('[data-testid="notify-entry"][data-id="ci"] [data-testid="notify-when"]')
    expected = (f"Waiting · for 20 s · sent {device_hhmm(later['posted_at'])} · "
                f"until {device_hhmm(later['expires_at'])}")
    assert ci.inner_text() == expected
    urgent_when = page.locator(f'[data-testid="notify-entry"][data-id="{urgent["id"]}"] '
                               '[data-testid="notify-when"]').inner_text()
    assert urgent_when.startswith("On the panel now · 2 times through · sent "), urgent_when
    sale = page.locator('[data-testid="notify-entry"][data-id="sale"] '
                        '[data-testid="notify-when"]').inner_text()
    assert re.fullmatch(r"Waiting · for 10 s · sent (\w{3} )?\d\d:\d\d · until \w{3} \d\d:\d\d",
                        sale), sale
    assert sale.endswith("until " + device_hhmm(days["expires_at"])), sale
    assert page.locator("#notify-count").inner_text() == f"· 4 of {QUEUE}"
    # a message that ends by itself leaves the list without a click
    server.call("DELETE", f"/api/notify/{first['id']}")
    page.wait_for_selector(f'[data-testid="notify-entry"][data-id="{first["id"]}"]',
                           state="detached")


def test_the_queue_shows_when_notify_js_arrives_after_the_first_status(ui, server):
    # Deferred scripts run in order, but app.js polls as soon as it runs: when notify.js
    # comes late (a slow phone, a busy Pi), the first status answer is in before it listens,
    # and every poll after it is a 304. It must still show the queue.
    server.call("POST", "/api/notify", json_body={"text": "early", "duration_sec": 300,
                                                  "id": "early"})

    def late(route):
        time.sleep(1.5)     # holds this one request; the browser goes on with the others
        route.continue_()

    ui.page.route("**/notify.js", late)
    page = ui.open(server)
    wait_entries(page, server, ["early"])
    page.wait_for_selector('[data-testid="now-notice"][data-cover="notification"]')


def test_a_bad_field_shows_the_servers_words_and_marks_the_field(ui, server):
    page = ui.open(server)
    bodies = sent_bodies(page)
    message = page.locator('[data-testid="notify-message"]')
    # seconds out of range: the server's reason, under the label the person sees
    page.fill("#notify-text", "Too short")
    page.fill("#notify-duration", "0")
    page.click("#notify-send")
    page.wait_for_selector('[data-testid="notify-message"][data-kind="error"]')
    assert message.inner_text() == "Not sent: Seconds: must be a number 0.1 to 86400"
    assert page.locator("#notify-duration").get_attribute("aria-invalid") == "true"
    assert page.locator("#notify-text").get_attribute("aria-invalid") is None
    assert page.locator("#notify-text").input_value() == "Too short"   # nothing lost
    assert bodies[-1]["duration_sec"] == 0        # the server decided, not the page
    # not a number at all: sent as typed, refused by name
    page.fill("#notify-duration", "ten")
    page.click("#notify-send")
    page.wait_for_function("() => document.querySelector('#notify-message').textContent"
                           ".includes('Seconds')")
    assert bodies[-1]["duration_sec"] == "ten"
    # no text: the message field is the one named
    page.fill("#notify-duration", "")
    page.fill("#notify-text", "   ")
    page.click("#notify-send")
    page.wait_for_function("() => document.querySelector('#notify-text')"
                           ".getAttribute('aria-invalid') === 'true'")
    assert message.inner_text() == "Not sent: Message: must not be empty"
    assert page.locator("#notify-duration").get_attribute("aria-invalid") is None
    assert not server.data("/api/notify")["notifications"]      # nothing was queued
    # the next action takes the error away, whatever it is
    page.select_option("#mode-select", "all")
    message.wait_for(state="hidden", timeout=2000)


def test_a_full_queue_says_so_and_when_to_try_again(ui, server):
    for i in range(QUEUE):
        fields = {"text": f"filler {i}", "priority": "low", "duration_sec": 300}
        if i == 2:
            fields["expires_sec"] = 45     # the next room: Retry-After says when
        assert server.call("POST", "/api/notify", json_body=fields).status == 201
    page = ui.open(server)
    wait_entries(page, server, [n["id"] for n in server.data("/api/notify")["notifications"]])
    assert page.locator("#notify-count").inner_text() == f"· {QUEUE} of {QUEUE}"
    page.fill("#notify-text", "One too many")
    page.click("#notify-send")
    page.wait_for_selector('[data-testid="notify-message"][data-kind="error"]')
    text = page.locator('[data-testid="notify-message"]').inner_text()
    assert re.fullmatch(rf"Not sent: the message queue is full \({QUEUE} messages\)\. Try again "
                        r"in 4[45] s, or dismiss a message below\.", text), text
    assert page.locator("#notify-text").input_value() == "One too many"
    # dismissing one makes room: the same message goes through
    page.locator('[data-testid="notify-dismiss"]').first.click()
    eventually(lambda: len(server.data("/api/notify")["notifications"]) == QUEUE - 1,
               message="dismiss did not make room")
    page.click("#notify-send")
    page.wait_for_selector('[data-testid="notify-message"][data-kind="ok"]')
    assert "One too many" in [n["text"] for n in server.data("/api/notify")["notifications"]]


# ---- text and clock items ---------------------------------------------------------------
def test_add_a_text_item_then_edit_it_and_the_card_follows_its_new_id(ui, server):
    page = ui.open(server)
    page.click('[data-testid="add-text"]')
    form = page.locator('[data-testid="new-text-form"]')
    form.wait_for(state="visible")
    assert page.locator("#add-text").get_attribute("aria-expanded") == "true"
    assert page.locator('[data-testid="new-text-text"]').evaluate(
        "el => el === document.activeElement")
    page.fill('[data-testid="new-text-text"]', "Back in 5")
    page.fill('[data-testid="new-text-color"]', "#ff2000")
    page.fill('[data-testid="new-text-background"]', "#000040")
    page.select_option('[data-testid="new-text-scroll"]', "never")
    page.fill('[data-testid="new-text-speed"]', "24")
    page.click('[data-testid="new-text-save"]')
    form.wait_for(state="hidden")
    toast = page.locator("#message")
    toast.wait_for(state="visible")
    assert toast.inner_text() == "Added \u201cBack in 5\u201d to the library and the loop."

    items = [i for i in server.data("/api/media")["items"] if i["kind"] == "text"
             and i["spec"]["text"] == "Back in 5"]
    assert len(items) == 1, items
    item = items[0]
    assert item["spec"] == {"text": "Back in 5", "color": "#ff2000", "background": "#000040",
                            "scroll": "never", "speed_px_s": 24, "font": "auto"}
    old_id = item["id"]
    loop_before = server.loop_ids()
    assert loop_before[-1] == old_id
    # its card, like any item's: thumbnail, in the loop, play time, rename... and Edit
    text_card = card(page, old_id)
    text_card.wait_for()
    assert text_card.get_attribute("data-kind") == "text"
    assert text_card.get_attribute("data-in-loop") == "true"
    text_card.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=text_card.locator('[data-testid="item-thumb"]').element_handle())
    for testid in ("item-toggle", "item-show", "item-rename", "item-timing", "item-delete",
                   "item-edit"):
        assert text_card.locator(f'[data-testid="{testid}"]').is_visible(), testid
    assert text_card.locator('[data-testid="item-download"]').count() == 0
    text_card.evaluate("el => { el.__sameElement = true; }")

    # the edit form holds what the item is; a bad field is refused by name, nothing changes
    text_card.locator('[data-testid="item-edit"]').click()
    assert text_card.get_attribute("data-sheet") == "edit"
    edit_text = text_card.locator('[data-testid="item-edit-text"]')
    assert edit_text.input_value() == "Back in 5"
    assert text_card.locator('[data-testid="item-edit-color"]').input_value() == "#ff2000"
    assert text_card.locator('[data-testid="item-edit-background"]').input_value() == "#000040"
    assert text_card.locator('[data-testid="item-edit-scroll"]').input_value() == "never"
    assert text_card.locator('[data-testid="item-edit-speed"]').input_value() == "24"
    text_card.locator('[data-testid="item-edit-speed"]').fill("500")
    text_card.locator('[data-testid="item-edit-save"]').click()
    edit_message = text_card.locator('[data-testid="item-edit-message"]')
    edit_message.wait_for(state="visible")
    assert edit_message.inner_text() == \
        "Not saved: Speed: must be a number 1 to 100 (pixels per second)"
    assert text_card.locator('[data-testid="item-edit-speed"]').get_attribute(
        "aria-invalid") == "true"
    assert server.call("GET", f"/api/media/{old_id}").status == 200

    # a good edit: a new item in the old one's place in the loop, shown by the same card
    text_card.locator('[data-testid="item-edit-speed"]').fill("24")
    edit_text.fill("OPEN")
    text_card.locator('[data-testid="item-edit-color"]').fill("#00ff00")
    text_card.locator('[data-testid="item-edit-save"]').click()
    eventually(lambda: server.call("GET", f"/api/media/{old_id}").status == 404,
               message="the old item is still there")
    new = next(i for i in server.data("/api/media")["items"]
               if i["kind"] == "text" and i["spec"]["text"] == "OPEN")
    assert new["id"] != old_id and new["spec"]["color"] == "#00ff00"
    assert new["spec"]["background"] == "#000040"
    loop_after = server.loop_ids()
    assert loop_after.index(new["id"]) == loop_before.index(old_id), (loop_before, loop_after)
    new_card = card(page, new["id"])
    new_card.wait_for()
    assert new_card.evaluate("el => el.__sameElement === true")
    assert card(page, old_id).count() == 0
    assert new_card.get_attribute("data-sheet") == ""
    assert new_card.locator('[data-testid="item-name"]').inner_text() == "OPEN"
    order = page.eval_on_selector_all('#library-loop [data-testid="item-card"]',
                                      "els => els.map(e => e.dataset.id)")
    assert order == loop_after
    page.wait_for_function(
        "([el, id]) => el.querySelector('[data-testid=item-thumb]').getAttribute('src')"
        ".startsWith(`/api/media/${id}/thumb.png`)",
        arg=[new_card.element_handle(), new["id"]])
    # the page keeps following the server: a reload shows the same card
    page.reload()
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    card(page, new["id"]).wait_for()


def test_add_text_refuses_a_bad_field_by_name(ui, server):
    page = ui.open(server)
    before = len(server.data("/api/media")["items"])
    page.click('[data-testid="add-text"]')
    page.fill('[data-testid="new-text-text"]', "")
    page.click('[data-testid="new-text-save"]')
    message = page.locator('[data-testid="new-text-message"]')
    message.wait_for(state="visible")
    assert message.inner_text() == "Not added: Text: must not be empty"
    assert page.locator('[data-testid="new-text-text"]').get_attribute("aria-invalid") == "true"
    assert page.locator('[data-testid="new-text-form"]').is_visible()
    assert len(server.data("/api/media")["items"]) == before
    # Add clock closes Add text: one form at a time
    page.click('[data-testid="add-clock"]')
    page.locator('[data-testid="new-clock-form"]').wait_for(state="visible")
    assert page.locator('[data-testid="new-text-form"]').is_hidden()
    assert page.locator("#add-text").get_attribute("aria-expanded") == "false"
    page.click('[data-testid="new-clock-cancel"]')
    page.locator('[data-testid="new-clock-form"]').wait_for(state="hidden")
    assert page.locator("#add-clock").evaluate("el => el === document.activeElement")


def test_add_a_clock_item_show_it_and_edit_it(ui, server):
    page = ui.open(server)
    page.click('[data-testid="add-clock"]')
    page.select_option('[data-testid="new-clock-format"]', "H:MM")
    page.check('[data-testid="new-clock-seconds"]')
    page.fill('[data-testid="new-clock-color"]', "#00c0ff")
    page.click('[data-testid="new-clock-save"]')
    page.locator('[data-testid="new-clock-form"]').wait_for(state="hidden")
    clocks = [i for i in server.data("/api/media")["items"] if i["kind"] == "clock"
              and i["spec"]["clock"]["color"] == "#00c0ff"]
    assert len(clocks) == 1, clocks
    clock = clocks[0]
    assert clock["spec"]["clock"] == {"format": "H:MM", "seconds": True, "color": "#00c0ff",
                                      "background": "#000000", "font": "auto"}
    assert server.loop_ids()[-1] == clock["id"]
    clock_card = card(page, clock["id"])
    clock_card.wait_for()
    assert clock_card.get_attribute("data-kind") == "clock"
    assert "clock · H:MM:SS" in clock_card.inner_text()
    clock_card.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=clock_card.locator('[data-testid="item-thumb"]').element_handle())
    # shown now, the panel draws the time in its colour, and the preview follows it
    try:
        clock_card.locator('[data-testid="item-show"]').click()
        eventually(lambda: server.status()["player"]["item"] == clock["id"],
                   message="the clock is not shown")
        eventually(lambda: panel_pixels(server, (0, 192, 255)) > 20,
                   message="the panel does not draw the clock")
        page.wait_for_function(f"img => ({PREVIEW_COUNT_JS})([img, [0, 192, 255], 40]) > 20",
                               arg=page.locator("#preview").element_handle())
        # edited: its own fields, a new id, and the panel follows (it was the item shown)
        clock_card.locator('[data-testid="item-edit"]').click()
        assert clock_card.locator('[data-testid="item-edit-format"]').input_value() == "H:MM"
        assert clock_card.locator('[data-testid="item-edit-seconds"]').is_checked()
        clock_card.locator('[data-testid="item-edit-seconds"]').uncheck()
        clock_card.locator('[data-testid="item-edit-save"]').click()
        eventually(lambda: server.call("GET", f"/api/media/{clock['id']}").status == 404,
                   message="the clock was not replaced")
        new = next(i for i in server.data("/api/media")["items"] if i["kind"] == "clock"
                   and i["spec"]["clock"]["color"] == "#00c0ff")
        assert new["spec"]["clock"]["seconds"] is False
        card(page, new["id"]).wait_for()
        eventually(lambda: server.status()["player"]["item"] == new["id"],
                   message="the panel did not follow the edited clock")
        page.wait_for_selector(f'[data-testid="item-card"][data-id="{new["id"]}"]'
                               '[data-current="true"]')
    finally:
        server.call("POST", "/api/playback/play")


# ---- night rules ------------------------------------------------------------------------
def test_night_rule_show_clock_saved_from_the_editor(ui, server):
    server.call("PUT", "/api/schedule", json_body={"rules": []})
    page = ui.open(server)
    page.locator("#schedule-panel").wait_for(state="visible")
    try:
        page.click('[data-testid="schedule-add"]')
        rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
        show = rule.locator('[data-testid="rule-show"]')
        assert show.input_value() == "loop"
        rule.locator('[data-testid="rule-name"]').fill("night")
        rule.locator('[data-testid="rule-start"]').fill("00:00")   # always on: 24 hours
        rule.locator('[data-testid="rule-end"]').fill("00:00")
        rule.locator('[data-testid="rule-brightness"]').fill("20")
        show.select_option("clock")
        page.click('[data-testid="schedule-save"]')
        eventually(lambda: server.data("/api/schedule")["rules"] == [
            {"days": [], "start": "00:00", "end": "00:00", "brightness": 20, "name": "night",
             "show": "clock"}], message="the rule with show: clock was not saved")
        eventually(lambda: server.status()["player"]["show"] == "clock",
                   message="the player does not show the clock")
        state = page.locator('[data-testid="schedule-state"]')
        page.wait_for_selector('[data-testid="schedule-state"][data-active-rule="0"]')
        assert "only the clock at 20%" in state.inner_text(), state.inner_text()
        page.wait_for_selector('[data-testid="now-notice"][data-cover="clock"]')
        # a low message waits for the morning: the queue says so
        server.call("POST", "/api/notify", json_body={"text": "later", "priority": "low",
                                                      "id": "low-one"})
        page.wait_for_selector('[data-testid="notify-entry"][data-id="low-one"]'
                               '[data-state="held"]')
        assert page.locator('[data-testid="notify-entry"][data-id="low-one"] '
                            '[data-testid="notify-when"]').inner_text().startswith("Held")
        # reloaded, the editor shows what was saved; "off" needs no brightness
        page.reload()
        page.wait_for_selector('body[data-ready="1"]', state="attached")
        rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
        assert rule.locator('[data-testid="rule-show"]').input_value() == "clock"
        rule.locator('[data-testid="rule-show"]').select_option("off")
        assert rule.locator('[data-testid="rule-brightness"]').is_disabled()
        page.click('[data-testid="schedule-save"]')
        eventually(lambda: server.data("/api/schedule")["rules"] == [
            {"days": [], "start": "00:00", "end": "00:00", "brightness": 0, "name": "night",
             "show": "off"}], message="the rule with show: off was not saved")
        page.wait_for_selector('[data-testid="now-notice"][data-cover="off"]')
        assert "the panel dark" in page.locator('[data-testid="schedule-state"]').inner_text()
    finally:
        server.call("PUT", "/api/schedule", json_body={"rules": []})
    page.wait_for_selector('[data-testid="now-notice"]', state="hidden")
