"""The driver interface every display driver implements, and the values drivers share.

Drivers are called from the display thread only; none is thread-safe. This module knows no
concrete driver: `loop/display/factory.py` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, SKIP = "pass", "fail", "skip"


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


def frame_copy(frame, expected: int) -> bytes:
    """The frame as our own bytes; never keeps the caller's buffer (often an mmap view)."""
    with memoryview(frame) as view:
        if view.nbytes != expected:
            raise ValueError(f"frame has {view.nbytes} bytes; the panel needs {expected} "
                             "(width x height x 3, RGB24)")
        return view.tobytes()


def check_percent(percent) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"brightness must be a whole number 0..100, not {percent!r}")
    return percent


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
        self.brightness = check_percent(percent)

    def clear(self) -> None:
        """Blank the panel."""

    def close(self) -> None:
        """Blank the panel and let go of it."""


