#!/bin/sh
# Build hzeller's rgbmatrix Python binding from a local source tree into a venv, once.
#
#   tests/hwsim/build-rgbmatrix.sh SRC VENV
#
# SRC is the library's source (a copy of hzeller/rpi-rgb-led-matrix at the pinned commit: the
# default is ../shared/vendor/rpi-rgb-led-matrix). VENV is made by Debian's python3 with
# --system-site-packages: the binding's shims/pillow.c compiles against Debian's Imaging.h, so
# it must run on Debian's Pillow (python3-pil), never on a PyPI wheel. The build is
# deploy/rgbmatrix.sh's (the installer's), offline from wheels of scikit-build-core and Cython
# downloaded into VENV/build-wheels once; it copies SRC first, so a read-only or shared SRC
# stays untouched.
# Quiet when it works; on failure it prints the build log and exits non-zero. A stamp file
# holds a fingerprint of SRC: the same source is built once per VENV (a lock file in VENV keeps
# two builds apart). VENV/rgbmatrix-build.txt says what was built with which Cython and Pillow.
set -eu

src=${1:?usage: build-rgbmatrix.sh SRC VENV}
venv=${2:?usage: build-rgbmatrix.sh SRC VENV}
python=${RGBMATRIX_PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
reqs="$here/../../requirements.txt"

die() { echo "build-rgbmatrix: $*" >&2; exit 1; }

if [ ! -f "$src/pyproject.toml" ] || [ ! -f "$src/bindings/python/rgbmatrix/core.pyx" ]; then
    die "no rpi-rgb-led-matrix source at $src (set RGBMATRIX_SRC)"
fi
src=$(cd "$src" && pwd)
for tool in cc c++ "$python"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install build-essential python3-dev python3-venv)"
done

# Fingerprint: every file's path and content, and this script's and deploy/rgbmatrix.sh's,
# so an edited source or a changed build rebuilds.
fingerprint=$({ cd "$src" && find . -type f ! -name '*.cpp' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum; cat "$here/build-rgbmatrix.sh" "$here/../../deploy/rgbmatrix.sh"; } \
    | sha256sum | cut -c1-16)
mkdir -p "$venv"
venv=$(cd "$venv" && pwd)
stamp="$venv/.rgbmatrix-built"
exec 9>"$venv/.rgbmatrix-build.lock"
flock 9  # two builds at once (make and a test run) must not share a venv
# LOOP's runtime packages (the simulated-Pi tests run loop.py in this venv) follow
# requirements.txt without a rebuild of the binding.
reqs_stamp="$venv/.requirements-installed"
reqs_sum=$(sha256sum "$reqs" | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$src $fingerprint" ]; then
    if [ "$(cat "$reqs_stamp" 2>/dev/null)" != "$reqs_sum" ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" >&2 ||
            die "installing $reqs into $venv failed"
        echo "$reqs_sum" >"$reqs_stamp"
    fi
    exit 0
fi

inc=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$inc/Python.h" ] || die "Python.h is missing in $inc (apt-get install python3-dev)"
[ -f "$inc/Imaging.h" ] || die "Pillow's Imaging.h is missing in $inc (apt-get install python3-pil python3-dev)"

log=$(mktemp "${TMPDIR:-/tmp}/rgbmatrix-build.XXXXXX")
trap 'rm -f "$log"' EXIT
wheels="$venv/build-wheels"

# The build itself is deploy/rgbmatrix.sh's, as on the Pi, and offline the way
# RGBMATRIX_WHEELS makes it there: the build tools are fetched once into $wheels (the only
# step that needs PyPI), then pip builds with --no-index from them. As root (CI) the build
# runs in a network namespace of its own, without network: proof that it needs none.
offline=""
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 && unshare -n true 2>/dev/null; then
    offline="unshare -n"
fi
rm -f "$stamp"
if ! {
    "$python" -m venv --system-site-packages "$venv" &&
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" &&
    { [ -f "$wheels/.complete" ] || {
        "$venv/bin/python" -m pip download -q --disable-pip-version-check -d "$wheels" \
            scikit-build-core cython && touch "$wheels/.complete"; }; } &&
    $offline env RGBMATRIX_WHEELS="$wheels" \
        sh "$here/../../deploy/rgbmatrix.sh" build "$venv/bin/python" "$src" &&
    (cd / && "$venv/bin/python" -c 'import rgbmatrix.core, PIL; assert PIL.__file__.startswith("/usr/lib/python3/"), PIL.__file__')
} >"$log" 2>&1; then
    cat "$log" >&2
    die "building the binding from $src into $venv failed (log above)"
fi
# What was built with what, for a bug report; and Pillow's version where install.sh records
# it (LOOP's pre-flight compares it with the Pillow it runs on).
{
    echo "source: $src (fingerprint $fingerprint)"
    (cd "$wheels" && ls -1 ./*.whl) | sed 's|^\./|build tool: |'
    grep '^    built in' "$log" || true
    [ -z "$offline" ] || echo "built without network ($offline)"
    "$venv/bin/python" -c 'import sys, PIL; print("python", sys.version.split()[0], "Pillow", PIL.__version__)'
} >"$venv/rgbmatrix-build.txt"
"$venv/bin/python" -c 'import PIL; print(PIL.__version__)' >"$venv/rgbmatrix-pillow-version"
echo "$reqs_sum" >"$reqs_stamp"
echo "$src $fingerprint" >"$stamp"
