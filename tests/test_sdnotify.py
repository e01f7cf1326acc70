"""sd_notify over real AF_UNIX datagram sockets: payloads, environment, watchdog, failures."""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from loop.system.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path):
    """A bound datagram socket standing in for systemd; yields (socket, path)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "action, payload",
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.ready("serving on :80"), b"READY=1\nSTATUS=serving on :80"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.status("playing cat.gif"), b"STATUS=playing cat.gif"),
        (lambda n: n.status("two\nlines\r\n"), b"STATUS=two lines"),
        (lambda n: n.ready("a\nWATCHDOG=1"), b"READY=1\nSTATUS=a WATCHDOG=1"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
        (lambda n: n.send("A=1", "B=2"), b"A=1\nB=2"),
        (lambda n: n.status("café"), "STATUS=café".encode()),
    ],
)
def test_exact_payloads(receiver, action, payload):
    sock, path = receiver
    n = Notifier(path)
    assert action(n) is True
    assert sock.recv(4096) == payload
    n.close()


def test_reloading_carries_the_monotonic_time(receiver):
    sock, path = receiver
    n = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    m = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert m is not None
    assert before <= int(m.group(1)) <= after
    n.close()


def test_abstract_namespace_address():
    name = f"loop-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        n = Notifier("@" + name)
        assert n.ready() is True
        assert sock.recv(4096) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_from_environ_reads_and_removes_the_variables(receiver):
    _, path = receiver
    env = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "3000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    n = Notifier.from_environ(env)
    assert env == {"PATH": "/usr/bin"}
    assert n.enabled is True
    assert n.watchdog_usec == 3_000_000
    assert n.watchdog_interval() == pytest.approx(1.0)


def test_children_do_not_inherit_the_variables(monkeypatch, receiver):
    _, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    n = Notifier.from_environ()
    assert n.enabled
    code = "import os; print([k for k in os.environ if k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "usec, pid, expected",
    [
        ("3000000", None, 3_000_000),
        ("3000000", "own", 3_000_000),
        ("3000000", "other", None),
        ("3000000", "not-a-pid", None),
        ("abc", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_watchdog_usec_parsing(usec, pid, expected):
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid is not None:
        env["WATCHDOG_PID"] = {"own": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
    n = Notifier.from_environ(env)
    assert n.watchdog_usec == expected
    assert n.watchdog_interval() == (None if expected is None else expected / 3e6)
    assert env == {}


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "3000000"}])
def test_disabled_without_a_socket(env):
    fds = open_fds()
    n = Notifier.from_environ(env)
    assert n.enabled is False
    assert n.watchdog_usec is None
    assert n.watchdog_interval() is None
    sends = [n.ready, n.stopping, n.reloading, n.watchdog, lambda: n.status("x")]
    assert [send() for send in sends] + [n.send("A=1")] == [False] * 6
    assert n.watchdog_pings == 0
    assert open_fds() == fds  # no socket was even created
    n.close()


def test_missing_socket_path_returns_false(tmp_path):
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.watchdog_pings == 0
    n.close()


def test_watchdog_pings_are_counted(receiver):
    sock, path = receiver
    n = Notifier(path)
    for _ in range(3):
        assert n.watchdog() is True
    assert n.watchdog_pings == 3
    assert [sock.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3
    n.close()


def test_one_socket_is_reused_and_close_releases_it(receiver):
    sock, path = receiver
    n = Notifier(path)
    fds = open_fds()
    for _ in range(20):
        assert n.status("x")
        sock.recv(64)
    assert open_fds() == fds + 1
    n.close()
    assert open_fds() == fds
    assert n.status("after close")  # a later send opens a new socket
    assert sock.recv(64) == b"STATUS=after close"
    n.close()


def test_full_receiver_queue_neither_blocks_nor_raises(tmp_path):
    path = str(tmp_path / "full")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel rounds up to its floor
    sock.bind(path)  # and never read from
    n = Notifier(path)
    outcome = {}

    def flood():
        results = [n.watchdog() for _ in range(5000)]
        outcome["results"] = results

    # A blocking send would hang forever; run it where a hang shows up as a failed join.
    t = threading.Thread(target=flood, daemon=True)
    started = time.monotonic()
    t.start()
    t.join(timeout=10.0)
    try:
        assert not t.is_alive(), "send() blocked on a full receiver queue"
        results = outcome["results"]
        assert results[0] is True
        assert False in results
        assert n.watchdog_pings == results.count(True) < 5000
        assert time.monotonic() - started < 10.0
    finally:
        sock.close()
        n.close()
