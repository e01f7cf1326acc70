#!/bin/sh
# LOOP installer: turns Raspberry Pi OS (Bookworm or Trixie, Lite) into a running,
# sandboxed, self-restarting LOOP. Run as root from the source tree:
#
#   sudo make install      install or upgrade in place (media and config are kept)
#   sudo make rollback     go back to the app version before the last upgrade
#   sudo make uninstall    remove what install added; keeps /var/lib/loop and /etc/loop
#                          unless PURGE=1
#
# What it does (one function per step, see main() at the bottom):
#   apt packages -> system user -> app copy in $PREFIX/app (the previous one kept in
#   $PREFIX/app.prev) -> venv with --system-site-packages (Debian's Pillow and psutil)
#   + multipart and paho-mqtt 2.x from pip -> rgbmatrix binding from a pinned commit ->
#   /etc/loop/config.json (installed once; a changed default lands as config.json.new) ->
#   data dir through tmpfiles.d -> Pi setup (sound off, kernel knobs) -> loop.service (plus
#   a loop.service.d drop-in for the framebuffer driver) -> daemon-reload, enable, restart
#   -> GET /api/poll/health.
#
# Settings (environment, or make variables: `make install PREFIX=/opt/loop2`):
#   PREFIX=/opt/loop            app, venv and the rgbmatrix checkout
#   DESTDIR=                    write everything below this root (packaging); implies
#                               no apt, users, chown, systemctl or binding build
#   LOOP_USER=loop              service user (default: system.user of the config)
#   LOOP_CONFDIR=/etc/loop      LOOP_DATADIR=/var/lib/loop (default: system.data_dir)
#   LOOP_UNITDIR=/etc/systemd/system   LOOP_TMPFILESDIR=/etc/tmpfiles.d
#   LOOP_MODPROBEDIR=/etc/modprobe.d   LOOP_BOOTDIR=/boot/firmware (or /boot)
#   LOOP_SKIP_RGBMATRIX=1       headless install: no LED binding build (off a Pi
#                               the build is skipped anyway, unless RGBMATRIX_SRC is set)
#   RGBMATRIX_SRC=/path         build the binding from this local copy of the library's
#                               source instead of fetching it (no git)
#   RGBMATRIX_WHEELS=/dir       the binding's build tools (scikit-build-core, Cython) from
#                               wheels in /dir instead of PyPI; with RGBMATRIX_SRC the build
#                               needs no network (see deploy/rgbmatrix.sh)
#   RGBMATRIX_COMMIT=<sha>      override the pinned commit (RGBMATRIX_REPO: the git URL)
#   CMAKE_BUILD_PARALLEL_LEVEL  compile jobs of that build (default 1 below 1 GB of RAM)
#   LOOP_SKIP_APT=1             do not run apt-get (packages installed by other means)
#   LOOP_SKIP_PIP=1             do not pip-install multipart and paho-mqtt (provide them); pip
#                               also honours PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
#   LOOP_EDIT_BOOT=0            never edit config.txt; only print what to change
#   LOOP_PYTHON=/usr/bin/python3   interpreter the venv is made from (Debian's)
#   LOOP_HEALTH_TIMEOUT=60      seconds to wait for /api/poll/health after the restart
#   PURGE=1                     with --uninstall: also remove data, config and the user
#   LOOP_STAGED=DIR or --staged DIR
#                               staged install for tests: every path defaults to one
#                               inside DIR (DIR/opt/loop, DIR/etc/loop, ...) and apt,
#                               useradd, chown, systemctl, pip and the binding build are
#                               skipped, so it touches nothing outside DIR.
set -eu

RGBMATRIX_REPO=${RGBMATRIX_REPO:-https://github.com/hzeller/rpi-rgb-led-matrix.git}
# hzeller/rpi-rgb-led-matrix has no releases: pin a commit of the pyproject build
# (scikit-build-core + CMake + Cython, `pip install .` at the top of the checkout).
RGBMATRIX_COMMIT=${RGBMATRIX_COMMIT:-89072356305e272c2b1af32b8377a274df3d6d9f}

# xfonts-base: the misc-fixed bitmap fonts of text items, clocks and text notifications
APT_BASE="python3 python3-venv python3-pil python3-psutil ffmpeg xfonts-base"
# The binding's build: its pyproject's scikit-build-core and Cython come from PyPI (or
# RGBMATRIX_WHEELS) inside pip's build environment, not from apt (see deploy/rgbmatrix.sh).
APT_BUILD="python3-dev build-essential cmake git"

# ---------------------------------------------------------------- small helpers

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -eu$/p' "$0" | sed -e '/^set -eu$/d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}

# True for a real install on this machine; false when staged or under DESTDIR.
on_machine() { [ -z "$STAGE" ] && [ -z "$DESTDIR" ]; }

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

is_raspberry_pi() { grep -qa 'Raspberry Pi' /proc/device-tree/model 2>/dev/null; }

# The binding is built on a Pi (or from RGBMATRIX_SRC anywhere) unless skipped.
wants_rgbmatrix() {
    [ "${LOOP_SKIP_RGBMATRIX:-0}" != 1 ] && { [ -n "${RGBMATRIX_SRC:-}" ] || is_raspberry_pi; }
}

# Paths end up in sed expressions, the unit and rm -rf: keep them plain.
check_path() {
    case $2 in
        /*) ;;
        *) die "$1 must be an absolute path, not '$2'" ;;
    esac
    case $2 in
        */ | *//* | */./* | */../* | */. | */..) die "$1 must be a normalised path: '$2'" ;;
        *[!A-Za-z0-9._/+-]*) die "$1 may only use letters, digits and ._/+- : '$2'" ;;
    esac
}

# Refuse to rm -rf a system directory, whatever the variables say.
check_removable() {
    check_path "$1" "$2"
    case $2 in
        / | /bin | /boot | /boot/firmware | /dev | /etc | /home | /lib | /lib64 | /opt | \
            /proc | /root | /run | /sbin | /srv | /sys | /tmp | /usr | /usr/local | /var | \
            /var/lib | /var/tmp)
            die "refusing to remove $1=$2" ;;
    esac
}

# config_value FILE SECTION KEY DEFAULT: one value of a config.json, or DEFAULT.
config_value() {
    "$PYTHON" -I - "$@" <<'EOF'
import json, sys
path, section, key, default = sys.argv[1:5]
try:
    with open(path, encoding="utf-8") as fh:
        value = json.load(fh).get(section, {}).get(key, default)
except (OSError, ValueError, AttributeError):
    value = default
print(("true" if value else "false") if isinstance(value, bool) else value)
EOF
}

# render TEMPLATE DEST MODE: fill in the placeholders, then replace DEST atomically.
render() {
    tmp="$2.tmp.$$"
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFDIR@|$CONFDIR|g" -e "s|@DATADIR@|$DATADIR|g" \
        -e "s|@USER@|$LOOP_USER|g" -e "s|@GROUP@|$LOOP_GROUP|g" "$1" >"$tmp"
    if grep -q '@[A-Z_][A-Z_]*@' "$tmp"; then
        rm -f "$tmp"
        die "unknown placeholder left in $2"
    fi
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}

# ---------------------------------------------------------------- settings

parse_args() {
    ACTION=install
    STAGE=${LOOP_STAGED:-}
    while [ $# -gt 0 ]; do
        case $1 in
            --uninstall) ACTION=uninstall ;;
            --rollback) ACTION=rollback ;;
            --staged)
                [ $# -ge 2 ] || die "--staged needs a directory"
                STAGE=$2
                shift
                ;;
            --staged=*) STAGE=${1#--staged=} ;;
            -h | --help) usage 0 ;;
            *) printf 'unknown argument: %s\n\n' "$1" >&2; usage 2 ;;
        esac
        shift
    done
}

find_python() {
    if [ -z "${LOOP_PYTHON:-}" ] && [ ! -x /usr/bin/python3 ] && on_machine &&
        [ "$(id -u)" = 0 ] && [ "${LOOP_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
        info "installing python3 first (the installer reads config.json with it)"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3
    fi
    if [ -n "${LOOP_PYTHON:-}" ]; then
        PYTHON=$LOOP_PYTHON
    elif [ -x /usr/bin/python3 ]; then
        PYTHON=/usr/bin/python3  # Debian's, so the venv sees python3-pil and python3-psutil
    else
        PYTHON=python3
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "no Python 3 found (install python3 or set LOOP_PYTHON)"
}

resolve_settings() {
    SRC=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
    DESTDIR=${DESTDIR:-}
    if [ -n "$STAGE" ]; then
        check_path LOOP_STAGED "$STAGE"
        [ "$STAGE" != / ] || die "LOOP_STAGED must not be /"
        mkdir -p "$STAGE"
    fi
    R=$DESTDIR
    [ -z "$R" ] || check_path DESTDIR "$R"

    find_python

    PREFIX=${PREFIX:-$STAGE/opt/loop}
    CONFDIR=${LOOP_CONFDIR:-$STAGE/etc/loop}
    UNITDIR=${LOOP_UNITDIR:-$STAGE/etc/systemd/system}
    TMPFILESDIR=${LOOP_TMPFILESDIR:-$STAGE/etc/tmpfiles.d}
    MODPROBEDIR=${LOOP_MODPROBEDIR:-$STAGE/etc/modprobe.d}
    if [ -n "${LOOP_BOOTDIR:-}" ]; then
        BOOTDIR=$LOOP_BOOTDIR
    elif [ -z "$STAGE" ] && [ ! -e /boot/firmware/config.txt ] && [ -e /boot/config.txt ]; then
        BOOTDIR=/boot  # Raspberry Pi OS before Bookworm
    else
        BOOTDIR=$STAGE/boot/firmware
    fi

    # The user and data dir follow the operator's config, then the shipped default.
    cfg="$R$CONFDIR/config.json"
    [ -f "$cfg" ] || cfg="$SRC/config.json"
    if [ -z "${LOOP_USER:-}" ]; then
        LOOP_USER=$(config_value "$cfg" system user loop)
    fi
    if [ -n "${LOOP_DATADIR:-}" ]; then
        DATADIR=$LOOP_DATADIR
    elif [ -n "$STAGE" ]; then
        DATADIR=$STAGE/var/lib/loop
    else
        DATADIR=$(config_value "$cfg" system data_dir /var/lib/loop)
    fi

    for pair in PREFIX="$PREFIX" LOOP_CONFDIR="$CONFDIR" LOOP_DATADIR="$DATADIR" \
        LOOP_UNITDIR="$UNITDIR" LOOP_TMPFILESDIR="$TMPFILESDIR" \
        LOOP_MODPROBEDIR="$MODPROBEDIR" LOOP_BOOTDIR="$BOOTDIR"; do
        check_path "${pair%%=*}" "${pair#*=}"
    done
    case $LOOP_USER in
        '' | *[!a-z0-9_-]* | [!a-z_]*) die "LOOP_USER must be a plain user name, not '$LOOP_USER'" ;;
    esac
    LOOP_GROUP=$LOOP_USER  # the user's own group; create_user reads the real one
    VENV=$PREFIX/venv
}

preflight() {
    if on_machine && [ "$(id -u)" != 0 ]; then
        die "run as root: sudo make $ACTION"
    fi
    if [ "$ACTION" = install ]; then
        for f in loop.py loop/__init__.py config.json loop.service deploy/loop.tmpfiles; do
            [ -e "$SRC/$f" ] || die "$SRC/$f is missing: run this from a complete LOOP tree"
        done
    fi
    if [ -n "$STAGE" ]; then
        info "staged install into $STAGE (no apt, users, chown, systemctl, pip or build)"
    elif [ -n "$DESTDIR" ]; then
        info "installing below DESTDIR=$DESTDIR (no apt, users, chown, systemctl or build)"
    fi
}

# ---------------------------------------------------------------- install steps

install_packages() {
    step "System packages"
    if ! on_machine || [ "${LOOP_SKIP_APT:-0}" = 1 ]; then
        info "skipped"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this installer is for Raspberry Pi OS / Debian"
    pkgs=$APT_BASE
    if wants_rgbmatrix; then pkgs="$pkgs $APT_BUILD"; fi
    missing=""
    for p in $pkgs; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing="$missing $p"
    done
    if [ -z "$missing" ]; then
        info "all present: $pkgs"
        return
    fi
    info "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086  # a list of package names
    apt-get install -y -q --no-install-recommends $missing
}

create_user() {
    step "Service user '$LOOP_USER'"
    if ! on_machine; then
        info "skipped"
        return
    fi
    if getent passwd "$LOOP_USER" >/dev/null; then
        info "exists"
    else
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "LOOP media looper" "$LOOP_USER"
        info "created (system user, no login, no home)"
    fi
    LOOP_GROUP=$(id -gn "$LOOP_USER")
}

# validate_config APPDIR FILE: the app's own validator on FILE; 3 = could not run it.
validate_config() {
    "$PYTHON" -I - "$1" "$2" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
try:
    from loop import config
except Exception as exc:  # the app itself does not import: not the config's fault
    print(f"cannot import loop.config to check the config: {exc}", file=sys.stderr)
    sys.exit(3)
try:
    config.build(config.read_file(sys.argv[2]))
except config.ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
EOF
}

install_app() {
    step "App in $PREFIX/app"
    app=$R$PREFIX/app
    new=$R$PREFIX/app.new
    prev=$R$PREFIX/app.prev
    mkdir -p "$R$PREFIX"
    chmod 0755 "$R$PREFIX"
    rm -rf "$new"
    mkdir -p "$new"
    set -- loop.py loop config.json
    for f in requirements.txt loop.service deploy docs Makefile README.md; do
        [ ! -e "$SRC/$f" ] || set -- "$@" "$f"
    done
    tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - "$@" |
        tar -C "$new" --no-same-owner -xf -
    chmod -R u=rwX,go=rX "$new"
    chmod 0755 "$new/loop.py"
    [ ! -f "$new/deploy/install.sh" ] || chmod 0755 "$new/deploy/install.sh"

    # An upgrade must not install an app that rejects the operator's config.
    if [ -f "$R$CONFDIR/config.json" ]; then
        rc=0
        validate_config "$new" "$R$CONFDIR/config.json" || rc=$?
        case $rc in
            0) ;;
            3) warn "could not check $CONFDIR/config.json against the new version" ;;
            *)
                rm -rf "$new"
                die "$CONFDIR/config.json is not valid for this version (see above); fix it (compare with $SRC/config.json) and re-run. Nothing was changed."
                ;;
        esac
    fi

    if [ -d "$app" ] && diff -r -q -x __pycache__ "$new" "$app" >/dev/null 2>&1; then
        rm -rf "$new"
        info "unchanged"
        [ ! -d "$prev" ] || info "the previous version stays in $PREFIX/app.prev"
        return
    fi
    if [ -d "$app" ]; then
        rm -rf "$prev"
        mv "$app" "$prev"
        info "previous version kept in $PREFIX/app.prev (make rollback)"
    fi
    mv "$new" "$app"
    info "installed from $SRC"
}

setup_venv() {
    step "Python venv in $VENV"
    want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    have=""
    cfgfile=$R$VENV/pyvenv.cfg
    if [ -x "$R$VENV/bin/python" ] && [ -f "$cfgfile" ] &&
        grep -q '^include-system-site-packages *= *true' "$cfgfile"; then
        have=$(sed -n 's/^version[a-z_]* *= *\([0-9]*\.[0-9]*\).*/\1/p' "$cfgfile" | head -n 1)
    fi
    if [ "$have" = "$want" ]; then
        info "reusing it (Python $have, system site packages)"
    else
        # --system-site-packages: Pillow must be Debian's, the one the binding is built for.
        if on_machine; then
            "$PYTHON" -m venv --clear --system-site-packages "$R$VENV"
        else
            "$PYTHON" -m venv --clear --system-site-packages --without-pip "$R$VENV"
        fi
        info "created with Python $want"
    fi
    if ! on_machine || [ "${LOOP_SKIP_PIP:-0}" = 1 ]; then
        info "pip install skipped"
        return
    fi
    # Only multipart and paho-mqtt come from PyPI; Pillow and psutil stay Debian's (a PyPI
    # Pillow in the venv would shadow the one the LED binding reads). paho-mqtt must be 2.x:
    # Debian's python3-paho-mqtt (1.6 on Bookworm), if installed, is shadowed by it.
    spec=$(sed -n 's/[[:space:]]*#.*//; /^multipart\([^A-Za-z0-9_.-]\|$\)/Ip' "$SRC/requirements.txt" 2>/dev/null | head -n 1)
    [ -n "$spec" ] || spec="multipart>=1.3.1"
    mqtt_spec=$(sed -n 's/[[:space:]]*#.*//; /^paho-mqtt\([^A-Za-z0-9_.-]\|$\)/Ip' "$SRC/requirements.txt" 2>/dev/null | head -n 1)
    [ -n "$mqtt_spec" ] || mqtt_spec="paho-mqtt>=2.1,<3"
    "$R$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "$spec" "$mqtt_spec"
    "$R$VENV/bin/python" -c 'import paho.mqtt.client as c; c.CallbackAPIVersion' ||
        warn "paho-mqtt 2.x does not import: LOOP runs, but not its MQTT front"
    "$R$VENV/bin/python" -c 'import PIL, psutil, multipart' ||
        die "the venv cannot import Pillow, psutil and multipart (apt: python3-pil python3-psutil)"
    info "$("$R$VENV/bin/python" -c 'import PIL, psutil, multipart; print("Pillow", PIL.__version__, "from", PIL.__path__[0], "| psutil", psutil.__version__, "| multipart", getattr(multipart, "__version__", "?"))')"
}

build_rgbmatrix() {
    step "LED matrix binding (rgbmatrix)"
    if [ "${LOOP_SKIP_RGBMATRIX:-0}" = 1 ]; then
        info "skipped (LOOP_SKIP_RGBMATRIX=1): the service will run headless"
        return
    fi
    if ! on_machine; then
        info "skipped (staged or DESTDIR)"
        return
    fi
    if ! wants_rgbmatrix; then
        info "skipped: not a Raspberry Pi (set RGBMATRIX_SRC to build anyway); the service runs headless"
        return
    fi
    py=$VENV/bin/python
    pillow=$("$py" -c 'import PIL; print(PIL.__version__)')
    if [ -n "${RGBMATRIX_SRC:-}" ]; then
        src=$RGBMATRIX_SRC
        [ -f "$src/pyproject.toml" ] || die "RGBMATRIX_SRC=$src is not a rpi-rgb-led-matrix checkout with a pyproject.toml"
        stamp="local $src"
    else
        src=$PREFIX/src/rpi-rgb-led-matrix
        stamp="commit=$RGBMATRIX_COMMIT pillow=$pillow python=$("$py" -c 'import sys; print(sys.version.split()[0])')"
        if [ -f "$VENV/rgbmatrix-build" ] && [ "$(cat "$VENV/rgbmatrix-build")" = "$stamp" ] &&
            "$py" -c 'import rgbmatrix' 2>/dev/null; then
            info "up to date ($stamp)"
            return
        fi
        info "fetching $RGBMATRIX_REPO at $RGBMATRIX_COMMIT (that commit only, the files the build needs)"
        RGBMATRIX_REPO=$RGBMATRIX_REPO RGBMATRIX_COMMIT=$RGBMATRIX_COMMIT \
            sh "$SRC/deploy/rgbmatrix.sh" fetch "$src"
    fi
    info "building from $src against Pillow $pillow (10-20 minutes on a Pi Zero 2 W)"
    sh "$SRC/deploy/rgbmatrix.sh" build "$py" "$src"
    "$py" -c 'import rgbmatrix' || die "the rgbmatrix binding was built but does not import"
    # The binding's fast SetImage reads Pillow's C structures: the driver compares this
    # with the Pillow it runs with (sys.prefix/rgbmatrix-pillow-version).
    printf '%s\n' "$pillow" >"$VENV/rgbmatrix-pillow-version"
    printf '%s\n' "$stamp" >"$VENV/rgbmatrix-build"
    info "built; Pillow $pillow recorded in $VENV/rgbmatrix-pillow-version"
}

compile_bytecode() {
    # /opt is read-only to the service (ProtectSystem=strict): compile once here, or a
    # Pi Zero recompiles every module on every start.
    "$R$VENV/bin/python" -m compileall -q "$R$PREFIX/app" >/dev/null ||
        warn "some modules did not compile (see: $VENV/bin/python -m compileall $PREFIX/app)"
}

install_config() {
    step "Config in $CONFDIR"
    dir=$R$CONFDIR
    mkdir -p "$dir"
    chmod 0750 "$dir"
    if [ ! -f "$dir/config.json" ]; then
        cp "$SRC/config.json" "$dir/config.json.tmp"
        chmod 0640 "$dir/config.json.tmp"
        mv -f "$dir/config.json.tmp" "$dir/config.json"
        info "installed config.json (the Pi defaults; edit it, then: systemctl reload loop)"
    elif cmp -s "$SRC/config.json" "$dir/config.json"; then
        rm -f "$dir/config.json.new"
        info "config.json kept (same as the shipped default)"
    else
        cp "$SRC/config.json" "$dir/config.json.new"
        chmod 0640 "$dir/config.json.new"
        info "config.json kept; the shipped default differs and is in config.json.new"
    fi
    if on_machine; then
        chown "root:$LOOP_GROUP" "$dir" "$dir/config.json"
        [ ! -f "$dir/config.json.new" ] || chown "root:$LOOP_GROUP" "$dir/config.json.new"
    fi
    configured=$(config_value "$dir/config.json" system data_dir /var/lib/loop)
    if [ -z "$STAGE" ] && [ "$configured" != "$DATADIR" ]; then
        warn "system.data_dir in config.json is $configured, but the service uses $DATADIR (loop.service passes --data-dir)"
    fi
}

install_datadir() {
    step "Data dir $DATADIR"
    mkdir -p "$R$TMPFILESDIR"
    render "$SRC/deploy/loop.tmpfiles" "$R$TMPFILESDIR/loop.conf" 0644
    if on_machine; then
        systemd-tmpfiles --create "$TMPFILESDIR/loop.conf"
    else
        mkdir -p "$R$DATADIR"
        chmod 2770 "$R$DATADIR"
    fi
    info "owner $LOOP_USER:$LOOP_GROUP, mode 2770 ($TMPFILESDIR/loop.conf); existing media kept"
}

# dtparam=audio=on -> off in config.txt, with a dated backup first.
boot_audio_off() {
    conf=$1
    grep -q '^[[:space:]]*dtparam=audio=on' "$conf" || {
        info "sound already off in $conf"
        return
    }
    if [ "${LOOP_EDIT_BOOT:-1}" = 0 ]; then
        warn "hardware pulsing needs the sound off: change 'dtparam=audio=on' to 'dtparam=audio=off' in $conf, then reboot"
        return
    fi
    backup="$conf.loop-backup-$(date +%Y%m%d-%H%M%S)"
    cp -p "$conf" "$backup"
    sed -e 's/^[[:space:]]*dtparam=audio=on[[:space:]]*$/# LOOP: sound off, its PWM is the LED matrix'"'"'s (was dtparam=audio=on)\ndtparam=audio=off/' \
        "$conf" >"$conf.loop-tmp"
    mv -f "$conf.loop-tmp" "$conf"
    sync
    NEED_REBOOT=1
    warn "changed dtparam=audio=on to off in $conf (backup: $backup); reboot for it to take effect"
}

pi_setup() {
    step "Raspberry Pi setup"
    conf=$R$BOOTDIR/config.txt
    if [ ! -f "$conf" ]; then
        info "no $BOOTDIR/config.txt: not a Raspberry Pi, nothing to do"
        return
    fi
    mkdir -p "$R$TMPFILESDIR" "$R$MODPROBEDIR"
    cp "$SRC/deploy/loop-pi.tmpfiles" "$R$TMPFILESDIR/loop-pi.conf"
    chmod 0644 "$R$TMPFILESDIR/loop-pi.conf"
    if on_machine; then
        systemd-tmpfiles --create "$TMPFILESDIR/loop-pi.conf" ||
            warn "could not apply $TMPFILESDIR/loop-pi.conf now; it applies at the next boot"
    fi
    info "real-time throttling and CPU governor set at boot ($TMPFILESDIR/loop-pi.conf)"

    blacklist=$R$MODPROBEDIR/loop-blacklist-snd.conf
    pulsing_off=$(config_value "$R$CONFDIR/config.json" display disable_hardware_pulsing false)
    if [ "$pulsing_off" = true ]; then
        rm -f "$blacklist"
        info "hardware pulsing is off in config.json: sound may stay on"
    else
        cp "$SRC/deploy/modprobe-loop.conf" "$blacklist"
        chmod 0644 "$blacklist"
        info "snd_bcm2835 blacklisted ($MODPROBEDIR/loop-blacklist-snd.conf): hardware pulsing needs the sound off"
        boot_audio_off "$conf"
        if on_machine && grep -q '^snd_bcm2835 ' /proc/modules 2>/dev/null; then
            modprobe -r snd_bcm2835 2>/dev/null || true
            if grep -q '^snd_bcm2835 ' /proc/modules 2>/dev/null; then
                NEED_REBOOT=1
                warn "snd_bcm2835 is still loaded: reboot before the panel can use hardware pulsing"
            fi
        fi
    fi

    cmdline=$R$BOOTDIR/cmdline.txt
    if [ -f "$cmdline" ] && ! grep -q 'isolcpus=3' "$cmdline"; then
        info "suggested: add ' isolcpus=3' to the single line of $BOOTDIR/cmdline.txt and reboot;"
        info "the LED refresh thread then has core 3 to itself (less flicker under load)"
    fi
}

# loop.service ships valid for the default layout (a plain copy works). Only the lines that
# name a path or the group are rewritten, and only where this install differs; each must be
# there exactly as shipped, so a changed unit cannot be half-rewritten unnoticed.
UNIT_EXEC='ExecStart=/opt/loop/venv/bin/python /opt/loop/app/loop.py --config /etc/loop/config.json --data-dir /var/lib/loop'
UNIT_PATHS='ReadWritePaths=/var/lib/loop'
UNIT_GROUP='SupplementaryGroups=loop'

install_unit() {
    step "systemd unit"
    mkdir -p "$R$UNITDIR"
    for line in "$UNIT_EXEC" "$UNIT_PATHS" "$UNIT_GROUP"; do
        grep -qxF "$line" "$SRC/loop.service" || die "loop.service lacks the shipped line: $line"
    done
    dest=$R$UNITDIR/loop.service
    tmp="$dest.tmp.$$"
    # check_path allows only [A-Za-z0-9._/+-] in the paths: nothing sed would read specially
    sed -e "s|^$(sed_pattern "$UNIT_EXEC")\$|ExecStart=$VENV/bin/python $PREFIX/app/loop.py --config $CONFDIR/config.json --data-dir $DATADIR|" \
        -e "s|^$(sed_pattern "$UNIT_PATHS")\$|ReadWritePaths=$DATADIR|" \
        -e "s|^$(sed_pattern "$UNIT_GROUP")\$|SupplementaryGroups=$LOOP_GROUP|" \
        "$SRC/loop.service" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dest"
    if cmp -s "$SRC/loop.service" "$dest"; then
        info "$UNITDIR/loop.service (as shipped: the default layout)"
    else
        info "$UNITDIR/loop.service (paths and group of this install)"
    fi
    install_framebuffer_dropin
}

# A fixed line as a basic regular expression: its dots matched as dots.
sed_pattern() { printf '%s' "$1" | sed -e 's/[.]/\\./g'; }

# The unit's sandbox opens only /dev/mem and /dev/gpiomem (DevicePolicy=closed) and keeps
# /sys read-only (ProtectKernelTunables=yes). With display.driver "framebuffer" a drop-in
# allows exactly the framebuffer device and the brightness file of the backlight(s) LOOP may
# dim; with any other driver it is removed. Backlights are looked up now (in the stage's
# sys/ for a staged install): enable the LCD's overlay and reboot before `make install`, or
# run it again afterwards.
install_framebuffer_dropin() {
    dropdir=$R$UNITDIR/loop.service.d
    conf=$dropdir/framebuffer.conf
    cfg=$R$CONFDIR/config.json
    [ -f "$cfg" ] || cfg=$SRC/config.json
    driver=$(config_value "$cfg" display driver auto)
    if [ "$driver" != framebuffer ]; then
        if [ -e "$conf" ]; then
            rm -f "$conf"
            rmdir "$dropdir" 2>/dev/null || true
            info "removed the framebuffer drop-in (display.driver is $driver)"
        fi
        return
    fi
    device=$(config_value "$cfg" display framebuffer_device /dev/fb1)
    check_path display.framebuffer_device "$device"
    wanted=$(config_value "$cfg" display framebuffer_backlight auto)
    lights=""
    if [ -n "$DESTDIR" ]; then
        warn "DESTDIR: the target's backlights are unknown here; LOOP scales brightness in software unless a drop-in allows one"
    elif [ "$wanted" != none ]; then
        for dir in "$STAGE"/sys/class/backlight/*; do
            [ -e "$dir/brightness" ] || continue
            name=${dir##*/}
            [ "$wanted" = auto ] || [ "$wanted" = "$name" ] || continue
            # sysfs links into /sys/devices; the sandbox needs the real file
            file=$(readlink -f "$dir/brightness")
            file=${file#"$STAGE"}
            case $file in
                /sys/*) ;;
                *) warn "skipping backlight $name: $file is not under /sys"; continue ;;
            esac
            check_path "backlight $name" "$file"
            lights="$lights $file"
        done
        [ -n "$lights" ] || info "no backlight found in /sys/class/backlight: brightness is scaled in software"
    fi
    mkdir -p "$dropdir"
    tmp="$conf.tmp.$$"
    {
        echo "# Written by make install because display.driver is \"framebuffer\" (removed when"
        echo "# it is not): the framebuffer and the backlight LOOP dims, opened before it drops root."
        echo "[Service]"
        echo "DeviceAllow=$device rw"
        for file in $lights; do
            echo "ReadWritePaths=-$file"
        done
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$conf"
    info "framebuffer drop-in $UNITDIR/loop.service.d/framebuffer.conf: $device${lights:+, backlight$lights}"
}

start_service() {
    step "Start"
    if ! on_machine; then
        info "skipped (staged or DESTDIR): no systemctl daemon-reload, enable, restart"
        return
    fi
    if ! have_systemd; then
        warn "systemd is not running here: start it by hand with $VENV/bin/python $PREFIX/app/loop.py --config $CONFDIR/config.json --data-dir $DATADIR"
        return
    fi
    systemctl daemon-reload
    systemctl enable --quiet loop.service
    systemctl reset-failed loop.service 2>/dev/null || true
    if ! systemctl restart loop.service; then
        systemctl status --no-pager --lines=0 loop.service >&2 || true
        journalctl -u loop.service -n 30 --no-pager >&2 || true
        die "loop.service did not start (see above; logs: journalctl -u loop)"
    fi
    health_check
}

health_check() {
    cfg=$CONFDIR/config.json
    port=$(config_value "$cfg" web port 80)
    host=$(config_value "$cfg" web host 0.0.0.0)
    case $host in
        '' | 0.0.0.0 | :: | '[::]') check_host=127.0.0.1 ;;
        *:*) check_host="[$host]" ;;
        *) check_host=$host ;;
    esac
    url="http://$check_host:$port/api/poll/health"
    info "waiting for $url"
    if ! "$PYTHON" -I - "$url" "${LOOP_HEALTH_TIMEOUT:-60}" <<'EOF'; then
import json, sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        if body.get("success"):
            print("    health:", (body.get("data") or {}).get("status", "ok"))
            sys.exit(0)
    except (OSError, ValueError):
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(1)
EOF
        journalctl -u loop.service -n 30 --no-pager >&2 || true
        die "no answer from $url (logs: journalctl -u loop)"
    fi
    suffix=""
    [ "$port" = 80 ] || suffix=":$port"
    ip=$(hostname -I 2>/dev/null | cut -d ' ' -f 1)
    echo
    echo "LOOP is running. Open http://$(hostname).local$suffix/${ip:+  or  http://$ip$suffix/}"
}

summary() {
    step "Done"
    info "app:    $PREFIX/app   (previous: $PREFIX/app.prev)"
    info "config: $CONFDIR/config.json   data: $DATADIR"
    info "logs:   journalctl -u loop -f"
    if [ "${NEED_REBOOT:-0}" = 1 ]; then
        warn "reboot needed for the Pi setup above (sudo reboot)"
    fi
}

do_install() {
    install_packages
    create_user
    install_app
    setup_venv
    build_rgbmatrix
    compile_bytecode
    install_config
    install_datadir
    pi_setup
    install_unit
    start_service
    summary
}

# ---------------------------------------------------------------- rollback, uninstall

do_rollback() {
    step "Rollback in $PREFIX"
    app=$R$PREFIX/app
    prev=$R$PREFIX/app.prev
    [ -d "$prev" ] || die "no previous version in $PREFIX/app.prev to roll back to"
    [ -d "$app" ] || die "no current version in $PREFIX/app"
    rm -rf "$R$PREFIX/app.swap"
    mv "$app" "$R$PREFIX/app.swap"
    mv "$prev" "$app"
    mv "$R$PREFIX/app.swap" "$prev"
    info "previous version restored; the one replaced is now app.prev (rollback again to undo)"
    info "config and media are not touched"
    if on_machine && have_systemd; then
        if ! systemctl restart loop.service; then
            journalctl -u loop.service -n 30 --no-pager >&2 || true
            die "loop.service did not start after the rollback"
        fi
        health_check
    fi
}

do_uninstall() {
    step "Uninstall"
    if on_machine && have_systemd; then
        if systemctl cat loop.service >/dev/null 2>&1; then
            systemctl disable --now --quiet loop.service || true
        fi
    fi
    rm -f "$R$UNITDIR/loop.service" "$R$TMPFILESDIR/loop.conf" \
        "$R$TMPFILESDIR/loop-pi.conf" "$R$MODPROBEDIR/loop-blacklist-snd.conf" \
        "$R$UNITDIR/loop.service.d/framebuffer.conf"
    rmdir "$R$UNITDIR/loop.service.d" 2>/dev/null || true
    if on_machine && have_systemd; then
        systemctl daemon-reload
        systemctl reset-failed loop.service 2>/dev/null || true
    fi
    info "removed the unit, tmpfiles and modprobe entries"

    check_removable PREFIX "$PREFIX"
    if [ -d "$R$PREFIX" ]; then
        if [ -e "$R$PREFIX/app" ] || [ -e "$R$PREFIX/venv" ] || [ -e "$R$PREFIX/app.prev" ]; then
            rm -rf "$R$PREFIX"
            info "removed $PREFIX"
        else
            warn "$PREFIX does not look like a LOOP install (no app/ or venv/): left alone"
        fi
    fi

    if [ "${PURGE:-0}" = 1 ]; then
        check_removable LOOP_DATADIR "$DATADIR"
        check_removable LOOP_CONFDIR "$CONFDIR"
        rm -rf "$R$DATADIR" "$R$CONFDIR"
        info "PURGE=1: removed $DATADIR and $CONFDIR"
        if on_machine && getent passwd "$LOOP_USER" >/dev/null; then
            userdel "$LOOP_USER" || warn "could not remove the user $LOOP_USER"
            info "removed the user $LOOP_USER"
        fi
    else
        info "kept $DATADIR (media) and $CONFDIR (config); PURGE=1 removes them too"
    fi
    info "apt packages stay installed; $BOOTDIR/config.txt is not reverted (backups: config.txt.loop-backup-*)"
}

main() {
    parse_args "$@"
    resolve_settings
    preflight
    case $ACTION in
        install) do_install ;;
        rollback) do_rollback ;;
        uninstall) do_uninstall ;;
    esac
}

main "$@"
