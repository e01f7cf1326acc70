"""The fake binding's classes; `rgbmatrix` (this package's __init__) re-exports them.

Modelled on hzeller/rpi-rgb-led-matrix at 8907235 as built by pip (bindings/python/rgbmatrix/
core.pyx over the C++ library, CMake Release: asserts off, no ENABLE_WIDE_GPIO_COMPUTE_MODULE),
running on a Raspberry Pi Zero 2 W. tests/hwsim/FINDINGS.md has each behaviour with its
source line or experiment; tests/test_rgbmatrix_fidelity.py runs the same calls on this fake
and on the real library (under tests/hwsim's simulated Pi) and compares the outcomes.

Where the real library ends the process, so does this fake: a SIGSEGV (a real NULL read
through ctypes, so faulthandler and the exit status look the same), abort() (SIGABRT) or
exit(1), after writing the library's own message to stderr. FAKE_RGBMATRIX_CRASH=raise turns
those into a raised `LibraryExit` (a BaseException) for diagnosis only, e.g. to list which
tests of a suite would die; never use it to make a test pass.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import select
import sys
import threading
import time

from PIL import Image

__all__ = ["FrameCanvas", "RGBMatrix", "RGBMatrixOptions"]

_HANG_LIMIT_SEC = 3.0  # in-process hang: nothing can release it (the GIL is held), so it ends
_CONTROL_HANG_LIMIT_SEC = 600.0  # control-file hang: another process ends it

DEAD_CANVAS = "Canvas was destroyed or not initialized, you cannot use this object anymore"
ONLY_RGB = ("Currently, only RGB mode is supported for SetImage(). Please create images with "
            "mode 'RGB' or convert first with image = image.convert('RGB'). Pull requests to "
            "support more modes natively are also welcome :)")
OPTIONS_TYPE = "rgbmatrix.core.RGBMatrixOptions"


class LibraryExit(BaseException):
    """Raised instead of ending the process, only under FAKE_RGBMATRIX_CRASH=raise (and by
    tests that stand in for a dying library themselves)."""


class LibraryCrash(LibraryExit):
    """The SIGSEGV case of LibraryExit."""


class TooManyCanvases(AssertionError):
    """More canvases than `state.max_canvases`, a limit a test may set; the real library has
    none (it warns at 500 and keeps every canvas until the matrix is deleted)."""


# ---- the process-ending paths -------------------------------------------------------------

def _say(text: str) -> None:
    """What the C library writes to stderr (unbuffered, straight to fd 2)."""
    if text:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.write(2, text.encode("utf-8", "replace"))


def _crash_mode() -> str:
    return os.environ.get("FAKE_RGBMATRIX_CRASH", "")


def segfault(what: str) -> None:
    """Die of SIGSEGV, as the binding does when it dereferences a NULL pointer."""
    if _crash_mode() == "raise":
        raise LibraryCrash(f"SIGSEGV in the real binding: {what}")
    ctypes.string_at(0)  # a real NULL read: the kernel's SIGSEGV, faulthandler's dump


def _abort(message: str) -> None:
    _say(message)
    if _crash_mode() == "raise":
        raise LibraryExit(f"abort() in the real library: {message.strip()}")
    os.abort()


def _exit(message: str, code: int = 1) -> None:
    _say(message)
    if _crash_mode() == "raise":
        raise LibraryExit(f"exit({code}) in the real library: {message.strip()}")
    os._exit(code)


# ---- blocking with the GIL held (what the Cython binding does in SwapOnVSync) -------------

try:
    _LIBC = ctypes.PyDLL(None, use_errno=True)  # PyDLL: calls keep the GIL
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def _gil_poll(fd: int, seconds: float) -> bool:
    """Wait for `fd` to become readable (True) or `seconds` to pass (False), keeping the GIL:
    no other Python thread runs meanwhile, as with the real SwapOnVSync."""
    if _LIBC is None:  # pragma: no cover
        return bool(select.select([fd], [], [], seconds)[0])
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        pfd = _PollFd(fd, select.POLLIN, 0)
        ready = _LIBC.poll(ctypes.byref(pfd), 1, max(1, int(left * 1000)))
        if ready > 0:
            return True
        if ready < 0 and ctypes.get_errno() != 4:  # EINTR: go on waiting
            return False


def _gil_sleep(seconds: float) -> None:
    if seconds <= 0:
        return
    if _LIBC is None:  # pragma: no cover
        time.sleep(seconds)
        return
    _gil_poll(-1, seconds)  # poll() on no descriptor is a sleep


class _Inotify:
    """Block (GIL held) until a file changes: the control file's "hang" lasts until another
    process rewrites it."""

    IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
    IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x80, 0x100, 0x200
    IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800

    def __init__(self, path: str):
        self.fd = -1
        if _LIBC is None:  # pragma: no cover
            return
        self.fd = _LIBC.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            return
        mask = (self.IN_MODIFY | self.IN_ATTRIB | self.IN_CLOSE_WRITE | self.IN_DELETE_SELF
                | self.IN_MOVE_SELF)
        _LIBC.inotify_add_watch(self.fd, os.fsencode(path), mask)
        directory = os.path.dirname(os.path.abspath(path))
        _LIBC.inotify_add_watch(self.fd, os.fsencode(directory),
                                self.IN_CREATE | self.IN_MOVED_TO | self.IN_DELETE)

    def wait(self, seconds: float) -> None:
        if self.fd < 0:  # pragma: no cover
            _gil_sleep(min(seconds, 0.05))
            return
        if _gil_poll(self.fd, seconds):
            try:
                os.read(self.fd, 65536)
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---- test state and knobs --------------------------------------------------------------------

class _State:
    """What tests read and steer. Knobs model real conditions (FINDINGS.md):

    fail_init       the GPIO cannot be opened (no /dev/gpiomem, no /dev/mem access): the
                    library prints "Must run as root..." and RGBMatrix() returns a matrix that
                    holds NULL, so the next call on it (or its garbage collection) is SIGSEGV.
    fail_after_swaps  once that many swaps succeeded, a FrameCanvas's SetImage raises the
                    binding's one runtime exception, Exception(DEAD_CANVAS) (a canvas without
                    framebuffer); the matrix's own SetImage raises it only for a NULL matrix.
                    A real panel never reports a fault this way: it has no fault to report.
    hang            SwapOnVSync never returns (a stalled refresh thread) and holds the GIL
                    like the real one: the process freezes. In process nothing can release()
                    it, so it ends after _HANG_LIMIT_SEC with an AssertionError.
    slow_sec        each SwapOnVSync takes that much longer (a slow refresh), GIL held.
    missing_options names an older binding does not have (AttributeError, like a build from
                    before those options existed).
    devmem          /dev/mem can be opened (root on a Pi): the PWM pin pulser exists. False:
                    only /dev/gpiomem (a non-root Pi), so a mapping whose output-enable is on
                    GPIO 18 with hardware pulsing on makes the library exit(1) ("Need root").
    sound_module    snd_bcm2835 is loaded (stock Raspberry Pi OS): with /dev/mem, the same
                    mappings make the library exit(1) over it.
    refresh_hz      the refresh rate SwapOnVSync waits for; None: the rate the simulated Pi
                    measured for the geometry (about 120 Hz for 16 double rows, scaling with
                    1/double rows), capped by limit_refresh_rate_hz. 0: no wait.
    max_canvases    None (the real library's "no limit"), or a limit that raises
                    TooManyCanvases, for a test that wants to be strict.

    Environment (for a process the test starts): FAKE_RGBMATRIX_CONTROL names a file whose
    first word steers the panel while the process runs, with the words of tests/hwsim's
    fault file where they mean the same: `nogpio` (at RGBMatrix(): as fail_init), `hang`
    (SwapOnVSync blocks, GIL held, until the file changes), `slow MS`, `segv` or `segv-swap`
    (SIGSEGV in SwapOnVSync), `abort` (SIGABRT in SwapOnVSync), and `fail` (SetImage raises as
    fail_after_swaps; the simulated Pi has no such fault: the real library cannot do it);
    anything else or no file: a working panel. FAKE_RGBMATRIX_DEVMEM=0/1 and
    FAKE_RGBMATRIX_SOUND_MODULE=0/1 set the two platform knobs' defaults.
    """

    def __init__(self):
        self.calls: list[tuple] = []
        self.canvases_created = 0
        self.matrices: list[RGBMatrix] = []
        self.null_matrices = 0
        self.options: RGBMatrixOptions | None = None
        self.swaps = 0
        self.swap_times: list[float] = []  # monotonic time of each swap that returned
        self.fail_init: str | None = None
        self.fail_after_swaps: int | None = None
        self.hang = False
        self.hanging = threading.Event()
        self.released = threading.Event()
        self.slow_sec = 0.0
        self._missing: set[str] = set()
        self.devmem = os.environ.get("FAKE_RGBMATRIX_DEVMEM", "1") != "0"
        self.sound_module = os.environ.get("FAKE_RGBMATRIX_SOUND_MODULE", "1") != "0"
        self.refresh_hz: float | None = None
        self.max_canvases: int | None = None
        self.warnings: list[str] = []  # library messages written to stderr
        if "RGBMatrixOptions" in globals():
            _offer_options(set())

    @property
    def missing_options(self) -> set[str]:
        return set(self._missing)

    @missing_options.setter
    def missing_options(self, names) -> None:
        self._missing = set(names)
        _offer_options(self._missing)


state = _State()
_lock = threading.Lock()
_release_pipe = os.pipe()
os.set_blocking(_release_pipe[0], False)
os.set_blocking(_release_pipe[1], False)


def reset() -> None:
    """Forget every matrix, call and knob."""
    release()
    state.__init__()


def release() -> None:
    """End `state.hang` (a thread blocked in it cannot see this before its time limit: the
    hang holds the GIL, as the real one does)."""
    state.hang = False
    state.released.set()
    try:
        os.write(_release_pipe[1], b"x")
    except BlockingIOError:
        pass  # full of earlier releases: a hang wakes up all the same


def _record(*call) -> None:
    with _lock:
        state.calls.append(call)


def _read_keeping_the_gil(path: str) -> bytes:
    """The file's first 256 bytes through libc with the GIL held: Python's own I/O would let
    other threads run in the middle of a SwapOnVSync, which the real one never does."""
    if _LIBC is None:  # pragma: no cover
        try:
            with open(path, "rb") as fh:
                return fh.read(256)
        except OSError:
            return b""
    fd = _LIBC.open(os.fsencode(path), os.O_RDONLY | os.O_CLOEXEC)
    if fd < 0:
        return b""
    buffer = ctypes.create_string_buffer(256)
    count = _LIBC.read(fd, buffer, 256)
    _LIBC.close(fd)
    return buffer.raw[:max(0, count)]


def _control() -> tuple[str, int]:
    path = os.environ.get("FAKE_RGBMATRIX_CONTROL")
    if not path:
        return "", 0
    words = _read_keeping_the_gil(path).decode("utf-8", "replace").split()
    if not words:
        return "", 0
    arg = 0
    if len(words) > 1:
        try:
            arg = int(words[1])
        except ValueError:
            arg = 0
    return words[0], arg


def _message(text: str) -> None:
    state.warnings.append(text)
    _say(text)


# ---- Cython's conversions ---------------------------------------------------------------------

_C_TYPES = {"uint8_t": (0, 255), "uint32_t": (0, 2**32 - 1), "int": (-(2**31), 2**31 - 1)}


def _as_c(value, ctype: str) -> int:
    """Python object -> C integer as Cython does it: ints (bool too) and anything with
    __int__ (floats truncate); __index__ alone is not enough; str/None are TypeError."""
    if isinstance(value, int):
        number = int(value)
    else:
        to_int = getattr(type(value), "__int__", None)
        if to_int is None:
            raise TypeError("an integer is required")
        number = to_int(value)  # float('nan') -> ValueError, inf -> OverflowError
        if not isinstance(number, int):
            raise TypeError(f"__int__ returned non-int (type {type(number).__name__})")
    low, high = _C_TYPES[ctype]
    if ctype == "int":
        if not -(2**63) <= number < 2**63:
            raise OverflowError("Python int too large to convert to C long")
        if not low <= number <= high:
            raise OverflowError("value too large to convert to int")
        return number
    if number < 0:
        raise OverflowError(f"can't convert negative value to {ctype}")
    if number >= 2**64:
        raise OverflowError("Python int too large to convert to C unsigned long")
    if number > high:
        raise OverflowError(f"value too large to convert to {ctype}")
    return number


def _c_int_field(number: int) -> int:
    """A uint32_t stored in the C++ `int` field it is declared as."""
    return number - 2**32 if number >= 2**31 else number


def _encoded(value) -> bytes:
    """`value.encode('utf-8')` into a Cython `bytes` attribute, then a `const char *`: the
    C string ends at the first NUL."""
    encoded = value.encode("utf-8")
    if not isinstance(encoded, bytes):
        raise TypeError(f"Expected bytes, got {type(encoded).__name__}")
    return encoded.split(b"\x00", 1)[0]


# kind: "u8" (uint8_t setter into an int), "u32" (uint32_t setter into an int), "int"
# (untyped setter into an int), "bool" (untyped setter into a bool), "str" (value.encode()).
# Defaults: the C++ constructors (lib/led-matrix.cc Options::Options, lib/options-initialize.cc
# RuntimeOptions) as the binding shows them; None is a NULL const char *.
_FIELDS = {
    "hardware_mapping": ("str", b"regular"),
    "rows": ("u8", 32),
    "cols": ("u32", 32),
    "chain_length": ("u8", 1),
    "parallel": ("u8", 1),
    "pwm_bits": ("u8", 11),
    "pwm_lsb_nanoseconds": ("u32", 130),
    "brightness": ("u8", 100),
    "scan_mode": ("u8", 0),
    "multiplexing": ("u8", 0),
    "row_address_type": ("u8", 0),
    "disable_hardware_pulsing": ("bool", False),
    "show_refresh_rate": ("bool", False),
    "inverse_colors": ("bool", False),
    "led_rgb_sequence": ("str", b"RGB"),
    "pixel_mapper_config": ("str", None),
    "panel_type": ("str", None),
    "pwm_dither_bits": ("u8", 0),
    "limit_refresh_rate_hz": ("int", 0),
    "gpio_slowdown": ("u8", 1),  # GPIO::IsPi4() ? 2 : 1; a Pi Zero 2 W is a "Pi 2"
    "rp1_rio": ("u8", 0),
    "daemon": ("u8", 0),
    "drop_privileges": ("u8", 1),
    "drop_priv_user": ("str", b"daemon"),
    "drop_priv_group": ("str", b"daemon"),
}


def _tp_name(value) -> str:
    """Py_TYPE(value)->tp_name, which Cython's argument type errors show: the binding's own
    (static, Cython) types are module-qualified, Python classes and builtins are not."""
    kind = type(value)
    if kind.__module__.startswith("rgbmatrix"):
        return f"rgbmatrix.core.{kind.__qualname__}"
    if kind.__module__ == "builtins" or kind.__flags__ & (1 << 9):  # Py_TPFLAGS_HEAPTYPE
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def _no_attribute(name: str) -> AttributeError:
    return AttributeError(f"'{OPTIONS_TYPE}' object has no attribute '{name}'")


class _Option:
    """One property of the Cython class, as the real one: a descriptor on the class (so
    `hasattr(RGBMatrixOptions, name)` answers without reading anything), converting on set
    and crashing on a read of a NULL C string."""

    def __init__(self, name: str):
        self.name = name
        self.kind = _FIELDS[name][0]

    def __get__(self, options, owner=None):
        if options is None:
            return self
        value = options._values[self.name]
        if self.kind == "str" and value is None:
            segfault(f"RGBMatrixOptions.{self.name} read while NULL (never set)")
        return value

    def __set__(self, options, value):
        kind = self.kind
        if kind == "str":
            stored = _encoded(value)
        elif kind == "bool":
            stored = bool(value)
        elif kind == "u8":
            stored = _as_c(value, "uint8_t")
        elif kind == "u32":
            stored = _c_int_field(_as_c(value, "uint32_t"))
        else:
            stored = _as_c(value, "int")
        options._values[self.name] = stored

    def __delete__(self, options):
        raise NotImplementedError("__del__")


class RGBMatrixOptions:
    """rgbmatrix.core.RGBMatrixOptions: the real names, types, defaults and crashes. An
    option in `state.missing_options` is taken off the class (an older binding)."""

    __slots__ = ("_values",)

    def __init__(self):
        object.__setattr__(self, "_values", {k: default for k, (_, default) in
                                             _FIELDS.items()})

    def __getattr__(self, name):  # only reached for names the class does not have
        raise _no_attribute(name)

    def __setattr__(self, name, value):
        if name == "_values" or not isinstance(getattr(type(self), name, None), _Option):
            raise _no_attribute(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if not isinstance(getattr(type(self), name, None), _Option):
            raise _no_attribute(name)
        object.__delattr__(self, name)


def _offer_options(missing: set[str]) -> None:
    """Put every option on the class but the `missing` ones."""
    for name in _FIELDS:
        if name in missing:
            if name in vars(RGBMatrixOptions):
                delattr(RGBMatrixOptions, name)
        elif name not in vars(RGBMatrixOptions):
            setattr(RGBMatrixOptions, name, _Option(name))


RGBMatrixOptions.__module__ = "rgbmatrix.core"
RGBMatrixOptions.__qualname__ = "RGBMatrixOptions"
_offer_options(set())

# ---- the C++ library's checks ----------------------------------------------------------------

# lib/hardware-mapping.c, in its order; compute-module only with ENABLE_WIDE_GPIO_COMPUTE_MODULE,
# which the pip build does not define. (output-enable GPIO mask, parallel chains wired)
MAPPINGS = {
    "regular": ((18,), 3),
    "adafruit-hat": ((4,), 1),
    "adafruit-hat-pwm": ((18,), 1),
    "regular-pi1": ((18,), 1),
    "classic": ((27,), 3),
    "classic-pi1": ((0, 2), 1),
}

# lib/multiplex-mappers.cc CreateMultiplexMapperList(): (name, panel stretch factor), 1-based.
MULTIPLEXERS = [
    ("Stripe", 2), ("Checkered", 2), ("Spiral", 2), ("ZStripe", 2), ("ZnMirrorZStripe", 2),
    ("coreman", 2), ("Kaler2Scan", 4), ("ZStripeUneven", 2), ("P10-128x4-Z", 4),
    ("QiangLiQ8", 2), ("InversedZStripe", 2), ("P10Outdoor1R1G1-1", 2),
    ("P10Outdoor1R1G1-2", 2), ("P10Outdoor1R1G1-3", 2), ("P10CoremanMapper", 4),
    ("P8Outdoor1R1G1", 2), ("FlippedStripe", 2), ("P10Outdoor32x16HalfScan", 4),
    ("P10Outdoor32x16QuarterScanMapper", 4), ("P3Outdoor64x64MultiplexMapper", 2),
    ("DoubleZ", 2), ("P4Outdoor80x40Mapper", 2),
]
_QUARTER_SCAN = 19  # its EditColsRows divides the rows by half the stretch factor


def validate(values: dict) -> list[str]:
    """RGBMatrix::Options::Validate() (lib/options-initialize.cc): the messages, in order."""
    errors = []
    rows = values["rows"]
    if rows < 8 or rows > 64 or rows % 2 != 0:
        errors.append("Invalid number or rows per panel (--led-rows). Should be in range of "
                      "[8..64] and divisible by 2.\n")
    if values["cols"] < 16:
        errors.append("Invalid number of columns for panel (--led-cols). Typically that is "
                      "something like 32 or 64\n")
    if values["chain_length"] < 1:
        errors.append("Chain-length outside usable range.\n")
    if values["multiplexing"] > len(MULTIPLEXERS):
        errors.append("Multiplexing can only be one of 0=normal; " + "; ".join(
            f"{i}={name}" for i, (name, _) in enumerate(MULTIPLEXERS, 1)))
    if values["row_address_type"] > 5:
        errors.append("Row address type values can be 0 (default), 1 (AB addressing), 2 "
                      "(direct row select), 3 (ABC address), 4 (ABC Shift + DE direct), 5 "
                      "(Test row select).\n")
    if not 1 <= values["parallel"] <= 3:
        errors.append("Parallel outside usable range (1..3 allowed).\n")
    if not 1 <= values["brightness"] <= 100:
        errors.append("Brightness outside usable range (Percent 1..100 allowed).\n")
    if not 1 <= values["pwm_bits"] <= 11:
        errors.append("Invalid range of pwm-bits (1..11 allowed).\n")
    if values["scan_mode"] > 1:
        errors.append("Invalid scan mode (0 or 1 allowed).\n")
    if not 50 <= values["pwm_lsb_nanoseconds"] <= 3000:
        errors.append("Invalid range of pwm-lsb-nanoseconds (50..3000 allowed).\n")
    if values["pwm_dither_bits"] > 2:
        errors.append("Invalid range of pwm-dither-bits (0..2 allowed).\n")
    sequence = values["led_rgb_sequence"] or b""
    if len(sequence) != 3:
        errors.append("led-sequence needs to be three characters long.\n")
    elif not all(c in sequence or c.lower() in sequence for c in (b"R", b"G", b"B")):
        errors.append("led-sequence needs to contain all of letters 'R', 'G' and 'B'\n")
    return errors


_NEED_ROOT = (
    "Need root. You are configured to use the hardware pulse generator for\n"
    "\tsmooth color rendering, however the necessary hardware\n"
    "\tregisters can't be accessed because you probably don't run\n"
    "\twith root permissions or privileges have been dropped.\n"
    "\tSo you either have to run as root (e.g. using sudo) or\n"
    "\tsupply the --led-no-hardware-pulse command-line flag.\n\n"
    "\tExiting; run as root or with --led-no-hardware-pulse\n\n")
_SOUND_MODULE = (
    "\n\033[1;31m=== snd_bcm2835: found that the Pi sound module is loaded. ===\033[0m\n"
    "Don't use the built-in sound of the Pi together with this lib; it is known to be\n"
    "incompatible and cause trouble and hangs (you can still use external USB sound "
    "adapters).\n\n"
    "See Troubleshooting section in README how to disable the sound module.\n"
    "You can also run with --led-no-hardware-pulse to avoid the incompatibility,\n"
    "but you will have more flicker.\n"
    "Exiting; fix the above first or use --led-no-hardware-pulse\n\n")
_NO_GPIO = "Must run as root to be able to access /dev/mem\nPrepend 'sudo' to the command\n"


def _mapping(values: dict) -> str:
    """Framebuffer::InitHardwareMapping: case-insensitive, "" is "regular", unknown aborts."""
    name = (values["hardware_mapping"] or b"").decode("utf-8", "replace") or "regular"
    for known in MAPPINGS:
        if known.lower() == name.lower():
            return known
    available = ", ".join(f"'{m}'" for m in MAPPINGS)
    _abort(f"There is no hardware mapping named '{name}'.\nAvailable: {available}\n")
    raise AssertionError("unreachable")


def _geometry(values: dict) -> tuple[int, int]:
    """Width and height after the multiplexer and the named pixel mappers."""
    rows, cols = values["rows"], values["cols"]
    chain, parallel = values["chain_length"], values["parallel"]
    mux = values["multiplexing"]
    stretch = MULTIPLEXERS[mux - 1][1] if mux else 1
    if mux:
        rows = rows // (stretch // 2 if mux == _QUARTER_SCAN else stretch)
        cols = cols * stretch
    width, height = cols * chain, rows * parallel
    if mux:  # MultiplexMapperBase::GetSizeMapping
        width, height = width // stretch, height * stretch
    return _pixel_mappers(values["pixel_mapper_config"], chain, parallel, width, height)


def _pixel_mappers(config: bytes | None, chain: int, parallel: int, width: int,
                   height: int) -> tuple[int, int]:
    """RGBMatrix::Impl::ApplyNamedPixelMappers: a bad mapper is reported and skipped."""
    if not config:
        return width, height
    for part in config.decode("utf-8", "replace").split(";"):
        name, _, param = part.partition(":")
        has_param = ":" in part
        if not name:
            if has_param and param:
                _message(f"Stray parameter ':{param}' without mapper name ?\n")
            continue
        size = _one_mapper(name, param if has_param else None, chain, parallel, width, height)
        if size is not None:
            width, height = size
    return width, height


def _one_mapper(name, param, chain, parallel, width, height):
    kind = name.lower()
    if kind == "rotate":
        if not param:
            return width, height
        try:
            angle = int(param, 10)
        except ValueError:
            _message(f"Invalid rotate parameter '{param}'\n")
            return None
        if angle % 90 != 0:
            _message("Rotation needs to be multiple of 90 degrees\n")
            return None
        return (width, height) if (angle + 360) % 180 == 0 else (height, width)
    if kind == "mirror":
        if not param:
            return width, height
        if len(param) != 1:
            _message("Mirror parameter should be a single character:'V' or 'H'\n")
        if param[0] not in "VvHh":
            _message("Mirror parameter should be either 'V' or 'H'\n")
            return None
        return width, height
    if kind == "u-mapper":
        if chain < 2:
            _message("U-mapper: need at least --led-chain=4 for useful folding\n")
            return None
        if chain % 2:
            _message("U-mapper: Chain (--led-chain) needs to be divisible by two\n")
            return None
        if height % parallel:
            _message(f"U-mapper For parallel={parallel} we would expect the height={height} "
                     f"to be divisible by {parallel} ??\n")
            return None
        return (width // 64) * 32, 2 * height
    if kind == "v-mapper":
        return width * parallel // chain, height * chain // parallel
    if kind == "stacktorow":
        for c in param or "":
            if c not in ", ZzFf":
                _message(f"StackToRow: unknown parameter '{c}' (use Z and/or F)\n")
                return None
        return width * parallel, height // parallel
    if kind == "remap":
        return _remap_size(param, chain, parallel)
    _message(f"{name}: no such mapper\n")
    return None


_remap_tiles = [0]  # the library's Remap mapper is one object per process: its tile list
# grows with every matrix that uses it and is never cleared


def _remap_size(param, chain, parallel):
    if not param:
        _message("Remap mapper can't be used without parameters\n")
        return None
    head, _, tiles = param.partition("|")
    try:
        width, height = (int(v) for v in head.split(","))
    except ValueError:
        _message(f"expected ',' after width parameter ('{param}')\n")
        return None
    _remap_tiles[0] += len([t for t in tiles.split("|") if t]) if tiles else 0
    if _remap_tiles[0] != chain * parallel:
        _message(f"Remap list must have 1 entry for each panel (got {_remap_tiles[0]}, "
                 f"expected {chain * parallel})\n")
        return None
    return width, height


def _refresh_hz(values: dict) -> float:
    """What the simulated Pi measured without the hardware pulser: ~120 Hz at 16 double rows
    (64x32), 1/double rows beyond; limit_refresh_rate_hz caps it."""
    double_rows = max(1, values["rows"] // 2)
    natural = 120.0 * 16 / double_rows
    limit = values["limit_refresh_rate_hz"]
    return min(natural, float(limit)) if limit > 0 else natural


def _drop_privileges(values: dict):
    """drop_privs() in lib/led-matrix.cc: only as root; group first, then user; a failed
    lookup is reported (perror) and skipped. Supplementary groups stay as they were. The
    fake records what would happen and never changes this process's ids."""
    if os.geteuid() != 0:
        return None
    user = (values["drop_priv_user"] or b"").decode() or "daemon"
    group = (values["drop_priv_group"] or b"").decode() or "daemon"

    def c_atoi(text):
        digits = ""
        for ch in text.strip():
            if ch.isdigit() or (not digits and ch in "+-"):
                digits += ch
            else:
                break
        try:
            return int(digits)
        except ValueError:
            return 0

    gid = c_atoi(group)
    if gid == 0:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            _message("group lookup.: Success\n")
            return None
    uid = c_atoi(user)
    if uid == 0:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            _message("user lookup.: Success\n")
            return (None, _name_of_gid(gid))
    return (_name_of_uid(uid), _name_of_gid(gid))


def _name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _name_of_gid(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ---- canvases ----------------------------------------------------------------------------------

def _clamp_brightness(value: int) -> int:
    """Framebuffer::SetBrightness (lib/framebuffer-internal.h): 0 -> 1, above 100 -> 100."""
    return value if 1 <= value <= 100 else (1 if value == 0 else 100)


class _Framebuffer:
    """One of the library's framebuffers. `pixels` (RGB24 bytes) and `drawn_brightness` are
    test aids: the real one keeps bit planes nobody can read back."""

    def __init__(self, matrix: RGBMatrix, ident: int):
        self.matrix = matrix
        self.ident = ident
        self.width, self.height = matrix._width, matrix._height
        self.pixels = bytes(self.width * self.height * 3)
        self.brightness = _clamp_brightness(matrix._params["brightness"])
        self.pwm_bits = matrix._params["pwm_bits"]
        self.drawn_brightness = self.brightness

    def paste(self, image, x: int, y: int) -> None:
        page = Image.frombytes("RGB", (self.width, self.height), self.pixels)
        page.paste(image, (x, y))  # clips at the edges like the binding's loops
        self.pixels = page.tobytes()
        self.drawn_brightness = self.brightness

    def fill(self, r: int, g: int, b: int) -> None:
        self.pixels = bytes((r, g, b)) * (self.width * self.height)
        self.drawn_brightness = self.brightness

    def clear(self) -> None:
        self.pixels = bytes(self.width * self.height * 3)

    def set_pixel(self, x: int, y: int, r: int, g: int, b: int) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            at = (y * self.width + x) * 3
            self.pixels = self.pixels[:at] + bytes((r, g, b)) + self.pixels[at + 3:]


class _Canvas:
    """Canvas: SetImage, shared by RGBMatrix and FrameCanvas."""

    def _buffer(self) -> _Framebuffer:
        raise Exception(DEAD_CANVAS)

    def SetImage(self, image, offset_x=0, offset_y=0, unsafe=True):
        x, y = _as_c(offset_x, "int"), _as_c(offset_y, "int")  # `int offset_x`: at the call
        if image.mode != "RGB":
            raise Exception(ONLY_RGB)
        buffer = self._buffer()
        if isinstance(self, FrameCanvas):
            # Only a canvas: the matrix's own SetImage raises the dead-canvas Exception
            # exactly when it holds NULL, which is how a driver can tell (the real one too).
            _obey_fail()
        buffer.paste(image, x, y)
        _record("SetImage", buffer.ident, buffer.drawn_brightness)


class FrameCanvas(_Canvas):
    """rgbmatrix.core.FrameCanvas: a handle on a framebuffer; FrameCanvas() has none."""

    def __init__(self):
        self._fb: _Framebuffer | None = None

    def _buffer(self) -> _Framebuffer:
        if self._fb is None:
            raise Exception(DEAD_CANVAS)
        return self._fb

    def Fill(self, red, green, blue):
        rgb = [_as_c(v, "uint8_t") for v in (red, green, blue)]
        self._buffer().fill(*rgb)

    def Clear(self):
        self._buffer().clear()

    def SetPixel(self, x, y, red, green, blue):
        x, y = _as_c(x, "int"), _as_c(y, "int")
        rgb = [_as_c(v, "uint8_t") for v in (red, green, blue)]
        self._buffer().set_pixel(x, y, *rgb)

    @property
    def width(self):
        return self._buffer().width

    @property
    def height(self):
        return self._buffer().height

    @property
    def pwmBits(self):
        return self._buffer().pwm_bits

    @pwmBits.setter
    def pwmBits(self, value):
        value = _as_c(value, "uint8_t")
        if 1 <= value <= 11:
            self._buffer().pwm_bits = value

    @property
    def brightness(self):
        return self._buffer().brightness

    @brightness.setter
    def brightness(self, value):
        self._buffer().brightness = _clamp_brightness(_as_c(value, "uint8_t"))

    # test aids (the real canvas has none of these)
    @property
    def ident(self) -> int:
        return self._buffer().ident

    @property
    def pixels(self) -> bytes:
        return self._buffer().pixels

    @property
    def drawn_brightness(self) -> int:
        return self._buffer().drawn_brightness


FrameCanvas.__module__ = "rgbmatrix.core"


def _wrap(fb: _Framebuffer | None) -> FrameCanvas:
    """__createFrameCanvas: a new Python object each time, even for the same framebuffer."""
    canvas = FrameCanvas()
    canvas._fb = fb
    return canvas


def _obey_fail() -> None:
    word, _ = _control()
    limit = state.fail_after_swaps
    if word == "fail" or (limit is not None and state.swaps >= limit):
        raise Exception(DEAD_CANVAS)


# ---- the matrix --------------------------------------------------------------------------------

class RGBMatrix(_Canvas):
    """rgbmatrix.core.RGBMatrix. A failed creation returns an object holding NULL, like the
    real one: every call on it but SetImage is SIGSEGV, and so is its garbage collection."""

    def __init__(self, rows=0, chains=0, parallel=0, options=None):
        self._null = True  # until the library hands out a matrix
        try:
            rows = _as_c(rows, "int")
            chains = _as_c(chains, "int")
            parallel = _as_c(parallel, "int")
            if options is None:
                options = RGBMatrixOptions()
            elif not isinstance(options, RGBMatrixOptions):
                raise TypeError(f"Argument 'options' has incorrect type (expected "
                                f"{OPTIONS_TYPE}, got {_tp_name(options)})")
            if rows > 0:
                options.rows = rows
            if chains > 0:
                options.chain_length = chains
            if parallel > 0:
                options.parallel = parallel
        except Exception:
            # Cython runs __dealloc__ on the half-made object: Clear() on NULL.
            segfault("RGBMatrix.__cinit__ raised, __dealloc__ called Clear() on NULL")
            raise
        state.options = options
        _record("RGBMatrix")
        self._create(dict(options._values))

    def _create(self, values: dict) -> None:
        """RGBMatrix::CreateFromOptions, in its order."""
        errors = validate(values)
        if errors:
            _message("".join(errors) + "\n")
            return self._failed()
        if values["gpio_slowdown"] > 10:
            _message(f"--led-slowdown-gpio={values['gpio_slowdown']} is outside usable range\n")
            return self._failed()
        if values["rp1_rio"] not in (0, 1):
            _message(f"--led-rp1-rio={values['rp1_rio']} is outside usable range 0..1\n")
            return self._failed()
        if state.fail_init or _control()[0] == "nogpio":
            _message(_NO_GPIO)
            return self._failed()
        mapping = _mapping(values)
        most = MAPPINGS[mapping][1]
        if values["parallel"] > most:
            chains = "chains" if most > 1 else "chain"
            _abort(f"The {mapping} GPIO mapping only supports {most} parallel {chains}, but "
                   f"{values['parallel']} was requested.\n")
        oe = MAPPINGS[mapping][0]
        if not values["disable_hardware_pulsing"] and len(oe) == 1 and oe[0] in (12, 18):
            if not state.devmem:
                _exit(_NEED_ROOT)
            if state.sound_module:
                _exit(_SOUND_MODULE)
        panel = values["panel_type"]
        if panel and not panel.lower().startswith((b"fm6126", b"fm6127")):
            _message(f"Unknown panel type '{panel.decode('utf-8', 'replace')}'; typo ?\n")
        self._params = values
        self._width, self._height = _geometry(values)
        self._refresh = state.refresh_hz if state.refresh_hz is not None else \
            _refresh_hz(values)
        self._epoch = time.monotonic()
        self._framebuffers: list[_Framebuffer] = []
        self._active = self._new_framebuffer()
        self._luminance = True
        self.dropped_to = _drop_privileges(values) if values["drop_privileges"] else None
        self._null = False
        state.matrices.append(self)

    def _failed(self) -> None:
        state.null_matrices += 1

    def _alive(self, what: str) -> None:
        if self._null:
            segfault(f"RGBMatrix.{what} on a matrix the library refused (NULL)")

    def _new_framebuffer(self) -> _Framebuffer:
        fb = _Framebuffer(self, len(self._framebuffers))
        self._framebuffers.append(fb)
        count = len(self._framebuffers)
        if count % 500 == 0:
            if count == 500:
                _message(
                    "CreateFrameCanvas() called 500 times; Usually you only want to call it "
                    "once (or at most a few times) for double-buffering. These frames will not "
                    "be freed until the end of the program.\nTypical reasons: \n  * "
                    "Accidentally called CreateFrameCanvas() inside your inner loop (move "
                    "outside the loop. Create offscreen-canvas once, then re-use. See "
                    "SwapOnVSync() examples).\n  * Used to pre-compute many frames (use "
                    "led_matrix::StreamWriter instead for such use-case. See e.g. "
                    "led-image-viewer)\n")
            else:
                _message(f"FYI: CreateFrameCanvas() now called {count} times.\n")
        return fb

    def __del__(self):
        if getattr(self, "_null", False):
            if _crash_mode() == "raise":  # an exception from __del__ goes nowhere useful
                _say("fake rgbmatrix: SIGSEGV in the real binding: RGBMatrix.__dealloc__ "
                     "called Clear() on NULL\n")
                return
            segfault("RGBMatrix.__dealloc__ called Clear() on NULL")

    def _buffer(self) -> _Framebuffer:
        if self._null:
            raise Exception(DEAD_CANVAS)  # Canvas._getCanvas checks for NULL; SetImage only
        return self._active

    # -- the binding's API ------------------------------------------------------------------
    # Arguments convert first (Cython does it at the call), then the NULL matrix crashes.
    def Fill(self, red, green, blue):
        rgb = [_as_c(v, "uint8_t") for v in (red, green, blue)]
        self._alive("Fill")
        self._active.fill(*rgb)

    def SetPixel(self, x, y, red, green, blue):
        x, y = _as_c(x, "int"), _as_c(y, "int")
        rgb = [_as_c(v, "uint8_t") for v in (red, green, blue)]
        self._alive("SetPixel")
        self._active.set_pixel(x, y, *rgb)

    def Clear(self):
        self._alive("Clear")
        self._active.clear()
        _record("Clear")

    def CreateFrameCanvas(self):
        self._alive("CreateFrameCanvas")
        with _lock:
            state.canvases_created += 1
            if state.max_canvases is not None and \
                    len(self._framebuffers) >= state.max_canvases:
                raise TooManyCanvases(f"more than {state.max_canvases} canvases")
        fb = self._new_framebuffer()
        _record("CreateFrameCanvas", fb.ident)
        return _wrap(fb)

    def SwapOnVSync(self, newFrame, framerate_fraction=1):
        if newFrame is not None and not isinstance(newFrame, FrameCanvas):
            raise TypeError(f"Argument 'newFrame' has incorrect type (expected "
                            f"rgbmatrix.core.FrameCanvas, got {_tp_name(newFrame)})")
        fraction = _as_c(framerate_fraction, "uint8_t") or 1
        self._alive("SwapOnVSync")
        if newFrame is None:
            segfault("SwapOnVSync(None) hands the library a pointer read out of None")
        self._wait_for_vsync(fraction)
        previous = self._active
        if newFrame._fb is not None:
            self._active = newFrame._fb
        state.swaps += 1
        state.swap_times.append(time.monotonic())
        if newFrame._fb is not None:
            _record("SwapOnVSync", newFrame._fb.ident)
        return _wrap(previous)

    def _wait_for_vsync(self, fraction: int) -> None:
        word, arg = _control()
        if word in ("segv", "segv-swap"):
            segfault("control file: a crash in SwapOnVSync")
        if word == "abort":
            _abort("")
        if word == "hang":
            _hang_on_control_file()
        if word == "slow" and arg > 0:
            _gil_sleep(arg / 1000)
        if state.slow_sec:
            _gil_sleep(state.slow_sec)
        if state.hang:
            state.hanging.set()
            _hang_in_process()
        if self._refresh > 0:  # the next refresh that ends on a multiple of the fraction
            period = fraction / self._refresh
            now = time.monotonic()
            elapsed = now - self._epoch
            _gil_sleep((int(elapsed / period) + 1) * period - elapsed)

    @property
    def luminanceCorrect(self):
        self._alive("luminanceCorrect")
        return self._luminance

    @luminanceCorrect.setter
    def luminanceCorrect(self, value):
        self._alive("luminanceCorrect")
        self._luminance = bool(value)

    @property
    def pwmBits(self):
        self._alive("pwmBits")
        return self._params["pwm_bits"]

    @pwmBits.setter
    def pwmBits(self, value):
        value = _as_c(value, "uint8_t")
        self._alive("pwmBits")
        if 1 <= value <= 11:  # Framebuffer::SetPWMBits refuses the rest, silently
            self._active.pwm_bits = value
            self._params["pwm_bits"] = value

    @property
    def brightness(self):
        self._alive("brightness")
        return self._params["brightness"]  # as set: 0 and 101..255 are kept here

    @brightness.setter
    def brightness(self, value):
        value = _as_c(value, "uint8_t")
        self._alive("brightness")
        for fb in self._framebuffers:  # each framebuffer clamps to 1..100
            fb.brightness = _clamp_brightness(value)
        self._params["brightness"] = value
        _record("brightness", value)

    @property
    def width(self):
        self._alive("width")
        return self._width

    @property
    def height(self):
        self._alive("height")
        return self._height

    # test aid: the framebuffer on the panel
    @property
    def front(self) -> _Framebuffer:
        self._alive("front")
        return self._active


RGBMatrix.__module__ = "rgbmatrix.core"


def _hang_on_control_file() -> None:
    path = os.environ["FAKE_RGBMATRIX_CONTROL"]
    watch = _Inotify(path)
    deadline = time.monotonic() + _CONTROL_HANG_LIMIT_SEC
    try:
        while _control()[0] == "hang":
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("fake rgbmatrix: the control file said hang for "
                                     f"{_CONTROL_HANG_LIMIT_SEC:.0f} s")
            watch.wait(left)
    finally:
        watch.close()


def _hang_in_process() -> None:
    """Hold the GIL until release() (which no thread of this process can run meanwhile) or
    the time limit."""
    deadline = time.monotonic() + _HANG_LIMIT_SEC
    try:
        os.read(_release_pipe[0], 65536)  # releases from before this hang
    except BlockingIOError:
        pass
    while state.hang:
        left = deadline - time.monotonic()
        if left <= 0 or not _gil_poll(_release_pipe[0], left):
            # No re-check after the wait: a release() that sneaks in once the GIL is free
            # again must not turn a hang that lasted into one that ended.
            raise AssertionError(
                "fake rgbmatrix hang was never released: SwapOnVSync holds the GIL while it "
                "waits, as the real binding does, so no thread of this process could")
        try:
            os.read(_release_pipe[0], 4096)
        except BlockingIOError:
            pass
