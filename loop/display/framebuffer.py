"""The `framebuffer` driver: any Linux framebuffer device, e.g. /dev/fb1 from the kernel's
fbtft or mipi-dbi overlays for an ILI9341 SPI LCD, or /dev/fb0 for HDMI.

What the device is comes from sysfs, /sys/class/graphics/fbN/: `virtual_size` ("320,240"),
`bits_per_pixel` (16 or 32), `stride` (bytes per line, rows may be padded), `name`, and `modes`
when the driver lists one (a virtual size taller than the visible mode means the driver
allocated room for panning; LOOP draws at the top). 16 bpp is RGB565, 32 bpp XRGB8888 (BGRX
bytes); on a real device the channel offsets are confirmed with the FBIOGET_VSCREENINFO ioctl.

Frames are stored at render time in the device's own pixel format and already turned by
`display.rotation` (see loop/media/pixels.py), so `show()` only copies rows into the `mmap`ed
device, stepping over the stride's padding. The driver's `width` x `height` is the picture's
size, the device's size turned by the rotation: that is what media is fitted to.

Brightness goes to /sys/class/backlight/<name>/brightness (scaled to its `max_brightness`)
when the panel has a backlight there, opened once at open() so it still works after LOOP drops
root; 0 turns the backlight off. A backlight with fewer than two levels is no dimmer: fbtft
registers one with `max_brightness` 0 for `led_pin` (nothing to set: software only), a GPIO
backlight has `max_brightness` 1 (a switch: 0 turns it off, anything else on, and the pixels
are scaled in software below 100 %). Without a usable one, brightness is applied in software:
at 100 % a frame is a plain copy, below 100 % every frame costs one extra Pillow pass
(pixels.scale: about 1.3 ms for 320x240 RGB565 on one desktop x86 core, several times that on
a Pi Zero 2 W; the self-test's frame-write time includes it) and a frame-sized buffer, and the
unscaled current frame is kept so a brightness change can redraw it; 0 blanks the screen.

`root` ("/" in production) is prepended to every path, /dev and /sys alike, so tests run the
whole driver against a fake tree: a regular file stands in for the device (accepted only when
root is not "/") and plain files for the sysfs attributes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field

from loop.display.base import FAIL, PASS, SKIP, Check, DisplayError, Driver, check_percent
from loop.media import pixels

logger = logging.getLogger("loop.framebuffer")

FB_MAJOR = 29  # include/uapi/linux/major.h
MAX_SIDE = 8192
FORMATS = {16: "RGB565", 32: "BGRX"}
# struct fb_bitfield offsets/lengths (red, green, blue) each format needs.
LAYOUTS = {"RGB565": ((11, 5), (5, 6), (0, 5)), "BGRX": ((16, 8), (8, 8), (0, 8))}
FBIOGET_VSCREENINFO = 0x4600
_VSCREENINFO = struct.Struct("<8I12I")  # xres..grayscale, then red/green/blue/transp
_VSCREENINFO_SIZE = 160  # the whole struct fb_var_screeninfo
OVERLAY_HINT = ("enable the panel's overlay in /boot/firmware/config.txt (for an ILI9341: "
                "dtoverlay=fbtft,spi0-0,ili9341,... or dtoverlay=mipi-dbi-spi,...; see "
                "docs/raspberry-pi.md) and reboot; `cat /sys/class/graphics/fb*/name` lists "
                "the framebuffers; then set display.framebuffer_device")


def under(root: str, path: str) -> str:
    """`path` (absolute, as configured) inside the tree `root`."""
    return os.path.join(root, path.lstrip("/"))


@dataclass(frozen=True)
class FbInfo:
    """One framebuffer as sysfs (and the ioctl, when there is one) describes it."""

    name: str  # fb1
    label: str  # the kernel driver's name for it, e.g. fb_ili9341
    width: int  # device pixels per row (before rotation)
    height: int
    bits_per_pixel: int
    stride: int  # bytes from one row to the next
    offset: int = 0  # byte offset of the visible area (panning), from the ioctl

    @property
    def pixel_format(self) -> str | None:
        return FORMATS.get(self.bits_per_pixel)

    @property
    def row_bytes(self) -> int:
        return self.width * self.bits_per_pixel // 8

    @property
    def map_size(self) -> int:
        return self.offset + self.stride * self.height


@dataclass(frozen=True)
class Backlight:
    name: str
    path: str  # .../brightness inside root
    max_brightness: int

    @property
    def dims(self) -> bool:
        """More than on and off: brightness between them can be set."""
        return self.max_brightness >= 2


@dataclass
class Probe:
    """Everything the pre-flight found: the checks, and what the driver needs to open."""

    device: str  # the device path inside root
    checks: list[Check] = field(default_factory=list)
    info: FbInfo | None = None
    backlight: Backlight | None = None

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read(4096).strip()


def _ints(text: str, count: int, path: str) -> list[int]:
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"{path} holds {text!r}, not {count} number(s)")
    return values


# ---- pre-flight -----------------------------------------------------------------------------

def _device_check(cfg, root: str) -> tuple[Check, str | None, bool]:
    """(check, fbN name, is a real character device)."""
    configured = cfg.framebuffer_device
    path = under(root, configured)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check("framebuffer_device", FAIL, f"{configured} does not exist",
                     OVERLAY_HINT), None, False
    except OSError as exc:
        return Check("framebuffer_device", FAIL, f"cannot stat {configured}: "
                     f"{exc.strerror}", OVERLAY_HINT), None, False
    if stat.S_ISCHR(st.st_mode):
        if os.major(st.st_rdev) != FB_MAJOR:
            return Check("framebuffer_device", FAIL,
                         f"{configured} is a character device {os.major(st.st_rdev)}:"
                         f"{os.minor(st.st_rdev)}, not a framebuffer (major {FB_MAJOR})",
                         "set display.framebuffer_device to a /dev/fbN"), None, False
        name = f"fb{os.minor(st.st_rdev)}"
        return Check("framebuffer_device", PASS, f"{configured} ({name})"), name, True
    name = os.path.basename(os.path.realpath(path))
    if root not in ("/", "") and stat.S_ISREG(st.st_mode) and re.fullmatch(r"fb\d+", name):
        return Check("framebuffer_device", PASS, f"{configured} (a file standing in for "
                     f"{name})"), name, False
    return Check("framebuffer_device", FAIL,
                 f"{configured} is not a framebuffer device (not a character device)",
                 "set display.framebuffer_device to a /dev/fbN"), None, False


def _read_info(root: str, name: str) -> FbInfo:
    """The geometry from sysfs; ValueError/OSError name the file that is wrong."""
    base = under(root, f"/sys/class/graphics/{name}")
    values = {}
    for attr, count in (("virtual_size", 2), ("bits_per_pixel", 1), ("stride", 1)):
        path = os.path.join(base, attr)
        try:
            text = _read_text(path)
        except OSError as exc:
            raise OSError(f"cannot read /sys/class/graphics/{name}/{attr}: "
                          f"{exc.strerror or exc}") from None
        values[attr] = _ints(text, count, f"/sys/class/graphics/{name}/{attr}")
    width, height = values["virtual_size"]
    label = ""
    with contextlib.suppress(OSError):
        label = _read_text(os.path.join(base, "name"))
    with contextlib.suppress(OSError):
        # "U:320x240p-0": the visible mode, when the driver lists one.
        match = re.search(r"(\d+)x(\d+)", _read_text(os.path.join(base, "modes")))
        if match and 0 < int(match.group(1)) <= width and 0 < int(match.group(2)) <= height:
            width, height = int(match.group(1)), int(match.group(2))
    return FbInfo(name, label, width, height, values["bits_per_pixel"][0],
                  values["stride"][0])


def _vscreeninfo(path: str) -> tuple | None:
    """The kernel's fb_var_screeninfo of a real device, or None when it cannot be asked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = fcntl.ioctl(fd, FBIOGET_VSCREENINFO, bytes(_VSCREENINFO_SIZE))
        return _VSCREENINFO.unpack_from(raw)
    except OSError:
        return None
    finally:
        os.close(fd)


def _format_check(info: FbInfo, var: tuple | None) -> Check:
    fmt = info.pixel_format
    if fmt is None:
        return Check("pixel_format", FAIL,
                     f"{info.bits_per_pixel} bits per pixel is not supported (16 = RGB565 "
                     "and 32 = XRGB8888 are)",
                     "switch the framebuffer to 16 or 32 bits per pixel (the overlay's bpp "
                     "parameter, or fbset -depth 16)")
    if var is None:
        return Check("pixel_format", PASS, f"{info.bits_per_pixel} bpp: {fmt}")
    grayscale = var[7]
    fields = tuple((var[8 + 3 * i], var[9 + 3 * i]) for i in range(3))
    if grayscale or fields != LAYOUTS[fmt]:
        shown = ", ".join(f"{c} at bit {o} ({n} bits)" for c, (o, n) in
                          zip(("red", "green", "blue"), fields))
        return Check("pixel_format", FAIL,
                     f"the device's {info.bits_per_pixel} bpp layout is {shown}"
                     f"{' (grayscale)' if grayscale else ''}; LOOP writes {fmt}",
                     "configure the framebuffer for RGB565 (16 bpp) or XRGB8888 (32 bpp)")
    return Check("pixel_format", PASS, f"{info.bits_per_pixel} bpp: {fmt} (checked with "
                 "FBIOGET_VSCREENINFO)")


def _geometry_check(info: FbInfo, path: str, real_device: bool) -> Check:
    bpp = info.bits_per_pixel
    if not (0 < info.width <= MAX_SIDE and 0 < info.height <= MAX_SIDE):
        return Check("geometry", FAIL, f"{info.name} reports {info.width}x{info.height} "
                     f"pixels (1..{MAX_SIDE} each)",
                     "check the overlay's width and height parameters")
    if bpp in FORMATS and info.stride < info.row_bytes:
        return Check("geometry", FAIL, f"{info.name}'s stride of {info.stride} bytes is "
                     f"shorter than a row of {info.width} pixels at {bpp} bpp "
                     f"({info.row_bytes} bytes)", "the kernel driver reports a broken "
                     "geometry; check the overlay's parameters")
    if not real_device:
        size = os.stat(path).st_size
        if size < info.map_size:
            return Check("geometry", FAIL, f"the file standing in for {info.name} has "
                         f"{size} bytes, less than {info.height} rows of {info.stride} "
                         f"({info.map_size})", "make the stand-in file large enough")
    padding = f", {info.stride - info.row_bytes} bytes of row padding" \
        if info.stride > info.row_bytes else ""
    return Check("geometry", PASS, f"{info.width}x{info.height} pixels, {bpp} bpp, stride "
                 f"{info.stride} bytes{padding}")


def _size_check(cfg, info: FbInfo) -> Check:
    rotation = cfg.rotation
    width, height = pixels.turned(info.width, info.height, rotation)
    want_w, want_h = cfg.framebuffer_width, cfg.framebuffer_height
    turned = f" turned {rotation}°" if rotation else ""
    if (not want_w or want_w == width) and (not want_h or want_h == height):
        source = "as configured" if want_w or want_h else "as the device reports"
        return Check("panel_size", PASS, f"picture {width}x{height} ({info.name} "
                     f"{info.width}x{info.height}{turned}; {source})")
    wanted = f"{want_w or width}x{want_h or height}"
    other = (90 if rotation in (0, 180) else 0)
    other_w, other_h = pixels.turned(info.width, info.height, other)
    if (not want_w or want_w == other_w) and (not want_h or want_h == other_h):
        fix = (f"set display.rotation to {other} or {other + 180} (the picture is {wanted} "
               f"only when the {info.width}x{info.height} device is turned)")
    else:
        fix = ("set display.framebuffer_width and framebuffer_height to 0 (take the "
               "device's size) or to the panel's size, and check the overlay's width/height")
    return Check("panel_size", FAIL,
                 f"display.framebuffer_width/height ask for {wanted}, but {info.name} is "
                 f"{info.width}x{info.height} and display.rotation {rotation} makes it "
                 f"{width}x{height}", fix)


def _may_write(path: str, euid: int) -> bool:
    """Could this process open `path` for writing?

    As root it is judged by the permission bits, as if root had no CAP_DAC_OVERRIDE, because
    that is how the systemd unit runs LOOP (its capability set has no DAC override): root
    still passes as the owner of /dev/fbN and of a backlight's brightness file."""
    if euid != 0:
        if os.access in os.supports_effective_ids:
            return os.access(path, os.R_OK | os.W_OK, effective_ids=True)
        return os.access(path, os.R_OK | os.W_OK)
    st = os.stat(path)
    if st.st_uid == 0:
        bits = stat.S_IRUSR | stat.S_IWUSR
    elif st.st_gid in (os.getegid(), *os.getgroups()):
        bits = stat.S_IRGRP | stat.S_IWGRP
    else:
        bits = stat.S_IROTH | stat.S_IWOTH
    return st.st_mode & bits == bits


def _writable_check(cfg, path: str, euid: int) -> Check:
    if _may_write(path, euid):
        return Check("writable", PASS, f"{cfg.framebuffer_device} can be opened read-write")
    who = "root (without CAP_DAC_OVERRIDE, as the service runs)" if euid == 0 \
        else f"uid {euid}"
    return Check("writable", FAIL, f"{cfg.framebuffer_device} cannot be opened read-write "
                 f"by {who}", "run LOOP as root (the systemd unit does, and drops to the "
                 "service user after opening the panel), or add the user to the video group")


def find_backlight(setting: str, root: str, fb_label: str = "") -> tuple[Backlight | None, str]:
    """(the backlight to use or None, why). `setting`: "auto", "none" or a name.

    auto takes the only backlight there is, or among several the one named like the
    framebuffer's driver (fbtft names it so); otherwise none, with a reason."""
    if setting == "none":
        return None, "display.framebuffer_backlight is none"
    base = under(root, "/sys/class/backlight")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    if setting != "auto":
        if setting not in names:
            raise LookupError(f"there is no backlight {setting!r} in /sys/class/backlight"
                              f" (found: {', '.join(names) or 'none'})")
        chosen = setting
    elif not names:
        return None, "the panel has no backlight in /sys/class/backlight"
    elif len(names) == 1:
        chosen = names[0]
    elif fb_label in names:
        chosen = fb_label
    else:
        return None, (f"several backlights ({', '.join(names)}) and none is named like the "
                      "framebuffer; set display.framebuffer_backlight to the right one")
    folder = os.path.join(base, chosen)
    try:
        (most,) = _ints(_read_text(os.path.join(folder, "max_brightness")), 1,
                        f"/sys/class/backlight/{chosen}/max_brightness")
    except (OSError, ValueError) as exc:
        raise LookupError(f"backlight {chosen}: cannot read max_brightness ({exc})") from None
    if most < 1:  # fbtft's led_pin backlight: registered, but nothing to set
        return None, (f"backlight {chosen} has no brightness levels (max_brightness {most})")
    return Backlight(chosen, os.path.join(folder, "brightness"), most), ""


def _backlight_check(cfg, root: str, info: FbInfo, euid: int) -> tuple[Check, Backlight | None]:
    software = "brightness is scaled in software (one extra pass per frame below 100 %)"
    try:
        light, why = find_backlight(cfg.framebuffer_backlight, root, info.label)
    except LookupError as exc:
        return Check("backlight", FAIL, str(exc),
                     "set display.framebuffer_backlight to auto, none or one of the names "
                     "in /sys/class/backlight"), None
    if light is None:
        return Check("backlight", SKIP, f"{why}: {software}"), None
    if not os.path.exists(light.path) or not _may_write(light.path, euid):
        return Check("backlight", SKIP,
                     f"/sys/class/backlight/{light.name}/brightness cannot be written: "
                     f"{software}",
                     "run as root; under systemd `make install` adds a loop.service.d "
                     "drop-in that allows it (re-run it after enabling the overlay)"), None
    if not light.dims:
        return Check("backlight", PASS, f"/sys/class/backlight/{light.name} is on or off only "
                     f"(max_brightness {light.max_brightness}): it switches the light, and "
                     f"{software}"), light
    return Check("backlight", PASS, f"/sys/class/backlight/{light.name} (0..."
                 f"{light.max_brightness})"), light


def probe(display_cfg, *, root: str = "/", euid: int | None = None) -> Probe:
    """Every check that stands between this config and a working framebuffer."""
    euid = os.geteuid() if euid is None else euid
    result = Probe(under(root, display_cfg.framebuffer_device))
    check, name, real_device = _device_check(display_cfg, root)
    result.checks.append(check)
    rest = ("framebuffer_sysfs", "pixel_format", "geometry", "panel_size", "writable",
            "backlight")
    if name is None:
        result.checks += [Check(n, SKIP, "no framebuffer device") for n in rest]
        return result
    try:
        info = _read_info(root, name)
    except (OSError, ValueError) as exc:
        result.checks.append(Check("framebuffer_sysfs", FAIL, str(exc),
                                   "the kernel registers these for every framebuffer: is "
                                   "display.framebuffer_device the right device?"))
        result.checks += [Check(n, SKIP, "no geometry from sysfs") for n in rest[1:]]
        return result
    var = _vscreeninfo(result.device) if real_device else None
    if var is not None and info.bits_per_pixel in FORMATS:
        xoffset, yoffset = var[4], var[5]
        info = FbInfo(info.name, info.label, info.width, info.height, info.bits_per_pixel,
                      info.stride, yoffset * info.stride + xoffset * info.bits_per_pixel // 8)
    result.checks.append(Check("framebuffer_sysfs", PASS,
                               f"/sys/class/graphics/{name} ({info.label or 'unnamed'})"))
    result.checks.append(_format_check(info, var))
    result.checks.append(_geometry_check(info, result.device, real_device))
    result.checks.append(_size_check(display_cfg, info))
    result.checks.append(_writable_check(display_cfg, result.device, euid))
    check, light = _backlight_check(display_cfg, root, info, euid)
    result.checks.append(check)
    result.info, result.backlight = info, light
    return result


def preflight(display_cfg, *, root: str = "/", euid: int | None = None) -> list[Check]:
    return probe(display_cfg, root=root, euid=euid).checks


# ---- the driver -----------------------------------------------------------------------------

def _write_attr(fd: int, value: int) -> None:
    data = f"{value}\n".encode("ascii")
    os.pwrite(fd, data, 0)
    with contextlib.suppress(OSError):  # a plain file in tests; sysfs ignores the size
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, len(data))


class FramebufferDriver(Driver):
    """A Linux framebuffer, mmap'ed. Width/height are the picture's (after rotation)."""

    name = "framebuffer"

    def __init__(self, display_cfg, *, root: str = "/", euid: int | None = None):
        width, height = display_cfg.framebuffer_width, display_cfg.framebuffer_height
        super().__init__(width or 1, height or 1)
        self.cfg = display_cfg
        self.root = root
        self.euid = euid
        self.rotation = display_cfg.rotation
        self.brightness = display_cfg.brightness
        self.info: FbInfo | None = None
        self.backlight: Backlight | None = None
        self.checks: list[Check] = []
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._light_fd: int | None = None
        # The unscaled current frame, kept only while the device does not hold it as is
        # (software brightness below 100 %).
        self._source: bytes | None = None

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * pixels.bytes_per_pixel(self.pixel_format)

    @property
    def brightness_mode(self) -> str:
        if self._light_fd is None:
            return "software"
        return "backlight" if self.backlight.dims else "backlight switch and software"

    @property
    def _scales_in_software(self) -> bool:
        return self._light_fd is None or not self.backlight.dims

    # -- open / close ----------------------------------------------------------------------
    def open(self) -> None:
        """Pre-flight, map the device, open the backlight; DisplayError with the reason."""
        if self._map is not None:
            return
        found = probe(self.cfg, root=self.root, euid=self.euid)
        self.checks = found.checks
        failed = [c for c in found.checks if c.status == FAIL]
        if failed:
            raise DisplayError("framebuffer pre-flight failed: " + "; ".join(
                f"{c.reason} (fix: {c.fix})" if c.fix else c.reason for c in failed))
        info = found.info
        try:
            fd = os.open(found.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise DisplayError(f"cannot open {self.cfg.framebuffer_device}: "
                               f"{exc.strerror or exc}") from exc
        try:
            mapped = mmap.mmap(fd, info.map_size, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise DisplayError(f"cannot map {info.map_size} bytes of "
                               f"{self.cfg.framebuffer_device}: {exc}") from exc
        self._fd, self._map, self.info = fd, mapped, info
        self.pixel_format = info.pixel_format
        self.width, self.height = pixels.turned(info.width, info.height, self.rotation)
        if found.backlight is not None:
            try:
                self._light_fd = os.open(found.backlight.path, os.O_WRONLY | os.O_CLOEXEC)
                self.backlight = found.backlight
            except OSError as exc:
                logger.warning("backlight %s cannot be opened (%s); brightness is scaled in "
                               "software", found.backlight.name, exc.strerror or exc)
        self._blank()

    def close(self) -> None:
        """Blank the screen and let go of the device and the backlight."""
        mapped, self._map = self._map, None
        if mapped is not None:
            try:
                self._blank(mapped)
            except Exception:  # a failed device must not stop a shutdown
                logger.exception("blanking the framebuffer at close failed")
            with contextlib.suppress(BufferError, ValueError):
                mapped.close()
        for attr in ("_fd", "_light_fd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._source = None

    def _require_open(self) -> mmap.mmap:
        if self._map is None:
            raise DisplayError("the framebuffer driver is not open")
        return self._map

    # -- frames ----------------------------------------------------------------------------
    def _blit(self, data, mapped: mmap.mmap | None = None) -> None:
        """Copy a stored frame into the device row by row, leaving the row padding alone."""
        mapped = mapped if mapped is not None else self._require_open()
        info = self.info
        row, stride, base = info.row_bytes, info.stride, info.offset
        with memoryview(data) as view:
            if stride == row:
                mapped[base:base + row * info.height] = view
                return
            for y in range(info.height):
                start = base + y * stride
                mapped[start:start + row] = view[y * row:(y + 1) * row]

    def _blank(self, mapped: mmap.mmap | None = None) -> None:
        self._blit(bytes(self.info.row_bytes * self.info.height), mapped)

    def _read_back(self) -> bytes:
        mapped, info = self._require_open(), self.info
        return b"".join(mapped[info.offset + y * info.stride:
                               info.offset + y * info.stride + info.row_bytes]
                        for y in range(info.height))

    def _scaled(self, data, percent: int) -> bytes:
        return pixels.scale(data, self.info.width, self.info.height, self.pixel_format,
                            percent)

    def show(self, frame) -> None:
        """Copy one stored frame (the device's format, already turned) into the device.

        Errors from the device propagate: the player's circuit breaker counts them."""
        self._require_open()
        with memoryview(frame) as view:
            if view.nbytes != self.frame_bytes:
                raise ValueError(f"frame has {view.nbytes} bytes; the framebuffer needs "
                                 f"{self.frame_bytes} ({self.width}x{self.height} "
                                 f"{self.pixel_format})")
            if self._scales_in_software and self.brightness < 100:
                self._source = view.tobytes()
                if self.brightness > 0:
                    self._blit(self._scaled(self._source, self.brightness))
            else:
                self._source = None  # the device holds the frame as it is
                self._blit(view)
        self.frames_shown += 1

    def set_brightness(self, percent: int) -> None:
        """Backlight when there is one (0 = off); redraw the current frame scaled when there
        is none, or when it only switches."""
        percent = check_percent(percent)
        self._require_open()
        previous, self.brightness = self.brightness, percent
        if self._light_fd is not None:
            most = self.backlight.max_brightness
            level = 0 if percent == 0 else max(1, round(percent * most / 100))
            _write_attr(self._light_fd, level)
            if self.backlight.dims:
                return
        if self._source is None and previous == 100:
            self._source = self._read_back()  # the device held it unscaled
        if self._source is None:
            return
        if percent == 0:
            self._blank()
        elif percent == 100:
            self._blit(self._source)
            self._source = None
        else:
            self._blit(self._scaled(self._source, percent))

    def clear(self) -> None:
        """Blank the screen and forget the frame (a brightness change must not bring it
        back)."""
        self._require_open()
        self._source = None
        self._blank()


__all__ = ["Backlight", "FbInfo", "FramebufferDriver", "Probe", "find_backlight", "preflight",
           "probe", "under"]
