"""Group 6, durability cost: what the crash-safe index write costs, and how often it happens.

- `index_write_*`: `loop.durable.write_json_atomic` (temp file, flush, fsync, os.replace,
  directory fsync) of a real index.json, empty and with 200 items, in a directory on the same
  filesystem as the bench's data directories (its type is in results.json's machine.bench_fs).
- `put_loop_200`: round trip of `PUT /api/loop` on the service with 200 items, a library
  change that writes the index before it answers.
- `brightness_x100`: 100 brightness changes over HTTP; the index writes they caused right away
  (debounced: expect 0) and after the monitor's flush (`system.settings_flush_sec`, expect 1).
"""

from __future__ import annotations

import json
import os
import time

from bench import memory
from bench.common import Service, fresh_dir, request, result, service_config, summary, wait_until
from loop import config as loop_config
from loop.durable import write_json_atomic


def _write_latency(directory: str, doc: dict, runs: int) -> dict:
    path = os.path.join(directory, "index.json")
    times = []
    for _ in range(runs):
        started = time.monotonic()
        write_json_atomic(path, doc)
        times.append(time.monotonic() - started)
    numbers = summary(times, scale=1000)
    return {"p50_ms": numbers["p50"], "p99_ms": numbers["p99"], "max_ms": numbers["max"],
            "runs": runs, "bytes": os.path.getsize(path)}


def _index_writes(service: Service):
    storage = (service.health().get("checks") or {}).get("storage") or {}
    return storage.get("index_writes")


def run(ctx) -> None:
    runs = 20 if ctx.quick else 50
    scratch = fresh_dir(os.path.join(ctx.work, "durability"))
    ctx.emit(result("durability", "index_write_empty",
                    **_write_latency(scratch, {"version": 1, "items": [], "loop": [],
                                               "settings": {}}, runs)))
    library = memory.copy_library(ctx, "durability-lib200")
    with open(os.path.join(library, "index.json")) as fh:
        doc = json.load(fh)
    ctx.emit(result("durability", "index_write_200_items", **_write_latency(scratch, doc, runs)))

    service = Service(ctx.work, "durability", service_config(library)).start()
    try:
        loop = list(doc["loop"])
        times, statuses = [], {}
        for n in range(runs):
            order = loop[n % len(loop):] + loop[:n % len(loop)]  # a real change every time
            reply = request(service.port, "PUT", "/api/loop", json_body={"items": order})
            times.append(reply.seconds)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
        numbers = summary(times, scale=1000)
        ctx.emit(result("durability", "put_loop_200_items", p50_ms=numbers["p50"],
                        p99_ms=numbers["p99"], max_ms=numbers["max"], runs=runs,
                        statuses=statuses))

        flush_sec = loop_config.defaults().system.settings_flush_sec
        before = _index_writes(service)
        started = time.monotonic()
        times, statuses = [], {}
        for n in range(100):
            reply = request(service.port, "PUT", "/api/display",
                            json_body={"brightness": 1 + n % 100})
            times.append(reply.seconds)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
        burst_s = time.monotonic() - started
        right_after = _index_writes(service)
        flushed = wait_until(lambda: (_index_writes(service) or 0) > (right_after or 0),
                             timeout=flush_sec * 2 + 5, interval=0.25)
        settled = _index_writes(service)
        numbers = summary(times, scale=1000)
        ctx.emit(result(
            "durability", "brightness_x100",
            index_writes_during=None if before is None else right_after - before,
            index_writes_after_flush=None if before is None else settled - before,
            p50_ms=numbers["p50"], p99_ms=numbers["p99"], burst_s=burst_s,
            flush_seen=bool(flushed), flush_sec=flush_sec, statuses=statuses,
            notes="index writes counted by the service (health checks.storage.index_writes)"))
    finally:
        service.stop()
