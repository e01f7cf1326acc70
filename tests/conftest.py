"""Shared fixtures: generated media, a real server on port 0, an HTTP client, a subprocess."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from loop import config  # noqa: E402
from loop.service.app import App  # noqa: E402

FAKE_RGBMATRIX = os.path.join(ROOT, "tests", "fake_rgbmatrix")
UNDER_CI = os.environ.get("CI") == "true"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "capability: may skip under CI too, because what it needs depends on the "
        "installed library versions (e.g. an AVIF codec in Pillow), not on a missing tool")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skip is a failure: a tool the tests need (curl, ffmpeg, chromium,
    systemd-analyze, promtool, shellcheck, the emulator) must be installed by .ci/run."""
    outcome = yield
    report = outcome.get_result()
    if UNDER_CI and report.skipped and not item.get_closest_marker("capability") \
            and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must not happen: {reason}"


# ---- generated media ------------------------------------------------------------------------
def gif_bytes(colours=((255, 0, 0), (0, 255, 0), (0, 0, 255)), delays=(100, 200, 300),
              size=(32, 16), loop=0) -> bytes:
    """An animated GIF with known colours and frame delays (ms)."""
    frames = [Image.new("RGB", size, c) for c in colours]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:],
                   duration=list(delays), loop=loop, disposal=1, optimize=False)
    return out.getvalue()


def png_bytes(colour=(10, 20, 30), size=(64, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(colour=(200, 100, 50), size=(80, 40), exif_orientation=None) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", size, colour)
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(out, "JPEG", **kwargs)
    return out.getvalue()


# ---- configuration and servers ------------------------------------------------------------
def make_config(tmp_path, **overrides) -> config.Config:
    """Test config: temp data dir, loopback port 0, headless, no boot screen."""
    # An in-process App measures the pytest process, which outgrows LOOP's 160 MB budget over
    # a long run; its budget is lifted so only the tests about shedding (injected samples) shed.
    raw = {"web": {"host": "127.0.0.1", "port": 0},
           "system": {"data_dir": str(tmp_path / "data"), "monitor_interval_sec": 0.2,
                      "memory_limit_mb": 100_000},
           "display": {"driver": "headless", "boot_screen_sec": 0}}
    for dotted, value in overrides.items():
        section, key = dotted.split("__", 1) if "__" in dotted else dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return config.build(raw)


@pytest.fixture
def make_app(tmp_path):
    """Start an in-process App with overrides (`web__port=…` style); stopped at teardown."""
    apps = []

    def start(module=None, environ=None, driver=None, root="/", wall=None, **overrides):
        cfg = make_config(tmp_path, **overrides)
        app = App(cfg, environ=dict(environ or {}), module=module, driver=driver, root=root,
                  **({"wall": wall} if wall else {}))
        app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture
def app(make_app):
    return make_app()


class Client:
    """A tiny HTTP client over http.client; `source` binds a loopback source address."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None):
        self.port, self.host, self.source = port, host, source

    def request(self, method, path, body=None, headers=None, json_body=None, timeout=10):
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=timeout,
            source_address=(self.source, 0) if self.source else None)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, dict(resp.getheaders()), data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def upload(self, files, upload_id=None):
        """Multipart upload of [(filename, bytes)] in field 'file'."""
        boundary = "loopboundary7d3"
        parts = []
        for name, data in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                         f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n'
                         f"\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if upload_id:
            headers["X-Upload-Id"] = upload_id
        return self.post("/api/media", body=body, headers=headers)


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def data(self):
        return self.json["data"]

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:200]!r}>"


@pytest.fixture
def client(app):
    return Client(app.server.port)


def wait_for(predicate, timeout=15.0, interval=0.02):
    """Poll `predicate` until it returns a truthy value; fail after `timeout`. The default
    is a liveness bound for a busy, shared machine: a success returns at once, only a
    failure waits that long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# ---- the real process ---------------------------------------------------------------------
class Service:
    """`loop.py` running as a subprocess on a free port."""

    def __init__(self, proc, port, stderr_path):
        self.proc, self.port, self.stderr_path = proc, port, stderr_path
        self.client = Client(port)

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as fh:
            return fh.read()

    def terminate(self, sig=signal.SIGTERM, timeout=20) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def write_config(path, data_dir, **sections) -> str:
    raw = {"web": {"host": "127.0.0.1", "port": 0},
           "system": {"data_dir": str(data_dir), "monitor_interval_sec": 0.2},
           "display": {"driver": "headless", "boot_screen_sec": 0}}
    for section, keys in sections.items():
        raw.setdefault(section, {}).update(keys)
    with open(path, "w") as fh:
        json.dump(raw, fh)
    return str(path)


def spawn(config_path, env=None, extra_args=(), timeout=20) -> Service:
    """Start `loop.py` and wait for its 'listening' line."""
    stderr_path = f"{config_path}.stderr.{time.monotonic_ns()}"
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    full_env.pop("NOTIFY_SOCKET", None)
    full_env.update(env or {})
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "loop.py"), "--config",
                                 str(config_path), *extra_args], cwd=ROOT, env=full_env,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(stderr_path, errors="replace") as fh:
            match = re.search(r"LOOP listening on http://[^:]+:(\d+)", fh.read())
        if match:
            return Service(proc, int(match.group(1)), stderr_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    with open(stderr_path) as fh:
        raise AssertionError(f"service did not start:\n{fh.read()}")


@pytest.fixture
def services():
    started = []

    def start(*args, **kwargs):
        service = spawn(*args, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(10)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
