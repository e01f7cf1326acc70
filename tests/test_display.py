"""Display drivers, pre-flight and crash marker, against the strict fake `rgbmatrix` in
tests/fake_rgbmatrix (and the real RGBMatrixEmulator when it is installed)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import mmap
import os
import pwd
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from loop.config import ConfigError, build
from loop.display.base import Check, DisplayError
from loop.display.factory import open_driver
from loop.display.guard import clear_crash_marker, init_crash_count
from loop.display.headless import HeadlessDriver
from loop.display.preflight import failed_reason, preflight
from loop.display.rgbmatrix import RGBMatrixDriver

REPO = Path(__file__).resolve().parent.parent
FAKE_DIR = Path(__file__).resolve().parent / "fake_rgbmatrix"


def cfg(**keys):
    return build({"display": keys}).display


def frame(width: int, height: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed * 31) % 256 for i in range(width * height * 3))


@pytest.fixture
def fake(monkeypatch):
    """The fake binding, imported as `rgbmatrix` through sys.path, fresh for each test."""
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.delitem(sys.modules, "rgbmatrix", raising=False)
    module = importlib.import_module("rgbmatrix")
    assert Path(module.__file__).is_relative_to(FAKE_DIR)
    module.reset()
    yield module
    module.reset()
    sys.modules.pop("rgbmatrix", None)  # later tests must not find the fake by accident


def opened(fake, **keys) -> RGBMatrixDriver:
    driver = RGBMatrixDriver(cfg(**keys), module=fake)
    driver.open()
    return driver


def fake_root(tmp_path: Path, *, model: str | None = "Raspberry Pi Zero 2 W Rev 1.0",
              modules: str = "brcmfmac 1 0 - Live 0x0\n", devs=("gpiomem", "mem")) -> str:
    """A fake / with proc/device-tree/model, proc/modules and dev nodes as plain files."""
    root = tmp_path / "root"
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "dev").mkdir()
    if model is not None:
        (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\x00")
    (root / "proc" / "modules").write_text(modules)
    for dev in devs:
        (root / "dev" / dev).write_bytes(b"")
    return str(root)


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


# ---- headless -----------------------------------------------------------------------------

def test_headless_counts_frames_and_checks_size():
    driver = HeadlessDriver(cfg(rows=16, cols=32, chain_length=2, parallel=2))
    driver.open()
    assert (driver.name, driver.width, driver.height, driver.pixel_format) == (
        "headless", 64, 32, "RGB24")
    driver.show(frame(64, 32))
    driver.show(memoryview(bytearray(frame(64, 32, 2))))
    assert driver.frames_shown == 2
    with pytest.raises(ValueError, match="bytes"):
        driver.show(b"\x00" * 10)
    driver.set_brightness(0)
    with pytest.raises(ValueError):
        driver.set_brightness(101)
    driver.clear()
    driver.close()


@pytest.mark.parametrize("kind", ["headless", "rgbmatrix"])
def test_driver_keeps_no_reference_to_an_mmap_frame(fake, kind):
    """The player closes its frame file mmap; a view kept by the driver would block that."""
    keys = {"rows": 16, "cols": 32}
    driver = (HeadlessDriver(cfg(**keys)) if kind == "headless"
              else RGBMatrixDriver(cfg(**keys), module=fake))
    driver.open()
    data = frame(32, 16)
    mm = mmap.mmap(-1, len(data))
    mm.write(data)
    view = memoryview(mm)
    driver.show(view[0:len(data)])
    view.release()
    mm.close()  # BufferError if the driver still held an export of the mapping
    if kind == "rgbmatrix":
        assert fake.state.matrices[0].front.pixels == data


# ---- rgbmatrix through the fake -----------------------------------------------------------

def test_exact_pixels_reach_the_front_canvas(fake):
    driver = opened(fake, rows=16, cols=32, chain_length=2)
    matrix = fake.state.matrices[0]
    first, second = frame(64, 16, 1), frame(64, 16, 2)
    driver.show(first)
    assert matrix.front.pixels == first
    driver.show(bytearray(second))
    assert matrix.front.pixels == second
    assert driver.frames_shown == 2


def test_only_two_canvases_after_100_frames_and_a_brightness_change(fake):
    """The library has no canvas limit (it keeps every one until the matrix goes, a
    framebuffer each): only the driver's discipline keeps memory flat. The fake's strict knob
    turns a third framebuffer (the matrix's own counts) into an error."""
    fake.state.max_canvases = 2
    driver = opened(fake, rows=16, cols=32)
    for i in range(100):
        driver.show(frame(32, 16, i))
    driver.set_brightness(30)
    driver.show(frame(32, 16, 101))
    assert fake.state.canvases_created == 1
    assert len(fake.state.matrices) == 1
    shown = [c[1] for c in fake.state.calls if c[0] == "SwapOnVSync"]
    assert len(shown) == 102
    assert set(shown) == {0, 1}
    assert all(a != b for a, b in zip(shown, shown[1:], strict=False))  # always the other one


def test_fake_canvases_are_unlimited_like_the_library_unless_a_test_says(fake):
    """What makes the canvas count above meaningful: the real library hands out a canvas
    every time (tests/test_rgbmatrix_fidelity.py); only the fake's knob refuses a third."""
    options = fake.RGBMatrixOptions()
    options.hardware_mapping, options.drop_privileges = "adafruit-hat", 0
    matrix = fake.RGBMatrix(options=options)
    canvases = [matrix.CreateFrameCanvas() for _ in range(3)]
    assert len({c.ident for c in canvases}) == 3
    fake.state.max_canvases = 4  # the matrix's own framebuffer and the three above
    with pytest.raises(fake.TooManyCanvases):
        matrix.CreateFrameCanvas()


def test_brightness_change_redraws_the_last_frame(fake):
    driver = opened(fake, rows=16, cols=32, brightness=80)
    matrix = fake.state.matrices[0]
    picture = frame(32, 16, 5)
    driver.show(picture)
    fake.state.calls.clear()
    driver.set_brightness(40)
    back = [c[1] for c in fake.state.calls if c[0] == "SetImage"]
    assert fake.state.calls == [("brightness", 40), ("SetImage", back[0], 40),
                                ("SwapOnVSync", back[0])]
    assert matrix.front.pixels == picture
    assert matrix.front.drawn_brightness == 40
    assert driver.brightness == 40


def test_brightness_zero_clears_and_holds_frames_until_it_comes_back(fake):
    driver = opened(fake, rows=16, cols=32)
    matrix = fake.state.matrices[0]
    driver.show(frame(32, 16, 1))
    fake.state.calls.clear()
    driver.set_brightness(0)
    assert fake.state.calls == [("Clear",)]
    assert matrix.front.pixels == bytes(32 * 16 * 3)
    later = frame(32, 16, 2)
    driver.show(later)
    assert fake.state.calls == [("Clear",)]  # nothing drawn while off
    driver.set_brightness(70)
    assert matrix.front.pixels == later
    assert matrix.front.drawn_brightness == 70


def test_clear_forgets_the_frame(fake):
    driver = opened(fake, rows=16, cols=32)
    driver.show(frame(32, 16))
    driver.clear()
    fake.state.calls.clear()
    driver.set_brightness(50)
    assert fake.state.calls == [("brightness", 50)]
    assert fake.state.matrices[0].front.pixels == bytes(32 * 16 * 3)


def test_config_values_reach_the_options(fake):
    keys = dict(rows=64, cols=128, chain_length=3, parallel=2, hardware_mapping="regular",
                gpio_slowdown=4, brightness=55, pwm_bits=9, pwm_lsb_nanoseconds=200,
                pwm_dither_bits=1, scan_mode=1, row_address_type=2, multiplexing=3,
                led_rgb_sequence="gbr", pixel_mapper_config="U-mapper", panel_type="FM6126A",
                disable_hardware_pulsing=True, limit_refresh_rate_hz=120)
    keys["chain_length"] = 4  # the U-mapper folds an even chain
    driver = opened(fake, **keys)
    options = fake.state.options
    for key, value in keys.items():
        # As configured: the library takes a lower-case sequence (Validate() and its pin
        # lookup both try either case); strings read back as bytes.
        expected = value.encode() if isinstance(value, str) else value
        assert getattr(options, key) == expected, key
    # U-mapper: 4 x 128 wide, 2 x 64 high, folded into half the width and twice the height
    assert (driver.width, driver.height) == (256, 256)


def test_config_takes_the_librarys_whole_range(fake):
    """config.py allows what the library allows where LOOP has no reason of its own to be
    stricter: gpio_slowdown up to 10 (Pi 4 owners need 3-4, some panels more), all 22
    multiplexers."""
    opened(fake, rows=16, cols=32, gpio_slowdown=10, multiplexing=22)
    assert (fake.state.options.gpio_slowdown, fake.state.options.multiplexing) == (10, 22)
    for key, value in (("gpio_slowdown", 11), ("multiplexing", 23)):
        with pytest.raises(ConfigError, match=f"display.{key}"):
            cfg(**{key: value})


def test_brightness_zero_at_start_opens_with_1_and_clears(fake):
    driver = opened(fake, rows=16, cols=32, brightness=0)
    assert fake.state.options.brightness == 1  # the library's Validate() rejects 0
    assert fake.state.calls[-1] == ("Clear",)  # off: 1 % is still light, Clear() is dark
    fake.state.calls.clear()
    driver.show(frame(32, 16))
    assert fake.state.calls == []  # nothing drawn while off


def test_library_drops_to_the_service_user(fake):
    me = pwd.getpwuid(os.getuid()).pw_name
    driver = RGBMatrixDriver(cfg(rows=16, cols=32), module=fake, user=me)
    driver.open()
    options = fake.state.options
    assert (options.drop_privileges, options.drop_priv_user) == (1, me.encode())
    assert driver.drops_privileges is True
    assert fake.state.matrices[0].dropped_to[0] == me


@pytest.mark.parametrize("user, keys, missing", [
    (None, {}, set()),                                   # no user: never the default "daemon"
    ("no-such-user-loop", {}, set()),                    # dev machine without the user
    ("root", {"drop_privileges": False}, set()),         # operator turned it off
    ("root", {}, {"drop_priv_user", "drop_priv_group"}),  # a binding without the names
])
def test_library_does_not_drop_privileges_when_it_should_not(fake, user, keys, missing):
    fake.state.missing_options = missing
    driver = RGBMatrixDriver(cfg(rows=16, cols=32, **keys), module=fake, user=user)
    driver.open()
    assert fake.state.options.drop_privileges == 0  # the fake's default is 1, like the C++
    assert fake.state.matrices[0].dropped_to is None
    assert driver.drops_privileges is False


def test_older_binding_without_newer_options_still_opens(fake):
    fake.state.missing_options = {"panel_type", "pwm_dither_bits", "limit_refresh_rate_hz"}
    driver = opened(fake, rows=16, cols=32, panel_type="FM6126A")
    driver.show(frame(32, 16))
    with pytest.raises(AttributeError):
        fake.state.options.panel_type  # noqa: B018


def test_fake_options_reject_unknown_names_and_images_in_other_modes(fake):
    from PIL import Image
    options = fake.RGBMatrixOptions()
    with pytest.raises(AttributeError):
        options.brightnes = 50
    with pytest.raises(OverflowError):
        options.rows = 300
    # The library's default mapping ("regular") needs the PWM pulser, which exits over the
    # sound module of the fake's stock Pi: the Bonnet's mapping needs neither.
    options.hardware_mapping, options.drop_privileges = "adafruit-hat", 0
    canvas = fake.RGBMatrix(options=options).CreateFrameCanvas()
    with pytest.raises(Exception, match="only RGB"):
        canvas.SetImage(Image.new("RGBA", (32, 32)))


def test_open_refuses_a_pi_whose_gpio_cannot_be_opened_before_the_library_runs(fake, tmp_path):
    """Without GPIO access the library prints "Must run as root" and hands back a matrix
    holding NULL, whose next call is SIGSEGV: the driver checks the devices first."""
    root = fake_root(tmp_path, devs=())
    driver = RGBMatrixDriver(cfg(rows=16, cols=32), module=fake, root=root, euid=0)
    with pytest.raises(DisplayError, match="the GPIO cannot be opened: /dev/gpiomem: No such"):
        driver.open()
    assert fake.state.calls == []  # RGBMatrix() never ran


def test_a_matrix_the_library_refused_becomes_a_display_error(fake):
    """The net under the pre-flight: a refusal it did not foresee (here: the fake's GPIO
    fails off a Pi, where the pre-flight cannot look) gives a NULL matrix. The driver sees it
    (SetImage is the one call that checks) instead of calling CreateFrameCanvas() on it, and
    keeps it for good: freeing it is a SIGSEGV too."""
    fake.state.fail_init = "no GPIO"
    driver = RGBMatrixDriver(cfg(rows=16, cols=32), module=fake)
    with pytest.raises(DisplayError, match="refused the panel although the pre-flight passed"):
        driver.open()
    assert fake.state.null_matrices == 1
    assert [c[0] for c in fake.state.calls] == ["RGBMatrix"]  # nothing after it
    import gc
    gc.collect()  # the refused matrix is never freed: this process lives on


def test_show_lets_frame_call_exceptions_through(fake):
    """The one exception the binding raises out of a frame call is the dead-canvas one (a
    real panel fault is invisible to the library: FINDINGS.md section 8); it reaches the
    breaker as it is."""
    driver = opened(fake, rows=16, cols=32)
    fake.state.fail_after_swaps = 3
    for i in range(3):
        driver.show(frame(32, 16, i))
    with pytest.raises(Exception, match="Canvas was destroyed or not initialized") as caught:
        driver.show(frame(32, 16, 9))
    assert not isinstance(caught.value, DisplayError)


def test_a_slow_panel_blocks_the_caller_and_every_other_thread(fake):
    """SwapOnVSync keeps the GIL while it waits for the refresh (the real binding does,
    tests/test_hwsim.py shows it): no other Python thread runs meanwhile."""
    driver = opened(fake, rows=16, cols=32)
    ticks, stop = [], threading.Event()

    def ticking():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)
    ticker = threading.Thread(target=ticking)
    ticker.start()
    try:
        wait_until = time.monotonic() + 5
        while len(ticks) < 3 and time.monotonic() < wait_until:
            time.sleep(0.01)
        fake.state.slow_sec = 0.2
        started = time.monotonic()
        driver.show(frame(32, 16))
        ended = time.monotonic()
    finally:
        stop.set()
        ticker.join(5)
    assert ended - started >= 0.2
    during = [t for t in ticks if started + 0.01 < t < ended - 0.01]
    assert during == []
    assert fake.state.matrices[0].front.pixels == frame(32, 16)


def test_a_hung_panel_never_returns_to_the_caller(fake):
    """A stalled refresh: SwapOnVSync does not come back, and with the GIL held nothing in
    the process can end it (the fake gives up after 3 s with an AssertionError, the real one
    never does: the systemd watchdog is the way out)."""
    driver = opened(fake, rows=16, cols=32)
    fake.state.hang = True
    started = time.monotonic()
    with pytest.raises(AssertionError, match="never released"):
        driver.show(frame(32, 16, 2))
    assert time.monotonic() - started >= 2.9
    assert fake.state.hanging.is_set()


def test_calls_need_an_open_driver_and_close_blanks(fake):
    driver = RGBMatrixDriver(cfg(rows=16, cols=32), module=fake)
    with pytest.raises(DisplayError):
        driver.show(frame(32, 16))
    driver.open()
    driver.open()  # idempotent: no second matrix, no extra canvas
    assert (len(fake.state.matrices), fake.state.canvases_created) == (1, 1)
    with pytest.raises(ValueError):
        driver.show(frame(32, 8))
    driver.show(frame(32, 16))
    driver.close()
    assert fake.state.matrices[0].front.pixels == bytes(32 * 16 * 3)
    with pytest.raises(DisplayError):
        driver.show(frame(32, 16))


def test_open_driver_imports_rgbmatrix_from_sys_path(fake, tmp_path):
    driver, reason = open_driver(cfg(driver="rgbmatrix", rows=16, cols=32),
                                         str(tmp_path), root=fake_root(tmp_path, model=None))
    assert reason is None
    assert driver.name == "rgbmatrix"
    assert driver.module is sys.modules["rgbmatrix"] is fake
    driver.show(frame(32, 16))
    assert fake.state.matrices[0].front.pixels == frame(32, 16)


# ---- pre-flight ---------------------------------------------------------------------------

def test_preflight_off_a_pi_skips_the_hardware_checks(fake, tmp_path):
    checks = by_name(preflight(cfg(), root=fake_root(tmp_path, model=None), euid=1000,
                                       module=fake))
    for name in ("platform", "sound_module", "root", "gpio_device"):
        assert (checks[name].status, checks[name].reason) == ("skip", "not a Raspberry Pi")
    for name in ("hardware_mapping", "parallel", "led_rgb_sequence", "geometry", "binding"):
        assert checks[name].status == "pass", name
    assert failed_reason(list(checks.values())) is None


def test_preflight_on_a_pi_with_everything_in_place(fake, tmp_path):
    checks = by_name(preflight(cfg(), root=fake_root(tmp_path), euid=0, module=fake))
    assert checks["platform"] == Check("platform", "pass",
                                               "Raspberry Pi Zero 2 W Rev 1.0")
    assert all(c.status == "pass" for c in checks.values()), checks


SND = "snd_bcm2835 24576 1 - Live 0x0\nsnd_pcm 1 1 snd_bcm2835, Live 0x0\n"


PWM = {"hardware_mapping": "regular"}  # output-enable on GPIO 18: the PWM pulser


@pytest.mark.parametrize("root_keys, cfg_keys, euid, name, status", [
    ({"modules": SND}, PWM, 0, "sound_module", "fail"),
    ({"modules": SND}, {"hardware_mapping": "adafruit-hat-pwm"}, 0, "sound_module", "fail"),
    ({"modules": SND}, {"hardware_mapping": "regular-pi1"}, 0, "sound_module", "fail"),
    ({"modules": SND}, {**PWM, "disable_hardware_pulsing": True}, 0, "sound_module", "pass"),
    ({"modules": "snd_soc_bcm2835_i2s 1 0 - Live 0x0\n"}, PWM, 0, "sound_module", "pass"),
    ({}, PWM, 1000, "root", "fail"),
    ({"devs": ("gpiomem",)}, PWM, 0, "root", "fail"),  # root, but /dev/mem will not open
    ({}, {**PWM, "disable_hardware_pulsing": True}, 1000, "root", "pass"),
    ({}, PWM, 0, "root", "pass"),
    # Output-enable elsewhere: no pulser, so neither the sound module nor root matters
    # (the library never looks for either; adafruit-hat is LOOP's default).
    ({"modules": SND}, {}, 1000, "sound_module", "pass"),
    ({"modules": SND}, {"hardware_mapping": "classic"}, 1000, "sound_module", "pass"),
    ({"modules": SND}, {"hardware_mapping": "classic-pi1"}, 1000, "sound_module", "pass"),
    ({"devs": ("gpiomem",)}, {}, 1000, "root", "pass"),
    ({"devs": ()}, {}, 0, "gpio_device", "fail"),
    ({"devs": ("gpiomem",)}, {}, 0, "gpio_device", "pass"),
    ({"devs": ("mem",)}, {}, 0, "gpio_device", "pass"),
])
def test_preflight_hardware_rules(fake, tmp_path, root_keys, cfg_keys, euid, name, status):
    checks = by_name(preflight(cfg(**cfg_keys), root=fake_root(tmp_path, **root_keys),
                                       euid=euid, module=fake))
    assert checks[name].status == status, checks[name]
    if status == "fail":
        assert checks[name].fix
        assert checks[name].reason in failed_reason(list(checks.values()))
    others = [c for c in checks.values() if c.name != name]
    assert all(c.status == "pass" for c in others), others


def test_preflight_sound_module_fix_names_both_ways_out(fake, tmp_path):
    check = by_name(preflight(cfg(**PWM), root=fake_root(tmp_path, modules=SND), euid=0,
                                      module=fake))["sound_module"]
    assert "snd_bcm2835" in check.reason
    assert "blacklist" in check.fix and "dtparam=audio=off" in check.fix
    assert "disable_hardware_pulsing" in check.fix


@pytest.mark.parametrize("change, name", [
    ({"hardware_mapping": "adafruit-bonnet"}, "hardware_mapping"),
    ({"hardware_mapping": "compute-module"}, "hardware_mapping"),  # not in the pip build
    ({"parallel": 4}, "parallel"),
    ({"parallel": 2, "hardware_mapping": "adafruit-hat"}, "parallel"),
    ({"led_rgb_sequence": "RGG"}, "led_rgb_sequence"),
    ({"led_rgb_sequence": "RGBW"}, "led_rgb_sequence"),
    ({"rows": 7}, "geometry"),
    ({"rows": 4}, "geometry"),  # Validate() wants 8..64
    ({"rows": 66}, "geometry"),
    ({"cols": 0}, "geometry"),
    ({"cols": 8}, "geometry"),  # Validate() wants 16 or more
    ({"chain_length": 0}, "geometry"),
    ({"pwm_bits": 0}, "pwm_bits"),
    ({"pwm_bits": 12}, "pwm_bits"),
    ({"pwm_lsb_nanoseconds": 49}, "pwm_lsb_nanoseconds"),
    ({"pwm_lsb_nanoseconds": 3001}, "pwm_lsb_nanoseconds"),
    ({"pwm_dither_bits": 3}, "pwm_dither_bits"),
    ({"scan_mode": 2}, "scan_mode"),
    ({"row_address_type": 6}, "row_address_type"),
    ({"multiplexing": 23}, "multiplexing"),
    ({"gpio_slowdown": 11}, "gpio_slowdown"),
    ({"panel_type": "FM6216"}, "panel_type"),
    ({"pixel_mapper_config": "U-mapper"}, "pixel_mapper_config"),  # a chain of 1
    ({"pixel_mapper_config": "Rotate:45"}, "pixel_mapper_config"),
    ({"pixel_mapper_config": "Rotate:90;Flip"}, "pixel_mapper_config"),
    ({"pixel_mapper_config": "Mirror:X"}, "pixel_mapper_config"),
    ({"pixel_mapper_config": ":90"}, "pixel_mapper_config"),
    ({"pixel_mapper_config": "Remap:64,32|0,0n|64,0n"}, "pixel_mapper_config"),
])
def test_preflight_config_rules_stop_what_would_kill_the_process(fake, tmp_path, change, name):
    # Values config.py would refuse, as a caller could still hand them over.
    bad = dataclasses.replace(cfg(driver="rgbmatrix"), **change)
    checks = by_name(preflight(bad, root=fake_root(tmp_path, model=None), module=fake))
    assert checks[name].status == "fail"
    assert checks[name].fix
    driver, reason = open_driver(bad, str(tmp_path / "data"),
                                         root=fake_root(tmp_path / "x", model=None),
                                         module=fake)
    assert driver.name == "headless"
    assert reason.startswith("panel pre-flight failed: ")
    assert checks[name].reason in reason
    assert ("RGBMatrix",) not in fake.state.calls  # the library never got control


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"rows": 4}, "Invalid number or rows per panel"),
    ({"cols": 8}, "Invalid number of columns"),
    ({"pwm_bits": 12}, "Invalid range of pwm-bits"),
    ({"pwm_lsb_nanoseconds": 3001}, "Invalid range of pwm-lsb-nanoseconds"),
    ({"multiplexing": 23}, "Multiplexing can only be one of"),
    ({"gpio_slowdown": 11}, "--led-slowdown-gpio=11 is outside usable range"),
    ({"hardware_mapping": "compute-module"}, "There is no hardware mapping named"),
    ({"parallel": 2}, "only supports 1 parallel chain"),
])
def test_preflight_passes_exactly_what_the_library_accepts(fake, tmp_path, change, message):
    """Each value the pre-flight refuses, handed to the library as LOOP would set it: the
    library refuses it too (a NULL matrix, which the driver's net catches, or abort()); what
    the pre-flight passes opens. Run against the fake in a
    subprocess (the fake matches the real library here: tests/test_rgbmatrix_fidelity.py)."""
    import hwsim
    bad = dataclasses.replace(cfg(driver="rgbmatrix", rows=16, cols=32), **change)
    reason = failed_reason(preflight(bad, root=fake_root(tmp_path, model=None), module=fake))
    assert (reason is None) == (message is None), reason
    keys = {f.name: getattr(bad, f.name) for f in dataclasses.fields(bad)}
    result = hwsim.run_python(sys.executable, f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import rgbmatrix
from loop.display.rgbmatrix import RGBMatrixDriver
class Cfg: pass
cfg = Cfg()
cfg.__dict__.update({keys!r})
driver = RGBMatrixDriver(cfg, rgbmatrix)
driver._refusal = lambda: None  # what the library does without LOOP's pre-flight
step("open", driver.open)
step("size", lambda: (driver.width, driver.height))
""", hwsim.fake_env())
    if message is None:
        assert (result.returncode, result.steps) == (0, [["open", "ok", None],
                                                         ["size", "ok", [32, 16]]])
        return
    assert message in result.stderr
    if result.signal is None:  # a NULL matrix: caught by the driver's net, not a crash
        assert result.steps[0][:3] == ["open", "raise", "DisplayError"], result.outcome
        assert "refused the panel" in result.steps[0][3]
    else:
        assert (result.signal, result.steps) == ("SIGABRT", []), result.outcome


def test_preflight_refuses_a_binding_built_for_another_pillow(fake, monkeypatch, tmp_path):
    """make install records the Pillow the binding was compiled against; SetImage reads
    Pillow's internals, so after a Pillow upgrade the panel waits for a rebuild."""
    import PIL
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    record = tmp_path / "rgbmatrix-pillow-version"
    record.write_text(PIL.__version__ + "\n")
    root = fake_root(tmp_path, model=None)
    assert by_name(preflight(cfg(), root=root, module=fake))["binding"].status == "pass"
    record.write_text("9.3.0\n")
    check = by_name(preflight(cfg(), root=root, module=fake))["binding"]
    assert check.status == "fail"
    assert f"built against Pillow 9.3.0, but Pillow {PIL.__version__}" in check.reason
    assert "sudo make install" in check.fix
    driver, reason = open_driver(cfg(driver="auto"), str(tmp_path / "data"), root=root,
                                 module=fake)
    assert driver.name == "headless" and "built against Pillow 9.3.0" in reason
    assert fake.state.calls == []


def test_preflight_binding_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rgbmatrix", None)
    checks = by_name(preflight(cfg(), root=fake_root(tmp_path, model=None)))
    assert checks["binding"].status == "fail"


# ---- crash marker -------------------------------------------------------------------------

def marker(data_dir) -> Path:
    return Path(data_dir) / "display-init.marker"


def start(fake, data_dir, root, **keys):
    keys = {"driver": "rgbmatrix", "rows": 16, "cols": 32, **keys}
    return open_driver(cfg(**keys), str(data_dir), root=root, module=fake)


def crashing(fake, monkeypatch):
    """Make the fake's RGBMatrix() die like the C library calling exit()."""
    def dies(*args, **kwargs):
        raise fake.LibraryExit("exit(1) inside the C library")
    monkeypatch.setattr(fake, "RGBMatrix", dies)


def test_marker_is_there_during_init_and_gone_after(fake, tmp_path, monkeypatch):
    data, root = tmp_path / "data", fake_root(tmp_path, model=None)
    seen = []
    real = fake.RGBMatrix

    def watching(*args, **kwargs):
        seen.append(marker(data).read_text().strip())
        return real(*args, **kwargs)
    monkeypatch.setattr(fake, "RGBMatrix", watching)
    driver, reason = start(fake, data, root)
    assert (driver.name, reason) == ("rgbmatrix", None)
    assert seen == ["1"]
    assert not marker(data).exists()


def test_crashes_in_a_row_end_in_headless_until_reset(fake, tmp_path, monkeypatch):
    data, root = tmp_path / "data", fake_root(tmp_path, model=None)
    with monkeypatch.context() as patch:
        crashing(fake, patch)
        for count in (1, 2):  # two starts, each killed inside the library
            with pytest.raises(fake.LibraryExit):
                start(fake, data, root, max_init_crashes=2)
            assert marker(data).read_text().strip() == str(count)
    fake.state.calls.clear()
    driver, reason = start(fake, data, root, max_init_crashes=2)
    assert driver.name == "headless"
    assert reason == ("panel init crashed 2 times in a row; "
                      "POST /api/display/reset to try again")
    assert ("RGBMatrix",) not in fake.state.calls  # the panel was not tried
    assert marker(data).read_text().strip() == "2"  # still there for the next start
    clear_crash_marker(str(data))
    driver, reason = start(fake, data, root, max_init_crashes=2)
    assert (driver.name, reason) == ("rgbmatrix", None)
    assert not marker(data).exists()


def test_marker_found_at_start_counts_as_a_failed_init(fake, tmp_path):
    data, root = tmp_path / "data", fake_root(tmp_path, model=None)
    data.mkdir()
    marker(data).write_text("1\n")
    driver, reason = start(fake, data, root, max_init_crashes=1)
    assert driver.name == "headless"
    assert reason.startswith("panel init crashed 1 time in a row")
    marker(data).write_text("garbage")  # unreadable count: still one failed init
    assert init_crash_count(str(data)) == 1
    driver, reason = start(fake, data, root, max_init_crashes=2)
    assert (driver.name, reason) == ("rgbmatrix", None)
    assert not marker(data).exists()


def test_clean_init_failure_falls_back_without_counting_as_a_crash(fake, tmp_path):
    data, root = tmp_path / "data", fake_root(tmp_path, model=None)
    fake.state.fail_init = "no GPIO"  # off a Pi the pre-flight cannot see it: a NULL matrix
    driver, reason = start(fake, data, root)
    assert driver.name == "headless"
    assert "the rgbmatrix library refused the panel although the pre-flight passed" in reason
    assert not marker(data).exists()
    marker(data).write_text("1\n")
    start(fake, data, root, max_init_crashes=5)
    assert marker(data).read_text().strip() == "1"  # neither reset nor raised


def test_clear_crash_marker_without_marker_is_fine(tmp_path):
    clear_crash_marker(str(tmp_path))
    assert init_crash_count(str(tmp_path)) == 0


# ---- choosing a driver --------------------------------------------------------------------

def test_auto_without_the_binding_runs_headless(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rgbmatrix", None)
    driver, reason = open_driver(cfg(driver="auto"), str(tmp_path),
                                         root=fake_root(tmp_path, model=None))
    assert driver.name == "headless"
    assert "not installed" in reason
    driver.show(bytes(driver.frame_bytes))  # opened and usable


def test_auto_uses_the_binding_when_preflight_passes(fake, tmp_path):
    driver, reason = open_driver(cfg(driver="auto", rows=16, cols=32), str(tmp_path),
                                         root=fake_root(tmp_path), euid=0, module=fake)
    assert (driver.name, reason) == ("rgbmatrix", None)


def test_auto_falls_back_when_preflight_fails(fake, tmp_path):
    driver, reason = open_driver(cfg(driver="auto", **PWM), str(tmp_path),
                                         root=fake_root(tmp_path, modules=SND), euid=0,
                                         module=fake)
    assert driver.name == "headless"
    assert "snd_bcm2835" in reason
    assert fake.state.calls == []


def test_the_default_mapping_opens_on_a_stock_pi_without_root(fake, tmp_path):
    """adafruit-hat (the Bonnet, LOOP's default) has output-enable on GPIO 4: the library
    runs it on /dev/gpiomem with the sound module loaded and without root."""
    fake.state.devmem = False  # the fake's Pi as this root would be: no /dev/mem access
    driver, reason = open_driver(cfg(driver="auto", rows=16, cols=32), str(tmp_path),
                                 root=fake_root(tmp_path, modules=SND, devs=("gpiomem",)),
                                 euid=1000, module=fake)
    assert (driver.name, reason) == ("rgbmatrix", None)


@pytest.mark.parametrize("choice, expected", [
    ("headless", None), ("framebuffer", "/dev/fb1 does not exist")])
def test_headless_and_framebuffer_choices(tmp_path, choice, expected):
    # root: a tree without /dev/fb1 (tests/test_framebuffer.py drives a fake one)
    driver, reason = open_driver(cfg(driver=choice), str(tmp_path), root=str(tmp_path))
    assert driver.name == "headless"
    assert reason == expected if expected is None else expected in reason


def test_emulator_missing_falls_back_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "RGBMatrixEmulator", None)
    driver, reason = open_driver(cfg(driver="emulator"), str(tmp_path))
    assert driver.name == "headless"
    assert "RGBMatrixEmulator" in reason


# ---- the real RGBMatrixEmulator (optional dev extra), each run in its own process ----------

def needs_emulator(test):
    """Skip without the emulator; under CI only the Debian-Pillow run may lack it (it needs
    Pillow >= 10, so .ci/run leaves it out there and says so with LOOP_TEST_NO_EMULATOR)."""
    test = pytest.mark.skipif(importlib.util.find_spec("RGBMatrixEmulator") is None,
                              reason="RGBMatrixEmulator is not installed")(test)
    if os.environ.get("LOOP_TEST_NO_EMULATOR") == "1":
        test = pytest.mark.capability(test)
    return test


EMULATOR_SCRIPT = textwrap.dedent("""
    import json, signal, sys
    from loop.config import ConfigError, build
    from loop.display.emulator import EmulatorDriver
    args = json.loads(sys.argv[1])
    out = {}
    mine = lambda *a: None
    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, mine)
    cfg = build({"display": {"driver": "emulator", "rows": 16, "cols": 32,
                             "brightness": 100}}).display
    driver = EmulatorDriver(cfg, work_dir=args["work_dir"], adapter=args["adapter"])
    if args.get("port"):
        with open(args["work_dir"] + "/emulator_config.json", "w") as fh:
            json.dump({"display_adapter": "browser", "browser": {"port": args["port"]}}, fh)
    driver.open()
    out["size"] = [driver.width, driver.height]
    out["signals_kept"] = (signal.getsignal(signal.SIGTERM) is mine
                           and signal.getsignal(signal.SIGINT) is mine)
    picture = bytes((i * 7) % 256 for i in range(32 * 16 * 3))
    driver.show(picture)
    if args["adapter"] == "raw":
        raw = sys.modules["RGBMatrixEmulator.adapters.raw_adapter"].RawAdapter.INSTANCE
        out["same_pixels"] = raw._last_frame().tobytes() == picture
        driver.set_brightness(50)
        half = bytes(int(v * 0.5) for v in picture)
        out["redrawn_at_half"] = raw._last_frame().tobytes() == half
    else:
        import psutil
        conns = getattr(psutil.Process(), "net_connections", None) or \\
            psutil.Process().connections
        out["listening"] = sorted({c.laddr.ip for c in conns(kind="inet")
                                   if c.status == "LISTEN" and c.laddr.port == args["port"]})
    print(json.dumps(out), flush=True)
    import os
    os._exit(0)  # the package's server thread never ends by itself
""")


def run_emulator(tmp_path: Path, **args) -> dict:
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", EMULATOR_SCRIPT,
                           json.dumps({"work_dir": str(work), **args})],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []  # nothing written into the current directory
    assert (work / "emulator_config.json").exists()
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_emulator
def test_emulator_plays_a_frame_through_the_real_package(tmp_path):
    out = run_emulator(tmp_path, adapter="raw")
    assert out == {"size": [32, 16], "signals_kept": True, "same_pixels": True,
                   "redrawn_at_half": True}
    saved = json.loads((tmp_path / "work" / "emulator_config.json").read_text())
    assert saved["display_adapter"] == "raw"


@needs_emulator
def test_emulator_browser_listens_on_loopback_and_keeps_our_signals(tmp_path):
    pytest.importorskip("tornado")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = run_emulator(tmp_path, adapter=None, port=port)
    assert out["listening"] == ["127.0.0.1"]
    assert out["signals_kept"] is True
