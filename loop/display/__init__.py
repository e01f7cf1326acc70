"""Display drivers: one small interface (base.py), one module per driver (headless,
rgbmatrix, emulator, framebuffer), the LED matrix pre-flight, the crash marker and panel lock
(guard.py), and the factory that picks and opens a driver (factory.py).

Must not be here: what to show when (that is loop/playback), HTTP, the library. A driver is
called from the display thread only (docs/architecture.md, "Packages").
"""
