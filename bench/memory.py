"""Group 1, memory: RSS of the service (and with its children, i.e. ffmpeg) idle with an empty
library, idle with MQTT on (connected to a local Mosquitto), idle with 200 items, and the peak
while ingesting.

Idle numbers are the median of several readings over a few seconds, in several fresh
processes. Peaks use the kernel's exact high-water mark (VmHWM, reset through clear_refs
before each upload) for the service process, and 50 Hz sampling for service + children.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

from bench import bombs, inputs
from bench.common import (
    PeakSampler,
    Service,
    fresh_dir,
    goal_check,
    log,
    median,
    reset_hwm,
    result,
    rss_mb,
    service_config,
    settle_rss,
    upload,
    upload_bytes,
    vm_hwm_mb,
    wait_until,
)
from bench.mosquitto import Mosquitto

IDLE_GOAL_MB = 25
PEAK_GOAL_MB = 60
LIBRARY_ITEMS = 200


def library_dir(ctx) -> str:
    """A pristine data directory holding a 200-item library (built once per run, by upload)."""
    if getattr(ctx, "lib200", None):
        return ctx.lib200
    data = fresh_dir(os.path.join(ctx.work, "lib200-build"))
    service = Service(ctx.work, "lib200-build", service_config(data)).start()
    started = time.monotonic()
    try:
        for n in range(LIBRARY_ITEMS):
            name, body = inputs.library_item(n)
            reply = upload_bytes(service.port, body, name)
            if reply.status != 201:
                raise RuntimeError(f"library upload {n} answered {reply.status}: "
                                   f"{reply.message}")
    finally:
        service.stop()
    ctx.lib200_upload_s = time.monotonic() - started
    ctx.lib200 = os.path.join(ctx.work, "lib200")
    shutil.rmtree(ctx.lib200, ignore_errors=True)
    shutil.copytree(data, ctx.lib200, symlinks=True)
    log(f"200-item library built in {ctx.lib200_upload_s:.1f} s")
    return ctx.lib200


def copy_library(ctx, name: str) -> str:
    target = os.path.join(ctx.work, name)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(library_dir(ctx), target, symlinks=True)
    return target


def _idle(ctx, name: str, make_data, runs: int, settle: float, sections=None,
          ready=None) -> dict:
    own, total, unique = [], [], []
    for run in range(runs):
        data = make_data(run)
        service = Service(ctx.work, f"mem-{name}-{run}",
                          service_config(data, **(sections or {}))).start()
        try:
            time.sleep(1.0)  # past start-up work (first monitor sample, library load)
            if ready is not None:
                ready(service)
            o, t, u = settle_rss(service.pid, settle)
            own.append(o)
            total.append(t)
            unique.append(u)
        finally:
            service.stop()
    rss = median(own)
    return {"rss_mb": rss, "with_children_mb": median(total), "uss_mb": median(unique),
            "runs": runs, "rss_runs_mb": own, "goal": f"rss_mb <= {IDLE_GOAL_MB}",
            "met": goal_check(rss, IDLE_GOAL_MB)}


def upload_at_once(port: int, files: list[str], names: list[str]) -> list:
    """Send `files` at the same moment, each from a client of its own (three phones: one
    client alone may not take every processing slot); the replies, in order."""
    replies = [None] * len(files)

    def send(i):
        replies[i] = upload(port, files[i], names[i], timeout=300, source=f"127.0.0.{2 + i}")
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def _peak(ctx, name: str, files: list[str]) -> dict:
    """Upload `files` at once into a fresh service; peak RSS while they are ingested."""
    data = fresh_dir(os.path.join(ctx.work, f"mem-{name}"))
    service = Service(ctx.work, f"mem-{name}", service_config(data)).start()
    try:
        time.sleep(1.0)
        before, _ = rss_mb(service.pid)
        exact = reset_hwm(service.pid)
        sampler = PeakSampler(service.pid)
        sampler.start()
        started = time.monotonic()
        replies = upload_at_once(service.port, files,
                                 [f"{name}-{i}{os.path.splitext(p)[1]}"
                                  for i, p in enumerate(files)])
        seconds = time.monotonic() - started
        time.sleep(0.2)
        sampler.stop()
        hwm = vm_hwm_mb(service.pid) if exact else None
        after, _ = rss_mb(service.pid)
    finally:
        service.stop()
    peak = max(hwm or 0, sampler.peak_own)
    statuses = [r.status for r in replies]
    record = {"peak_rss_mb": peak, "peak_with_children_mb": max(sampler.peak_total, peak),
              "peak_children_mb": sampler.peak_children, "before_mb": before,
              "after_mb": after, "seconds": seconds, "statuses": statuses,
              "peak_source": "VmHWM" if hwm else "sampled (clear_refs not allowed)",
              "goal": f"peak_rss_mb <= {PEAK_GOAL_MB}", "met": goal_check(peak, PEAK_GOAL_MB)}
    failed = [r for r in replies if r.status >= 400]
    if failed:
        record["error"] = f"upload answered {failed[0].status} ({failed[0].message})"
        if failed[0].status == 415:
            record["error"] += "; video upload is not supported by this build yet"
            record["met"] = None
    return record


def _idle_mqtt(ctx, runs: int, settle: float, mqtt_off: dict) -> None:
    """Idle with MQTT enabled and connected (discovery and state published): the same goal as
    without, which loads neither loop/mqtt/ nor paho-mqtt."""
    try:
        broker = Mosquitto(os.path.join(ctx.work, "mosquitto"), {"loop": "bench-secret"}).start()
    except (OSError, RuntimeError) as exc:
        ctx.emit(result("memory", "idle_empty_mqtt", skipped=f"no Mosquitto broker: {exc}"))
        return
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "username": "loop",
            "password": "bench-secret", "base_topic": "loop/bench"}

    def connected(service):
        if not wait_until(lambda: service.health()["checks"].get("mqtt", {}).get("connected"),
                          15):
            raise RuntimeError("the service did not connect to the local Mosquitto")
        time.sleep(0.5)  # discovery and state are out
    try:
        record = _idle(ctx, "mqtt", lambda run: fresh_dir(
            os.path.join(ctx.work, f"mem-mqtt-{run}")), runs, settle, {"mqtt": mqtt},
            connected)
    finally:
        broker.stop()
    record["mqtt_off_rss_mb"] = mqtt_off["rss_mb"]
    record["over_mqtt_off_mb"] = record["rss_mb"] - mqtt_off["rss_mb"]
    ctx.emit(result("memory", "idle_empty_mqtt", **record,
                    input="empty library, MQTT on, connected to a local Mosquitto"))


def run(ctx) -> None:
    runs = 2 if ctx.quick else 3
    settle = 1.5 if ctx.quick else 3.0
    empty = _idle(ctx, "empty", lambda run: fresh_dir(os.path.join(ctx.work, f"mem-empty-{run}")),
                  runs, settle)
    ctx.emit(result("memory", "idle_empty", **empty))
    _idle_mqtt(ctx, runs, settle, empty)

    library_dir(ctx)
    full = _idle(ctx, "lib200", lambda run: copy_library(ctx, f"mem-lib200-{run}"), runs, settle)
    ctx.emit(result("memory", "idle_200_items", **full,
                    library_upload_s=getattr(ctx, "lib200_upload_s", None)))

    gif = ctx.inputs.gif_long()
    frames = 1000 if ctx.quick else 5000
    ctx.emit(result("memory", f"peak_ingest_gif_{frames}_frames", **_peak(ctx, "gif", [gif]),
                    input=ctx.inputs.info["gif_long"], quick=ctx.quick or None))

    try:
        video = ctx.inputs.mp4_long()
    except Exception as exc:  # no ffmpeg: say so instead of failing the whole group
        ctx.emit(result("memory", "peak_ingest_mp4", skipped=f"cannot generate the MP4: {exc}"))
    else:
        ctx.emit(result("memory", "peak_ingest_mp4_10s" if ctx.quick else "peak_ingest_mp4_60s",
                        **_peak(ctx, "mp4", [video]), input=ctx.inputs.info.get(
                            "mp4_10s" if ctx.quick else "mp4_long"), quick=ctx.quick or None))

    photos = [ctx.inputs.jpeg(v) for v in range(3)]
    ctx.emit(result("memory", "peak_ingest_3_jpeg_at_once", **_peak(ctx, "three", photos),
                    input="3 different 4000x3000 JPEGs (phone photos), 3 requests at once"))
    run_bombs(ctx)


# ---- memory bombs (issue 16): small files that decode into a lot of memory -----------------
def bomb_inputs(work: str) -> dict[str, list[str]]:
    """{bomb class: the files sent at once}, written into `work`."""
    made = {"png_6300_rgba": [bombs.png_rgba()],
            "webp_6000_animated": [bombs.webp_animated()],
            "webp_6000_x3_at_once": [bombs.webp_animated(frames=n) for n in (2, 3, 4)],
            "gif_20000_frames_6000_screen": [bombs.gif_many_frames()]}
    try:
        made["mkv_6300_patched"] = [bombs.mkv_patched()]
    except Exception as exc:  # no ffmpeg: the others still run
        log(f"no MKV bomb: {exc}")
    paths = {}
    for name, blobs in made.items():
        paths[name] = []
        for n, blob in enumerate(blobs):
            ext = name.split("_")[0]
            path = os.path.join(work, f"bomb-{name}-{n}.{ext}")
            with open(path, "wb") as fh:
                fh.write(blob)
            paths[name].append(path)
    return paths


def _bomb(ctx, name: str, files: list[str]) -> dict:
    """Send `files` at once to a fresh service with the shipped limits; its peak memory
    (VmHWM, and sampled with children) against `system.memory_limit_mb`, and the answers."""
    data = fresh_dir(os.path.join(ctx.work, f"bomb-{name}"))
    service = Service(ctx.work, f"bomb-{name}", service_config(data)).start()
    limit = _shipped_memory_limit()
    try:
        time.sleep(1.0)
        before, _ = rss_mb(service.pid)
        exact = reset_hwm(service.pid)
        sampler = PeakSampler(service.pid, interval=0.01)
        sampler.start()
        started = time.monotonic()
        replies = upload_at_once(service.port, files, [os.path.basename(p) for p in files])
        seconds = time.monotonic() - started
        sampler.stop()
        hwm = vm_hwm_mb(service.pid) if exact else None
    finally:
        service.stop()
    peak = max(hwm or 0, sampler.peak_own)
    total = max(sampler.peak_total, peak)
    return {"peak_with_children_mb": total, "peak_rss_mb": peak,
            "peak_children_mb": sampler.peak_children, "limit_mb": limit,
            "before_mb": before, "seconds": seconds,
            "statuses": [r.status for r in replies],
            "answers": [r.message[:160] for r in replies],
            "bytes": [os.path.getsize(p) for p in files],
            "goal": "peak_with_children_mb <= limit_mb (system.memory_limit_mb)",
            "met": goal_check(total, limit)}


def _shipped_memory_limit() -> float:
    from loop import config
    return config.build({}).system.memory_limit_mb


def run_bombs(ctx) -> None:
    work = fresh_dir(os.path.join(ctx.work, "bombs"))
    for name, files in bomb_inputs(work).items():
        ctx.emit(result("memory", f"bomb_{name}", **_bomb(ctx, name, files)))
