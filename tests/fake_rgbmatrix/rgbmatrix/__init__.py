"""A strict stand-in for hzeller's `rgbmatrix` Python binding, for tests on any machine.

Put `tests/fake_rgbmatrix` on `sys.path` (or PYTHONPATH) and `import rgbmatrix` finds this.
It follows the real binding (bindings/python/rgbmatrix/core.pyx) where it matters, and is
stricter where a mistake would only show on a real panel:

- `RGBMatrixOptions` has the real attribute names only; any other name raises AttributeError,
  strings are stored as bytes (the binding encodes them), ints are range-checked like the
  Cython uint8/uint32 setters. Defaults are the C++ ones (note drop_privileges=1).
- `RGBMatrix(options=...)`: what the C library's Validate() rejects raises
  `Exception("RGBMatrix creation failed")`; what makes the C library call exit()/abort()
  (unknown mapping, too many parallel chains for the mapping, bad RGB sequence) raises
  `LibraryExit`, a BaseException, so it gets past `except Exception` the way a dead process
  would.
- A matrix owns one canvas (the one on the panel); `CreateFrameCanvas()` may add one more.
  A third canvas raises `TooManyCanvases` (a test must fail). `state.canvases_created`
  counts the calls for the whole module.
- `SwapOnVSync(canvas)` shows `canvas` and returns the OTHER one.
- `canvas.SetImage(image)` raises on non-"RGB" images like the binding, and records the
  pixels (`canvas.pixels`, bytes) and the brightness they were drawn at
  (`canvas.drawn_brightness`): the library applies brightness when pixels are drawn.
- `state.calls` is the sequence of calls, e.g. ("brightness", 40), ("SetImage", 1, 40),
  ("SwapOnVSync", 1), ("Clear",).

Knobs (on `state`, reset by `reset()`): `fail_init` (message: RGBMatrix() raises),
`fail_after_swaps` (SwapOnVSync raises once that many swaps succeeded), `hang` (SwapOnVSync
blocks until `release()`; `state.hanging` is set while it blocks), `slow_sec` (SwapOnVSync
sleeps), `missing_options` (names the binding "does not have", like an older build).

For a service running as a subprocess, the environment variable FAKE_RGBMATRIX_CONTROL names a
file whose content steers every SwapOnVSync while the process runs: `fail` raises, `hang`
blocks until the content changes, anything else (or no file) works.
"""

from __future__ import annotations

import operator
import os
import threading
import time

from PIL import Image

__version__ = "0.0-fake"

_HANG_LIMIT_SEC = 30.0  # a forgotten release() must fail the test, not hang the suite

# (default, kind) per attribute of the real RGBMatrixOptions. kind: "u8", "u32", "int",
# "bool" or "str" (str/bytes/None, stored as bytes).
_FIELDS = {
    "hardware_mapping": (b"regular", "str"),
    "rows": (32, "u8"),
    "cols": (32, "u32"),
    "chain_length": (1, "u8"),
    "parallel": (1, "u8"),
    "pwm_bits": (11, "u8"),
    "pwm_lsb_nanoseconds": (130, "u32"),
    "brightness": (100, "u8"),
    "scan_mode": (0, "u8"),
    "multiplexing": (0, "u8"),
    "row_address_type": (0, "u8"),
    "disable_hardware_pulsing": (False, "bool"),
    "show_refresh_rate": (False, "bool"),
    "inverse_colors": (False, "bool"),
    "led_rgb_sequence": (b"RGB", "str"),
    "pixel_mapper_config": (None, "str"),
    "panel_type": (None, "str"),
    "pwm_dither_bits": (0, "u8"),
    "limit_refresh_rate_hz": (0, "int"),
    "gpio_slowdown": (1, "u8"),
    "daemon": (0, "u8"),
    "drop_privileges": (1, "u8"),
    "drop_priv_user": (None, "str"),
    "drop_priv_group": (None, "str"),
    "do_gpio_init": (True, "u8"),
}

# lib/hardware-mapping.c: parallel chains per mapping.
_MAX_PARALLEL = {b"regular": 3, b"adafruit-hat": 1, b"adafruit-hat-pwm": 1, b"regular-pi1": 1,
                 b"classic": 3, b"classic-pi1": 1, b"compute-module": 6}


class LibraryExit(BaseException):
    """Where the real C library would exit()/abort() the whole process."""


class TooManyCanvases(AssertionError):
    """A third canvas was requested: the driver must live with two."""


class _State:
    def __init__(self):
        self.calls: list[tuple] = []
        self.canvases_created = 0
        self.matrices: list[RGBMatrix] = []
        self.options: RGBMatrixOptions | None = None
        self.swaps = 0
        self.swap_times: list[float] = []  # monotonic time of each swap that succeeded
        self.fail_init: str | None = None
        self.fail_after_swaps: int | None = None
        self.hang = False
        self.hanging = threading.Event()
        self.released = threading.Event()
        self.slow_sec = 0.0
        self.missing_options: set[str] = set()


state = _State()
_lock = threading.Lock()


def reset() -> None:
    """Forget every matrix, call and knob (frees a thread blocked by `hang` first)."""
    state.released.set()
    state.__init__()


def release() -> None:
    """Let a call blocked by `state.hang` return."""
    state.hang = False
    state.released.set()


def _control_mode() -> str:
    path = os.environ.get("FAKE_RGBMATRIX_CONTROL")
    if not path:
        return ""
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _obey_control_file() -> None:
    mode = _control_mode()
    if mode == "fail":
        raise Exception("fake panel failure (control file)")
    while mode == "hang":
        time.sleep(0.05)
        mode = _control_mode()


def _record(*call) -> None:
    with _lock:
        state.calls.append(call)


def _convert(name: str, kind: str, value):
    if kind == "str":
        if isinstance(value, str):
            return value.encode("utf-8")
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, bytearray):
            return bytes(value)
        raise TypeError(f"{name} must be [str, bytes, bytearray, None], not "
                        f"{type(value).__name__}")
    if kind == "bool":
        return bool(value)
    number = operator.index(value)  # TypeError for floats and strings, like Cython
    top = {"u8": 255, "u32": 2**32 - 1, "int": 2**31 - 1}[kind]
    low = -(2**31) if kind == "int" else 0
    if not low <= number <= top:
        raise OverflowError(f"value {number} out of range for {name}")
    return number


class RGBMatrixOptions:
    """The real attribute names and nothing else."""

    __slots__ = ("_values",)

    def __init__(self):
        object.__setattr__(self, "_values", {k: d for k, (d, _) in _FIELDS.items()})

    def __getattr__(self, name):
        if name in _FIELDS and name not in state.missing_options:
            return self._values[name]
        raise AttributeError(f"'rgbmatrix.core.RGBMatrixOptions' object has no attribute "
                             f"'{name}'")

    def __setattr__(self, name, value):
        if name not in _FIELDS or name in state.missing_options:
            raise AttributeError(f"'rgbmatrix.core.RGBMatrixOptions' object has no attribute "
                                 f"'{name}'")
        self._values[name] = _convert(name, _FIELDS[name][1], value)


class FrameCanvas:
    """One framebuffer. `pixels` holds what was last drawn into it (RGB24 bytes)."""

    def __init__(self, matrix: RGBMatrix, ident: int):
        self._matrix = matrix
        self.ident = ident
        self.width, self.height = matrix.width, matrix.height
        self.pixels = bytes(self.width * self.height * 3)
        self.drawn_brightness = matrix.brightness

    def SetImage(self, image, offset_x: int = 0, offset_y: int = 0, unsafe=True):
        if image.mode != "RGB":
            raise Exception("Currently, only RGB mode is supported for SetImage(). Please "
                            "create images with mode 'RGB' or convert first with image = "
                            "image.convert('RGB').")
        page = Image.frombytes("RGB", (self.width, self.height), self.pixels)
        page.paste(image, (offset_x, offset_y))  # clips at the edges like the binding
        self.pixels = page.tobytes()
        self.drawn_brightness = self._matrix.brightness
        _record("SetImage", self.ident, self.drawn_brightness)

    def SetPixel(self, x: int, y: int, r: int, g: int, b: int):
        if 0 <= x < self.width and 0 <= y < self.height:
            at = (y * self.width + x) * 3
            self.pixels = self.pixels[:at] + bytes((r, g, b)) + self.pixels[at + 3:]

    def Fill(self, r: int, g: int, b: int):
        self.pixels = bytes((r, g, b)) * (self.width * self.height)

    def Clear(self):
        self.pixels = bytes(self.width * self.height * 3)

    @property
    def brightness(self) -> int:
        return self._matrix.brightness


class RGBMatrix:
    """The panel. `front` is the canvas being shown."""

    def __init__(self, rows=None, chains=None, parallel=None, options=None):
        if options is None:
            options = RGBMatrixOptions()
        if not isinstance(options, RGBMatrixOptions):
            raise TypeError("Argument 'options' has incorrect type (expected "
                            "rgbmatrix.core.RGBMatrixOptions)")
        if rows is not None:
            options.rows = rows
        if chains is not None:
            options.chain_length = chains
        if parallel is not None:
            options.parallel = parallel
        state.options = options
        _record("RGBMatrix")
        if state.fail_init:
            raise Exception(state.fail_init)
        values = options._values
        _check_fatal(values)
        if not _valid(values):
            raise Exception("RGBMatrix creation failed")
        self.width = values["cols"] * values["chain_length"]
        self.height = values["rows"] * values["parallel"]
        self._brightness = values["brightness"]
        self.dropped_to = None
        if values["drop_privileges"]:
            # The library's default account when none is named.
            self.dropped_to = ((values["drop_priv_user"] or b"daemon").decode(),
                               (values["drop_priv_group"] or b"daemon").decode())
        self._own = 1
        self.front = FrameCanvas(self, 0)
        state.matrices.append(self)

    def CreateFrameCanvas(self) -> FrameCanvas:
        with _lock:
            state.canvases_created += 1
            if self._own >= 2:
                raise TooManyCanvases("a third canvas was requested; create one canvas once "
                                      "and swap it with SwapOnVSync")
            self._own += 1
        canvas = FrameCanvas(self, self._own - 1)
        _record("CreateFrameCanvas", canvas.ident)
        return canvas

    def SwapOnVSync(self, canvas: FrameCanvas, framerate_fraction: int = 1):
        if not isinstance(canvas, FrameCanvas) or canvas._matrix is not self:
            raise TypeError("SwapOnVSync needs a FrameCanvas of this matrix")
        if canvas is self.front:
            raise AssertionError("that canvas is already on the panel; swap the other one")
        _obey_control_file()
        if state.slow_sec:
            time.sleep(state.slow_sec)
        if state.hang:
            state.hanging.set()
            if not state.released.wait(_HANG_LIMIT_SEC):
                raise AssertionError("fake rgbmatrix hang was never released")
        if state.fail_after_swaps is not None and state.swaps >= state.fail_after_swaps:
            raise Exception("fake panel failure")
        state.swaps += 1
        state.swap_times.append(time.monotonic())
        shown, self.front = self.front, canvas
        _record("SwapOnVSync", canvas.ident)
        return shown

    def Clear(self):
        self.front.Clear()
        _record("Clear")

    def Fill(self, r: int, g: int, b: int):
        self.front.Fill(r, g, b)

    def SetPixel(self, x: int, y: int, r: int, g: int, b: int):
        self.front.SetPixel(x, y, r, g, b)

    def SetImage(self, image, offset_x: int = 0, offset_y: int = 0, unsafe=True):
        self.front.SetImage(image, offset_x, offset_y, unsafe)

    @property
    def brightness(self) -> int:
        return self._brightness

    @brightness.setter
    def brightness(self, value) -> None:
        value = operator.index(value)
        if not 0 <= value <= 100:
            raise ValueError(f"brightness {value} outside 0..100")
        self._brightness = value
        _record("brightness", value)


def _check_fatal(values: dict) -> None:
    mapping = values["hardware_mapping"]
    if mapping not in _MAX_PARALLEL:
        raise LibraryExit(f"there is no hardware mapping named {mapping!r}")
    if values["parallel"] > _MAX_PARALLEL[mapping]:
        raise LibraryExit(f"the {mapping!r} mapping supports fewer parallel chains")
    sequence = values["led_rgb_sequence"] or b""
    if sorted(sequence.upper()) != sorted(b"RGB"):
        raise LibraryExit(f"led_rgb_sequence {sequence!r} is not a permutation of RGB")


def _valid(values: dict) -> bool:
    rows = values["rows"]
    return (4 <= rows <= 64 and rows % 2 == 0 and values["cols"] >= 1
            and values["chain_length"] >= 1 and 1 <= values["parallel"] <= 3
            and 1 <= values["brightness"] <= 100 and 1 <= values["pwm_bits"] <= 11
            and values["scan_mode"] in (0, 1) and values["pwm_dither_bits"] <= 2)
