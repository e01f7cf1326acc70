"""The systemd side of the monitor, over a real AF_UNIX datagram socket standing in for systemd:
watchdog pings gated by heartbeats, STATUS=, SIGHUP reload, and a hung panel seen from outside.

Times are small: WATCHDOG_USEC=300000 pings every 0.1 s, and a heartbeat goes stale after
max(2/3 WATCHDOG_USEC, 1 s) = 1 s.
"""

import json
import os
import re
import signal
import socket
import statistics
import threading
import time

import pytest
from conftest import FAKE_RGBMATRIX, Client, gif_bytes, wait_for, write_config

from loop.display.headless import HeadlessDriver

WATCHDOG_USEC = 300_000
PING_SEC = WATCHDOG_USEC / 3e6
STALE_SEC = 1.0


class Receiver:
    """A bound datagram socket read by a thread; keeps (monotonic time, payload) pairs."""

    def __init__(self, path: str, rcvbuf: int | None = None, read: bool = True):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if read:
            self._thread.start()

    def _run(self):
        while not self._halt.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self):
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.sock.close()

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if m == "WATCHDOG=1" and t >= since]

    def statuses(self, since: float = 0.0) -> list[str]:
        return [line[len("STATUS="):] for t, m in list(self.messages) if t >= since
                for line in m.split("\n") if line.startswith("STATUS=")]

    def wait_message(self, predicate, since: float = 0.0, timeout: float = 10.0) -> str:
        def found():
            return next((m for t, m in list(self.messages) if t >= since and predicate(m)),
                        None)
        return wait_for(found, timeout)


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(str(tmp_path / "notify"))
    yield r
    r.close()


@pytest.fixture
def start_app(make_app):
    """An in-process App with an optional injected driver and environment."""
    def start(driver=None, environ=None, **overrides):
        overrides.setdefault("system.monitor_interval_sec", 0.1)
        return make_app(driver=driver, environ=environ, **overrides)
    return start


def systemd_env(receiver, **extra):
    return dict({"NOTIFY_SOCKET": receiver.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}, **extra)


class HangableDriver(HeadlessDriver):
    """A headless driver whose show() blocks, once armed, until released: a wedged panel."""

    name = "hangable"

    def __init__(self):
        super().__init__(width=64, height=32)
        self.armed = threading.Event()
        self.hanging = threading.Event()
        self.released = threading.Event()

    def show(self, frame):
        if self.armed.is_set():
            self.hanging.set()
            self.released.wait(30)  # a forgotten release fails the test instead of hanging it
        super().show(frame)

    def release(self):
        self.armed.clear()
        self.released.set()


def silent_for(receiver, seconds: float) -> bool:
    """True when no WATCHDOG=1 arrives during the next `seconds`."""
    start = time.monotonic()
    time.sleep(seconds)
    return receiver.pings(since=start) == []


# ---- pings --------------------------------------------------------------------------------
def test_pings_arrive_every_third_of_watchdog_usec(start_app, receiver):
    app = start_app(environ=systemd_env(receiver))
    receiver.wait_message(lambda m: m.startswith("READY=1"))
    start = time.monotonic()
    wait_for(lambda: len(receiver.pings(since=start)) >= 9, timeout=10)
    pings = receiver.pings(since=start)
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert 0.8 * PING_SEC <= statistics.median(gaps) <= 2 * PING_SEC, gaps
    assert app.notifier.watchdog_pings >= len(pings)
    assert app.monitor.stale == ()
    # the environment is consumed: children (ffmpeg) cannot notify on our behalf
    assert "NOTIFY_SOCKET" not in app.environ and "WATCHDOG_USEC" not in app.environ


def test_status_line_says_what_plays(start_app, receiver):
    app = start_app(environ=systemd_env(receiver))
    assert re.fullmatch(r"idle · 0 items · display ok · \d+ MB",
                        receiver.wait_message(lambda m: m.startswith("STATUS=idle"))[7:])
    client = Client(app.server.port)
    raw = gif_bytes(delays=(50, 50, 50))
    assert client.post("/api/media?name=cat.gif", body=raw).status == 201
    line = receiver.wait_message(lambda m: m.startswith("STATUS=playing"))
    assert re.fullmatch(r"STATUS=playing cat\.gif · 1 item · display ok · \d+ MB", line)
    assert "\n" not in app.monitor.summary()


def test_a_hung_display_thread_stops_the_pings_until_it_recovers(start_app, receiver,
                                                                   caplog, monkeypatch):
    # a display thread that waits for commands longer than the stale limit is idle, not
    # stuck: the monitor pokes it with a no-op command and it answers
    monkeypatch.setattr("loop.playback.player.IDLE_WAKE_SEC", 30.0)
    driver = HangableDriver()
    app = start_app(driver=driver, environ=systemd_env(receiver))
    client = Client(app.server.port)
    wait_for(lambda: len(receiver.pings()) >= 3)
    time.sleep(STALE_SEC * 1.5)  # longer than the stale limit: the idle thread is poked
    since = time.monotonic()
    wait_for(lambda: len(receiver.pings(since=since)) >= 3)  # and the pings go on
    assert app.monitor.stale == ()

    driver.armed.set()
    app.player.screen(["hang"], 0.01)  # the next frame goes into the wedged driver
    assert driver.hanging.wait(5)
    wait_for(lambda: app.monitor.stale == ("display",), timeout=STALE_SEC + 5)
    assert silent_for(receiver, 5 * PING_SEC)  # what systemd sees: WatchdogSec runs out
    status = receiver.wait_message(lambda m: m.startswith("STATUS=stuck"))
    assert "display thread is stuck" in status and "watchdog pings stopped" in status
    assert any("heartbeat stale: display" in r.getMessage() for r in caplog.records)
    health = client.get("/api/poll/health").data  # the HTTP side still answers
    assert health["status"] == "failing" and health["healthy"] is False
    assert "display thread is stuck" in health["checks"]["heartbeats"]["reason"]

    released = time.monotonic()
    driver.release()
    wait_for(lambda: receiver.pings(since=released), timeout=5)
    assert app.monitor.stale == ()
    assert not receiver.wait_message(lambda m: m.startswith("STATUS="),
                                     since=released).startswith("STATUS=stuck")
    assert client.get("/api/poll/health").data["healthy"] is True


def test_a_stopped_accept_loop_stops_the_pings_until_it_serves_again(start_app, receiver):
    app = start_app(environ=systemd_env(receiver))
    wait_for(lambda: len(receiver.pings()) >= 3)
    app.server.shutdown()  # serve_forever returns: no more accept loop, no more heartbeat
    wait_for(lambda: app.monitor.stale == ("http",), timeout=STALE_SEC + 5)
    assert silent_for(receiver, 5 * PING_SEC)
    assert "HTTP accept loop stopped" in receiver.wait_message(
        lambda m: m.startswith("STATUS=stuck"))
    assert app.health()["checks"]["heartbeats"]["status"] == "failing"

    resumed = time.monotonic()
    app.serve()
    wait_for(lambda: receiver.pings(since=resumed), timeout=5)
    assert app.monitor.stale == ()
    assert Client(app.server.port).get("/api/poll/health").data["healthy"] is True


def test_locks_held_across_io_do_not_delay_the_pings(start_app, tmp_path):
    """A slow SD card: commits and restores hold the store lock across fsyncs, a rule change
    holds the scheduler's across its index write. The monitor pings on time all the same and
    does the flush and the schedule once the locks are free."""
    receiver = Receiver(str(tmp_path / "notify-slow-card"))
    watchdog_sec = 3.0  # pings every 1 s; systemd would kill after 3 s without one
    try:
        app = start_app(environ={"NOTIFY_SOCKET": receiver.path,
                                 "WATCHDOG_USEC": str(int(watchdog_sec * 1e6))},
                        **{"system.settings_flush_sec": 0.2})
        wait_for(lambda: len(receiver.pings()) >= 2, timeout=10)
        writes, brightness = app.store.index_writes, app.player.brightness
        assert brightness != 5
        with app.store._lock, app.scheduler._lock:  # the real locks, held as I/O holds them
            held = time.monotonic()
            app.store.update_settings(brightness=7)  # debounced: a flush is due
            app.store.update_settings(schedule=[{"days": [], "start": "00:00",
                                                 "end": "00:00", "brightness": 5}])
            app.scheduler.load()  # new rules: an evaluation is due
            time.sleep(10)
            released = time.monotonic()
            assert app.store.index_writes == writes and app.player.brightness == brightness
        inside = [t for t in receiver.pings() if held < t < released]
        edges = [held] + inside + [released]
        gaps = [round(b - a, 2) for a, b in zip(edges, edges[1:])]
        assert len(inside) >= 5 and max(gaps) < watchdog_sec, gaps
        assert app.monitor.stale == ()
        # skipped, not lost: the next rounds flush and evaluate
        wait_for(lambda: app.store.index_writes > writes, timeout=10)
        with open(app.store.index_path) as fh:
            assert json.load(fh)["settings"]["brightness"] == 7
        wait_for(lambda: app.player.brightness == 5, timeout=10)
    finally:
        receiver.close()


def test_watchdog_pid_of_another_process_disables_the_pings(start_app, receiver):
    app = start_app(environ=systemd_env(receiver, WATCHDOG_PID=str(os.getpid() + 1)))
    receiver.wait_message(lambda m: m.startswith("READY=1"))
    assert silent_for(receiver, 5 * PING_SEC)
    assert app.notifier.watchdog_interval() is None and app.notifier.watchdog_pings == 0
    assert app.health()["checks"]["heartbeats"]["watchdog"] is False


def test_without_notify_socket_everything_is_a_no_op(start_app):
    app = start_app(environ={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    ticks = app.monitor.ticks
    wait_for(lambda: app.monitor.ticks >= ticks + 3)
    assert app.notifier.enabled is False and app.notifier.watchdog_pings == 0
    assert app.monitor.status_line  # computed all the same, just not sent anywhere
    assert app.health()["healthy"] is True


def test_a_full_receiver_queue_blocks_nothing(start_app, tmp_path):
    # systemd that never reads: the datagram queue fills, sends fail with EAGAIN at once
    stuck = Receiver(str(tmp_path / "full"), rcvbuf=1, read=False)
    try:
        app = start_app(environ=systemd_env(stuck))
        wait_for(lambda: app.notifier.watchdog() is False, timeout=10)  # the queue is full
        pings, ticks = app.notifier.watchdog_pings, app.monitor.ticks
        wait_for(lambda: app.monitor.ticks >= ticks + 10, timeout=10)  # the monitor goes on
        assert app.notifier.watchdog_pings == pings  # nothing delivered, nothing blocked
        reply = Client(app.server.port).get("/api/poll/health", timeout=5)
        assert reply.status == 200
    finally:
        stuck.close()


# ---- the real process ---------------------------------------------------------------------
def test_a_hung_panel_silences_the_watchdog_of_the_real_process(tmp_path, services):
    """What systemd sees: READY, regular pings, the panel wedges, the pings stop; its
    SIGABRT then leaves every thread's stack (the driver call included) in the journal.

    The LED binding's SwapOnVSync keeps the GIL while it waits for the refresh (the fake does
    as the real one: tests/hwsim/FINDINGS.md section 6), so a hung refresh freezes the whole
    interpreter: no stale-heartbeat log, no STATUS line, no HTTP answer. The watchdog, from
    outside the process, is the only way out, by design."""
    receiver = Receiver(str(tmp_path / "notify"))
    try:
        control = tmp_path / "panel-control"  # the fake binding obeys this file's content
        cfg = write_config(tmp_path / "config.json", tmp_path / "data",
                           display={"driver": "rgbmatrix", "boot_screen_sec": 0},
                           system={"monitor_interval_sec": 0.1})
        service = services(cfg, env=dict(systemd_env(receiver), PYTHONPATH=FAKE_RGBMATRIX,
                                          FAKE_RGBMATRIX_CONTROL=str(control)))
        receiver.wait_message(lambda m: m.startswith("READY=1"))
        wait_for(lambda: len(receiver.pings()) >= 5)
        display = service.client.get("/api/display").data
        assert display["driver"] == "rgbmatrix"

        control.write_text("hang")  # from now on SwapOnVSync never returns
        # a brightness change redraws the frame: the display thread walks into the hang (the
        # reply may or may not leave before everything stops)
        try:
            service.client.put("/api/display", json_body={"brightness": 50}, timeout=3)
        except OSError:
            pass
        assert silent_for(receiver, 5 * PING_SEC)  # > WatchdogSec: systemd would act now
        with pytest.raises(OSError):  # frozen: not even health answers
            service.client.get("/api/poll/health", timeout=2)
        assert not [s for s in receiver.statuses() if s.startswith("stuck")]
        assert "heartbeat stale" not in service.stderr()  # the monitor is frozen too

        service.proc.send_signal(signal.SIGABRT)  # systemd's default WatchdogSignal
        # faulthandler walks the other threads' stacks while they run; its docs call that
        # best effort, and under load the interpreter can fault part way through the dump
        assert service.proc.wait(10) in (-signal.SIGABRT, -signal.SIGSEGV)
        assert "(most recent call first)" in service.stderr()  # the dump was written
        assert "Fatal Python error: Aborted" in service.stderr()
    finally:
        receiver.close()


def test_sighup_reloads_live_keys_and_ignores_a_bad_file(tmp_path, services):
    receiver = Receiver(str(tmp_path / "notify"))
    try:
        path = tmp_path / "config.json"
        cfg = write_config(path, tmp_path / "data", system={"monitor_interval_sec": 0.1})
        service = services(cfg, env={"NOTIFY_SOCKET": receiver.path})
        client = service.client
        receiver.wait_message(lambda m: m.startswith("READY=1"))
        assert client.put("/api/display", json_body={"brightness": 30}).status == 200
        body = os.urandom(4000)
        assert client.post("/api/media?name=x", body=body).status != 413

        def reload():
            since = time.monotonic()
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            service.proc.send_signal(signal.SIGHUP)
            reloading = receiver.wait_message(lambda m: m.startswith("RELOADING=1"), since)
            usec = int(re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", reloading).group(1))
            assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            receiver.wait_message(lambda m: m.startswith("READY=1"), since)  # after it

        raw = json.loads(path.read_text())
        raw["media"] = {"max_upload_mb": 0.001}  # live
        raw["display"]["brightness"] = 90  # a first-start default: the runtime 30 stays
        raw["web"]["port"] = 1  # needs a restart: kept, and the log says so
        path.write_text(json.dumps(raw))
        reload()
        refused = client.post("/api/media?name=x", body=body)
        assert refused.status == 413 and "max_upload_mb" in refused.json["message"]
        assert client.get("/api/display").data["brightness"] == 30
        stderr = service.stderr()
        assert re.search(r"need a restart to take effect: web\.port", stderr)
        assert "media.max_upload_mb" in stderr

        path.write_text('{"media": {"max_upload_mb": ')  # truncated: a bad file
        reload()
        assert "reload ignored, keeping the running config" in service.stderr()
        assert client.get("/api/poll/health").status == 200  # still serving
        assert client.post("/api/media?name=x", body=body).status == 413  # old config kept
        assert service.terminate() == 0
    finally:
        receiver.close()
