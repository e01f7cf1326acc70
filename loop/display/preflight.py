"""Pre-flight of the LED matrix: everything that stands between a config and a working
`RGBMatrix(...)`, checked before the C library gets control, because it calls
`exit()`/`abort()` on some misconfigurations instead of failing."""

from __future__ import annotations

import importlib.util
import os

from loop.config import HARDWARE_MAPPINGS
from loop.display.base import FAIL, PASS, SKIP, Check

# Parallel chains each GPIO mapping wires up (lib/hardware-mapping.c, `max_parallel_chains`);
# asking for more makes the library abort() the process.
MAX_PARALLEL = {"regular": 3, "adafruit-hat": 1, "adafruit-hat-pwm": 1, "regular-pi1": 1,
                "classic": 3, "classic-pi1": 1, "compute-module": 6}


def read_file(path: str, limit: int = 1 << 20) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def pi_model(root: str = "/") -> str | None:
    """The board name from the device tree when this is a Raspberry Pi, else None."""
    raw = read_file(os.path.join(root, "proc/device-tree/model"))
    if raw is None:
        return None
    model = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    return model if "Raspberry Pi" in model else None


def _config_checks(cfg) -> list[Check]:
    checks = []
    mapping = cfg.hardware_mapping
    if mapping in HARDWARE_MAPPINGS:
        checks.append(Check("hardware_mapping", PASS, mapping))
    else:
        checks.append(Check("hardware_mapping", FAIL,
                            f"unknown hardware_mapping {mapping!r} (the library exits)",
                            f"set display.hardware_mapping to one of "
                            f"{', '.join(HARDWARE_MAPPINGS)}"))
    most = min(3, MAX_PARALLEL.get(mapping, 3))
    if isinstance(cfg.parallel, int) and 1 <= cfg.parallel <= most:
        checks.append(Check("parallel", PASS, f"{cfg.parallel} chain(s)"))
    else:
        checks.append(Check("parallel", FAIL,
                            f"parallel={cfg.parallel!r} but the {mapping!r} mapping drives "
                            f"1..{most} chains (the library aborts)",
                            f"set display.parallel between 1 and {most}"))
    sequence = cfg.led_rgb_sequence
    if isinstance(sequence, str) and sorted(sequence.upper()) == ["B", "G", "R"]:
        checks.append(Check("led_rgb_sequence", PASS, sequence.upper()))
    else:
        checks.append(Check("led_rgb_sequence", FAIL,
                            f"led_rgb_sequence {sequence!r} is not a permutation of RGB "
                            "(the library exits)",
                            "set display.led_rgb_sequence to e.g. RGB, RBG or GRB"))
    rows, cols, chain = cfg.rows, cfg.cols, cfg.chain_length
    # Framebuffer asserts 4 <= rows <= 64 and even; width and chain must be positive.
    if 4 <= rows <= 64 and rows % 2 == 0 and cols >= 1 and chain >= 1:
        checks.append(Check("geometry", PASS, f"{cols * chain}x{rows * cfg.parallel} pixels"))
    else:
        checks.append(Check("geometry", FAIL,
                            f"rows={rows} cols={cols} chain_length={chain} is not a panel "
                            "the library can drive",
                            "rows must be even and 8..64 (usually 16, 32 or 64), cols and "
                            "chain_length at least 1"))
    return checks


def _binding_check(module) -> Check:
    if module is not None:
        return Check("binding", PASS, f"module {getattr(module, '__name__', module)!r}")
    try:
        found = importlib.util.find_spec("rgbmatrix") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return Check("binding", PASS, "rgbmatrix is installed")
    return Check("binding", FAIL, "the rgbmatrix Python binding is not installed",
                 "build and install hzeller/rpi-rgb-led-matrix's Python binding, or set "
                 "display.driver to headless")


def _usable(path: str) -> bool:
    if not os.path.exists(path):
        return False
    if os.access in os.supports_effective_ids:
        return os.access(path, os.R_OK | os.W_OK, effective_ids=True)
    return os.access(path, os.R_OK | os.W_OK)


def _hardware_checks(cfg, root: str, euid: int) -> list[Check]:
    pulsing = not cfg.disable_hardware_pulsing
    checks = []
    modules = read_file(os.path.join(root, "proc/modules"))
    if not pulsing:
        checks.append(Check("sound_module", PASS, "hardware pulsing is disabled"))
    elif modules is None:
        checks.append(Check("sound_module", SKIP, "cannot read /proc/modules"))
    elif any(line.split(b" ", 1)[0] == b"snd_bcm2835" for line in modules.splitlines()):
        checks.append(Check(
            "sound_module", FAIL,
            "the snd_bcm2835 sound module is loaded and uses the PWM the panel needs for "
            "hardware pulsing (the library exits)",
            "blacklist it (echo 'blacklist snd_bcm2835' > /etc/modprobe.d/alsa-blacklist.conf"
            ") and set dtparam=audio=off in /boot/firmware/config.txt, then reboot; or set "
            "display.disable_hardware_pulsing to true"))
    else:
        checks.append(Check("sound_module", PASS, "snd_bcm2835 is not loaded"))
    if not pulsing:
        checks.append(Check("root", PASS, "not needed without hardware pulsing"))
    elif euid == 0:
        checks.append(Check("root", PASS, "running as root"))
    else:
        checks.append(Check("root", FAIL,
                            f"hardware pulsing needs root, but the effective uid is {euid} "
                            "(the library exits)",
                            "start LOOP as root (the systemd unit does; it drops to the "
                            "service user after opening the panel), or set "
                            "display.disable_hardware_pulsing to true"))
    devices = [d for d in ("dev/gpiomem", "dev/mem") if _usable(os.path.join(root, d))]
    if devices:
        checks.append(Check("gpio_device", PASS, ", ".join("/" + d for d in devices)))
    else:
        checks.append(Check("gpio_device", FAIL,
                            "neither /dev/mem nor /dev/gpiomem can be opened read-write",
                            "use Raspberry Pi OS (it provides /dev/gpiomem) and run as root "
                            "or as a member of the gpio group"))
    return checks


def preflight(display_cfg, *, root: str = "/", euid: int | None = None,
              module=None) -> list[Check]:
    """Every check that stands between this config and a working `RGBMatrix(...)`.

    Config checks always run; the hardware ones only on a Raspberry Pi (detected from
    {root}/proc/device-tree/model) and are "skip" elsewhere, so the driver can be tried with
    a fake `rgbmatrix` module. `module` is the binding to use (None: look for `rgbmatrix`)."""
    euid = os.geteuid() if euid is None else euid
    checks = _config_checks(display_cfg)
    checks.append(_binding_check(module))
    model = pi_model(root)
    if model is None:
        checks.append(Check("platform", SKIP, "not a Raspberry Pi"))
        checks += [Check(name, SKIP, "not a Raspberry Pi")
                   for name in ("sound_module", "root", "gpio_device")]
    else:
        checks.append(Check("platform", PASS, model))
        checks += _hardware_checks(display_cfg, root, euid)
    return checks


def failed_reason(checks: list[Check]) -> str | None:
    """One sentence out of the failed checks, or None when nothing failed."""
    failed = [c for c in checks if c.status == FAIL]
    if not failed:
        return None
    return "panel pre-flight failed: " + "; ".join(
        f"{c.reason} (fix: {c.fix})" if c.fix else c.reason for c in failed)


