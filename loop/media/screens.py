"""Status screens (boot URL, empty-library hint) drawn with a 3x5 pixel font.

Pillow's default font is 6 px wide per character, so an address like `192.168.100.200` does not
fit a 64-pixel-wide panel; this font does (16 characters a line), and is scaled up by whole
pixels on larger panels.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

GLYPH_W, GLYPH_H = 3, 5
_FONT_ROWS = {  # character: five rows of three pixels, 1 = lit
    "0": "111 101 101 101 111", "1": "010 110 010 010 111", "2": "111 001 111 100 111",
    "3": "111 001 111 001 111", "4": "101 101 111 001 001", "5": "111 100 111 001 111",
    "6": "111 100 111 101 111", "7": "111 001 010 010 010", "8": "111 101 111 101 111",
    "9": "111 101 111 001 111", ".": "000 000 000 000 010", ":": "000 010 000 010 000",
    "/": "001 001 010 100 100", "-": "000 000 111 000 000", "A": "010 101 111 101 101",
    "B": "110 101 110 101 110", "C": "011 100 100 100 011", "D": "110 101 101 101 110",
    "E": "111 100 110 100 111", "F": "111 100 110 100 100", "G": "011 100 101 101 011",
    "H": "101 101 111 101 101", "I": "111 010 010 010 111", "J": "001 001 001 101 010",
    "K": "101 101 110 101 101", "L": "100 100 100 100 111", "M": "101 111 111 101 101",
    "N": "110 101 101 101 101", "O": "010 101 101 101 010", "P": "110 101 110 100 100",
    "Q": "010 101 101 110 011", "R": "110 101 110 101 101", "S": "011 100 010 001 110",
    "T": "111 010 010 010 010", "U": "101 101 101 101 111", "V": "101 101 101 101 010",
    "W": "101 101 111 111 101", "X": "101 101 010 101 101", "Y": "101 101 010 010 010",
    "Z": "111 001 010 100 111", " ": "000 000 000 000 000",
}


def _glyph(rows: str) -> tuple[tuple[int, int], ...]:
    return tuple((x, y) for y, row in enumerate(rows.split()) for x, bit in enumerate(row)
                 if bit == "1")


FONT = {ch: _glyph(rows) for ch, rows in _FONT_ROWS.items()}


def text_width(text: str, scale: int = 1) -> int:
    """Pixels a line of `text` takes (one blank column between glyphs)."""
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


def wrap(text: str, width: int, scale: int = 1) -> list[str]:
    """Split `text` into lines that fit `width` pixels (breaking anywhere, addresses have no
    spaces to break at)."""
    per_line = max(1, (width // scale + 1) // (GLYPH_W + 1))
    return [text[i:i + per_line] for i in range(0, len(text), per_line)] or [""]


def render(lines: list[str], width: int, height: int,
           colours=((255, 170, 0), (0, 190, 255))) -> Image.Image:
    """An RGB image of `lines`, the first in the first colour, the rest in the second."""
    scale = max(1, min(width // 64, height // 32))
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    y = scale
    for n, line in enumerate(lines):
        for part in wrap(line.upper(), width - 2 * scale, scale):
            if y + GLYPH_H * scale > height:
                return img
            _draw_line(draw, part, scale, y, colours[0 if n == 0 else 1])
            y += (GLYPH_H + 1) * scale
    return img


def _draw_line(draw, text: str, scale: int, y: int, colour) -> None:
    x = scale
    for ch in text:
        for gx, gy in FONT.get(ch, FONT["-"]):
            left, top = x + gx * scale, y + gy * scale
            draw.rectangle((left, top, left + scale - 1, top + scale - 1), fill=colour)
        x += (GLYPH_W + 1) * scale
