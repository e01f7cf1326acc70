"""Group 5, start-up: time from exec of `loop.py` to `READY=1` on a real notify socket (an
AF_UNIX datagram socket the bench binds, as systemd does), with 0 and 200 items, and the time
to recover a 200-item library whose index.json was deleted (rebuilt from meta.json files).

Also reports where start-up time goes: `python -X importtime` of `loop.service.app` (the slowest
imports, cumulative) in the same run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench import memory
from bench.common import ROOT, Service, fresh_dir, goal_check, median, result, service_config

READY_GOAL_S = 0.5


def parse_importtime(text: str, module: str, top: int = 5) -> dict:
    """From `-X importtime` output: `module`'s cumulative import time and its slowest
    imports two levels down (cumulative ms)."""
    rows = []
    for line in text.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if found:
            rows.append((int(found.group(2)), len(found.group(3)), found.group(4)))
    end = next((i for i in range(len(rows) - 1, -1, -1) if rows[i][2] == module), None)
    if end is None:
        return {"import_ms": None, "slowest_imports_ms": {}}
    depth = rows[end][1]
    start = end
    while start > 0 and rows[start - 1][1] > depth:  # lines before it, deeper: its imports
        start -= 1
    subtree = [r for r in rows[start:end] if r[1] <= depth + 4]
    slow = sorted(subtree, reverse=True)[:top]
    return {"import_ms": rows[end][0] / 1000,
            "slowest_imports_ms": {name: round(c / 1000, 1) for c, _, name in slow}}


def import_profile() -> dict:
    """`python -X importtime -c "import loop.service.app"`, parsed."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import loop.service.app"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    return parse_importtime(out.stderr, "loop.service.app")


def _ready_times(ctx, name: str, make_data, runs: int, check_items: int | None = None):
    times, items = [], []
    for run in range(runs):
        service = Service(ctx.work, f"start-{name}-{run}", service_config(make_data(run))).start()
        try:
            times.append(service.exec_to_ready)
            if check_items is not None:
                listed = (service.get("/api/media").data or {}).get("items", [])
                items.append(len(listed))
        finally:
            service.stop()
    return times, items


def run(ctx) -> None:
    runs = 3 if ctx.quick else 5
    profile = import_profile()
    times, _ = _ready_times(ctx, "empty", lambda r: fresh_dir(
        os.path.join(ctx.work, f"start-empty-{r}")), runs)
    ctx.emit(result("startup", "ready_empty", ready_s=median(times), min_s=min(times),
                    max_s=max(times), runs=runs, **profile))

    times, items = _ready_times(ctx, "lib200", lambda r: memory.copy_library(
        ctx, f"start-lib200-{r}"), runs, check_items=True)
    ctx.emit(result("startup", "ready_200_items", ready_s=median(times), min_s=min(times),
                    max_s=max(times), runs=runs, items=median(items),
                    goal=f"ready_s <= {READY_GOAL_S}",
                    met=goal_check(median(times), READY_GOAL_S)))

    def without_index(run):
        data = memory.copy_library(ctx, f"start-noindex-{run}")
        os.unlink(os.path.join(data, "index.json"))
        return data
    rec_runs = 2 if ctx.quick else 3
    times, items = _ready_times(ctx, "noindex", without_index, rec_runs, check_items=True)
    ctx.emit(result("startup", "recover_deleted_index_200", ready_s=median(times),
                    min_s=min(times), max_s=max(times), runs=rec_runs,
                    items_recovered=min(items), items_expected=memory.LIBRARY_ITEMS))
