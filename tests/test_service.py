"""The real `loop.py` process: notify messages, SIGTERM, restart, and `curl` as a person uses it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, Client, gif_bytes, png_bytes, wait_for, write_config
from mediagen import read_reply

CURL = shutil.which("curl")


def require_curl():
    if CURL:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("curl is missing under CI; .ci/run must install it")
    pytest.skip("curl is not installed on this machine")


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def receive_until(sock, wanted: str, timeout=10.0) -> list[str]:
    """Datagrams until one contains `wanted`; returns all of them."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if wanted in seen[-1]:
            return seen
    raise AssertionError(f"{wanted!r} not received; got {seen}")


def test_ready_and_stopping_over_a_real_notify_socket(tmp_path, services, notify_socket):
    sock, path = notify_socket
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config, env={"NOTIFY_SOCKET": path})
    ready = receive_until(sock, "READY=1")
    assert any(line == "READY=1" for msg in ready for line in msg.split("\n"))
    # READY means serving: the API answers now
    assert service.client.get("/api/poll/health").status == 200
    assert service.terminate() == 0
    assert "STOPPING=1" in "".join(receive_until(sock, "STOPPING=1"))


def test_sigterm_exits_0_and_restart_keeps_library(tmp_path, services):
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config)
    created = service.client.upload([("a.gif", gif_bytes())])
    assert created.status == 201
    item_id = created.data["results"][0]["item"]["id"]
    service.client.put("/api/display", json_body={"brightness": 33})
    assert service.terminate() == 0
    again = services(config)
    items = again.client.get("/api/media").data["items"]
    assert [m["id"] for m in items] == [item_id]
    # the debounced brightness was flushed at shutdown
    assert again.client.get("/api/display").data["brightness"] == 33
    wait_for(lambda: again.client.get("/api/poll/status").data["player"]["item"] == item_id)
    assert again.terminate() == 0


def test_sigterm_lets_an_inflight_upload_finish(tmp_path, services):
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config)
    data = png_bytes((9, 9, 9))
    body = b"".join([b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\""
                     b"\r\n\r\n", data, b"\r\n--B--\r\n"])
    split = body.index(b"\r\n\r\n") + 14  # the part's head and a little of the file
    conn = socket.create_connection(("127.0.0.1", service.port))
    conn.sendall(b"POST /api/media HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                 b"multipart/form-data; boundary=B\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body[:split])
    # the request is in flight (its job is receiving) when the signal arrives
    def receiving():
        reply = service.client.get("/api/poll/progress")
        return reply.status == 200 and any(j["stage"] == "receiving"
                                           for j in reply.data["jobs"])
    wait_for(receiving, timeout=10, interval=0.1)
    service.proc.send_signal(15)
    wait_for(lambda: "loop.app: stopping" in service.stderr(), timeout=10)
    conn.sendall(body[split:])
    conn.settimeout(10)
    status, _, body = read_reply(conn)
    conn.close()
    assert status == 201, body[:200]
    assert service.proc.wait(20) == 0


def test_curl_the_way_the_readme_shows(tmp_path, services):
    require_curl()
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config)
    base = f"http://127.0.0.1:{service.port}"
    gif = tmp_path / "cat.gif"
    gif.write_bytes(gif_bytes(delays=(50, 50, 50)))

    def curl(*args):
        proc = subprocess.run([CURL, "-sS", "-w", "\n%{http_code}", *args], capture_output=True,
                              timeout=30, cwd=tmp_path)
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code), body

    code, body = curl("-F", f"file=@{gif}", f"{base}/api/media")
    assert code == 201
    item = json.loads(body)["data"]["results"][0]["item"]
    code, body = curl("--data-binary", f"@{gif}", f"{base}/api/media?name=cat.gif")
    assert code == 200 and json.loads(body)["data"]["results"][0]["item"]["id"] == item["id"]
    frames = set()
    for _ in range(40):
        code, body = curl(f"{base}/api/poll/status")
        player = json.loads(body)["data"]["player"]
        assert player["item"] in (item["id"], None)
        frames.add(player["frame"])
        if len(frames) > 1:
            break
        time.sleep(0.03)
    assert len(frames) > 1, "the frame index should advance"
    code, _ = curl("-o", "now.png", f"{base}/api/display/frame.png")
    assert code == 200 and (tmp_path / "now.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, body = curl(f"{base}/api/poll/health")
    health = json.loads(body)["data"]
    assert code == 200 and health["healthy"] is True
    assert health["checks"]["memory"]["rss_mb"] > 0
    assert service.terminate() == 0


def test_port_in_use_fails_cleanly(tmp_path, services):
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    first = services(config)
    clash = write_config(tmp_path / "clash.json", tmp_path / "data2",
                         web={"port": first.port})
    proc = subprocess.run([os.sys.executable, "loop.py", "--config", clash],
                          cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 1 and "cannot start" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert Client(first.port).get("/api/poll/health").status == 200


def test_originals_are_streamed_not_read_into_memory(tmp_path, services):
    import psutil
    from PIL import Image
    config = write_config(tmp_path / "config.json", tmp_path / "data",
                          web={"rate_static_burst": 1000})
    service = services(config)
    noise = Image.frombytes("RGB", (2000, 2000), os.urandom(2000 * 2000 * 3))
    path = tmp_path / "noise.png"
    noise.save(path, compress_level=0)
    size = path.stat().st_size  # ~12 MB that PNG cannot shrink
    item = service.client.post("/api/media?name=noise.png", body=path.read_bytes()) \
        .data["results"][0]["item"]
    process = psutil.Process(service.proc.pid)
    before = process.memory_info().rss
    readers = []
    for _ in range(3):  # three slow downloads at once, each only started
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /api/media/{item['id']}/original HTTP/1.1\r\nHost: localhost\r\n"
                     f"\r\n".encode())
        readers.append(sock)
    time.sleep(1.0)
    grown = process.memory_info().rss - before
    head = readers[0].recv(65536)
    assert b"200 OK" in head and f"Content-Length: {size}".encode() in head
    for sock in readers:
        sock.close()
    assert grown < size, f"RSS grew {grown >> 20} MB for three {size >> 20} MB downloads"


SIGNAL_PROBE = """
import json, os, signal, sys, threading, time
from pathlib import Path
sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], "tests")]
from conftest import make_config
from loop.service.app import App

app = App(make_config(Path(sys.argv[1])), environ={})
LOCKS = (type(threading.Lock()), type(threading.RLock()))


def probe():
    while app.monitor is None or not app.monitor.is_alive():  # run() has started it
        time.sleep(0.01)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        taken = []

        def profile(frame, event, arg):
            # a lock's own methods, or anything in threading.py (Event, Condition ...)
            if event == "c_call" and isinstance(getattr(arg, "__self__", None), LOCKS):
                taken.append(arg.__name__)
            elif event == "call" and frame.f_code.co_filename == threading.__file__:
                taken.append("threading." + frame.f_code.co_name)
        sys.setprofile(profile)
        try:
            handler(signum, None)
        finally:
            sys.setprofile(None)
        print(json.dumps([signal.Signals(signum).name, taken]), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # and now a real one


threading.Thread(target=probe, daemon=True).start()
sys.exit(app.run())
"""


def test_signal_handlers_take_no_lock(tmp_path):
    """A handler runs on the main thread between two bytecodes, also while that thread holds
    a lock; one that takes a lock (Event.set does) can wait for itself forever. Each handler
    LOOP installs is called under a profiler that sees every lock operation."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_PROBE, str(tmp_path), ROOT], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    seen = dict(json.loads(line) for line in proc.stdout.splitlines())
    assert seen == {"SIGHUP": [], "SIGINT": [], "SIGTERM": []}, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_burst_of_signals_is_handled_and_sigterm_still_stops(tmp_path, services):
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config)
    for _ in range(50):
        service.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in service.stderr(), timeout=10)
    assert service.client.get("/api/poll/health").status == 200
    assert service.terminate() == 0
