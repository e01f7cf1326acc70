"""The real `rgbmatrix` binding on a simulated Raspberry Pi Zero 2 W, for tests.

Three pieces, each cached:

- `binding_python()`: the Python of a venv holding the real binding, built once per source
  tree by build-rgbmatrix.sh (also `make rgbmatrix`) from RGBMATRIX_SRC (default
  ../shared/vendor/rpi-rgb-led-matrix) into RGBMATRIX_VENV (default .venv-rgbmatrix).
- `shim_library()`: pi_shim.c compiled with the system `cc` into .cache/hwsim/ (see the C
  file for what it simulates and which faults it injects).
- `SimulatedPi`: one simulated Pi for one process: `env()` for a subprocess, `run(script)`
  for a Python snippet, `start(args)` for a long-running process, `counters()` and `gpio()`
  to watch it, `fault("hang")` to break it.

For tests: `simulated(tmp_path, devmem=..., modules=...)` returns a SimulatedPi, skipping the
test (with the reason) when the source or a compiler is missing and failing it when the build
fails; the build runs once per session. The same as pytest fixtures, for a module that
imports them (`from hwsim import simulated_pi  # noqa: F401`, F811 where used):
`rgbmatrix_python`, `pi_shim` (session), `simulated_pi`, `fake_binding_env`.
Under CI=true the project's conftest turns those skips into failures.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FAKE_DIR = ROOT / "tests" / "fake_rgbmatrix"
BUILD_SCRIPT = HERE / "build-rgbmatrix.sh"
SHIM_SOURCE = HERE / "pi_shim.c"

# Page 0 of the shim's state file: enum counter in pi_shim.c, in order.
COUNTERS = ("magic", "pid", "refresh_threads", "refresh_running", "frames", "vsync_waits",
            "vsync_done", "gpiomem_opens", "devmem_opens", "rt_requests",
            "affinity_requests", "kernel_writes", "daemon_calls", "hanging", "last_frame_ns",
            "faults")
PAGE = 4096
GPIO_PAGE = 1

# Lines the real library writes on every start on this simulated Pi, which say nothing about
# the call at hand (lib/gpio.cc Timers::Init and TimerBasedPinPulser).
NOISE = ("Suggestion: to slightly improve display update, add", "\tisolcpus=3",
         "at the end of /boot/cmdline.txt and reboot (see README.md)",
         "FYI: not running as root which means we can't properly control timing unless this "
         "is a real-time kernel. Expect color degradation. Consider running as root with "
         "sudo.")


class Unavailable(Exception):
    """What the real library needs is not on this machine; str() is the skip reason."""


VENDORED = "shared/vendor/rpi-rgb-led-matrix"


def source_dir() -> Path:
    """RGBMATRIX_SRC (relative to the repository, as the Makefile passes it), by default
    ../shared/vendor/rpi-rgb-led-matrix, or, in a clone made elsewhere (CI's
    `git clone . /tmp/ci`), the same beside the local repository it was cloned from."""
    given = os.environ.get("RGBMATRIX_SRC")
    if given:
        return (ROOT / given).resolve()
    candidates = [ROOT.parent / VENDORED]
    origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and os.path.isdir(origin):
        candidates.append(Path(origin).resolve().parent / VENDORED)
    return next((c.resolve() for c in candidates if c.is_dir()), candidates[0].resolve())


def venv_dir() -> Path:
    """RGBMATRIX_VENV (relative to the repository), by default .venv-rgbmatrix: an absolute
    path, so processes started in another directory find its Python."""
    return ROOT / (os.environ.get("RGBMATRIX_VENV") or ".venv-rgbmatrix")


def cache_dir() -> Path:
    path = ROOT / ".cache" / "hwsim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _need_compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise Unavailable("no C compiler (cc) on this machine: apt-get install build-essential")


def binding_python() -> str:
    """The venv Python that imports the real binding; builds it on first use."""
    src = source_dir()
    if not (src / "bindings" / "python" / "rgbmatrix" / "core.pyx").is_file():
        raise Unavailable(f"no rpi-rgb-led-matrix source at {src} (set RGBMATRIX_SRC)")
    _need_compiler()
    if not shutil.which("c++") and not shutil.which("g++"):
        raise Unavailable("no C++ compiler (c++) on this machine: apt-get install "
                          "build-essential")
    if not Path("/usr/bin/python3").exists():
        raise Unavailable("no Debian /usr/bin/python3 to build the binding's venv with")
    venv = venv_dir()
    result = subprocess.run(["sh", str(BUILD_SCRIPT), str(src), str(venv)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"building the rgbmatrix binding failed:\n{result.stderr[-6000:]}")
    return str(venv / "bin" / "python")


def shim_library() -> str:
    """pi_shim.so for this pi_shim.c, compiled once into the cache dir."""
    cc = _need_compiler()
    source = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = cache_dir() / f"pi_shim-{digest}.so"
    if target.exists():
        return str(target)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra",
                             "-o", str(tmp), str(SHIM_SOURCE), "-ldl", "-pthread"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {SHIM_SOURCE.name} failed:\n{result.stderr}")
    os.replace(tmp, target)
    return str(target)


@dataclass
class Result:
    """How a process ended: `returncode` (negative: the signal), its output, and the JSON
    lines `step()` printed (see PRELUDE)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def signal(self) -> str | None:
        return signal.Signals(-self.returncode).name if self.returncode < 0 else None

    @property
    def steps(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("[")]

    @property
    def messages(self) -> list[str]:
        """stderr without the library's start-up noise and blank lines."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and line not in NOISE]

    @property
    def outcome(self) -> dict:
        return {"exit": self.signal or self.returncode, "steps": self.steps,
                "messages": self.messages}


# Put in front of a script: step(label, fn) runs fn and prints one JSON line with what it
# returned or raised, flushed, so the lines before a crash survive it.
PRELUDE = r'''
import json as _json, sys as _sys

def _plain(value):
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return {"type": type(value).__module__ + "." + type(value).__qualname__}

def step(label, fn):
    try:
        value = fn()
    except Exception as exc:
        _sys.stdout.write(_json.dumps([label, "raise", type(exc).__name__, str(exc)]) + "\n")
        _sys.stdout.flush()
        return None
    _sys.stdout.write(_json.dumps([label, "ok", _plain(value)]) + "\n")
    _sys.stdout.flush()
    return value
'''


def run_python(python: str, script: str, env: dict, timeout: float = 60,
               cwd: str | None = None) -> Result:
    proc = subprocess.run([python, "-c", PRELUDE + script], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or str(ROOT))
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOP_SHIM_", "FAKE_RGBMATRIX_", "LD_PRELOAD", "PYTHON"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class SimulatedPi:
    """One simulated Pi Zero 2 W for the processes started with its env().

    devmem: "eacces" (a non-root Pi: only /dev/gpiomem), "enoent" or "root" (/dev/mem works:
    the PWM pin pulser runs). modules: /proc/modules (None: stock Raspberry Pi OS, with
    snd_bcm2835). refresh_hz: cap of the refresh rate, 0 = as fast as the library goes.
    """

    python: str
    shim: str
    workdir: Path
    devmem: str = "eacces"
    modules: str | None = None
    refresh_hz: int = 0
    extra_env: dict = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.workdir / "pi-state"

    @property
    def fault_file(self) -> Path:
        return self.workdir / "pi-fault"

    def env(self, **extra) -> dict:
        env = _base_env()
        env.update(LD_PRELOAD=self.shim, LOOP_SHIM_STATE=str(self.state_file),
                   LOOP_SHIM_FAULT_FILE=str(self.fault_file), LOOP_SHIM_DEVMEM=self.devmem,
                   LOOP_SHIM_REFRESH_HZ=str(self.refresh_hz))
        if self.modules is not None:
            env["LOOP_SHIM_MODULES"] = self.modules
        env.update(self.extra_env)
        env.update(extra)
        return env

    def run(self, script: str, timeout: float = 60, **extra_env) -> Result:
        """Run a Python snippet (with `step` from PRELUDE) on the real library."""
        return run_python(self.python, script, self.env(**extra_env), timeout)

    def start(self, args: list[str], **popen) -> subprocess.Popen:
        """Start a process on the real library, e.g. [ROOT/"loop.py", "--config", ...]:
        the venv Python runs it with LD_PRELOAD set."""
        popen.setdefault("env", self.env())
        popen.setdefault("cwd", str(ROOT))
        return subprocess.Popen([self.python, *map(str, args)], **popen)

    def fault(self, word: str) -> None:
        """Write the fault file (see pi_shim.c): "", "nogpio", "hang", "slow 200", "segv",
        "segv-swap", "abort", "segv-init", "abort-init"."""
        tmp = self.fault_file.with_suffix(".tmp")
        tmp.write_text(word)
        os.replace(tmp, self.fault_file)

    def counters(self) -> dict:
        """The shim's counters ({} before a process under the shim started)."""
        try:
            raw = self.state_file.read_bytes()[:8 * len(COUNTERS)]
        except FileNotFoundError:
            return {}
        if len(raw) < 8 * len(COUNTERS) or raw[:8] != b"LOOPSHIM":
            return {}
        values = dict(zip(COUNTERS, struct.unpack(f"<{len(COUNTERS)}Q", raw), strict=True))
        values.pop("magic")
        return values

    def gpio(self) -> bytes:
        """The GPIO register block as the library last wrote it (GPFSEL0..5 at 0..0x14,
        GPSET0 0x1c, GPCLR0 0x28, GPLEV0 0x34)."""
        with open(self.state_file, "rb") as fh:
            fh.seek(GPIO_PAGE * PAGE)
            return fh.read(PAGE)

    def output_pins(self) -> set[int]:
        """GPIO pins the library made outputs (function select 001)."""
        regs = struct.unpack("<6I", self.gpio()[:24])
        return {pin for pin in range(54) if (regs[pin // 10] >> (pin % 10 * 3)) & 7 == 1}


def fake_env(**extra) -> dict:
    """Environment for a subprocess that imports the fake binding."""
    env = _base_env()
    env["PYTHONPATH"] = str(FAKE_DIR)
    env.update(extra)
    return env


# ---- for tests: build once per session, skip with the reason ------------------------------

@functools.cache
def _built() -> tuple[str, str] | str:
    """(binding python, shim) or the reason they cannot be had; a failed build raises."""
    try:
        return binding_python(), shim_library()
    except Unavailable as exc:
        return str(exc)


def simulated(workdir, **settings) -> SimulatedPi:
    """A SimulatedPi in `workdir` (a test's tmp_path); skips the test when the real library
    cannot be built here (no source, no compiler), fails it when the build fails."""
    built = _built()
    if isinstance(built, str):
        pytest.skip(f"the real rgbmatrix binding cannot be built: {built}")
    python, shim = built
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return SimulatedPi(python=python, shim=shim, workdir=Path(workdir), **settings)


@pytest.fixture(scope="session")
def rgbmatrix_python() -> str:
    """Path of the Python whose venv holds the real binding (built on first use)."""
    built = _built()
    if isinstance(built, str):
        pytest.skip(f"the real rgbmatrix binding cannot be built: {built}")
    return built[0]


@pytest.fixture(scope="session")
def pi_shim() -> str:
    """Path of the compiled pi_shim.so."""
    built = _built()
    if isinstance(built, str):
        pytest.skip(f"the simulated Pi cannot be built: {built}")
    return built[1]


@pytest.fixture
def simulated_pi(tmp_path) -> SimulatedPi:
    return simulated(tmp_path)


@pytest.fixture
def fake_binding_env() -> dict:
    return fake_env()


__all__ = ["COUNTERS", "FAKE_DIR", "NOISE", "PRELUDE", "ROOT", "Result", "SimulatedPi",
           "Unavailable", "binding_python", "fake_binding_env", "fake_env", "pi_shim",
           "rgbmatrix_python", "run_python", "shim_library", "simulated", "simulated_pi"]
