"""ffmpeg/ffprobe children run at a lower CPU priority than the service (panel first)."""

import os
import sys
import time

from loop.media import video


def test_child_runs_niced_and_its_threads_inherit_it():
    code = ("import os, threading, time; time.sleep(0.3); "
            "t = threading.Thread(target=lambda: print(os.getpriority(os.PRIO_PROCESS, "
            "threading.get_native_id()), flush=True)); t.start(); t.join()")
    child = video.Child([sys.executable, "-c", code], time.monotonic() + 20)
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + video.CHILD_NICE)
    try:
        assert os.getpriority(os.PRIO_PROCESS, child.proc.pid) == expected
        assert child.read_capped(100).split() == [str(expected).encode()]
        assert child.finish() == 0
    finally:
        child.kill()
