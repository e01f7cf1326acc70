"""Shared pieces of the benchmarks: pure statistics and formatting helpers (unit-tested in
tests/test_bench.py), and the harness that runs the real service as a subprocess.

Stdlib + psutil only. Every time is `time.monotonic()`, which on Linux is one clock for every
process, so times taken here and inside the service (bench/paced_service.py) compare directly.
"""

from __future__ import annotations

import http.client as httpclient
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("memory", "polling", "pacing", "notify", "ingest", "startup", "durability",
          "hardware")
# Fields of a result that describe it rather than measure it (left out of the table's numbers).
META_KEYS = ("group", "bench", "goal", "met", "unit", "runs", "notes", "quick", "error",
             "skipped")


# ---- statistics --------------------------------------------------------------------------
def percentile(values, p: float):
    """The p-th percentile (0..100) with linear interpolation between ranks; None if empty."""
    data = sorted(values)
    if not data:
        return None
    if not 0 <= p <= 100:
        raise ValueError("p must be within 0..100")
    rank = (len(data) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values):
    return percentile(values, 50)


def summary(values, scale: float = 1.0, digits: int = 3) -> dict:
    """p50/p99/max/mean/n of `values` multiplied by `scale` (e.g. 1000 for s -> ms)."""
    data = [v * scale for v in values]
    if not data:
        return {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}
    return {"p50": round(percentile(data, 50), digits), "p99": round(percentile(data, 99), digits),
            "max": round(max(data), digits), "mean": round(sum(data) / len(data), digits),
            "n": len(data)}


# ---- result lines and the table -----------------------------------------------------------
def clean(obj, digits: int = 3):
    """Round floats for humans and make the object JSON-safe (NaN/inf become None)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {str(k): clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v, digits) for v in obj]
    return obj


def result(group: str, bench: str, **fields) -> dict:
    """One benchmark's result: `group`, `bench`, then its numbers (first ones are headline)."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    return clean({"group": group, "bench": bench, **fields})


def json_line(record: dict) -> str:
    """The one-line JSON form printed for every benchmark."""
    for key in ("group", "bench"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"a result needs a string {key!r}")
    return json.dumps(clean(record), separators=(", ", ": "), allow_nan=False)


def goal_check(value, limit, *, lower_is_better: bool = True):
    """True/False when `value` meets `limit`; None when there is no value to judge."""
    if value is None or limit is None:
        return None
    return value <= limit if lower_is_better else value >= limit


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def headline(record: dict, limit: int = 4) -> str:
    """The first `limit` plain numbers of a result as `key=value`, for the table."""
    parts = []
    for key, value in record.items():
        if key in META_KEYS or isinstance(value, (dict, list, str)) or value is None:
            continue
        parts.append(f"{key}={_fmt(value)}")
        if len(parts) == limit:
            break
    if not parts and record.get("error"):
        parts.append(str(record["error"])[:60])
    if not parts and record.get("skipped"):
        parts.append("skipped: " + str(record["skipped"])[:50])
    return "  ".join(parts)


def format_table(rows, headers) -> str:
    """A plain-text table with columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(record: dict) -> str:
    """The table's last column: met / MISSED / n/a (an error or skip) / empty (no goal)."""
    met = record.get("met")
    if met is not None:
        return "met" if met else "MISSED"
    if record.get("error") or record.get("skipped"):
        return "n/a: " + ("error" if record.get("error") else "skipped")
    return ""


def table_rows(records) -> list[tuple]:
    return [(rec["group"], rec["bench"], headline(rec), rec.get("goal", ""), verdict(rec))
            for rec in records]


def results_table(records) -> str:
    return format_table(table_rows(records), ("group", "bench", "numbers", "goal", "goal?"))


def markdown_table(records) -> str:
    """The same table as Markdown, for docs/benchmarks.md."""
    lines = ["| group | bench | numbers | goal | goal? |", "|---|---|---|---|---|"]
    for row in table_rows(records):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def _n(value, digits: int = 3) -> str:
    return "?" if value is None else _fmt(round(value, digits) if isinstance(value, float)
                                          else value)


def brief_rows(records) -> list[tuple]:
    """One short row per result worth a glance (polling folded per condition), for the
    docs/benchmarks.md: (group, what, result, goal, verdict)."""
    rows, polling = [], {}
    for rec in records:
        group, bench = rec["group"], rec["bench"]
        if rec.get("skipped") or bench == "group_failed":
            rows.append((group, bench, (rec.get("skipped") or rec.get("error") or "")[:80],
                         "", verdict(rec)))
            continue
        if group == "polling":
            polling.setdefault(bench.split("_c")[0], []).append(rec)
            continue
        if group == "memory" and "rss_mb" in rec:
            text = f"RSS {_n(rec['rss_mb'])} MB (USS {_n(rec.get('uss_mb'))} MB)"
        elif group == "memory":
            text = (f"peak RSS {_n(rec['peak_rss_mb'])} MB, with children "
                    f"{_n(rec['peak_with_children_mb'])} MB")
        elif group in ("pacing", "hardware") and "p99_dev_ms" in rec:
            text = (f"p99 dev {_n(rec['p99_dev_ms'])} ms, drift {_n(rec['drift_ms'])} ms, "
                    f"late {rec['late_frames']}, {_n(rec['cpu_per_frame_us'], 0)} us CPU/frame")
        elif group == "notify" and "cpu_per_frame_us" in rec:
            text = (f"{_n(rec['cpu_per_frame_us'], 0)} us CPU/frame, {_n(rec['fps'])} fps, "
                    f"interval p99 err {_n(rec['interval_err_p99_ms'])} ms")
        elif group == "notify" and "p99_ms" in rec:
            text = (f"p50 {_n(rec['p50_ms'])} ms, p99 {_n(rec['p99_ms'])} ms, max "
                    f"{_n(rec['max_ms'])} ms ({rec['notifications']} posts, "
                    f"{rec['not_shown']} not shown)")
        elif group == "ingest":
            text = (f"{_n(rec.get('upload_s'))} s vs decode {_n(rec.get('decode_s'))} s "
                    f"= {_n(rec.get('ratio'), 2)}x")
        elif group == "startup":
            text = f"{_n(rec['ready_s'])} s to READY=1 (median of {rec.get('runs')})"
        elif group == "durability" and "index_writes_during" in rec:
            text = (f"{rec['index_writes_during']} index writes during, "
                    f"{rec['index_writes_after_flush']} after the debounced flush")
        elif group == "durability":
            text = f"p50 {_n(rec.get('p50_ms'))} ms, p99 {_n(rec.get('p99_ms'))} ms"
        else:
            text = headline(rec)
        if rec.get("error"):
            text = ("upload answered 415: video not supported by this build"
                    if "415" in rec["error"] else f"{text} ({rec['error'][:60]})")
        rows.append((group, bench, text, rec.get("goal", ""), verdict(rec)))
    for condition, recs in polling.items():
        p99 = [r["p99_ms"] for r in recs if r.get("p99_ms") is not None]
        rps = [r["rps"] for r in recs if r.get("rps") is not None]
        if not p99:
            continue
        goals = {r.get("goal") for r in recs} - {""}
        verdicts = [r.get("met") for r in recs if r.get("met") is not None]
        worst = max(recs, key=lambda r: r.get("p99_ms") or 0)
        text = (f"p99 {_n(min(p99))}..{_n(max(p99))} ms (worst {worst['bench']}), "
                f"{_n(min(rps), 0)}..{_n(max(rps), 0)} req/s, "
                f"503: {sum(r.get('n503', 0) for r in recs)}, "
                f"429: {sum(r.get('n429', 0) for r in recs)}")
        verdict_text = "" if not verdicts else ("met" if all(verdicts) else
                                                f"MISSED {verdicts.count(False)}/6")
        rows.append(("polling", f"{condition} (c1/c4/c6, +/- ETag)", text,
                     goals.pop() if goals else "", verdict_text))
    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(rows, key=lambda r: order[r[0]])


def brief_markdown(records) -> str:
    lines = ["| group | bench | result | goal | goal? |", "|---|---|---|---|---|"]
    for row in brief_rows(records):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            found = re.search(r"^(model name|Model)\s*:\s*(.+)$", fh.read(), re.M)
            if found:
                model = found.group(2).strip()
    except OSError:
        pass
    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(),
            "memory_mb": round(psutil.virtual_memory().total / 2**20),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def log(message: str) -> None:
    """Progress for people, on stderr (stdout carries only the result lines and the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- HTTP -------------------------------------------------------------------------------
class Reply:
    def __init__(self, status: int, headers: dict, body: bytes, seconds: float):
        self.status, self.headers, self.body, self.seconds = status, headers, body, seconds

    @property
    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def data(self):
        doc = self.json
        return doc.get("data") if isinstance(doc, dict) else None

    @property
    def message(self) -> str:
        doc = self.json
        if isinstance(doc, dict):
            return f"{doc.get('error')}: {doc.get('message')}"
        return self.body[:120].decode(errors="replace")


def request(port: int, method: str, path: str, body=None, headers=None, json_body=None,
            timeout: float = 300.0, source: str | None = None) -> Reply:
    """One request on a fresh connection; `body` may be bytes or an open binary file;
    `source` binds a loopback source address (a client of its own for per-client limits)."""
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    if hasattr(body, "read"):
        headers.setdefault("Content-Length", str(os.fstat(body.fileno()).st_size))
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      blocksize=256 * 1024,
                                      source_address=(source, 0) if source else None)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                     time.monotonic() - started)
    finally:
        conn.close()


def upload(port: int, path: str, name: str | None = None, timeout: float = 600.0,
           source: str | None = None) -> Reply:
    """Upload a file as a raw body (`?name=`), streamed from disk."""
    query = urllib.parse.urlencode({"name": name or os.path.basename(path)})
    with open(path, "rb") as fh:
        return request(port, "POST", f"/api/media?{query}", body=fh,
                       headers={"Content-Type": "application/octet-stream"},
                       timeout=timeout, source=source)


def upload_bytes(port: int, data: bytes, name: str, timeout: float = 120.0) -> Reply:
    query = urllib.parse.urlencode({"name": name})
    return request(port, "POST", f"/api/media?{query}", body=data,
                headers={"Content-Type": "application/octet-stream"}, timeout=timeout)


def item_of(reply: Reply) -> str | None:
    """The item id an upload reply names, if any."""
    results = (reply.data or {}).get("results") or []
    for res in results:
        if isinstance(res.get("item"), dict):
            return res["item"]["id"]
    return None


def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


# ---- the service as a subprocess ---------------------------------------------------------
RATE_LIFT = {f"rate_{cls}_{kind}": 100000 for cls in ("poll", "control", "upload", "static")
             for kind in ("per_sec", "burst")}


def service_config(data_dir: str, **sections) -> dict:
    """The bench's config: loopback port 0, headless, no boot screen, rate limits lifted.

    Everything else keeps the shipped defaults, so the numbers are the product's."""
    raw = {"web": {"host": "127.0.0.1", "port": 0, **RATE_LIFT},
           "system": {"data_dir": data_dir},
           "display": {"driver": "headless", "boot_screen_sec": 0}}
    for section, keys in sections.items():
        raw.setdefault(section, {}).update(keys)
    return raw


class ServiceError(RuntimeError):
    pass


class Service:
    """`loop.py` (or a bench runner in its place) on a free loopback port, with a real
    systemd-style notify socket; `exec_to_ready` is the start-up time."""

    live: list = []  # every started service, so run.py can kill leftovers on any exit

    def __init__(self, work_dir: str, name: str, config: dict, *, runner: str | None = None,
                 env: dict | None = None, python: str | None = None):
        self.work_dir, self.name, self.config = work_dir, name, config
        self.runner = runner or os.path.join(ROOT, "loop.py")
        self.python = python or sys.executable  # the binding's venv for group `hardware`
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.exec_to_ready: float | None = None
        self.stderr_path = os.path.join(work_dir, f"{name}.stderr")
        self.config_path = os.path.join(work_dir, f"{name}.config.json")

    @property
    def data_dir(self) -> str:
        return self.config["system"]["data_dir"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Service:
        with open(self.config_path, "w") as fh:
            json.dump(self.config, fh)
        sock_path = os.path.join(self.work_dir, f"{self.name}.notify")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(sock_path)
        notify.settimeout(0.2)
        env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=sock_path, **self.env)
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        try:
            with open(self.stderr_path, "w") as err:
                started = time.monotonic()
                self.proc = subprocess.Popen(
                    [self.python, self.runner, "--config", self.config_path], cwd=ROOT,
                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            Service.live.append(self)
            ready = None
            deadline = started + timeout
            while ready is None and time.monotonic() < deadline:
                try:
                    message = notify.recv(4096).decode(errors="replace")
                except TimeoutError:
                    if self.proc.poll() is not None:
                        break
                    continue
                if "READY=1" in message.split("\n"):
                    ready = time.monotonic()
        finally:
            notify.close()
            os.unlink(sock_path)
        if ready is None:
            self.kill()
            raise ServiceError(f"{self.name} did not send READY=1:\n{self.stderr()[-2000:]}")
        self.exec_to_ready = ready - started
        found = re.search(r"LOOP listening on http://[^\s]+:(\d+)", self.stderr())
        if not found:
            self.kill()
            raise ServiceError(f"{self.name}: no 'listening' line:\n{self.stderr()[-2000:]}")
        self.port = int(found.group(1))
        return self

    def stderr(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            if self in Service.live:
                Service.live.remove(self)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self in Service.live:
            Service.live.remove(self)

    # conveniences
    def get(self, path: str, **kw) -> Reply:
        return request(self.port, "GET", path, **kw)

    def health(self) -> dict:
        return self.get("/api/poll/health").data or {}

    def http_counters(self) -> dict:
        return ((self.health().get("checks") or {}).get("http") or {})


def kill_leftovers() -> None:
    for service in list(Service.live):
        service.kill()


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


# ---- memory ------------------------------------------------------------------------------
def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of the process, RSS of the process plus all its children) in MiB."""
    proc = psutil.Process(pid)
    own = proc.memory_info().rss
    total = own
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return own / 2**20, total / 2**20


def vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak-RSS mark of the process (exact, unlike sampling), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            found = re.search(r"^VmHWM:\s+(\d+) kB", fh.read(), re.M)
        return int(found.group(1)) / 1024 if found else None
    except OSError:
        return None


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (`5` into clear_refs); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakSampler(threading.Thread):
    """Samples RSS (own, own + children) every `interval` seconds and keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_own = 0.0
        self.peak_total = 0.0
        self.peak_children = 0.0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                own, total = rss_mb(self.pid)
            except psutil.Error:
                return
            self.peak_own = max(self.peak_own, own)
            self.peak_total = max(self.peak_total, total)
            self.peak_children = max(self.peak_children, total - own)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> PeakSampler:
        self._halt.set()
        self.join(5)
        return self


def uss_mb(pid: int) -> float | None:
    """Unique set size: the memory only this process holds (what its exit would free)."""
    try:
        return psutil.Process(pid).memory_full_info().uss / 2**20
    except (psutil.Error, AttributeError):
        return None


def settle_rss(pid: int, seconds: float, samples: int = 5) -> tuple[float, float, float]:
    """Median RSS (own, with children) and USS over `samples` readings over `seconds`."""
    own, total, unique = [], [], []
    for _ in range(samples):
        time.sleep(seconds / samples)
        o, t = rss_mb(pid)
        own.append(o)
        total.append(t)
        unique.append(uss_mb(pid))
    return median(own), median(total), median([u for u in unique if u is not None])
