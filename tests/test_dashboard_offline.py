"""The dashboard when LOOP stops answering and comes back, and when its library is empty, in
headless Chromium against a real LOOP process that this module stops and starts again on the
same port (so it has its own server; the browser and helpers are test_dashboard.py's)."""

from __future__ import annotations

import datetime as dt
import re
import signal
from zoneinfo import ZoneInfo

import pytest
import test_dashboard as dash
from conftest import spawn, write_config
from test_dashboard import card, make_gif

browser = dash.browser  # the module's fixtures, shared (one Chromium per module)

PHONE = {"viewport": {"width": 360, "height": 780}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}


class RestartableLoop(dash.Loop):
    """A LOOP process that can be stopped and started again on the same port and data."""

    def __init__(self, config_path, data_dir):
        self.config_path, self.data_dir = config_path, data_dir
        super().__init__(self._spawn(port=0))

    def _spawn(self, port):
        return spawn(self.config_path, extra_args=["--data-dir", str(self.data_dir), "--host",
                                                   "127.0.0.1", "--port", str(port)])

    def stop(self):
        # SIGKILL: the dashboard must cope with a process that dies without a goodbye
        self.service.terminate(sig=signal.SIGKILL, timeout=20)

    def start_again(self):
        self.service = self._spawn(port=self.service.port)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    base = tmp_path_factory.mktemp("offline")
    cfg = write_config(base / "config.json", base / "data", web=dict(dash.WEB_OVERRIDES))
    server = RestartableLoop(cfg, base / "data")
    yield server
    dash.stop_loop(server)


def device_clock_now(zone) -> set[str]:
    """The device's "HH:MM" now (and a minute ago, for a test that straddles a minute)."""
    now = dt.datetime.now(zone)
    return {t.strftime("%H:%M") for t in (now, now - dt.timedelta(minutes=1))}


def test_empty_library_points_to_the_picker_not_to_a_direction(browser, loop):
    for item in loop.data("/api/media")["items"]:
        loop.call("DELETE", f"/api/media/{item['id']}")
    for size in (PHONE, {"viewport": {"width": 1280, "height": 800}}):
        ui = dash.new_page(browser, **size)
        try:
            page = ui.open(loop)
            empty = page.locator('[data-testid="library-empty"]')
            empty.wait_for(state="visible")
            text = empty.inner_text().lower()
            # the upload box is above on a phone and to the left on a laptop: say neither
            assert not re.search(r"\b(above|below|left|right)\b", text), text
            with page.expect_file_chooser() as chooser:
                page.click('[data-testid="library-empty-add"]')
            assert chooser.value.is_multiple()
        finally:
            ui.context.close()
        ui.check_clean()


def test_offline_greys_live_state_says_since_when_and_recovers_by_itself(browser, loop):
    loop.upload("offline.gif", make_gif()[0])
    loop.call("POST", "/api/playback/play")
    # a message in the queue: its dismiss button cannot work offline
    assert loop.call("POST", "/api/notify", json_body={
        "text": "before the outage", "priority": "low", "duration_sec": 600,
        "id": "outage"}).status == 201
    # a phone in another zone, with a 12-hour locale: the time shown is still the device's,
    # on the device's 24-hour clock (as the schedule's times are)
    ui = dash.new_page(browser, locale="en-US", timezone_id="Pacific/Chatham", **PHONE)
    try:
        page = ui.open(loop)
        page.wait_for_selector('#conn-state[data-state="ok"]')
        page.wait_for_selector('#player-state:text("Playing")')
        page.wait_for_function(
            "() => document.querySelector('#health-status').dataset.status === 'ok'")
        page.evaluate("window.__sameDocument = true")
        page.wait_for_selector('[data-testid="notify-entry"][data-id="outage"]')
        preview = page.locator("#preview-box")
        assert preview.evaluate("el => getComputedStyle(el).opacity") == "1"

        zone = ZoneInfo(loop.status()["schedule"]["timezone"])
        loop.stop()
        expected = device_clock_now(zone)
        page.wait_for_selector('#conn-state[data-state="offline"]')
        pill = page.locator("#conn-state")
        since = re.fullmatch(r"Offline since (\d\d:\d\d)", pill.inner_text())
        assert since and since.group(1) in expected, (pill.inner_text(), expected)
        # the pill is whole: inside the 360 px screen, its text not cut
        box = pill.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, box
        assert pill.evaluate("el => el.scrollWidth <= el.clientWidth")
        assert page.locator("#health-pill").is_hidden()
        # what the page last heard is no longer shown as live
        assert page.locator("#player-state").inner_text() == "Not known while offline"
        assert page.locator("#health-status").get_attribute("data-status") == "unknown"
        assert "not answering" in page.locator("#health-verdict").inner_text()
        for control in ("#btn-play", "#btn-next", "#mode-select", "#brightness",
                        '[data-testid="notify-entry"][data-id="outage"] '
                        '[data-testid="notify-dismiss"]'):
            assert page.locator(control).is_disabled(), control
        queue = page.locator("#notify-queue-box").evaluate(
            "el => [getComputedStyle(el).opacity, getComputedStyle(el).filter]")
        assert float(queue[0]) < 1 and "grayscale" in queue[1], queue
        style = preview.evaluate(
            "el => [getComputedStyle(el).opacity, getComputedStyle(el).filter]")
        assert float(style[0]) < 1 and "grayscale" in style[1], style
        banner = page.locator('[data-testid="offline-banner"]')
        assert banner.is_visible()
        # it keeps trying, backing off: the wait grows beyond the 2 s poll interval
        page.wait_for_function(
            "() => /Next try in ([3-9]|[1-9][0-9]) s/.test("
            "document.querySelector('#offline-text').textContent)", timeout=20_000)
        # "Try now" asks at once (and, the server still down, stays offline)
        with page.expect_request(lambda r: "/api/poll/status" in r.url):
            page.click('[data-testid="offline-retry"]')
        assert pill.get_attribute("data-state") == "offline"

        loop.start_again()
        # by itself: no click, no reload (the back-off is capped at 30 s)
        page.wait_for_selector('#conn-state[data-state="ok"]', timeout=45_000)
        assert page.evaluate("window.__sameDocument") is True
        assert banner.is_hidden()
        page.wait_for_selector('#player-state:text("Playing")')
        page.wait_for_function(
            "() => document.querySelector('#health-status').dataset.status === 'ok'")
        assert page.locator("#health-pill").is_visible()
        assert page.locator("#btn-play").is_enabled()
        # messages are transient: the restart dropped the one that waited
        page.wait_for_selector('[data-testid="notify-entry"]', state="detached")
        assert page.locator("#notify-queue-box").is_hidden()
        assert preview.evaluate("el => getComputedStyle(el).opacity") == "1"
        # and it keeps working: a change made elsewhere shows up
        id_ = loop.upload("after-restart.gif", make_gif()[0])
        card(page, id_).wait_for()
    finally:
        ui.context.close()
    ui.check_clean()

