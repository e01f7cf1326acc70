"""Decoding untrusted images and animations (Pillow) into panel-sized frames with timings.

Pillow opens a file only with a `formats=` list. Every limit is checked before the work it
protects: pixels from the header before decoding, frame count (GIFs by a bounded block walk)
before rendering, the deadline between frames. `Rendered`, what a render made, is shared
with video (loop/media/video.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, features

from loop.media import budget
from loop.media.errors import MediaError, storage_error
from loop.media.frames import PIXEL_FORMATS, FrameWriter
from loop.media.geometry import PIXEL_ART_MAX_SIDE, Target, fit_image
from loop.media.pixels import to_pixels

log = logging.getLogger("loop.media")

IMAGE_FORMATS = ["GIF", "PNG", "JPEG", "WEBP", "BMP"]


def _avif_decoder() -> bool:
    try:
        return features.check_module("avif")  # Pillow >= 11.2 built with libavif
    except ValueError:  # older Pillow (Debian Bookworm's 9.4) has no such module
        return False


if _avif_decoder():
    IMAGE_FORMATS.append("AVIF")
EXTENSIONS = {"GIF": "gif", "PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp",
              "AVIF": "avif"}
EXIF_ORIENTATION = 0x0112

# A decompression-bomb warning is an error here; the real limit is checked from the header.
warnings.simplefilter("error", Image.DecompressionBombWarning)


@dataclass
class Rendered:
    kind: str  # image | animation | video
    format: str
    width: int
    height: int
    frames: int
    duration_ms: int
    notes: list[str] = field(default_factory=list)
    ext: str = "bin"  # extension of the stored original, from the bytes
    extra: dict = field(default_factory=dict)  # kind-specific metadata (a clock's layout)
    thumb_frame: int = 0  # the frame the thumbnail shows (a marquee's text in view)


def gif_delay(duration) -> int:
    """Browser rule: a delay of 10 ms or less, or none, plays as 100 ms."""
    if not duration or duration <= 10:
        return 100
    return int(duration)


def _flatten(frame: Image.Image) -> Image.Image:
    """Any mode -> RGB, transparent pixels black (the panel's background)."""
    if frame.mode == "RGB":
        return frame
    rgba = frame.convert("RGBA")
    background = Image.new("RGB", rgba.size)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


# ISO BMFF brands of still/animated images (the same box structure as MP4).
AVIF_BRANDS = (b"avif", b"avis")
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
               b"mif1", b"msf1")


def sniff(path: str) -> str | None:
    """The image format the first bytes claim, even if the rest is broken."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[4:8] == b"ftyp" and head[8:12] in AVIF_BRANDS:
        return "AVIF"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "HEIF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    return None


def open_image(path: str, max_pixels: int) -> Image.Image:
    """Open an upload as an image, checking type and pixel count from the header."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(path, formats=IMAGE_FORMATS)
    except Image.UnidentifiedImageError:
        claimed = sniff(path)
        if claimed in ("AVIF", "HEIF") and claimed not in IMAGE_FORMATS:
            raise MediaError(415, "unsupported_media", f"{claimed} images cannot be decoded "
                             "by this device's Pillow; convert it to JPEG or PNG") from None
        if claimed:
            raise MediaError(422, "invalid_media", f"a broken or truncated {claimed} file "
                             "that cannot be decoded") from None
        raise MediaError(415, "unsupported_media", "not a supported image (GIF, PNG, JPEG, "
                         "WebP, BMP) or video") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError(422, "invalid_media", "image has too many pixels "
                         f"(limit media.max_pixels = {max_pixels})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(422, "invalid_media", f"image could not be read: {exc}") from None
    width, height = img.size
    if width * height > max_pixels or width == 0 or height == 0:
        img.close()
        raise MediaError(422, "invalid_media", f"image is {width}x{height}, more pixels than "
                         f"media.max_pixels = {max_pixels}")
    return img


def render_image(path: str, frames_path: str, target: Target, media_cfg, *,
                 progress=None, deadline: float | None = None) -> Rendered:
    """Decode an image/animation file into a frame file; raise MediaError on bad input."""
    img = open_image(path, media_cfg.max_pixels)
    try:
        return _render_frames(img, frames_path, target, media_cfg, progress, deadline)
    finally:
        img.close()


def _work_side(target: Target) -> int:
    """The smallest side a picture is brought down to before the fit: twice the panel and
    above the pixel-art size, so the fit's Lanczos still has detail to work with."""
    return 2 * max(target.width, target.height, PIXEL_ART_MAX_SIDE)


def _draft(img: Image.Image, target: Target) -> None:
    """A JPEG is decoded at libjpeg's reduced DCT scale (1/2, 1/4 or 1/8): the smallest one
    still at least `_work_side`, so a 4000x3000 photo costs ~0.6 MB and a third of the time
    instead of 36 MB (make bench). Pillow ignores a second call."""
    if img.format == "JPEG":
        side = _work_side(target)
        img.draft("RGB", (side, side))


def shrink(img: Image.Image, target: Target) -> Image.Image:
    """A big decoded picture made small in its own mode, before anything converts or copies
    it at full size: a whole-number reduction to no less than `_work_side` (box filter where
    Pillow reduces the mode in place; nearest neighbour for palette images and for alpha,
    which Pillow would first copy whole to premultiply). The fit does the rest."""
    factor = min(img.size) // _work_side(target)
    if factor < 2:
        return img
    if img.mode in ("L", "RGB", "RGBX", "I", "F"):
        return img.reduce(factor)
    side = _work_side(target)  # nearest neighbour keeps twice the samples against aliasing
    factor = max(1, min(img.size) // (2 * side))
    return img.resize((img.width // factor, img.height // factor), Image.Resampling.NEAREST)


def upright_still(img: Image.Image, target: Target,
                  stored_size: tuple[int, int] | None = None
                  ) -> tuple[Image.Image, tuple[int, int]]:
    """A still decoded and made ready to fit, and the source's upright size.

    A big JPEG is decoded at a reduced scale (`_draft`); any big picture is brought down in
    its own mode right after decoding (`shrink`); phone photos are then turned upright from
    their EXIF orientation (no copy when there is nothing to turn). `stored_size` is the
    size before a draft already made (default: `img.size`).
    """
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    width, height = stored_size or img.size
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    _draft(img, target)
    img.load()
    img = shrink(img, target)
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    return img, size


# Bytes per pixel of Pillow's image memory for each mode (RGB is stored in 4 bytes).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Bytes per canvas pixel that Pillow and its codecs hold while decoding an animation
# (measured on Pillow 9.4 and 13 alike, rounded up): libwebp's animation decoder keeps two
# RGBA canvases and Pillow two more (16.1, also for stills); a GIF after its first frame is
# an RGB(A) canvas, the previous canvas and the palette frame (13.1); APNG likewise (12.1).
_CANVAS_BYTES = {"WEBP": 17, "GIF": 14, "PNG": 13}
CODEC_OVERHEAD = 8 * 1024 * 1024  # codec buffers, the shrunk picture, the fit, the frame


def decode_cost(img: Image.Image, n_frames: int, full_size: tuple[int, int]) -> int:
    """The most memory decoding `img` (opened, nothing decoded yet; a JPEG already drafted,
    `full_size` its size before) and fitting its frames will hold at once, in bytes, from
    the header alone."""
    width, height = img.size
    pixels = width * height
    if img.format == "WEBP" or (n_frames > 1 and img.format in _CANVAS_BYTES):
        return pixels * _CANVAS_BYTES.get(img.format, 16) + CODEC_OVERHEAD
    cost = pixels * _MODE_BYTES.get(img.mode, 4)
    if img.format == "AVIF":
        cost *= 2  # the decoder's own picture, then Pillow's
    if img.format == "JPEG" and (img.info.get("progressive") or img.info.get("progression")):
        # a progressive JPEG keeps every DCT coefficient of the full-size picture (2 bytes
        # each), whatever scale it is decoded at
        full = full_size
        layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * 3
        h_max = max(layer[1] for layer in layers) or 1
        v_max = max(layer[2] for layer in layers) or 1
        share = sum(layer[1] * layer[2] for layer in layers) / (h_max * v_max)
        cost += int(full[0] * full[1] * share * 2)
    return cost + CODEC_OVERHEAD


def describe(img: Image.Image, n_frames: int, size: tuple[int, int]) -> str:
    """How a refusal names the picture: '6300x6300 RGBA PNG', 'a 6000x6000 animated WEBP'."""
    kind = "animated " if n_frames > 1 else ""
    return f"the image is a {size[0]}x{size[1]} {kind}{img.mode} {img.format}"


@contextlib.contextmanager
def _decoding():
    """Pillow working on untrusted bytes: whatever it raises means the file is bad.

    Fuzzed files make decoders raise more than OSError/ValueError (IndexError, KeyError,
    TypeError, ...); none of that is a bug of LOOP, so it is a 422, logged for a look.
    Only Pillow's calls run inside this; LOOP's own code (fit, writing) stays outside.
    """
    try:
        yield
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError(422, "invalid_media", "image has too many pixels") from None
    except Exception as exc:
        if not isinstance(exc, (OSError, SyntaxError, ValueError, EOFError, struct.error)):
            log.warning("decoder raised %s on an upload: %s", type(exc).__name__, exc)
        raise MediaError(422, "invalid_media", f"image could not be decoded: {exc}") from None


@contextlib.contextmanager
def _writing():
    """Writes to the data directory: a full disk is a 507, never 'bad image'."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc) from exc


def _frame_plan(n_frames: int, frame_size: int, media_cfg) -> tuple[int, int]:
    """(stride, keep): keep every stride-th frame, at most `keep` frames, within the budget.

    The item budget lowers the frame rate first (up to 1 in 4 frames), then cuts.
    """
    budget = int(media_cfg.max_item_mb * 1024 * 1024) // (frame_size + 4)
    budget = max(1, min(budget, media_cfg.max_frames))
    stride = 1
    if n_frames > budget:
        stride = min(4, math.ceil(n_frames / budget))
    return stride, budget


def count_gif_frames(path: str, cap: int) -> int:
    """Frames in a GIF by walking its blocks without decoding, stopping past `cap`.

    Pillow's `n_frames` walks every frame of the file; a hostile GIF with millions of tiny
    frames would cost seconds before any limit could be checked. This stops at `cap + 1`.
    """
    count = 0
    with open(path, "rb") as fh:
        head = fh.read(13)
        if len(head) < 13:
            return 0
        if head[10] & 0x80:
            fh.seek(3 << ((head[10] & 7) + 1), os.SEEK_CUR)
        while count <= cap:
            kind = fh.read(1)
            if kind == b"\x21":  # extension: label, then sub-blocks
                fh.read(1)
            elif kind == b"\x2c":  # image descriptor, optional local table, LZW size
                desc = fh.read(9)
                if len(desc) < 9:
                    break
                if desc[8] & 0x80:
                    fh.seek(3 << ((desc[8] & 7) + 1), os.SEEK_CUR)
                fh.read(1)
                count += 1
            else:  # trailer, or garbage where a block should start
                break
            while True:
                size = fh.read(1)
                if not size or size == b"\x00":
                    break
                fh.seek(size[0], os.SEEK_CUR)
            if not size:
                break
    return count


def _render_frames(img, frames_path, target, media_cfg, progress, deadline) -> Rendered:
    fmt = img.format
    cap = media_cfg.max_frames * 4
    with _decoding():
        if fmt == "GIF":
            n_frames = max(1, count_gif_frames(img.filename, cap))
        else:
            n_frames = getattr(img, "n_frames", 1)
    if n_frames > cap:
        raise MediaError(422, "invalid_media", f"{n_frames} frames is more than this device "
                         f"stores (media.max_frames = {media_cfg.max_frames})")
    animated = n_frames > 1
    source_size = img.size
    if not animated:
        _draft(img, target)
    cost = decode_cost(img, n_frames, source_size)
    with budget.reservation(cost, describe(img, n_frames, source_size), deadline):
        return _render_reserved(img, frames_path, target, media_cfg, progress, deadline,
                                n_frames, fmt, source_size)


def _render_reserved(img, frames_path, target, media_cfg, progress, deadline, n_frames,
                     fmt, source_size) -> Rendered:
    animated = n_frames > 1
    if not animated:
        with _decoding():  # decoded, shrunk, upright
            img, source_size = upright_still(img, target, source_size)
    frame_size = target.width * target.height * PIXEL_FORMATS[target.pixel_format][1]
    stride, keep = _frame_plan(n_frames, frame_size, media_cfg)
    max_ms = media_cfg.max_duration_sec * 1000
    notes, total_ms = [], 0
    with _writing():
        writer = FrameWriter(frames_path, target.width, target.height, target.pixel_format)
    try:
        for index in range(n_frames):
            if deadline is not None and time.monotonic() > deadline:
                raise MediaError(422, "invalid_media", "decoding took longer than "
                                 f"media.decode_timeout_sec = {media_cfg.decode_timeout_sec:g} s")
            with _decoding():
                if animated:
                    try:
                        img.seek(index)
                    except EOFError:  # fewer frames than the header or block walk promised
                        break
                delay = gif_delay(img.info.get("duration")) if animated else 1000
            if index % stride:
                writer.extend_last(delay)
                total_ms += delay
                continue
            if writer.count >= keep or total_ms >= max_ms:
                notes.append(f"cut after {writer.count} frames to fit "
                             + ("media.max_duration_sec" if total_ms >= max_ms
                                else "media.max_item_mb / media.max_frames"))
                break
            with _decoding():
                img.load()  # decode now: Pillow is lazy, and fit_image is not a decoder
                flat = _flatten(shrink(img, target) if animated else img)
            frame = to_pixels(fit_image(flat, target), target.pixel_format, target.rotation)
            with _writing():
                writer.add(frame, delay)
            total_ms += delay
            if progress:
                progress((index + 1) / n_frames)
        if stride > 1:
            notes.insert(0, f"frame rate lowered to 1/{stride} to fit media.max_item_mb")
        if writer.count == 0:
            raise MediaError(422, "invalid_media", "no frame could be decoded from the image")
        with _writing():
            header = writer.finish()
    finally:
        writer.close()
    kind = "animation" if header.count > 1 else "image"
    return Rendered(kind, fmt, source_size[0], source_size[1], header.count,
                    sum(writer.durations) if animated else 0, notes,
                    EXTENSIONS.get(fmt, "bin"))


