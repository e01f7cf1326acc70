"""Display drivers behind one small interface, the hardware pre-flight, the crash marker and
the panel lock.

Drivers (all called from the display thread only; none is thread-safe):

- `HeadlessDriver`: no panel; counts frames. The fallback whenever a panel cannot be used.
- `RGBMatrixDriver`: hzeller's `rpi-rgb-led-matrix` Python binding (module `rgbmatrix`).
  Exactly two canvases for the life of the process: the one `CreateFrameCanvas()` returns
  and the matrix's own; `canvas = matrix.SwapOnVSync(canvas)` flips them.
- `EmulatorDriver`: the same code with the optional `RGBMatrixEmulator` package in place of
  `rgbmatrix`, for desktops without a panel. How to use it: `pip install RGBMatrixEmulator`
  (it pulls numpy and tornado), run with `--display emulator`, open
  http://127.0.0.1:8888/ on the same machine. Its `emulator_config.json` lives in the data
  directory (edit `display_adapter` and `browser.port` there); the browser adapter is bound to
  127.0.0.1 only, and the SIGINT/SIGTERM handlers it installs are put back at once.
  Limits: the package reads `./emulator_config.json` (never writes it) for its log level at
  import, and it runs a tornado thread of its own; it is a developer tool, never for the Pi.
- `FramebufferDriver` (loop/framebuffer.py): a Linux framebuffer such as an SPI LCD's
  /dev/fb1, in the device's own pixel format (RGB565 or BGRX) and rotation; the others are
  RGB24.

`open_driver()` picks and opens a driver and never raises for driver problems: anything that
goes wrong ends in an opened `HeadlessDriver` plus a reason a person understands.

The C library calls `exit()`/`abort()` on some misconfigurations instead of failing, so
`preflight()` checks those first, and a crash marker in the data directory counts panel inits
that never came back (see `open_driver`).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import grp
import importlib
import importlib.util
import json
import logging
import os
import pwd
import signal
import sys
import threading
from dataclasses import dataclass

from PIL import Image

from loop.config import HARDWARE_MAPPINGS

logger = logging.getLogger("loop.display")

PASS, FAIL, SKIP = "pass", "fail", "skip"
MARKER_NAME = "display-init.marker"
EMULATOR_CONFIG_NAME = "emulator_config.json"
RESET_HINT = "POST /api/display/reset to try again"

# Parallel chains each GPIO mapping wires up (lib/hardware-mapping.c, `max_parallel_chains`);
# asking for more makes the library abort() the process.
MAX_PARALLEL = {"regular": 3, "adafruit-hat": 1, "adafruit-hat-pwm": 1, "regular-pi1": 1,
                "classic": 3, "classic-pi1": 1, "compute-module": 6}

# Option names every binding version has (the ones the C library had from the start).
_CORE_OPTIONS = ("rows", "cols", "chain_length", "parallel", "hardware_mapping", "pwm_bits",
                 "pwm_lsb_nanoseconds", "scan_mode", "row_address_type", "multiplexing",
                 "led_rgb_sequence", "pixel_mapper_config", "disable_hardware_pulsing",
                 "gpio_slowdown")
# Newer options: set only when the installed binding knows them (an older Cython class has
# no such attribute and would raise AttributeError).
_NEWER_OPTIONS = ("pwm_dither_bits", "panel_type", "limit_refresh_rate_hz")


class DisplayError(Exception):
    """A driver could not be opened or failed; str() is a reason a person understands."""


@dataclass(frozen=True)
class Check:
    """One pre-flight result: status is "pass", "fail" or "skip"; `fix` says what to do."""

    name: str
    status: str
    reason: str = ""
    fix: str = ""


def panel_size(display_cfg) -> tuple[int, int]:
    """(width, height) in pixels of the whole panel as configured, before pixel mappers."""
    return (display_cfg.cols * display_cfg.chain_length,
            display_cfg.rows * display_cfg.parallel)


def _frame_copy(frame, expected: int) -> bytes:
    """The frame as our own bytes; never keeps the caller's buffer (often an mmap view)."""
    with memoryview(frame) as view:
        if view.nbytes != expected:
            raise ValueError(f"frame has {view.nbytes} bytes; the panel needs {expected} "
                             "(width x height x 3, RGB24)")
        return view.tobytes()


def _check_percent(percent) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"brightness must be a whole number 0..100, not {percent!r}")
    return percent


# ---- drivers ------------------------------------------------------------------------------

class Driver:
    """The interface the player uses. Subclasses set `name`; width/height are final after
    open(). `drops_privileges` is True when the library itself drops root to the service user
    (then the app must not), False when the app has to do it."""

    name = "base"
    pixel_format = "RGB24"
    rotation = 0  # degrees clockwise frames are turned at render time (framebuffer only)
    drops_privileges = False

    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height
        self.brightness = 100
        self.frames_shown = 0

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    def open(self) -> None:
        """Take the hardware; raises DisplayError with a reason when it cannot."""

    def show(self, frame) -> None:
        """Put one RGB24 frame (width*height*3 bytes) on the panel."""
        raise NotImplementedError

    def set_brightness(self, percent: int) -> None:
        """0..100; 0 turns the panel off."""
        self.brightness = _check_percent(percent)

    def clear(self) -> None:
        """Blank the panel."""

    def close(self) -> None:
        """Blank the panel and let go of it."""


class HeadlessDriver(Driver):
    """No panel: show() checks the size and counts the frame, nothing else (no copies)."""

    name = "headless"

    def __init__(self, display_cfg=None, *, width: int | None = None, height: int | None = None):
        if display_cfg is not None:
            width, height = panel_size(display_cfg)
            super().__init__(width, height)
            self.brightness = display_cfg.brightness
        else:
            super().__init__(width or 64, height or 32)

    def show(self, frame) -> None:
        """Count the frame after checking its size, so size bugs show up without a panel."""
        with memoryview(frame) as view:
            if view.nbytes != self.frame_bytes:
                raise ValueError(f"frame has {view.nbytes} bytes; the panel needs "
                                 f"{self.frame_bytes}")
        self.frames_shown += 1


def _import_rgbmatrix():
    try:
        return importlib.import_module("rgbmatrix")
    except ImportError as exc:
        raise DisplayError(f"the rgbmatrix binding is not installed ({exc}); build it from "
                           "hzeller/rpi-rgb-led-matrix (bindings/python)") from exc
    except Exception as exc:  # a broken build fails with OSError & co. at import
        raise DisplayError(f"the rgbmatrix binding cannot be loaded: {exc}") from exc


def _service_account(user: str | None, group: str | None) -> tuple[str, str] | None:
    """(user, group) when the user exists; group defaults to the user's primary group."""
    if not user:
        return None
    try:
        entry = pwd.getpwnam(user)
        group = group or grp.getgrgid(entry.pw_gid).gr_name
        grp.getgrnam(group)
    except (KeyError, OSError):
        return None
    return user, group


class RGBMatrixDriver(Driver):
    """hzeller's binding. `module` is injectable (tests, the emulator); None imports
    `rgbmatrix` at open(). `user`/`group` name the service account the library drops root
    to once the hardware is open (`display.drop_privileges`)."""

    name = "rgbmatrix"

    def __init__(self, display_cfg, module=None, *, user: str | None = None,
                 group: str | None = None):
        super().__init__(*panel_size(display_cfg))
        self.cfg = display_cfg
        self.module = module
        self.user, self.group = user, group
        self.brightness = display_cfg.brightness
        self.options = None
        self._matrix = None
        self._canvas = None
        self._last: bytes | None = None  # copy of the last frame, redrawn on brightness change

    # -- open ----------------------------------------------------------------------------
    def open(self) -> None:
        """Build the options, construct the matrix and the one extra canvas."""
        if self._matrix is not None:
            return  # a second open must not create more canvases
        module = self.module if self.module is not None else _import_rgbmatrix()
        self.module = module
        self._open_with(module)

    def _open_with(self, module) -> None:
        try:
            options = self._build_options(module)
            self._prepare(options)
            matrix = module.RGBMatrix(options=options)
            canvas = matrix.CreateFrameCanvas()
            width, height = matrix.width, matrix.height
        except DisplayError:
            raise
        except Exception as exc:
            raise DisplayError(f"{self.name} panel init failed: {exc}") from exc
        self.options, self._matrix, self._canvas = options, matrix, canvas
        # A pixel mapper (U-mapper, Rotate...) changes the geometry; the library knows best.
        self.width, self.height = width, height
        if self.brightness == 0:
            matrix.Clear()

    def _prepare(self, options) -> None:
        """Hook for subclasses to adjust the options object before the matrix exists."""

    def _build_options(self, module):
        cfg = self.cfg
        options = module.RGBMatrixOptions()
        for key in _CORE_OPTIONS:
            setattr(options, key, getattr(cfg, key))
        # The C library accepts only the upper-case sequence; config allows any case.
        options.led_rgb_sequence = cfg.led_rgb_sequence.upper()
        # Its Validate() rejects 0 ("1..100"); brightness 0 means off and is done by Clear().
        options.brightness = max(1, cfg.brightness)
        for key in _NEWER_OPTIONS:
            if hasattr(options, key):
                setattr(options, key, getattr(cfg, key))
            elif getattr(cfg, key):
                logger.warning("this %s binding has no option %s; %s=%r is ignored",
                               self.name, key, key, getattr(cfg, key))
        self._set_privilege_drop(options)
        return options

    def _set_privilege_drop(self, options) -> None:
        # The C library's default is drop_privileges=1 to the user "daemon", which could not
        # write our data directory: always set it, and only to an account that exists.
        account = _service_account(self.user, self.group) if self.cfg.drop_privileges else None
        can_name = hasattr(options, "drop_priv_user") and hasattr(options, "drop_priv_group")
        if account and can_name:
            options.drop_priv_user, options.drop_priv_group = account
            options.drop_privileges = 1
            self.drops_privileges = True
            return
        if self.cfg.drop_privileges and self.user and not account:
            logger.warning("service user %r does not exist; the panel library keeps root",
                           self.user)
        elif self.cfg.drop_privileges and account and not can_name:
            logger.warning("this %s binding cannot drop to a named user; LOOP drops "
                           "privileges itself", self.name)
        if hasattr(options, "drop_privileges"):
            options.drop_privileges = 0
        self.drops_privileges = False

    # -- frames --------------------------------------------------------------------------
    def _draw(self, data: bytes) -> None:
        # Pillow unpacks RGB24 into its own 32-bit rows here (the one pass per frame); the
        # image refers to our copy only, so no traceback can pin the caller's mmap.
        image = Image.frombuffer("RGB", (self.width, self.height), data, "raw", "RGB", 0, 1)
        self._canvas.SetImage(image)
        self._canvas = self._matrix.SwapOnVSync(self._canvas)

    def _require_open(self) -> None:
        if self._matrix is None:
            raise DisplayError(f"the {self.name} driver is not open")

    def show(self, frame) -> None:
        """Draw the frame on the back canvas and swap it in on the next vsync.

        Library exceptions propagate: the circuit breaker counts them."""
        self._require_open()
        data = _frame_copy(frame, self.frame_bytes)
        self._last = data
        if self.brightness == 0:
            return  # panel off: remember the frame, draw it when brightness comes back
        self._draw(data)
        self.frames_shown += 1

    def set_brightness(self, percent: int) -> None:
        """Set brightness and redraw the last frame (the library applies brightness only to
        pixels drawn after the change); 0 clears the panel."""
        percent = _check_percent(percent)
        self._require_open()
        self.brightness = percent
        if percent == 0:
            self._matrix.Clear()
            return
        self._matrix.brightness = percent
        if self._last is not None:
            self._draw(self._last)

    def clear(self) -> None:
        """Blank the panel and forget the last frame (a brightness change must not bring
        it back)."""
        self._require_open()
        self._last = None
        self._matrix.Clear()

    def close(self) -> None:
        """Blank the panel and drop the library objects."""
        matrix, self._matrix, self._canvas, self._last = self._matrix, None, None, None
        if matrix is not None:
            try:
                matrix.Clear()
            except Exception:  # closing a failed panel must not stop a shutdown
                logger.exception("clearing the panel at close failed")


# ---- emulator -----------------------------------------------------------------------------

_EMULATOR = "RGBMatrixEmulator"
_EMULATOR_LOCK = threading.Lock()


def _emulator_config_class(module):
    """The package's config class, or None for a module that is not RGBMatrixEmulator."""
    found = sys.modules.get(f"{module.__name__}.internal.emulator_config")
    return getattr(found, "RGBMatrixEmulatorConfig", None)


def _import_emulator(config_path: str):
    """Import RGBMatrixEmulator with its config file at `config_path`.

    The package builds a default options object while it is imported (a default argument of
    `RGBMatrix.__init__`), which reads and, when missing, writes `emulator_config.json` in the
    current directory. It finds the file through the class attribute
    `RGBMatrixEmulatorConfig.CONFIG_PATH`, so we create the package module, point that
    attribute at our directory, and only then run the package's `__init__` (chdir is no
    option in a threaded server)."""
    module = sys.modules.get(_EMULATOR)
    if module is not None:
        return module
    spec = importlib.util.find_spec(_EMULATOR)
    if spec is None or spec.loader is None:
        raise DisplayError("the emulator driver needs the RGBMatrixEmulator package "
                           "(pip install RGBMatrixEmulator); it is not installed")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_EMULATOR] = module
    try:
        config_module = importlib.import_module(f"{_EMULATOR}.internal.emulator_config")
        config_module.RGBMatrixEmulatorConfig.CONFIG_PATH = config_path
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == _EMULATOR or n.startswith(_EMULATOR + ".")]:
            del sys.modules[name]
        raise
    return module


def _prepare_emulator_config(config_class, path: str, adapter: str | None) -> None:
    """Make sure `path` holds a full config; `adapter` (when given) overrides the adapter."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        data = None
    except ValueError as exc:
        raise DisplayError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if data is not None and not isinstance(data, dict):
        raise DisplayError(f"{path} must hold a JSON object; fix or delete it")
    if data is not None and (adapter is None or data.get("display_adapter") == adapter):
        return
    data = copy.deepcopy(config_class.DEFAULT_CONFIG) if data is None else data
    if adapter is not None:
        data["display_adapter"] = adapter
    _write_atomic(path, json.dumps(data, indent=4) + "\n")


@contextlib.contextmanager
def _signal_handlers_kept():
    """Put back SIGINT/SIGTERM/SIGHUP handlers if the code inside replaced them (the
    emulator's browser server installs its own that call sys.exit())."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can install handlers, so nobody else could replace ours
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


def _loopback_browser(adapter_class):
    """A subclass of the emulator's browser adapter whose web server listens on 127.0.0.1
    only (the package passes no address to tornado, i.e. every interface)."""
    server_module = importlib.import_module(
        adapter_class.__module__.rsplit(".", 1)[0] + ".server")

    class LoopbackBrowserAdapter(adapter_class):
        INSTANCE = None  # the package keeps one adapter per class

        def load_emulator_window(self):
            if not self.loaded:
                app = server_module.Server(self).instance.app
                listen = app.listen
                app.listen = lambda port, **kw: listen(port, **{**kw, "address": "127.0.0.1"})
            super().load_emulator_window()

    return LoopbackBrowserAdapter


class EmulatorDriver(RGBMatrixDriver):
    """RGBMatrixDriver with `RGBMatrixEmulator` as the binding. `work_dir` holds its
    `emulator_config.json`; `adapter` ("browser", "raw", "pygame"...) overrides the one
    in that file. DisplayError when the package is missing or fails."""

    name = "emulator"

    def __init__(self, display_cfg, module=None, *, work_dir: str, adapter: str | None = None,
                 user: str | None = None):
        super().__init__(display_cfg, module, user=user)
        self.work_dir = work_dir
        self.adapter = adapter

    @property
    def config_path(self) -> str:
        return os.path.join(self.work_dir, EMULATOR_CONFIG_NAME)

    def open(self) -> None:
        """Import the package with its config in work_dir, then open like the real panel."""
        if self._matrix is not None:
            return
        try:
            os.makedirs(self.work_dir, exist_ok=True)
            # One lock: CONFIG_PATH is a class attribute shared by every emulator instance.
            with _EMULATOR_LOCK, _signal_handlers_kept():
                module = self.module if self.module is not None else \
                    _import_emulator(self.config_path)
                self.module = module
                config_class = _emulator_config_class(module)
                if config_class is not None:
                    config_class.CONFIG_PATH = self.config_path
                    _prepare_emulator_config(config_class, self.config_path, self.adapter)
                self._open_with(module)
        except DisplayError:
            raise
        except (Exception, SystemExit) as exc:
            # The package calls sys.exit(1) when no display adapter loads.
            raise DisplayError(f"the emulator failed to start: {exc!r}") from exc

    def _prepare(self, options) -> None:
        adapter = getattr(options, "display_adapter", None)
        if isinstance(adapter, type) and adapter.__name__ == "BrowserAdapter":
            options.display_adapter = _loopback_browser(adapter)


# ---- pre-flight ---------------------------------------------------------------------------

def _read(path: str, limit: int = 1 << 20) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def pi_model(root: str = "/") -> str | None:
    """The board name from the device tree when this is a Raspberry Pi, else None."""
    raw = _read(os.path.join(root, "proc/device-tree/model"))
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
    modules = _read(os.path.join(root, "proc/modules"))
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


# ---- crash marker -------------------------------------------------------------------------

def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _marker_path(data_dir: str) -> str:
    return os.path.join(data_dir, MARKER_NAME)


def init_crash_count(data_dir: str) -> int:
    """Consecutive panel inits that never came back (0 = no marker)."""
    raw = _read(_marker_path(data_dir), 64)
    if raw is None:
        return 0
    try:
        return max(1, int(raw.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError):
        return 1  # a marker is there, whatever it says: at least one init did not return


def _set_marker(data_dir: str, count: int) -> None:
    if count <= 0:
        clear_crash_marker(data_dir)
    else:
        os.makedirs(data_dir, exist_ok=True)
        _write_atomic(_marker_path(data_dir), f"{count}\n")


def clear_crash_marker(data_dir: str) -> None:
    """Operator reset: forget failed panel inits, so the next start tries the panel again."""
    try:
        os.unlink(_marker_path(data_dir))
    except FileNotFoundError:
        return
    _fsync_dir(data_dir)


# ---- panel lock -----------------------------------------------------------------------------

LOCK_NAME = "display.lock"


def _lock_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip() or 0)
    except (OSError, UnicodeDecodeError, ValueError):
        return 0


class PanelLock:
    """{data_dir}/display.lock, flock()ed by the process that drives the panel (the service,
    or a self-test), with its pid inside. The kernel drops an flock when its process dies, so
    the lock never goes stale. The self-test refuses to run while another process holds it;
    the service runs headless while a self-test holds it."""

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> int | None:
        """Take the lock. None when this process has it (or nothing can be locked: no
        writable data directory, a file system without flock), else the holder's pid (0
        when it is unknown)."""
        if self._fd is not None:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except OSError as exc:
            logger.warning("cannot open the panel lock %s: %s", self.path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_pid(fd)
            os.close(fd)
            return pid
        except OSError as exc:
            logger.warning("cannot lock %s: %s", self.path, exc)
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def panel_lock_holder(data_dir: str) -> int | None:
    """The pid of the process holding {data_dir}/display.lock (0 when unknown), None when no
    process holds it."""
    try:
        fd = os.open(os.path.join(data_dir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_pid(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


# ---- choosing a driver --------------------------------------------------------------------

def _headless(display_cfg, reason: str | None, log_: logging.Logger):
    if reason:
        log_.warning("display: running headless: %s", reason)
    driver = HeadlessDriver(display_cfg)
    if display_cfg.driver == "framebuffer" and display_cfg.framebuffer_width and \
            display_cfg.framebuffer_height:
        # Render for the panel that is expected, so nothing is re-rendered when it is back.
        driver.width, driver.height = (display_cfg.framebuffer_width,
                                       display_cfg.framebuffer_height)
    driver.open()
    return driver, reason


def _open_guarded(driver: Driver, display_cfg, data_dir: str, log_: logging.Logger):
    """Open a hardware driver inside the crash marker."""
    crashes = init_crash_count(data_dir)
    if crashes >= display_cfg.max_init_crashes:
        times = "time" if crashes == 1 else "times"
        return _headless(display_cfg, f"panel init crashed {crashes} {times} in a row; "
                         f"{RESET_HINT}", log_)
    try:
        # Written before the library gets control: if it kills the process, this stays.
        _set_marker(data_dir, crashes + 1)
    except OSError as exc:
        log_.warning("display: cannot write the crash marker (%s); trying the panel without "
                     "crash-loop protection", exc)
    try:
        driver.open()
    except Exception as exc:
        # The process survived, so this was no crash: the count stays where it was.
        with contextlib.suppress(OSError):
            _set_marker(data_dir, crashes)
        if not isinstance(exc, DisplayError):
            log_.exception("display: unexpected error opening %s", driver.name)
        return _headless(display_cfg, str(exc) or repr(exc), log_)
    try:
        clear_crash_marker(data_dir)
    except OSError as exc:
        log_.warning("display: cannot remove the crash marker: %s", exc)
    return driver, None


def open_driver(display_cfg, data_dir: str, *, root: str = "/", euid: int | None = None,
                module=None, log: logging.Logger | None = None, user: str | None = None,
                busy: str | None = None):
    """Pick, pre-flight and open the driver `display_cfg.driver` names.

    Returns (opened driver, reason it fell back to headless or None); never raises for
    driver problems. `module` replaces the `rgbmatrix` (or, for "emulator",
    `RGBMatrixEmulator`) module; `user` is the service user the library drops root to.

    Crash marker: before `RGBMatrix(...)` {data_dir}/display-init.marker holds the number of
    consecutive inits that did not return, this one included; success removes it, a clean
    failure puts the old count back. A marker found at start-up therefore counts as a crash,
    and after `display_cfg.max_init_crashes` of them the panel is not tried again until
    `clear_crash_marker()` (POST /api/display/reset).

    `busy` is a reason not to touch the panel at all (another process holds the panel lock):
    every driver but headless then falls back with it. `root` is the file-system root the
    pre-flight and the framebuffer driver look at (tests pass a fake tree)."""
    log_ = log or logger
    choice = display_cfg.driver
    if choice == "headless":
        return _headless(display_cfg, None, log_)
    if busy:
        return _headless(display_cfg, busy, log_)
    if choice == "framebuffer":
        from loop.framebuffer import FramebufferDriver  # it builds on this module
        driver = FramebufferDriver(display_cfg, root=root, euid=euid)
        try:
            driver.open()
        except Exception as exc:
            if not isinstance(exc, DisplayError):
                log_.exception("display: unexpected error opening the framebuffer")
            return _headless(display_cfg, str(exc) or repr(exc), log_)
        return driver, None
    if choice == "emulator":
        driver = EmulatorDriver(display_cfg, module, work_dir=data_dir, user=user)
        try:
            driver.open()
        except Exception as exc:
            return _headless(display_cfg, str(exc), log_)
        return driver, None
    if choice not in ("auto", "rgbmatrix"):
        return _headless(display_cfg, f"unknown display driver {choice!r}", log_)
    if module is None:
        try:
            module = _import_rgbmatrix()
        except DisplayError as exc:
            return _headless(display_cfg, str(exc), log_)
    reason = failed_reason(preflight(display_cfg, root=root, euid=euid, module=module))
    if reason:
        return _headless(display_cfg, reason, log_)
    driver = RGBMatrixDriver(display_cfg, module, user=user)
    return _open_guarded(driver, display_cfg, data_dir, log_)


__all__ = ["Check", "DisplayError", "Driver", "EmulatorDriver", "HeadlessDriver", "PanelLock",
           "RGBMatrixDriver", "clear_crash_marker", "failed_reason", "init_crash_count",
           "open_driver", "panel_lock_holder", "panel_size", "pi_model", "preflight"]
