"""Group `notify`: a scrolling text item and notifications, in the instrumented service
(bench/paced_service.py records every show with its time, thread CPU time and first pixel).

- `marquee_30px_s`: a text item too wide for the panel scrolls at 30 px/s (a frame every
  33-34 ms, one pixel a step) alone in the loop; the display thread's CPU time per frame, the
  frames per second and how far each interval is from its nominal duration.
- `notify_to_first_frame`: the time from just before `POST /api/notify` is sent to the first
  frame of that notification reaching the driver, while the marquee scrolls. Each
  notification has its own background colour, which the first pixel identifies; it is
  retracted before the next. Both clocks are CLOCK_MONOTONIC, shared by all processes.
"""

from __future__ import annotations

import json
import os
import time

from bench.common import (
    ROOT,
    Service,
    fresh_dir,
    goal_check,
    item_of,
    log,
    percentile,
    request,
    result,
    service_config,
    summary,
)

SPEED = 30
MARQUEE = "LOOP - back in 5 minutes - notifications interrupt and resume - "
LATENCY_GOAL_MS = 100.0
CPU_GOAL_US = 100.0


def marquee_numbers(record: dict, start: float, end: float) -> dict:
    shows = [(t, cpu) for t, cpu in zip(record["t"], record["cpu"]) if start <= t <= end]
    if len(shows) < 3:
        return {"error": "too few frames recorded"}
    nominal = 1000 / SPEED
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(shows, shows[1:])]
    cpu_us = (shows[-1][1] - shows[0][1]) / (len(shows) - 1) * 1e6
    return {"cpu_per_frame_us": cpu_us, "fps": (len(shows) - 1) / (shows[-1][0] - shows[0][0]),
            "interval_err_p99_ms": percentile([abs(g - nominal) for g in gaps], 99),
            "frames": len(shows), "seconds": shows[-1][0] - shows[0][0],
            "goal": f"cpu <= {CPU_GOAL_US:g}", "met": goal_check(cpu_us, CPU_GOAL_US)}


def run(ctx) -> None:
    window = 10.0 if ctx.quick else 30.0
    rounds = 10 if ctx.quick else 30
    data = fresh_dir(os.path.join(ctx.work, "notify"))
    record_path = os.path.join(ctx.work, "notify-record.json")
    service = Service(ctx.work, "notify", service_config(data),
                      runner=os.path.join(ROOT, "bench", "paced_service.py"),
                      env={"BENCH_RECORD": record_path}).start()
    posts = []  # (colour hex, monotonic before the request, seconds the answer took)
    try:
        reply = request(service.port, "POST", "/api/media",
                        json_body={"text": MARQUEE, "speed_px_s": SPEED})
        if not item_of(reply):
            raise RuntimeError(f"text item answered {reply.status}: {reply.message}")
        frames = reply.data["results"][0]["item"]["frames"]
        time.sleep(1.0)
        log(f"notify: a {frames}-frame marquee at {SPEED} px/s alone, {window:g} s")
        start = time.monotonic()
        time.sleep(window)
        marquee_window = (start, time.monotonic())
        log(f"notify: {rounds} notifications while it scrolls")
        for n in range(rounds):
            colour = f"{n + 1:02x}40c0"
            before = time.monotonic()
            reply = request(service.port, "POST", "/api/notify", json_body={
                "text": "DING", "background": f"#{colour}", "id": "bench",
                "priority": "high", "duration_sec": 5})
            posts.append((colour, before, reply.seconds, reply.status))
            time.sleep(0.4)
            request(service.port, "DELETE", "/api/notify/bench")
            time.sleep(0.3)
    finally:
        service.stop()
    with open(record_path) as fh:
        record = json.load(fh)
    ctx.emit(result("notify", "marquee_30px_s", **marquee_numbers(record, *marquee_window),
                    text_frames=frames, quick=ctx.quick or None))
    latencies, answers, missing = [], [], 0
    for colour, before, seconds, status in posts:
        shown = next((t for t, pixel in zip(record["t"], record["pixel"])
                      if t >= before and pixel == colour), None)
        if status != 201 or shown is None:
            missing += 1
            continue
        latencies.append((shown - before) * 1000)
        answers.append(seconds * 1000)
    stats = summary(latencies) if latencies else {}
    p99 = stats.get("p99")
    ctx.emit(result("notify", "notify_to_first_frame", p50_ms=stats.get("p50"), p99_ms=p99,
                    max_ms=stats.get("max"), answer_p50_ms=summary(answers)["p50"]
                    if answers else None, notifications=len(posts), not_shown=missing,
                    goal=f"p99_ms <= {LATENCY_GOAL_MS:g}",
                    met=goal_check(p99, LATENCY_GOAL_MS), quick=ctx.quick or None))
