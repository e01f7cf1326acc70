"""The display thread: what to show when, frame pacing, commands, heartbeat, preview frame.

Frame deadlines are absolute on the monotonic clock, so timing does not drift; when the thread
is late by more than a frame it skips ahead instead of piling up lag. Commands arrive through a
queue that also serves as the thread's only sleep, so they take effect at once. Other threads
read `status`, `frame_index` and `preview` without locks: each is replaced, never mutated.

Over the loop the thread may play an overlay (`Track`, loop/playback/track.py): the
notification the queue chooses (loop/playback/notifications.py), else the night clock or a
dark panel when the schedule's rule says `show: clock` / `off`. The loop is held meanwhile
(like a pause: its frame and the time left of it are kept) and goes on where it was. Clock
items and the night clock are `ClockFace`s (loop/media/clock.py): composed from frames made
off this thread, once a second at most.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from loop.media import screens
from loop.media.clock import ClockFace
from loop.media.frames import FrameFile, FrameFileError
from loop.media.pixels import to_pixels
from loop.playback.notifications import PRIORITIES, NotificationQueue
from loop.playback.track import Track

log = logging.getLogger("loop.player")

IDLE_WAKE_SEC = 1.0  # an idle thread still wakes this often to keep its heartbeat fresh
COMMAND_WAIT_SEC = 2.0


@dataclass(frozen=True)
class PlayerStatus:
    state: str  # starting (boot screen) | playing | paused | idle
    item: str | None
    name: str | None
    frames: int
    position: int  # index of the item in the loop
    length: int  # items in the loop
    mode: str
    brightness: int
    version: int
    show: str = "loop"  # what the schedule's rule shows: loop | clock | off
    notification: str | None = None  # id of the notification on the panel

    def as_dict(self, frame: int) -> dict:
        return {"state": self.state, "item": self.item, "name": self.name, "frame": frame,
                "frames": self.frames, "position": self.position, "length": self.length,
                "mode": self.mode, "brightness": self.brightness, "show": self.show,
                "notification": self.notification}


class Screen:
    """A single generated frame (boot URL, empty-library hint) with a FrameFile-like face."""

    count = 1
    durations = (1000,)

    def __init__(self, image, pixel_format: str, rotation: int = 0):
        self.width, self.height = image.size
        self.pixel_format = pixel_format
        self.rotation = rotation
        self._data = to_pixels(image, pixel_format, rotation)

    def frame(self, index: int):
        return self._data

    def close(self) -> None:
        pass


@dataclass
class _Playing:
    item: dict
    frames: object  # FrameFile or Screen
    index: int = 0
    loops: int = 0
    started: float = 0.0
    deadline: float = 0.0
    ended: bool = False  # played its loops; what comes next is due at `deadline`


class Player(threading.Thread):
    """Plays the loop on the driver, through the circuit breaker."""

    def __init__(self, store, driver, breaker, cfg, *, hint_lines=(), clock=time.monotonic,
                 rng=None, brightness: int | None = None, notifications=None,
                 wall=time.time, zone=None, on_start=None):
        """`on_start` runs first on the display thread itself (real-time scheduling)."""
        super().__init__(name="display", daemon=True)
        self.on_start = on_start
        self.store, self.driver, self.breaker, self.cfg = store, driver, breaker, cfg
        self.hint_lines = list(hint_lines)
        self.clock = clock
        self.wall = wall  # the wall clock of clock faces (`zone()`: the schedule's zone)
        self.zone = zone or (lambda: UTC)
        self.notifications = notifications if notifications is not None \
            else NotificationQueue(cfg.notify.max_queued)
        self.rng = rng or random.Random()
        # SimpleQueue: its timed get() is one C-level wait, where Queue's runs Python code and
        # often a second wait; this wait is the display thread's sleep between frames.
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        settings = store.settings
        self.mode = settings.get("mode", "all")
        # `brightness`: what the schedule wants at start-up, else the saved setting
        self.brightness = int(brightness if brightness is not None
                              else settings.get("brightness", cfg.display.brightness))
        self.paused = False
        self._held_since: float | None = None  # the loop's clock stands (pause, overlay)
        self.show_mode = "loop"  # the schedule rule's `show`
        self.night_clock: ClockFace | None = None  # what `show: clock` shows
        self._overlay: Track | None = None  # a notification or the night clock, or None
        self._overlay_key = None  # what the overlay is: a Notification, ("clock", face), "off"
        self._note = None  # the Notification the overlay plays
        self._dark = False  # `show: off` and no notification: the panel is off
        self._queue_version = -1  # the queue's version at the last choice
        self._recheck_at = 0.0  # when the queue must be asked again (an expiry)
        self._loop_frame = None  # (frames, index) of the loop, shown again after an overlay
        self._output_brightness = self.brightness
        self._last_loop: tuple = ()
        self.heartbeat = clock()
        self.frame_index = 0
        self.frames_shown = 0
        self.late_frames = 0
        self.quarantined: frozenset = frozenset()
        self._quarantined_render: dict = {}  # id -> its meta["render"] when quarantined
        self.preview = None  # (frames, index) of what the panel shows now
        # what the panel missed because a driver call was refused (breaker open) or failed;
        # _catch_up() puts exactly that back, and nothing else: a call that works must not
        # hide one that keeps failing (a success resets the breaker's failure count)
        self._brightness_behind = False
        self._frame_behind = False
        self._now: _Playing | None = None
        self._library_version = -1
        self._screen_until = 0.0
        self._stopping = False
        self._version = 0
        self.status = self._make_status()

    # ---- API side (any thread) ----------------------------------------------------------
    def command(self, name: str, wait: bool = True, **args) -> PlayerStatus:
        """Queue a command; with `wait`, return the status once the thread has applied it."""
        done = threading.Event() if wait else None
        self.commands.put((name, args, done))
        if done is not None:
            done.wait(COMMAND_WAIT_SEC)
        return self.status

    def stop(self, timeout: float = 5.0) -> None:
        self.commands.put(("stop", {}, None))
        self.join(timeout)

    def screen(self, lines: list[str], seconds: float) -> None:
        """Show a status screen (e.g. the boot URL) for `seconds`."""
        self.commands.put(("screen", {"lines": lines, "seconds": seconds}, None))

    # ---- the thread --------------------------------------------------------------------
    def run(self) -> None:
        if self.on_start is not None:
            self.on_start()
        self._apply_state()
        timeout = 0.0
        while not self._stopping:
            self._wait(timeout)
            if self._stopping:
                break
            self.heartbeat = self.clock()
            try:
                timeout = self._step()
            except Exception:  # a bug must not kill the display thread; the log shows it
                log.exception("player step failed")
                timeout = IDLE_WAKE_SEC
        self._call_driver(self.driver.clear)
        self._close_current()

    def _wait(self, timeout: float | None) -> None:
        """Sleep until the deadline or a command, then apply every queued command."""
        wait = IDLE_WAKE_SEC if timeout is None else max(0.0, min(timeout, IDLE_WAKE_SEC))
        try:
            item = self.commands.get(timeout=wait) if wait > 0 else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*item)
            try:
                item = self.commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, name: str, args: dict, done) -> None:
        try:
            getattr(self, f"_cmd_{name}")(**args)
        except Exception:
            log.exception("player command %s failed", name)
        finally:
            if done is not None:
                done.set()

    # ---- commands (display thread only) --------------------------------------------------
    def _cmd_stop(self):
        self._stopping = True

    def _cmd_library(self):
        pass  # _step re-reads the library when its version moved

    def _cmd_play(self):
        self._set_paused(False)

    def _cmd_pause(self):
        self._set_paused(True)

    def _cmd_toggle(self):
        self._set_paused(not self.paused)

    def _cmd_next(self):
        self._advance(+1)

    def _cmd_previous(self):
        self._advance(-1)

    def _cmd_select(self, item_id: str):
        self._start_item(item_id)

    def _cmd_mode(self, mode: str):
        self.mode = mode
        self.store.update_settings(mode=mode)
        self._changed()

    def _cmd_brightness(self, value: int, remember: bool = True):
        # remember=False: the schedule's brightness is shown, not saved as the manual one
        self.brightness = value
        if remember:
            self.store.update_settings(brightness=value)
        self._queue_version = -1  # brightness 0 gates notifications like a night rule
        self._apply_state()
        self._changed()

    def _cmd_reset_breaker(self):
        self.breaker.reset()
        self._apply_state()
        self._changed()

    def _cmd_notify(self):
        pass  # _step asks the queue again when its version moved

    def _cmd_show(self, show: str):
        self.show_mode = show
        self._queue_version = -1
        self._changed()

    def _cmd_night_clock(self, face):
        self.night_clock = face
        self._queue_version = -1

    def _cmd_screen(self, lines, seconds):
        self._screen_until = self.clock() + seconds
        self._show_screen(lines)
        self._changed()

    def _set_paused(self, paused: bool):
        if paused == self.paused:
            return
        self.paused = paused
        self._hold(paused or self._overlay_key is not None)
        self._changed()

    def _hold(self, hold: bool) -> None:
        """Stop or restart the loop's clock (pause, overlay): on restart the loop resumes where
        it stopped, the frame (or the still's remaining time) kept."""
        now = self.clock()
        if hold and self._held_since is None:
            self._held_since = now
        elif not hold and self._held_since is not None:
            if self._now is not None and self._now.deadline:
                self._now.deadline += now - self._held_since
                self._now.started += now - self._held_since
            self._held_since = None

    # ---- playback ----------------------------------------------------------------------
    def _step(self) -> float | None:
        """Do what is due now; return seconds until the next thing is due (None = idle)."""
        now = self.clock()
        if (self._brightness_behind or self._frame_behind) and \
                (self.breaker is None or self.breaker.would_allow()):
            self._catch_up()  # also when nothing else is due: idle, a still, brightness 0
        if now < self._screen_until:
            return self._screen_until - now
        if self._screen_until:  # the boot screen just ended: no longer "starting"
            self._screen_until = 0.0
            self._changed()
        view = self.store.view
        if view.version != self._library_version:
            self._library_version = view.version
            self._library_changed(view)
        if self.notifications.version != self._queue_version or now >= self._recheck_at:
            self._choose_overlay(now)
        if self._overlay_key is not None:
            return self._play_overlay(now)
        if self._now is None or self._now.item is None:
            return None
        playing = self._now
        if self.paused:
            return self._tick_clock(playing.frames, None)
        if now < playing.deadline:
            return self._tick_clock(playing.frames, playing.deadline - now)
        return self._show_due(playing, now)

    def _show_due(self, playing: _Playing, now: float) -> float | None:
        frames = playing.frames
        if frames.count == 1:
            return self._show_still(playing, now)
        if playing.ended:  # the last frame has had its full time: on to the next item
            self._advance(+1, auto=True)
            return 0.0
        if playing.deadline and now - playing.deadline > frames.durations[playing.index] / 1000:
            self._skip_ahead(playing, now)
            if playing.ended:  # its loops ran out while the thread was late
                self._advance(+1, auto=True)
                return 0.0
        if playing.deadline == 0.0:
            playing.deadline = playing.started = now
        self._show(frames, playing.index)
        playing.deadline += frames.durations[playing.index] / 1000
        playing.index += 1
        if playing.index >= frames.count:
            playing.index = 0
            playing.loops += 1
            playing.ended = self._animation_over(playing, now)
        return max(0.0, playing.deadline - self.clock())

    def _skip_ahead(self, playing: _Playing, now: float) -> None:
        """Drop the frames whose time has passed; a wrap past the last frame is a loop like
        any other, so the item still hands over after exactly its loops."""
        frames = playing.frames
        while playing.deadline + frames.durations[playing.index] / 1000 < now:
            playing.deadline += frames.durations[playing.index] / 1000
            playing.index += 1
            self.late_frames += 1
            if playing.index >= frames.count:
                playing.index = 0
                playing.loops += 1
                if self._animation_over(playing, playing.deadline):
                    playing.ended = True  # the next item was due at `deadline`
                    return

    def _show_still(self, playing: _Playing, now: float) -> float | None:
        if playing.loops and self._nothing_to_advance_to():
            return None  # a lone still stays as it is: no redraw at every idle wake
        if playing.loops:  # its time is up
            self._advance(+1, auto=True)
            return 0.0
        self._show(playing.frames, 0)
        seconds = playing.item.get("duration_sec") or self.cfg.media.static_image_duration_sec
        playing.started, playing.deadline, playing.loops = now, now + seconds, 1
        if self._nothing_to_advance_to():
            return None  # a lone still costs no CPU: wait for a command
        return seconds

    def _animation_over(self, playing: _Playing, now: float) -> bool:
        if self.mode == "one" and len(self.store.view.loop) <= 1:
            return False
        seconds = playing.item.get("duration_sec") or self.cfg.media.item_duration_sec
        if seconds:
            return now - playing.started >= seconds
        return playing.loops >= (playing.item.get("loop_count") or self.cfg.media.loop_count)

    def _nothing_to_advance_to(self) -> bool:
        return self.mode == "one" or len(self._playable()) <= 1

    def _playable(self) -> list[str]:
        view = self.store.view  # pending items wait for the maintenance thread's re-render
        return [i for i in view.loop if i not in self.quarantined and i not in view.pending]

    def _advance(self, step: int, auto: bool = False) -> None:
        ids = self._playable()
        if not ids:
            self._start_item(None)
            return
        current = self._now.item["id"] if self._now and self._now.item else None
        if auto and self.mode == "one" and current in ids:
            self._start_item(current)
            return
        if self.mode == "shuffle" and len(ids) > 1:
            choices = [i for i in ids if i != current]
            self._start_item(self.rng.choice(choices))
            return
        position = ids.index(current) if current in ids else -1
        self._start_item(ids[(position + step) % len(ids)])

    def _start_item(self, item_id: str | None) -> None:
        playing = self._now
        if playing is not None and playing.item and playing.item["id"] == item_id:
            # the same item again (a lone item, mode one): restart it without a state change;
            # after its loops ended it goes on on schedule (no drift), else it restarts now
            playing.index, playing.loops = 0, 0
            if playing.ended:
                playing.started, playing.ended = playing.deadline, False
            else:
                playing.deadline = 0.0
            return
        self._close_current()
        view = self.store.view
        item = view.get(item_id) if item_id and item_id not in view.pending else None
        if item is None:
            self._now = None
            self._show_hint()
            self._changed()
            return
        try:
            frames = FrameFile(self.store.frames_path(item["id"]))
            if item.get("kind") == "clock":
                file, frames = frames, ClockFace(frames, item["layout"])
                file.close()  # the face keeps copies: no descriptor stays open
                frames.show(self._local_time())
        except (OSError, FrameFileError, KeyError, TypeError, ValueError) as exc:
            log.error("item %s cannot play and is quarantined: %s", item["id"], exc)
            self.quarantined = self.quarantined | {item["id"]}
            self._quarantined_render[item["id"]] = item.get("render")
            self._now = None
            self._changed()
            if self._playable():
                self._advance(+1)
            return
        self._now = _Playing(item, frames)
        self.store.update_settings(current=item["id"])
        if self.paused:  # paused on a new item: show its first frame, not the old one
            self._show(frames, 0)
        self._changed()

    def _library_changed(self, view) -> None:
        self._release_rerendered(view)
        current = self._now.item["id"] if self._now and self._now.item else None
        switched_off = current in self._last_loop and current not in view.loop
        self._last_loop = view.loop
        if current and (view.get(current) is None or current in view.pending or switched_off):
            self._advance(+1)  # deleted, waiting for a re-render, or out of the loop: move on
        elif current is None:
            wanted = self.store.settings.get("current")
            ids = self._playable()
            self._start_item(wanted if wanted in ids else (ids[0] if ids else None))
        else:
            self._now.item = view.get(current)  # renamed or new per-item timings
        self._changed()  # the loop's order or length may have moved too

    def _release_rerendered(self, view) -> None:
        """A quarantined item plays again once it has new frames: a re-render records a new
        `render` in its meta. A deleted one just leaves the quarantine."""
        released = {i for i in self.quarantined if view.get(i) is None
                    or view.get(i).get("render") != self._quarantined_render.get(i)}
        if not released:
            return
        self.quarantined = self.quarantined - released
        for item_id in released:
            del self._quarantined_render[item_id]
            if view.get(item_id) is not None:
                log.info("item %s has new frames and leaves the quarantine", item_id)

    def _close_current(self) -> None:
        # Dropping the reference is enough: the mapping is freed once the preview (which the
        # API may be reading right now) lets go of it too. Closing it here would pull the
        # frame out from under a request.
        self._now = None

    # ---- overlays: notifications, the night clock, a dark panel -------------------------
    def _choose_overlay(self, now: float) -> None:
        """Ask the queue what belongs on the panel; switch overlays when that changed."""
        night = self.show_mode != "loop" or self.brightness == 0
        lowest = self.cfg.notify.night_priority
        gate = (PRIORITIES.index(lowest) if lowest in PRIORITIES else len(PRIORITIES)) \
            if night else None
        note, self._queue_version = self.notifications.choose(now, gate)
        expiry = self.notifications.next_event()
        self._recheck_at = expiry if expiry is not None else float("inf")
        if note is not None:
            wanted = note
        elif self.show_mode == "clock" and self.night_clock is not None:
            wanted = ("clock", self.night_clock)
        else:
            wanted = "off" if self.show_mode != "loop" else None
        if wanted == self._overlay_key:
            return
        held = self._overlay_key is not None
        self._overlay_key, self._note = wanted, note
        self._dark = wanted == "off"
        self._overlay = None
        if note is not None:
            self._overlay = Track(note.source, now, note.seconds, note.repeat)
        elif isinstance(wanted, tuple):
            self._overlay = Track(self.night_clock, now)
        if not held and wanted is not None:
            self._loop_frame = self.preview
        self._hold(self.paused or wanted is not None)
        if wanted is None:  # the loop's frame again, where it stopped
            self.preview = self._loop_frame
            if self._loop_frame is not None:
                self.frame_index = self._loop_frame[1]
        # the brightness it wants; the loop's frame when the loop is back (an overlay draws
        # its own first frame at once, in this step)
        self._apply_state(draw=wanted is None)
        if wanted is None and self._loop_frame is None:
            self._call_driver(self.driver.clear)  # nothing played before the overlay
        self._changed()

    def _play_overlay(self, now: float) -> float | None:
        track = self._overlay
        if track is None:  # dark: nothing to show until a command or an expiry
            return self._recheck_at - now if self._recheck_at != float("inf") else None
        index = track.due(now)
        if index is not None:
            if isinstance(track.frames, ClockFace):
                track.frames.show(self._local_time())
            self._output(track.frames, index)
        if track.over(now):
            self.notifications.finish(self._note)
            return 0.0  # the next step chooses what follows
        wait = self._tick_clock(track.frames, track.wait(now))
        if self._recheck_at != float("inf"):
            wait = self._recheck_at - now if wait is None else min(wait, self._recheck_at - now)
        return wait

    def _tick_clock(self, frames, wait: float | None) -> float | None:
        """A clock face shows the time anew when its text changed; it looks every second,
        so a DST change or a wall-clock jump (NTP after boot) shows within a second."""
        if not isinstance(frames, ClockFace):
            return wait
        if frames.show(self._local_time()):
            show = self._output if self._overlay is not None else self._show
            show(frames, 0)
        tick = 1.0 - self.wall() % 1.0 + 0.002
        return tick if wait is None else min(wait, tick)

    def _local_time(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), self.zone())

    # ---- output ------------------------------------------------------------------------
    def _show(self, frames, index: int) -> None:
        """A frame of the loop; kept for later while an overlay has the panel."""
        if self._overlay_key is not None:
            self._loop_frame = (frames, index)
            return
        self._output(frames, index)

    def _output(self, frames, index: int) -> None:
        self.preview = (frames, index)
        self.frame_index = index
        self.frames_shown += 1
        if self._brightness_behind:
            self._apply_state()  # the brightness first, then this frame
        else:
            self._draw_current()

    def _call_driver(self, fn, *args) -> bool:
        return self.breaker.call(fn, *args) if self.breaker else _plain_call(fn, *args)

    def _apply_state(self, draw: bool = True) -> None:
        """Put the wanted state on the panel: the effective brightness, then (with `draw`) the
        current frame (a frame that came while the panel was off never reached the driver)."""
        self._output_brightness = self._effective_brightness()
        if self._call_driver(self.driver.set_brightness, self._output_brightness):
            self._brightness_behind = False
            if draw:
                self._draw_current()
        else:
            self._brightness_behind = self._frame_behind = True

    def _draw_current(self) -> None:
        """Draw the current frame, unless the panel is off (effective brightness 0)."""
        self._frame_behind = False
        if self._output_brightness > 0 and self.preview is not None:
            frames, index = self.preview
            self._frame_behind = not self._call_driver(self.driver.show, frames.frame(index))

    def _catch_up(self) -> None:
        """Put back what the panel missed. With the breaker open this is its half-open
        trial, and it runs whatever the brightness: at 0 the trial is set_brightness(0)
        (which clears the panel)."""
        if self._brightness_behind:
            self._apply_state()
        elif self._frame_behind:
            self._draw_current()

    def _effective_brightness(self) -> int:
        """The brightness the panel shows: a notification's own, else the schedule's (or the
        hand-set one); 0 for a dark night rule. A notification let through while the panel
        is off shows at the hand-set (daytime) brightness."""
        note = self._note
        if note is not None and note.brightness is not None:
            return note.brightness
        if self._dark:
            return 0
        if note is not None and (self.brightness == 0 or self.show_mode == "off"):
            return int(self.store.settings.get("brightness") or self.cfg.display.brightness)
        return self.brightness

    def _show_screen(self, lines) -> None:
        image = screens.render(lines, self.driver.width, self.driver.height)
        self._show(Screen(image, self.driver.pixel_format,
                          getattr(self.driver, "rotation", 0)), 0)

    def _show_hint(self) -> None:
        # items that wait for a re-render (new fit or panel) are not "no media"
        first = "Preparing media" if self.store.view.items else "No media yet"
        self._show_screen([first] + self.hint_lines)

    # ---- status ------------------------------------------------------------------------
    def _changed(self) -> None:
        """Publish a new status; its version moves only when something in it changed."""
        fresh = self._make_status()
        if replace(fresh, version=self.status.version) != self.status:
            self._version += 1
            self.status = replace(fresh, version=self._version)

    def _make_status(self) -> PlayerStatus:
        playing = self._now
        item = playing.item if playing else None
        loop = self.store.view.loop
        item_id = item["id"] if item else None
        state = "idle" if item is None else ("paused" if self.paused else "playing")
        if item is None and self._screen_until:
            state = "starting"
        return PlayerStatus(
            state=state, item=item_id, name=item.get("name") if item else None,
            frames=playing.frames.count if playing else 0,
            position=loop.index(item_id) if item_id in loop else -1,
            length=len(loop), mode=self.mode, brightness=self.brightness,
            version=self._version, show=self.show_mode,
            notification=self._note.id if self._note is not None else None)


def _plain_call(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:
        log.exception("driver call failed")
        return False
