"""Pre-flight of the LED matrix: everything that stands between a config and a working
`RGBMatrix(...)`, checked before the C library gets control.

The library never raises for a bad configuration (tests/hwsim/FINDINGS.md, section 3): what
its `Options::Validate()` refuses, a slowdown above 10 or a GPIO it cannot open gives a
matrix object holding NULL, whose next call kills the process (SIGSEGV); an unknown mapping
or too many parallel chains is abort(); output-enable on GPIO 18 with hardware pulsing and no
/dev/mem, or with the sound module loaded, is exit(1); an unknown panel type or a pixel mapper
that cannot apply is printed and ignored, so the panel shows the wrong picture. So every one
of those is checked here first, with the library's limits as they are at the commit
deploy/install.sh pins (rpi-rgb-led-matrix 8907235, built by pip), and a reason and a fix a
person understands.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from loop.config import HARDWARE_MAPPINGS
from loop.display.base import FAIL, PASS, SKIP, Check

# The mappings in the binding LOOP builds, with the parallel chains each wires
# (lib/hardware-mapping.c). "compute-module" exists only in a library compiled with
# ENABLE_WIDE_GPIO_COMPUTE_MODULE, which the pip build never defines: asking for it aborts.
MAX_PARALLEL = {"regular": 3, "adafruit-hat": 1, "adafruit-hat-pwm": 1, "regular-pi1": 1,
                "classic": 3, "classic-pi1": 1}
# Output-enable on GPIO 18: with hardware pulsing on, the library drives it from the PWM
# block, which needs /dev/mem (root) and collides with the sound module (lib/gpio.cc,
# HardwarePinPulser). The other mappings never touch the PWM and run on /dev/gpiomem.
PULSER_MAPPINGS = ("regular", "adafruit-hat-pwm", "regular-pi1")
OUTPUT_ENABLE = {"regular": "GPIO 18", "adafruit-hat": "GPIO 4", "adafruit-hat-pwm": "GPIO 18",
                 "regular-pi1": "GPIO 18", "classic": "GPIO 27", "classic-pi1": "GPIO 0 and 2"}

# Options::Validate() (lib/options-initialize.cc) and CreateMatrixFromOptions
# (lib/led-matrix.cc): key -> (lowest, highest) the library accepts.
LIMITS = {"pwm_bits": (1, 11), "pwm_lsb_nanoseconds": (50, 3000), "pwm_dither_bits": (0, 2),
          "scan_mode": (0, 1), "row_address_type": (0, 5), "multiplexing": (0, 22),
          "gpio_slowdown": (0, 10), "limit_refresh_rate_hz": (0, 2**31 - 1)}
# Multiplexers that squeeze four rows into one (lib/multiplex-mappers.cc); the others two.
# Number 19 (P10Outdoor32x16QuarterScanMapper) gives back twice the height.
_STRETCH_4 = {7, 9, 15, 18, 19}
_QUARTER_SCAN = 19
PIXEL_MAPPERS = ("Rotate", "Mirror", "U-mapper", "V-mapper", "StackToRow", "Remap")
PANEL_TYPES = ("FM6126A", "FM6127")  # the library compares the first six letters


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- the config against the library's own rules ---------------------------------------------

def _mapping_check(mapping) -> Check:
    if mapping in MAX_PARALLEL:
        return Check("hardware_mapping", PASS, mapping)
    if mapping == "compute-module":
        return Check("hardware_mapping", FAIL,
                     "the rgbmatrix binding LOOP builds has no compute-module mapping (the "
                     "library's pip build leaves it out; asking for it aborts the process)",
                     f"set display.hardware_mapping to one of {', '.join(MAX_PARALLEL)}")
    return Check("hardware_mapping", FAIL,
                 f"unknown hardware_mapping {mapping!r} (the library aborts the process)",
                 f"set display.hardware_mapping to one of "
                 f"{', '.join(m for m in HARDWARE_MAPPINGS if m in MAX_PARALLEL)}")


def _geometry_check(cfg) -> Check:
    rows, cols, chain, parallel = cfg.rows, cfg.cols, cfg.chain_length, cfg.parallel
    problems = []
    if not (_is_int(rows) and 8 <= rows <= 64 and rows % 2 == 0):
        problems.append(f"rows={rows!r} (the library takes 8..64, even)")
    if not (_is_int(cols) and cols >= 16):
        problems.append(f"cols={cols!r} (the library takes 16 or more)")
    if not (_is_int(chain) and 1 <= chain <= 255):
        problems.append(f"chain_length={chain!r} (1..255)")
    if problems:
        return Check("geometry", FAIL, "not a panel the library can drive: "
                     + ", ".join(problems) + " (it would refuse the panel)",
                     "rows must be even and 8..64 (usually 16, 32 or 64), cols at least 16 "
                     "(usually 32 or 64), chain_length at least 1")
    par = parallel if _is_int(parallel) else 1
    return Check("geometry", PASS, f"{cols * chain}x{rows * par} pixels")


def _limit_checks(cfg) -> list[Check]:
    checks = []
    for key, (low, high) in LIMITS.items():
        value = getattr(cfg, key)
        if not (_is_int(value) and low <= value <= high):
            checks.append(Check(key, FAIL, f"{key}={value!r} is outside {low}..{high}, what "
                                "the library accepts (it would refuse the panel)",
                                f"set display.{key} between {low} and {high}"))
    if not checks:
        checks.append(Check("options", PASS, "pwm_bits, pwm_lsb_nanoseconds, pwm_dither_bits, "
                            "scan_mode, row_address_type, multiplexing, gpio_slowdown and "
                            "limit_refresh_rate_hz within the library's limits"))
    return checks


def _sequence_check(sequence) -> Check:
    # Validate(): three characters holding R, G and B in either case (lower case works).
    if isinstance(sequence, str) and sorted(sequence.upper()) == ["B", "G", "R"]:
        return Check("led_rgb_sequence", PASS, sequence)
    return Check("led_rgb_sequence", FAIL,
                 f"led_rgb_sequence {sequence!r} is not three letters R, G and B in some order "
                 "(the library would refuse the panel)",
                 "set display.led_rgb_sequence to e.g. RGB, RBG or GRB")


def _panel_type_check(panel_type) -> Check:
    if not isinstance(panel_type, str) or "\x00" in panel_type:
        return Check("panel_type", FAIL, f"panel_type {panel_type!r} is not a plain name",
                     f"set display.panel_type to one of {', '.join(PANEL_TYPES)} or empty")
    if panel_type == "":
        return Check("panel_type", PASS, "none (most panels need no init sequence)")
    if panel_type[:6].lower() in ("fm6126", "fm6127"):
        return Check("panel_type", PASS, panel_type)
    return Check("panel_type", FAIL,
                 f"unknown panel_type {panel_type!r}: the library would skip the panel's init "
                 "sequence (it only prints 'typo ?'), and such a panel stays dark",
                 f"set display.panel_type to one of {', '.join(PANEL_TYPES)}, or empty")


def _c_long(text: str) -> tuple[int, str]:
    """strtol(text, &end, 10): the number and what follows it."""
    match = re.match(r"\s*([+-]?\d+)", text)
    if not match:
        return 0, text
    return int(match.group(1)), text[match.end():]


def _remap(param, chain: int, parallel: int, size: tuple[int, int]):
    """RemapMapper: "W,H|x,y<n|s|e|w|x>|..." with one tile per panel. (new size, None) or
    (None, why)."""
    if not param:
        return None, "Remap needs parameters (width,height|x,y,orientation per panel)"
    width, rest = _c_long(param)
    if not rest.startswith(","):
        return None, f"Remap: expected ',' after the width in {param!r}"
    height, rest = _c_long(rest[1:])
    if not rest.startswith("|"):
        return None, f"Remap: expected '|' after the height in {param!r}"
    rest, tiles = rest[1:], []
    while rest:
        x, rest = _c_long(rest)
        if not rest.startswith(","):
            return None, f"Remap: expected ',' after x of panel {len(tiles) + 1} in {param!r}"
        y, rest = _c_long(rest[1:])
        if not rest or rest[0].lower() not in "neswx":
            return None, (f"Remap: panel {len(tiles) + 1} needs an orientation (n, e, s, w or "
                          f"x) after its y in {param!r}")
        tiles.append((x, y, rest[0].lower()))
        rest = rest[1:]
        if rest.startswith("|"):
            rest = rest[1:]
        elif rest:
            return None, f"Remap: expected '|' after panel {len(tiles)} in {param!r}"
    if len(tiles) != chain * parallel:
        return None, (f"Remap lists {len(tiles)} panel(s) but the chain has "
                      f"{chain * parallel} (chain_length x parallel)")
    panel_w, panel_h = size[0] // chain, size[1] // parallel
    for number, (x, y, kind) in enumerate(tiles, 1):
        if kind == "x":
            continue
        turned = kind in "ew"
        x1 = x + (panel_h if turned else panel_w) - 1
        y1 = y + (panel_w if turned else panel_h) - 1
        if x1 < 0 or x >= width or y1 < 0 or y >= height:
            return None, f"Remap: panel {number} lies outside the {width}x{height} picture"
    return (width, height), None


def _one_mapper(name: str, param, chain: int, parallel: int, size: tuple[int, int]):
    """(size after the mapper, None) or (None, why the library would skip it)."""
    width, height = size
    kind = name.lower()
    if kind == "rotate":
        if not param:
            return size, None
        if not re.fullmatch(r"\s*[+-]?\d+", param):
            return None, f"Rotate:{param} is not a number of degrees"
        if int(param) % 90:
            return None, f"Rotate:{param}: the angle must be a multiple of 90"
        return ((width, height) if int(param) % 180 == 0 else (height, width)), None
    if kind == "mirror":
        if param and param[0] not in "VvHh":
            return None, f"Mirror:{param}: the parameter is H or V"
        return size, None
    if kind == "u-mapper":
        if chain < 2 or chain % 2:
            return None, f"U-mapper needs an even chain_length of 2 or more, not {chain}"
        if height % parallel:
            return None, f"U-mapper: a height of {height} does not divide into {parallel} chains"
        return ((width // 64) * 32, 2 * height), None
    if kind == "v-mapper":
        return (width * parallel // chain, height * chain // parallel), None
    if kind == "stacktorow":
        bad = [c for c in param or "" if c not in ", ZzFf"]
        if bad:
            return None, f"StackToRow:{param}: unknown parameter {bad[0]!r} (use Z and/or F)"
        return (width * parallel, height // parallel), None
    if kind == "remap":
        return _remap(param, chain, parallel, size)
    return None, f"there is no pixel mapper {name!r} (the library has {', '.join(PIXEL_MAPPERS)})"


def mapped_size(cfg) -> tuple[int, int]:
    """The panel's size in pixels after the multiplexer, before the pixel mappers."""
    rows, mux = cfg.rows, cfg.multiplexing
    width = cfg.cols * cfg.chain_length
    if not mux:
        return width, rows * cfg.parallel
    stretch = 4 if mux in _STRETCH_4 else 2
    if mux == _QUARTER_SCAN:
        return width, rows // 2 * cfg.parallel * stretch
    return width, rows // stretch * cfg.parallel * stretch


def pixel_mapper_problem(cfg) -> tuple[tuple[int, int] | None, str | None]:
    """Walk display.pixel_mapper_config as the library does (mappers split by ';', a
    parameter after ':', names in any case, each applied to the previous size). Returns
    (the picture size, None) or (None, why the library would skip a mapper)."""
    config = cfg.pixel_mapper_config
    size = mapped_size(cfg)
    if not isinstance(config, str) or "\x00" in config:
        return None, f"pixel_mapper_config {config!r} is not a plain string"
    for part in config.split(";"):
        name, colon, param = part.partition(":")
        if not name:
            if colon and param:
                return None, f"':{param}' has no mapper name in front of it"
            continue
        size, why = _one_mapper(name, param if colon else None, cfg.chain_length,
                                cfg.parallel, size)
        if why:
            return None, why
    return size, None


def _pixel_mapper_check(cfg) -> Check:
    if not cfg.pixel_mapper_config:
        return Check("pixel_mapper_config", PASS, "none")
    size, why = pixel_mapper_problem(cfg)
    if why:
        return Check("pixel_mapper_config", FAIL,
                     f"{why}: the library would print it and skip the mapper, so the picture "
                     "would come out in the wrong shape",
                     "fix display.pixel_mapper_config (e.g. 'U-mapper', 'Rotate:90', "
                     "'U-mapper;Rotate:180'; see the library's README)")
    return Check("pixel_mapper_config", PASS,
                 f"{cfg.pixel_mapper_config}: {size[0]}x{size[1]} pixels")


def _config_checks(cfg) -> list[Check]:
    mapping = cfg.hardware_mapping
    checks = [_mapping_check(mapping)]
    most = MAX_PARALLEL.get(mapping, 3)
    if _is_int(cfg.parallel) and 1 <= cfg.parallel <= most:
        parallel = Check("parallel", PASS, f"{cfg.parallel} chain(s)")
    else:
        parallel = Check("parallel", FAIL,
                         f"parallel={cfg.parallel!r} but the {mapping!r} mapping drives "
                         f"1..{most} chains (the library aborts the process)",
                         f"set display.parallel between 1 and {most}")
    geometry, limits = _geometry_check(cfg), _limit_checks(cfg)
    checks += [parallel, _sequence_check(cfg.led_rgb_sequence), geometry, *limits,
               _panel_type_check(cfg.panel_type)]
    # The mappers work on the size the numbers above give: only worth walking when they hold.
    if geometry.status == PASS and parallel.status == PASS and \
            all(c.name != "multiplexing" for c in limits):
        checks.append(_pixel_mapper_check(cfg))
    return checks


# Written by deploy/rgbmatrix.sh's callers next to the venv: the Pillow the binding was
# compiled against. Its fast SetImage reads Pillow's internal image structure (shims/pillow.c,
# built with that Pillow's Imaging.h), which differs between Pillow versions.
PILLOW_RECORD = "rgbmatrix-pillow-version"


def _pillow_check() -> Check | None:
    import PIL
    raw = read_file(os.path.join(sys.prefix, PILLOW_RECORD), 256)
    if raw is None:
        return None  # a binding built by hand: nothing to compare with
    built = raw.decode("ascii", "replace").strip()
    if built == PIL.__version__:
        return None
    return Check("binding", FAIL,
                 f"the rgbmatrix binding was built against Pillow {built}, but Pillow "
                 f"{PIL.__version__} is installed: its SetImage reads Pillow's internal image "
                 "structure, which a new Pillow may have changed",
                 "rebuild the binding: sudo make install (it rebuilds when Pillow changed)")


def _binding_check(module) -> Check:
    mismatch = _pillow_check()
    if mismatch is not None:
        return mismatch
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


# ---- the machine ------------------------------------------------------------------------------

def _open_error(path: str) -> str | None:
    """None when `path` opens read-write, as the library opens it; else why not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def _hardware_checks(cfg, root: str, euid: int) -> list[Check]:
    mapping = cfg.hardware_mapping
    dev_mem = _open_error(os.path.join(root, "dev/mem"))
    gpiomem = _open_error(os.path.join(root, "dev/gpiomem"))
    checks = []
    if cfg.disable_hardware_pulsing or mapping not in PULSER_MAPPINGS:
        why = ("hardware pulsing is disabled" if cfg.disable_hardware_pulsing else
               f"{mapping} has output-enable on {OUTPUT_ENABLE.get(mapping, '?')}, so the "
               "library never uses the PWM hardware pulser")
        checks.append(Check("sound_module", PASS, f"not in the way: {why}"))
        checks.append(Check("root", PASS, f"not needed: {why} (it runs on /dev/gpiomem)"))
    else:
        checks.append(_sound_check(cfg, root))
        checks.append(_pulser_root_check(cfg, euid, dev_mem))
    usable = [f"/dev/{name}" for name, error in (("mem", dev_mem), ("gpiomem", gpiomem))
              if error is None]
    if usable:
        checks.append(Check("gpio_device", PASS, ", ".join(usable)))
    else:
        checks.append(Check("gpio_device", FAIL,
                            f"the GPIO cannot be opened: /dev/gpiomem: {gpiomem}; /dev/mem: "
                            f"{dev_mem} (the library would hand back a matrix that kills the "
                            "process on first use)",
                            "use Raspberry Pi OS (it provides /dev/gpiomem, group gpio) and run "
                            "as root (the systemd unit does) or as a member of the gpio group"))
    return checks


def _sound_check(cfg, root: str) -> Check:
    modules = read_file(os.path.join(root, "proc/modules"))
    if modules is None:
        return Check("sound_module", SKIP, "cannot read /proc/modules")
    if any(line.split(b" ", 1)[0] == b"snd_bcm2835" for line in modules.splitlines()):
        return Check(
            "sound_module", FAIL,
            f"the snd_bcm2835 sound module is loaded and uses the PWM that {cfg.hardware_mapping}"
            " needs for hardware pulsing (the library exits)",
            "blacklist it (echo 'blacklist snd_bcm2835' > /etc/modprobe.d/alsa-blacklist.conf"
            ") and set dtparam=audio=off in /boot/firmware/config.txt, then reboot; or set "
            "display.disable_hardware_pulsing to true; or use the adafruit-hat mapping")
    return Check("sound_module", PASS, "snd_bcm2835 is not loaded")


def _pulser_root_check(cfg, euid: int, dev_mem: str | None) -> Check:
    fix = ("start LOOP as root (the systemd unit does; it drops to the service user after "
           "opening the panel), or set display.disable_hardware_pulsing to true")
    if euid != 0:
        return Check("root", FAIL,
                     f"hardware pulsing on {cfg.hardware_mapping} needs root (/dev/mem), but "
                     f"the effective uid is {euid} (the library exits)", fix)
    if dev_mem is not None:
        return Check("root", FAIL,
                     f"hardware pulsing on {cfg.hardware_mapping} needs /dev/mem, which cannot "
                     f"be opened: {dev_mem} (the library exits)", fix)
    return Check("root", PASS, "running as root, /dev/mem opens")


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
