"""deploy/rgbmatrix.sh, the binding's fetch and build that `make install` runs on the Pi.

The fetch runs against a bare git repository made here and served over file:// (git's pack
protocol, as over https), with the settings GitHub has: fetching a commit by id, and blob
filters. The build is the one tests/hwsim/build-rgbmatrix.sh runs for every simulated-Pi test
(from wheels, with --no-index, and as root without any network at all); here only what it
refuses is checked, which is quick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hwsim import rgbmatrix_python, source_dir, venv_dir  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "rgbmatrix.sh"
NEEDED = {"lib", "include", "bindings", "CMakeLists.txt", "pyproject.toml", "README.md",
          "COPYING"}


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost",
                           "-c", "init.defaultBranch=master", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def run_script(*args, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RGBMATRIX_")}
    environ.update(env)
    return subprocess.run(["sh", str(SCRIPT), *args], env=environ, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def upstream(tmp_path):
    """A bare repository shaped like hzeller/rpi-rgb-led-matrix: the build's inputs, plus
    what the build does not need (a fonts folder, examples, a 4 MB kernel tarball), two
    commits. Returns (file:// URL, first commit, {path: blob id} of the unneeded files)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src = source_dir()
    if not (src / "pyproject.toml").is_file():
        pytest.skip(f"no rpi-rgb-led-matrix source at {src} (set RGBMATRIX_SRC)")
    work = tmp_path / "upstream"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns(".git", "*.cpp"))
    (work / "fonts").mkdir()
    (work / "fonts" / "10x20.bdf").write_bytes(os.urandom(1 << 20))
    (work / "examples-api-use").mkdir()
    (work / "examples-api-use" / "demo-main.cc").write_text("int main() {}\n")
    (work / "rpi5-kernel").mkdir()
    (work / "rpi5-kernel" / "linux-rp1.tar.gz").write_bytes(os.urandom(4 << 20))
    git("init", "-q", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "the pinned one", cwd=work)
    pinned = git("rev-parse", "HEAD", cwd=work)
    blobs = {path: git("rev-parse", f"HEAD:{path}", cwd=work)
             for path in ("fonts/10x20.bdf", "rpi5-kernel/linux-rp1.tar.gz")}
    (work / "README.md").write_text("a later README\n")
    git("commit", "-qam", "a later one", cwd=work)
    bare = tmp_path / "upstream.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("config", "uploadpack.allowFilter", "true", cwd=bare)
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=bare)
    return f"file://{bare}", pinned, blobs


def test_fetch_takes_one_commit_and_only_what_the_build_needs(upstream, tmp_path):
    url, pinned, blobs = upstream
    dest = tmp_path / "src" / "rpi-rgb-led-matrix"
    done = run_script("fetch", str(dest), RGBMATRIX_REPO=url, RGBMATRIX_COMMIT=pinned)
    assert done.returncode == 0, done.stderr
    assert git("rev-parse", "HEAD", cwd=dest) == pinned
    assert git("rev-list", "--count", "HEAD", cwd=dest) == "1"  # no history
    assert (dest / ".git" / "shallow").read_text().strip() == pinned
    assert {p.name for p in dest.iterdir()} - {".git"} == NEEDED
    assert (dest / "README.md").read_bytes() == (source_dir() / "README.md").read_bytes()
    # The blobs outside the sparse paths never came (listed as missing, not fetched now).
    missing = git("rev-list", "--objects", "--missing=print", "HEAD", cwd=dest).splitlines()
    for blob in blobs.values():
        assert f"?{blob}" in missing
    fetched = sum(p.stat().st_size for p in (dest / ".git").rglob("*") if p.is_file())
    assert fetched < 2 << 20, fetched  # the unneeded files alone are 5 MB
    assert (dest / "bindings" / "python" / "rgbmatrix" / "core.pyx").is_file()


def test_fetch_again_needs_no_network_when_the_commit_is_there(upstream, tmp_path):
    url, pinned, _ = upstream
    dest = tmp_path / "src"
    assert run_script("fetch", str(dest), RGBMATRIX_REPO=url,
                      RGBMATRIX_COMMIT=pinned).returncode == 0
    shutil.rmtree(url.removeprefix("file://"))  # the server is gone
    again = run_script("fetch", str(dest), RGBMATRIX_REPO=url, RGBMATRIX_COMMIT=pinned)
    assert again.returncode == 0, again.stderr
    assert f"is at {pinned} already" in again.stdout


@pytest.mark.parametrize("commit, words", [
    ("89072356", "full 40-digit commit id"),
    ("master", "full 40-digit commit id"),
    ("0" * 40, "cannot fetch"),
])
def test_fetch_refuses_what_is_not_the_pinned_commit(upstream, tmp_path, commit, words):
    url, _, _ = upstream
    done = run_script("fetch", str(tmp_path / "src"), RGBMATRIX_REPO=url,
                      RGBMATRIX_COMMIT=commit)
    assert done.returncode != 0
    assert words in done.stderr


def test_the_offline_build_uses_no_index(tmp_path):
    """RGBMATRIX_WHEELS: pip gets --no-index, so a wheel directory without the build tools
    is a quick, clear failure, never a download."""
    src = source_dir()
    if not (src / "pyproject.toml").is_file():
        pytest.skip(f"no rpi-rgb-led-matrix source at {src} (set RGBMATRIX_SRC)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    empty = tmp_path / "wheels"
    empty.mkdir()
    done = run_script("build", str(venv / "bin" / "python"), str(src),
                      RGBMATRIX_WHEELS=str(empty), TMPDIR=str(tmp_path))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"build tools from {empty} only (no index)" in output
    assert "scikit-build-core" in output and "from versions: none" in output
    assert not list(tmp_path.glob("loop-rgbmatrix.*"))  # its work copy is cleaned up


def test_the_test_binding_was_built_by_the_installers_script_offline(rgbmatrix_python):  # noqa: F811
    """The binding every simulated-Pi test uses came out of deploy/rgbmatrix.sh, from the
    wheels directory; as root, inside a network namespace with no network."""
    built = (venv_dir() / "rgbmatrix-build.txt").read_text()
    assert "build tool: scikit_build_core-" in built and "build tool: cython-" in built
    assert "built in " in built
    if os.geteuid() == 0 and shutil.which("unshare"):
        assert "built without network (unshare -n)" in built
    assert (venv_dir() / "rgbmatrix-pillow-version").read_text().strip() == \
        subprocess.run([rgbmatrix_python, "-c", "import PIL; print(PIL.__version__)"],
                       capture_output=True, text=True, check=True).stdout.strip()


def test_build_refuses_a_tree_that_is_not_the_library(tmp_path):
    done = run_script("build", sys.executable, str(tmp_path))
    assert done.returncode != 0
    assert "is not an rpi-rgb-led-matrix source tree" in done.stderr


def test_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    for script in (SCRIPT, REPO / "tests" / "hwsim" / "build-rgbmatrix.sh"):
        done = subprocess.run([shellcheck, "-s", "sh", str(script)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout
