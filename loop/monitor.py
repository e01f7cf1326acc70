"""The monitor thread: health sampling, thresholds, watchdog gating, debounced flushes and
housekeeping. The one place that decides whether the service looks alive to systemd.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass

import psutil

log = logging.getLogger("loop.monitor")

HISTORY = 120  # samples kept for the dashboard's small charts


@dataclass(frozen=True)
class Sample:
    """One health sample; replaced whole, read without locks."""
    time: float
    rss_mb: float
    children_rss_mb: float
    cpu_percent: float
    available_mb: float
    disk_free_mb: float
    disk_free_percent: float
    temp_c: float | None
    threads: int
    open_fds: int
    load1: float


class Monitor(threading.Thread):
    """Samples health, pings the watchdog only while heartbeats are fresh, keeps house."""

    def __init__(self, app, notifier, *, clock=time.monotonic, sys_root: str = "/"):
        super().__init__(name="monitor", daemon=True)
        self.app, self.notifier, self.clock = app, notifier, clock
        self.sys_root = sys_root
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the measurement
        self.latest: Sample | None = None
        self.history: collections.deque = collections.deque(maxlen=HISTORY)
        self.stale: tuple[str, ...] = ()
        self._halt = threading.Event()
        self._last_flush = clock()
        self._last_ping = 0.0
        self.sample()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("monitor tick failed")
            self._halt.wait(self._interval())

    def _interval(self) -> float:
        interval = self.app.cfg.system.monitor_interval_sec
        ping = self.notifier.watchdog_interval()
        return min(interval, ping) if ping else interval

    def tick(self) -> None:
        """One round: heartbeats and watchdog, sampling when due, housekeeping."""
        now = self.clock()
        self._watchdog(now)
        if self.latest is None or now - self.latest.time >= \
                self.app.cfg.system.monitor_interval_sec * 0.9:
            self.sample()
        if now - self._last_flush >= self.app.cfg.system.settings_flush_sec:
            self._last_flush = now
            self.app.store.flush()
        self.app.jobs.expire()

    def stale_heartbeats(self, now: float) -> tuple[str, ...]:
        """Names of the threads whose heartbeat is too old to trust."""
        limit = max(5.0, 3 * self.app.cfg.system.monitor_interval_sec)
        if self.notifier.watchdog_interval():
            limit = max(self.notifier.watchdog_interval() * 2, 2.0)
        beats = {"display": self.app.player.heartbeat,
                 "http": self.app.server.heartbeat if self.app.server else now}
        return tuple(name for name, beat in beats.items() if now - beat > limit)

    def _watchdog(self, now: float) -> None:
        stale = self.stale_heartbeats(now)
        if stale != self.stale:
            self.stale = stale
            if stale:
                log.error("heartbeat stale: %s; watchdog pings stop", ", ".join(stale))
                self.notifier.status(f"stuck: {', '.join(stale)} thread not responding")
        interval = self.notifier.watchdog_interval()
        if interval and not stale and now - self._last_ping >= interval * 0.9:
            self.notifier.watchdog()
            self._last_ping = now

    def sample(self) -> Sample:
        """Measure the process and the system now."""
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            cpu = self.process.cpu_percent(None)
            threads = self.process.num_threads()
            fds = self.process.num_fds()
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.Error:
                pass
        disk = os.statvfs(self.app.store.data_dir)
        total = disk.f_blocks * disk.f_frsize or 1
        free = disk.f_bavail * disk.f_frsize
        sample = Sample(
            time=self.clock(), rss_mb=rss / 2**20, children_rss_mb=children / 2**20,
            cpu_percent=cpu, available_mb=psutil.virtual_memory().available / 2**20,
            disk_free_mb=free / 2**20, disk_free_percent=free * 100 / total,
            temp_c=self.read_temperature(), threads=threads, open_fds=fds,
            load1=os.getloadavg()[0])
        self.latest = sample
        self.history.append(sample)
        return sample

    def read_temperature(self) -> float | None:
        path = os.path.join(self.sys_root, "sys/class/thermal/thermal_zone0/temp")
        try:
            with open(path) as fh:
                return int(fh.read().strip()) / 1000
        except (OSError, ValueError):
            return None

    # ---- health ------------------------------------------------------------------------
    def checks(self) -> dict:
        """Each check: status ok|degraded|failing with a reason a person understands."""
        sample = self.latest or self.sample()
        system = self.app.cfg.system
        own = sample.rss_mb + sample.children_rss_mb
        checks = {
            "memory": _check(own > system.memory_limit_mb,
                             f"LOOP uses {own:.0f} MB, over its {system.memory_limit_mb:g} MB "
                             "budget", rss_mb=round(sample.rss_mb, 1),
                             children_rss_mb=round(sample.children_rss_mb, 1),
                             limit_mb=system.memory_limit_mb),
            "system_memory": _check(sample.available_mb < system.min_available_mb,
                                    f"only {sample.available_mb:.0f} MB available",
                                    available_mb=round(sample.available_mb, 1)),
            "disk": _check(sample.disk_free_percent < system.min_free_disk_percent,
                           f"only {sample.disk_free_percent:.1f} % of the disk is free; "
                           "uploads are refused", free_mb=round(sample.disk_free_mb, 1),
                           free_percent=round(sample.disk_free_percent, 1)),
            "temperature": _check(sample.temp_c is not None and sample.temp_c > system.max_temp_c,
                                  f"SoC at {sample.temp_c} °C", temp_c=sample.temp_c),
            "cpu": {"status": "ok", "reason": None, "percent": sample.cpu_percent,
                    "load1": round(sample.load1, 2)},
            "threads": {"status": "failing" if self.stale else "ok",
                        "reason": f"{', '.join(self.stale)} heartbeat stale" if self.stale
                        else None, "threads": sample.threads, "open_fds": sample.open_fds},
        }
        return checks

    @property
    def overloaded(self) -> bool:
        """True while memory is over either line: new uploads are shed."""
        checks = self.checks()
        return checks["memory"]["status"] != "ok" or checks["system_memory"]["status"] != "ok"


def _check(bad: bool, reason: str, **numbers) -> dict:
    return dict({"status": "degraded" if bad else "ok", "reason": reason if bad else None},
                **numbers)
