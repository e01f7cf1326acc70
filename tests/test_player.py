"""The display thread against a recording driver.

Timing goes through the player's injected clock: `Rig.run_for` is the thread's loop (apply the
queued commands, step, sleep until the next deadline) with the sleep replaced by moving the
clock, so every frame time is exact and a busy machine cannot move it. The few tests that need
the real thread (waking on a command, never waiting for the library lock, stopping) use only
generous liveness bounds.
"""

import os
import threading
import time

import pytest
from conftest import Client, gif_bytes, make_config, png_bytes, wait_for

from loop.library.store import Store, now_iso
from loop.media import screens
from loop.media.frames import FrameWriter
from loop.playback.breaker import Breaker
from loop.playback.player import IDLE_WAKE_SEC, Player

T0 = 1000.0  # the injected clock starts here (0.0 means "no deadline yet" to the player)


class Clock:
    """The injected monotonic clock: time moves only when the test moves it."""

    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingDriver:
    """Records each call that reached the panel, at the injected clock's time; the first
    byte of a frame is its tag. `broken` makes every call fail, like a panel that went away,
    `broken_shows` only the frames; `slow_once` makes the next show() take that long (on the
    injected clock)."""

    name = "recording"
    pixel_format = "RGB24"

    def __init__(self, clock, width=4, height=2):
        self.clock = clock
        self.width, self.height = width, height
        self.shows: list[tuple[float, int]] = []
        self.brightness: list[int] = []
        self.calls: list[tuple] = []
        self.cleared = 0
        self.broken = False
        self.broken_shows = False
        self.slow_once = 0.0

    def _reach(self, *call):
        if self.broken:
            raise OSError("panel gone")
        self.calls.append(call)

    def show(self, frame):
        tag = bytes(frame[:1])[0]
        if self.broken_shows:
            raise OSError("frame write failed")
        self._reach("show", tag)
        self.shows.append((self.clock(), tag))
        if self.slow_once:
            self.clock.t += self.slow_once
            self.slow_once = 0.0

    def set_brightness(self, percent):
        self._reach("brightness", percent)
        self.brightness.append(percent)

    def clear(self):
        self._reach("clear")
        self.cleared += 1

    def close(self):
        pass


def add_item(store: Store, tag: int, durations, **meta_extra) -> str:
    """Commit an item whose frame i starts with byte tag*10+i."""
    item_id = f"{tag:016x}"
    staging = store.new_temp_dir("item")
    writer = FrameWriter(os.path.join(staging, "frames.bin"), 4, 2)
    for i, ms in enumerate(durations):
        writer.add(bytes([tag * 10 + i]) * 24, ms)
    writer.finish()
    with open(os.path.join(staging, "original.png"), "wb") as fh:
        fh.write(png_bytes(size=(4, 2)))
    meta = {"id": item_id, "name": f"item{tag}", "kind": "animation", "ext": "png",
            "frames": len(durations), "duration_ms": sum(durations), "bytes": 1,
            "created_at": now_iso(), "loop_count": None, "duration_sec": None}
    meta.update(meta_extra)
    store.commit_item(staging, meta)
    return item_id


class Rig:
    def __init__(self, store, driver, player, clock):
        self.store, self.driver, self.player, self.clock = store, driver, player, clock

    def start(self):
        """What Player.run does before its loop."""
        self.player._apply_state()

    def cmd(self, name, **args):
        """Queue a command; the next step of run_for applies it, as the thread would."""
        self.player.command(name, wait=False, **args)

    def run_for(self, seconds: float) -> None:
        """Player.run's loop on the injected clock: apply queued commands, step, then sleep
        until the next deadline (at most IDLE_WAKE_SEC, as Player._wait does)."""
        end = self.clock.t + seconds
        for _ in range(100_000):
            self.player._wait(0)
            timeout = self.player._step()
            sleep = IDLE_WAKE_SEC if timeout is None else min(timeout, IDLE_WAKE_SEC)
            if self.clock.t + sleep > end:
                self.clock.t = end
                self.player._wait(0)
                return
            self.clock.t += sleep
        raise AssertionError("the player never sleeps")

    def shown(self):
        """(seconds since T0, tag) of every frame that reached the panel."""
        return [(round(t - T0, 6), tag) for t, tag in self.driver.shows]


@pytest.fixture
def rig(tmp_path):
    threads = []

    def make(breaker=None, thread=False, **overrides):
        cfg = make_config(tmp_path, **overrides)
        store = Store(cfg.system.data_dir, {"brightness": 80, "fit": "contain", "mode": "all",
                                            "current": None})
        os.makedirs(cfg.system.data_dir, exist_ok=True)
        store.open()
        if thread:  # the real thread on the real clock
            clock = time.monotonic
            driver = RecordingDriver(time.monotonic)
            player = Player(store, driver, breaker, cfg)
            threads.append(player)
        else:
            clock = Clock()
            driver = RecordingDriver(clock)
            player = Player(store, driver, breaker, cfg, clock=clock)
        return Rig(store, driver, player, clock)

    yield make
    for player in threads:
        if player.is_alive():
            player.stop()


# ---- timing, on the injected clock ----------------------------------------------------------
# loop_count 100: one long run of loops; loop_count 1: a lone animation restarted after
# every loop, whose last frame must keep its full time (it used to show frame 0 at once)
@pytest.mark.parametrize("loop_count", [100, 1])
def test_frames_follow_their_durations_without_drift(rig, loop_count):
    r = rig(**{"media.loop_count": loop_count})
    add_item(r.store, 1, [100, 200, 300])
    r.start()
    r.run_for(2.45)
    # absolute deadlines: two whole loops take exactly 1.2 s, the fourth 2.4 s
    assert r.shown()[:7] == [(0.0, 10), (0.1, 11), (0.3, 12), (0.6, 10), (0.7, 11),
                             (0.9, 12), (1.2, 10)]
    assert r.shown()[-1] == (2.4, 10) and len(r.shown()) == 13
    assert r.player.late_frames == 0


def test_late_frame_skips_ahead_instead_of_piling_up(rig):
    r = rig(**{"media.loop_count": 100})
    add_item(r.store, 1, [50] * 10)
    r.driver.slow_once = 0.33  # the first show() blocks for 6.6 frame periods
    r.start()
    r.run_for(0.42)
    # frames 1..5 (due at 0.05..0.25) are dropped; frame 6 (0.30..0.35) is shown late, and
    # from then on the frames are back on their own deadlines
    assert r.shown() == [(0.0, 10), (0.33, 16), (0.35, 17), (0.4, 18)]
    assert r.player.late_frames == 5


def test_last_frame_keeps_its_time_before_the_next_item(rig):
    r = rig(**{"media.loop_count": 1})
    add_item(r.store, 1, [30, 250])
    add_item(r.store, 2, [30, 30])
    r.start()
    r.run_for(0.3)
    assert r.shown()[:3] == [(0.0, 10), (0.03, 11), (0.28, 20)]


def test_animation_plays_loop_count_times_then_next(rig):
    r = rig(**{"media.loop_count": 2})
    add_item(r.store, 1, [30, 30])
    add_item(r.store, 2, [30, 30])
    r.start()
    r.run_for(0.23)
    assert r.shown()[:8] == [(0.0, 10), (0.03, 11), (0.06, 10), (0.09, 11),
                             (0.12, 20), (0.15, 21), (0.18, 20), (0.21, 21)]


@pytest.mark.parametrize("late, handover, meta", [
    (0.65, 0.8, {}),  # back inside the second loop: it finishes that loop, then hands over
    (0.95, 0.95, {}),  # back after the second loop ended: the next item at once
    (0.95, 0.95, {"duration_sec": 0.8}),  # the same for an item timed in seconds
])
def test_a_late_thread_still_hands_over_after_exactly_loop_count_loops(rig, late, handover,
                                                                       meta):
    r = rig(**{"media.loop_count": 2})
    add_item(r.store, 1, [100] * 4, **meta)  # 0.4 s a loop: two loops end at 0.8 s
    add_item(r.store, 2, [100])
    r.driver.slow_once = late  # the thread comes back `late` seconds after frame 0
    r.start()
    r.run_for(1.5)
    first_of_next = next(t for t, tag in r.shown() if tag == 20)
    assert first_of_next == handover, r.shown()
    assert [tag for t, tag in r.shown() if t < handover] in (
        [10, 12, 13],  # frames 1..3 and 0..1 of the second loop were skipped
        [10],  # everything after frame 0 was skipped
    )


def test_per_item_loop_count_override(rig):
    r = rig(**{"media.loop_count": 1})
    add_item(r.store, 1, [30, 30], loop_count=3)
    add_item(r.store, 2, [30])
    r.start()
    r.run_for(0.2)
    assert [tag for _, tag in r.shown()[:7]] == [10, 11, 10, 11, 10, 11, 20]
    assert r.shown()[6] == (0.18, 20)


def test_stills_alternate(rig):
    r = rig(**{"media.static_image_duration_sec": 0.2})
    add_item(r.store, 1, [1000], kind="image")
    add_item(r.store, 2, [1000], kind="image")
    r.start()
    r.run_for(0.45)
    assert r.shown() == [(0.0, 10), (0.2, 20), (0.4, 10)]


def test_a_lone_still_is_drawn_once_and_the_thread_waits_for_commands(rig):
    r = rig(**{"media.static_image_duration_sec": 0.05})
    add_item(r.store, 1, [1000], kind="image")
    r.start()
    r.run_for(30)
    assert r.shown() == [(0.0, 10)]  # not redrawn every 50 ms
    assert r.player._step() is None  # nothing is due: it sleeps on its command queue


def test_an_idle_real_thread_still_beats_for_the_watchdog(rig):
    r = rig(thread=True, **{"media.static_image_duration_sec": 0.05})
    add_item(r.store, 1, [1000], kind="image")
    r.player.start()
    wait_for(lambda: r.driver.shows, timeout=10)
    beat = r.player.heartbeat
    wait_for(lambda: r.player.heartbeat > beat, timeout=10)  # IDLE_WAKE_SEC, generously
    assert len(r.driver.shows) == 1


def test_pause_keeps_position_and_resume_continues(rig):
    r = rig(**{"media.loop_count": 100})
    add_item(r.store, 1, [40] * 6)
    r.start()
    r.run_for(0.1)  # frames 0, 1, 2 at 0, 0.04, 0.08
    r.cmd("pause")
    r.run_for(0.3)
    assert r.player.status.state == "paused"
    assert r.shown() == [(0.0, 10), (0.04, 11), (0.08, 12)] and r.player.frame_index == 2
    r.cmd("play")
    r.run_for(0.1)
    # frame 2 gets the 0.02 s it had left when paused at 0.1, resumed at 0.4
    assert r.shown()[3:5] == [(0.42, 13), (0.46, 14)]


def test_pause_keeps_a_stills_remaining_time(rig):
    r = rig(**{"media.static_image_duration_sec": 0.8})
    add_item(r.store, 1, [1000], kind="image")
    add_item(r.store, 2, [1000], kind="image")
    r.start()
    r.run_for(0.3)
    r.cmd("pause")
    r.run_for(1.0)  # longer than the still's whole time
    r.cmd("play")
    r.run_for(1.0)
    # the first still gets its remaining 0.5 s after the resume at 1.3, not zero
    assert r.shown()[:2] == [(0.0, 10), (1.8, 20)]


def test_next_previous_select_take_effect_at_the_next_step(rig):
    r = rig(**{"media.static_image_duration_sec": 30})
    ids = [add_item(r.store, tag, [1000], kind="image") for tag in (1, 2, 3)]
    r.start()
    r.run_for(1)
    for command, args, item, tag in (("next", {}, ids[1], 20),
                                     ("select", {"item_id": ids[2]}, ids[2], 30),
                                     ("previous", {}, ids[1], 20)):
        r.cmd(command, **args)
        r.player._wait(0)
        r.player._step()
        assert r.player.status.item == item and r.shown()[-1] == (1.0, tag), command


def test_a_command_wakes_the_sleeping_thread(rig):
    r = rig(thread=True, **{"media.static_image_duration_sec": 30})
    ids = [add_item(r.store, tag, [1000], kind="image") for tag in (1, 2)]
    r.player.start()
    wait_for(lambda: r.player.status.item == ids[0], timeout=10)
    r.player.command("next", wait=False)
    # far sooner than the 30 s still would end: the command queue is the thread's sleep
    wait_for(lambda: r.driver.shows[-1][1] == 20, timeout=10)


def test_brightness_command_reaches_driver_and_persists(rig):
    r = rig()
    r.start()
    r.cmd("brightness", value=25)
    r.run_for(0.1)
    assert r.driver.brightness[-1] == 25
    assert r.store.settings["brightness"] == 25
    assert r.player.status.brightness == 25


# ---- the circuit breaker, on the injected clock ---------------------------------------------
def breaker_rig(rig, **overrides):
    """A rig whose player calls the driver through a breaker on the same injected clock:
    open after 2 failures, the trial 5 s later (no jitter)."""
    r = rig(**overrides)
    r.player.breaker = Breaker(max_failures=2, reset_sec=5.0, max_reset_sec=60.0,
                               clock=r.clock, rand=lambda: 0.5)
    return r, r.player.breaker


def test_brightness_set_while_the_breaker_is_open_reaches_the_panel_when_it_closes(rig):
    r, breaker = breaker_rig(rig, **{"media.loop_count": 100})
    add_item(r.store, 1, [100, 100])
    r.start()
    r.run_for(0.15)
    r.driver.broken = True
    r.run_for(0.2)  # two failed frames: open
    assert breaker.state == "open"
    r.cmd("brightness", value=30)
    r.run_for(0.1)
    assert r.player.status.brightness == 30 and 30 not in r.driver.brightness  # refused
    r.driver.broken = False  # the panel is back
    calls = len(r.driver.calls)
    r.run_for(5.0)  # the back-off ends: one trial, and the breaker closes
    assert breaker.state == "closed"
    # the first call through is the wanted brightness, then the current frame
    assert r.driver.calls[calls] == ("brightness", 30)
    assert r.driver.calls[calls + 1][0] == "show"
    assert r.driver.brightness == [80, 30]


def test_brightness_zero_does_not_stop_the_trials(rig):
    """A night rule at 0 during a panel fault must not leave the panel dark until a restart:
    the trial is the set_brightness(0) call, even on a lone still with nothing else due."""
    r, breaker = breaker_rig(rig, **{"media.static_image_duration_sec": 10})
    add_item(r.store, 1, [1000], kind="image")
    r.start()
    r.run_for(1)
    r.driver.broken = True
    r.cmd("brightness", value=50)
    r.run_for(1)  # the call fails, then the catch-up fails too: open
    assert breaker.state == "open"
    r.cmd("brightness", value=0)
    r.run_for(1)
    r.driver.broken = False
    r.run_for(10)
    assert breaker.state == "closed"
    assert r.driver.calls[-1] == ("brightness", 0)  # the panel is off, as wanted
    r.cmd("brightness", value=70)
    r.run_for(0.1)
    assert r.driver.calls[-2:] == [("brightness", 70), ("show", 10)]  # and lit again


def test_a_failed_frame_is_drawn_again_when_the_breaker_closes(rig):
    r, breaker = breaker_rig(rig, **{"media.static_image_duration_sec": 60})
    add_item(r.store, 1, [1000], kind="image")
    add_item(r.store, 2, [1000], kind="image")
    r.start()
    r.driver.broken = True
    r.run_for(1)
    r.cmd("next")  # still 2 starts while the panel is away
    r.run_for(1)
    assert breaker.state == "open" and r.player.status.item == f"{2:016x}"
    r.driver.broken = False
    r.run_for(5)
    assert breaker.state == "closed" and r.driver.calls[-1] == ("show", 20)


def test_failing_frames_open_the_breaker_though_brightness_calls_work(rig):
    """Catching up re-applies only what the panel missed: a brightness call that works must
    not reset the failure count while every frame fails (the breaker would never open)."""
    r, breaker = breaker_rig(rig, **{"media.loop_count": 100})
    add_item(r.store, 1, [100, 100])
    r.start()
    r.run_for(0.15)
    r.driver.broken_shows = True
    r.cmd("brightness", value=60)  # reaches the panel
    r.run_for(0.5)
    assert breaker.state == "open" and r.driver.brightness[-1] == 60
    r.run_for(20)  # the trials at +5 s and +10 s more: each one a frame, each one failing
    assert breaker.state == "open" and breaker.snapshot()["openings"] == 3
    r.driver.broken_shows = False
    r.run_for(20)  # the next trial, 20 s on
    assert breaker.state == "closed" and r.driver.calls[-1][0] == "show"


def test_an_operator_reset_puts_the_state_back_at_once(rig):
    r, breaker = breaker_rig(rig)
    add_item(r.store, 1, [1000], kind="image")
    r.start()
    r.driver.broken = True
    r.cmd("brightness", value=40)
    r.run_for(0.5)
    assert breaker.state == "open"
    r.driver.broken = False
    r.cmd("reset_breaker")
    r.player._wait(0)  # no time passes: not the back-off, the reset
    assert breaker.state == "closed"
    assert r.driver.calls[-2:] == [("brightness", 40), ("show", 10)]


# ---- the real thread ------------------------------------------------------------------------
def test_deleting_the_current_item_moves_on(rig):
    r = rig(thread=True, **{"media.static_image_duration_sec": 30})
    ids = [add_item(r.store, tag, [1000], kind="image") for tag in (1, 2)]
    r.player.start()
    wait_for(lambda: r.player.status.item == ids[0], timeout=10)
    r.store.delete_item(ids[0])
    r.player.command("library", wait=False)
    wait_for(lambda: r.player.status.item == ids[1], timeout=10)
    r.store.delete_item(ids[1])
    r.player.command("library", wait=False)
    wait_for(lambda: r.player.status.state == "idle", timeout=10)


def test_broken_frame_file_is_quarantined_not_fatal(rig):
    r = rig(**{"media.loop_count": 1})
    bad = add_item(r.store, 1, [30])
    good = add_item(r.store, 2, [30, 30])
    with open(r.store.frames_path(bad), "r+b") as fh:
        fh.truncate(40)
    r.start()
    r.run_for(0.1)
    assert bad in r.player.quarantined
    assert [tag for _, tag in r.shown()][:2] == [20, 21]
    assert r.player.status.item == good


def test_stop_clears_the_panel(rig):
    r = rig(thread=True)
    r.player.start()
    done = threading.Event()
    threading.Thread(target=lambda: (r.player.stop(), done.set())).start()
    assert done.wait(10)
    assert r.driver.cleared == 1


def test_display_thread_never_waits_for_the_library_lock(rig):
    r = rig(thread=True, **{"media.static_image_duration_sec": 30})
    ids = [add_item(r.store, tag, [1000], kind="image") for tag in (1, 2)]
    r.player.start()
    wait_for(lambda: r.player.status.item == ids[0], timeout=10)
    with r.store._lock:  # an upload's commit holding the lock across its fsyncs
        r.player.command("next", wait=False)
        r.player.command("mode", wait=False, mode="one")
        # the lock is held until this gives up: a thread that waited for it never gets here
        wait_for(lambda: r.player.status.item == ids[1] and r.player.status.mode == "one",
                 timeout=10)
    assert r.store.flush() is True  # the debounced settings reach the disk afterwards


def test_items_waiting_for_a_render_are_not_called_no_media(rig):
    r = rig()
    item = add_item(r.store, 1, [1000], kind="image")
    r.store.set_pending([item])
    r.start()
    r.run_for(0.1)
    expected = screens.render(["Preparing media"], 4, 2).tobytes()
    assert bytes(r.player.preview[0].frame(0)) == expected


def test_status_says_starting_during_the_boot_screen_then_plays(rig):
    r = rig()
    add_item(r.store, 1, [100, 100])
    r.player.screen(["LOOP", "10.0.0.7"], 2.0)  # queued before the thread starts, as App does
    r.start()
    r.run_for(1.0)
    assert r.player.status.state == "starting" and r.player.status.item is None
    r.run_for(1.5)
    assert r.player.status.state == "playing"
    assert r.player.status.item == f"{1:016x}"
    assert r.shown()[1] == (2.0, 10)  # the first frame right when the screen's time is up


# ---- quarantine and re-rendering, in the service --------------------------------------------
def test_a_quarantined_item_plays_again_after_it_is_re_rendered(make_app):
    app = make_app()
    client = Client(app.server.port)
    good = client.post("/api/media?name=good.gif", body=gif_bytes(delays=(50, 50, 50))) \
        .data["results"][0]["item"]["id"]
    bad = client.post("/api/media?name=bad.png", body=png_bytes((200, 0, 0))) \
        .data["results"][0]["item"]["id"]
    wait_for(lambda: app.player.status.item == good, timeout=10)  # bad is not mapped yet
    # the frame file goes bad on disk; replaced, not truncated (a mapped file that shrinks
    # is SIGBUS)
    junk = os.path.join(app.store.tmp_dir, "junk")
    with open(junk, "wb") as fh:
        fh.write(b"not a frame file")
    os.replace(junk, app.store.frames_path(bad))
    client.post("/api/playback/select", json_body={"id": bad})
    wait_for(lambda: bad in app.player.quarantined, timeout=10)
    assert client.get(f"/api/media/{bad}").data["quarantined"] is True
    wait_for(lambda: app.player.status.item == good, timeout=10)

    # a fit change re-renders every item from its original, the broken one too
    assert client.put("/api/display", json_body={"fit": "cover"}).status == 200
    wait_for(lambda: app.maintenance.rendered >= 2 and not app.store.view.pending, timeout=30)
    wait_for(lambda: bad not in app.player.quarantined, timeout=10)
    assert client.get(f"/api/media/{bad}").data["quarantined"] is False
    reply = client.post("/api/playback/select", json_body={"id": bad})
    assert reply.status == 200 and reply.data["item"] == bad
    wait_for(lambda: app.player.status.item == bad and app.player.status.state == "playing",
             timeout=10)
