"""The simulated Pi (tests/hwsim): the real rgbmatrix library starts, refreshes and fails on
it the way it would on a Raspberry Pi Zero 2 W, and the tests can watch it.

Also pins what the real library does to LOOP today (FINDINGS.md), so the driver fix can be
checked against it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import wait_for
from hwsim import ROOT, simulated

from loop.config import HARDWARE_MAPPINGS


@pytest.fixture
def pi(tmp_path):
    return simulated(tmp_path)


def ok(result):
    assert result.returncode == 0, f"{result.outcome}\n{result.stderr[-3000:]}"
    assert all(step[1] == "ok" for step in result.steps), result.steps
    return {step[0]: step[2] for step in result.steps}


# ---- the board ----------------------------------------------------------------------------

def test_the_process_sees_a_pi_zero_2_w_without_dev_mem(pi):
    values = ok(pi.run(f"""
import os, subprocess, sys
sys.path.insert(0, {str(ROOT)!r})
from loop.display import preflight
step("revision", lambda: [l for l in open("/proc/cpuinfo") if l.startswith("Revision")])
step("dt revision", lambda: open("/proc/device-tree/system/linux,revision", "rb").read().hex())
step("model", lambda: preflight.pi_model("/"))
step("gpiomem", lambda: (os.path.exists("/dev/gpiomem"),
                         os.access("/dev/gpiomem", os.R_OK | os.W_OK)))
step("mem", lambda: (os.path.exists("/dev/mem"), os.access("/dev/mem", os.R_OK | os.W_OK)))
def open_mem():
    try:
        os.open("/dev/mem", os.O_RDWR)
    except OSError as exc:
        return exc.errno
step("open mem", open_mem)
step("sound module", lambda: any(l.startswith("snd_bcm2835 ") for l in open("/proc/modules")))
step("children run here", lambda: ("LD_PRELOAD" in os.environ, "Revision" in subprocess.run(
    ["cat", "/proc/cpuinfo"], capture_output=True, text=True).stdout))
"""))
    assert values["revision"] == ["Revision\t: 902120\n"]
    assert values["dt revision"] == "00902120"
    assert values["model"] == "Raspberry Pi Zero 2 W Rev 1.0"
    assert values["gpiomem"] == [True, True]
    assert values["mem"] == [True, False]  # exists, root:kmem 0640: a non-root Pi
    assert values["open mem"] == 13  # EACCES
    assert values["sound module"] is True  # stock Raspberry Pi OS
    assert values["children run here"] == [False, False]


def test_dev_mem_can_be_missing_or_usable_and_the_sound_module_gone(tmp_path):
    script = """
import os
step("mem", lambda: (os.path.exists("/dev/mem"), os.access("/dev/mem", os.W_OK)))
step("modules", lambda: open("/proc/modules").read())
"""
    missing = ok(simulated(tmp_path / "a", devmem="enoent").run(script))
    assert missing["mem"] == [False, False]
    root = ok(simulated(tmp_path / "b", devmem="root", modules="").run(script))
    assert root == {"mem": [True, True], "modules": ""}


# ---- the real library on it ------------------------------------------------------------------

# GPIO pins each mapping makes outputs for one 64x32 panel (lib/hardware-mapping.c: clock,
# strobe, address A-D, chain 0's colours, and output-enable unless the PWM drives it).
PINS = {
    "regular": {17, 4, 22, 23, 24, 25, 11, 27, 7, 8, 9, 10},
    "adafruit-hat": {4, 17, 21, 22, 26, 27, 20, 5, 13, 6, 12, 16, 23},
    "adafruit-hat-pwm": {17, 21, 22, 26, 27, 20, 5, 13, 6, 12, 16, 23},
    "regular-pi1": {17, 4, 22, 23, 24, 25, 11, 21, 27, 7, 8, 9, 10},
    "classic": {27, 11, 4, 7, 8, 9, 10, 17, 18, 22, 23, 24, 25},
    "classic-pi1": {0, 2, 1, 3, 4, 7, 8, 9, 10, 17, 18, 22, 23, 24, 25},
}
PWM_OE = {"regular", "adafruit-hat-pwm", "regular-pi1"}  # output-enable on GPIO 18
# GPFSEL of GPIO 18: 2 = ALT5, the PWM drives output-enable; 1 = an output; 0 = unused.
FSEL18 = {"regular": 2, "adafruit-hat": 0, "adafruit-hat-pwm": 2, "regular-pi1": 2,
          "classic": 1, "classic-pi1": 1}

DRAW = """
from PIL import Image
from rgbmatrix import RGBMatrix, RGBMatrixOptions
o = RGBMatrixOptions()
o.hardware_mapping = {mapping!r}
o.rows, o.cols = 32, 64
o.brightness = 80
o.drop_privileges = 0
o.disable_hardware_pulsing = {no_pulse!r}
m = step("open", lambda: RGBMatrix(options=o))
step("size", lambda: (m.width, m.height))
c = m.CreateFrameCanvas()
for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (255, 255, 255)):
    c.SetImage(Image.new("RGB", (64, 32), colour))
    c = m.SwapOnVSync(c)
step("swapped", lambda: type(c).__name__)
def dim():
    m.brightness = 40
    c.SetImage(Image.new("RGB", (64, 32), (255, 0, 0)))
    return (m.brightness, type(m.SwapOnVSync(c)).__name__)
step("brightness", dim)
step("clear", lambda: m.Clear())
def close():
    global m, c
    del m, c
step("close", close)
"""


@pytest.mark.parametrize("mapping", HARDWARE_MAPPINGS)
def test_every_shipped_mapping_opens_draws_dims_and_closes(tmp_path, mapping):
    """On a root Pi without snd_bcm2835 and LOOP's default hardware pulsing: the PWM pulser
    for the GPIO 18 mappings, the timer pulser for the others."""
    pi = simulated(tmp_path, devmem="root", modules="")
    result = pi.run(DRAW.format(mapping=mapping, no_pulse=False))
    if mapping == "compute-module":  # LOOP ships it; the pip build has no such mapping
        assert result.signal == "SIGABRT" and result.steps == []
        assert "There is no hardware mapping named 'compute-module'." in result.stderr
        return
    values = ok(result)
    assert values["size"] == [64, 32]
    assert values["brightness"] == [40, "FrameCanvas"]
    counts = pi.counters()
    assert counts["refresh_threads"] == 1 and counts["refresh_running"] == 0  # stopped
    assert counts["vsync_waits"] == counts["vsync_done"] == 6
    assert counts["frames"] >= 6
    assert (counts["rt_requests"], counts["affinity_requests"]) == (1, 1)  # no-ops
    assert counts["kernel_writes"] == 2  # sched_rt_runtime_us and cpu3's governor
    assert (counts["devmem_opens"], counts["gpiomem_opens"]) == (4, 0)
    assert pi.output_pins() == PINS[mapping]
    assert (int.from_bytes(pi.gpio()[4:8], "little") >> 24) & 7 == FSEL18[mapping]


@pytest.mark.parametrize("mapping", sorted(PWM_OE))
def test_the_gpio18_mappings_exit_on_a_pi_without_root(pi, mapping):
    """Without /dev/mem the hardware pulser is missing: exit(1), unless it is disabled."""
    result = pi.run(DRAW.format(mapping=mapping, no_pulse=False))
    assert (result.returncode, result.steps) == (1, [])
    assert "Need root. You are configured to use the hardware pulse generator" in result.stderr
    values = ok(pi.run(DRAW.format(mapping=mapping, no_pulse=True)))
    assert values["size"] == [64, 32]
    assert pi.counters()["gpiomem_opens"] == 1


def test_the_gpio18_mappings_exit_over_the_sound_module(tmp_path):
    pi = simulated(tmp_path, devmem="root")  # stock modules: snd_bcm2835 loaded
    result = pi.run(DRAW.format(mapping="adafruit-hat-pwm", no_pulse=False))
    assert (result.returncode, result.steps) == (1, [])
    assert "snd_bcm2835: found that the Pi sound module is loaded" in result.stderr
    values = ok(pi.run(DRAW.format(mapping="adafruit-hat", no_pulse=False)))
    assert values["size"] == [64, 32]  # output-enable on GPIO 4: no PWM, no sound check


@pytest.mark.parametrize("name", ["panel_type", "pixel_mapper_config"])
def test_reading_an_unset_string_option_is_sigsegv(pi, name):
    """What `hasattr(options, key)` in _build_options (loop/display/rgbmatrix.py) did."""
    result = pi.run(f"""
from rgbmatrix import RGBMatrixOptions
step("hasattr", lambda: hasattr(RGBMatrixOptions(), {name!r}))
""")
    assert (result.signal, result.steps) == ("SIGSEGV", [])


def test_loop_rgbmatrix_driver_opens_the_real_panel(pi):
    result = pi.run(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from loop import config
from loop.display.rgbmatrix import RGBMatrixDriver
cfg = config.build({{"display": {{"driver": "rgbmatrix", "rows": 32, "cols": 64}}}}).display
driver = RGBMatrixDriver(cfg)
step("open", driver.open)
step("show", lambda: driver.show(bytes(64 * 32 * 3)))
step("brightness", lambda: driver.set_brightness(0))
step("close", driver.close)
""")
    ok(result)


# ---- faults and what they look like -----------------------------------------------------------

SWAPPER = """
import os, sys, threading, time
from PIL import Image
from rgbmatrix import RGBMatrix, RGBMatrixOptions
o = RGBMatrixOptions()
o.hardware_mapping = "adafruit-hat"
o.rows, o.cols = 16, 32
o.drop_privileges = 0
m = RGBMatrix(options=o)
c = m.CreateFrameCanvas()
image = Image.new("RGB", (32, 16), (1, 2, 3))
def swapping():
    global c
    while True:
        c.SetImage(image)
        c = m.SwapOnVSync(c)
threading.Thread(target=swapping, daemon=True).start()
beat = 0
while True:  # the heartbeat: another Python thread, needing the GIL
    beat += 1
    with open(sys.argv[1] + ".tmp", "w") as fh:
        fh.write(str(beat))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.01)
"""


def heartbeat(path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_a_hung_refresh_freezes_every_python_thread_until_it_moves(pi, tmp_path):
    """SwapOnVSync waits for the refresh thread with the GIL held (the binding never releases
    it): when the refresh stalls, the whole interpreter stops, watchdog threads included."""
    beat = tmp_path / "beat"
    proc = pi.start(["-c", SWAPPER, str(beat)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: heartbeat(beat) > 5 and pi.counters().get("vsync_done", 0) > 5)
        pi.fault("hang")
        wait_for(lambda: pi.counters()["hanging"] == 1)
        wait_for(lambda: pi.counters()["vsync_waits"] > pi.counters()["vsync_done"])
        frozen = heartbeat(beat)
        time.sleep(0.3)  # 30 heartbeats' worth: none may come
        assert heartbeat(beat) <= frozen + 1  # at most the one being written
        assert proc.poll() is None
        pi.fault("")
        wait_for(lambda: heartbeat(beat) > frozen + 5)
        assert pi.counters()["hanging"] == 0
    finally:
        proc.kill()
        proc.wait(10)


def test_swap_on_vsync_keeps_the_gil_for_a_slow_refresh(pi):
    pi.fault("slow 150")
    values = ok(pi.run("""
import threading, time
from rgbmatrix import RGBMatrix, RGBMatrixOptions
o = RGBMatrixOptions()
o.hardware_mapping = "adafruit-hat"
o.drop_privileges = 0
m = RGBMatrix(options=o)
c = m.CreateFrameCanvas()
ticks = []
threading.Thread(target=lambda: [ticks.append(time.sleep(0.001)) for _ in range(10**6)],
                 daemon=True).start()
def swaps():
    global c
    c = m.SwapOnVSync(c)  # let the ticker start
    before = len(ticks)
    for _ in range(3):
        c = m.SwapOnVSync(c)
    return len(ticks) - before
step("ticks during 3 swaps", swaps)
"""))
    assert values["ticks during 3 swaps"] <= 3  # one chance between two calls, no more
    assert pi.counters()["faults"] >= 3


@pytest.mark.parametrize("fault, dies", [("segv", "SIGSEGV"), ("abort", "SIGABRT"),
                                         ("segv-swap", "SIGSEGV")])
def test_a_crash_in_the_library_kills_the_process(pi, tmp_path, fault, dies):
    beat = tmp_path / "beat"
    proc = pi.start(["-X", "faulthandler", "-c", SWAPPER, str(beat)],
                    stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: pi.counters().get("vsync_done", 0) > 3)
        pi.fault(fault)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -getattr(signal, dies)
    if fault == "segv-swap":  # in the Python thread: faulthandler shows where
        assert "in swapping" in err


def test_no_gpio_access_returns_a_null_matrix_that_kills_on_its_next_call(pi):
    pi.fault("nogpio")
    result = pi.run("""
from rgbmatrix import RGBMatrix, RGBMatrixOptions
o = RGBMatrixOptions()
o.hardware_mapping = "adafruit-hat"
m = step("open", lambda: RGBMatrix(options=o))
step("canvas", lambda: m.CreateFrameCanvas())
""")
    assert result.signal == "SIGSEGV"
    assert [s[:2] for s in result.steps] == [["open", "ok"]]
    assert "Must run as root to be able to access /dev/mem" in result.stderr


def test_refresh_rate_cap_and_frame_counter(tmp_path):
    pi = simulated(tmp_path, refresh_hz=50)
    values = ok(pi.run("""
import time
from rgbmatrix import RGBMatrix, RGBMatrixOptions
o = RGBMatrixOptions()
o.hardware_mapping = "adafruit-hat"
o.drop_privileges = 0
m = RGBMatrix(options=o)
started = time.monotonic()
time.sleep(0.5)
step("seconds", lambda: time.monotonic() - started)
"""))
    frames = pi.counters()["frames"]
    assert 0 < frames <= values["seconds"] * 50 + 3


@pytest.mark.skipif(os.geteuid() != 0, reason="the library drops privileges only as root")
def test_the_library_drops_root_but_keeps_the_supplementary_groups(pi):
    values = ok(pi.run("""
import os
from rgbmatrix import RGBMatrix, RGBMatrixOptions
os.setgroups([0, 44])
o = RGBMatrixOptions()
o.hardware_mapping = "adafruit-hat"
o.drop_priv_user, o.drop_priv_group = "nobody", "nogroup"
m = RGBMatrix(options=o)
step("ids", lambda: (os.getresuid(), os.getresgid(), os.getgroups()))
"""))
    assert values["ids"] == [[65534] * 3, [65534] * 3, [0, 44]]


def test_a_second_matrix_in_one_process_keeps_the_first_ones_gpio_setup(pi):
    """Framebuffer::InitGPIO runs once per process (its pulser is static): a panel reopened
    with another mapping or geometry needs a new process."""
    values = ok(pi.run("""
from rgbmatrix import RGBMatrix, RGBMatrixOptions
def matrix(mapping, rows):
    o = RGBMatrixOptions()
    o.hardware_mapping, o.rows = mapping, rows
    o.drop_privileges, o.disable_hardware_pulsing = 0, True
    return RGBMatrix(options=o)
m = matrix("adafruit-hat", 32)
del m
m = matrix("classic", 32)
step("size", lambda: (m.width, m.height))
"""))
    assert values["size"] == [32, 32]
    assert pi.output_pins() == PINS["adafruit-hat"]  # classic's pins never became outputs


# ---- LOOP's driver on the real library ----------------------------------------------------

DRIVER = """
import dataclasses, sys
sys.path.insert(0, {root!r})
from loop import config
from loop.display.rgbmatrix import RGBMatrixDriver
cfg = config.build({{"display": {{"driver": "rgbmatrix", "rows": 32, "cols": 64,
                                 **{keys!r}}}}}).display
cfg = dataclasses.replace(cfg, **{bad!r})  # values config.py refuses, as a caller could pass
driver = RGBMatrixDriver(cfg)
if {bypass!r}:
    driver._refusal = lambda: None  # the library on its own, without LOOP's pre-flight
step("open", driver.open)
step("size", lambda: (driver.width, driver.height))
step("show", lambda: driver.show(bytes(driver.frame_bytes)))
step("close", driver.close)
"""


def drive(pi, keys=None, bad=None, bypass=False):
    return pi.run(DRIVER.format(root=str(ROOT), keys=keys or {}, bad=bad or {},
                                bypass=bypass))


@pytest.mark.parametrize("mapping", HARDWARE_MAPPINGS)
def test_the_driver_opens_every_shipped_mapping(tmp_path, mapping):
    """LOOP's defaults (hardware pulsing on) on a root Pi without the sound module; the one
    mapping the pip build lacks is refused by the pre-flight, before the library aborts."""
    pi = simulated(tmp_path, devmem="root", modules="")
    result = drive(pi, {"hardware_mapping": mapping})
    if mapping == "compute-module":
        assert result.returncode == 0, result.outcome
        assert result.steps[0][:3] == ["open", "raise", "DisplayError"]
        assert "has no compute-module mapping" in result.steps[0][3]
        assert pi.counters().get("refresh_threads", 0) == 0  # the library never ran
        return
    values = ok(result)
    assert values["size"] == [64, 32]
    assert pi.output_pins() == PINS[mapping]
    counts = pi.counters()
    assert counts["refresh_threads"] == 1 and counts["refresh_running"] == 0
    assert counts["vsync_done"] >= 1


def test_the_default_mapping_needs_neither_root_nor_silence(tmp_path):
    """adafruit-hat on a stock Raspberry Pi OS (snd_bcm2835 loaded) without /dev/mem: the
    old pre-flight refused it over the sound module and root; the library runs it."""
    pi = simulated(tmp_path)  # devmem eacces, stock modules
    values = ok(drive(pi))
    assert values["size"] == [64, 32]
    assert pi.counters()["devmem_opens"] >= 1 and pi.counters()["refresh_threads"] == 1


@pytest.mark.parametrize("mapping", sorted(PWM_OE))
def test_the_preflight_stops_the_pulser_exits(tmp_path, mapping):
    """Output-enable on GPIO 18 with hardware pulsing: without /dev/mem, or with the sound
    module, the library exit(1)s; the driver says why instead and the process lives on."""
    for pi, words in ((simulated(tmp_path / "user"), "/dev/mem, which cannot be opened"),
                      (simulated(tmp_path / "sound", devmem="root"), "snd_bcm2835")):
        result = drive(pi, {"hardware_mapping": mapping})
        assert result.returncode == 0, result.outcome
        assert result.steps[0][:3] == ["open", "raise", "DisplayError"], result.outcome
        assert words in result.steps[0][3]
        assert pi.counters()["refresh_threads"] == 0


def test_no_gpio_access_is_a_preflight_refusal_not_a_null_matrix(pi):
    pi.fault("nogpio")
    result = drive(pi)
    assert result.returncode == 0, result.outcome
    assert result.steps[0][:3] == ["open", "raise", "DisplayError"]
    assert "the GPIO cannot be opened: /dev/gpiomem: Permission denied" in result.steps[0][3]
    assert pi.counters()["refresh_threads"] == 0
    assert "Must run as root" not in result.stderr  # the library never tried


REFUSED = [
    ({"rows": 4}, "Invalid number or rows per panel"),
    ({"rows": 66}, "Invalid number or rows per panel"),
    ({"cols": 8}, "Invalid number of columns"),
    ({"chain_length": 0}, "Chain-length outside usable range"),
    ({"pwm_bits": 12}, "Invalid range of pwm-bits"),
    ({"pwm_lsb_nanoseconds": 3001}, "Invalid range of pwm-lsb-nanoseconds"),
    ({"pwm_dither_bits": 3}, "Invalid range of pwm-dither-bits"),
    ({"scan_mode": 2}, "Invalid scan mode"),
    ({"row_address_type": 6}, "Row address type values can be"),
    ({"multiplexing": 23}, "Multiplexing can only be one of"),
    ({"gpio_slowdown": 11}, "--led-slowdown-gpio=11 is outside usable range"),
    ({"led_rgb_sequence": "RGGB"}, "led-sequence needs to be three characters long"),
    ({"hardware_mapping": "compute-module"}, "There is no hardware mapping named"),
    ({"parallel": 2}, "only supports 1 parallel chain"),
    ({"panel_type": "FM6216"}, "Unknown panel type 'FM6216'; typo ?"),
    ({"pixel_mapper_config": "Rotate:45"}, "Rotation needs to be multiple of 90 degrees"),
    ({"pixel_mapper_config": "U-mapper"}, "U-mapper: need at least --led-chain=4"),
    ({"pixel_mapper_config": "Remap:64,32|0,0n|0,0n"}, "Remap list must have 1 entry"),
]


@pytest.mark.parametrize("bad, message", REFUSED)
def test_the_preflight_refuses_exactly_what_the_real_library_refuses(tmp_path, bad, message):
    """Each value the pre-flight stops, handed to the real library: it refuses it too (a NULL
    matrix, abort(), or a message and a panel in the wrong shape). With the pre-flight the
    library never runs and the driver says why."""
    pi = simulated(tmp_path / "with")
    result = drive(pi, bad=bad)
    assert result.returncode == 0, result.outcome
    assert result.steps[0][:3] == ["open", "raise", "DisplayError"], result.outcome
    assert result.steps[0][3].startswith("panel pre-flight failed: ")
    assert pi.counters()["refresh_threads"] == 0

    alone = simulated(tmp_path / "without")
    result = drive(alone, bad=bad, bypass=True)
    assert message in result.stderr, result.outcome
    if result.signal:  # the library's abort()
        assert (result.signal, result.steps) == ("SIGABRT", [])
    elif result.steps[0][1] == "raise":  # a NULL matrix, caught by the driver's net
        assert result.steps[0][2:] == ["DisplayError", result.steps[0][3]]
        assert "refused the panel although the pre-flight passed" in result.steps[0][3]
        assert result.returncode == 0  # the NULL matrix is never freed: no SIGSEGV at exit
    else:  # printed and ignored: the panel opens, without its init or in the wrong shape
        assert [s[:2] for s in result.steps] == [[n, "ok"] for n in
                                                 ("open", "size", "show", "close")]
