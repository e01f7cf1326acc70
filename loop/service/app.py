"""Builds the components from config, starts them in order, handles signals, stops them.

Start order (docs/architecture.md, "Start and stop"): bind the listening socket, open the
hardware, drop privileges, load the library, start the display and monitor threads, serve
requests, then `READY=1`.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time

import psutil

from loop import __version__, config, schedule
from loop.display import guard
from loop.display.factory import open_driver
from loop.http import server
from loop.http.api import Api
from loop.library import backup
from loop.library.intake import Intake
from loop.library.jobs import Jobs
from loop.library.maintenance import Maintenance
from loop.library.store import Store, lock_data_dir
from loop.library.texts import TextItems
from loop.media import budget, clock, generated
from loop.media.clock import ClockFace
from loop.media.errors import MediaError
from loop.media.fonts import fonts_in
from loop.media.geometry import Target
from loop.playback.breaker import Breaker
from loop.playback.notifications import NotificationQueue
from loop.playback.player import Player
from loop.service.notices import Notices
from loop.service.signals import SignalPipe
from loop.system import addresses, realtime
from loop.system.monitor import Monitor
from loop.system.privileges import drop_privileges, service_user, set_service_groups
from loop.system.sdnotify import Notifier

log = logging.getLogger("loop.app")

EXIT_OK, EXIT_CONFIG, EXIT_RESTART = 0, 2, 75
HTTP_POLL_SEC = 0.2  # serve_forever's poll: how often the accept loop's heartbeat beats
# How long a thread may keep the GIL while another waits for it (CPython's default: 5 ms).
# A frame that is due waits at most about this long behind an HTTP thread's Python work:
# make bench measured the pacing p99 under polling at 0.49/0.37/1.21 ms with 1 ms against
# 0.86/0.71/1.83 ms with 5 ms (medians of 3 runs, docs/benchmarks.md).
SWITCH_INTERVAL_SEC = 0.001
# Keys a SIGHUP cannot change in a running process.
RESTART_KEYS = ("web.host", "web.port", "web.max_concurrent_requests", "system.data_dir",
                "system.user", "processing.max_concurrent_jobs") + tuple(
    f"display.{k}" for k in config.SCHEMA["display"] if k not in ("brightness", "fit")) + tuple(
    f"mqtt.{k}" for k in config.SCHEMA["mqtt"])
# Keys that are only defaults of runtime settings: a reload never overrides what people set.
FIRST_START_KEYS = ("display.brightness", "display.fit", "schedule.rules")


class App:
    """The service: every component, wired together."""

    def __init__(self, cfg: config.Config, *, args=None, environ=None, module=None,
                 driver=None, root: str = "/", wall=time.time):
        """`module` replaces the rgbmatrix module and `driver` the whole display driver (an
        opened object with the driver interface), `wall` the wall clock of the schedule and
        the clocks: all are test seams."""
        self.cfg = cfg
        self.root = root  # where the display pre-flight and drivers find /dev, /sys (tests)
        self.args = args
        self.environ = os.environ if environ is None else environ
        self.notifier = Notifier.from_environ(self.environ)
        self.started = time.monotonic()
        self.exit_code = EXIT_OK
        self._stop = threading.Event()
        self._stopped = False
        self._signals: SignalPipe | None = None  # the main thread's wait, while run() runs
        self._module = module  # an injected rgbmatrix module (tests)
        self._driver = driver  # an injected, already opened driver (tests)
        self.server: server.LoopServer | None = None
        self.store = Store(cfg.system.data_dir, {
            "brightness": cfg.display.brightness, "fit": cfg.display.fit, "mode": "all",
            "current": None})
        self._zone_cache: tuple[str, object] | None = None
        self.wall = wall
        self.scheduler = schedule.Scheduler(
            self.store, self.zone, default_rules=cfg.schedule.rules,
            apply=self._apply_brightness,
            current=lambda: self.player.brightness if self.player is not None else None,
            apply_show=self._apply_show,
            current_show=lambda: self.player.show_mode if self.player is not None else None,
            clock=wall)
        self.jobs = Jobs(cfg.processing.job_cleanup_hours * 3600)
        self._restoring = threading.Lock()  # one restore at a time
        self._data_lock: int | None = None  # fd holding DATA/loop.lock while running
        # job slots and the decode memory pool in one (loop/media/budget.py); the pool's size
        # is known once the service has started and its own memory can be measured
        self.job_slots = budget.DecodeSlots(cfg.processing.max_concurrent_jobs, 1 << 62)
        self._baseline_rss = 0
        self.intake = Intake(self.store, self.jobs, cfg, self.target, self.job_slots)
        self.maintenance = Maintenance(self.store, self.jobs, self.job_slots, self.target,
                                       lambda: self.cfg, self._library_changed)
        self.intake.after_commit = self.maintenance.schedule
        self.texts = TextItems(self.store, self.intake)
        # transient: in memory only, so a restart drops every notification
        self.notifications = NotificationQueue(cfg.notify.max_queued)
        self.notices = Notices(self, wall=wall)
        self.api = Api(self)
        self.breaker = Breaker(cfg.display.breaker_max_failures,
                               cfg.display.slow_call_ms / 1000, cfg.display.breaker_reset_sec,
                               cfg.display.breaker_max_reset_sec)
        self.driver = None
        self.display_reason: str | None = None
        self.panel_lock = guard.PanelLock(cfg.system.data_dir)
        self._was_root = os.geteuid() == 0
        self.privileges = {"user": None, "dropped": False, "reason": None}
        self.realtime = {"priority": 0, "reason": "the display thread has not started"}
        self._night_clock_drawn = False  # see _apply_show
        self.player: Player | None = None
        self.monitor: Monitor | None = None
        self.mqtt = None  # the MQTT front (loop/mqtt/front.py) when mqtt.enabled
        self._serve_thread: threading.Thread | None = None

    # ---- start / stop ------------------------------------------------------------------
    def start(self) -> None:
        """Bring the service up in the design's order; raises on a fatal start-up error."""
        os.makedirs(self.cfg.system.data_dir, exist_ok=True)
        self._data_lock = lock_data_dir(self.cfg.system.data_dir)
        self.server = server.bind(self.cfg.web.host, self.cfg.web.port, self.cfg.web, self.api)
        self._set_service_groups()
        self._was_root = os.geteuid() == 0
        if self._driver is not None:
            self.driver, self.display_reason = self._driver, None
        else:
            self.driver, self.display_reason = open_driver(
                self.cfg.display, self.cfg.system.data_dir, module=self._module,
                user=self._service_user(), root=self.root, busy=self._panel_busy())
        if self.display_reason:
            log.warning("display: %s", self.display_reason)
        self._drop_privileges()
        self.store.open()
        backlog = self.maintenance.mark()  # before anything plays: stale frames stay dark
        if backlog:
            log.info("%d item(s) wait to be re-rendered for %s", len(backlog), self.target())
        self.scheduler.load()
        # the schedule is evaluated before anything shows: a boot at 03:00 starts dimmed
        boot = self.scheduler.evaluate("start-up")
        self.player = Player(self.store, self.driver, self.breaker, self.cfg,
                             hint_lines=self.url_lines(), brightness=boot.brightness,
                             notifications=self.notifications, wall=self.wall, zone=self.zone,
                             on_start=self._display_thread_priority)
        self.player.show_mode = boot.wanted.show
        if boot.wanted.show == "clock":  # else drawn when a rule first wants it (memory)
            self.player.night_clock = self.night_clock()
            self._night_clock_drawn = True
        self.monitor = Monitor(self, self.notifier)
        self._baseline_rss = psutil.Process().memory_info().rss
        self.job_slots.set_capacity(*budget.capacity_for(self.cfg.system.memory_limit_mb,
                                                         self._baseline_rss))
        if self.cfg.display.boot_screen_sec > 0:  # queued first: the first thing shown
            self.player.screen(["LOOP"] + self.url_lines(), self.cfg.display.boot_screen_sec)
        self.player.start()
        self.player.command("library", wait=False)
        self.serve()
        self.monitor.start()
        host, port = self.server.server_address[:2]
        print(f"LOOP listening on http://{host}:{port}", file=sys.stderr, flush=True)
        if host in addresses.ALL_INTERFACES:
            for where in self.url_lines():
                print(f"  open http://{where}/ on the LAN", file=sys.stderr, flush=True)
        self.notifier.ready(f"serving on port {port}")
        self.start_mqtt()
        self.maintenance.schedule()  # after READY=1: re-rendering never delays start-up

    def start_mqtt(self) -> None:
        """The MQTT front, only when enabled: otherwise neither it nor paho-mqtt is loaded.
        It connects in the background; a broker that is down never delays anything."""
        if self.cfg.mqtt.enabled:
            from loop.mqtt.front import MqttFront
            self.mqtt = MqttFront(self)
            self.mqtt.start()

    def serve(self) -> None:
        """Run the HTTP accept loop on its thread (its poll is the HTTP heartbeat)."""
        self._serve_thread = threading.Thread(target=self.server.serve_forever,
                                              kwargs={"poll_interval": HTTP_POLL_SEC},
                                              name="http", daemon=True)
        self._serve_thread.start()

    def stop(self) -> None:
        """Graceful shutdown: stop accepting, drain, stop the player, flush, close. Runs once."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        if self.mqtt is not None:  # first: Home Assistant hears "offline" at once
            self.mqtt.stop()
        if self.monitor is not None:
            # first: draining requests must not read as a dead accept loop
            self.monitor.stop()
        deadline = time.monotonic() + self.cfg.system.shutdown_timeout_sec
        if self.server is not None:
            self.server.shutdown()
            self.server.socket.close()
            while self.server.in_flight > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.server.in_flight:
                log.warning("%d request(s) still running at the shutdown deadline",
                            self.server.in_flight)
        self.maintenance.stop(max(0.5, deadline - time.monotonic()))
        self.notifications.clear()  # transient: they do not outlive the process
        if self.player is not None:
            self.player.stop(max(0.5, deadline - time.monotonic()))
        if self.driver is not None:
            try:
                self.driver.close()
            except Exception as exc:  # the panel may already be gone; shutting down anyway
                log.warning("display close failed: %s", exc)
        self.panel_lock.release()
        self.store.flush(force=True)  # whatever the back-off of a failing card says
        self.notifier.close()
        if self._data_lock is not None:
            os.close(self._data_lock)
            self._data_lock = None

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP reloads config.json. Returns the exit status."""
        # The watchdog's SIGABRT leaves the threads' stacks in the journal. No SIGUSR1 dump on
        # demand: walking threads that still run can crash CPython (seen on 3.11 and 3.13), and
        # a diagnostic must not kill a healthy service.
        faulthandler.enable(all_threads=True)
        # The handlers do nothing; the signals arrive through a pipe (loop/service/signals.py)
        self._signals = SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        try:
            self.start()
            while True:
                arrived = self._signals.wait()
                if signal.SIGTERM in arrived or signal.SIGINT in arrived:
                    self._stop.set()
                if self._stop.is_set():  # a stop wins over a reload that came with it
                    break
                if signal.SIGHUP in arrived:  # several queued reloads are one
                    self.reload()
            log.info("stopping")
            self.stop()
        finally:
            self._signals.restore()
        return self.exit_code

    def request_stop(self, exit_code: int = EXIT_OK) -> None:
        """Stop with `exit_code` (any thread): run() wakes and shuts down."""
        self.exit_code = exit_code
        self._stop.set()
        if self._signals is not None:
            self._signals.poke()

    def reload(self) -> None:
        """SIGHUP: re-read config.json, apply what can change live, keep the rest.

        Runtime settings people set through the API (brightness, fit, mode, the loop) live in
        the data directory and are never touched; `display.brightness`/`display.fit` are only
        their first-start defaults. Keys in RESTART_KEYS keep their running value and the log
        says a restart is needed. A bad file is logged and ignored. systemd hears RELOADING=1
        (with MONOTONIC_USEC, for Type=notify-reload) and then READY=1 either way."""
        self.notifier.reloading()
        try:
            self._apply_reload()
        except config.ConfigError as exc:
            log.error("reload ignored, keeping the running config: %s", exc)
        except Exception:  # a bug in reloading must not take the service down
            log.exception("reload failed, keeping the running config")
        self.notifier.ready()

    def _apply_reload(self) -> None:
        if self.args is None:
            raise config.ConfigError("started without a config file; nothing to re-read")
        new = config.load(self.args, self.environ)
        old_flat, new_flat = _flat(self.cfg), _flat(new)
        changed = [k for k in new_flat if new_flat[k] != old_flat[k]]
        needs_restart = [k for k in changed if k in RESTART_KEYS]
        kept = {k: old_flat[k] for k in needs_restart}
        self.cfg = new.replace(**kept) if kept else new
        self.intake.cfg = self.cfg
        if self.player is not None:
            self.player.cfg = self.cfg
            if self._night_clock_drawn and \
                    (old_flat["schedule.clock_format"], old_flat["schedule.clock_color"]) != \
                    (new_flat["schedule.clock_format"], new_flat["schedule.clock_color"]):
                self.player.command("night_clock", face=self.night_clock(), wait=False)
        self.notifications.capacity = self.cfg.notify.max_queued
        self.jobs.keep_sec = self.cfg.processing.job_cleanup_hours * 3600
        if self._baseline_rss:
            self.job_slots.set_capacity(*budget.capacity_for(self.cfg.system.memory_limit_mb,
                                                             self._baseline_rss))
        self._zone_cache = None  # the zone name, or the system's zone, may have changed
        self.scheduler.default_rules = self.cfg.schedule.rules
        self.scheduler.load()
        if self.server is not None:
            self.server.reconfigure(self.cfg.web)
        logging.getLogger().setLevel(self.cfg.system.log_level)
        live = [k for k in changed if k not in needs_restart]
        log.info("config reloaded; applied: %s", ", ".join(live) or "nothing changed")
        defaults = [k for k in live if k in FIRST_START_KEYS]
        if defaults:
            log.info("%s only set(s) the first-start default; the value set at run time "
                     "stays", ", ".join(defaults))
        if needs_restart:
            log.warning("these keys need a restart to take effect: %s", ", ".join(needs_restart))

    def _panel_busy(self) -> str | None:
        """Why the panel must not be touched (another process holds the panel lock), or
        None once this process holds it."""
        holder = self.panel_lock.acquire()
        if holder is None:
            return None
        who = f"process {holder}" if holder else "another process"
        return (f"{who} holds the panel ({self.panel_lock.path}): a self-test, or a second "
                "LOOP on the same data directory")

    def _display_thread_priority(self) -> None:
        """On the display thread, before its first frame: real-time scheduling when allowed
        (loop/system/realtime.py); without it playback works, only its timing is looser."""
        priority = self.cfg.display.realtime_priority
        reason = realtime.make_realtime(priority)
        self.realtime = {"priority": priority if reason is None else 0, "reason": reason}
        if reason and priority:
            log.info("display thread: no real-time priority (%s); frames may leave late "
                     "while the API is busy", reason)

    def _service_user(self) -> str | None:
        return service_user(self.cfg)

    def _set_service_groups(self) -> None:
        set_service_groups(self.cfg)

    def _drop_privileges(self) -> None:
        self.privileges = drop_privileges(self.cfg, self._was_root)

    # ---- views for the API -------------------------------------------------------------
    def target(self) -> Target:
        fit = self.store.settings.get("fit", self.cfg.display.fit)
        return Target(self.driver.width, self.driver.height, self.driver.pixel_format,
                            fit, getattr(self.driver, "rotation", 0))

    def url_lines(self) -> list[str]:
        """Where people reach the dashboard (boot and "no media" screens)."""
        if self.server is None:
            return addresses.reachable(self.cfg.web.host, self.cfg.web.port)
        host, port = self.server.server_address[:2]
        return addresses.reachable(host, port)

    def reset_display(self) -> bool:
        """Operator reset: forget crash markers and breaker history; restart under systemd.

        The hardware cannot be reopened after privileges are dropped, so a fresh panel init
        needs a new process: exit status 75, which the unit restarts.
        """
        guard.clear_crash_marker(self.cfg.system.data_dir)
        self.player.command("reset_breaker")
        under_systemd = self.notifier.enabled or "INVOCATION_ID" in self.environ
        if under_systemd:
            log.warning("display reset by operator: restarting the service")
            self.request_stop(EXIT_RESTART)
        return under_systemd

    def restore(self, read, length: int | None = None) -> dict:
        """Replace the library with a backup read from `read(n)` (see loop/library/backup.py), then
        move the player, the schedule and the renderer to it. A refused archive raises and
        leaves the library exactly as it was."""
        if not self._restoring.acquire(blocking=False):
            raise MediaError(409, "conflict", "a restore is already running")
        try:
            job = self.jobs.create("restore")
            limit = int(self.cfg.media.max_restore_mb * 1024 * 1024)
            try:
                report = backup.restore(
                    self.store, read, limit=limit, length=length,
                    max_item_bytes=int(self.cfg.media.max_upload_mb * 1024 * 1024),
                    progress=lambda got: self.jobs.update(
                        job, progress=got / length if length else None))
            except BaseException as exc:
                message = getattr(exc, "message", None) or "restore aborted"
                self.jobs.update(job, stage="failed", error=message)
                raise
            self.jobs.update(job, stage="done", progress=1.0)
        finally:
            self._restoring.release()
        self._library_restored()
        report["rendering"] = len(report["added"])
        return report

    def _library_restored(self) -> None:
        """After a restore: the schedule and the mode may have changed, new items need frames
        for this panel, and the player moves to the restored library."""
        self.scheduler.load()
        self.scheduler.evaluate("library restored")
        if self.player is not None:
            mode = self.store.settings.get("mode", "all")
            if mode != self.player.mode:
                self.player.command("mode", mode=mode, wait=False)
        self.render_library()
        if self.player is not None:
            self.player.command("library", wait=False)

    def render_library(self) -> None:
        """Render every item whose frames do not fit the current panel (restored items have
        none yet): the maintenance thread's job."""
        self.maintenance.schedule()

    def zone(self):
        """The schedule's time zone (schedule.timezone, else the system's), cached until a
        reload."""
        name = self.cfg.schedule.timezone
        if self._zone_cache is None or self._zone_cache[0] != name:
            self._zone_cache = (name, schedule.zone_named(name))
        return self._zone_cache[1]

    def set_brightness(self, value: int) -> None:
        """A brightness set by hand: the schedule decides whether it is the new manual
        brightness or an override until the next rule boundary."""
        decision = self.scheduler.set_brightness(value)
        self.player.command("brightness", value=decision.brightness, remember=False)

    def _apply_brightness(self, value: int) -> None:
        """The schedule's wanted brightness (monitor thread: never waits for the player)."""
        if self.player is not None:
            self.player.command("brightness", value=value, remember=False, wait=False)

    def _apply_show(self, show: str) -> None:
        """The schedule rule's `show` (loop, clock, off), like its brightness. The night clock
        is drawn the first time a rule wants it, on a thread of its own: fonts and glyphs
        cost memory a LOOP without night rules never needs, and drawing is no work for the
        monitor thread (the panel stays dark the moment it takes)."""
        if self.player is None:
            return
        if show == "clock" and not self._night_clock_drawn:
            self._night_clock_drawn = True
            threading.Thread(target=lambda: self.player.command(
                "night_clock", face=self.night_clock(), wait=False), name="night-clock",
                daemon=True).start()
        self.player.command("show", show=show, wait=False)

    # ---- notifications (HTTP and MQTT alike) -------------------------------------------
    def notify(self, fields: dict, receive=None) -> tuple[dict, bool]:
        """Show something now: `fields` as in POST /api/notify (a text, or `item`), or an
        image read by `receive()` (returns the received files). Raises MediaError (400 naming
        the field, 404, 409, 429, 503, 507). Returns (the notification, replaced?)."""
        return self.notices.notify(fields, receive)

    def retract(self, note_id: str) -> bool:
        """Take a notification away by its id; False when there is none."""
        return self.notices.retract(note_id)

    def night_clock(self) -> ClockFace | None:
        """The clock rules with `show: clock` show, drawn from schedule.clock_* into a
        transient frame file (None, and a log line, if it cannot be drawn)."""
        spec = clock.parse_clock({"format": self.cfg.schedule.clock_format,
                                  "color": self.cfg.schedule.clock_color})
        try:
            frames, rendered = self.notices.transient_frames(lambda path: generated.render_spec(
                spec, path, self.target(), self.cfg.media, sync=False))
            face = ClockFace(frames, rendered.extra["layout"])
            frames.close()  # the face keeps copies: no descriptor stays open under tmp/
            return face
        except (MediaError, OSError, ValueError) as exc:
            log.error("the night clock cannot be drawn (%s); show: clock shows nothing", exc)
            return None

    def set_fit(self, fit: str) -> None:
        """A new fit mode: items rendered for another one wait for the maintenance thread."""
        self.store.update_settings(durable=True, fit=fit)
        self.maintenance.schedule()
        self._library_changed()

    def _library_changed(self) -> None:
        if self.player is not None:
            self.player.command("library", wait=False)

    def display_status(self) -> str:
        if self.player.brightness == 0:
            return "off"
        if self.breaker.state != "closed" or self.display_reason:
            return "degraded"
        return "ok"

    def display_state(self) -> dict:
        settings = self.store.settings
        return {"brightness": self.player.brightness, "fit": settings.get("fit"),
                "driver": self.driver.name, "width": self.driver.width,
                "height": self.driver.height, "status": self.display_status(),
                "reason": self.display_reason, "breaker": self.breaker.snapshot()}

    def status_version(self) -> str:
        """What the polling snapshot's ETag says: every part of it but the frame counter."""
        return f"{self.player.status.version}.{self.store.view.version}." \
               f"{self.jobs.version}.{self.breaker.state}.{self.display_status()}." \
               f"{self.scheduler.version}.{self.store.settings_gen}." \
               f"{self.notifications.version}"

    def status_snapshot(self, frame: int | None = None) -> tuple[dict, str]:
        """The polling snapshot and its version. Nothing in it changes without the version
        changing except `player.frame` (the current frame, or `frame` when given), so the API
        can keep its encoded form per version."""
        version = self.status_version()
        player = self.player.status
        view = self.store.view
        data = {"player": player.as_dict(self.player.frame_index if frame is None else frame),
                "display": {"driver": self.driver.name, "status": self.display_status(),
                            "breaker": self.breaker.state, "fit": self.store.settings.get("fit")},
                "library": {"items": len(view.items), "bytes": view.bytes},
                "schedule": self.scheduler.status(),
                "notifications": {"showing": player.notification,
                                  "queue": self.notifications.listing(time.monotonic(),
                                                                      ages=False)},
                "jobs_active": self.jobs.active, "version": version}
        return data, version

    def health(self) -> dict:
        checks = self.monitor.checks()
        breaker = self.breaker.snapshot()
        checks["display"] = {
            "status": "ok" if self.display_status() != "degraded" else "degraded",
            "reason": self.display_reason or (f"circuit breaker {breaker['state']}: "
                                              f"{breaker['last_error']}"
                                              if breaker["state"] != "closed" else None),
            "driver": self.driver.name, "breaker": breaker,
            "frames_shown": self.player.frames_shown, "late_frames": self.player.late_frames,
            "realtime": self.realtime}
        checks["privileges"] = dict(self.privileges, status="ok", reason=None
                                    if self.privileges["dropped"] or os.geteuid() != 0
                                    else "running as root")
        checks["storage"] = {"status": "degraded" if self.store.write_error else "ok",
                             "reason": self.store.write_error,
                             "recovery": self.store.recovery, "index_writes":
                             self.store.index_writes,
                             "write_failures": self.store.write_failures,
                             "pending_render": len(self.store.view.pending)}
        checks["http"] = dict({"status": "ok", "reason": None}, **self.server.counters.as_dict())
        fonts = fonts_in(self.cfg.media.font_dir)
        queue = self.notifications
        checks["text"] = {"status": "degraded" if fonts.fallback_reason else "ok",
                          "reason": fonts.fallback_reason, "font_dir": fonts.directory,
                          "fonts": len(fonts.available), "notifications": len(queue),
                          "notifications_refused": queue.refused,
                          "notifications_expired": queue.expired}
        if self.mqtt is not None:
            checks["mqtt"] = self.mqtt.check()
        statuses = [c["status"] for c in checks.values()]
        status = "failing" if "failing" in statuses else (
            "degraded" if "degraded" in statuses else "ok")
        return {"status": status, "healthy": status != "failing", "checks": checks,
                "version": __version__, "uptime_sec": round(time.monotonic() - self.started, 1),
                "history": [{"t": round(s.time - self.started, 1), "rss_mb": round(s.rss_mb, 1),
                             "cpu_percent": s.cpu_percent, "temp_c": s.temp_c}
                            for s in list(self.monitor.history)]}



def _flat(cfg: config.Config) -> dict:
    return {f"{s}.{k}": v for s, keys in cfg.as_dict().items() for k, v in keys.items()}


def main(argv=None) -> int:
    """Entry point of `loop.py`."""
    sys.setswitchinterval(SWITCH_INTERVAL_SEC)
    parser = config.argument_parser()
    args = parser.parse_args(argv)
    if not args.selftest and (args.json or args.stop_service or args.pattern_sec is not None):
        parser.error("--json, --stop-service and --pattern-sec go with --selftest")
    if args.selftest and args.command:
        parser.error(f"--selftest does not go with {args.command}")
    try:
        cfg = config.load(args)
    except config.ConfigError as exc:
        print(f"loop: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.selftest:
        from loop.service import selftest  # here, not at the top: the service never loads it
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        if args.pattern_sec is None:
            args.pattern_sec = config.PATTERN_SEC
        return selftest.main(cfg, args)
    logging.basicConfig(level=cfg.system.log_level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "command", None) in ("backup", "restore"):
        return backup.command(args, cfg)
    app = App(cfg, args=args)
    try:
        return app.run()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
