#!/usr/bin/env python3
"""`make bench`: start the real LOOP service on loopback (headless driver) and measure memory,
polling, frame pacing, a marquee and notification latency, ingest speed, start-up and
durability cost; then the same service on the real LED library on a simulated Pi (group
`hardware`, skipped when `make rgbmatrix` has not built the binding).

Prints one JSON object per benchmark on stdout as it goes, then a short table; progress goes
to stderr. A full run (every group, full inputs) saves everything to bench/results.json, the
committed numbers; a quick or partial run leaves that file alone. Benchmarks report numbers and
never fail on timing; the exit status is 1 only when a group could not run at all.

    python bench/run.py                   # every group (about 8-9 minutes)
    BENCH_QUICK=1 python bench/run.py     # smaller inputs, shorter windows (about 2 minutes)
    python bench/run.py pacing ingest     # some groups only
    python bench/run.py --table           # the last results.json as a short Markdown table
    python bench/run.py --table-full      # ... every result

Environment: BENCH_QUICK=1, BENCH_DIR (where the temp work directory goes; it decides the
filesystem the fsync numbers are about), BENCH_KEEP=1 (keep the work directory),
BENCH_NO_WRK=1 (use the built-in load generator even when wrk is installed),
BENCH_SAVE=1 (write results.json even from a quick or partial run).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import (  # noqa: E402
    common,
    durability,
    hardware,
    ingest,
    memory,
    notify,
    playback,
    startup,
)
from bench.common import GROUPS, ROOT, json_line, log, result  # noqa: E402
from bench.inputs import Inputs  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results.json")


class Context:
    """What every group gets: the work directory, quick mode, inputs, and `emit`."""

    def __init__(self, work: str, quick: bool):
        self.work, self.quick = work, quick
        self.inputs = Inputs(work, quick)
        self.records: list[dict] = []
        self.lib200 = None

    def emit(self, record: dict) -> None:
        self.records.append(record)
        print(json_line(record), flush=True)


def filesystem_of(path: str) -> str:
    """The mount's filesystem type for `path` (fsync cost depends on it)."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mount = parts[1]
                if os.path.realpath(path).startswith(mount.rstrip("/") + "/") or \
                        os.path.realpath(path) == mount:
                    if len(mount) > len(best):
                        best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import PIL
    import psutil
    return {"pillow": PIL.__version__, "psutil": psutil.__version__,
            "wrk": shutil.which("wrk") is not None and os.environ.get("BENCH_NO_WRK") != "1",
            "ffmpeg": shutil.which("ffmpeg") is not None}


def print_table(full: bool, path: str = RESULTS) -> int:
    with open(path) as fh:
        doc = json.load(fh)
    machine = doc["machine"]
    print(f"{doc['date']} on {machine['cpu']} ({machine['cores']} cores, "
          f"{machine['memory_mb']} MB), Python {machine['python']}, "
          f"Pillow {doc['versions']['pillow']}{', QUICK' if doc['quick'] else ''}\n")
    if full:
        print(common.markdown_table(doc["results"]))
    else:
        print(common.brief_markdown(doc["results"]))
    return 0


def saves_results(wanted, quick: bool, environ=os.environ) -> bool:
    """Only a full run replaces the committed numbers (or BENCH_SAVE=1 says so)."""
    return (set(wanted) == set(GROUPS) and not quick) or environ.get("BENCH_SAVE") == "1"


def main(argv: list[str]) -> int:
    if "--table" in argv or "--table-full" in argv:
        return print_table("--table-full" in argv)
    wanted = [a for a in argv if not a.startswith("-")] or list(GROUPS)
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        print(f"unknown group(s): {', '.join(unknown)}; known: {', '.join(GROUPS)}",
              file=sys.stderr)
        return 2
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    work = tempfile.mkdtemp(prefix="loop-bench-", dir=os.environ.get("BENCH_DIR") or None)
    keep = os.environ.get("BENCH_KEEP") == "1"
    atexit.register(common.kill_leftovers)
    if not keep:
        atexit.register(shutil.rmtree, work, True)
    ctx = Context(work, quick)
    began = time.monotonic()
    machine = common.machine_info()
    machine["bench_fs"] = filesystem_of(work)
    log(f"work directory {work} ({machine['bench_fs']}){', QUICK mode' if quick else ''}")
    if quick:
        log("BENCH_QUICK: smaller inputs (1000-frame GIF, 10 s MP4) and short windows")

    steps = [("memory", memory.run), ("polling+pacing", playback.run),
             ("notify", notify.run), ("ingest", ingest.run), ("startup", startup.run),
             ("durability", durability.run), ("hardware", hardware.run)]
    failed = []
    timings = {}
    for name, step in steps:
        groups = name.split("+")
        if not any(g in wanted for g in groups):
            continue
        log(f"== {name}")
        started = time.monotonic()
        try:
            step(ctx)
        except Exception as exc:
            traceback.print_exc()
            failed.append(name)
            ctx.emit(result(groups[0], "group_failed", error=f"{type(exc).__name__}: {exc}"))
        finally:
            common.kill_leftovers()
        timings[name] = round(time.monotonic() - started, 1)
        log(f"   {name} took {timings[name]} s")

    elapsed = time.monotonic() - began
    print()
    print(common.results_table(ctx.records))
    print(f"\n{len(ctx.records)} results in {elapsed:.0f} s"
          f"{' (BENCH_QUICK: smaller inputs, shorter windows)' if quick else ''}")
    doc = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "quick": quick, "commit": git_commit(),
           "machine": machine, "versions": versions(), "elapsed_s": round(elapsed, 1),
           "group_seconds": timings, "inputs": ctx.inputs.info, "results": ctx.records}
    if saves_results(wanted, quick):
        with open(RESULTS, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        log(f"saved {os.path.relpath(RESULTS, ROOT)}")
    else:
        log("quick or partial run: bench/results.json left as it was (BENCH_SAVE=1 "
            "overrides)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
