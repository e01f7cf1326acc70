"""The dashboard's operator panels (loop/web/operator.js) in headless Chromium against a real
LOOP process: the schedule editor and backup download / restore upload. Reuses the browser,
page and server helpers of tests/test_dashboard.py (same skip/fail rules for a missing
browser; hooks listed at the top of operator.js)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import test_dashboard as dash
from test_dashboard import card, eventually, make_gif, start_loop, stop_loop

browser = dash.browser  # the module's fixtures, shared (one Chromium per module)
ui = dash.ui


@pytest.fixture(scope="module")
def op_server(tmp_path_factory):
    loop = start_loop(tmp_path_factory, schedule={"timezone": "Europe/Berlin"})
    yield loop
    stop_loop(loop)


def test_schedule_panel_lists_edits_validates_and_saves(ui, op_server):
    op_server.call("PUT", "/api/schedule", json_body={"rules": []})
    op_server.call("PUT", "/api/display", json_body={"brightness": 80})
    page = ui.open(op_server)
    panel = page.locator("#schedule-panel")
    panel.wait_for(state="visible")
    state = page.locator('[data-testid="schedule-state"]')
    eventually(lambda: "No rules" in state.inner_text(), message="no-rules sentence")
    assert "Europe/Berlin" in page.locator("#schedule-zone").inner_text()
    assert page.locator('[data-testid="schedule-save"]').is_disabled()

    # add a rule that is always active (start == end: 24 hours, every day)
    page.click('[data-testid="schedule-add"]')
    rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
    rule.locator('[data-testid="rule-name"]').fill("Always dim")
    rule.locator('[data-testid="rule-start"]').fill("00:00")
    rule.locator('[data-testid="rule-end"]').fill("00:00")
    rule.locator('[data-testid="rule-brightness"]').fill("7")
    # a second rule with an invalid start: the server's 422 names it, the row is marked
    page.click('[data-testid="schedule-add"]')
    second = page.locator('[data-testid="schedule-rule"][data-index="1"]')
    second.locator('[data-testid="rule-start"]').fill("")
    second.locator('[data-testid="rule-day"][value="saturday"]').check()
    page.click('[data-testid="schedule-save"]')
    message = page.locator('[data-testid="schedule-message"]')
    message.wait_for(state="visible")
    assert "rule 2" in message.inner_text() and "start" in message.inner_text()
    assert "HH:MM" in message.inner_text()
    assert second.get_attribute("data-invalid") == "start"
    assert op_server.data("/api/schedule")["rules"] == []  # nothing saved

    second.locator('[data-testid="rule-remove"]').click()
    page.click('[data-testid="schedule-save"]')
    eventually(lambda: op_server.data("/api/schedule")["rules"] == [
        {"days": [], "start": "00:00", "end": "00:00", "brightness": 7, "name": "Always dim"}],
        message="rule saved")
    # the status poll shows the active rule, and the panel is dimmed
    page.wait_for_selector('[data-testid="schedule-state"][data-active-rule="0"]')
    assert "Always dim" in state.inner_text() and "7%" in state.inner_text()
    eventually(lambda: op_server.status()["player"]["brightness"] == 7, message="dimmed")
    page.wait_for_function("() => document.querySelector('#brightness').value === '7'")

    # brightness by hand while the rule is active is an override (no boundary ahead)
    op_server.call("PUT", "/api/display", json_body={"brightness": 40})
    page.wait_for_selector('[data-testid="schedule-state"][data-override="true"]')
    assert "set by hand" in state.inner_text()

    # the rule's days: reload shows what was saved; removing it and saving clears it
    page.reload()
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
    assert rule.locator('[data-testid="rule-name"]').input_value() == "Always dim"
    assert rule.locator('[data-testid="rule-brightness"]').input_value() == "7"
    rule.locator('[data-testid="rule-remove"]').click()
    page.click('[data-testid="schedule-save"]')
    eventually(lambda: op_server.data("/api/schedule")["rules"] == [], message="cleared")
    eventually(lambda: op_server.status()["player"]["brightness"] == 80,
               message="manual brightness back")


def test_backup_download_and_restore_upload(ui, op_server, tmp_path):
    data, _ = make_gif()
    kept = op_server.upload("keep-me.gif", data)
    page = ui.open(op_server)
    page.locator("#maintenance-panel").wait_for(state="visible")
    card(page, kept).wait_for()

    with page.expect_download() as info:
        page.click('[data-testid="backup-download"]')
    download = info.value
    assert download.suggested_filename.startswith("loop-backup-")
    assert download.suggested_filename.endswith(".tar")
    archive = open(download.path(), "rb").read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        index = json.load(tar.extractfile("index.json"))
    assert kept in [m["id"] for m in index["items"]]
    page.wait_for_selector('[data-testid="backup-status"][data-state="done"]')

    # the item goes away; restoring the backup brings it back
    assert op_server.call("DELETE", f"/api/media/{kept}").status == 200
    card(page, kept).wait_for(state="detached")
    backup_file = tmp_path / "loop-backup.tar"
    backup_file.write_bytes(archive)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    # the native file input is hidden inside a button-sized label that names the file picked
    chooser_label = page.locator('[data-testid="restore-choose"]')
    box = chooser_label.bounding_box()
    assert box["width"] >= 44 and box["height"] >= 44, box
    with page.expect_file_chooser() as chooser:
        chooser_label.click()
    chooser.value.set_files(str(backup_file))
    assert page.locator("#restore-file-name").inner_text().startswith("loop-backup.tar (")
    page.click('[data-testid="restore-start"]')
    page.wait_for_selector('[data-testid="restore-status"][data-state="done"]')
    assert dialogs and "Replace the whole library" in dialogs[0]
    assert "Restored" in page.locator('[data-testid="restore-status"]').inner_text()
    card(page, kept).wait_for()
    assert kept in [m["id"] for m in op_server.data("/api/media")["items"]]

    # a file that is not a backup: refused in plain words, the library unchanged
    before = op_server.data("/api/media")["items"]
    bad = tmp_path / "holiday.tar"
    bad.write_bytes(b"this is not a tar archive\n" * 100)
    page.set_input_files('[data-testid="restore-file"]', str(bad))
    # picking the next file starts the next action: the last one's "Restored …" goes
    page.wait_for_selector('[data-testid="restore-status"][data-state="idle"]', state="attached")
    assert page.locator('[data-testid="restore-status"]').inner_text() == ""
    page.click('[data-testid="restore-start"]')
    page.wait_for_selector('[data-testid="restore-status"][data-state="failed"]')
    text = page.locator('[data-testid="restore-status"]').inner_text()
    assert "Not restored" in text and "this is not a LOOP backup" in text
    assert op_server.data("/api/media")["items"] == before


def test_schedule_times_are_24_hour_text_whatever_the_locale(browser, op_server):
    """The pickers showed "10:00 PM" (a US locale's <input type=time>) next to a status saying
    "22:00" and errors asking for "HH:MM": now one format, the device's."""
    op_server.call("PUT", "/api/schedule", json_body={"rules": [
        {"days": ["friday"], "start": "22:00", "end": "07:30", "brightness": 5, "name": "Night"}]})
    ui = dash.new_page(browser, locale="en-US", timezone_id="America/New_York")
    try:
        page = ui.open(op_server)
        rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
        rule.wait_for()
        start = rule.locator('[data-testid="rule-start"]')
        end = rule.locator('[data-testid="rule-end"]')
        for field, shown in ((start, "22:00"), (end, "07:30")):
            assert field.get_attribute("type") == "text"
            assert field.input_value() == shown
        assert "PM" not in rule.inner_text() and "AM" not in rule.inner_text()
        # digits alone (a phone's number pad has no colon) are tidied to HH:MM
        start.fill("2315")
        end.fill("6")
        rule.locator('[data-testid="rule-brightness"]').click()     # leaves the field
        assert start.input_value() == "23:15" and end.input_value() == "06:00"
        page.click('[data-testid="schedule-save"]')
        eventually(lambda: op_server.data("/api/schedule")["rules"][0]["start"] == "23:15",
                   message="tidied time not saved")
        assert op_server.data("/api/schedule")["rules"][0]["end"] == "06:00"
        # the state sentence uses the same clock
        state = page.locator('[data-testid="schedule-state"]').inner_text()
        assert "PM" not in state and "AM" not in state, state
    finally:
        ui.context.close()
        op_server.call("PUT", "/api/schedule", json_body={"rules": []})
    ui.check_clean()


def test_day_toggles_are_big_and_act_on_the_checkbox(ui, op_server):
    op_server.call("PUT", "/api/schedule", json_body={"rules": []})
    page = ui.open(op_server)
    page.locator("#schedule-panel").wait_for(state="visible")
    page.click('[data-testid="schedule-add"]')
    rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
    monday = rule.locator('[data-testid="rule-day"][value="monday"]')
    box = monday.bounding_box()
    assert box["width"] >= 44 and box["height"] >= 44, box
    # a tap on the face ("Mo") toggles it, and the face shows it is on
    face = monday.locator("xpath=following-sibling::*[contains(@class, 'day-face')]")
    face.click(force=True)       # the transparent checkbox lies over the face: that is the point
    assert monday.is_checked()
    colour = face.evaluate("el => getComputedStyle(el).backgroundColor")
    off = rule.locator('[data-testid="rule-day"][value="tuesday"]').locator(
        "xpath=following-sibling::*[contains(@class, 'day-face')]")
    assert colour != off.evaluate("el => getComputedStyle(el).backgroundColor")
    assert rule.locator(".days-hint").inner_text() == ""
    monday.click()
    assert not monday.is_checked()
    assert rule.locator(".days-hint").inner_text() == "every day"


def test_schedule_message_belongs_to_its_save(ui, op_server):
    op_server.call("PUT", "/api/schedule", json_body={"rules": []})
    page = ui.open(op_server)
    page.locator("#schedule-panel").wait_for(state="visible")
    message = page.locator('[data-testid="schedule-message"]')
    page.click('[data-testid="schedule-add"]')
    page.click('[data-testid="schedule-save"]')
    page.wait_for_function("el => el.textContent === 'Schedule saved.'",
                           arg=message.element_handle())
    # an edit makes "saved" untrue: it goes
    rule = page.locator('[data-testid="schedule-rule"][data-index="0"]')
    rule.locator('[data-testid="rule-brightness"]').fill("150")
    message.wait_for(state="hidden")
    # the next save's error stands alone: no "Schedule saved." anywhere on the page
    page.click('[data-testid="schedule-save"]')
    page.wait_for_selector('[data-testid="schedule-message"][data-kind="error"]')
    assert "brightness" in message.inner_text()
    assert page.locator("#message").is_hidden()
    assert "Schedule saved." not in page.locator("body").inner_text()
    op_server.call("PUT", "/api/schedule", json_body={"rules": []})
