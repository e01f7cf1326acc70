"""The headless driver: no panel. The fallback whenever a panel cannot be used, and what
`make run` uses."""

from __future__ import annotations

from loop.display.base import Driver, panel_size


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


