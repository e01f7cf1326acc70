"""Group 4, ingest speed: seconds from the start of an upload to its 201 (what a person waits:
receive + hash + decode + fit + write frames + thumbnail + commit), per panel size, next to
the time Pillow (or ffmpeg) alone takes to decode the same input in the same run.

`ratio` = upload seconds / decode seconds (goal <= 1.3). `render_s` is `loop.media.render.render`
alone, called in the bench process, to split rendering from the HTTP and commit overhead.
Each number is the median of several runs; the item is deleted between runs so every upload
is decoded for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from PIL import Image

from bench.common import (
    Service,
    fresh_dir,
    goal_check,
    item_of,
    log,
    median,
    request,
    result,
    service_config,
    upload,
)
from bench.inputs import FFMPEG
from loop import config as loop_config
from loop.media.errors import MediaError
from loop.media.geometry import Target
from loop.media.render import render as render_upload

RATIO_GOAL = 1.3
SIZES = ((64, 32), (128, 64))


def decode_gif(path: str) -> None:
    """Pillow alone: every frame decoded to RGB (a GIF frame is palette data until then)."""
    with Image.open(path) as img:
        for index in range(img.n_frames):
            img.seek(index)
            img.convert("RGB")


def decode_still(path: str) -> None:
    """Pillow alone: the full image decoded."""
    with Image.open(path) as img:
        img.load()


def decode_video(path: str) -> None:
    """ffmpeg alone: every frame decoded, nothing written."""
    subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", path, "-f", "null", "-"],
                   check=True, timeout=300)


def _timed(fn, *args) -> float:
    started = time.monotonic()
    fn(*args)
    return time.monotonic() - started


def _render_in_process(path: str, size) -> float | None:
    cfg = loop_config.defaults().media
    scratch = tempfile.mkdtemp(prefix="render-")
    try:
        started = time.monotonic()
        render_upload(path, os.path.join(scratch, "frames.bin"), Target(*size), cfg)
        return time.monotonic() - started
    except MediaError:
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _upload_runs(service: Service, path: str, runs: int) -> tuple[list[float], list[int], str]:
    seconds, statuses, message = [], [], ""
    for _ in range(runs):
        reply = upload(service.port, path)
        statuses.append(reply.status)
        item = item_of(reply)
        if reply.status >= 400:
            message = reply.message
            break
        seconds.append(reply.seconds)
        if item:
            request(service.port, "DELETE", f"/api/media/{item}")
    return seconds, statuses, message


def run(ctx) -> None:
    runs = 2 if ctx.quick else 3
    cases = [("gif200_480x270", ctx.inputs.gif_200, decode_gif, "Pillow decode to RGB"),
             ("jpeg_4000x3000", ctx.inputs.jpeg, decode_still, "Pillow full decode"),
             ("mp4_10s_1080p", ctx.inputs.mp4_10s if FFMPEG else None, decode_video,
              "ffmpeg decode to null")]
    services = {}
    try:
        for width, height in SIZES:
            data = fresh_dir(os.path.join(ctx.work, f"ingest-{width}x{height}"))
            services[(width, height)] = Service(
                ctx.work, f"ingest-{width}x{height}",
                service_config(data, display={"cols": width, "rows": height})).start()
        for name, make, decoder, baseline in cases:
            if make is None:
                ctx.emit(result("ingest", name, skipped="ffmpeg is not installed"))
                continue
            path = make()
            log(f"ingest: {name}")
            decode = median([_timed(decoder, path) for _ in range(runs)])
            for size, service in services.items():
                seconds, statuses, message = _upload_runs(service, path, runs)
                upload_s = median(seconds)
                ratio = upload_s / decode if upload_s is not None and decode else None
                record = {"upload_s": upload_s, "decode_s": decode, "ratio": ratio,
                          "render_s": _render_in_process(path, size), "runs": runs,
                          "statuses": statuses, "baseline": baseline,
                          "input_mb": round(os.path.getsize(path) / 2**20, 2),
                          "goal": f"ratio <= {RATIO_GOAL}", "met": goal_check(ratio, RATIO_GOAL)}
                if message:
                    record["error"] = f"upload answered {statuses[-1]} ({message})"
                    if statuses[-1] == 415:
                        record["error"] += "; video upload is not supported by this build yet"
                ctx.emit(result("ingest", f"{name}_to_{size[0]}x{size[1]}", **record))
    finally:
        for service in services.values():
            service.stop()
