"""Generated benchmark inputs, made on first use in the run's temp directory (never committed).

Frames of the pacing GIFs carry their identity in their colour: red = the GIF's tag, green =
the frame index. A panel-sized solid frame goes through the renderer unchanged, so the bench
reads which frame the player showed from the first pixel the driver got.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time

from PIL import Image, ImageDraw

from bench.common import log

PANEL = (64, 32)
PACING_20MS = [20] * 50  # a 50 fps loop of 1 s
PACING_MIXED = [30, 70, 100] * 10  # mixed delays, a 2 s loop
TAG_20MS, TAG_MIXED = 0xA0, 0xB0


def frame_tag(pixel: bytes) -> tuple[int, int]:
    """(gif tag, frame index) from a frame's first RGB pixel."""
    return pixel[0], pixel[1]


def pacing_gif(tag: int, durations) -> bytes:
    """Panel-sized solid frames coloured (tag, index, 64), with the given delays (ms)."""
    frames = [Image.new("RGB", PANEL, (tag, i, 64)) for i in range(len(durations))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:],
                   duration=list(durations), loop=0, optimize=False)
    return out.getvalue()


def library_item(n: int) -> tuple[str, bytes]:
    """Small distinct uploads for a 200-item library: stills and 4-frame animations."""
    colour = (n * 37 % 256, n * 91 % 256, n * 53 % 256)
    out = io.BytesIO()
    if n % 2:
        img = Image.new("RGB", PANEL, colour)
        ImageDraw.Draw(img).text((2, 2), str(n), fill=(255, 255, 255))
        img.save(out, "PNG")
        return f"still-{n}.png", out.getvalue()
    frames = []
    for i in range(4):
        img = Image.new("RGB", (96, 48), colour)
        ImageDraw.Draw(img).rectangle([i * 20, 8, i * 20 + 16, 40], fill=(255, 255, i * 60))
        ImageDraw.Draw(img).text((2, 2), str(n), fill=(0, 0, 0))
        frames.append(img)
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return f"anim-{n}.gif", out.getvalue()


def _moving_frames(count: int, size, noise_side: int = 0):
    """Frames with a gradient, moving shapes and (optionally) a moving patch of noise, so
    every frame differs and the file has a realistic size."""
    w, h = size
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    noise = Image.effect_noise((noise_side * 2, noise_side * 2), 64).convert("RGB") \
        if noise_side else None
    for i in range(count):
        img = base.copy()
        draw = ImageDraw.Draw(img)
        if noise is not None:
            o = i % noise_side
            img.paste(noise.crop((o, o, o + noise_side, o + noise_side)),
                      ((i * 5) % (w - noise_side), (i * 3) % (h - noise_side)))
        x, y = (i * 3) % w, (i * 2) % h
        draw.rectangle([x, y, x + w // 6, y + h // 6], fill=((i * 7) % 256, (i * 13) % 256, 200))
        draw.ellipse([w - x - w // 5, h - y - h // 5, w - x, h - y], fill=(250, (i * 5) % 256, 30))
        yield img


def write_gif(path: str, count: int, size, delay: int, noise_side: int = 0) -> None:
    frames = _moving_frames(count, size, noise_side)
    first = next(frames)
    first.save(path, "GIF", save_all=True, append_images=list(frames), duration=delay, loop=0)


def write_jpeg(path: str, size=(4000, 3000), variant: int = 0) -> None:
    """A photo-sized JPEG with texture (gradient, noise) so it decodes like a real photo."""
    w, h = size
    grad = Image.linear_gradient("L").resize(size)
    if variant:
        grad = grad.rotate(90 * variant, expand=False)
    noise = Image.effect_noise(size, 24)
    radial = Image.radial_gradient("L").resize(size)
    img = Image.merge("RGB", [(grad, noise, radial), (noise, radial, grad),
                              (radial, grad, noise)][variant % 3])
    ImageDraw.Draw(img).text((w // 3, h // 3), f"LOOP bench {variant}", fill=(255, 255, 255))
    img.save(path, "JPEG", quality=90)


FFMPEG = shutil.which("ffmpeg")


def write_mp4(path: str, seconds: int, size: str = "1920x1080", kbps: int = 13000) -> None:
    """testsrc2 at 30 fps, H.264 ultrafast at a fixed bitrate (13 Mbit/s: ~100 MB a minute)."""
    if not FFMPEG:
        raise RuntimeError("ffmpeg is not installed")
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={size}:rate=30", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", f"{kbps}k",
                    "-maxrate", f"{kbps}k", "-bufsize", f"{kbps * 2}k", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", path], check=True, timeout=600)


class Inputs:
    """Lazily generated inputs; `info` records what was made, its size and how long it took."""

    def __init__(self, work_dir: str, quick: bool):
        self.dir = os.path.join(work_dir, "inputs")
        os.makedirs(self.dir, exist_ok=True)
        self.quick = quick
        self.info: dict = {}

    def _make(self, key: str, filename: str, maker, describe: str) -> str:
        path = os.path.join(self.dir, filename)
        if key not in self.info:
            log(f"generating {describe} ...")
            started = time.monotonic()
            maker(path)
            self.info[key] = {"file": filename, "what": describe,
                              "mb": round(os.path.getsize(path) / 2**20, 2),
                              "seconds": round(time.monotonic() - started, 2)}
        return path

    # the inputs the issue names (smaller under BENCH_QUICK, and the result lines say so)
    def gif_long(self) -> str:
        count = 1000 if self.quick else 5000
        return self._make("gif_long", f"long-{count}.gif",
                          lambda p: write_gif(p, count, (160, 120), 40),
                          f"{count}-frame 160x120 GIF")

    def gif_200(self) -> str:
        return self._make("gif_200", "gif200-480x270.gif",
                          lambda p: write_gif(p, 200, (480, 270), 40, noise_side=70),
                          "200-frame 480x270 GIF (~2 MB)")

    def jpeg(self, variant: int = 0) -> str:
        return self._make(f"jpeg_{variant}", f"photo-{variant}.jpg",
                          lambda p: write_jpeg(p, variant=variant), f"4000x3000 JPEG #{variant}")

    def mp4_long(self) -> str:
        if self.quick:
            return self.mp4_10s()
        return self._make("mp4_long", "clip-60s.mp4", lambda p: write_mp4(p, 60),
                          "60 s 1080p30 H.264 MP4 (13 Mbit/s, ~100 MB)")

    def mp4_10s(self) -> str:
        return self._make("mp4_10s", "clip-10s.mp4", lambda p: write_mp4(p, 10),
                          "10 s 1080p30 H.264 MP4 (13 Mbit/s)")
