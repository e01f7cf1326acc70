"""Where a picture lands on the panel: the target geometry and the fit arithmetic that images
(Pillow) and videos (ffmpeg's scale/pad/crop) share."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

# Upscaling by this factor or more, or from a source this small, is pixel art: keep it crisp.
PIXEL_ART_MAX_SIDE = 128


@dataclass(frozen=True)
class Target:
    """What the panel wants: the picture's geometry, pixel format, fit mode, and the rotation
    (degrees clockwise) frames are turned by before they are stored, so that a framebuffer
    shows them with a plain copy (loop/media/pixels.py). Frame files keep the picture's
    width x height; their bytes are in the device's scan order."""
    width: int
    height: int
    pixel_format: str = "RGB24"
    fit: str = "contain"
    rotation: int = 0


def fit_geometry(source: tuple[int, int], target: Target) -> tuple[int, int, int, int]:
    """(width, height, x, y): the scaled source and where it sits on the panel.

    `contain` scales to fit inside and centres (x, y >= 0: letterbox), `cover` scales to fill
    and centres the crop (x, y <= 0), `stretch` ignores the aspect ratio. Images (Pillow) and
    videos (ffmpeg's scale/pad/crop) share this arithmetic, so both fit the same way.
    """
    tw, th = target.width, target.height
    sw, sh = source
    if target.fit == "stretch":
        return tw, th, 0, 0
    if target.fit == "contain":
        scale = min(tw / sw, th / sh)
        width, height = min(tw, max(1, round(sw * scale))), min(th, max(1, round(sh * scale)))
        return width, height, (tw - width) // 2, (th - height) // 2
    scale = max(tw / sw, th / sh)
    width, height = max(tw, round(sw * scale)), max(th, round(sh * scale))
    return width, height, -((width - tw) // 2), -((height - th) // 2)


def is_pixel_art(source: tuple[int, int], scaled: tuple[int, int]) -> bool:
    """Upscaling, or a source this small, is pixel art: nearest-neighbour keeps it crisp."""
    upscaling = scaled[0] >= source[0] and scaled[1] >= source[1]
    return upscaling or max(source) <= PIXEL_ART_MAX_SIDE


def fit_image(img: Image.Image, target: Target) -> Image.Image:
    """Fit an RGB image into the target geometry (contain, cover or stretch)."""
    width, height, x, y = fit_geometry(img.size, target)
    if is_pixel_art(img.size, (width, height)):
        scaled = img.resize((width, height), Image.Resampling.NEAREST)
    else:
        scaled = img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
    if (width, height, x, y) == (target.width, target.height, 0, 0):
        return scaled
    canvas = Image.new("RGB", (target.width, target.height))
    canvas.paste(scaled, (x, y))
    return canvas


