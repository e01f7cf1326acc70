"""Groups 2 and 3, polling and frame pacing, in one session of the instrumented service
(bench/paced_service.py: the real service whose headless driver records every show).

Order: (a) polling idle with an empty library; the 50 fps GIF alone (pacing); (b) polling
while it plays, which is also its pacing "with polling load"; the mixed 30/70/100 ms GIF alone
and under a steady polling load; (c) polling while a video is ingested over and over (the
50 fps GIF keeps playing, so pacing during ingest comes for free). The player runs in mode
`one` on the selected GIF, the way a person shows one animation, with the shipped loop_count.
"""

from __future__ import annotations

import json
import os
import threading
import time

from bench import inputs, load, pacing
from bench.common import (
    ROOT,
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
    upload_bytes,
)
from loop import config as loop_config

STATUS = "/api/poll/status"
P99_GOALS_MS = {"gif50fps": 10.0, "ingest": 25.0}


class Ingester(threading.Thread):
    """Uploads a file again and again (deleting the item after each, so every upload is
    decoded for real) until stopped. Falls back to the long GIF if video answers 415."""

    def __init__(self, service: Service, ctx):
        super().__init__(daemon=True)
        self.service, self.ctx = service, ctx
        self.path = ctx.inputs.mp4_long()
        self.what = ctx.inputs.info.get("mp4_10s" if ctx.quick else "mp4_long", {}).get("what")
        self.note = None
        self.statuses: list[int] = []
        self.busy = threading.Event()  # set once the first upload is under way
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.busy.set()
            try:
                reply = upload(self.service.port, self.path)
            except OSError:
                return  # the service is stopping
            self.statuses.append(reply.status)
            if reply.status == 415 and self.note is None:
                self.note = ("video upload answered 415 (not supported by this build yet); "
                             "ingesting the long GIF instead")
                log(self.note)
                self.path = self.ctx.inputs.gif_long()
                self.what = self.ctx.inputs.info["gif_long"]["what"]
                continue
            item = item_of(reply)
            if item:
                try:
                    request(self.service.port, "DELETE", f"/api/media/{item}")
                except OSError:
                    return
            elif reply.status >= 400:
                time.sleep(0.5)

    def stop(self) -> None:
        self._halt.set()


def _etag(service: Service) -> str:
    return service.get(STATUS).headers.get("etag", "")


def combine(runs: list[dict]) -> dict:
    """Several load runs of one configuration: medians of rate and percentiles, the worst
    p99 and max, and the sums of the counts."""
    statuses: dict = {}
    for numbers in runs:
        for code, count in numbers["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    return {"rps": median([r["rps"] for r in runs if r["rps"] is not None]),
            "p50_ms": median([r["p50_ms"] for r in runs if r["p50_ms"] is not None]),
            "p99_ms": median([r["p99_ms"] for r in runs if r["p99_ms"] is not None]),
            "n503": sum(r["n503"] for r in runs), "n429": sum(r["n429"] for r in runs),
            "p99_worst_ms": max((r["p99_ms"] for r in runs if r["p99_ms"] is not None),
                                default=None),
            "max_ms": max((r["max_ms"] for r in runs if r["max_ms"] is not None), default=None),
            "requests": sum(r["requests"] for r in runs), "statuses": statuses,
            "socket_errors": sum(r["socket_errors"] for r in runs), "runs": len(runs),
            "tool": runs[0]["tool"]}


def poll_set(ctx, service: Service, label: str, seconds: float, runs: int, concurrencies,
             extra=None):
    """The six polling configurations of one condition (each concurrency, without and with
    If-None-Match), each `runs` times for `seconds`."""
    goal = P99_GOALS_MS.get(label)
    for conc in concurrencies:
        for conditional in (False, True):
            results = []
            for _ in range(runs):
                headers = [f"If-None-Match: {_etag(service)}"] if conditional else []
                results.append(load.run(service.port, STATUS, conc, seconds, headers))
            numbers = combine(results)
            name = f"{label}_c{conc}" + ("_etag" if conditional else "")
            ctx.emit(result("polling", name, **numbers, **(extra or {}),
                            goal=f"p99_ms <= {goal:g}" if goal else "",
                            met=goal_check(numbers["p99_ms"], goal)))


def _select(service: Service, item: str) -> None:
    reply = request(service.port, "POST", "/api/playback/select", json_body={"id": item})
    if reply.status != 200:
        raise RuntimeError(f"select answered {reply.status}: {reply.message}")


def run(ctx) -> None:
    window = 10.0 if ctx.quick else 60.0
    runs = 1 if ctx.quick else 3  # per polling configuration; the line shows the medians
    poll_seconds = 2.0  # per run, idle and ingest
    playing_seconds = max(1.0, round(window / 6 / runs))  # per run, (b) fills the window
    max_conc = loop_config.defaults().web.max_concurrent_requests
    concurrencies = (1, 4, max_conc)
    data = fresh_dir(os.path.join(ctx.work, "playback"))
    record_path = os.path.join(ctx.work, "pacing-record.json")
    service = Service(ctx.work, "playback", service_config(data),
                      runner=os.path.join(ROOT, "bench", "paced_service.py"),
                      env={"BENCH_RECORD": record_path}).start()
    windows, loads = {}, {}
    ingester = None
    try:
        log("polling (a): idle, empty library")
        poll_set(ctx, service, "idle", poll_seconds, runs, concurrencies)

        ids = {}
        for tag, durations in ((inputs.TAG_20MS, inputs.PACING_20MS),
                               (inputs.TAG_MIXED, inputs.PACING_MIXED)):
            reply = upload_bytes(service.port, inputs.pacing_gif(tag, durations),
                                 f"pacing-{tag:x}.gif")
            ids[tag] = item_of(reply)
            if not ids[tag]:
                raise RuntimeError(f"pacing GIF upload answered {reply.status}: {reply.message}")
        request(service.port, "PUT", "/api/playback/mode", json_body={"mode": "one"})

        _select(service, ids[inputs.TAG_20MS])
        time.sleep(1.5)
        log(f"pacing: 50 fps GIF alone, {window:g} s")
        start = time.monotonic()
        time.sleep(window)
        windows["gif_20ms_alone"] = (inputs.TAG_20MS, start, time.monotonic())

        log("polling (b) while the 50 fps GIF plays (= its pacing under polling load)")
        start = time.monotonic()
        poll_set(ctx, service, "gif50fps", playing_seconds, runs, concurrencies)
        windows["gif_20ms_polled"] = (inputs.TAG_20MS, start, time.monotonic())

        _select(service, ids[inputs.TAG_MIXED])
        time.sleep(1.5)
        log(f"pacing: mixed 30/70/100 ms GIF alone, {window:g} s")
        start = time.monotonic()
        time.sleep(window)
        windows["gif_mixed_alone"] = (inputs.TAG_MIXED, start, time.monotonic())
        log(f"pacing: mixed GIF under polling load (c{max_conc}), {window:g} s")
        start = time.monotonic()
        loads["gif_mixed_polled"] = load.run(service.port, STATUS, max_conc, window)
        windows["gif_mixed_polled"] = (inputs.TAG_MIXED, start, time.monotonic())

        _select(service, ids[inputs.TAG_20MS])
        ingester = Ingester(service, ctx)
        ingester.start()
        ingester.busy.wait(10)
        time.sleep(0.5)
        log("polling (c) while a video is ingested (50 fps GIF playing)")
        start = time.monotonic()
        poll_set(ctx, service, "ingest", poll_seconds, runs, concurrencies,
                 extra={"ingesting": ingester.what})
        windows["gif_20ms_during_ingest"] = (inputs.TAG_20MS, start, time.monotonic())
        if ingester.note:
            ctx.emit(result("polling", "ingest_note", skipped=ingester.note,
                            uploads=len(ingester.statuses)))
        health = service.health()
    finally:
        if ingester is not None:
            ingester.stop()
        service.stop()
    with open(record_path) as fh:
        record = json.load(fh)
    late_total = ((health.get("checks") or {}).get("display") or {}).get("late_frames")
    for name, (tag, start, end) in windows.items():
        durations = inputs.PACING_20MS if tag == inputs.TAG_20MS else inputs.PACING_MIXED
        numbers = pacing.analyse(pacing.select(record, tag, start, end), durations)
        extra = {}
        if name in loads:
            extra["load"] = {k: loads[name][k] for k in ("rps", "p99_ms", "n503", "tool")}
        if name == "gif_20ms_polled":
            extra["load"] = "the polling (b) runs above"
        if name == "gif_20ms_during_ingest":
            extra["load"] = f"polling (c) runs while ingesting {ingester.what}"
        ctx.emit(result("pacing", name, **numbers, **extra, quick=ctx.quick or None))
    ctx.emit(result("pacing", "player_counters", late_frames_total=late_total,
                    notes="the player's own count of frames it skipped to catch up, "
                          "over the whole session"))
