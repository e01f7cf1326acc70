"""What the Raspberry Pi's SoC reports: its temperature and the firmware's throttling flags
(under-voltage, capped clock). Pure readers with an injectable root, so tests use a fake
sysfs tree; the monitor, the metrics and the self-test read through them."""

from __future__ import annotations

import os
import subprocess

THERMAL_DIR = "sys/class/thermal"
THROTTLED_SYSFS = "sys/devices/platform/soc/soc:firmware/get_throttled"

# Bits of the firmware's get_throttled word (Raspberry Pi documentation, vcgencmd).
THROTTLE_BITS = {
    0: ("under_voltage", "under-voltage: the power supply is too weak"),
    1: ("arm_frequency_capped", "the CPU clock is capped"),
    2: ("throttled", "the CPU is throttled"),
    3: ("soft_temperature_limit", "the soft temperature limit is active"),
}


THROTTLE_PAST_SHIFT = 16  # bits 16..19: the same conditions, "has occurred since boot"


# ---- readers (pure, with an injectable root) ---------------------------------------------
def read_temperature(root: str = "/") -> float | None:
    """The SoC temperature in °C from {root}/sys/class/thermal, or None.

    Prefers a zone whose type names the CPU/SoC (the Pi's is `cpu-thermal`), else the first
    readable zone."""
    base = os.path.join(root, THERMAL_DIR)
    try:
        zones = sorted(z for z in os.listdir(base) if z.startswith("thermal_zone"))
    except OSError:
        return None
    found = []
    for zone in zones:
        try:
            with open(os.path.join(base, zone, "temp")) as fh:
                millis = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(base, zone, "type")) as fh:
                kind = fh.read().strip().lower()
        except OSError:
            kind = ""
        found.append((not any(word in kind for word in ("cpu", "soc", "bcm")), millis / 1000))
    if not found:
        return None
    return min(found, key=lambda pair: pair[0])[1]


def parse_throttled(text: str) -> int | None:
    """`throttled=0x50005` (vcgencmd) or `50005` (sysfs, hex) -> int; None when unparsable."""
    text = text.strip()
    if "=" in text:
        text = text.split("=", 1)[1].strip()
    try:
        return int(text, 16)
    except ValueError:
        return None


def read_throttled_sysfs(root: str = "/") -> int | None:
    try:
        with open(os.path.join(root, THROTTLED_SYSFS)) as fh:
            return parse_throttled(fh.read(64))
    except OSError:
        return None


def read_throttled_vcgencmd(path: str) -> int | None:
    try:
        done = subprocess.run([path, "get_throttled"], capture_output=True, text=True,
                              timeout=1, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_throttled(done.stdout) if done.returncode == 0 else None


def throttle_flags(word: int | None) -> dict:
    """{"now": [names], "since_boot": [names]} of a get_throttled word."""
    if word is None:
        return {"now": [], "since_boot": []}
    return {"now": [name for bit, (name, _) in THROTTLE_BITS.items() if word >> bit & 1],
            "since_boot": [name for bit, (name, _) in THROTTLE_BITS.items()
                           if word >> (bit + THROTTLE_PAST_SHIFT) & 1]}


