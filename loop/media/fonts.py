"""Bitmap fonts for text and clocks: the X11 misc-fixed fonts (Debian's `xfonts-base`), the
family hzeller's own text scroller uses, read through FreeType's PCF driver.

Pillow opens a `.pcf.gz` with `ImageFont.truetype(path, size)` when `size` is the strike's
own pixel height (measured on Pillow 9.4 with FreeType 2.12 and Pillow 13 with FreeType
2.14): glyphs come out as 1-bit masks, so every pixel is fully on or off, sharp on an LED
panel. The fonts cover Latin with accents, Greek, Cyrillic and many symbols; a character they
lack is drawn as the font's own default glyph (a dotted box), never an error. Right-to-left
shaping and colour emoji are out of scope.

A size is picked from the rows available: the tallest strike that fits. Above twice the
tallest strike the tallest is scaled up by a whole factor (3 x 18 px = 54 px on a 64-row
panel), which keeps the pixels square and sharp.

Without the fonts (a developer laptop), Pillow's own built-in bitmap font (Latin-1 only,
11 px, scaled the same way) is used instead and `Fonts.fallback_reason` says why; characters
outside Latin-1 then become "?".
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger("loop.fonts")

DEFAULT_DIR = "/usr/share/fonts/X11/misc"
# Strike name (the file's base name, as hzeller's text-scroller names them): pixel height.
# All are misc-fixed ISO 10646 (Unicode) fonts from xfonts-base.
STRIKES = {
    "4x6": 6, "5x7": 7, "5x8": 8, "6x9": 9, "6x10": 10, "6x12": 12, "6x13": 13, "7x13": 13,
    "7x14": 14, "8x13": 13, "9x15": 15, "9x18": 18, "10x20": 20,
    "6x13B": 13, "7x13B": 13, "7x14B": 14, "8x13B": 13, "9x15B": 15, "9x18B": 18,
}
# Families, smallest first. Bold reads better on LEDs; below 13 px there is no bold strike.
FAMILIES = {
    "bold": ("4x6", "5x7", "5x8", "6x10", "6x13B", "7x14B", "9x15B", "9x18B"),
    "regular": ("4x6", "5x7", "5x8", "6x9", "6x10", "6x12", "6x13", "7x14", "9x15", "9x18",
                "10x20"),
}
DEFAULT_FAMILY = "bold"
FONT_NAMES = ("auto",) + tuple(FAMILIES) + tuple(STRIKES)
FALLBACK = "builtin"


@dataclass(frozen=True)
class Face:
    """One font at one size: the strike, its whole-number scale and its cell metrics."""
    strike: str  # a STRIKES name, or FALLBACK
    scale: int
    height: int  # rendered line height in panel pixels (ascent + descent, scaled)
    advance: int  # rendered width of one cell (these fonts are monospaced)


class Fonts:
    """The fonts found in `directory`, loaded on first use and kept (a few KB each).

    Rendering holds a lock: a Pillow font object is not meant to be shared by threads
    rendering at the same time (a request thread and the maintenance thread may)."""

    def __init__(self, directory: str = DEFAULT_DIR):
        self.directory = directory
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()
        self.available = tuple(name for name in STRIKES if os.path.exists(self._path(name)))
        self.fallback_reason = None if self.available else (
            f"no misc-fixed fonts in {directory} (install Debian's xfonts-base); text uses "
            "Pillow's built-in Latin-1 font instead")

    def _path(self, strike: str) -> str:
        return os.path.join(self.directory, f"{strike}.pcf.gz")

    def _font(self, strike: str):
        font = self._loaded.get(strike)
        if font is None:
            if strike == FALLBACK:
                loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
                font = loader()  # Pillow >= 10.1 would give a vector font by load_default
            else:
                font = ImageFont.truetype(self._path(strike), STRIKES[strike])
            self._loaded[strike] = font
        return font

    # ---- choosing a size -----------------------------------------------------------------
    def face(self, name: str, rows: int, width: int | None = None, cells: int = 0) -> Face:
        """The face for font `name` ("auto", a family or a strike) on `rows` panel rows.

        With `width` and `cells`, `cells` characters must also fit in `width` pixels (a
        clock). A strike named explicitly is used at its own size."""
        if not self.available:
            return self._fallback_face(rows, width, cells)
        family = FAMILIES.get(DEFAULT_FAMILY if name == "auto" else name)
        if family is None:  # a strike by name; one that is not installed falls back
            strike = name if name in self.available else self._pick(FAMILIES[DEFAULT_FAMILY],
                                                                     rows, width, cells)
            return self._make_face(strike, 1)
        return self._make_face(*self._pick(family, rows, width, cells, scaled=True))

    def _pick(self, family, rows, width, cells, scaled=False):
        strikes = [s for s in family if s in self.available] or list(self.available)
        tallest = max(strikes, key=lambda s: STRIKES[s])
        best = None
        for strike in strikes:
            # only the tallest strike is scaled up, and only by whole factors
            for scale in range(1, (rows // STRIKES[strike] if strike == tallest else 1) + 1):
                face = self._make_face(strike, scale)
                if face.height > rows or (width and face.advance * cells > width):
                    continue
                if best is None or face.height > best.height:
                    best = face
        if best is None:  # nothing fits: the smallest there is, cut at the edges
            best = self._make_face(min(strikes, key=lambda s: STRIKES[s]), 1)
        return (best.strike, best.scale) if scaled else best.strike

    def _fallback_face(self, rows, width, cells) -> Face:
        base = self._make_face(FALLBACK, 1)
        scale = max(1, rows // base.height)
        if width and cells:
            scale = max(1, min(scale, width // (base.advance * cells)))
        return self._make_face(FALLBACK, scale)

    def _make_face(self, strike: str, scale: int) -> Face:
        with self._lock:
            font = self._font(strike)
            if strike == FALLBACK:
                box = font.getbbox("Hgy")
                height = box[3]
            else:
                ascent, descent = font.getmetrics()
                height = ascent + descent
            advance = int(font.getlength("0"))
        return Face(strike, scale, height * scale, advance * scale)

    # ---- drawing -------------------------------------------------------------------------
    def printable(self, face: Face, text: str) -> str:
        """`text` as the face can draw it: the built-in font knows Latin-1 only."""
        if face.strike != FALLBACK:
            return text
        return "".join(ch if ord(ch) < 256 else "?" for ch in text)

    def measure(self, face: Face, text: str) -> int:
        """Width in panel pixels of `text` in `face`."""
        with self._lock:
            length = self._font(face.strike).getlength(self.printable(face, text))
        return int(length) * face.scale

    def mask(self, face: Face, text: str) -> Image.Image:
        """A 1-bit-valued "L" image of `text` (255 = lit), `measure` wide and `face.height`
        tall, already scaled."""
        text = self.printable(face, text)
        base_height = face.height // face.scale
        with self._lock:
            font = self._font(face.strike)
            width = max(1, int(font.getlength(text)))
            img = Image.new("L", (width, base_height))
            draw = ImageDraw.Draw(img)
            draw.fontmode = "1"  # no anti-aliasing, also for the built-in font
            draw.text((0, 0), text, font=font, fill=255)
        if face.scale > 1:
            img = img.resize((width * face.scale, base_height * face.scale),
                             Image.Resampling.NEAREST)
        return img


_shared: dict[str, Fonts] = {}
_shared_lock = threading.Lock()


def fonts_in(directory: str) -> Fonts:
    """The process-wide `Fonts` of a directory (loaded fonts are kept for reuse)."""
    with _shared_lock:
        fonts = _shared.get(directory)
        if fonts is None:
            fonts = _shared[directory] = Fonts(directory)
            if fonts.fallback_reason:
                log.warning("fonts: %s", fonts.fallback_reason)
        return fonts
