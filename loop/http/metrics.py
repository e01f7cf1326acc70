"""`GET /metrics`: the service's numbers in the Prometheus text exposition format 0.0.4.

Stdlib only. Naming follows the Prometheus conventions: every name starts with `loop_`,
counters end in `_total`, values are in base units (bytes, seconds, ratios 0..1, °C).
Nothing here measures anything: it renders what the monitor sampled last and the counters the
other components keep, so a scrape costs no system calls beyond reading the clock.
"""

from __future__ import annotations

import math
import re
import time

from loop import __version__
from loop.system.soc import throttle_flags

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MB = 2**20
HEALTH_VALUES = {"ok": 0, "degraded": 1, "failing": 2}

_NAME = re.compile(r"\A[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"\A[a-zA-Z_][a-zA-Z0-9_]*\Z")


class Exposition:
    """Metric families in the order they were first added, rendered as text."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list]] = {}

    def gauge(self, name: str, help_text: str, value, **labels) -> None:
        self._add(name, "gauge", help_text, value, labels)

    def counter(self, name: str, help_text: str, value, **labels) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        self._add(name, "counter", help_text, value, labels)

    def _add(self, name, kind, help_text, value, labels) -> None:
        if not _NAME.match(name) or any(not _LABEL.match(k) or k.startswith("__")
                                        for k in labels):
            raise ValueError(f"bad metric or label name in {name} {sorted(labels)}")
        family = self._families.setdefault(name, (kind, help_text, []))
        if family[0] != kind:
            raise ValueError(f"{name} is already a {family[0]}")
        family[2].append((labels, value))

    def render(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{_labels(labels)} {format_value(value)}")
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def format_value(value) -> str:
    """A sample value: integers exactly, floats by repr, NaN and ±Inf as Prometheus spells
    them; None (not measured) is NaN."""
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render_app(app) -> str:
    """Everything worth scraping from a running App."""
    out = Exposition()
    monitor, server, player = app.monitor, app.server, app.player
    system = app.cfg.system
    sample = monitor.latest
    now = time.monotonic()
    uptime = now - app.started

    out.gauge("loop_build_info", "LOOP version, always 1", 1, version=__version__)
    out.gauge("loop_start_time_seconds", "Unix time the service started (a change is a "
              "restart)", round(time.time() - uptime, 3))
    out.gauge("loop_uptime_seconds", "seconds since the service started", round(uptime, 3))

    health = app.health()
    out.gauge("loop_healthy", "1 unless a check is failing (LOOP itself broken)",
              int(health["healthy"]))
    for name, check in health["checks"].items():
        out.gauge("loop_health_check_status", "per health check: 0 ok, 1 degraded, 2 failing",
                  HEALTH_VALUES.get(check.get("status"), 2), check=name)

    # process and system
    out.gauge("loop_resident_memory_bytes", "resident memory of the service process and of "
              "its children (ffmpeg)", round(sample.rss_mb * MB), process="service")
    out.gauge("loop_resident_memory_bytes", "resident memory of the service process and of "
              "its children (ffmpeg)", round(sample.children_rss_mb * MB), process="children")
    out.gauge("loop_memory_limit_bytes", "LOOP's memory budget (system.memory_limit_mb)",
              round(system.memory_limit_mb * MB))
    out.gauge("loop_memory_shedding", "1 while new uploads get 503 because memory is over a "
              "line", int(monitor.shedding is not None))
    out.counter("loop_gc_runs_total", "garbage collections forced by the memory lines",
                monitor.gc_runs)
    out.counter("loop_cpu_seconds_total", "user + system CPU time of the service process",
                round(sample.cpu_seconds, 3))
    out.gauge("loop_cpu_usage_ratio", "CPU use of the service process over the last sample "
              "(1 = one core)", round(sample.cpu_percent / 100, 4))
    out.gauge("loop_load1", "system load average over one minute", sample.load1)
    out.gauge("loop_threads", "threads of the service process", sample.threads)
    out.gauge("loop_open_fds", "open file descriptors of the service process",
              sample.open_fds)
    out.gauge("loop_system_available_memory_bytes", "memory available to new work on the "
              "whole system", round(sample.available_mb * MB))
    out.gauge("loop_system_min_available_memory_bytes", "floor of available memory "
              "(system.min_available_mb)", round(system.min_available_mb * MB))
    out.gauge("loop_disk_free_bytes", "free bytes on the data directory's file system",
              round(sample.disk_free_mb * MB))
    out.gauge("loop_disk_size_bytes", "size of the data directory's file system",
              round(sample.disk_total_mb * MB))
    out.gauge("loop_disk_free_ratio", "free share of the data directory's file system",
              round(sample.disk_free_percent / 100, 5))
    out.gauge("loop_disk_min_free_ratio", "uploads get 507 below this free share "
              "(system.min_free_disk_percent)", system.min_free_disk_percent / 100)
    if sample.temp_c is not None:
        out.gauge("loop_soc_temperature_celsius", "SoC temperature", sample.temp_c)
    out.gauge("loop_soc_max_temperature_celsius", "health is degraded above this "
              "(system.max_temp_c)", system.max_temp_c)
    if sample.throttled is not None:
        flags = throttle_flags(sample.throttled)
        for name in ("under_voltage", "arm_frequency_capped", "throttled",
                     "soft_temperature_limit"):
            for when in ("now", "since_boot"):
                out.gauge("loop_firmware_throttled", "firmware get_throttled flags (1 = set)",
                          int(name in flags[when]), flag=name, when=when)

    # HTTP
    counters = server.counters
    for (route_class, status), count in sorted(counters.by_route_items()):
        out.counter("loop_http_requests_total", "HTTP responses by route class and status",
                    count, **{"class": route_class, "status": str(status)})
    out.gauge("loop_http_connections_open", "open HTTP connections",
              counters.connections_open)
    out.gauge("loop_http_requests_in_flight", "requests being answered now", server.in_flight)
    limiter = getattr(server, "limiter", None)
    rejections = {
        "connection_limit": counters.connections_rejected,  # 503 before a thread exists
        "admission": counters.rejected,  # 503: no request slot in time
        "load_shedding": monitor.shed_uploads,  # 503: uploads while memory is over a line
        "rate_limit": getattr(limiter, "rejected", 0),  # 429
    }
    for reason, count in rejections.items():
        out.counter("loop_http_rejected_total", "requests refused before any work, by reason "
                    "(503 connection_limit/admission/load_shedding, 429 rate_limit)", count,
                    reason=reason)

    # uploads and the library
    for outcome, count in sorted(app.jobs.outcomes.items()):
        out.counter("loop_upload_jobs_total", "finished upload and render jobs by outcome",
                    count, outcome=outcome)
    out.gauge("loop_upload_jobs_active", "upload and render jobs in progress",
              app.jobs.active)
    view = app.store.view
    out.gauge("loop_library_items", "items in the library", len(view.items))
    out.gauge("loop_library_bytes", "bytes of the uploads in the library", view.bytes)
    out.counter("loop_index_writes_total", "writes of index.json", app.store.index_writes)
    out.counter("loop_tmp_orphans_removed_total", "orphans removed from tmp/ while running",
                monitor.tmp_removed)

    # display
    out.counter("loop_frames_shown_total", "frames handed to the display driver",
                player.frames_shown)
    out.counter("loop_late_frames_total", "frames skipped because the display thread was late",
                player.late_frames)
    breaker = app.breaker.snapshot()
    for state in ("closed", "open", "half_open"):
        out.gauge("loop_display_breaker_state", "display circuit breaker state (1 = current)",
                  int(breaker["state"] == state), state=state)
    out.counter("loop_display_breaker_openings_total", "times the display circuit breaker "
                "opened", breaker["openings"])
    out.gauge("loop_display_brightness_ratio", "panel brightness (0 = off)",
              player.brightness / 100)

    # heartbeats and the watchdog
    for thread, age in monitor.heartbeat_ages(now).items():
        out.gauge("loop_heartbeat_age_seconds", "age of a thread's heartbeat", round(age, 3),
                  thread=thread)
    out.gauge("loop_watchdog_enabled", "1 when systemd's watchdog is armed (WATCHDOG_USEC)",
              int(app.notifier.watchdog_interval() is not None))
    out.counter("loop_watchdog_pings_total", "WATCHDOG=1 notifications delivered to systemd",
                app.notifier.watchdog_pings)

    # MQTT (only when mqtt.enabled)
    mqtt = getattr(app, "mqtt", None)
    if mqtt is not None:
        counts = mqtt.counters
        out.gauge("loop_mqtt_connected", "1 while connected to the MQTT broker",
                  int(mqtt.connected))
        out.counter("loop_mqtt_connects_total", "connections the MQTT broker accepted",
                    counts.connects)
        for direction, count in (("sent", counts.sent), ("received", counts.received),
                                 ("unsent", counts.publish_failed)):
            out.counter("loop_mqtt_messages_total", "MQTT messages by direction (unsent: the "
                        "connection went before a publish)", count, direction=direction)
        for outcome, count in (("done", counts.commands_done),
                               ("refused", counts.commands_refused),
                               ("dropped", counts.commands_dropped)):
            out.counter("loop_mqtt_commands_total", "MQTT commands by outcome (dropped: more "
                        "arrived than LOOP applies)", count, outcome=outcome)
    return out.render()
