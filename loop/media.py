"""Decoding untrusted uploads into panel-sized frames with timings.

The type is decided from the bytes (Pillow's `formats=` list), never from the file name.
Every limit is checked before the work it protects: pixels from the header before decoding,
frame count before rendering, the deadline between frames.
"""

from __future__ import annotations

import math
import struct
import time
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, features

from loop import pixels
from loop.frames import PIXEL_FORMATS, FrameWriter

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
THUMB_MAX = (160, 160)
# Upscaling by this factor or more, or from a source this small, is pixel art: keep it crisp.
PIXEL_ART_MAX_SIDE = 128

# A decompression-bomb warning is an error here; the real limit is checked from the header.
warnings.simplefilter("error", Image.DecompressionBombWarning)


class MediaError(Exception):
    """A bad or unsupported upload: HTTP status, machine code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Target:
    """What the panel wants: the picture's geometry, pixel format, fit mode, and the rotation
    (degrees clockwise) frames are turned by before they are stored, so that a framebuffer
    shows them with a plain copy (loop/pixels.py). Frame files keep the picture's
    width x height; their bytes are in the device's scan order."""
    width: int
    height: int
    pixel_format: str = "RGB24"
    fit: str = "contain"
    rotation: int = 0


@dataclass
class Rendered:
    kind: str  # image | animation | video
    format: str
    width: int
    height: int
    frames: int
    duration_ms: int
    notes: list[str] = field(default_factory=list)


def gif_delay(duration) -> int:
    """Browser rule: a delay of 10 ms or less, or none, plays as 100 ms."""
    if not duration or duration <= 10:
        return 100
    return int(duration)


def fit_image(img: Image.Image, target: Target) -> Image.Image:
    """Fit an RGB image into the target geometry (contain, cover or stretch)."""
    tw, th = target.width, target.height
    sw, sh = img.size
    if target.fit == "stretch":
        return img.resize((tw, th), _resample(img.size, (tw, th)))
    scale = (min if target.fit == "contain" else max)(tw / sw, th / sh)
    size = (max(1, round(sw * scale)), max(1, round(sh * scale)))
    scaled = img.resize(size, _resample(img.size, size), reducing_gap=2.0)
    if scaled.size == (tw, th):
        return scaled
    canvas = Image.new("RGB", (tw, th))
    canvas.paste(scaled, ((tw - size[0]) // 2, (th - size[1]) // 2))
    return canvas


def _resample(src, dst):
    upscaling = dst[0] >= src[0] and dst[1] >= src[1]
    if upscaling or max(src) <= PIXEL_ART_MAX_SIDE:
        return Image.Resampling.NEAREST
    return Image.Resampling.LANCZOS


def to_pixels(img: Image.Image, pixel_format: str, rotation: int = 0) -> bytes:
    """Panel-sized RGB image -> the bytes the driver wants (RGB24, RGB565, BGRX), turned
    clockwise by `rotation` degrees."""
    try:
        return pixels.encode(img, pixel_format, rotation)
    except ValueError as exc:
        raise MediaError(500, "internal", str(exc)) from None


def _flatten(frame: Image.Image) -> Image.Image:
    """Any mode -> RGB, transparent pixels black (the panel's background)."""
    if frame.mode == "RGB":
        return frame
    rgba = frame.convert("RGBA")
    background = Image.new("RGB", rgba.size)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def sniff(path: str) -> str | None:
    """The image format the first bytes claim, even if the rest is broken."""
    with open(path, "rb") as fh:
        head = fh.read(16)
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
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, struct.error) as exc:
        raise MediaError(422, "invalid_media", f"image could not be decoded: {exc}") from None
    finally:
        img.close()


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


def _render_frames(img, frames_path, target, media_cfg, progress, deadline) -> Rendered:
    fmt = img.format
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > media_cfg.max_frames * 4:
        raise MediaError(422, "invalid_media", f"{n_frames} frames is more than this device "
                         f"stores (media.max_frames = {media_cfg.max_frames})")
    animated = n_frames > 1
    source_size = img.size
    if not animated:
        img = ImageOps.exif_transpose(img)  # phone photos stand upright
        source_size = img.size
    frame_size = target.width * target.height * PIXEL_FORMATS[target.pixel_format][1]
    stride, keep = _frame_plan(n_frames, frame_size, media_cfg)
    max_ms = media_cfg.max_duration_sec * 1000
    notes, total_ms = [], 0
    writer = FrameWriter(frames_path, target.width, target.height, target.pixel_format)
    try:
        for index in range(n_frames):
            if deadline is not None and time.monotonic() > deadline:
                raise MediaError(422, "invalid_media", "decoding took longer than "
                                 "media.decode_timeout_sec")
            if animated:
                img.seek(index)
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
            frame = fit_image(_flatten(img), target)
            writer.add(to_pixels(frame, target.pixel_format, target.rotation), delay)
            total_ms += delay
            if progress:
                progress((index + 1) / n_frames)
        if stride > 1:
            notes.insert(0, f"frame rate lowered to 1/{stride} to fit media.max_item_mb")
        header = writer.finish()
    finally:
        writer.close()
    kind = "animation" if header.count > 1 else "image"
    return Rendered(kind, fmt, source_size[0], source_size[1], header.count,
                    sum(writer.durations) if animated else 0, notes)


def render(path: str, frames_path: str, target: Target, media_cfg, **kwargs) -> Rendered:
    """Decode any supported upload into `frames_path`."""
    return render_image(path, frames_path, target, media_cfg, **kwargs)


def detect_extension(path: str) -> str:
    """File extension for the stored original, from the bytes."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            return EXTENSIONS.get(img.format, "bin")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        return "bin"


def write_thumb(frame: bytes, target: Target, path: str) -> None:
    """A PNG preview of the first rendered frame, scaled up crisply for the web page."""
    img = frame_image(frame, target.width, target.height, target.pixel_format,
                      target.rotation)
    scale = max(1, min(THUMB_MAX[0] // target.width, THUMB_MAX[1] // target.height))
    if scale > 1:
        img = img.resize((target.width * scale, target.height * scale),
                         Image.Resampling.NEAREST)
    img.thumbnail(THUMB_MAX)
    img.save(path, "PNG")


def frame_image(frame, width: int, height: int, pixel_format: str = "RGB24",
                rotation: int = 0) -> Image.Image:
    """A stored frame back as an upright RGB image of width x height (preview, thumbnails)."""
    try:
        return pixels.decode(frame, width, height, pixel_format, rotation)
    except ValueError as exc:
        raise MediaError(500, "internal", str(exc)) from None
