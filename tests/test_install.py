"""`make install` and loop.service, checked without a Pi (issue 8).

Every test runs deploy/install.sh in its staged mode (`--staged DIR`): all paths default
to ones inside a temp dir, and apt, useradd, chown, systemctl, pip and the rgbmatrix
build are skipped, so nothing outside tmp_path is touched. The unit it generates points
at programs that really exist inside the stage, which is what `systemd-analyze verify`
needs (its --root does not help there).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
# Variables the installer reads: never inherit them from the developer's shell.
INSTALLER_VARS = ("PREFIX", "DESTDIR", "PURGE", "CMAKE_BUILD_PARALLEL_LEVEL")
SOURCE_FILES = ("loop.py", "loop", "config.json", "loop.service", "deploy", "requirements.txt")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOP_", "RGBMATRIX_")) and k not in INSTALLER_VARS}
    env.update(extra)
    return env


@dataclass
class Stage:
    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "loop"

    @property
    def app(self) -> Path:
        return self.prefix / "app"

    @property
    def prev(self) -> Path:
        return self.prefix / "app.prev"

    @property
    def venv_python(self) -> Path:
        return self.prefix / "venv" / "bin" / "python"

    @property
    def confdir(self) -> Path:
        return self.root / "etc" / "loop"

    @property
    def config(self) -> Path:
        return self.confdir / "config.json"

    @property
    def datadir(self) -> Path:
        return self.root / "var" / "lib" / "loop"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / "loop.service"

    @property
    def tmpfiles(self) -> Path:
        return self.root / "etc" / "tmpfiles.d"

    @property
    def blacklist(self) -> Path:
        return self.root / "etc" / "modprobe.d" / "loop-blacklist-snd.conf"

    @property
    def boot(self) -> Path:
        return self.root / "boot" / "firmware"


def run_installer(stage: Stage, *args: str, script: Path = INSTALL, check: bool = True,
                  **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", str(script), "--staged", str(stage.root), *args],
                          env=clean_env(**env), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        pytest.fail(f"install.sh {' '.join(args)} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


@pytest.fixture
def stage(tmp_path: Path) -> Stage:
    return Stage(tmp_path / "stage")


@pytest.fixture
def installed(stage: Stage) -> Stage:
    run_installer(stage)
    return stage


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A private copy of the source tree, for tests that change the sources."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCE_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    return src


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unit_directives(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "ms": 0.001}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert match and match.group(2) in units, value
    return float(match.group(1)) * units[match.group(2)]


def edit_config(path: Path, change) -> dict:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


# ---------------------------------------------------------------- layout


def test_staged_install_layout_and_modes(installed: Stage) -> None:
    s = installed
    assert sorted(p.name for p in s.root.iterdir()) == ["etc", "opt", "var"]
    assert (s.app / "loop.py").is_file() and mode(s.app / "loop.py") == 0o755
    assert (s.app / "loop" / "__init__.py").is_file()
    assert (s.app / "loop" / "config.py").read_bytes() == (REPO / "loop" / "config.py").read_bytes()
    assert (s.app / "config.json").read_bytes() == (REPO / "config.json").read_bytes()
    assert (s.app / "deploy" / "install.sh").is_file()
    assert mode(s.app / "deploy" / "install.sh") == 0o755
    for path in s.app.rglob("*"):
        assert not (mode(path) & 0o022), f"{path} is group/world-writable"
    assert not s.prev.exists(), "a first install has no previous version"
    assert not (s.prefix / "app.new").exists()
    # bytecode compiled at install time: /opt is read-only to the service
    assert list((s.app / "loop" / "__pycache__").glob("config.*.pyc"))

    assert s.venv_python.exists()
    pyvenv = (s.prefix / "venv" / "pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", pyvenv, re.M)

    assert mode(s.confdir) == 0o750
    assert mode(s.config) == 0o640
    assert s.config.read_bytes() == (REPO / "config.json").read_bytes()
    assert not (s.confdir / "config.json.new").exists()

    assert s.datadir.is_dir() and mode(s.datadir) == 0o2770
    tmpfiles = (s.tmpfiles / "loop.conf").read_text()
    assert f"d {s.datadir} 2770 loop loop -" in tmpfiles
    assert mode(s.tmpfiles / "loop.conf") == 0o644

    assert mode(s.unit) == 0o644
    assert not s.blacklist.exists(), "no config.txt in the stage: no Pi setup"


def test_unit_has_staged_paths_and_required_directives(installed: Stage) -> None:
    s = installed
    text = s.unit.read_text()
    assert not re.search(r"@[A-Z_]+@", text), "placeholder left in the installed unit"
    unit = unit_directives(s.unit)
    svc, head = unit["Service"], unit["Unit"]

    argv = svc["ExecStart"][0].split()
    assert argv[0] == str(s.venv_python) and Path(argv[0]).exists()
    assert argv[1] == str(s.app / "loop.py") and Path(argv[1]).is_file()
    assert argv[argv.index("--config") + 1] == str(s.config)
    assert argv[argv.index("--data-dir") + 1] == str(s.datadir)
    assert svc["ReadWritePaths"] == [str(s.datadir)]
    assert svc["SupplementaryGroups"] == ["loop"]

    one = {k: v[-1] for k, v in svc.items()}
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "5",
        "Restart": "on-failure", "KillMode": "mixed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus": "2", "RestartForceExitStatus": "75",
        "LimitCORE": "0", "OOMPolicy": "continue", "DevicePolicy": "closed",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "ProtectProc": "invisible",
        "PrivateMounts": "yes", "RestrictRealtime": "no",
    }
    for key, value in expected.items():
        assert one.get(key) == value, f"{key}={one.get(key)!r}, want {value!r}"
    assert int(one["TasksMax"]) > 64
    assert seconds(one["TimeoutStopSec"]) > 15, "must exceed the app's 15 s drain"
    assert set(one["CapabilityBoundingSet"].split()) == {
        "CAP_SYS_RAWIO", "CAP_SYS_NICE", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"}
    assert sorted(svc["DeviceAllow"]) == ["/dev/gpiomem rw", "/dev/mem rw"]
    assert svc["SystemCallFilter"][0] == "@system-service"
    for absent in ("User", "StateDirectory", "ProcSubset", "AmbientCapabilities",
                   "PrivateDevices"):
        assert absent not in svc, f"{absent}= must not be set (see the comments in the unit)"
    # The start limit must trip on a crash loop: the burst fits inside the interval.
    burst = int(head["StartLimitBurst"][-1])
    interval = seconds(head["StartLimitIntervalSec"][-1])
    assert 1 < burst and burst * seconds(one["RestartSec"]) < interval
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# ---------------------------------------------------------------- systemd-analyze


def test_systemd_analyze_verify_prints_nothing(installed: Stage) -> None:
    analyze = need_tool("systemd-analyze")
    proc = subprocess.run([analyze, "verify", str(installed.unit)], capture_output=True,
                          text=True, timeout=120, env=clean_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_the_shipped_unit_is_valid_as_it_is(tmp_path: Path) -> None:
    """A drop-in copy of loop.service works: no placeholder, and `systemd-analyze verify`
    is silent on the file as shipped. The root it verifies in stands for a Pi installed with
    the default layout: systemd's own units (for the targets the unit names) and the two
    programs it runs (/opt/loop's venv python, /bin/kill); the unit file is not touched."""
    analyze = need_tool("systemd-analyze")
    shipped = (REPO / "loop.service").read_text()
    assert not re.search(r"@[A-Z_]+@", shipped), "a placeholder in the shipped unit"
    root = tmp_path / "root"
    units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                 if p.is_dir())
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    for program in ("opt/loop/venv/bin/python", "bin/kill"):
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\n")
        (root / program).chmod(0o755)
    unit = root / "etc/systemd/system/loop.service"
    unit.parent.mkdir(parents=True)
    shutil.copyfile(REPO / "loop.service", unit)
    proc = subprocess.run([analyze, "verify", f"--root={root}", str(unit)],
                          capture_output=True, text=True, timeout=120, env=clean_env(),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    argv = unit_directives(unit)["Service"]["ExecStart"][0].split()
    assert argv[:2] == ["/opt/loop/venv/bin/python", "/opt/loop/app/loop.py"]
    assert argv[2:] == ["--config", "/etc/loop/config.json", "--data-dir", "/var/lib/loop"]


def test_an_install_with_the_default_layout_installs_the_unit_as_shipped(tmp_path: Path) -> None:
    destdir = tmp_path / "dest"  # DESTDIR: the default paths, written below this root
    proc = subprocess.run(["sh", str(INSTALL)], env=clean_env(DESTDIR=str(destdir)),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = destdir / "etc/systemd/system/loop.service"
    assert installed.read_bytes() == (REPO / "loop.service").read_bytes()
    assert "as shipped" in proc.stdout


@pytest.mark.parametrize("user", [None, "kiosk"])
def test_install_rewrites_only_the_lines_that_differ(stage: Stage, user) -> None:
    run_installer(stage, **({"LOOP_USER": user} if user else {}))
    shipped = (REPO / "loop.service").read_text().splitlines()
    installed = stage.unit.read_text().splitlines()
    assert len(installed) == len(shipped)
    changed = {a.partition("=")[0] + "=" for a, b in zip(shipped, installed) if a != b}
    assert changed == {"ExecStart=", "ReadWritePaths="} | (
        {"SupplementaryGroups="} if user else set())
    svc = unit_directives(stage.unit)["Service"]
    assert svc["SupplementaryGroups"] == [user or "loop"]
    assert svc["ReadWritePaths"] == [str(stage.datadir)]


def test_systemd_analyze_verify_would_report_a_bad_key(installed: Stage, tmp_path: Path) -> None:
    """The silence above means something: this systemd does warn about a bad unit."""
    analyze = need_tool("systemd-analyze")
    bad = tmp_path / "bad" / "loop.service"
    bad.parent.mkdir()
    bad.write_text(installed.unit.read_text().replace("[Service]\n",
                                                      "[Service]\nProtectSystm=strict\n"))
    proc = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                          timeout=120, env=clean_env(), stdin=subprocess.DEVNULL)
    assert "ProtectSystm" in proc.stdout + proc.stderr


def test_systemd_analyze_security_rates_ok(installed: Stage) -> None:
    analyze = need_tool("systemd-analyze")
    proc = subprocess.run([analyze, "security", "--offline=true", str(installed.unit)],
                          capture_output=True, text=True, timeout=120, env=clean_env(),
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, out
    assert float(match.group(1)) <= 3.0, out


# ---------------------------------------------------------------- re-install, rollback


def test_reinstall_is_idempotent_and_keeps_config_and_media(installed: Stage) -> None:
    s = installed
    unit_before = s.unit.read_text()
    edited = edit_config(s.config, lambda c: c["display"].update(brightness=33))
    media = s.datadir / "media" / "0123456789abcdef" / "meta.json"
    media.parent.mkdir(parents=True)
    media.write_text('{"name": "cat.gif"}')

    out = run_installer(s).stdout
    assert json.loads(s.config.read_text()) == edited, "operator's config overwritten"
    new = s.confdir / "config.json.new"
    assert new.read_bytes() == (REPO / "config.json").read_bytes()
    assert mode(new) == 0o640
    assert media.read_text() == '{"name": "cat.gif"}'
    assert s.unit.read_text() == unit_before
    assert "unchanged" in out
    assert not s.prev.exists(), "an identical re-install must not replace app.prev"

    # Back to the default: the stale .new goes away.
    shutil.copy2(REPO / "config.json", s.config)
    run_installer(s)
    assert not new.exists()


def test_upgrade_keeps_previous_version_and_rollback_restores_it(
        stage: Stage, source: Path) -> None:
    script = source / "deploy" / "install.sh"
    run_installer(stage, script=script)
    v1 = (source / "loop.py").read_text()
    (source / "loop.py").write_text(v1 + "# version 2\n")

    run_installer(stage, script=script)
    assert (stage.app / "loop.py").read_text().endswith("# version 2\n")
    assert (stage.prev / "loop.py").read_text() == v1

    out = run_installer(stage, "--rollback", script=script).stdout
    assert "restored" in out
    assert (stage.app / "loop.py").read_text() == v1
    assert (stage.prev / "loop.py").read_text().endswith("# version 2\n")
    # A second rollback undoes the first.
    run_installer(stage, "--rollback", script=script)
    assert (stage.app / "loop.py").read_text().endswith("# version 2\n")


def test_rollback_without_previous_version_fails(installed: Stage) -> None:
    proc = run_installer(installed, "--rollback", check=False)
    assert proc.returncode != 0
    assert "no previous version" in proc.stderr


def test_upgrade_refuses_a_config_the_new_version_rejects(installed: Stage) -> None:
    s = installed
    edit_config(s.config, lambda c: c["display"].update(no_such_key=1))
    app_before = sorted(p.relative_to(s.app) for p in s.app.rglob("*"))
    proc = run_installer(s, check=False)
    assert proc.returncode != 0
    assert "display.no_such_key" in proc.stderr
    assert not (s.prefix / "app.new").exists()
    assert sorted(p.relative_to(s.app) for p in s.app.rglob("*")) == app_before


# ---------------------------------------------------------------- uninstall


def test_uninstall_keeps_data_and_config_unless_purged(installed: Stage) -> None:
    s = installed
    media = s.datadir / "media" / "x" / "meta.json"
    media.parent.mkdir(parents=True)
    media.write_text("{}")

    run_installer(s, "--uninstall")
    assert not s.prefix.exists()
    assert not s.unit.exists()
    assert not (s.tmpfiles / "loop.conf").exists()
    assert media.is_file() and s.config.is_file()

    # Installing again picks the kept media and config up.
    run_installer(s)
    assert media.is_file()
    run_installer(s, "--uninstall", PURGE="1")
    assert not s.datadir.exists() and not s.confdir.exists() and not s.prefix.exists()


def test_uninstall_refuses_to_remove_a_system_directory(stage: Stage, tmp_path: Path) -> None:
    # DESTDIR keeps even a broken check inside tmp_path.
    root = tmp_path / "root"
    (root / "opt" / "app").mkdir(parents=True)
    proc = run_installer(stage, "--uninstall", check=False, DESTDIR=str(root), PREFIX="/opt")
    assert proc.returncode != 0
    assert "refusing to remove PREFIX=/opt" in proc.stderr
    assert (root / "opt" / "app").is_dir()


def test_staged_mode_needs_an_absolute_directory(tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    # DESTDIR as a safety net: even a broken check could not install onto this machine.
    env = clean_env(LOOP_STAGED="1", DESTDIR=str(tmp_path / "dest"))
    proc = subprocess.run(["sh", str(INSTALL)], env=env, cwd=work, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "LOOP_STAGED must be an absolute path" in proc.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "dest").exists()


# ---------------------------------------------------------------- Raspberry Pi setup


def test_pi_setup_turns_sound_off_with_a_backup(stage: Stage) -> None:
    stage.boot.mkdir(parents=True)
    original = "# Pi config\ndtparam=audio=on\ncamera_auto_detect=1\n[all]\n"
    (stage.boot / "config.txt").write_text(original)
    (stage.boot / "cmdline.txt").write_text("console=tty1 root=PARTUUID=x rootwait\n")

    out = run_installer(stage)
    proc_out = out.stdout + out.stderr
    config_txt = (stage.boot / "config.txt").read_text()
    assert "dtparam=audio=off" in config_txt
    assert not re.search(r"^\s*dtparam=audio=on", config_txt, re.M)
    assert "camera_auto_detect=1" in config_txt
    backups = list(stage.boot.glob("config.txt.loop-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert "backup" in proc_out and "reboot" in proc_out
    assert "blacklist snd_bcm2835" in stage.blacklist.read_text()
    assert "sched_rt_runtime_us" in (stage.tmpfiles / "loop-pi.conf").read_text()
    assert "isolcpus=3" in proc_out
    # cmdline.txt is only suggested, never edited
    assert "isolcpus" not in (stage.boot / "cmdline.txt").read_text()

    # Idempotent: nothing left to change, no second backup.
    run_installer(stage)
    assert len(list(stage.boot.glob("config.txt.loop-backup-*"))) == 1
    assert (stage.boot / "config.txt").read_text() == config_txt

    # Hardware pulsing off: the blacklist is no longer needed.
    edit_config(stage.config, lambda c: c["display"].update(disable_hardware_pulsing=True))
    run_installer(stage)
    assert not stage.blacklist.exists()

    run_installer(stage, "--uninstall")
    assert not (stage.tmpfiles / "loop-pi.conf").exists()


def test_pi_setup_can_leave_config_txt_alone(stage: Stage) -> None:
    stage.boot.mkdir(parents=True)
    (stage.boot / "config.txt").write_text("dtparam=audio=on\n")
    proc = run_installer(stage, LOOP_EDIT_BOOT="0")
    assert (stage.boot / "config.txt").read_text() == "dtparam=audio=on\n"
    assert not list(stage.boot.glob("config.txt.loop-backup-*"))
    assert "dtparam=audio=off" in proc.stderr
    assert stage.blacklist.exists()


# ---------------------------------------------------------------- framebuffer drop-in


def test_framebuffer_driver_gets_a_dropin_for_its_device_and_backlight(
        installed: Stage, tmp_path: Path) -> None:
    s = installed
    dropin = s.unit.parent / "loop.service.d" / "framebuffer.conf"
    assert not dropin.parent.exists(), "no drop-in for the LED matrix"
    # sysfs as on a Pi: the class entry links into /sys/devices
    real = s.root / "sys/devices/platform/soc/spi0.0/backlight/fb_ili9341"
    real.mkdir(parents=True)
    (real / "brightness").write_text("255\n")
    (real / "max_brightness").write_text("255\n")
    (s.root / "sys/class/backlight").mkdir(parents=True)
    (s.root / "sys/class/backlight/fb_ili9341").symlink_to(
        "../../devices/platform/soc/spi0.0/backlight/fb_ili9341")
    edit_config(s.config, lambda c: c["display"].update(driver="framebuffer",
                                                        framebuffer_device="/dev/fb1"))
    run_installer(s)
    assert mode(dropin) == 0o644
    svc = unit_directives(dropin)["Service"]
    assert svc["DeviceAllow"] == ["/dev/fb1 rw"]
    assert svc["ReadWritePaths"] == [
        "-/sys/devices/platform/soc/spi0.0/backlight/fb_ili9341/brightness"]
    assert set(svc) == {"DeviceAllow", "ReadWritePaths"}, "the drop-in only adds access"
    # the unit itself keeps its sandbox; the drop-in adds to its lists
    base = unit_directives(s.unit)["Service"]
    assert sorted(base["DeviceAllow"]) == ["/dev/gpiomem rw", "/dev/mem rw"]
    analyze = shutil.which("systemd-analyze")
    if analyze:  # the unit with the drop-in folded in is still a clean unit
        merged = tmp_path / "merged" / "loop.service"
        merged.parent.mkdir()
        extra = "\n".join(line for line in dropin.read_text().splitlines()
                          if line and not line.startswith(("#", "[")))
        merged.write_text(s.unit.read_text().replace("[Service]\n", f"[Service]\n{extra}\n"))
        proc = subprocess.run([analyze, "verify", str(merged)], capture_output=True,
                              text=True, timeout=120, env=clean_env(), stdin=subprocess.DEVNULL)
        assert proc.stdout + proc.stderr == "", proc.stdout + proc.stderr

    # another device, software brightness: only the device
    edit_config(s.config, lambda c: c["display"].update(framebuffer_device="/dev/fb0",
                                                        framebuffer_backlight="none"))
    run_installer(s)
    svc = unit_directives(dropin)["Service"]
    assert svc == {"DeviceAllow": ["/dev/fb0 rw"]}

    # back to the LED matrix: the drop-in goes away
    edit_config(s.config, lambda c: c["display"].update(driver="rgbmatrix"))
    out = run_installer(s).stdout
    assert not dropin.parent.exists() and "removed the framebuffer drop-in" in out

    edit_config(s.config, lambda c: c["display"].update(driver="framebuffer"))
    run_installer(s)
    assert dropin.exists()
    run_installer(s, "--uninstall")
    assert not dropin.parent.exists()


# ---------------------------------------------------------------- the installed service


def test_staged_service_answers_health(installed: Stage, tmp_path: Path) -> None:
    """The staged app (not the source tree) starts and answers /api/poll/health.

    It runs under the test's interpreter: the staged venv is Debian's python3 with its
    system site packages, which a developer machine may lack Pillow in.
    """
    s = installed
    env = clean_env()
    for var in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(s.app / "loop.py"), "--config", str(s.config),
         "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", "0",
         "--display", "headless"],
        cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = None
        while url is None:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                pytest.fail("no 'LOOP listening on' line within 60 s:\n" + "".join(log))
            match = re.search(r"LOOP listening on (http://\S+)", line)
            url = match and match.group(1).rstrip("/")
        with urllib.request.urlopen(url + "/api/poll/health", timeout=30) as resp:
            assert resp.status == 200
            body = json.load(resp)
        assert body["success"] is True, body
        assert isinstance(body["data"], dict)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the service did not stop within 60 s of SIGTERM:\n" + "".join(log))
    assert code == 0, "".join(log)


def test_installer_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run([shellcheck, "-s", "sh", str(INSTALL)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_describes_the_settings() -> None:
    proc = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True,
                          timeout=60, env=clean_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0
    for word in ("PREFIX", "DESTDIR", "LOOP_USER", "LOOP_SKIP_RGBMATRIX", "RGBMATRIX_SRC",
                 "PURGE", "--staged"):
        assert word in proc.stdout
