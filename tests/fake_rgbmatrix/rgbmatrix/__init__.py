"""A stand-in for hzeller's `rgbmatrix` Python binding, for tests on any machine, faithful to
the real one (rpi-rgb-led-matrix at 8907235, the commit deploy/install.sh pins).

Put `tests/fake_rgbmatrix` on `sys.path` (or PYTHONPATH) and `import rgbmatrix` finds this.
tests/test_rgbmatrix_fidelity.py runs the same calls against this fake and the real library
(built from source, on tests/hwsim's simulated Pi) and checks that they end the same way;
tests/hwsim/FINDINGS.md says why each behaviour is what it is. In short:

- `RGBMatrixOptions` has the real names (rp1_rio, no do_gpio_init), types and defaults.
  String options take `str` only (the setter calls `.encode()`: bytes and None raise
  AttributeError) and read back as bytes; integer options convert like Cython (floats
  truncate, OverflowError outside uint8_t/uint32_t/int). Reading `panel_type` or
  `pixel_mapper_config` before setting it reads a NULL C string: the process dies of SIGSEGV,
  here too (so `hasattr(options, "panel_type")` kills it).
- `RGBMatrix(options=...)` never raises for a bad configuration. What the C++ Validate()
  refuses (and gpio_slowdown > 10, rp1_rio > 1, no GPIO access) prints the library's message
  and returns a matrix holding NULL: its next call, or its garbage collection, is SIGSEGV.
  An unknown hardware_mapping (compute-module included: the pip build lacks it) and too many
  parallel chains for the mapping abort() (SIGABRT); output-enable on GPIO 18 with hardware
  pulsing exits(1) without /dev/mem ("Need root") or with snd_bcm2835 loaded. An exception
  while RGBMatrix() converts its arguments (TypeError, OverflowError) is SIGSEGV too.
- `matrix.brightness` takes 0..255 (uint8) and reads back what was set; what is drawn is
  clamped to 1..100 (so 0 is not off: Clear() is). Canvases: no limit (a warning at 500).
  `SwapOnVSync(canvas)` waits for the next refresh holding the GIL and returns a new
  FrameCanvas object for the framebuffer that was on the panel. `SetImage` takes mode "RGB"
  only (any other mode raises Exception); `FrameCanvas()` made by hand has no framebuffer
  and raises Exception on use.

Test aids (not in the real binding): `state` (calls, counts, knobs: see `_State`),
`reset()`, `release()`, `matrix.front` (the framebuffer on the panel, with `pixels`,
`drawn_brightness`, `ident`), `matrix.dropped_to` (the (user, group) the library would drop
root to; the fake never changes this process's ids), canvas `ident`/`pixels`.
"""

from __future__ import annotations

from .core import (  # noqa: F401 - the binding's names and the test aids
    DEAD_CANVAS,
    MAPPINGS,
    MULTIPLEXERS,
    ONLY_RGB,
    FrameCanvas,
    LibraryCrash,
    LibraryExit,
    RGBMatrix,
    RGBMatrixOptions,
    TooManyCanvases,
    release,
    reset,
    segfault,
    state,
    validate,
)

__version__ = "0.0-fake"
