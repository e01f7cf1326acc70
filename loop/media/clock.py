"""Clock items: the spec, the glyph frames drawn once, and the face the display thread shows.

A clock's frame file is drawn once, off the display thread, like any item: frame 0 is a
preview (the thumbnail), and frame 1 + k shows glyph `GLYPHS[k]` in every cell of the clock
(the fonts are monospaced, so every character has the same cell). `ClockFace` copies those
frames once when it is made (12 frames: 72 KB on a 64x32 panel), so the file is closed
again at once and no descriptor stays open. It shows a time by
copying, for each cell, that cell's rows out of the frame of the character it needs into a
frame buffer: a few dozen slice copies into a buffer made once, no Pillow, no allocation of
frames, and only when the text changes (once a minute, or a second). Rotation is handled by
mapping each cell to the rectangle it occupies in the device's scan order.

The time itself comes from the caller (the player), as an aware datetime in the schedule's
time zone: the face knows no clock, so DST changes and clock jumps are the caller's
arithmetic, and tests inject any instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from PIL import Image

from loop.media.errors import MediaError
from loop.media.fonts import FONT_NAMES, Fonts
from loop.media.frames import PIXEL_FORMATS, FrameWriter
from loop.media.geometry import Target
from loop.media.image import Rendered
from loop.media.pixels import to_pixels, turned
from loop.media.text import bad, canonical_json, color, rgb

# HH: 00-23, H: 0-23 (a blank instead of the leading zero), hh: 01-12, h: 1-12.
FORMATS = ("HH:MM", "H:MM", "hh:MM", "h:MM")
GLYPHS = "0123456789: "
CLOCK_KEYS = ("format", "seconds", "color", "background", "font")
DEFAULTS = {"format": "HH:MM", "seconds": False, "color": "#ff8000", "background": "#000000",
            "font": "auto"}


@dataclass(frozen=True)
class ClockSpec:
    format: str
    seconds: bool
    color: str
    background: str
    font: str

    @property
    def cells(self) -> int:
        return 8 if self.seconds else 5

    def canonical(self) -> bytes:
        return canonical_json({"clock": asdict(self)})

    def name(self) -> str:
        return f"Clock {self.format}" + (":SS" if self.seconds else "")


def parse_clock(value, prefix: str = "clock.") -> ClockSpec:
    """A ClockSpec from `{"format", "seconds", "color", "background", "font"}`; 400 naming
    the field."""
    if not isinstance(value, dict):
        raise bad(prefix.rstrip("."), "must be an object like {\"format\": \"HH:MM\"}")
    for key in value:
        if key not in CLOCK_KEYS:
            raise bad(f"{prefix}{str(key)[:40]}", f"unknown field; allowed: "
                      f"{', '.join(CLOCK_KEYS)}")
    values = dict(DEFAULTS, **value)
    if values["format"] not in FORMATS:
        raise bad(f"{prefix}format", f"must be one of {', '.join(FORMATS)}")
    if not isinstance(values["seconds"], bool):
        raise bad(f"{prefix}seconds", "must be true or false")
    if values["font"] not in FONT_NAMES:
        raise bad(f"{prefix}font", f"must be one of {', '.join(FONT_NAMES)}")
    return ClockSpec(values["format"], values["seconds"],
                     color(f"{prefix}color", values["color"]),
                     color(f"{prefix}background", values["background"]), values["font"])


def label(when: datetime, fmt: str, seconds: bool) -> str:
    """The clock's text at `when` (wall time of its zone), always the same length."""
    hour = when.hour
    if fmt.startswith("h"):
        hour = hour % 12 or 12
    text = f"{hour:02d}" if fmt[1] in "Hh" else f"{hour:2d}"
    text += f":{when.minute:02d}"
    if seconds:
        text += f":{when.second:02d}"
    return text


# ---- drawing (a job or request thread) -------------------------------------------------------
def render_clock(spec: ClockSpec, frames_path: str, target: Target, fonts: Fonts, media_cfg,
                 *, sync: bool = True, **_) -> Rendered:
    """The preview and one frame per glyph; `Rendered.extra["layout"]` places the cells."""
    face = fonts.face(spec.font, target.height, target.width, spec.cells)
    width = face.advance * spec.cells
    x0, y0 = max(0, (target.width - width) // 2), max(0, (target.height - face.height) // 2)
    frame_bytes = target.width * target.height * PIXEL_FORMATS[target.pixel_format][1]
    if (len(GLYPHS) + 1) * (frame_bytes + 4) > media_cfg.max_item_mb * 1024 * 1024:
        raise MediaError(422, "too_large", "a clock needs 13 panel frames; media.max_item_mb "
                         "is too small for that on this panel")
    masks = {ch: fonts.mask(face, ch) for ch in GLYPHS}
    sample = "12:34:56"[:spec.cells]

    def draw(chars: str) -> bytes:
        canvas = Image.new("RGB", (target.width, target.height), rgb(spec.background))
        for n, ch in enumerate(chars):
            canvas.paste(rgb(spec.color), (x0 + n * face.advance, y0), masks[ch])
        return to_pixels(canvas, target.pixel_format, target.rotation)

    writer = FrameWriter(frames_path, target.width, target.height, target.pixel_format)
    try:
        writer.add(draw(sample), 1000)
        for ch in GLYPHS:
            writer.add(draw(ch * spec.cells), 1000)
        writer.finish(sync=sync)
    finally:
        writer.close()
    layout = {"format": spec.format, "seconds": spec.seconds, "x": x0, "y": y0,
              "cell_width": face.advance, "cell_height": face.height, "cells": spec.cells,
              "rotation": target.rotation, "font": face.strike, "scale": face.scale}
    return Rendered("clock", "json", width, face.height, 1, 0, [], "json",
                    extra={"layout": layout, "spec": {"clock": asdict(spec)}})


# ---- showing (the display thread) ------------------------------------------------------------
def device_rect(x: int, y: int, w: int, h: int, width: int, height: int,
                rotation: int) -> tuple[int, int, int, int]:
    """Where the logical rectangle (x, y, w, h) of a width x height picture lies in the
    device's scan order after turning it `rotation` degrees clockwise."""
    if rotation == 90:
        return height - y - h, x, h, w
    if rotation == 180:
        return width - x - w, height - y - h, w, h
    if rotation == 270:
        return y, width - x - w, h, w
    return x, y, w, h


class ClockFace:
    """A clock item's frames, shown as the time: a FrameFile-like source of one frame.

    `show(when)` composes the time into the spare of two buffers when its text changed (so a
    reader of the previous frame, such as the preview, is never written under) and returns
    True; the display thread then shows `frame(0)`."""

    count = 1
    durations = (1000,)

    def __init__(self, frames, layout: dict):
        if frames.count != len(GLYPHS) + 1:
            raise ValueError("not a clock frame file")
        self.width, self.height = frames.width, frames.height
        self.pixel_format = frames.pixel_format
        self.format, self.seconds = layout["format"], bool(layout["seconds"])
        bpp = PIXEL_FORMATS[frames.pixel_format][1]
        device_width = turned(self.width, self.height, layout["rotation"])[0]
        self._cells = []  # per cell: the byte ranges of its rows in the device frame
        for n in range(layout["cells"]):
            dx, dy, dw, dh = device_rect(layout["x"] + n * layout["cell_width"], layout["y"],
                                         layout["cell_width"], layout["cell_height"],
                                         self.width, self.height, layout["rotation"])
            rows = []
            for row in range(dy, dy + dh):
                start = (row * device_width + dx) * bpp
                rows.append((start, start + dw * bpp))
            self._cells.append(tuple(rows))
        blank = frames.frame(1 + GLYPHS.index(" "))
        self._buffers = (bytearray(blank), bytearray(blank))
        self._glyph_frames = {ch: bytes(frames.frame(1 + k)) for k, ch in enumerate(GLYPHS)}
        self._shown = 0
        self.text: str | None = None

    def show(self, when: datetime) -> bool:
        """Compose the time at `when`; False when the text on the panel is already right."""
        text = label(when, self.format, self.seconds)
        if text == self.text:
            return False
        spare = 1 - self._shown
        buffer = self._buffers[spare]
        for rows, ch in zip(self._cells, text):
            source = self._glyph_frames[ch]
            for start, end in rows:
                buffer[start:end] = source[start:end]
        self._shown, self.text = spare, text
        return True

    def frame(self, index: int = 0):
        return self._buffers[self._shown]

    def close(self) -> None:
        pass  # the face holds copies only
