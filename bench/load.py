"""HTTP load for the polling benchmarks: Debian's `wrk` when installed, else a built-in
generator (threads in a separate process, so its own GIL never competes with the bench).

Both report the same shape: requests, req/s, latency percentiles in ms (request written to
response read, connect time excluded), counts per HTTP status, and socket errors.

Run directly (`python -m bench.load PORT PATH CONCURRENCY SECONDS [HEADER ...]`) it is the
built-in generator and prints one JSON line.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, percentile  # noqa: E402

WRK = shutil.which("wrk")
LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_report.lua")


def normalise(raw: dict, tool: str) -> dict:
    """wrk's or the built-in's numbers in one shape (ms, req/s, statuses as str keys)."""
    seconds = raw["duration_us"] / 1e6 if raw.get("duration_us") else 0
    statuses = {str(k): v for k, v in sorted(raw.get("statuses", {}).items())}
    errors = raw.get("errors", {})
    return {"tool": tool, "requests": raw["requests"],
            "rps": round(raw["requests"] / seconds, 1) if seconds else None,
            "p50_ms": _ms(raw.get("p50_us")), "p90_ms": _ms(raw.get("p90_us")),
            "p99_ms": _ms(raw.get("p99_us")), "max_ms": _ms(raw.get("max_us")),
            "statuses": statuses,
            "n429": statuses.get("429", 0), "n503": statuses.get("503", 0),
            "socket_errors": sum(v for k, v in errors.items() if k != "status")}


def _ms(us):
    return None if us is None else round(us / 1000, 3)


def parse_wrk(output: str) -> dict:
    found = re.search(r"^WRKJSON (\{.*\})\s*$", output, re.M)
    if not found:
        raise RuntimeError(f"wrk gave no result line:\n{output[-1500:]}")
    return json.loads(found.group(1))


def run(port: int, path: str, concurrency: int, seconds: float, headers=(),
        use_wrk: bool | None = None) -> dict:
    """Load `path` with `concurrency` connections for `seconds`; the normalised numbers."""
    if use_wrk is None:
        use_wrk = WRK is not None and os.environ.get("BENCH_NO_WRK") != "1"
    url = f"http://127.0.0.1:{port}{path}"
    if use_wrk:
        cmd = [WRK, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
               "-s", LUA]
        for header in headers:
            cmd += ["-H", header]
        out = subprocess.run(cmd + [url], capture_output=True, text=True,
                             timeout=seconds + 60)
        return normalise(parse_wrk(out.stdout), "wrk")
    cmd = [sys.executable, "-m", "bench.load", str(port), path, str(concurrency), str(seconds),
           *headers]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"built-in load generator failed:\n{out.stderr[-1500:]}")
    return normalise(json.loads(out.stdout.strip().splitlines()[-1]), "builtin")


# ---- the built-in generator ----------------------------------------------------------------
def builtin(port: int, path: str, concurrency: int, seconds: float, headers=()) -> dict:
    header_map = dict(h.split(": ", 1) for h in headers)
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker():
        mine, seen, errs = [], Counter(), Counter()
        conn = None
        while time.monotonic() < stop_at:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.connect()
                started = time.monotonic()
                conn.request("GET", path, headers=header_map)
                resp = conn.getresponse()
                resp.read()
                mine.append(time.monotonic() - started)
                seen[resp.status] += 1
                if resp.getheader("Connection", "").lower() == "close" or resp.will_close:
                    conn.close()
                    conn = None
            except TimeoutError:
                errs["timeout"] += 1
                conn = None
            except OSError:
                errs["read"] += 1
                conn = None
            except http.client.HTTPException:
                errs["read"] += 1
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(mine)
            statuses.update(seen)
            errors.update(errs)

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began

    def us(p):
        value = percentile(latencies, p)
        return None if value is None else value * 1e6
    return {"requests": len(latencies), "duration_us": elapsed * 1e6, "p50_us": us(50),
            "p90_us": us(90), "p99_us": us(99),
            "max_us": max(latencies) * 1e6 if latencies else None,
            "errors": dict(errors), "statuses": {str(k): v for k, v in statuses.items()}}


if __name__ == "__main__":
    port_, path_, conc_, secs_ = sys.argv[1:5]
    print(json.dumps(builtin(int(port_), path_, int(conc_), float(secs_), sys.argv[5:])))
