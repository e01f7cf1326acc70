"""Memory bombs: small files that decode into a lot of memory, each within `media.max_pixels`
and the upload limits. Built here, byte by byte, for the tests (tests/test_bombs.py) and
`make bench` (bench/memory.py); none is a fixture on disk.

- `png_rgba`: a 6300x6300 RGBA PNG of one colour: ~150 KB, 159 MB once decoded.
- `webp_animated`: a 6000x6000 animated WebP of two 1x1 frames: ~140 bytes; libwebp's
  animation decoder composites every frame on full canvases (144 MB each).
- `gif_many_frames`: 20,000 one-pixel frames on a 6000x6000 logical screen: ~460 KB; Pillow
  composites each frame on a full-screen canvas.
- `mkv_patched`: a real 256x256 FFV1 video in Matroska whose PixelWidth/PixelHeight say
  6300x6300: FFV1 takes its picture size from the container, so ffmpeg allocates 6300x6300
  frames.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tempfile
import zlib

from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgba(width: int = 6300, height: int = 6300) -> bytes:
    """A real RGBA PNG of one colour, compressed row by row (never whole in memory)."""
    pack = zlib.compressobj(9)
    row = b"\x00" + bytes((30, 60, 90, 255)) * width  # filter type 0, then the pixels
    parts = [pack.compress(row) for _ in range(height)]
    parts.append(pack.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bit, RGBA
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + \
        _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def _riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def _u24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def _tiny_vp8l(colour) -> bytes:
    """The VP8L chunk (header included) of a lossless 1x1 WebP made by Pillow."""
    out = io.BytesIO()
    Image.new("RGBA", (1, 1), colour).save(out, "WEBP", lossless=True)
    data = out.getvalue()
    at = data.index(b"VP8L")
    size = struct.unpack("<I", data[at + 4:at + 8])[0]
    return data[at:at + 8 + size + (size % 2)]


def webp_animated(width: int = 6000, height: int = 6000, frames: int = 2) -> bytes:
    """An animated WebP: a width x height canvas, `frames` frames of 1x1 pixel each."""
    vp8x = bytes([0x02 | 0x10, 0, 0, 0]) + _u24(width - 1) + _u24(height - 1)
    anim = bytes(4) + struct.pack("<H", 0)  # black background, loop forever
    body = b"WEBP" + _riff_chunk(b"VP8X", vp8x) + _riff_chunk(b"ANIM", anim)
    for n in range(frames):
        pixel = _tiny_vp8l((255, 0, 0, 255) if n % 2 else (0, 0, 255, 255))
        header = _u24(0) + _u24(0) + _u24(0) + _u24(0) + _u24(100) + b"\x00"
        body += _riff_chunk(b"ANMF", header + pixel)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_many_frames(count: int = 20_000, screen: int = 6000) -> bytes:
    """`count` frames of one pixel each on a screen x screen logical screen (~23 bytes a
    frame: a graphic control extension with a 20 ms delay, a 1x1 image descriptor, its LZW
    data)."""
    out = io.BytesIO()
    Image.new("P", (1, 1), 1).save(out, "GIF")
    data = out.getvalue()
    start = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the palette
    while data[start] == 0x21:  # extensions up to the image descriptor
        start += 2
        while data[start]:
            start += data[start] + 1
        start += 1
    end = data.rindex(b"\x3b")
    frame = b"\x21\xf9\x04\x00\x02\x00\x00\x00" + data[start:end]
    head = data[:6] + struct.pack("<HH", screen, screen) + data[10:start]
    return head + frame * count + b"\x3b"


def _ebml_uint_element(element_id: bytes, data: bytes, old: int, value: int) -> bytes:
    """`data` with the two-byte unsigned-integer element `element_id` holding `old` set to
    `value` (the element, its size byte 0x82 and its old value are matched together, so no
    other byte that happens to equal the id is touched)."""
    pattern = element_id + b"\x82" + old.to_bytes(2, "big")
    if data.count(pattern) != 1:
        raise ValueError("the element is not where it was expected")
    return data.replace(pattern, element_id + b"\x82" + value.to_bytes(2, "big"))


def mkv_patched(width: int = 6300, height: int = 6300, frames: int = 3) -> bytes:
    """A real 256x256 FFV1 Matroska file (made by ffmpeg) claiming width x height."""
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        raise RuntimeError("ffmpeg is not installed")
    with tempfile.TemporaryDirectory(prefix="loop-bomb-") as work:
        path = os.path.join(work, "small.mkv")
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc=size=256x256:rate=10", "-frames:v", str(frames),
                        "-c:v", "ffv1", "-level", "1", "-pix_fmt", "yuv420p",
                        "-fflags", "+bitexact", path],
                       check=True, timeout=60)
        with open(path, "rb") as fh:
            data = fh.read()
    data = _ebml_uint_element(b"\xb0", data, 256, width)  # PixelWidth
    return _ebml_uint_element(b"\xba", data, 256, height)  # PixelHeight
