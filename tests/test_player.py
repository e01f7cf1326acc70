"""The display thread against a recording driver: timings, advancing, commands, idling."""

import os
import threading
import time

import pytest
from conftest import make_config, wait_for

from loop.library.store import Store, now_iso
from loop.media import screens
from loop.media.frames import FrameWriter
from loop.playback.player import Player


class RecordingDriver:
    """Records when each frame arrived and which one it was (first byte = frame tag)."""

    name = "recording"
    pixel_format = "RGB24"

    def __init__(self, width=4, height=2, slow_once=0.0):
        self.width, self.height = width, height
        self.shows: list[tuple[float, int]] = []
        self.brightness = []
        self.cleared = 0
        self.slow_once = slow_once

    def show(self, frame):
        self.shows.append((time.monotonic(), bytes(frame[:1])[0]))
        if self.slow_once:
            delay, self.slow_once = self.slow_once, 0.0
            time.sleep(delay)

    def set_brightness(self, percent):
        self.brightness.append(percent)

    def clear(self):
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
    open(os.path.join(staging, "original.png"), "wb").close()
    meta = {"id": item_id, "name": f"item{tag}", "kind": "animation", "ext": "png",
            "frames": len(durations), "duration_ms": sum(durations), "bytes": 1,
            "created_at": now_iso(), "loop_count": None, "duration_sec": None}
    meta.update(meta_extra)
    store.commit_item(staging, meta)
    return item_id


@pytest.fixture
def rig(tmp_path):
    players = []

    def make(driver=None, **overrides):
        cfg = make_config(tmp_path, **overrides)
        store = Store(cfg.system.data_dir, {"brightness": 80, "fit": "contain", "mode": "all",
                                            "current": None})
        os.makedirs(cfg.system.data_dir, exist_ok=True)
        store.open()
        driver = driver or RecordingDriver()
        player = Player(store, driver, None, cfg)
        players.append(player)
        return store, driver, player

    yield make
    for player in players:
        player.stop()


def intervals(shows):
    return [round((b[0] - a[0]) * 1000) for a, b in zip(shows, shows[1:])]


# loop_count 100: one long run of loops; loop_count 1: a lone animation restarted after
# every loop, whose last frame must keep its full time (it used to show frame 0 at once)
@pytest.mark.parametrize("loop_count", [100, 1])
def test_frames_follow_their_durations_without_drift(rig, loop_count):
    store, driver, player = rig(**{"media.loop_count": loop_count})
    add_item(store, 1, [100, 200, 300])
    player.start()
    wait_for(lambda: len(driver.shows) >= 7, timeout=10)
    shows = driver.shows[:7]
    assert [tag for _, tag in shows] == [10, 11, 12, 10, 11, 12, 10]
    for got, want in zip(intervals(shows), [100, 200, 300, 100, 200, 300]):
        assert abs(got - want) < 60, intervals(shows)
    # absolute deadlines: two whole loops take 1.2 s, not 1.2 s plus accumulated lag
    assert abs((shows[6][0] - shows[0][0]) * 1000 - 1200) < 60


def test_late_frame_skips_ahead_instead_of_piling_up(rig):
    driver = RecordingDriver(slow_once=0.35)
    store, driver, player = rig(driver, **{"media.loop_count": 100})
    add_item(store, 1, [50] * 10)
    player.start()
    wait_for(lambda: len(driver.shows) >= 8, timeout=10)
    assert player.late_frames >= 4  # ~7 frame periods were lost, some are skipped
    tags = [tag for _, tag in driver.shows[:3]]
    assert tags[0] == 10 and tags[1] > 11  # skipped ahead after the slow show
    assert intervals(driver.shows[1:6]) and max(intervals(driver.shows[2:6])) < 100


def test_last_frame_keeps_its_time_before_the_next_item(rig):
    store, driver, player = rig(**{"media.loop_count": 1})
    add_item(store, 1, [30, 250])
    add_item(store, 2, [30, 30])
    player.start()
    wait_for(lambda: len(driver.shows) >= 3, timeout=10)
    assert [tag for _, tag in driver.shows[:3]] == [10, 11, 20]
    assert abs(intervals(driver.shows[:3])[1] - 250) < 60, intervals(driver.shows[:3])


def test_animation_plays_loop_count_times_then_next(rig):
    store, driver, player = rig(**{"media.loop_count": 2})
    add_item(store, 1, [30, 30])
    add_item(store, 2, [30, 30])
    player.start()
    wait_for(lambda: len(driver.shows) >= 8, timeout=10)
    assert [tag for _, tag in driver.shows[:8]] == [10, 11, 10, 11, 20, 21, 20, 21]


def test_per_item_loop_count_override(rig):
    store, driver, player = rig(**{"media.loop_count": 1})
    add_item(store, 1, [30, 30], loop_count=3)
    add_item(store, 2, [30])
    player.start()
    wait_for(lambda: len(driver.shows) >= 7, timeout=10)
    assert [tag for _, tag in driver.shows[:7]] == [10, 11, 10, 11, 10, 11, 20]


def test_stills_alternate_and_a_lone_still_idles(rig):
    store, driver, player = rig(**{"media.static_image_duration_sec": 0.2})
    add_item(store, 1, [1000], kind="image")
    add_item(store, 2, [1000], kind="image")
    player.start()
    wait_for(lambda: len(driver.shows) >= 3, timeout=10)
    assert [tag for _, tag in driver.shows[:3]] == [10, 20, 10]
    assert abs(intervals(driver.shows[:2])[0] - 200) < 80


def test_lone_still_costs_no_cpu(rig):
    store, driver, player = rig(**{"media.static_image_duration_sec": 0.05})
    add_item(store, 1, [1000], kind="image")
    player.start()
    wait_for(lambda: len(driver.shows) >= 1)
    time.sleep(0.5)
    assert len(driver.shows) == 1  # not redrawn every 50 ms
    ident = player.native_id
    cpu = _thread_cpu(ident)
    time.sleep(1.0)
    assert _thread_cpu(ident) - cpu < 0.05
    assert player.heartbeat > time.monotonic() - 2.5  # still alive for the watchdog


def _thread_cpu(native_id) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_pause_keeps_position_and_resume_continues(rig):
    store, driver, player = rig(**{"media.loop_count": 100})
    add_item(store, 1, [40] * 6)
    player.start()
    wait_for(lambda: len(driver.shows) >= 3)
    status = player.command("pause")
    assert status.state == "paused"
    count, index = len(driver.shows), player.frame_index
    time.sleep(0.3)
    assert len(driver.shows) == count and player.frame_index == index
    player.command("play")
    wait_for(lambda: len(driver.shows) > count)
    assert driver.shows[count][1] == 10 + (index + 1) % 6


def test_next_previous_select_take_effect_at_once(rig):
    store, driver, player = rig(**{"media.static_image_duration_sec": 30})
    ids = [add_item(store, tag, [1000], kind="image") for tag in (1, 2, 3)]
    player.start()
    wait_for(lambda: driver.shows)
    started = time.monotonic()
    assert player.command("next").item == ids[1]
    wait_for(lambda: driver.shows[-1][1] == 20)
    assert player.command("select", item_id=ids[2]).item == ids[2]
    wait_for(lambda: driver.shows[-1][1] == 30)
    assert player.command("previous").item == ids[1]
    assert time.monotonic() - started < 2  # not waiting for the 30 s still to end


def test_deleting_the_current_item_moves_on(rig):
    store, driver, player = rig(**{"media.static_image_duration_sec": 30})
    ids = [add_item(store, tag, [1000], kind="image") for tag in (1, 2)]
    player.start()
    wait_for(lambda: player.status.item == ids[0])
    store.delete_item(ids[0])
    player.command("library")
    wait_for(lambda: player.status.item == ids[1])
    store.delete_item(ids[1])
    player.command("library")
    wait_for(lambda: player.status.state == "idle")


def test_broken_frame_file_is_quarantined_not_fatal(rig):
    store, driver, player = rig(**{"media.loop_count": 1})
    bad = add_item(store, 1, [30])
    good = add_item(store, 2, [30, 30])
    with open(store.frames_path(bad), "r+b") as fh:
        fh.truncate(40)
    player.start()
    wait_for(lambda: bad in player.quarantined)
    wait_for(lambda: any(tag == 20 for _, tag in driver.shows))
    assert player.status.item == good


def test_brightness_command_reaches_driver_and_persists(rig):
    store, driver, player = rig()
    player.start()
    player.command("brightness", value=25)
    assert driver.brightness[-1] == 25
    assert store.settings["brightness"] == 25
    assert player.status.brightness == 25


def test_stop_clears_the_panel(rig):
    store, driver, player = rig()
    player.start()
    done = threading.Event()
    threading.Thread(target=lambda: (player.stop(), done.set())).start()
    assert done.wait(5)
    assert driver.cleared == 1


def test_pause_keeps_a_stills_remaining_time(rig):
    store, driver, player = rig(**{"media.static_image_duration_sec": 0.8})
    add_item(store, 1, [1000], kind="image")
    add_item(store, 2, [1000], kind="image")
    player.start()
    wait_for(lambda: driver.shows)
    time.sleep(0.3)
    player.command("pause")
    time.sleep(1.0)  # longer than the still's whole time
    resumed = time.monotonic()
    player.command("play")
    wait_for(lambda: len(driver.shows) >= 2, timeout=5)
    assert driver.shows[1][1] == 20
    # the first still got its remaining ~0.5 s after the resume, not zero
    assert driver.shows[1][0] - resumed > 0.3


def test_display_thread_never_waits_for_the_library_lock(rig):
    store, driver, player = rig(**{"media.static_image_duration_sec": 30})
    ids = [add_item(store, tag, [1000], kind="image") for tag in (1, 2)]
    player.start()
    wait_for(lambda: player.status.item == ids[0])
    with store._lock:  # an upload's commit holding the lock across its fsyncs
        started = time.monotonic()
        assert player.command("next").item == ids[1]
        assert player.command("mode", mode="one").mode == "one"
        assert time.monotonic() - started < 1.5
    assert store.flush() is True  # the debounced settings reach the disk afterwards


def test_items_waiting_for_a_render_are_not_called_no_media(rig):
    store, driver, player = rig()
    item = add_item(store, 1, [1000], kind="image")
    store.set_pending([item])
    player.start()
    wait_for(lambda: driver.shows)
    expected = screens.render(["Preparing media"], 4, 2).tobytes()
    assert bytes(player.preview[0].frame(0)) == expected


def test_status_says_starting_during_the_boot_screen_then_plays(rig):
    store, driver, player = rig()
    add_item(store, 1, [100, 100])
    player.screen(["LOOP", "10.0.0.7"], 2.0)  # queued before the thread starts, as App does
    player.start()
    assert wait_for(lambda: player.status.state == "starting", timeout=2)
    assert player.status.item is None
    wait_for(lambda: player.status.state == "playing", timeout=10)
    assert player.status.item == f"{1:016x}"
