#!/bin/sh
# The LED matrix binding (hzeller/rpi-rgb-led-matrix, Python module `rgbmatrix`): fetch the
# pinned commit, and build it into a venv. deploy/install.sh calls it on the Pi; the test
# suite builds its own copy through it too (tests/hwsim/build-rgbmatrix.sh), so the commands
# the Pi runs are the ones CI runs.
#
#   sh deploy/rgbmatrix.sh fetch DIR          the commit into DIR (git: one commit, no
#                                             history, only the files the build needs)
#   sh deploy/rgbmatrix.sh build PYTHON SRC   pip-install the binding from the source tree
#                                             SRC into the venv of PYTHON
#
# fetch: RGBMATRIX_REPO (a git URL) and RGBMATRIX_COMMIT (40 hex digits), both required
# (install.sh pins them). A shallow fetch of that one commit with --filter=blob:none and a
# sparse checkout of lib/, include/, bindings/, CMakeLists.txt, pyproject.toml, README.md and
# COPYING: the rest of the repository (fonts, examples, utilities, images, adapter boards, the
# Pi 5 kernel pieces) never leaves the server. The server must allow fetching a commit by its
# id (GitHub does; a plain git server needs protocol v2 or uploadpack.allowReachableSHA1InWant)
# and, to skip the blobs, uploadpack.allowFilter (without it git fetches them all, still one
# commit deep).
#
# build: the library's pyproject.toml asks for scikit-build-core and Cython at build time.
# They come from PyPI, into pip's isolated build environment: Debian Bookworm has no
# python3-scikit-build-core and its cython3 is 0.29, too old for the binding. CMake (3.22 or
# newer: Bookworm has 3.25), a C++ compiler and Python.h come from apt (cmake,
# build-essential, python3-dev). With RGBMATRIX_WHEELS=/dir nothing comes from the network:
# pip runs with --no-index --find-links /dir, which must hold wheels of scikit-build-core,
# Cython and what they need (on a machine with network, for the Pi's Python and CPU:
# `python3 -m pip download scikit-build-core cython -d /dir`). With RGBMATRIX_SRC (install.sh)
# that is a fully offline build: no git, no index.
#
# The build runs on a private copy of SRC (CMake writes the Cython output next to the .pyx),
# under ${TMPDIR:-/var/tmp} (on disk: Trixie's /tmp is RAM). Parallel compile jobs:
# CMAKE_BUILD_PARALLEL_LEVEL, by default 1 below 1 GB of RAM (a Pi Zero 2 W: one compiler
# peaks near 300 MB, two near 500 MB), else 2. It prints how long the build took.
set -eu

die() { printf 'rgbmatrix: %s\n' "$*" >&2; exit 1; }
say() { printf '    %s\n' "$*"; }

# Patterns of .git/info/sparse-checkout (non-cone): the build's inputs and the licence.
SPARSE_PATHS="/lib/ /include/ /bindings/ /CMakeLists.txt /pyproject.toml /README.md /COPYING"

fetch() {
    dir=${1:?usage: rgbmatrix.sh fetch DIR}
    repo=${RGBMATRIX_REPO:?RGBMATRIX_REPO is not set}
    commit=${RGBMATRIX_COMMIT:?RGBMATRIX_COMMIT is not set}
    case $commit in
        *[!0-9a-f]*) die "RGBMATRIX_COMMIT must be a full 40-digit commit id, not '$commit'" ;;
    esac
    [ "${#commit}" -eq 40 ] || die "RGBMATRIX_COMMIT must be a full 40-digit commit id, not '$commit'"
    command -v git >/dev/null 2>&1 ||
        die "git is missing (apt-get install git), or build from a local copy with RGBMATRIX_SRC"
    if [ -d "$dir/.git" ] && [ "$(git -C "$dir" rev-parse -q --verify HEAD 2>/dev/null)" = "$commit" ] &&
        [ -z "$(git -C "$dir" status --porcelain 2>/dev/null)" ]; then
        say "$dir is at $commit already"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    git -C "$dir" init --quiet
    git -C "$dir" remote add origin "$repo"
    git -C "$dir" config core.sparseCheckout true
    for path in $SPARSE_PATHS; do
        printf '%s\n' "$path"
    done >"$dir/.git/info/sparse-checkout"
    git -C "$dir" fetch --quiet --depth 1 --filter=blob:none origin "$commit" ||
        die "cannot fetch $commit from $repo (network? a server that refuses fetching a commit by id?)"
    git -C "$dir" -c advice.detachedHead=false checkout --quiet FETCH_HEAD
    [ "$(git -C "$dir" rev-parse HEAD)" = "$commit" ] || die "$repo gave another commit than $commit"
    for path in $SPARSE_PATHS; do
        [ -e "$dir$path" ] || die "$repo at $commit has no ${path#/}: not rpi-rgb-led-matrix?"
    done
}

# A 32-bit Raspberry Pi OS compiles for ARMv6 by default; the pinned library uses ARMv7
# barriers (upstream PR #1891). On an ARMv7/v8 CPU (Zero 2 W, 3, 4) target ARMv7.
arm32_v7_or_later() {
    [ "$(dpkg --print-architecture 2>/dev/null || true)" = armhf ] &&
        grep -q -E '^CPU architecture:[[:space:]]*[78]' /proc/cpuinfo 2>/dev/null
}

meminfo_kb() {
    sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" /proc/meminfo 2>/dev/null | head -n 1
}

default_jobs() {
    total=$(meminfo_kb MemTotal)
    if [ -n "$total" ] && [ "$total" -lt 1000000 ]; then echo 1; else echo 2; fi
}

warn_memory() {
    # One compiler peaks near 300 MB (measured; see docs/raspberry-pi.md): less than that free, RAM
    # and swap together, and the kernel's OOM killer ends the build half way.
    avail=$(meminfo_kb MemAvailable)
    swap=$(meminfo_kb SwapFree)
    [ -n "$avail" ] || return 0
    if [ $((avail + ${swap:-0})) -lt $((350 * 1024 * $1)) ]; then
        printf 'WARNING: %s MB of memory and swap free for %s compile job(s) of ~300 MB each: the build may be killed. Add swap (Raspberry Pi OS: CONF_SWAPSIZE=1024 in /etc/dphys-swapfile, then sudo systemctl restart dphys-swapfile) or set CMAKE_BUILD_PARALLEL_LEVEL=1\n' \
            "$(((avail + ${swap:-0}) / 1024))" "$1" >&2
    fi
}

build() {
    python=${1:?usage: rgbmatrix.sh build PYTHON SRC}
    src=${2:?usage: rgbmatrix.sh build PYTHON SRC}
    if [ ! -f "$src/pyproject.toml" ] || [ ! -f "$src/bindings/python/rgbmatrix/core.pyx" ]; then
        die "$src is not an rpi-rgb-led-matrix source tree (no pyproject.toml or bindings/python)"
    fi
    set -- --disable-pip-version-check --no-input --no-cache-dir --force-reinstall --no-deps
    if [ -n "${RGBMATRIX_WHEELS:-}" ]; then
        [ -d "$RGBMATRIX_WHEELS" ] || die "RGBMATRIX_WHEELS=$RGBMATRIX_WHEELS is not a directory"
        set -- "$@" --no-index --find-links "$RGBMATRIX_WHEELS"
        say "build tools from $RGBMATRIX_WHEELS only (no index)"
    else
        say "build tools (scikit-build-core, Cython) from PyPI, in pip's build environment"
    fi
    jobs=${CMAKE_BUILD_PARALLEL_LEVEL:-$(default_jobs)}
    warn_memory "$jobs"
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/loop-rgbmatrix.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    cp -R "$src/." "$work/src"
    chmod -R u+w "$work/src"
    rm -rf "$work/src/.git"
    rm -f "$work/src/bindings/python/rgbmatrix/core.cpp" "$work/src/bindings/python/rgbmatrix/graphics.cpp"
    started=$(date +%s)
    (
        CMAKE_BUILD_PARALLEL_LEVEL=$jobs
        TMPDIR=$work
        export CMAKE_BUILD_PARALLEL_LEVEL TMPDIR
        if [ -z "${CXXFLAGS:-}" ] && arm32_v7_or_later; then
            CFLAGS="-march=armv7-a+fp"
            CXXFLAGS="-march=armv7-a+fp"
            export CFLAGS CXXFLAGS
        fi
        "$python" -m pip install "$@" "$work/src"
    )
    (cd / && "$python" -c 'import rgbmatrix.core') ||
        die "the rgbmatrix binding was built but does not import"
    say "built in $(($(date +%s) - started)) s with $jobs compile job(s)"
}

case ${1:-} in
    fetch) shift; fetch "$@" ;;
    build) shift; build "$@" ;;
    *) printf 'usage: %s fetch DIR | build PYTHON SRC\n' "$0" >&2; exit 2 ;;
esac
