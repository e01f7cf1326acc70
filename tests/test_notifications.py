"""Notifications, pure: the queue's decisions and a track's timing under an injected clock,
and the display thread's overlay (interrupt, resume at the same frame, night gate) driven
step by step through its injected monotonic clock."""

import os

import pytest
from conftest import make_config
from test_player import RecordingDriver, add_item

from loop import config
from loop.library.store import Store
from loop.media import clock
from loop.media.errors import MediaError
from loop.playback import notifications
from loop.playback.notifications import Notification, NotificationQueue, QueueFull, parse_fields
from loop.playback.player import Player
from loop.playback.track import Track

LOW, NORMAL, HIGH, CRITICAL = range(4)


class Frames:
    """A FrameFile-like source: `count` frames of `ms` each."""

    def __init__(self, count=1, ms=100, tag=0):
        self.count, self.durations = count, (ms,) * count
        self.tag = tag
        self.width, self.height, self.pixel_format = 4, 2, "RGB24"

    def frame(self, index):
        return bytes([self.tag + index]) * 24


def note(note_id, priority=NORMAL, now=0.0, expires=None, seconds=5.0, repeat=None,
         source=None, brightness=None):
    return Notification(note_id, priority, source or Frames(), seconds, repeat, brightness,
                        now, None if expires is None else now + expires, {"kind": "text"})


# ---- the queue -------------------------------------------------------------------------------
def test_higher_priority_interrupts_at_once_and_equal_ones_queue_in_order():
    queue = NotificationQueue(8)
    a, b = note("a"), note("b")
    queue.post(a, 0)
    queue.post(b, 0)
    assert queue.choose(0)[0] is a
    queue.post(note("c"), 1)
    assert queue.choose(1)[0] is a  # equal priority: a keeps the panel
    urgent = note("urgent", CRITICAL)
    queue.post(urgent, 2)
    assert queue.choose(2)[0] is urgent  # at once
    queue.finish(urgent)
    assert queue.choose(3)[0] is a  # the interrupted one comes back first (its place)
    queue.finish(a)
    assert [queue.choose(4)[0].id] == ["b"]
    queue.finish(queue.showing)
    assert queue.choose(5)[0].id == "c"
    queue.finish(queue.showing)
    assert queue.choose(6)[0] is None and len(queue) == 0


def test_lower_priority_waits_for_the_one_on_screen():
    queue = NotificationQueue(8)
    high = note("high", HIGH)
    queue.post(high, 0)
    assert queue.choose(0)[0] is high
    queue.post(note("low", LOW), 1)
    assert queue.choose(1)[0] is high
    assert [(n["id"], n["state"]) for n in queue.listing(1)] == [("high", "showing"),
                                                                 ("low", "queued")]


def test_expiry_drops_queued_and_on_screen_notifications():
    queue = NotificationQueue(8)
    first = note("first", expires=10)
    queue.post(first, 0)
    queue.post(note("stale", expires=5), 0)
    assert queue.choose(0)[0] is first
    assert queue.next_event() == 5
    assert [n["id"] for n in queue.listing(6)] == ["first"]  # stale is not shown any more
    assert queue.choose(6)[0] is first and queue.expired == 1
    assert queue.choose(10)[0] is None  # expired while on screen: taken off
    assert len(queue) == 0 and queue.expired == 2


def test_replace_by_id_keeps_its_place_and_retract_removes():
    queue = NotificationQueue(8)
    ci = note("ci")
    queue.post(ci, 0)
    queue.post(note("other"), 0)
    assert queue.choose(0)[0] is ci
    passed = note("ci")
    assert queue.post(passed, 1) is ci
    assert queue.choose(1)[0] is passed  # the new content on screen at once
    assert len(queue) == 2 and queue.replaced == 1
    assert queue.retract("ci") is passed
    assert queue.retract("ci") is None
    assert queue.choose(2)[0].id == "other"
    # finishing a notification that was replaced meanwhile leaves the replacement alone
    old, new = note("x"), note("x")
    queue.post(old, 3)
    queue.post(new, 3)
    queue.finish(old)
    assert any(n["id"] == "x" for n in queue.listing(3))


def test_the_bound_refuses_one_more_with_429_but_a_replacement_fits():
    queue = NotificationQueue(2)
    queue.post(note("a", expires=30), 0)
    queue.post(note("b"), 0)
    with pytest.raises(QueueFull) as refused:
        queue.check_room("c", 0)
    assert refused.value.status == 429 and refused.value.code == "queue_full"
    assert refused.value.headers["Retry-After"] == "30"  # a's expiry frees a place
    with pytest.raises(QueueFull):
        queue.post(note("c"), 0)
    queue.check_room("a", 0)
    queue.post(note("a"), 1)  # replaces: still two
    assert len(queue) == 2 and queue.refused == 2


def test_the_night_gate_holds_lower_priorities():
    queue = NotificationQueue(8)
    normal, high = note("normal"), note("high", HIGH)
    queue.post(normal, 0)
    assert queue.choose(0, gate=HIGH)[0] is None
    assert queue.listing(0)[0]["state"] == "held"
    queue.post(high, 1)
    assert queue.choose(1, gate=HIGH)[0] is high
    queue.finish(high)
    assert queue.choose(2, gate=HIGH)[0] is None
    assert queue.choose(3, gate=None)[0] is normal  # morning: the held one shows


@pytest.mark.parametrize("body, field", [
    ({"priority": "urgent"}, "priority"), ({"id": "../x"}, "id"), ({"id": ""}, "id"),
    ({"duration_sec": 0}, "duration_sec"), ({"duration_sec": "5"}, "duration_sec"),
    ({"repeat": 1.5}, "repeat"), ({"repeat": True}, "repeat"),
    ({"repeat": 2, "duration_sec": 3}, "repeat"), ({"expires_sec": 0}, "expires_sec"),
    ({"brightness": 101}, "brightness"), ({"brightness": 0}, "brightness")])
def test_malformed_fields_are_400_naming_the_field(body, field):
    with pytest.raises(MediaError) as bad:
        parse_fields(body)
    assert bad.value.status == 400 and bad.value.message.startswith(f"{field}:")


def test_priorities_agree_with_config():
    assert config.PRIORITIES == notifications.PRIORITIES
    assert config.CLOCK_FORMATS == clock.FORMATS


# ---- a track ---------------------------------------------------------------------------------
def test_track_plays_repeat_passes_and_the_last_frame_its_full_time():
    track = Track(Frames(3, 100), now=0.0, repeat=2)
    shown = []
    t = 0.0
    while not track.over(t):
        index = track.due(t)
        if index is not None:
            shown.append((round(t, 3), index))
        t += track.wait(t)
    assert shown == [(0.0, 0), (0.1, 1), (0.2, 2), (0.3, 0), (0.4, 1), (0.5, 2)]
    assert t == pytest.approx(0.6)


def test_track_for_seconds_and_a_late_track_skips_nothing():
    track = Track(Frames(2, 100), now=0.0, seconds=1.0)
    assert track.due(0.0) == 0
    assert track.due(0.35) == 1  # late by more than a frame: counts on from here
    assert track.due(0.40) is None and track.due(0.45) == 0
    assert not track.over(0.99) and track.over(1.0)
    still = Track(Frames(1), now=5.0, seconds=2.0)
    assert still.due(5.0) == 0 and still.due(6.0) is None
    assert still.wait(6.0) == pytest.approx(1.0) and still.over(7.0)


# ---- the display thread, stepped through its injected clock ---------------------------------
class Stepper:
    """A Player that is not started: `at(t)` applies queued commands and runs one step."""

    def __init__(self, tmp_path, **overrides):
        cfg = make_config(tmp_path, **overrides)
        os.makedirs(cfg.system.data_dir, exist_ok=True)
        self.store = Store(cfg.system.data_dir, {"brightness": 80, "fit": "contain",
                                                 "mode": "all", "current": None})
        self.store.open()
        self.driver = RecordingDriver(lambda: self.now)
        self.now = 0.0
        self.queue = NotificationQueue(8)
        self.player = Player(self.store, self.driver, None, cfg, clock=lambda: self.now,
                             notifications=self.queue)

    def at(self, t):
        self.now = t
        self.player._wait(0)
        return self.player._step()

    def shown(self):
        return [tag for _, tag in self.driver.shows]

    def post(self, n):
        self.queue.post(n, self.now)
        self.player.command("notify", wait=False)


def test_interrupt_and_resume_at_the_same_item_frame_and_time_left(tmp_path):
    rig = Stepper(tmp_path, **{"media.loop_count": 100})
    add_item(rig.store, 1, [1000, 1000, 1000])
    rig.at(0.0)  # library: item 1 starts
    rig.at(0.0)
    rig.at(1.0)
    assert rig.shown() == [10, 11]  # frame 1 since t=1.0, due to change at 2.0
    rig.now = 1.4
    rig.post(note("door", HIGH, now=1.4, seconds=2.5, source=Frames(2, 500, tag=90)))
    rig.at(1.4)
    rig.at(1.9)
    rig.at(2.4)
    assert rig.shown()[2:] == [90, 91, 90]
    assert rig.player.status.notification == "door"
    rig.at(3.9)  # over at 1.4 + 2.5
    rig.at(3.9)
    assert rig.shown()[-1] == 11  # the loop's frame again, at once
    assert rig.player.status.notification is None
    assert rig.player.preview[1] == 1
    rig.at(4.45)
    assert rig.shown()[-1] == 11  # its 0.6 s left: not yet
    rig.at(4.5)
    assert rig.shown()[-1] == 12  # 1.0 + 1.0 s of frame 1, plus the 2.5 s held


def test_a_paused_player_stays_paused_under_a_notification(tmp_path):
    rig = Stepper(tmp_path)
    add_item(rig.store, 1, [100, 100])
    rig.at(0.0)
    rig.at(0.0)
    rig.player.command("pause", wait=False)
    rig.at(0.05)
    rig.post(note("n", seconds=0.3, source=Frames(2, 100, tag=90)))
    for t in (0.1, 0.2, 0.3, 0.4, 0.4):
        rig.at(t)
    assert rig.shown() == [10, 90, 91, 90, 10]
    assert rig.player.status.state == "paused"
    rig.at(5.0)
    assert rig.shown()[-1] == 10  # still paused: nothing moves


def test_night_rule_off_gates_normal_and_lets_high_through_at_its_brightness(tmp_path):
    rig = Stepper(tmp_path)
    add_item(rig.store, 1, [1000])
    rig.at(0.0)
    rig.player.command("show", wait=False, show="off")
    rig.at(0.1)
    assert rig.driver.brightness[-1] == 0  # dark
    rig.post(note("normal", NORMAL, now=0.1, source=Frames(1, tag=90)))
    rig.at(0.2)
    assert 90 not in rig.shown()
    rig.post(note("alarm", CRITICAL, now=0.3, brightness=100, source=Frames(1, tag=95)))
    rig.at(0.3)
    assert rig.shown()[-1] == 95 and rig.driver.brightness[-1] == 100
    rig.at(5.3)  # alarm over; normal is still held; dark again
    rig.at(5.3)
    assert rig.driver.brightness[-1] == 0 and 90 not in rig.shown()
    rig.player.command("show", wait=False, show="loop")
    rig.at(6.0)
    rig.at(6.0)
    assert rig.shown()[-1] == 90 and rig.driver.brightness[-1] == 80  # morning
