"""The LED matrix driver: hzeller's `rpi-rgb-led-matrix` Python binding (module `rgbmatrix`).

Exactly two canvases for the life of the process: the one `CreateFrameCanvas()` returns and
the matrix's own; `canvas = matrix.SwapOnVSync(canvas)` flips them. The library allocates a
framebuffer per `CreateFrameCanvas()` and frees none until the matrix goes, so asking again
would grow without bound.

What the binding does, measured (tests/hwsim/FINDINGS.md): it never raises for a bad
configuration. The checks in loop/display/preflight.py run right before `RGBMatrix(...)`, and
a matrix the library refused anyway (it holds NULL: any call but `SetImage` on it is a
SIGSEGV, and so is freeing it) is recognised, kept alive for good and turned into a
DisplayError. Reading an option before setting it can be a SIGSEGV too (`panel_type` and
`pixel_mapper_config` are NULL C strings until set), so options are only ever written.
`SwapOnVSync` holds the GIL while it waits for the refresh thread: a stalled refresh freezes
every Python thread of the process, and only the systemd watchdog gets it out.
"""

from __future__ import annotations

import ctypes
import grp
import importlib
import logging
import pwd

from PIL import Image

from loop.display import preflight
from loop.display.base import DisplayError, Driver, check_percent, frame_copy, panel_size

logger = logging.getLogger("loop.display")


# The options LOOP sets, as the binding of the pinned commit (8907235) names them. The first
# group every binding has; the second came later: whether this binding has one is asked of
# its class, never of an options object (that would read it: see above).
_CORE_OPTIONS = ("rows", "cols", "chain_length", "parallel", "hardware_mapping", "pwm_bits",
                 "pwm_lsb_nanoseconds", "scan_mode", "row_address_type", "multiplexing",
                 "led_rgb_sequence", "pixel_mapper_config", "disable_hardware_pulsing",
                 "gpio_slowdown")
_NEWER_OPTIONS = ("pwm_dither_bits", "panel_type", "limit_refresh_rate_hz")
# The binding's one runtime exception for a canvas without a framebuffer (core.pyx).
_NULL_CANVAS = "Canvas was destroyed or not initialized"
_NOTHING = Image.new("RGB", (0, 0))  # drawn to find out whether a matrix holds NULL


def import_rgbmatrix():
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


def _keep_forever(matrix) -> None:
    """A matrix holding NULL kills the process when it is freed (its __dealloc__ calls
    Clear() on NULL), even at interpreter exit: one reference nobody ever drops."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(matrix))


class RGBMatrixDriver(Driver):
    """hzeller's binding. `module` is injectable (tests, the emulator); None imports
    `rgbmatrix` at open(). `user`/`group` name the service account the library drops root
    to once the hardware is open (`display.drop_privileges`). `root` and `euid` are what the
    pre-flight looks at (tests pass a fake tree)."""

    name = "rgbmatrix"

    def __init__(self, display_cfg, module=None, *, user: str | None = None,
                 group: str | None = None, root: str = "/", euid: int | None = None):
        super().__init__(*panel_size(display_cfg))
        self.cfg = display_cfg
        self.module = module
        self.user, self.group = user, group
        self.root, self.euid = root, euid
        self.brightness = display_cfg.brightness
        self.options = None
        self._matrix = None
        self._canvas = None
        self._last: bytes | None = None  # copy of the last frame, redrawn on brightness change

    # -- open ----------------------------------------------------------------------------
    def open(self) -> None:
        """Pre-flight, build the options, construct the matrix and the one extra canvas."""
        if self._matrix is not None:
            return  # a second open must not create more canvases
        module = self.module if self.module is not None else import_rgbmatrix()
        self.module = module
        self._open_with(module)

    def _open_with(self, module) -> None:
        reason = self._refusal()
        if reason:
            raise DisplayError(reason)
        try:
            options = self._build_options(module)
            self._prepare(options)
            matrix = module.RGBMatrix(options=options)
            if self._holds_null(matrix):
                _keep_forever(matrix)
                raise DisplayError(
                    f"the {self.name} library refused the panel although the pre-flight "
                    "passed (its own message is in the log just before this one); LOOP runs "
                    "without it")
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

    def _refusal(self) -> str | None:
        """Why the library would refuse this config on this machine (the pre-flight, run
        again right before the library gets control), or None."""
        return preflight.failed_reason(preflight.preflight(
            self.cfg, root=self.root, euid=self.euid, module=self.module))

    def _holds_null(self, matrix) -> bool:
        """Whether the library handed back a matrix without a matrix in it. SetImage is the
        one call that checks for NULL first (it raises); drawing nothing costs nothing."""
        try:
            matrix.SetImage(_NOTHING)
        except Exception as exc:
            if _NULL_CANVAS in str(exc):
                return True
            raise
        return False

    def _has_option(self, options, key: str) -> bool:
        """Whether this binding has the option `key`: asked of the Cython class, whose
        properties live there; never of the object (reading `panel_type` before it is set is
        a SIGSEGV, and `hasattr` reads)."""
        return hasattr(type(options), key)

    def _prepare(self, options) -> None:
        """Hook for subclasses to adjust the options object before the matrix exists."""

    def _build_options(self, module):
        """A fresh options object with every option LOOP knows written, none read."""
        cfg = self.cfg
        options = module.RGBMatrixOptions()
        for key in _CORE_OPTIONS:
            setattr(options, key, getattr(cfg, key))
        # Validate() takes 1..100; LOOP's 0 means off, which is Clear() once open.
        options.brightness = min(100, max(1, cfg.brightness))
        for key in _NEWER_OPTIONS:
            if self._has_option(options, key):
                setattr(options, key, getattr(cfg, key))
            elif getattr(cfg, key):
                logger.warning("this %s binding has no option %s; %s=%r is ignored",
                               self.name, key, key, getattr(cfg, key))
        self._set_privilege_drop(options)
        return options

    def _set_privilege_drop(self, options) -> None:
        # The C library's default is drop_privileges=1 to the user "daemon", which could not
        # write our data directory, and a name it cannot look up leaves it root (or uid 0
        # with the new gid): always set it, to an account that exists, or turn it off.
        account = _service_account(self.user, self.group) if self.cfg.drop_privileges else None
        can_name = self._has_option(options, "drop_priv_user") and \
            self._has_option(options, "drop_priv_group")
        if account and can_name:
            options.drop_priv_user, options.drop_priv_group = account
            options.drop_privileges = 1
            self.drops_privileges = True
            return
        if self.cfg.drop_privileges and self.user and not account:
            logger.warning("service user %r does not exist; the panel library keeps root",
                           self.user)
        elif self.cfg.drop_privileges and account:
            logger.warning("this %s binding cannot drop to a named user; LOOP drops "
                           "privileges itself", self.name)
        if self._has_option(options, "drop_privileges"):
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
        data = frame_copy(frame, self.frame_bytes)
        self._last = data
        if self.brightness == 0:
            return  # panel off: remember the frame, draw it when brightness comes back
        self._draw(data)
        self.frames_shown += 1

    def set_brightness(self, percent: int) -> None:
        """Set brightness and redraw the last frame (the library applies brightness only to
        pixels drawn after the change); 0 clears the panel."""
        percent = check_percent(percent)
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
