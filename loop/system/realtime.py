"""Real-time scheduling for the display thread, so frames leave on time while the HTTP threads
are busy.

Why it works in CPython: the threads take turns holding the GIL, and a thread that gives it
up wakes one waiter through a futex. The kernel wakes a SCHED_FIFO waiter before normal
ones, and a woken SCHED_FIFO thread preempts normal threads on its CPU, so the display thread
gets the GIL next instead of after whichever HTTP threads happen to win. Its work per frame is
a few microseconds, so the HTTP threads lose next to nothing.

No capability is needed after the privilege drop: the systemd unit sets `LimitRTPRIO=`, and
an unprivileged thread may use SCHED_FIFO up to that limit. A runaway real-time thread
cannot lock up the Pi: the kernel keeps 5 % of each second for normal threads
(`kernel.sched_rt_runtime_us`).
"""

from __future__ import annotations

import os
import resource


def make_realtime(priority: int) -> str | None:
    """Put the calling thread under SCHED_FIFO at `priority` (1..99). None when it worked,
    else why not (0 = off by config, not permitted, not supported here)."""
    if priority <= 0:
        return "display.realtime_priority is 0"
    if not hasattr(os, "sched_setscheduler"):
        return "this system has no real-time scheduling"
    try:
        # pid 0 = the calling thread (Linux schedules threads, not processes)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        limit = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
        return (f"not permitted: real-time priority {priority} needs root or LimitRTPRIO >= "
                f"{priority} (this process may use up to {limit})")
    except OSError as exc:
        return f"cannot set real-time priority: {exc.strerror or exc}"
    return None


def thread_policy(tid: int) -> tuple[str, int]:
    """(policy name, real-time priority) of a thread of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    # after the name: state is field 3, rt_priority field 40, policy field 41 (proc(5))
    priority, policy = int(fields[37]), int(fields[38])
    names = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}
    return names.get(policy, str(policy)), priority
