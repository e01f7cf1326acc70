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

from loop.config import build
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


def test_fake_refuses_a_third_canvas(fake):
    """What makes the canvas count above meaningful."""
    matrix = fake.RGBMatrix(options=fake.RGBMatrixOptions())
    matrix.CreateFrameCanvas()
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
    driver = opened(fake, **keys)
    options = fake.state.options
    for key, value in keys.items():
        expected = value.encode() if isinstance(value, str) else value
        if key == "led_rgb_sequence":
            expected = b"GBR"  # the library wants upper case
        assert getattr(options, key) == expected, key
    assert (driver.width, driver.height) == (384, 128)


def test_brightness_zero_at_start_opens_with_1_and_clears(fake):
    driver = opened(fake, rows=16, cols=32, brightness=0)
    assert fake.state.options.brightness == 1  # the library's Validate() rejects 0
    assert ("Clear",) in fake.state.calls
    driver.show(frame(32, 16))
    assert not [c for c in fake.state.calls if c[0] == "SetImage"]


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
    canvas = fake.RGBMatrix(options=options).CreateFrameCanvas()
    with pytest.raises(Exception, match="only RGB"):
        canvas.SetImage(Image.new("RGBA", (32, 32)))


def test_open_turns_library_errors_into_display_error(fake):
    fake.state.fail_init = "cannot mmap /dev/gpiomem"
    driver = RGBMatrixDriver(cfg(rows=16, cols=32), module=fake)
    with pytest.raises(DisplayError, match="cannot mmap /dev/gpiomem"):
        driver.open()


def test_show_lets_panel_failures_through(fake):
    driver = opened(fake, rows=16, cols=32)
    fake.state.fail_after_swaps = 3
    for i in range(3):
        driver.show(frame(32, 16, i))
    with pytest.raises(Exception, match="fake panel failure") as caught:
        driver.show(frame(32, 16, 9))
    assert not isinstance(caught.value, DisplayError)


def test_hanging_and_slow_panels_block_the_caller(fake):
    driver = opened(fake, rows=16, cols=32)
    fake.state.slow_sec = 0.05
    started = time.monotonic()
    driver.show(frame(32, 16))
    assert time.monotonic() - started >= 0.05
    fake.state.slow_sec = 0.0
    fake.state.hang = True
    worker = threading.Thread(target=driver.show, args=(frame(32, 16, 2),))
    worker.start()
    assert fake.state.hanging.wait(5)
    worker.join(0.1)
    assert worker.is_alive()
    fake.release()
    worker.join(5)
    assert not worker.is_alive()
    assert fake.state.matrices[0].front.pixels == frame(32, 16, 2)


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


@pytest.mark.parametrize("root_keys, cfg_keys, euid, name, status", [
    ({"modules": SND}, {}, 0, "sound_module", "fail"),
    ({"modules": SND}, {"disable_hardware_pulsing": True}, 0, "sound_module", "pass"),
    ({"modules": "snd_soc_bcm2835_i2s 1 0 - Live 0x0\n"}, {}, 0, "sound_module", "pass"),
    ({}, {}, 1000, "root", "fail"),
    ({}, {"disable_hardware_pulsing": True}, 1000, "root", "pass"),
    ({}, {}, 0, "root", "pass"),
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
    check = by_name(preflight(cfg(), root=fake_root(tmp_path, modules=SND), euid=0,
                                      module=fake))["sound_module"]
    assert "snd_bcm2835" in check.reason
    assert "blacklist" in check.fix and "dtparam=audio=off" in check.fix
    assert "disable_hardware_pulsing" in check.fix


@pytest.mark.parametrize("change, name", [
    ({"hardware_mapping": "adafruit-bonnet"}, "hardware_mapping"),
    ({"parallel": 4}, "parallel"),
    ({"parallel": 2, "hardware_mapping": "adafruit-hat"}, "parallel"),
    ({"led_rgb_sequence": "RGG"}, "led_rgb_sequence"),
    ({"rows": 7}, "geometry"),
    ({"cols": 0}, "geometry"),
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


def test_fake_exits_where_the_library_would(fake):
    """Without the pre-flight, these values take the whole process down."""
    options = fake.RGBMatrixOptions()
    options.hardware_mapping = "adafruit-hat"
    options.parallel = 2
    with pytest.raises(fake.LibraryExit):
        fake.RGBMatrix(options=options)


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
    fake.state.fail_init = "RGBMatrix creation failed"
    driver, reason = start(fake, data, root)
    assert driver.name == "headless"
    assert "RGBMatrix creation failed" in reason
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
    driver, reason = open_driver(cfg(driver="auto"), str(tmp_path),
                                         root=fake_root(tmp_path, modules=SND), euid=0,
                                         module=fake)
    assert driver.name == "headless"
    assert "snd_bcm2835" in reason
    assert fake.state.calls == []


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
    from loop.config import build
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
