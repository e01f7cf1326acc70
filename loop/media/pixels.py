"""Pixel formats: a panel-sized RGB image <-> the bytes a driver shows, rotation, and software
brightness. Every conversion is a handful of whole-image Pillow operations (C loops); no
Python code runs per pixel.

Formats (the names frames.PIXEL_FORMATS stores):

- `RGB24`: R, G, B bytes. The LED matrix.
- `RGB565`: 16 bits per pixel, little-endian, red in the top five bits: byte 0 is
  `GGGBBBBB`, byte 1 is `RRRRRGGG`. What fbtft / mipi-dbi SPI LCDs (ILI9341, ST7789...) and
  16-bit HDMI framebuffers use. Pillow has no RGB565 *packer*, so it is built from per-channel
  `point` tables, `ImageChops.add` (the bit fields never overlap, so the clipped sum is an OR)
  and `merge("LA", (low, high))`, whose raw bytes interleave low and high byte per pixel.
- `BGRX`: 32 bits per pixel, little-endian XRGB8888: bytes B, G, R, 0 (32-bit framebuffers).

Rotation is the number of degrees (0, 90, 180, 270) the picture is turned clockwise on its way
to the device. Frames are stored already turned, in the device's own scan order, so playback
stays a plain copy; `decode()` turns them back for previews and thumbnails. A frame's logical
size (width x height, what media is fitted to) is the device's size with width and height
swapped for 90 and 270.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageChops

from loop.media.errors import MediaError
from loop.media.frames import PIXEL_FORMATS

ROTATIONS = (0, 90, 180, 270)
# Pillow's ROTATE_90 turns counter-clockwise; these turn clockwise (encode) and back (decode).
_CLOCKWISE = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_90}
_BACK = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
         270: Image.Transpose.ROTATE_270}


def _table(fn) -> list[int]:
    return [fn(v) & 0xFF for v in range(256)]


def _expand5(v: int) -> int:
    return (v << 3) | (v >> 2)


def _expand6(v: int) -> int:
    return (v << 2) | (v >> 4)


# RGB -> RGB565: high byte RRRRRGGG, low byte GGGBBBBB.
_R_HIGH = _table(lambda v: v & 0xF8)
_G_HIGH = _table(lambda v: v >> 5)
_G_LOW = _table(lambda v: (v << 3) & 0xE0)
_B_LOW = _table(lambda v: v >> 3)
# RGB565 -> RGB: fields out of each byte, widened to 8 bits by repeating their top bits.
_R_FROM_HIGH = _table(lambda v: _expand5(v >> 3))
_G6_FROM_HIGH = _table(lambda v: (v & 0x07) << 3)
_G6_FROM_LOW = _table(lambda v: v >> 5)
_G6_TO_8 = _table(lambda v: _expand6(v & 0x3F))
_B_FROM_LOW = _table(lambda v: _expand5(v & 0x1F))
# A 6-bit green back into its two bytes.
_G6_TO_HIGH = _table(lambda v: (v & 0x3F) >> 3)
_G6_TO_LOW = _table(lambda v: (v & 0x07) << 5)


def bytes_per_pixel(pixel_format: str) -> int:
    try:
        return PIXEL_FORMATS[pixel_format][1]
    except KeyError:
        raise ValueError(f"unknown pixel format {pixel_format!r}") from None


def check_rotation(rotation: int) -> int:
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of 0, 90, 180, 270, not {rotation!r}")
    return rotation


def turned(width: int, height: int, rotation: int) -> tuple[int, int]:
    """The size after turning a width x height picture by `rotation` degrees."""
    return (height, width) if check_rotation(rotation) in (90, 270) else (width, height)


def encode(img: Image.Image, pixel_format: str, rotation: int = 0) -> bytes:
    """A panel-sized RGB image -> the bytes the driver shows (turned, then packed)."""
    if check_rotation(rotation):
        img = img.transpose(_CLOCKWISE[rotation])
    if img.mode != "RGB":
        img = img.convert("RGB")
    if pixel_format == "RGB24":
        return img.tobytes()
    if pixel_format == "BGRX":
        return img.tobytes("raw", "BGRX")
    if pixel_format == "RGB565":
        r, g, b = img.split()
        high = ImageChops.add(r.point(_R_HIGH), g.point(_G_HIGH))
        low = ImageChops.add(g.point(_G_LOW), b.point(_B_LOW))
        return Image.merge("LA", (low, high)).tobytes()
    raise ValueError(f"unknown pixel format {pixel_format!r}")


def decode(data, width: int, height: int, pixel_format: str = "RGB24",
           rotation: int = 0) -> Image.Image:
    """Stored bytes of a width x height (logical size) frame -> an upright RGB image."""
    size = turned(width, height, rotation)
    expected = size[0] * size[1] * bytes_per_pixel(pixel_format)
    data = bytes(data)
    if len(data) != expected:
        raise ValueError(f"frame has {len(data)} bytes; {width}x{height} {pixel_format} "
                         f"needs {expected}")
    if pixel_format == "RGB24":
        img = Image.frombytes("RGB", size, data)
    elif pixel_format == "BGRX":
        img = Image.frombytes("RGB", size, data, "raw", "BGRX")
    else:
        low, high = Image.frombytes("LA", size, data).split()
        g6 = ImageChops.add(high.point(_G6_FROM_HIGH), low.point(_G6_FROM_LOW))
        img = Image.merge("RGB", (high.point(_R_FROM_HIGH), g6.point(_G6_TO_8),
                                  low.point(_B_FROM_LOW)))
    if rotation:
        img = img.transpose(_BACK[rotation])
    return img


def scale(data, width: int, height: int, pixel_format: str, percent: int) -> bytes:
    """Software brightness: every channel of a stored frame times percent/100.

    `width` x `height` is the frame's stored (device) size; rotation does not matter here.
    One extra pass per frame and a frame-sized buffer: what a panel without a backlight pays
    for a brightness below 100 %."""
    bpp = bytes_per_pixel(pixel_format)
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be 0..100, not {percent!r}")
    if percent == 100:
        return bytes(data)
    byte, red, five, six = _scale_tables(percent)
    if pixel_format != "RGB565":
        # Byte-per-channel formats: one lookup over all bytes (the X byte stays 0).
        return Image.frombytes("L", (width * bpp, height), bytes(data)).point(byte).tobytes()
    low, high = Image.frombytes("LA", (width, height), bytes(data)).split()
    green = ImageChops.add(high.point(_G6_FROM_HIGH), low.point(_G6_FROM_LOW)).point(six)
    new_high = ImageChops.add(high.point(red), green.point(_G6_TO_HIGH))
    new_low = ImageChops.add(green.point(_G6_TO_LOW), low.point(five))
    return Image.merge("LA", (new_low, new_high)).tobytes()


@lru_cache(maxsize=8)
def _scale_tables(percent: int) -> tuple[list[int], ...]:
    """(bytes, red field of the high byte, 5-bit field, 6-bit field) scaled to percent."""
    five = _table(lambda v: ((v & 0x1F) * percent + 50) // 100)
    return (_table(lambda v: (v * percent + 50) // 100),
            _table(lambda v: five[v >> 3] << 3), five,
            _table(lambda v: ((v & 0x3F) * percent + 50) // 100))


def to_pixels(img: Image.Image, pixel_format: str, rotation: int = 0) -> bytes:
    """Panel-sized RGB image -> the bytes the driver wants (RGB24, RGB565, BGRX), turned
    clockwise by `rotation` degrees."""
    try:
        return encode(img, pixel_format, rotation)
    except ValueError as exc:
        raise MediaError(500, "internal", str(exc)) from None


def frame_image(frame, width: int, height: int, pixel_format: str = "RGB24",
                rotation: int = 0) -> Image.Image:
    """A stored frame back as an upright RGB image of width x height (preview, thumbnails)."""
    try:
        return decode(frame, width, height, pixel_format, rotation)
    except ValueError as exc:
        raise MediaError(500, "internal", str(exc)) from None
