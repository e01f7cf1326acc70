"""The real service with an instrumented headless driver, for the frame-pacing benchmark.

Runs exactly what `loop.py` runs (`loop.service.app.main`: HTTP server, display thread,
monitor), as a subprocess of the bench, but wraps the `open_driver` the app calls
(loop/display/factory.py) so the opened driver's `show()` also records, per frame: the
monotonic time it was called, the display thread's CPU time (`time.thread_time()`), the
frame's first pixel (which identifies the frame, see bench/inputs.py), and when the call
returned (bench/hardware.py: how long the real library's SetImage + SwapOnVSync take). The
records are written as JSON to $BENCH_RECORD when the service exits.

Why this way: pacing is measured inside the process that also serves HTTP, so the polling load
competes with the display thread for the GIL exactly as in production, and the product carries
no test hooks. The wrapper adds two clock reads and three list appends per frame.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loop.service import app  # noqa: E402

RECORD = {"t": [], "cpu": [], "pixel": [], "end": []}


def _instrument(driver):
    cls = type(driver)
    t_list, cpu_list, px_list = RECORD["t"], RECORD["cpu"], RECORD["pixel"]
    end_list = RECORD["end"]
    monotonic, thread_time = time.monotonic, time.thread_time

    def show(self, frame):
        t_list.append(monotonic())
        cpu_list.append(thread_time())
        with memoryview(frame) as view:
            px_list.append(bytes(view[:3]).hex())
        try:
            return cls.show(self, frame)
        finally:
            end_list.append(monotonic())

    driver.__class__ = type(f"Recording{cls.__name__}", (cls,), {"show": show})
    return driver


def main() -> int:
    original = app.open_driver

    def open_driver(*args, **kwargs):
        driver, reason = original(*args, **kwargs)
        return _instrument(driver), reason

    app.open_driver = open_driver
    try:
        return app.main(sys.argv[1:])
    finally:
        path = os.environ.get("BENCH_RECORD")
        if path:
            with open(path, "w") as fh:
                json.dump(RECORD, fh)


if __name__ == "__main__":
    sys.exit(main())
