"""The monitor thread: health sampling, thresholds, watchdog gating, debounced flushes and
housekeeping. The one place that decides whether the service looks alive to systemd.

One round (`tick`) every `system.monitor_interval_sec`, or every third of `WATCHDOG_USEC` when
that is shorter:

- heartbeats: the display thread and the HTTP accept loop each publish a monotonic heartbeat;
  `WATCHDOG=1` goes out only while both are fresh, so a hung driver call or a dead accept loop
  gets the service restarted by systemd. An idle display thread is poked with a no-op command
  so that "idle" never looks like "stuck".
- sampling: RSS (with children, so ffmpeg counts), CPU, available memory, disk, SoC
  temperature, firmware throttling flags, load, threads, fds, request counters, breaker state;
  kept as `latest` plus a short ring `history`.
- thresholds: over the memory lines new uploads are shed (`shedding`, read by the API without
  a system call) and the garbage collector runs; everything else shows up in `checks()`.
- housekeeping: job expiry and idle rate-limit buckets here; the debounced settings flush and
  the tmp/ sweep on a short-lived `housekeeping` thread (see `_start_disk_chores`).

The round never blocks on a lock that is held across I/O (the store's, held by commits across
fsyncs; the scheduler's, held by a rule change across its index write): disk work is handed to
the housekeeping thread, and the schedule's evaluation only tries its lock and, when it is
busy, waits for the next round. So a slow SD card delays a flush, never a watchdog ping.

Tests inject samples through `source` (a callable returning a `Sample`) and a fake sysfs tree
through `sys_root`.
"""

from __future__ import annotations

import collections
import gc
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass

import psutil

from loop.system import memory
from loop.system.soc import (
    THROTTLE_BITS,
    read_temperature,
    read_throttled_sysfs,
    read_throttled_vcgencmd,
    throttle_flags,
)

log = logging.getLogger("loop.monitor")

HISTORY = 120  # samples kept for the dashboard's small charts
MIN_STALE_SEC = 1.0  # a heartbeat is never called stale sooner than this (scheduling slack)
GC_MIN_GAP_SEC = 10.0  # gc.collect() at most this often while memory is over a line
VCGENCMD_EVERY_SEC = 30.0  # `vcgencmd get_throttled` is a process spawn: not every sample
TMP_SWEEP_MAX_GAP_SEC = 60.0
SCHEDULE_LAG_SEC = 0.05  # wake this long after a minute boundary, so the new minute is seen


@dataclass(frozen=True)
class Sample:
    """One health sample; replaced whole, read without locks."""
    time: float  # monitor clock (monotonic)
    rss_mb: float  # this process
    children_rss_mb: float  # its children (ffmpeg), recursively
    cpu_percent: float  # since the previous sample; 100 = one core
    cpu_seconds: float  # user + system CPU time of this process so far
    available_mb: float  # the whole system's available memory
    disk_free_mb: float  # free to unprivileged users on the data directory's file system
    disk_total_mb: float
    disk_free_percent: float
    temp_c: float | None  # SoC temperature; None without a sensor
    throttled: int | None  # firmware get_throttled word; None when not readable
    threads: int
    open_fds: int
    load1: float
    requests: int = 0  # HTTP requests so far
    breaker: str = "closed"

    @property
    def own_mb(self) -> float:
        """LOOP's memory: the service plus its children."""
        return self.rss_mb + self.children_rss_mb


# ---- thresholds (pure) -------------------------------------------------------------------
def _check(status: str, reason: str | None, **numbers) -> dict:
    return dict({"status": status, "reason": reason}, **numbers)


def shed_reason(sample: Sample, system) -> str | None:
    """Why new uploads are refused now (memory over a line), or None."""
    if sample.own_mb > system.memory_limit_mb:
        return (f"LOOP uses {sample.own_mb:.0f} MB, over its {system.memory_limit_mb:g} MB "
                "budget")
    if sample.available_mb < system.min_available_mb:
        return (f"the system has only {sample.available_mb:.0f} MB of memory available "
                f"(floor {system.min_available_mb:g} MB)")
    return None


def assess(sample: Sample, system) -> dict:
    """The threshold checks of one sample: {name: {"status", "reason", numbers…}}.

    Every status is ok or degraded here: none of these is a failure of LOOP itself."""
    over_budget = sample.own_mb > system.memory_limit_mb
    low_memory = sample.available_mb < system.min_available_mb
    low_disk = sample.disk_free_percent < system.min_free_disk_percent
    hot = sample.temp_c is not None and sample.temp_c > system.max_temp_c
    flags = throttle_flags(sample.throttled)
    checks = {
        "memory": _check(
            "degraded" if over_budget else "ok",
            f"LOOP uses {sample.own_mb:.0f} MB, over its {system.memory_limit_mb:g} MB "
            "budget; new uploads get 503 until it recovers" if over_budget else None,
            rss_mb=round(sample.rss_mb, 1), children_rss_mb=round(sample.children_rss_mb, 1),
            total_mb=round(sample.own_mb, 1), limit_mb=system.memory_limit_mb),
        "system_memory": _check(
            "degraded" if low_memory else "ok",
            f"the system has only {sample.available_mb:.0f} MB available (floor "
            f"{system.min_available_mb:g} MB); new uploads get 503 until it recovers"
            if low_memory else None,
            available_mb=round(sample.available_mb, 1), min_mb=system.min_available_mb),
        "disk": _check(
            "degraded" if low_disk else "ok",
            f"only {sample.disk_free_percent:.1f} % of the data disk is free (floor "
            f"{system.min_free_disk_percent:g} %); uploads get 507" if low_disk else None,
            free_mb=round(sample.disk_free_mb, 1), total_mb=round(sample.disk_total_mb, 1),
            free_percent=round(sample.disk_free_percent, 1),
            min_percent=system.min_free_disk_percent),
        "temperature": _check(
            "degraded" if hot else "ok",
            f"the SoC is at {sample.temp_c:.1f} °C, over {system.max_temp_c:g} °C; give it "
            "air or a heat sink" if hot else (
                "no temperature sensor found" if sample.temp_c is None else None),
            temp_c=None if sample.temp_c is None else round(sample.temp_c, 1),
            max_c=system.max_temp_c),
        "power": _power_check(sample.throttled, flags),
        "cpu": _check("ok", None, percent=round(sample.cpu_percent, 1),
                      load1=round(sample.load1, 2)),
        "threads": _check("ok", None, threads=sample.threads, open_fds=sample.open_fds),
    }
    return checks


def _power_check(word: int | None, flags: dict) -> dict:
    numbers = {"throttled": None if word is None else hex(word), "now": flags["now"],
               "since_boot": flags["since_boot"]}
    if word is None:
        return _check("ok", "the firmware's throttling flags are not readable here", **numbers)
    if flags["now"]:
        reasons = [text for bit, (name, text) in THROTTLE_BITS.items() if name in flags["now"]]
        return _check("degraded", "; ".join(reasons), **numbers)
    if flags["since_boot"]:
        return _check("ok", "since boot: " + ", ".join(
            name.replace("_", " ") for name in flags["since_boot"]) + " (not now)", **numbers)
    return _check("ok", None, **numbers)


class Monitor(threading.Thread):
    """Samples health, pings the watchdog only while heartbeats are fresh, keeps house."""

    def __init__(self, app, notifier, *, clock=time.monotonic, sys_root: str = "/",
                 vcgencmd: str | None = None):
        super().__init__(name="monitor", daemon=True)
        self.app, self.notifier, self.clock = app, notifier, clock
        self.sys_root = sys_root
        # vcgencmd only on the real system: a fake sysfs tree in tests means "no firmware"
        self.vcgencmd = vcgencmd if vcgencmd is not None else (
            shutil.which("vcgencmd") if sys_root == "/" else None)
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the measurement
        self.source = self.measure  # tests replace this to inject samples
        self.latest: Sample | None = None
        self.history: collections.deque = collections.deque(maxlen=HISTORY)
        self.stale: tuple[str, ...] = ()
        self.shedding: str | None = None  # why new uploads get 503, read per upload
        self.shed_uploads = 0  # uploads refused because of it (for /metrics)
        self.gc_runs = 0
        self._trimmed_after = -1  # finished jobs at the last malloc_trim (-1: trim once first)
        self.ticks = 0
        self.tmp_removed = 0
        self.status_line = ""
        self._halt = threading.Event()
        start = clock()
        self._last_flush = start
        self._last_ping = -math.inf
        self._last_gc = -math.inf
        self._last_sweep = start
        self._chores: threading.Thread | None = None  # the running housekeeping thread
        self._sample_due = start + app.cfg.system.monitor_interval_sec
        self._throttled_cache: tuple[float, int | None] = (-math.inf, None)
        self.observe(self.measure())

    # ---- the thread --------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout)
        chores = self._chores
        if chores is not None:
            chores.join(timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            self.tick()
            self._halt.wait(self._interval())

    def _interval(self) -> float:
        """Seconds until the next thing is due: a sample or a watchdog ping."""
        now = self.clock()
        due = self._sample_due
        ping = self.notifier.watchdog_interval()
        if ping and not self.stale:
            due = min(due, self._last_ping + ping)
        scheduler = getattr(self.app, "scheduler", None)
        if scheduler is not None:  # wake just after each wall-clock minute boundary
            due = min(due, now + scheduler.seconds_to_next_minute() + SCHEDULE_LAG_SEC)
        return min(self.app.cfg.system.monitor_interval_sec, max(0.001, due - now))

    def tick(self) -> None:
        """One round. Each step is guarded on its own: one failing never stops the others,
        and the watchdog step comes first."""
        now = self.clock()
        self.ticks += 1
        for step in (self._heartbeats, self._schedule, self._sample_if_due,
                     self._housekeeping, self._send_status):
            try:
                step(now)
            except Exception:
                log.exception("monitor step %s failed", step.__name__)

    # ---- heartbeats and the watchdog ---------------------------------------------------
    def stale_after(self) -> float:
        """Age at which a heartbeat counts as stale: two watchdog periods (2/3 of
        WATCHDOG_USEC) under systemd, else three sampling intervals; never under a second."""
        ping = self.notifier.watchdog_interval()
        if ping:
            return max(2 * ping, MIN_STALE_SEC)
        return max(3 * self.app.cfg.system.monitor_interval_sec, 5.0)

    def heartbeat_ages(self, now: float | None = None) -> dict:
        now = self.clock() if now is None else now
        player, server = self.app.player, self.app.server
        return {"display": now - player.heartbeat if player is not None else 0.0,
                "http": now - server.heartbeat if server is not None else 0.0}

    def stale_heartbeats(self, now: float) -> tuple[str, ...]:
        """Names of the threads whose heartbeat is too old to trust."""
        limit = self.stale_after()
        return tuple(name for name, age in self.heartbeat_ages(now).items() if age > limit)

    def _heartbeats(self, now: float) -> None:
        self._poke_display(now)
        stale = self.stale_heartbeats(now)
        if stale != self.stale:
            self.stale = stale
            if stale:
                what = " and ".join(f"{name} ({self._describe(name)})" for name in stale)
                log.error("heartbeat stale: %s; watchdog pings stop so systemd restarts the "
                          "service", what)
            else:
                log.warning("heartbeats fresh again; watchdog pings resume")
        interval = self.notifier.watchdog_interval()
        if interval and not stale and now - self._last_ping >= interval * 0.9:
            self.notifier.watchdog()
            self._last_ping = now

    @staticmethod
    def _describe(name: str) -> str:
        return {"display": "the display thread is stuck, probably inside a driver call",
                "http": "the HTTP accept loop stopped"}.get(name, name)

    def _poke_display(self, now: float) -> None:
        """Wake an idle display thread with a no-op command, so a thread that waits for
        commands stays fresh and only one that cannot answer goes stale."""
        player = self.app.player
        if player is None or now - player.heartbeat < self.stale_after() / 2:
            return
        if player.commands.empty():  # a stuck thread would only pile them up
            player.command("library", wait=False)

    # ---- the night/dim schedule ----------------------------------------------------------
    def _schedule(self, now: float) -> None:
        """Level-triggered: each minute boundary, after a clock jump or a rule change. The
        tick only tries the scheduler's lock: a rule change writing the index under it makes
        this round skip, and the schedule stays due for the next one."""
        scheduler = getattr(self.app, "scheduler", None)
        if scheduler is not None:
            scheduler.tick()

    # ---- sampling ----------------------------------------------------------------------
    def _sample_if_due(self, now: float) -> None:
        interval = self.app.cfg.system.monitor_interval_sec
        if now < self._sample_due - 0.1 * interval:
            return
        self._sample_due = now + interval  # also after a failed attempt: no busy retries
        self.observe(self.source())

    def measure(self) -> Sample:
        """Measure the process and the system now (no thresholds applied)."""
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            cpu = self.process.cpu_percent(None)
            times = self.process.cpu_times()
            threads = self.process.num_threads()
            fds = self.process.num_fds()
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.Error:
                pass  # it exited between the listing and the read
        disk = os.statvfs(self.app.store.data_dir)
        total = disk.f_blocks * disk.f_frsize
        free = disk.f_bavail * disk.f_frsize
        server, breaker = self.app.server, self.app.breaker
        return Sample(
            time=self.clock(), rss_mb=rss / 2**20, children_rss_mb=children / 2**20,
            cpu_percent=cpu, cpu_seconds=times.user + times.system,
            available_mb=psutil.virtual_memory().available / 2**20,
            disk_free_mb=free / 2**20, disk_total_mb=total / 2**20,
            disk_free_percent=free * 100 / (total or 1),
            temp_c=read_temperature(self.sys_root), throttled=self._throttled(),
            threads=threads, open_fds=fds, load1=os.getloadavg()[0],
            requests=server.counters.requests if server is not None else 0,
            breaker=breaker.state if breaker is not None else "closed")

    def _throttled(self) -> int | None:
        word = read_throttled_sysfs(self.sys_root)
        if word is not None or not self.vcgencmd:
            return word
        at, cached = self._throttled_cache
        if self.clock() - at >= VCGENCMD_EVERY_SEC:
            cached = read_throttled_vcgencmd(self.vcgencmd)
            self._throttled_cache = (self.clock(), cached)
        return cached

    def observe(self, sample: Sample) -> None:
        """Take a sample: publish it, apply the memory lines (shedding, gc)."""
        self.latest = sample
        self.history.append(sample)
        reason = shed_reason(sample, self.app.cfg.system)
        if reason and sample.time - self._last_gc >= GC_MIN_GAP_SEC:
            self._last_gc = sample.time
            self.gc_runs += 1
            freed = gc.collect()
            memory.trim()
            log.info("memory over a line (%s); gc.collect() freed %d objects", reason, freed)
        if reason != self.shedding:
            if reason and not self.shedding:
                log.warning("shedding new uploads: %s", reason)
            elif not reason:
                log.info("memory back under its lines; uploads accepted again")
            self.shedding = reason

    # ---- housekeeping ------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self.app.jobs.expire()
        finished = sum(self.app.jobs.outcomes.values())
        if finished != self._trimmed_after:  # a decode ended: give its memory back
            self._trimmed_after = finished
            memory.trim()
        limiter = getattr(self.app.server, "limiter", None)
        if limiter is not None and hasattr(limiter, "evict_idle"):
            limiter.evict_idle()
        self._start_disk_chores(now)

    def _start_disk_chores(self, now: float) -> None:
        """Start the `housekeeping` thread when the settings flush or the tmp/ sweep is due.

        Both touch the SD card and the flush waits for the store lock, which a commit or a
        restore holds across fsyncs: on this thread they would delay the watchdog ping by as
        long. One housekeeping thread at a time; while one is still busy (a slow card), the
        next waits, and the pings go on."""
        if self._chores is not None and self._chores.is_alive():
            return
        flush = now - self._last_flush >= self.app.cfg.system.settings_flush_sec
        if flush:
            self._last_flush = now
            flush = self.app.store.unsaved
        max_age = self.tmp_max_age()
        sweep = now - self._last_sweep >= min(TMP_SWEEP_MAX_GAP_SEC, max_age / 2)
        if sweep:
            self._last_sweep = now
        if flush or sweep:
            self._chores = threading.Thread(target=self._disk_chores, name="housekeeping",
                                            args=(flush, max_age if sweep else None),
                                            daemon=True)
            self._chores.start()

    def _disk_chores(self, flush: bool, sweep_age: float | None) -> None:
        """The housekeeping thread: it may wait for the store lock and the card as long as
        they take."""
        try:
            if flush:
                self.app.store.flush()
            if sweep_age is not None:
                self.tmp_removed += self.sweep_tmp(sweep_age)
        except Exception:  # a bug here must not go unnoticed; the next round tries again
            log.exception("housekeeping failed")

    def tmp_max_age(self) -> float:
        """The longest an upload may legitimately keep something in tmp/."""
        cfg = self.app.cfg
        return cfg.web.request_timeout_seconds + cfg.media.decode_timeout_sec

    def sweep_tmp(self, max_age: float) -> int:
        """Remove tmp/ entries untouched for longer than `max_age` (wall clock, from mtimes)
        while no upload or render job is running; returns how many were removed."""
        if self.app.jobs.active:
            return 0
        tmp = self.app.store.tmp_dir
        try:
            names = os.listdir(tmp)
        except OSError:
            return 0
        cutoff = time.time() - max_age
        removed = 0
        for name in names:
            path = os.path.join(tmp, name)
            if _newest_mtime(path) >= cutoff:
                continue
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError as exc:
                log.warning("cannot remove the orphan %s: %s", path, exc)
                continue
            removed += 1
            log.warning("removed an orphan from tmp/: %s", name)
        return removed

    # ---- STATUS= -----------------------------------------------------------------------
    def _send_status(self, now: float) -> None:
        line = self.summary()
        if line != self.status_line:
            self.status_line = line
            self.notifier.status(line)

    def summary(self) -> str:
        """One line for `systemctl status`: what plays, how many items, display, memory —
        or what is wrong."""
        app = self.app
        if self.stale:
            return "stuck: " + "; ".join(self._describe(name) for name in self.stale) + \
                " — watchdog pings stopped"
        parts = []
        player = app.player
        if player is not None:
            status = player.status
            if status.state == "idle":
                parts.append("idle")
            else:
                parts.append(f"{status.state} {status.name or status.item}")
        items = len(app.store.view.items)
        parts.append(f"{items} item" + ("" if items == 1 else "s"))
        if player is not None and app.driver is not None:
            display = app.display_status()
            breaker = app.breaker.state
            parts.append(f"display {display}" + (f" (breaker {breaker.replace('_', '-')})"
                                                 if breaker != "closed" else ""))
        sample = self.latest
        if sample is not None:
            parts.append(f"{sample.own_mb:.0f} MB")
            problems = [name for name, check in assess(sample, app.cfg.system).items()
                        if check["status"] != "ok"]
            if self.shedding:
                problems.append("uploads paused")
            if problems:
                parts.append("degraded: " + ", ".join(problems))
        return " · ".join(parts)

    # ---- health ------------------------------------------------------------------------
    def checks(self) -> dict:
        """Each check: status ok|degraded|failing with a reason a person understands."""
        sample = self.latest
        checks = assess(sample, self.app.cfg.system)
        if self.shedding:
            checks["memory"]["uploads"] = "refused (503)"
        checks["heartbeats"] = self._heartbeat_check(sample)
        return checks

    def _heartbeat_check(self, sample: Sample) -> dict:
        now = self.clock()
        ages = self.heartbeat_ages(now)
        monitor_age = now - sample.time
        limit = self.stale_after()
        numbers = {"display_age_sec": round(ages["display"], 2),
                   "http_age_sec": round(ages["http"], 2),
                   "monitor_age_sec": round(monitor_age, 2), "stale_after_sec": round(limit, 2),
                   "watchdog": self.notifier.watchdog_interval() is not None,
                   "watchdog_pings": self.notifier.watchdog_pings}
        reasons = [self._describe(name) for name in self.stale]
        sampling_limit = max(limit, 3 * self.app.cfg.system.monitor_interval_sec)
        if self.ticks and monitor_age > sampling_limit:
            reasons.append(f"the monitor thread has not sampled for {monitor_age:.0f} s")
        if reasons:
            tail = "; systemd will restart the service" if numbers["watchdog"] else ""
            return _check("failing", "; ".join(reasons) + tail, **numbers)
        return _check("ok", None, **numbers)


def _newest_mtime(path: str) -> float:
    """The newest mtime of `path` and everything under it (lstat: links are not followed)."""
    try:
        newest = os.lstat(path).st_mtime
    except OSError:
        return math.inf  # vanished or unreadable: not ours to judge now
    if os.path.isdir(path) and not os.path.islink(path):
        for base, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(base, name)).st_mtime)
                except OSError:
                    pass
    return newest
