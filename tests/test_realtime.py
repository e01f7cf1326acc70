"""Real-time scheduling of the display thread (issue 21): the display thread runs SCHED_FIFO
when allowed, the HTTP and monitor threads stay normal, and an unprivileged service user gets
it through RLIMIT_RTPRIO (the unit's LimitRTPRIO=) without any capability."""

import os
import resource
import subprocess
import sys
import threading

import pytest
from conftest import ROOT

from loop.system.realtime import make_realtime, thread_policy

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing scheduling policies and "
                                "users needs root (CI runs as root)")


def in_thread(fn):
    """Run fn on a fresh thread (never change the test runner's own thread)."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=fn(), tid=threading.get_native_id()))
    thread.start()
    thread.join(10)
    return out


def test_priority_zero_means_off():
    out = in_thread(lambda: (make_realtime(0), thread_policy(threading.get_native_id())))
    reason, policy = out["value"]
    assert reason == "display.realtime_priority is 0" and policy == ("other", 0)


@needs_root
def test_root_gets_fifo_on_the_calling_thread_only():
    out = in_thread(lambda: (make_realtime(7), thread_policy(threading.get_native_id())))
    assert out["value"] == (None, ("fifo", 7))
    assert thread_policy(threading.get_native_id()) == ("other", 0)  # this thread untouched


# As the service user after the drop: nothing but RLIMIT_RTPRIO (LimitRTPRIO=10 in the unit).
UNPRIVILEGED = """
import json, os, resource, sys, threading
sys.path.insert(0, {root!r})
from loop.system.realtime import make_realtime, thread_policy
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_RTPRIO, (limit, limit))
os.setgroups([]); os.setgid(65534); os.setuid(65534)
out = {{}}
def run():
    out["reason"] = make_realtime(10)
    out["policy"] = thread_policy(threading.get_native_id())
t = threading.Thread(target=run); t.start(); t.join()
print(json.dumps(out))
"""


def can_raise_rtprio(limit: int) -> bool:
    """systemd raises RLIMIT_RTPRIO for the unit; a sandbox without CAP_SYS_RESOURCE (this
    CI's container) cannot raise the hard limit above what it was given."""
    return resource.getrlimit(resource.RLIMIT_RTPRIO)[1] >= limit or \
        _has_capability(24)  # CAP_SYS_RESOURCE


def _has_capability(bit: int) -> bool:
    with open("/proc/self/status") as fh:
        effective = next(line for line in fh if line.startswith("CapEff:"))
    return bool(int(effective.split()[1], 16) >> bit & 1)


@needs_root
@pytest.mark.parametrize("limit, works", [
    pytest.param(10, True, marks=pytest.mark.capability),  # see can_raise_rtprio
    (0, False)])
def test_an_unprivileged_user_needs_only_the_rtprio_limit(limit, works):
    if not can_raise_rtprio(limit):
        pytest.skip("RLIMIT_RTPRIO cannot be raised here (no CAP_SYS_RESOURCE in this "
                    "container); systemd raises it for the unit (LimitRTPRIO=)")
    import json
    done = subprocess.run([sys.executable, "-c", UNPRIVILEGED.format(root=ROOT), str(limit)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    if works:
        assert out == {"reason": None, "policy": ["fifo", 10]}
    else:
        assert out["policy"] == ["other", 0]
        assert out["reason"].startswith("not permitted") and "LimitRTPRIO" in out["reason"]


@needs_root
@pytest.mark.parametrize("priority", [10, 0])
def test_the_display_thread_alone_runs_real_time(make_app, priority):
    app = make_app(**{"display.realtime_priority": priority})
    from conftest import wait_for
    wait_for(lambda: app.realtime["reason"] != "the display thread has not started")
    want = ("fifo", priority) if priority else ("other", 0)
    assert thread_policy(app.player.native_id) == want
    assert app.health()["checks"]["display"]["realtime"]["priority"] == priority
    # what the display thread runs beside stays normal: it inherits nothing
    for thread in (app._serve_thread, app.monitor):
        assert thread_policy(thread.native_id) == ("other", 0), thread.name
