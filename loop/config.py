"""Configuration: `config.json` defaults, `LOOP_<SECTION>__<KEY>` environment overrides and
command-line flags (flags win), every key validated against the table below.

The table is the single source of truth: each key's default, type, range and meaning.
`config.json` and the README's configuration section are kept in step with it
(`tests/test_config.py` checks that the shipped file names every key).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from loop import schedule


class ConfigError(Exception):
    """A bad configuration file, key or value; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Key:
    default: Any
    kind: type  # int, float, bool, str or list
    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None  # returns a reason when invalid


def _cidr_list(value):
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except (ValueError, TypeError):
            return f"{item!r} is not a CIDR network like 192.168.1.0/24"
    return None


def _str_list(value):
    if not all(isinstance(v, str) and v for v in value):
        return "every entry must be a non-empty string"
    return None


def _rgb_sequence(value):
    if sorted(value.upper()) != ["B", "G", "R"]:
        return "must be a permutation of RGB (e.g. RGB, RBG, GRB)"
    return None


def _schedule_rules(value):
    try:
        schedule.parse_rules(list(value))
    except schedule.RuleError as exc:
        return str(exc)
    return None


def _absolute(value):
    return None if value.startswith("/") else "must be an absolute path like /dev/fb1"


def _plain_name(value):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", value) or ".." in value:
        return "must be auto, none or the name of a directory in /sys/class/backlight"
    return None


def _even(value):
    return None if value % 2 == 0 else "must be even"


def _absolute_or_empty(value):
    return None if value == "" or value.startswith("/") else "must be empty or an absolute path"


def _topic_prefix(value):
    if value == "":
        return None
    if len(value) > 200 or value.startswith("/") or value.endswith("/") or "//" in value \
            or any(c in value for c in "+#\0") or not value.isprintable():
        return ("must be topic levels like loop/kitchen: no wildcards (+ #), no empty level, "
                "no leading or trailing /, at most 200 characters")
    return None


def _discovery_prefix(value):
    return _topic_prefix(value) if value else "must not be empty (Home Assistant's is " \
        "homeassistant)"


def _client_id(value):
    if len(value) > 64 or not re.fullmatch(r"[A-Za-z0-9_.-]*", value):
        return "must be at most 64 of A-Z a-z 0-9 _ . -"
    return None


def _rgb_hex(value):
    return None if re.fullmatch(r"#[0-9a-fA-F]{6}", value) else 'must be a colour like "#ff3000"'


HARDWARE_MAPPINGS = ("regular", "adafruit-hat", "adafruit-hat-pwm", "regular-pi1",
                     "classic", "classic-pi1", "compute-module")
DRIVERS = ("auto", "headless", "rgbmatrix", "emulator", "framebuffer")
FITS = ("contain", "cover", "stretch")
# Play modes, a runtime setting only (PUT /api/playback/mode): each item in turn, repeat the
# current one, or shuffle.
MODES = ("all", "one", "shuffle")
# Notification priorities, lowest first (loop/playback/notifications.py), and the clock
# formats of loop/media/clock.py (a test checks both lists agree with those modules).
PRIORITIES = ("low", "normal", "high", "critical")
CLOCK_FORMATS = ("HH:MM", "H:MM", "hh:MM", "h:MM")

SCHEMA: dict[str, dict[str, Key]] = {
    "display": {
        "driver": Key("auto", str, "panel driver; auto = rgbmatrix when importable and "
                      "its pre-flight passes, else headless", choices=DRIVERS),
        "rows": Key(32, int, "rows of one panel (rgbmatrix --led-rows; the library takes "
                    "8..64, even)", 8, 64, check=_even),
        "cols": Key(64, int, "columns of one panel (rgbmatrix --led-cols; the library takes "
                    "16 or more)", 16, 256),
        "chain_length": Key(1, int, "panels daisy-chained per output", 1, 16),
        "parallel": Key(1, int, "parallel chains (1..3 on a Pi)", 1, 3),
        "hardware_mapping": Key("adafruit-hat", str, "GPIO mapping (the reference "
                                "hardware is the Adafruit RGB Matrix Bonnet); compute-module "
                                "needs a library built for it, which make install's is not, "
                                "so the pre-flight refuses it", choices=HARDWARE_MAPPINGS),
        "gpio_slowdown": Key(2, int, "GPIO slowdown; raise it when the panel flickers (the "
                             "library takes 0..10)", 0, 10),
        "brightness": Key(80, int, "brightness at first start, 0..100 (0 = off); "
                          "the runtime setting overrides it", 0, 100),
        "pwm_bits": Key(11, int, "PWM bits (colour depth vs refresh)", 1, 11),
        "pwm_lsb_nanoseconds": Key(130, int, "base time of the lowest PWM bit", 50, 3000),
        "pwm_dither_bits": Key(0, int, "time-dithering of the lower bits", 0, 2),
        "scan_mode": Key(0, int, "0 progressive, 1 interlaced", 0, 1),
        "row_address_type": Key(0, int, "row address scheme of the panel", 0, 5),
        "multiplexing": Key(0, int, "outdoor-panel multiplexing scheme, 0 = none", 0, 22),
        "led_rgb_sequence": Key("RGB", str, "channel order of the panel (either case)",
                                check=_rgb_sequence),
        "pixel_mapper_config": Key("", str, "rgbmatrix pixel mapper string, e.g. 'U-mapper' "
                                   "or 'Rotate:90'; the pre-flight refuses what the library "
                                   "would skip"),
        "panel_type": Key("", str, "panel init sequence: FM6126A or FM6127 (what the library "
                          "knows); empty = none"),
        "disable_hardware_pulsing": Key(False, bool, "bit-bang instead of hardware PWM; only "
                                        "regular, adafruit-hat-pwm and regular-pi1 pulse, and "
                                        "need root and no sound module unless this is set"),
        "limit_refresh_rate_hz": Key(0, int, "cap the panel refresh rate, 0 = no cap", 0, 1000),
        "drop_privileges": Key(True, bool, "drop root to system.user once the panel is open"),
        "fit": Key("contain", str, "fit at first start: contain (letterbox), cover (crop) or "
                   "stretch; the runtime setting overrides it", choices=FITS),
        "realtime_priority": Key(10, int, "SCHED_FIFO priority of the display thread, so "
                                 "frames leave on time while the API is busy (0 = off; needs "
                                 "root or the unit's LimitRTPRIO; the LED library's own "
                                 "refresh thread runs at 99)", 0, 98),
        "breaker_max_failures": Key(5, int, "consecutive driver failures that open the "
                                    "circuit breaker", 1, 1000),
        "slow_call_ms": Key(500, int, "a driver call slower than this counts as a failure",
                            1, 60000),
        "breaker_reset_sec": Key(5.0, float, "first back-off before a half-open trial",
                                 0.01, 3600),
        "breaker_max_reset_sec": Key(300.0, float, "cap of the doubling back-off", 0.01, 86400),
        "max_init_crashes": Key(2, int, "crash markers in a row before starting headless",
                                1, 100),
        "boot_screen_sec": Key(5.0, float, "how long the boot screen shows the URL", 0, 600),
        "framebuffer_device": Key("/dev/fb1", str, "framebuffer driver's device: /dev/fb1 "
                                  "for an SPI LCD overlay, /dev/fb0 for HDMI",
                                  check=_absolute),
        "framebuffer_width": Key(0, int, "framebuffer picture width after rotation; 0 = "
                                 "what the device reports, else a mismatch fails the "
                                 "pre-flight", 0, 8192),
        "framebuffer_height": Key(0, int, "framebuffer picture height after rotation; 0 = "
                                  "what the device reports", 0, 8192),
        "framebuffer_backlight": Key("auto", str, "framebuffer brightness: auto (the "
                                     "backlight in /sys/class/backlight, if one fits), none "
                                     "(scale pixels in software) or a backlight's name",
                                     check=_plain_name),
        "rotation": Key(0, int, "framebuffer: degrees the picture is turned clockwise "
                        "(LED matrices use pixel_mapper_config 'Rotate:90')", 0, 270,
                        check=lambda v: None if v % 90 == 0 else "must be 0, 90, 180 or 270"),
    },
    "media": {
        "max_upload_mb": Key(100.0, float, "largest request body of an upload", 0.001, 4096),
        "max_item_mb": Key(32.0, float, "frame-file budget per item: lower fps first, "
                           "then cut", 0.01, 4096),
        "max_pixels": Key(40_000_000, int, "largest decoded image (width x height); Pillow's "
                          "bomb limit", 1, 1_000_000_000),
        "max_frames": Key(5000, int, "most frames stored per item", 1, 1_000_000),
        "max_duration_sec": Key(300.0, float, "longest animation or video stored", 0.1, 86400),
        "max_fps": Key(30, int, "frame-rate cap for video", 1, 120),
        "decode_timeout_sec": Key(120.0, float, "deadline for decoding one upload",
                                  0.1, 3600),
        "loop_count": Key(3, int, "times an animation plays before the next item", 1, 10000),
        "item_duration_sec": Key(0.0, float, "if > 0, play each animation this long instead "
                                 "of loop_count times", 0, 86400),
        "static_image_duration_sec": Key(10.0, float, "how long a still shows", 0.01, 86400),
        "max_restore_mb": Key(1024.0, float, "largest backup accepted by restore", 0.001,
                              65536),
        "ffmpeg": Key("ffmpeg", str, "ffmpeg binary for video: a name looked up on PATH or "
                      "an absolute path; empty = video uploads are refused (415)"),
        "ffprobe": Key("ffprobe", str, "ffprobe binary used to inspect videos before "
                       "decoding: a name on PATH or an absolute path"),
        "font_dir": Key("/usr/share/fonts/X11/misc", str, "the misc-fixed bitmap fonts "
                        "(Debian's xfonts-base) for text and clocks; without them Pillow's "
                        "built-in Latin-1 font is used and health says so"),
    },
    "processing": {
        "max_concurrent_jobs": Key(3, int, "uploads/renders decoding at once", 1, 64),
        "job_cleanup_hours": Key(1.0, float, "finished jobs stay visible this long",
                                 0.0001, 720),
    },
    "web": {
        "host": Key("0.0.0.0", str, "address to listen on"),
        "port": Key(80, int, "TCP port (0 = any free port)", 0, 65535),
        "max_concurrent_requests": Key(6, int, "requests in progress at once "
                                       "(bounded semaphore)", 1, 256),
        "admission_wait_ms": Key(500, int, "wait for a request slot before 503", 0, 60000),
        "max_connections": Key(64, int, "open connections overall", 1, 10000),
        "max_connections_per_client": Key(16, int, "open connections per client address",
                                          1, 10000),
        "keepalive_idle_sec": Key(15.0, float, "idle keep-alive connections close after this",
                                  0.05, 3600),
        "header_timeout_sec": Key(10.0, float, "the request head must arrive within this",
                                  0.05, 600),
        "request_timeout_seconds": Key(300.0, float, "a request body must arrive within "
                                       "this; also bounds writing one response", 0.1, 86400),
        "min_body_rate_kbps": Key(8.0, float, "slowest body rate accepted after the grace "
                                  "period (KiB/s)", 0, 1_000_000),
        "body_grace_sec": Key(5.0, float, "seconds before the body rate is enforced", 0, 3600),
        "linger_sec": Key(2.0, float, "after refusing a request whose body is not read (no "
                          "usable length, or over the upload limit), read and discard for at "
                          "most this long before closing, so the client sees the answer, "
                          "not a reset", 0, 60),
        "api_token": Key("", str, "bearer token for every mutating request; empty = none"),
        "allow_networks": Key([], list, "client CIDRs allowed; empty = everyone",
                              check=_cidr_list),
        "allowed_hosts": Key([], list, "extra Host names accepted (DNS-rebinding guard)",
                             check=_str_list),
        "rate_poll_per_sec": Key(10.0, float, "polling requests per second per client",
                                 0.01, 100000),
        "rate_poll_burst": Key(30, int, "polling burst per client", 1, 100000),
        "rate_control_per_sec": Key(5.0, float, "control requests per second per client",
                                    0.01, 100000),
        "rate_control_burst": Key(20, int, "control burst per client", 1, 100000),
        "rate_upload_per_sec": Key(0.5, float, "uploads per second per client", 0.001, 100000),
        "rate_upload_burst": Key(10, int, "upload burst per client", 1, 100000),
        "rate_static_per_sec": Key(50.0, float, "static files and thumbnails per second per "
                                   "client", 0.01, 100000),
        "rate_static_burst": Key(300, int, "static burst per client", 1, 100000),
        "rate_table_size": Key(1024, int, "clients tracked by the rate limiter", 1, 1_000_000),
        "access_log": Key(True, bool, "log one line per non-polling request"),
    },
    "schedule": {
        "rules": Key([], list, "night/dim rules at first start, e.g. [{\"days\": [], \"start\": "
                     "\"22:00\", \"end\": \"07:00\", \"brightness\": 10}]; the runtime "
                     "setting (PUT /api/schedule) overrides them", check=_schedule_rules),
        "timezone": Key("", str, "IANA zone the rules' times are in, e.g. Europe/Berlin; "
                        "empty = the system's local zone", check=schedule.check_zone_name),
        "clock_format": Key("HH:MM", str, "the clock rules with show \"clock\" show: HH:MM, "
                            "H:MM (24 h), hh:MM, h:MM (12 h)", choices=CLOCK_FORMATS),
        "clock_color": Key("#ff3000", str, "colour of that clock", check=_rgb_hex),
    },
    "notify": {
        "max_queued": Key(16, int, "notifications on screen or waiting at once; one more "
                          "gets 429 (a replacement by id always fits)", 1, 256),
        "duration_sec": Key(10.0, float, "how long a notification shows when it gives "
                            "neither duration_sec nor repeat (a marquee then plays once)",
                            0.5, 86400),
        "night_priority": Key("high", str, "lowest priority still shown while a night rule "
                              "(show clock or off, or brightness 0) is active; none = none",
                              choices=PRIORITIES + ("none",)),
    },
    "system": {
        "data_dir": Key("/var/lib/loop", str, "media library and runtime settings"),
        "user": Key("loop", str, "service user to drop to when started as root"),
        "monitor_interval_sec": Key(2.0, float, "health sampling period", 0.01, 3600),
        "memory_limit_mb": Key(160.0, float, "LOOP's own memory budget (service + ffmpeg)",
                               8, 1_000_000),
        "min_available_mb": Key(48.0, float, "floor of the system's available memory",
                                0, 1_000_000),
        "min_free_disk_percent": Key(10.0, float, "uploads get 507 below this", 0, 99),
        "max_temp_c": Key(80.0, float, "SoC temperature that makes health degraded", 20, 150),
        "shutdown_timeout_sec": Key(15.0, float, "in-flight requests get this long at stop",
                                    0.1, 600),
        "settings_flush_sec": Key(5.0, float, "debounce of runtime-setting writes", 0, 3600),
        "log_level": Key("INFO", str, "logging level",
                         choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    },
    # MQTT and Home Assistant discovery (loop/mqtt/); every key needs a restart to change.
    "mqtt": {
        "enabled": Key(False, bool, "connect to an MQTT broker and appear in Home Assistant; "
                       "needs paho-mqtt 2.x (installed by make install)"),
        "host": Key("", str, "broker host name or address (required when enabled)"),
        "port": Key(1883, int, "broker port (8883 is usual with TLS)", 1, 65535),
        "username": Key("", str, "user name at the broker; empty = anonymous"),
        "password": Key("", str, "password at the broker (or use password_file)"),
        "password_file": Key("", str, "file whose first line is the password, readable by "
                             "the service user; empty = use password", check=_absolute_or_empty),
        "tls": Key(False, bool, "connect with TLS, checking the broker's certificate"),
        "ca_file": Key("", str, "CA certificate(s) the broker's certificate is checked "
                       "against; empty = the system's CAs", check=_absolute_or_empty),
        "client_id": Key("", str, "MQTT client id; empty = loop-<hostname>",
                         check=_client_id),
        "base_topic": Key("", str, "prefix of LOOP's own topics; empty = loop/<hostname>",
                          check=_topic_prefix),
        "discovery": Key(True, bool, "publish Home Assistant discovery messages"),
        "discovery_prefix": Key("homeassistant", str, "Home Assistant's discovery prefix",
                                check=_discovery_prefix),
        "protocol": Key("5", str, "MQTT version: 5 (the broker then never sends LOOP a "
                        "packet over 64 KiB) or 3.1.1 for old brokers", choices=("5", "3.1.1")),
        "keepalive_sec": Key(30, int, "keep-alive; a silent broker is dropped after this",
                             2, 3600),
        "reconnect_min_sec": Key(1, int, "first wait before reconnecting; doubles on each "
                                 "failure", 1, 3600),
        "reconnect_max_sec": Key(60, int, "longest wait between reconnection attempts",
                                 1, 86400),
        "state_debounce_ms": Key(250, int, "a state topic is published at most this often "
                                 "(the latest value wins)", 0, 60000),
        "telemetry_interval_sec": Key(60, int, "memory and temperature are published at "
                                      "most this often", 1, 86400),
    },
}


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def _section_class(name: str, keys: dict[str, Key]):
    cls = make_dataclass(f"{name.title()}Config",
                         [(k, Any, field(default=_frozen(spec.default)))
                          for k, spec in keys.items()],
                         frozen=True)
    cls.__module__ = __name__
    return cls


SECTION_CLASSES = {name: _section_class(name, keys) for name, keys in SCHEMA.items()}


@dataclass(frozen=True)
class Config:
    display: Any
    media: Any
    processing: Any
    web: Any
    schedule: Any
    notify: Any
    system: Any
    mqtt: Any

    def as_dict(self) -> dict:
        return {s.name: {f.name: getattr(getattr(self, s.name), f.name)
                         for f in fields(getattr(self, s.name))} for s in fields(self)}

    def replace(self, **overrides) -> Config:
        """A copy with `{"section.key": value}`-style overrides, validated."""
        raw = self.as_dict()
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            raw[section][key] = value
        return build(raw)


def _validate(section: str, key: str, spec: Key, value: Any) -> Any:
    name = f"{section}.{key}"
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is not allowed; expected true or false")
    if spec.kind in (int, float) and (isinstance(value, bool) or not isinstance(value, spec.kind)):
        raise ConfigError(f"{name}: {value!r} is not allowed; expected a "
                          f"{'whole number' if spec.kind is int else 'number'}")
    if spec.kind is list and isinstance(value, tuple):
        value = list(value)
    if spec.kind in (str, list) and not isinstance(value, spec.kind):
        raise ConfigError(f"{name}: {value!r} is not allowed; expected a {spec.kind.__name__}")
    if spec.kind in (int, float) and spec.lo is not None and not spec.lo <= value <= spec.hi:
        raise ConfigError(f"{name}: {value!r} is out of range; allowed {spec.lo:g}..{spec.hi:g}")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{name}: {value!r} is not allowed; one of {', '.join(spec.choices)}")
    reason = spec.check(value) if spec.check else None
    if reason:
        raise ConfigError(f"{name}: {value!r} is not allowed; {reason}")
    return tuple(value) if spec.kind is list else value


def build(raw: dict) -> Config:
    """Validate a `{section: {key: value}}` mapping (missing keys take defaults)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the file must hold a JSON object of sections")
    sections = {}
    for section, value in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{section}: unknown section; known: {', '.join(SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: must be an object of keys")
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys:
                raise ConfigError(f"{section}.{key}: unknown key")
        values = {k: _validate(section, k, spec, given.get(k, spec.default))
                  for k, spec in keys.items()}
        sections[section] = SECTION_CLASSES[section](**values)
    mqtt = sections["mqtt"]
    if mqtt.enabled and not mqtt.host:
        raise ConfigError("mqtt.host: is required when mqtt.enabled is true")
    if mqtt.password and mqtt.password_file:
        raise ConfigError("mqtt.password_file: set either mqtt.password or "
                          "mqtt.password_file, not both")
    if mqtt.reconnect_min_sec > mqtt.reconnect_max_sec:
        raise ConfigError("mqtt.reconnect_min_sec: must not be over mqtt.reconnect_max_sec")
    return Config(**sections)


def _parse_env_value(name: str, spec: Key, text: str) -> Any:
    if spec.kind is str:
        return text
    if spec.kind is list:
        text = text.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{name}: {text!r} is not a JSON list ({exc})") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if spec.kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {text!r} is not allowed; expected true or false")
    try:
        return spec.kind(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not allowed; expected a "
                          f"{'whole number' if spec.kind is int else 'number'}") from None


_ENV = re.compile(r"^LOOP_([A-Z]+)__([A-Z0-9_]+)$")


def env_overrides(environ) -> dict:
    """`LOOP_WEB__PORT=8080` style variables as `{section: {key: value}}`."""
    out: dict = {}
    for var, text in environ.items():
        match = _ENV.match(var)
        if not match:
            continue
        section, key = match.group(1).lower(), match.group(2).lower()
        spec = SCHEMA.get(section, {}).get(key)
        if spec is None:
            raise ConfigError(f"{var}: unknown key {section}.{key}")
        out.setdefault(section, {})[key] = _parse_env_value(var, spec, text)
    return out


def read_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"config: {path} is not valid JSON: {exc}") from None


def merge(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for section, keys in layer.items():
            if isinstance(keys, dict):
                out.setdefault(section, {}).update(keys)
            else:
                out[section] = keys
    return out


FLAG_KEYS = {"data_dir": "system.data_dir", "host": "web.host", "port": "web.port",
             "display": "display.driver"}


def _add_flags(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    # On a subcommand the flags default to SUPPRESS, so they do not overwrite values given
    # before the subcommand (`loop.py --data-dir D backup` and `loop.py backup --data-dir D`).
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", default=argparse.SUPPRESS if suppress else
                        os.environ.get("LOOP_CONFIG", "config.json"),
                        help="path of config.json (default: ./config.json or $LOOP_CONFIG)")
    parser.add_argument("--data-dir", default=default,
                        help="data directory (system.data_dir)")
    parser.add_argument("--host", default=default, help="address to listen on (web.host)")
    parser.add_argument("--port", type=int, default=default,
                        help="TCP port, 0 = any free port (web.port)")
    parser.add_argument("--display", choices=DRIVERS, default=default,
                        help="display driver (display.driver)")


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loop.py",
        description="LOOP: upload GIFs, images and videos over HTTP and loop them on an LED "
                    "matrix. Settings come from config.json, then LOOP_<SECTION>__<KEY> "
                    "environment variables, then these flags. Without a command it runs the "
                    "service.")
    _add_flags(parser)
    test = parser.add_argument_group(
        "self-test", "run it on the device first (sudo make selftest) and attach its output "
        "to bug reports; exit status 0 = fine, 1 = something is wrong, 3 = refused because "
        "the LOOP service is running")
    test.add_argument("--selftest", action="store_true",
                      help="check the machine and the configured panel, show a test pattern, "
                           "measure frame writes, print a report and exit")
    test.add_argument("--json", action="store_true", help="with --selftest: the report as JSON")
    test.add_argument("--stop-service", action="store_true",
                      help="with --selftest: stop the running LOOP service for the test and "
                           "start it again afterwards")
    test.add_argument("--pattern-sec", type=_pattern_sec, default=None, metavar="SECONDS",
                      help=f"with --selftest: how long the test pattern shows (default "
                           f"{PATTERN_SEC:g})")
    commands = parser.add_subparsers(dest="command", metavar="{backup,restore}")
    backup = commands.add_parser(
        "backup", help="write a backup of the library (tar) to stdout or --output",
        description="Write the library (index, each item's meta.json and original, the "
                    "runtime settings; no frames) as a tar. Safe while the service runs.")
    _add_flags(backup, suppress=True)
    backup.add_argument("--output", "-o", help="write to this file instead of stdout")
    restore = commands.add_parser(
        "restore", help="replace the library with a backup (tar) from stdin or --input",
        description="Check a backup completely, then swap it in (the old library stays "
                    "intact if anything is wrong). The service must be stopped; restored "
                    "items are rendered for the panel when it starts. Run it as the service "
                    "user, or as root (files are then given to the data directory's owner).")
    _add_flags(restore, suppress=True)
    restore.add_argument("--input", "-i", help="read from this file instead of stdin")
    return parser


PATTERN_SEC = 6.0


def _pattern_sec(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError("must be 0..600 seconds")
    return value


def load(args: argparse.Namespace, environ=os.environ) -> Config:
    """The effective configuration: file, then environment, then flags."""
    flags: dict = {}
    for attr, dotted in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            section, key = dotted.split(".")
            flags.setdefault(section, {})[key] = value
    return build(merge(read_file(args.config), env_overrides(environ), flags))


def defaults() -> Config:
    return build({})


def markdown_reference() -> str:
    """The README's configuration tables, generated from SCHEMA (`python3 -m loop.config`)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines += ["", f"**{section}**", "", "| key | default | allowed | meaning |",
                  "|---|---|---|---|"]
        for key, spec in keys.items():
            if spec.choices:
                allowed = " \\| ".join(spec.choices)
            elif spec.lo is not None:
                allowed = f"{spec.lo:g}..{spec.hi:g}"
            else:
                allowed = spec.kind.__name__
            default = json.dumps(spec.default)
            lines.append(f"| `{section}.{key}` | `{default}` | {allowed} | {spec.doc} |")
    return "\n".join(lines[1:]) + "\n"


if __name__ == "__main__":
    print(markdown_reference(), end="")
