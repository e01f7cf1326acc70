"""LOOP as a service on a simulated Raspberry Pi Zero 2 W: `loop.py --display rgbmatrix` run
by the Python of .venv-rgbmatrix (Debian's Python, Pillow and psutil, and the real `rgbmatrix`
binding built from the pinned source) with tests/hwsim's LD_PRELOAD shim, so the real library
opens its GPIO, runs its refresh thread and takes every frame through the real SetImage and
SwapOnVSync. The shim's counters say what the library did; its fault words break it.

What the simulation cannot show (GPIO timing, light on a panel) is in the README's "What still
needs a real Pi". Each start here takes a second or two; bounds are generous (a shared 2-core
machine), and nothing here measures speed: `make bench` does (bench/hardware.py).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import Client, gif_bytes, png_bytes, wait_for, write_config
from hwsim import ROOT, simulated

from loop.config import HARDWARE_MAPPINGS
from loop.display.guard import MARKER_NAME

PANEL = {"driver": "rgbmatrix", "rows": 32, "cols": 64, "boot_screen_sec": 0}


class PiService:
    """loop.py running on a SimulatedPi."""

    def __init__(self, pi, proc: subprocess.Popen, port: int, stderr_path: Path):
        self.pi, self.proc, self.port, self.stderr_path = pi, proc, port, stderr_path
        self.client = Client(port)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 20) -> dict:
        reply = self.client.get(path, timeout=timeout)
        assert reply.status == 200, reply
        return reply.data

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def run_loop():
    """start(pi, workdir, display=..., system=..., env=...) -> a started PiService; every
    process is killed at the end."""
    started: list[PiService] = []

    def start(pi, workdir: Path, *, display=None, system=None, env=None, expect_start=True,
              timeout: float = 60):
        workdir.mkdir(parents=True, exist_ok=True)
        data = workdir / "data"
        system = {"data_dir": str(data), "monitor_interval_sec": 0.2, "user": "loop",
                  **(system or {})}
        config = write_config(workdir / "config.json", data, display={**PANEL, **(display or {})},
                              system=system,
                              web={"rate_poll_per_sec": 1000, "rate_poll_burst": 1000})
        stderr_path = workdir / f"stderr.{time.monotonic_ns()}"
        with open(stderr_path, "w") as err:
            proc = pi.start([ROOT / "loop.py", "--config", config], stdout=subprocess.DEVNULL,
                            stderr=err, env=pi.env(PYTHONUNBUFFERED="1", **(env or {})))
        if not expect_start:
            proc.wait(timeout)
            return PiService(pi, proc, 0, stderr_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"LOOP listening on http://[^:]+:(\d+)",
                              stderr_path.read_text(errors="replace"))
            if match:
                service = PiService(pi, proc, int(match.group(1)), stderr_path)
                started.append(service)
                return service
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"loop.py did not start:\n{stderr_path.read_text()}")

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(10)


def counters_moved(pi, name: str, by: int, timeout: float = 20) -> int:
    start = pi.counters()[name]
    wait_for(lambda: pi.counters()[name] >= start + by, timeout=timeout)
    return pi.counters()[name]


# ---- the panel opens, frames flow ------------------------------------------------------------

@pytest.mark.parametrize("mapping", HARDWARE_MAPPINGS)
def test_the_service_opens_every_shipped_mapping(tmp_path, run_loop, mapping):
    """On a root Pi without the sound module (what `make install` prepares) every mapping of
    the pip build opens with hardware pulsing; compute-module, which that build lacks, is a
    pre-flight refusal that says why, and the library is never touched."""
    pi = simulated(tmp_path, devmem="root", modules="")
    service = run_loop(pi, tmp_path, display={"hardware_mapping": mapping})
    display = service.get("/api/display")
    if mapping == "compute-module":
        assert display["driver"] == "headless"
        assert "has no compute-module mapping" in display["reason"]
        assert pi.counters()["refresh_threads"] == 0
    else:
        assert (display["driver"], display["reason"]) == ("rgbmatrix", None)
        assert (display["width"], display["height"]) == (64, 32)
        wait_for(lambda: pi.counters()["vsync_done"] >= 1)  # the "no media" screen, swapped
        assert pi.counters()["refresh_running"] == 1
    assert service.stop() == 0
    # closing the driver deletes the matrix: the library stops its refresh thread
    assert pi.counters()["refresh_running"] == 0


def test_frames_pass_through_the_real_library_at_the_items_pace(tmp_path, run_loop):
    """A 10 fps animation: one SwapOnVSync per frame, not more (a busy loop) and not much
    less; the refresh thread runs all along. The bounds only tell running from broken."""
    pi = simulated(tmp_path)  # a stock Pi: adafruit-hat needs neither root nor silence
    service = run_loop(pi, tmp_path, display={"slow_call_ms": 5000})
    reply = service.client.upload([("ten.gif", gif_bytes(((255, 0, 0), (0, 0, 255)), (100, 100),
                                                         size=(64, 32)))])
    assert reply.status == 201, reply
    wait_for(lambda: service.get("/api/poll/status")["player"]["item"], timeout=30)
    counters_moved(pi, "vsync_done", 3)
    first, started = pi.counters(), time.monotonic()
    time.sleep(3.0)
    last, seconds = pi.counters(), time.monotonic() - started
    swaps = last["vsync_done"] - first["vsync_done"]
    assert 0.3 * 10 * seconds <= swaps <= 1.5 * 10 * seconds + 2, (swaps, seconds)
    assert last["frames"] - first["frames"] > swaps  # the panel refreshes between swaps
    assert last["vsync_waits"] - last["vsync_done"] <= 1  # no call left hanging
    health = service.get("/api/poll/health")
    assert health["checks"]["display"]["status"] == "ok"
    assert health["checks"]["display"]["frames_shown"] >= swaps
    assert service.stop() == 0


def test_brightness_redraws_and_zero_stops_drawing(tmp_path, run_loop):
    """A change redraws the still at once (the library applies brightness to pixels drawn
    afterwards); 0 is off: Clear(), and nothing is drawn until it comes back."""
    pi = simulated(tmp_path)
    service = run_loop(pi, tmp_path)
    assert service.client.upload([("still.png", png_bytes((200, 200, 200)))]).status == 201
    wait_for(lambda: service.get("/api/poll/status")["player"]["item"], timeout=30)
    time.sleep(0.5)  # a still: no more swaps once it is up
    swaps = pi.counters()["vsync_done"]
    assert service.client.put("/api/display", json_body={"brightness": 40}).status == 200
    wait_for(lambda: pi.counters()["vsync_done"] > swaps)  # redrawn, through a swap
    assert service.get("/api/display")["brightness"] == 40
    # off, while an animation plays: no frame reaches the library
    assert service.client.upload([("anim.gif", gif_bytes(delays=(50, 50, 50),
                                                         size=(64, 32)))]).status == 201
    item = service.client.get("/api/media").data
    ids = [i["id"] for i in (item["items"] if isinstance(item, dict) else item)]
    service.client.put("/api/loop", json_body={"items": ids[-1:]})
    counters_moved(pi, "vsync_done", 5)
    assert service.client.put("/api/display", json_body={"brightness": 0}).status == 200
    assert service.get("/api/poll/status")["display"]["status"] == "off"
    time.sleep(0.3)
    off = pi.counters()["vsync_done"]
    time.sleep(1.0)
    assert pi.counters()["vsync_done"] == off
    assert pi.counters()["refresh_running"] == 1  # the refresh goes on, showing nothing
    assert service.client.put("/api/display", json_body={"brightness": 60}).status == 200
    counters_moved(pi, "vsync_done", 5)
    assert service.stop() == 0


# ---- privileges ---------------------------------------------------------------------------------

@pytest.fixture
def service_user():
    """A system user made for the test (CI runs as root), removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to create a service user")
    name = f"loophw{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], capture_output=True)


def ids_of(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"uid": [int(v) for v in fields["Uid"].split()],
            "gid": [int(v) for v in fields["Gid"].split()],
            "groups": sorted(int(v) for v in fields["Groups"].split())}


def test_the_library_drops_root_to_the_service_user(run_loop, service_user):
    """Started as root (as systemd starts it): LOOP takes the user's groups, the library
    opens the panel as root and drops to the user itself, and the service then writes its
    data as that user."""
    # Outside pytest's root-only temp tree: the service user must reach its data directory
    # and the shim's fault file once it is no longer root.
    workdir = Path(tempfile.mkdtemp(prefix="loop-hwsim-"))
    try:
        workdir.chmod(0o755)
        (workdir / "data").mkdir()
        os.chown(workdir / "data", service_user.pw_uid, service_user.pw_gid)
        pi = simulated(workdir)
        pi.fault("")
        os.chmod(pi.fault_file, 0o644)
        service = run_loop(pi, workdir, system={"user": service_user.pw_name})
        uid, gid = service_user.pw_uid, service_user.pw_gid
        assert ids_of(service.proc.pid) == {"uid": [uid] * 4, "gid": [gid] * 4,
                                            "groups": [gid]}  # root's groups are gone
        privileges = service.get("/api/poll/health")["checks"]["privileges"]
        assert privileges["dropped"] is True and privileges["user"] == service_user.pw_name
        assert service.get("/api/display")["driver"] == "rgbmatrix"
        assert service.client.upload([("a.png", png_bytes())]).status == 201
        owners = {p.stat().st_uid for p in (workdir / "data" / "media").rglob("*")}
        assert owners == {uid}
        wait_for(lambda: pi.counters()["vsync_done"] >= 2)  # still drawing after the drop
        assert service.stop() == 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- faults -----------------------------------------------------------------------------------

BREAKER = {"breaker_max_failures": 2, "slow_call_ms": 300, "breaker_reset_sec": 0.3,
           "breaker_max_reset_sec": 0.6}


def test_a_slow_refresh_opens_the_breaker_and_it_recovers(tmp_path, run_loop):
    """Each refresh 700 ms longer: SwapOnVSync takes that long, the breaker counts slow calls
    and opens; the service answers meanwhile (between swaps: the binding holds the GIL while
    it waits); back to normal, a half-open trial closes it."""
    pi = simulated(tmp_path)
    service = run_loop(pi, tmp_path, display=BREAKER)
    assert service.client.upload([("a.gif", gif_bytes(delays=(60, 60, 60),
                                                      size=(64, 32)))]).status == 201
    counters_moved(pi, "vsync_done", 5)
    pi.fault("slow 700")
    wait_for(lambda: service.get("/api/poll/status")["display"]["breaker"] != "closed",
             timeout=30)
    health = service.get("/api/poll/health")
    assert health["checks"]["display"]["status"] == "degraded"
    assert "slow" in health["checks"]["display"]["reason"]
    pi.fault("")
    wait_for(lambda: service.get("/api/poll/status")["display"]["breaker"] == "closed",
             timeout=30)
    counters_moved(pi, "vsync_done", 5)
    assert service.get("/api/poll/status")["display"]["status"] == "ok"
    assert service.stop() == 0


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket, read by a thread."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._halt.is_set():
            with contextlib.suppress(OSError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def pings(self, since: float = 0.0) -> int:
        return sum(1 for t, m in list(self.messages) if m == "WATCHDOG=1" and t >= since)

    def close(self):
        self._halt.set()
        self._thread.join(2)
        self.sock.close()


def test_a_hung_refresh_freezes_the_service_until_the_watchdog(tmp_path, run_loop):
    """The refresh stops: SwapOnVSync never returns and holds the GIL, so every thread
    stops: no watchdog ping, no HTTP answer. systemd's WatchdogSec is the way out (here the
    refresh comes back instead): then the stuck call counts as slow and opens the breaker,
    which recovers."""
    notify = NotifySocket(tmp_path / "notify")
    try:
        pi = simulated(tmp_path)
        service = run_loop(pi, tmp_path, display={**BREAKER, "breaker_max_failures": 1},
                           env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000"})
        assert service.client.upload([("a.gif", gif_bytes(delays=(60, 60, 60),
                                                          size=(64, 32)))]).status == 201
        counters_moved(pi, "vsync_done", 5)
        wait_for(lambda: notify.pings() >= 3, timeout=10)
        pi.fault("hang")
        wait_for(lambda: pi.counters()["hanging"] == 1
                 and pi.counters()["vsync_waits"] > pi.counters()["vsync_done"], timeout=10)
        time.sleep(0.3)
        frozen = time.monotonic()
        time.sleep(1.5)  # more than WATCHDOG_USEC: systemd would kill it now
        assert notify.pings(since=frozen) == 0
        with pytest.raises(OSError):
            service.client.get("/api/poll/health", timeout=1.5)
        assert service.proc.poll() is None
        pi.fault("")
        wait_for(lambda: notify.pings(since=time.monotonic() - 0.5) >= 1, timeout=20)
        wait_for(lambda: service.get("/api/poll/status")["display"]["breaker"] == "closed",
                 timeout=30)
        breaker = service.get("/api/display")["breaker"]
        assert breaker["openings"] >= 1  # the hung call was counted when it came back
        assert service.stop() == 0
    finally:
        notify.close()


@pytest.mark.parametrize("fault, dies", [("segv-init", signal.SIGSEGV),
                                         ("abort-init", signal.SIGABRT)])
def test_a_crash_while_the_panel_opens_leaves_the_marker_then_headless(tmp_path, run_loop,
                                                                       fault, dies):
    """The library kills the process inside RGBMatrix(): the crash marker stays, counts the
    starts that never came back, and after display.max_init_crashes the service starts
    headless with the reason, without touching the library; the reset brings it back."""
    pi = simulated(tmp_path)
    pi.fault(fault)
    marker = tmp_path / "data" / MARKER_NAME
    for count in (1, 2):
        crashed = run_loop(pi, tmp_path, expect_start=False)
        assert crashed.proc.returncode == -dies, crashed.stderr()
        assert marker.read_text().strip() == str(count)
    service = run_loop(pi, tmp_path)
    display = service.get("/api/display")
    assert display["driver"] == "headless"
    assert display["reason"] == ("panel init crashed 2 times in a row; POST "
                                 "/api/display/reset to try again")
    assert pi.counters()["refresh_threads"] == 0  # the library was not tried (this process)
    assert service.client.post("/api/display/reset").status == 200
    assert not marker.exists()
    assert service.stop() == 0
    pi.fault("")
    service = run_loop(pi, tmp_path)
    assert service.get("/api/display")["driver"] == "rgbmatrix"
    assert service.stop() == 0


def test_a_crash_while_playing_is_no_init_crash(tmp_path, run_loop):
    """A SIGSEGV in the refresh thread once the panel is up kills the process (systemd
    restarts it); the panel had opened, so no marker is left and the next start uses it."""
    pi = simulated(tmp_path)
    service = run_loop(pi, tmp_path)
    wait_for(lambda: pi.counters()["vsync_done"] >= 1)
    pi.fault("segv")
    assert service.proc.wait(20) == -signal.SIGSEGV
    assert not (tmp_path / "data" / MARKER_NAME).exists()
    pi.fault("")
    service = run_loop(pi, tmp_path)
    assert service.get("/api/display")["driver"] == "rgbmatrix"
    assert service.stop() == 0


# ---- the self-test ------------------------------------------------------------------------------

def selftest(pi, workdir: Path, display=None, args=("--pattern-sec", "0.5")):
    data = workdir / "data"
    config = write_config(workdir / "config.json", data, display={**PANEL, **(display or {})},
                          system={"data_dir": str(data), "max_temp_c": 150,
                                  "min_available_mb": 0, "user": "loop"})
    env = pi.env(PATH=f"{workdir / 'bin'}:{os.environ['PATH']}")
    (workdir / "bin").mkdir(exist_ok=True)
    # no systemd here: a systemctl that says the unit is not running
    systemctl = workdir / "bin" / "systemctl"
    systemctl.write_text("#!/bin/sh\necho inactive\nexit 3\n")
    systemctl.chmod(0o755)
    proc = subprocess.run([pi.python, str(ROOT / "loop.py"), "--config", config, "--selftest",
                           "--json", *args], env=env, cwd=str(workdir), capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    return proc, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None


def test_selftest_passes_on_the_real_library(tmp_path):
    pi = simulated(tmp_path)
    proc, report = selftest(pi, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["platform"]["reason"] == "Raspberry Pi Zero 2 W Rev 1.0"
    assert checks["gpio_device"]["status"] == "pass"
    assert checks["init"]["status"] == "pass" and checks["frame_write"]["status"] == "pass"
    assert report["panel"]["driver"] == "rgbmatrix"
    assert (report["panel"]["width"], report["panel"]["height"]) == (64, 32)
    assert report["panel"]["frames"] >= 12
    assert report["system"]["binding"]["name"] == "rgbmatrix"
    assert pi.counters()["vsync_done"] >= report["panel"]["frames"]


def test_selftest_says_why_before_the_library_exits(tmp_path):
    """regular (output-enable on GPIO 18) with pulsing on a stock Pi: the library would
    exit(1) over /dev/mem; the self-test names both problems and never opens the panel."""
    pi = simulated(tmp_path)
    proc, report = selftest(pi, tmp_path, display={"hardware_mapping": "regular"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["root"]["status"] == "fail" and "/dev/mem" in checks["root"]["reason"]
    assert checks["sound_module"]["status"] == "fail"
    assert "disable_hardware_pulsing" in checks["root"]["fix"]
    assert report["panel"] is None
    assert pi.counters().get("refresh_threads", 0) == 0
