"""Choosing and opening a display driver: the one place that knows every driver.

`open_driver()` never raises for driver problems: anything that goes wrong ends in an opened
`HeadlessDriver` plus a reason a person understands.
"""

from __future__ import annotations

import contextlib
import logging

from loop.display import guard
from loop.display.base import DisplayError, Driver
from loop.display.emulator import EmulatorDriver
from loop.display.framebuffer import FramebufferDriver
from loop.display.headless import HeadlessDriver
from loop.display.preflight import failed_reason, preflight
from loop.display.rgbmatrix import RGBMatrixDriver, import_rgbmatrix

logger = logging.getLogger("loop.display")

RESET_HINT = "POST /api/display/reset to try again"


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
    crashes = guard.init_crash_count(data_dir)
    if crashes >= display_cfg.max_init_crashes:
        times = "time" if crashes == 1 else "times"
        return _headless(display_cfg, f"panel init crashed {crashes} {times} in a row; "
                         f"{RESET_HINT}", log_)
    try:
        # Written before the library gets control: if it kills the process, this stays.
        guard.set_marker(data_dir, crashes + 1)
    except OSError as exc:
        log_.warning("display: cannot write the crash marker (%s); trying the panel without "
                     "crash-loop protection", exc)
    try:
        driver.open()
    except Exception as exc:
        # The process survived, so this was no crash: the count stays where it was.
        with contextlib.suppress(OSError):
            guard.set_marker(data_dir, crashes)
        if not isinstance(exc, DisplayError):
            log_.exception("display: unexpected error opening %s", driver.name)
        return _headless(display_cfg, str(exc) or repr(exc), log_)
    try:
        guard.clear_crash_marker(data_dir)
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
            module = import_rgbmatrix()
        except DisplayError as exc:
            return _headless(display_cfg, str(exc), log_)
    reason = failed_reason(preflight(display_cfg, root=root, euid=euid, module=module))
    if reason:
        return _headless(display_cfg, reason, log_)
    driver = RGBMatrixDriver(display_cfg, module, user=user, root=root, euid=euid)
    return _open_guarded(driver, display_cfg, data_dir, log_)


