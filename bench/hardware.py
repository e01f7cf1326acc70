"""Group `hardware`: the service on the real LED library, on the simulated Pi of tests/hwsim.

The instrumented service of bench/paced_service.py, run by the Python of .venv-rgbmatrix (the
real `rgbmatrix` binding built from the pinned source, Debian's Pillow and psutil) with the
LD_PRELOAD shim, `--display rgbmatrix` on a 64x32 adafruit-hat panel. Each frame goes through
the real SetImage and SwapOnVSync while the library's refresh thread scans the (simulated)
panel as fast as it can, competing for the CPU. The shim runs it at nice 0 here, like every
other thread (the tests give it nice 10 to spare a shared machine); on a Pi it is SCHED_FIFO
priority 99 and wins every contest for its core.

What it reports:
- pacing of the 50 fps GIF (deviation from the ideal schedule p50/p99, drift, frames the
  player skipped), alone and under status polling at concurrency 6;
- CPU per frame of the display thread (SetImage's pixel loop, the swap, the player) and of the
  whole process per second (the refresh thread is most of it), the library's refresh rate;
- the time one frame call takes (`show_ms`: SetImage + SwapOnVSync, which waits for the end of
  the refresh in progress and holds the GIL meanwhile);
- status polling latency at concurrency 6 with a still on the panel (no swaps) and during the
  50 fps GIF: the difference is what the GIL held in SwapOnVSync costs the HTTP threads.

Nothing here is tuned or judged against a goal: the pacing with the real library belongs to
another issue; these are the numbers it starts from. On x86 the library's busy-wait loops are
calibrated for ARM cores and run faster, so the refresh rate and its CPU differ on a Pi; the
GIL hold per swap (up to one refresh period) does not.

Skipped, with the reason, when the binding is not built (`make rgbmatrix`) or no C compiler
can build the shim.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from bench import inputs, load, pacing
from bench.common import (
    ROOT,
    Service,
    fresh_dir,
    item_of,
    log,
    request,
    result,
    service_config,
    summary,
    upload_bytes,
)

STATUS = "/api/poll/status"
CONCURRENCY = 6


def binding() -> tuple[str, str] | str:
    """(the binding venv's python, the compiled shim) or why the group cannot run. Never
    builds the binding (that is `make rgbmatrix`, 40-100 s); compiles the small shim."""
    from tests.hwsim import Unavailable, shim_library, venv_dir
    python = venv_dir() / "bin" / "python"
    if not (venv_dir() / ".rgbmatrix-built").exists() or not python.exists():
        return f"the real rgbmatrix binding is not built in {venv_dir()} (run `make rgbmatrix`)"
    try:
        return str(python), shim_library()
    except (Unavailable, RuntimeError) as exc:
        return f"the simulated Pi's shim cannot be built: {exc}"


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _select(service: Service, item: str) -> None:
    reply = request(service.port, "POST", "/api/playback/select", json_body={"id": item})
    if reply.status != 200:
        raise RuntimeError(f"select answered {reply.status}: {reply.message}")


def _window(service: Service, pi, seconds: float, polled: bool) -> dict:
    """Run for `seconds` (polling at CONCURRENCY when `polled`): times, the process CPU, the
    refresh frames, and the load numbers."""
    counters, cpu, start = pi.counters(), _cpu_seconds(service.pid), time.monotonic()
    numbers = load.run(service.port, STATUS, CONCURRENCY, seconds) if polled else None
    if not polled:
        time.sleep(seconds)
    end = time.monotonic()
    after = pi.counters()
    return {"start": start, "end": end, "load": numbers,
            "process_cpu_pct": (_cpu_seconds(service.pid) - cpu) / (end - start) * 100,
            "refresh_hz": (after["frames"] - counters["frames"]) / (end - start),
            "swaps": after["vsync_done"] - counters["vsync_done"]}


def _show_ms(record: dict, start: float, end: float) -> dict:
    spans = [(b - a) * 1000 for a, b in zip(record["t"], record["end"], strict=True)
             if start <= a <= end]
    return summary(spans)


def run(ctx) -> None:
    found = binding()
    if isinstance(found, str):
        log(f"hardware: skipped: {found}")
        ctx.emit(result("hardware", "real_library", skipped=found))
        return
    python, shim = found
    from tests.hwsim import SimulatedPi
    window = 10.0 if ctx.quick else 30.0
    work = fresh_dir(os.path.join(ctx.work, "hardware"))
    (Path(work) / "pi").mkdir()
    pi = SimulatedPi(python=python, shim=shim, workdir=Path(work) / "pi")
    record_path = os.path.join(work, "record.json")
    config = service_config(os.path.join(work, "data"),
                            display={"driver": "rgbmatrix", "rows": 32, "cols": 64,
                                     "hardware_mapping": "adafruit-hat", "slow_call_ms": 5000,
                                     "drop_privileges": False})
    service = Service(work, "hardware", config, python=python,
                      runner=os.path.join(ROOT, "bench", "paced_service.py"),
                      env={**pi.env(LOOP_SHIM_REFRESH_NICE="0"),
                           "BENCH_RECORD": record_path}).start()
    windows = {}
    try:
        display = service.get("/api/display").data or {}
        if display.get("driver") != "rgbmatrix":
            raise RuntimeError(f"the panel did not open: {display.get('reason')}")
        ids = {}
        for name, data in (("still", inputs.pacing_gif(inputs.TAG_MIXED, [1000])),
                           ("gif", inputs.pacing_gif(inputs.TAG_20MS, inputs.PACING_20MS))):
            reply = upload_bytes(service.port, data, f"hardware-{name}.gif")
            ids[name] = item_of(reply)
            if not ids[name]:
                raise RuntimeError(f"upload answered {reply.status}: {reply.message}")
        request(service.port, "PUT", "/api/playback/mode", json_body={"mode": "one"})

        _select(service, ids["still"])
        time.sleep(1.5)
        log(f"hardware: polling c{CONCURRENCY} with a still on the real library")
        windows["still_polled"] = _window(service, pi, min(window, 10.0), polled=True)

        _select(service, ids["gif"])
        time.sleep(1.5)
        log(f"hardware: 50 fps GIF on the real library, alone, {window:g} s")
        windows["gif50fps_alone"] = _window(service, pi, window, polled=False)
        log(f"hardware: 50 fps GIF under polling c{CONCURRENCY}, {window:g} s")
        windows["gif50fps_polled"] = _window(service, pi, window, polled=True)
    finally:
        service.stop()
    with open(record_path) as fh:
        record = json.load(fh)
    still = windows["still_polled"]
    ctx.emit(result("hardware", f"polling_still_c{CONCURRENCY}", **_load(still["load"]),
                    swaps=still["swaps"], refresh_hz=still["refresh_hz"],
                    process_cpu_pct=still["process_cpu_pct"],
                    notes="a still on the real library: no SwapOnVSync while polled"))
    for name in ("gif50fps_alone", "gif50fps_polled"):
        win = windows[name]
        shows = pacing.select(record, inputs.TAG_20MS, win["start"], win["end"])
        numbers = pacing.analyse(shows, inputs.PACING_20MS)
        numbers.pop("goal", None)
        numbers.pop("met", None)
        ctx.emit(result("hardware", f"pacing_{name}", **numbers,
                        show_ms=_show_ms(record, win["start"], win["end"]),
                        refresh_hz=win["refresh_hz"], process_cpu_pct=win["process_cpu_pct"],
                        quick=ctx.quick or None))
        if win["load"] is not None:
            ctx.emit(result("hardware", f"polling_gif50fps_c{CONCURRENCY}", **_load(win["load"]),
                            notes="status polling while the 50 fps GIF plays on the real "
                                  "library: SwapOnVSync holds the GIL while it waits"))


def _load(numbers: dict) -> dict:
    return {k: numbers[k] for k in ("p50_ms", "p99_ms", "max_ms", "rps", "n503", "n429",
                                    "requests", "tool")}

