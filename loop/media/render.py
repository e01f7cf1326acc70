"""Decoding any supported upload into a frame file, and the previews made from frames.

The type is decided from the bytes, never from the file name: video containers are
recognised by `video.sniff` and go to ffmpeg (loop/media/video.py); a text or clock spec
(the canonical JSON of loop/media/generated.py) is drawn; everything else goes to Pillow
(loop/media/image.py).
"""

from __future__ import annotations

import os

from PIL import Image

from loop.media import generated, image, video
from loop.media.geometry import Target
from loop.media.pixels import frame_image

THUMB_MAX = (160, 160)


def render(path: str, frames_path: str, target: Target, media_cfg,
           **kwargs) -> image.Rendered:
    """Decode any supported upload into `frames_path`: videos through ffmpeg, the rest with
    Pillow."""
    container = video.sniff(path)
    if container is not None:
        return video.render(path, container, frames_path, target, media_cfg, **kwargs)
    spec = generated.read_spec(path)
    if spec is not None:
        return generated.render_spec(spec, frames_path, target, media_cfg, **kwargs)
    return image.render_image(path, frames_path, target, media_cfg, **kwargs)


def write_thumb(frame: bytes, target: Target, path: str) -> None:
    """A PNG preview of the first rendered frame, scaled up crisply for the web page."""
    img = frame_image(frame, target.width, target.height, target.pixel_format,
                      target.rotation)
    scale = max(1, min(THUMB_MAX[0] // target.width, THUMB_MAX[1] // target.height))
    if scale > 1:
        img = img.resize((target.width * scale, target.height * scale),
                         Image.Resampling.NEAREST)
    img.thumbnail(THUMB_MAX)
    with open(path, "xb") as fh:  # durable like every other file of an item
        img.save(fh, "PNG")
        fh.flush()
        os.fsync(fh.fileno())


