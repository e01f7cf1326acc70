"""`python3 loop.py --selftest [--json]` (`sudo make selftest` on the Pi): the hardware truth
in one command, for users to run first and to attach to bug reports.

It reports the board, kernel, OS, Python, Pillow and panel-binding versions; every pre-flight
check of the configured driver with its fix; the crash marker; SoC temperature, throttling
(the firmware's get_throttled flags: under-voltage is the usual cause of a flickering or
crashing Pi), available memory; then it opens the panel (init time), drops privileges the way
the service does, shows a test pattern (colour bars, a gradient, a moving line, so flicker
and tearing are visible) for `--pattern-sec` seconds, and measures each frame write:
SetImage + SwapOnVSync on the LED matrix, the copy into the mmap on a framebuffer (an SPI
LCD's own refresh runs behind it, at the overlay's `fps` and SPI speed).

The panel work runs in a forked child, so a panel library that calls exit()/abort() (or
hangs) cannot take the report with it, and the parent keeps root to start the service again
when it was stopped for the test.

It must not fight a running service for the panel: it refuses while the LOOP unit is active
(`systemctl is-active loop`) or while another process holds the panel lock
({data_dir}/display.lock, see guard.PanelLock), unless `--stop-service`, which stops the
unit for the test and starts it again afterwards. It holds the lock itself while it runs, so
a service started meanwhile runs headless instead of fighting it.

Exit status: 0 nothing wrong (warnings allowed), 1 something is wrong (a check failed),
3 refused because the panel is in use.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

from PIL import Image, ImageDraw

from loop import __version__
from loop.display import emulator, framebuffer, guard, headless, preflight, rgbmatrix
from loop.display.base import FAIL, PASS, SKIP, Check
from loop.media.pixels import to_pixels
from loop.system.privileges import drop_privileges, service_user, set_service_groups

WARN = "warn"
EXIT_OK, EXIT_PROBLEM, EXIT_REFUSED = 0, 1, 3
SERVICE = "loop.service"
ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")
CHILD_BUDGET_SEC = 90.0  # panel init + close, on top of the pattern time
MIN_FRAMES = 12  # frame writes measured even with --pattern-sec 0
FRAME_RATE = 60.0  # the pattern's pace; writes are timed one by one
THROTTLE_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now",
                 2: "throttled now", 3: "soft temperature limit now",
                 16: "under-voltage since boot", 17: "frequency capped since boot",
                 18: "throttled since boot", 19: "soft temperature limit since boot"}


# ---- facts about the machine ----------------------------------------------------------------

def _read(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path), "rb") as fh:
            return fh.read(65536).replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return None


def _os_name(root: str) -> str | None:
    for line in (_read(root, "etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _module_version(name: str) -> str | None:
    """The installed version of a panel binding, without importing it when its metadata
    knows (RGBMatrixEmulator's import has side effects); None when it is not installed."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    if name != "rgbmatrix":
        return None
    try:  # hzeller's binding, built from a checkout, may carry no metadata
        module = importlib.import_module(name)
    except Exception:  # not installed, or a broken build: the binding check says which
        return None
    return str(getattr(module, "__version__", "installed (no version)"))


def system_info(cfg, root: str) -> dict:
    import PIL
    import psutil
    info = {"board": _read(root, "proc/device-tree/model"),
            "raspberry_pi": preflight.pi_model(root) is not None,
            "os": _os_name(root), "kernel": platform.release(), "machine": platform.machine(),
            "python": platform.python_version(), "pillow": PIL.__version__,
            "psutil": psutil.__version__, "loop": __version__, "binding": None}
    driver = cfg.display.driver
    if driver in ("auto", "rgbmatrix"):
        info["binding"] = {"name": "rgbmatrix", "version": _module_version("rgbmatrix")}
    elif driver == "emulator":
        info["binding"] = {"name": "RGBMatrixEmulator",
                           "version": _module_version("RGBMatrixEmulator")}
    return info


def _throttled_raw(root: str) -> tuple[int | None, str]:
    text = _read(root, THROTTLE_FILE)
    source = "/" + THROTTLE_FILE
    if text is None and root in ("/", "") and shutil.which("vcgencmd"):
        source = "vcgencmd get_throttled"
        try:
            proc = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True,
                                  text=True, timeout=10)
            text = proc.stdout.strip().partition("=")[2] if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            text = None
    if not text:
        return None, ""
    try:
        return int(text, 16), source
    except ValueError:
        return None, source


def health_checks(cfg, root: str) -> tuple[list[Check], dict]:
    """Temperature, throttling, memory and the crash marker."""
    checks, facts = [], {}
    raw = _read(root, "sys/class/thermal/thermal_zone0/temp")
    try:
        temp = int(raw) / 1000 if raw else None
    except ValueError:
        temp = None
    facts["temperature_c"] = temp
    limit = cfg.system.max_temp_c
    if temp is None:
        checks.append(Check("temperature", SKIP, "no /sys/class/thermal/thermal_zone0/temp"))
    elif temp >= limit:
        checks.append(Check("temperature", FAIL, f"SoC at {temp:.1f} °C (limit "
                            f"system.max_temp_c = {limit:g})", "give the Pi a heatsink "
                            "and air; the firmware slows it down at 80-85 °C"))
    else:
        checks.append(Check("temperature", PASS, f"SoC at {temp:.1f} °C"))

    value, source = _throttled_raw(root)
    flags = [text for bit, text in THROTTLE_BITS.items() if value and value & (1 << bit)]
    facts["throttled"] = None if value is None else {"raw": hex(value), "flags": flags,
                                                     "source": source}
    power_fix = ("use a good 5 V supply (2.5 A for a Pi Zero 2 W plus what the panel draws; "
                 "an LED matrix needs its own 5 V supply) and a short, thick cable")
    if value is None:
        checks.append(Check("throttling", SKIP, "no get_throttled in sysfs and no vcgencmd"))
    elif value & 0xF:
        checks.append(Check("throttling", FAIL, f"{hex(value)}: {', '.join(flags)}",
                            power_fix))
    elif value:
        checks.append(Check("throttling", WARN, f"{hex(value)}: {', '.join(flags)}",
                            power_fix))
    else:
        checks.append(Check("throttling", PASS, "0x0: no under-voltage or throttling"))

    available = total = None
    for line in (_read(root, "proc/meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemAvailable", "MemTotal") and rest.split():
            mb = int(rest.split()[0]) / 1024
            available, total = (mb, total) if name == "MemAvailable" else (available, mb)
    facts["memory"] = {"available_mb": None if available is None else round(available),
                       "total_mb": None if total is None else round(total)}
    floor = cfg.system.min_available_mb
    if available is None:
        checks.append(Check("memory", SKIP, "cannot read /proc/meminfo"))
    elif available < floor:
        checks.append(Check("memory", FAIL, f"{available:.0f} MB available, under "
                            f"system.min_available_mb = {floor:g}",
                            "stop other services, or add swap (dphys-swapfile)"))
    else:
        checks.append(Check("memory", PASS, f"{available:.0f} MB available of "
                            f"{total or 0:.0f} MB"))

    crashes = guard.init_crash_count(cfg.system.data_dir)
    most = cfg.display.max_init_crashes
    if crashes >= most:
        checks.append(Check("crash_marker", FAIL, f"{crashes} panel inits in a row never came "
                            "back: the service starts headless",
                            f"fix the cause, then POST /api/display/reset (or delete "
                            f"{os.path.join(cfg.system.data_dir, guard.MARKER_NAME)})"))
    elif crashes:
        checks.append(Check("crash_marker", WARN, f"{crashes} panel init(s) never came back",
                            "see the pre-flight checks above and journalctl -u loop"))
    else:
        checks.append(Check("crash_marker", PASS, "no crashed panel inits recorded"))
    return checks, facts


# ---- which driver, and its pre-flight -------------------------------------------------------

def resolve_driver(cfg) -> str:
    """The driver the self-test exercises: auto means the LED matrix it is meant for."""
    return "rgbmatrix" if cfg.display.driver == "auto" else cfg.display.driver


def panel_checks(cfg, driver: str, root: str, module=None) -> list[Check]:
    if driver == "rgbmatrix":
        checks = preflight.preflight(cfg.display, root=root, module=module)
        return checks + _slowdown_hint(cfg, root)
    if driver == "framebuffer":
        return framebuffer.preflight(cfg.display, root=root)
    if driver == "headless":
        return [Check("panel", WARN, "display.driver is headless: no panel to test",
                      "set display.driver to rgbmatrix or framebuffer")]
    return []


def _expected_off_a_pi(check: Check) -> Check:
    """Off a Pi a missing LED binding is expected (make install builds it on the Pi): it
    is reported, not counted as a problem, and the panel part is left out."""
    if check.name == "binding" and check.status == FAIL:
        return Check("binding", SKIP, "the rgbmatrix binding is not installed here; "
                     "`make install` builds it on the Pi")
    return check


def _slowdown_hint(cfg, root: str) -> list[Check]:
    model = preflight.pi_model(root)
    if model is None:
        return []
    slowdown = cfg.display.gpio_slowdown
    if ("Pi 4" in model or "Pi 400" in model or "Compute Module 4" in model) and slowdown < 2:
        return [Check("gpio_slowdown", WARN, f"gpio_slowdown {slowdown} is low for a {model}",
                      "a Pi 4 usually needs display.gpio_slowdown 3 or 4 (garbage or "
                      "flicker on the panel means: raise it)")]
    if slowdown == 0 and "Model B Rev" not in model:
        return [Check("gpio_slowdown", WARN, f"gpio_slowdown 0 is fast for a {model}",
                      "set display.gpio_slowdown to 2 (raise it when the panel shows "
                      "garbage or flickers, lower it for a higher refresh rate)")]
    return [Check("gpio_slowdown", PASS, f"{slowdown} (raise it if the panel flickers or "
                  "shows garbage)")]


# ---- the service ----------------------------------------------------------------------------

def systemd_state() -> str | None:
    """`systemctl is-active loop.service`, or None when there is no systemctl to ask."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        proc = subprocess.run([systemctl, "is-active", SERVICE], capture_output=True,
                              text=True, timeout=15, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None


def _systemctl(action: str) -> tuple[bool, str]:
    systemctl = shutil.which("systemctl") or "systemctl"
    try:
        proc = subprocess.run([systemctl, action, SERVICE], capture_output=True, text=True,
                              timeout=90, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def _wait_lock_free(data_dir: str, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while True:
        holder = guard.panel_lock_holder(data_dir)
        if holder is None or time.monotonic() >= deadline:
            return holder
        time.sleep(0.1)


class Refused(Exception):
    """The panel is in use; the message says by whom and what to do."""


def claim_panel(cfg, stop_service: bool) -> tuple[guard.PanelLock, bool, str | None]:
    """Make sure no service drives the panel, then hold the panel lock.

    Returns (the held lock, whether the unit was stopped and must be started again, what
    systemctl said); raises Refused."""
    data_dir = cfg.system.data_dir
    state = systemd_state()
    holder = guard.panel_lock_holder(data_dir)
    stopped = False
    how = ("run it again with --stop-service (the service is stopped for the test and "
           "started again afterwards), or stop it yourself: sudo systemctl stop loop")
    if state in ACTIVE_STATES:
        if not stop_service:
            raise Refused(f"the LOOP service is running (systemctl is-active loop: {state}) "
                          f"and drives the panel; {how}")
        ok, said = _systemctl("stop")
        if not ok:
            raise Refused(f"could not stop the LOOP service: {said or 'systemctl failed'}")
        stopped = True
        holder = _wait_lock_free(data_dir, 10.0)
    if holder is not None:
        who = f"process {holder}" if holder else "another process"
        if stopped:
            _systemctl("start")
        raise Refused(f"{who} holds the panel ({os.path.join(data_dir, guard.LOCK_NAME)}): "
                      "a LOOP started by hand, or another self-test; stop it first"
                      + ("" if stop_service else f" ({how})"))
    lock = guard.PanelLock(data_dir)
    if os.path.isdir(data_dir):
        holder = lock.acquire()
        if holder is not None:  # someone started in between
            if stopped:
                _systemctl("start")
            raise Refused(f"process {holder or '?'} took the panel while the self-test "
                          "started; stop it first")
    return lock, stopped, state


# ---- the test pattern -----------------------------------------------------------------------

BAR_COLOURS = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255),
               (255, 0, 0), (0, 0, 255), (0, 0, 0)]


def colour_bars(width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for i, colour in enumerate(BAR_COLOURS):
        draw.rectangle((i * width // 8, 0, (i + 1) * width // 8 - 1, height - 1), fill=colour)
    return img


def gradient(width: int, height: int) -> Image.Image:
    """Four bands (red, green, blue, white), each ramping from black to full."""
    ramp = Image.linear_gradient("L").rotate(90, expand=True).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT).resize((width, height))
    black = Image.new("L", (width, height))
    img = Image.new("RGB", (width, height))
    for band, channels in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1))):
        top, bottom = band * height // 4, (band + 1) * height // 4
        part = Image.merge("RGB", [ramp if c else black for c in channels])
        img.paste(part.crop((0, top, width, bottom)), (0, top))
    return img


def moving_line(width: int, height: int, step: int) -> Image.Image:
    """A white vertical line sweeping right and a horizontal one sweeping down: tearing and
    dropped frames show as breaks and jumps."""
    img = Image.new("RGB", (width, height), (0, 0, 40))
    draw = ImageDraw.Draw(img)
    x = step % width
    y = step % height
    draw.line((x, 0, x, height - 1), fill=(255, 255, 255), width=max(1, width // 64))
    draw.line((0, y, width - 1, y), fill=(255, 160, 0), width=max(1, height // 64))
    return img


def _open(cfg, driver_name: str, root: str, module):
    user = service_user(cfg)
    if driver_name == "rgbmatrix":
        module = module if module is not None else rgbmatrix.import_rgbmatrix()
        return rgbmatrix.RGBMatrixDriver(cfg.display, module, user=user, root=root)
    if driver_name == "emulator":
        return emulator.EmulatorDriver(cfg.display, module, work_dir=cfg.system.data_dir,
                                       user=user)
    if driver_name == "framebuffer":
        return framebuffer.FramebufferDriver(cfg.display, root=root)
    return headless.HeadlessDriver(cfg.display)


def exercise(cfg, driver_name: str, root: str, pattern_sec: float, module=None) -> dict:
    """Open the panel, drop privileges, show the pattern, time every write, close.

    Runs in the child. Returns plain data (it crosses a pipe as JSON)."""
    result: dict = {"driver": driver_name, "init_ms": None, "error": None, "frames": 0}
    was_root = os.geteuid() == 0
    with contextlib.suppress(OSError):
        set_service_groups(cfg)
    try:
        driver = _open(cfg, driver_name, root, module)
        started = time.perf_counter()
        driver.open()
        result["init_ms"] = round((time.perf_counter() - started) * 1000, 1)
    except BaseException as exc:  # the fake binding's LibraryExit is a BaseException
        result["error"] = f"the panel could not be opened: {exc}"
        result["privileges"] = drop_privileges(cfg, was_root)
        return result
    result["privileges"] = drop_privileges(cfg, was_root)
    result.update(width=driver.width, height=driver.height, pixel_format=driver.pixel_format,
                  rotation=driver.rotation)
    if hasattr(driver, "brightness_mode"):
        result["brightness_mode"] = driver.brightness_mode
    times: list[float] = []
    try:
        _pattern(driver, pattern_sec, times)
    except Exception as exc:
        result["error"] = f"frame write {len(times) + 1} failed: {exc!r}"
    finally:
        result["frames"] = len(times)
        result["write_ms"] = _stats(times)
        try:
            driver.clear()
            driver.close()
        except Exception as exc:
            result["error"] = result["error"] or f"closing the panel failed: {exc!r}"
    return result


def _pattern(driver, seconds: float, times: list[float]) -> None:
    width, height, fmt, rotation = (driver.width, driver.height, driver.pixel_format,
                                    driver.rotation)
    still = [to_pixels(colour_bars(width, height), fmt, rotation),
             to_pixels(gradient(width, height), fmt, rotation)]
    driver.set_brightness(driver.brightness or 50)  # never 0: the pattern has to be seen
    start = time.monotonic()
    step = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds and step >= MIN_FRAMES:
            return
        phase = int(3 * elapsed / seconds) if seconds > 0 else 3 * step // MIN_FRAMES
        if phase < 2:
            data = still[phase]
        else:
            data = to_pixels(moving_line(width, height, step * max(1, width // 96)),
                                   fmt, rotation)
        began = time.perf_counter()
        driver.show(data)
        times.append(time.perf_counter() - began)
        step += 1
        pause = start + step / FRAME_RATE - time.monotonic()
        if pause > 0 and seconds > 0:
            time.sleep(pause)


def _stats(times: list[float]) -> dict | None:
    if not times:
        return None
    ordered = sorted(t * 1000 for t in times)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(median, 3), "p95": round(p95, 3), "max": round(ordered[-1], 3),
            "max_fps": round(1000 / median) if median > 0 else None}


# ---- running the panel part in a child ------------------------------------------------------

def run_isolated(fn, timeout: float) -> dict:
    """fn() in a forked child; its dict comes back through a pipe. A child that dies, or
    hangs past `timeout`, becomes an {"error": ...} saying so."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            os.dup2(2, 1)  # library chatter must not mix into the --json output
            payload = json.dumps(fn()).encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view):]
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks, deadline, hung = [], time.monotonic() + timeout, False
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([pipe], [], [], min(left, 1.0))
            if ready:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if hung:
        return {"error": f"the panel did not answer within {timeout:.0f} s (a hung driver "
                         "call: the service's watchdog would restart it)"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        return {"error": f"the panel library ended the process: it {how} (the library calls "
                         "exit()/abort() on some misconfigurations; see its messages above)"}


# ---- the report -----------------------------------------------------------------------------

def _panel_result_checks(cfg, result: dict) -> list[Check]:
    checks = []
    if result.get("init_ms") is None:
        checks.append(Check("init", FAIL, result.get("error") or "the panel did not open",
                            "see the pre-flight checks above"))
    else:
        checks.append(Check("init", PASS, f"{result['driver']} opened in "
                            f"{result['init_ms']:.1f} ms"))
        stats = result.get("write_ms")
        slow = cfg.display.slow_call_ms
        if result.get("error"):
            checks.append(Check("frame_write", FAIL, result["error"],
                                "the service's circuit breaker would open; check the wiring "
                                "and the pre-flight hints"))
        elif stats is None:
            checks.append(Check("frame_write", FAIL, "no frame was written"))
        elif stats["median"] > slow:
            checks.append(Check("frame_write", FAIL, f"a frame write takes {stats['median']:.1f}"
                                f" ms, more than display.slow_call_ms = {slow}: the circuit "
                                "breaker would count every frame as a failure",
                                "raise display.slow_call_ms, or lighten the panel's load "
                                "(pwm_bits, limit_refresh_rate_hz, a smaller geometry)"))
        else:
            checks.append(Check("frame_write", PASS, f"median {stats['median']:.2f} ms, p95 "
                                f"{stats['p95']:.2f} ms, max {stats['max']:.2f} ms over "
                                f"{result['frames']} frames: up to {stats['max_fps']} fps"))
    privileges = result.get("privileges")
    if privileges is not None:
        if privileges["dropped"]:
            checks.append(Check("privileges", PASS, f"dropped to {privileges['user']} after "
                                "opening the panel"))
        elif privileges["reason"] == "not root":
            checks.append(Check("privileges", SKIP, f"not started as root (running as "
                                f"{privileges['user']}); the service starts as root and "
                                "drops to system.user"))
        else:
            checks.append(Check("privileges", WARN, f"still root: {privileges['reason']}",
                                "make install creates the service user (system.user); "
                                "display.drop_privileges should stay true"))
    return checks


def build_report(cfg, *, root: str, info: dict, pre: list[Check], health: list[Check],
                 facts: dict, result: dict | None, service: Check) -> dict:
    checks = [service] + pre + health
    if result is not None:
        checks += _panel_result_checks(cfg, result)
    problems = [c for c in checks if c.status == FAIL]
    panel = None
    if result is not None:
        panel = {k: result.get(k) for k in ("driver", "width", "height", "pixel_format",
                                            "rotation", "brightness_mode", "init_ms",
                                            "frames", "write_ms", "error")}
    return {"ok": not problems, "problems": len(problems),
            "warnings": sum(c.status == WARN for c in checks),
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config_driver": cfg.display.driver, "system": info, "panel": panel,
            "privileges": (result or {}).get("privileges"), **facts,
            "checks": [{"name": c.name, "status": c.status, "reason": c.reason, "fix": c.fix}
                       for c in checks]}


def format_text(report: dict) -> str:
    system = report["system"]
    lines = [f"LOOP {system['loop']} self-test, {report['time']}", ""]
    binding = system.get("binding")
    rows = [("board", system["board"] or "unknown (not a Raspberry Pi?)"),
            ("os", system["os"] or "unknown"),
            ("kernel", f"{system['kernel']} ({system['machine']})"),
            ("python", f"{system['python']}, Pillow {system['pillow']}, psutil "
                       f"{system['psutil']}")]
    if binding:
        rows.append((binding["name"], binding["version"] or "not installed"))
    lines += [f"  {k:<10} {v}" for k, v in rows]
    panel = report.get("panel")
    if panel and panel.get("width"):
        extra = f", rotation {panel['rotation']}" if panel.get("rotation") else ""
        if panel.get("brightness_mode"):
            extra += f", brightness by {panel['brightness_mode']}"
        lines += [f"  {'panel':<10} {panel['driver']} {panel['width']}x{panel['height']} "
                  f"{panel['pixel_format']}{extra}"]
    lines.append("")
    for check in report["checks"]:
        lines.append(f"  {check['status'].upper():<5} {check['name']:<18} {check['reason']}")
        if check["fix"] and check["status"] in (FAIL, WARN):
            lines.append(f"        {'':<18} fix: {check['fix']}")
    lines.append("")
    if not system["raspberry_pi"]:
        lines += ["Not a Raspberry Pi: checked here are the config, the binding (when it is",
                  "installed), memory and the crash marker. GPIO, the sound module, root, the",
                  "SoC temperature, power and the light on the panel need the Pi: run",
                  "`sudo make selftest` there.", ""]
    if report["ok"]:
        warned = f" ({report['warnings']} warning(s))" if report["warnings"] else ""
        lines.append(f"RESULT: OK{warned}")
    else:
        lines.append(f"RESULT: {report['problems']} problem(s) found")
    lines.append("Attach this output (or --json) to bug reports.")
    return "\n".join(lines) + "\n"


# ---- entry point ----------------------------------------------------------------------------

def _restart(stopped: bool, state: str | None) -> Check:
    """Start the unit again when the self-test stopped it; the "service" check."""
    if not stopped:
        said = f"systemctl is-active loop: {state}" if state else "no systemctl"
        return Check("service", PASS, f"no LOOP drives the panel ({said})")
    ok, said = _systemctl("start")
    if ok:
        return Check("service", PASS, "the LOOP service was stopped for the test and started "
                     "again")
    return Check("service", FAIL, f"the LOOP service was stopped for the test and did not "
                 f"start again: {said}", "sudo systemctl start loop; journalctl -u loop")


def main(cfg, args, *, root: str = "/", module=None, isolate: bool = True,
         out=None, err=None) -> int:
    """Run the self-test for `cfg` (args: json, stop_service, pattern_sec); the exit status.

    `root`, `module` and `isolate=False` (run the panel part in this process, which then
    drops its privileges) are for tests."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        lock, stopped, state = claim_panel(cfg, args.stop_service)
    except Refused as exc:
        print(f"loop: self-test refused: {exc}", file=err)
        if args.json:
            print(json.dumps({"ok": False, "refused": str(exc)}), file=out)
        return EXIT_REFUSED
    try:
        info = system_info(cfg, root)
        driver_name = resolve_driver(cfg)
        pre = panel_checks(cfg, driver_name, root, module)
        if not info["raspberry_pi"]:
            pre = [_expected_off_a_pi(check) for check in pre]
        health, facts = health_checks(cfg, root)
        result = None
        if not any(c.status == FAIL or c.name == "binding" and c.status == SKIP
                   for c in pre):
            def work():
                return exercise(cfg, driver_name, root, args.pattern_sec, module)
            if isolate:
                result = run_isolated(work, CHILD_BUDGET_SEC + args.pattern_sec)
                result.setdefault("driver", driver_name)
            else:
                result = work()
    finally:
        lock.release()
        service = _restart(stopped, state)
    report = build_report(cfg, root=root, info=info, pre=pre, health=health, facts=facts,
                          result=result, service=service)
    out.write(json.dumps(report, indent=2) + "\n" if args.json else format_text(report))
    out.flush()
    return EXIT_OK if report["ok"] else EXIT_PROBLEM
