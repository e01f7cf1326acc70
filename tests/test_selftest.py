"""`loop.py --selftest`: against the strict fake `rgbmatrix` (in a subprocess, the way a user
runs it) and the fake framebuffer tree; refusing while the service drives the panel (issue 11)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAKE_RGBMATRIX, ROOT, make_config
from test_framebuffer import fake_fb

from loop.display import framebuffer
from loop.display.guard import MARKER_NAME, PanelLock, panel_lock_holder
from loop.media import pixels
from loop.service import selftest
from loop.service.app import App

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
state=$(cat "$FAKE_SYSTEMCTL_STATE" 2>/dev/null || echo inactive)
case $1 in
    is-active) echo "$state"; [ "$state" = active ] && exit 0; exit 3 ;;
    stop) echo inactive > "$FAKE_SYSTEMCTL_STATE" ;;
    start) echo active > "$FAKE_SYSTEMCTL_STATE" ;;
esac
exit 0
"""


class Env:
    """A config file, data dir and a fake `systemctl` on PATH for a subprocess self-test."""

    def __init__(self, tmp_path: Path, display_keys=None, system_keys=None):
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.data.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        systemctl = bin_dir / "systemctl"
        systemctl.write_text(FAKE_SYSTEMCTL)
        systemctl.chmod(0o755)
        self.state = tmp_path / "systemctl.state"
        self.log = tmp_path / "systemctl.log"
        self.config = tmp_path / "config.json"
        system = {"data_dir": str(self.data), "max_temp_c": 150, "min_available_mb": 0,
                  "user": "nobody"}
        system.update(system_keys or {})
        self.config.write_text(json.dumps({
            "display": {"driver": "rgbmatrix", **(display_keys or {})}, "system": system}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
        self.env.update(PYTHONPATH=str(FAKE_RGBMATRIX), PATH=f"{bin_dir}:{os.environ['PATH']}",
                        FAKE_SYSTEMCTL_LOG=str(self.log), FAKE_SYSTEMCTL_STATE=str(self.state))

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--config",
                               str(self.config), "--selftest", "--pattern-sec", "0.2", *args],
                              env=self.env, cwd=self.tmp, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    @property
    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"json": True, "stop_service": False, "pattern_sec": 0.0,
                                 **kw})


# ---- the LED matrix, through the fake binding, as a user runs it ---------------------------

def test_selftest_on_the_fake_rgbmatrix_reports_and_exits_0(tmp_path):
    env = Env(tmp_path)
    proc = env.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("LOOP ", "self-test", "kernel", "Pillow", "rgbmatrix  0.0-fake",
                   "panel      rgbmatrix 64x32 RGB24", "PASS  hardware_mapping",
                   "PASS  binding", "SKIP  sound_module", "PASS  init", "PASS  frame_write",
                   "fps", "PASS  privileges         dropped to nobody", "RESULT: OK",
                   "Attach this output"):
        assert needle in out, needle
    assert env.calls == ["is-active loop.service"]


def test_selftest_json_has_every_measurement(tmp_path):
    env = Env(tmp_path)
    proc = env.run("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert report["ok"] is True and report["problems"] == 0
    assert report["system"]["binding"] == {"name": "rgbmatrix", "version": "0.0-fake"}
    for key in ("kernel", "python", "pillow", "os", "board"):
        assert key in report["system"]
    panel = report["panel"]
    assert (panel["driver"], panel["width"], panel["height"]) == ("rgbmatrix", 64, 32)
    assert panel["init_ms"] >= 0 and panel["frames"] >= selftest.MIN_FRAMES
    assert panel["write_ms"]["median"] > 0 and panel["write_ms"]["max_fps"] > 0
    assert report["privileges"] == {"user": "nobody", "dropped": True, "reason": None}
    for key in ("temperature_c", "throttled", "memory"):
        assert key in report
    checks = by_name(report)
    assert checks["parallel"]["status"] == "pass"
    assert checks["memory"]["status"] == "pass"


def test_selftest_fails_with_the_fix_and_never_opens_a_misconfigured_panel(tmp_path):
    env = Env(tmp_path, display_keys={"hardware_mapping": "adafruit-hat", "parallel": 2})
    proc = env.run()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  parallel" in proc.stdout
    assert "fix: set display.parallel between 1 and 1" in proc.stdout
    assert "RESULT: 1 problem(s) found" in proc.stdout
    report = json.loads(env.run("--json").stdout)
    assert report["panel"] is None and "init" not in by_name(report)  # never opened


@pytest.mark.parametrize("keys, name, words", [
    ({"hardware_mapping": "compute-module"}, "hardware_mapping", "no compute-module mapping"),
    ({"panel_type": "FM6216"}, "panel_type", "unknown panel_type 'FM6216'"),
    ({"pixel_mapper_config": "U-mapper"}, "pixel_mapper_config",
     "U-mapper needs an even chain_length of 2 or more, not 1"),
])
def test_selftest_names_what_the_library_would_refuse_or_skip(tmp_path, keys, name, words):
    """Values config.py accepts but the library would abort on (compute-module in the pip
    build) or print and ignore (a panel type, a pixel mapper): the self-test says which."""
    env = Env(tmp_path, display_keys=keys)
    report = json.loads(env.run("--json").stdout)
    check = by_name(report)[name]
    assert check["status"] == "fail" and words in check["reason"], check
    assert check["fix"]
    assert report["panel"] is None  # never opened


def test_selftest_fails_when_the_panel_breaks_during_the_pattern(tmp_path):
    # no privilege drop: the control file sits in a directory only root may enter
    env = Env(tmp_path, system_keys={"user": "no-such-user"})
    control = tmp_path / "control"
    control.write_text("fail")
    env.env["FAKE_RGBMATRIX_CONTROL"] = str(control)
    proc = env.run("--json")
    assert proc.returncode == 1
    checks = by_name(json.loads(proc.stdout))
    assert checks["init"]["status"] == "pass"
    assert checks["frame_write"]["status"] == "fail"
    # the binding's one frame-call exception (a real panel fault never reaches the library)
    assert "Canvas was destroyed or not initialized" in checks["frame_write"]["reason"]


# ---- the framebuffer ----------------------------------------------------------------------

def test_selftest_on_the_fake_framebuffer(tmp_path, monkeypatch):
    root = fake_fb(tmp_path, width=240, height=320, bpp=16)
    cfg = make_config(tmp_path, **{"display.driver": "framebuffer", "display.rotation": 90,
                                   "display.drop_privileges": False,
                                   "system.max_temp_c": 150, "system.min_available_mb": 0})
    written = []
    blit = framebuffer.FramebufferDriver._blit
    monkeypatch.setattr(framebuffer.FramebufferDriver, "_blit",
                        lambda self, data, mapped=None: (written.append(bytes(data)),
                                                         blit(self, data, mapped))[1])
    out = io.StringIO()
    code = selftest.main(cfg, args(), root=root, isolate=False, out=out, err=io.StringIO())
    report = json.loads(out.getvalue())
    assert code == 0, report
    panel = report["panel"]
    assert (panel["driver"], panel["width"], panel["height"], panel["pixel_format"],
            panel["rotation"], panel["brightness_mode"]) == \
        ("framebuffer", 320, 240, "RGB565", 90, "backlight")
    assert panel["frames"] >= selftest.MIN_FRAMES and panel["write_ms"]["max_fps"] > 0
    checks = by_name(report)
    for name in ("framebuffer_device", "geometry", "panel_size", "writable", "backlight",
                 "init", "frame_write"):
        assert checks[name]["status"] == "pass", checks[name]
    # the colour bars reached the device upright: white on the left, black on the right
    bars = next(p for p in written if any(p))
    upright = pixels.decode(bars, 320, 240, "RGB565", 90)
    assert upright.getpixel((5, 120)) == (255, 255, 255)
    assert upright.getpixel((315, 120)) == (0, 0, 0)
    assert written[-1] == bytes(240 * 320 * 2), "the panel is blank after the test"
    assert Path(root, "sys/class/backlight/fb_ili9341/brightness").read_text() == "204\n"


def test_selftest_framebuffer_text_report_names_the_failure_and_fix(tmp_path):
    cfg = make_config(tmp_path, **{"display.driver": "framebuffer",
                                   "system.max_temp_c": 150, "system.min_available_mb": 0})
    out = io.StringIO()
    code = selftest.main(cfg, args(json=False), root=str(tmp_path / "empty"), isolate=False,
                         out=out, err=io.StringIO())
    text = out.getvalue()
    assert code == 1
    assert "FAIL  framebuffer_device /dev/fb1 does not exist" in text
    assert "fix: enable the panel's overlay" in text
    assert "RESULT: 1 problem(s) found" in text


# ---- health facts -------------------------------------------------------------------------

def _health_root(tmp_path, temp=None, throttled=None, available_kb=400_000):
    root = tmp_path / "hroot"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(f"MemTotal:  432000 kB\nMemFree: 1000 kB\n"
                                           f"MemAvailable: {available_kb} kB\n")
    if temp is not None:
        (root / "sys/class/thermal/thermal_zone0").mkdir(parents=True)
        (root / "sys/class/thermal/thermal_zone0/temp").write_text(f"{temp}\n")
    if throttled is not None:
        path = root / selftest.THROTTLE_FILE
        path.parent.mkdir(parents=True)
        path.write_text(f"{throttled}\n")
    return str(root)


@pytest.mark.parametrize("temp, throttled, kb, name, status, needle", [
    (45000, "0", 400_000, "temperature", "pass", "SoC at 45.0 °C"),
    (86000, "0", 400_000, "temperature", "fail", "SoC at 86.0 °C"),
    (45000, "0", 400_000, "throttling", "pass", "0x0"),
    (45000, "50005", 400_000, "throttling", "fail", "under-voltage now"),
    (45000, "50000", 400_000, "throttling", "warn", "under-voltage since boot"),
    (45000, "0", 20_000, "memory", "fail", "20 MB available"),
    (45000, "0", 400_000, "memory", "pass", "391 MB available of 422 MB"),
])
def test_health_facts(tmp_path, temp, throttled, kb, name, status, needle):
    cfg = make_config(tmp_path)
    checks, facts = selftest.health_checks(cfg, _health_root(tmp_path, temp, throttled, kb))
    check = {c.name: c for c in checks}[name]
    assert check.status == status and needle in check.reason
    if status != "pass":
        assert check.fix


def test_crash_marker_is_reported(tmp_path):
    cfg = make_config(tmp_path)
    os.makedirs(cfg.system.data_dir)
    Path(cfg.system.data_dir, MARKER_NAME).write_text("2\n")
    checks, _ = selftest.health_checks(cfg, _health_root(tmp_path))
    marker = {c.name: c for c in checks}["crash_marker"]
    assert marker.status == "fail" and "POST /api/display/reset" in marker.fix


def test_a_library_that_kills_the_process_or_hangs_is_reported():
    result = selftest.run_isolated(lambda: os._exit(1), timeout=20)
    assert "the panel library ended the process: it exited with status 1" in result["error"]
    result = selftest.run_isolated(lambda: time.sleep(30), timeout=0.5)
    assert "did not answer within" in result["error"]
    assert selftest.run_isolated(lambda: {"init_ms": 1.5}, timeout=20) == {"init_ms": 1.5}


# ---- not fighting the service for the panel -----------------------------------------------

def test_refuses_while_the_service_is_active(tmp_path):
    env = Env(tmp_path)
    env.state.write_text("active\n")
    proc = env.run()
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "the LOOP service is running" in proc.stderr and "--stop-service" in proc.stderr
    assert env.calls == ["is-active loop.service"]
    proc = env.run("--json")
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["ok"] is False


def test_stop_service_stops_it_for_the_test_and_starts_it_again(tmp_path):
    env = Env(tmp_path)
    env.state.write_text("active\n")
    proc = env.run("--stop-service")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert env.calls == ["is-active loop.service", "stop loop.service", "start loop.service"]
    assert "stopped for the test and started again" in proc.stdout


def test_refuses_while_another_process_holds_the_panel_lock(tmp_path):
    env = Env(tmp_path)
    lock = PanelLock(str(env.data))
    assert lock.acquire() is None
    try:
        for extra in ((), ("--stop-service",)):
            proc = env.run(*extra)
            assert proc.returncode == 3
            assert f"process {os.getpid()} holds the panel" in proc.stderr
        assert "stop" not in " ".join(env.calls), "only the systemd unit is ever stopped"
    finally:
        lock.release()
    assert env.run().returncode == 0


def test_service_runs_headless_while_a_selftest_holds_the_panel(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    lock = PanelLock(str(data))
    assert lock.acquire() is None
    monkeypatch.syspath_prepend(FAKE_RGBMATRIX)
    import rgbmatrix
    app = App(make_config(tmp_path, **{"display.driver": "rgbmatrix"}), environ={},
              module=rgbmatrix)
    app.start()
    try:
        assert app.driver.name == "headless"
        assert "holds the panel" in app.display_reason
        assert rgbmatrix.state.matrices == [], "the panel was never touched"
    finally:
        app.stop()
        lock.release()
    app = App(make_config(tmp_path, **{"display.driver": "rgbmatrix"}), environ={},
              module=rgbmatrix)
    app.start()
    try:
        assert app.driver.name == "rgbmatrix"
        assert panel_lock_holder(str(data)) == os.getpid()
    finally:
        app.stop()
        rgbmatrix.reset()
        sys.modules.pop("rgbmatrix", None)
    assert panel_lock_holder(str(data)) is None


def test_selftest_flags_need_selftest(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--json"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "go with --selftest" in proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--help"],
                          capture_output=True, text=True, timeout=30)
    for flag in ("--selftest", "--json", "--stop-service", "--pattern-sec"):
        assert flag in proc.stdout


def test_off_a_pi_a_missing_binding_is_expected_and_the_report_says_what_needs_the_pi(
        tmp_path):
    cfg = make_config(tmp_path, **{"display.driver": "rgbmatrix"})
    out = io.StringIO()
    no_binding = sys.modules.get("rgbmatrix", False)
    sys.modules["rgbmatrix"] = None  # `import rgbmatrix` fails, as on a machine without it
    try:
        status = selftest.main(cfg, args(json=False), root=str(tmp_path), isolate=False,
                               out=out, err=io.StringIO())
    finally:
        if no_binding is False:
            del sys.modules["rgbmatrix"]
        else:
            sys.modules["rgbmatrix"] = no_binding
    text = out.getvalue()
    assert status == 0, text
    assert "SKIP  binding" in text and "make install` builds it on the Pi" in text
    assert "Not a Raspberry Pi" in text and "sudo make selftest" in text
    assert "PASS  init" not in text  # the panel part is left out, not faked
    assert "RESULT: OK" in text


def test_make_selftest_off_a_pi_uses_the_project_tree(tmp_path):
    venv = os.path.dirname(os.path.dirname(sys.executable))
    if not os.path.exists(os.path.join(venv, ".installed-run")):
        pytest.skip("not running from a venv the Makefile made (make test does)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
    env.update(PREFIX=str(tmp_path / "not-installed"), VENV=venv)
    done = subprocess.run(["make", "-s", "selftest", f"VENV={venv}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-test" in done.stdout and "Not a Raspberry Pi" in done.stdout
    assert "ModuleNotFoundError" not in done.stderr and "/etc/loop" not in done.stderr
