"""The framebuffer driver against a fake tree: a regular file stands in for /dev/fbN and plain
files for /sys/class/graphics/fbN and /sys/class/backlight (issue 11)."""

from __future__ import annotations

import errno
import io
import os
import struct
from pathlib import Path

import pytest
from conftest import Client, gif_bytes, wait_for
from PIL import Image

from loop.config import build
from loop.display import framebuffer
from loop.display.base import DisplayError
from loop.display.factory import open_driver
from loop.media import pixels
from loop.media.frames import FrameFile
from loop.media.geometry import Target
from loop.media.pixels import frame_image, to_pixels
from loop.media.render import render as render_upload

PAD = 0xAA  # what the stand-in device is filled with: row padding must keep it


def fake_fb(tmp_path: Path, *, width=320, height=240, bpp=16, stride=None, name="fb1",
            label="fb_ili9341", backlight: tuple[str, int] | None = ("fb_ili9341", 255),
            modes: str | None = None, size: int | None = None) -> str:
    """A fake / with dev/<name> (a file of PAD bytes) and its sysfs attributes."""
    root = tmp_path / "root"
    stride = width * bpp // 8 if stride is None else stride
    (root / "dev").mkdir(parents=True, exist_ok=True)
    (root / "dev" / name).write_bytes(bytes([PAD]) * (stride * height if size is None
                                                      else size))
    sysfs = root / "sys" / "class" / "graphics" / name
    sysfs.mkdir(parents=True, exist_ok=True)
    (sysfs / "virtual_size").write_text(f"{width},{height}\n")
    (sysfs / "bits_per_pixel").write_text(f"{bpp}\n")
    (sysfs / "stride").write_text(f"{stride}\n")
    (sysfs / "name").write_text(label + "\n")
    if modes is not None:
        (sysfs / "modes").write_text(modes)
    if backlight:
        light = root / "sys" / "class" / "backlight" / backlight[0]
        light.mkdir(parents=True, exist_ok=True)
        (light / "max_brightness").write_text(f"{backlight[1]}\n")
        (light / "brightness").write_text(f"{backlight[1]}\n")
    return str(root)


def cfg(**keys):
    keys.setdefault("driver", "framebuffer")
    return build({"display": keys}).display


def opened(root: str, **keys) -> framebuffer.FramebufferDriver:
    driver = framebuffer.FramebufferDriver(cfg(**keys), root=root)
    driver.open()
    return driver


def device(root: str, name: str = "fb1") -> bytes:
    return Path(root, "dev", name).read_bytes()


def brightness_file(root: str, name: str = "fb_ili9341") -> str:
    return Path(root, "sys/class/backlight", name, "brightness").read_text()


def rgb565(r: int, g: int, b: int) -> int:
    return ((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (8, 4, 8),
           (123, 45, 67), (0, 0, 0), (200, 100, 50), (16, 32, 48), (255, 128, 1),
           (1, 2, 3), (90, 180, 240)]


def palette_image(width=4, height=3) -> Image.Image:
    img = Image.new("RGB", (width, height))
    for i in range(width * height):
        img.putpixel((i % width, i // width), COLOURS[i % len(COLOURS)])
    return img


# ---- pixel formats ------------------------------------------------------------------------

def test_rgb565_is_little_endian_red_high_and_round_trips():
    data = pixels.encode(palette_image(), "RGB565")
    assert struct.unpack("<12H", data) == tuple(rgb565(*c) for c in COLOURS)
    assert data[:2] == b"\x00\xf8"  # pure red: low byte 0x00, high byte 0xF8
    back = pixels.decode(data, 4, 3, "RGB565")
    for i, (r, g, b) in enumerate(COLOURS):
        got = back.getpixel((i % 4, i // 4))
        # 5/6/5 bits survive; the low bits are refilled from the top ones
        assert (got[0] >> 3, got[1] >> 2, got[2] >> 3) == (r >> 3, g >> 2, b >> 3)
    assert back.getpixel((3, 0)) == (255, 255, 255)


def test_bgrx_is_blue_green_red_zero_and_round_trips():
    data = pixels.encode(palette_image(), "BGRX")
    assert data[:8] == bytes([0, 0, 255, 0, 0, 255, 0, 0])
    assert pixels.decode(data, 4, 3, "BGRX").tobytes() == palette_image().tobytes()


@pytest.mark.parametrize("rotation, corner", [(0, (0, 0)), (90, (2, 0)), (180, (3, 2)),
                                              (270, (0, 3))])
def test_rotation_turns_the_picture_clockwise(rotation, corner):
    # a 4x3 picture turned 90/270 is 3x4 on the device; its top-left pixel moves to `corner`
    img = Image.new("RGB", (4, 3))
    img.putpixel((0, 0), (255, 0, 0))
    dev_w, dev_h = pixels.turned(4, 3, rotation)
    data = pixels.encode(img, "RGB24", rotation)
    stored = Image.frombytes("RGB", (dev_w, dev_h), data)
    assert stored.getpixel(corner) == (255, 0, 0)
    assert pixels.decode(data, 4, 3, "RGB24", rotation).tobytes() == img.tobytes()


def test_software_scaling_halves_every_channel():
    data = pixels.encode(Image.new("RGB", (2, 1), (255, 255, 255)), "RGB565")
    assert struct.unpack("<2H", pixels.scale(data, 2, 1, "RGB565", 50)) == \
        (((16 << 11) | (32 << 5) | 16),) * 2
    assert pixels.scale(data, 2, 1, "RGB565", 0) == bytes(4)
    bgrx = pixels.encode(Image.new("RGB", (1, 1), (200, 100, 10)), "BGRX")
    assert pixels.scale(bgrx, 1, 1, "BGRX", 50) == bytes([5, 50, 100, 0])


# ---- the driver: pixel-exact output ------------------------------------------------------

def test_16bpp_frame_lands_pixel_exact_and_keeps_the_row_padding(tmp_path):
    root = fake_fb(tmp_path, width=4, height=3, bpp=16, stride=12)  # 8 bytes + 4 padding
    driver = opened(root)
    assert (driver.width, driver.height, driver.pixel_format) == (4, 3, "RGB565")
    driver.show(to_pixels(palette_image(), driver.pixel_format))
    raw = device(root)
    for i, colour in enumerate(COLOURS):
        x, y = i % 4, i // 4
        assert struct.unpack_from("<H", raw, y * 12 + x * 2)[0] == rgb565(*colour), (x, y)
    for y in range(3):
        assert raw[y * 12 + 8:y * 12 + 12] == bytes([PAD]) * 4, "row padding was written"
    assert driver.frames_shown == 1


def test_32bpp_frame_lands_pixel_exact_and_keeps_the_row_padding(tmp_path):
    root = fake_fb(tmp_path, width=4, height=3, bpp=32, stride=20)  # 16 bytes + 4 padding
    driver = opened(root)
    assert driver.pixel_format == "BGRX"
    driver.show(to_pixels(palette_image(), "BGRX"))
    raw = device(root)
    for i, (r, g, b) in enumerate(COLOURS):
        x, y = i % 4, i // 4
        assert raw[y * 20 + x * 4:y * 20 + x * 4 + 4] == bytes([b, g, r, 0]), (x, y)
    for y in range(3):
        assert raw[y * 20 + 16:y * 20 + 20] == bytes([PAD]) * 4


def test_open_blanks_and_close_blanks_only_the_picture(tmp_path):
    root = fake_fb(tmp_path, width=2, height=2, bpp=16, stride=6)
    driver = opened(root)
    assert device(root) == (bytes(4) + bytes([PAD, PAD])) * 2
    driver.show(b"\xff" * 8)
    driver.close()
    assert device(root) == (bytes(4) + bytes([PAD, PAD])) * 2
    with pytest.raises(DisplayError):
        driver.show(b"\xff" * 8)


def test_wrong_frame_size_is_refused_without_writing(tmp_path):
    root = fake_fb(tmp_path, width=4, height=3)
    driver = opened(root)
    before = device(root)
    with pytest.raises(ValueError, match="needs 24"):
        driver.show(bytes(36))  # an RGB24 frame for the LED panel
    assert device(root) == before


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotation_swaps_the_picture_size_and_turns_rendered_media(tmp_path, rotation):
    root = fake_fb(tmp_path, width=240, height=320, bpp=16)  # a portrait ILI9341
    driver = opened(root, rotation=rotation)
    assert (driver.width, driver.height) == (320, 240)  # what media is fitted to
    # an upload rendered for this target: red top-left quarter, blue elsewhere
    upload = tmp_path / "in.png"
    img = Image.new("RGB", (320, 240), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 160, 120))
    img.save(upload)
    target = Target(driver.width, driver.height, driver.pixel_format, "contain",
                          driver.rotation)
    render_upload(str(upload), str(tmp_path / "frames.bin"), target, build({}).media)
    frames = FrameFile(str(tmp_path / "frames.bin"))
    assert (frames.width, frames.height, frames.pixel_format) == (320, 240, "RGB565")
    driver.show(frames.frame(0))
    raw = device(root)
    red, blue = rgb565(255, 0, 0), rgb565(0, 0, 255)
    # the picture's top-left corner is the device's top-right (90) or bottom-left (270)
    corner = (239, 0) if rotation == 90 else (0, 319)
    far = (0, 319) if rotation == 90 else (239, 0)
    assert struct.unpack_from("<H", raw, (corner[1] * 240 + corner[0]) * 2)[0] == red
    assert struct.unpack_from("<H", raw, (far[1] * 240 + far[0]) * 2)[0] == blue
    # the preview and thumbnails come back upright
    upright = frame_image(frames.frame(0), 320, 240, "RGB565", rotation)
    assert upright.getpixel((0, 0)) == (255, 0, 0) and upright.getpixel((319, 239)) == \
        (0, 0, 255)
    frames.close()


def test_visible_mode_smaller_than_the_virtual_size_is_used(tmp_path):
    root = fake_fb(tmp_path, width=320, height=480, modes="U:320x240p-0\n")  # room to pan
    driver = opened(root)
    assert (driver.width, driver.height) == (320, 240)


def test_item_budget_counts_the_framebuffer_frame_size(tmp_path):
    # 320x240 RGB565 is 150 KiB a frame: a 1 MiB budget keeps about 6 of 40 frames
    gif = tmp_path / "long.gif"
    gif.write_bytes(gif_bytes(colours=[(i * 6, 0, 0) for i in range(40)], delays=[50] * 40,
                              size=(32, 24)))
    small = build({"media": {"max_item_mb": 1.0}}).media
    rendered = render_upload(str(gif), str(tmp_path / "f.bin"),
                            Target(320, 240, "RGB565"), small)
    assert rendered.frames <= 7
    assert any("max_item_mb" in note for note in rendered.notes)
    assert os.path.getsize(tmp_path / "f.bin") <= 1024 * 1024


# ---- brightness ---------------------------------------------------------------------------

def test_backlight_takes_the_brightness_and_frames_stay_a_plain_copy(tmp_path):
    root = fake_fb(tmp_path, width=4, height=3, backlight=("fb_ili9341", 255))
    driver = opened(root)
    assert driver.brightness_mode == "backlight"
    frame = to_pixels(palette_image(), "RGB565")
    driver.set_brightness(50)
    assert brightness_file(root) == "128\n"
    driver.show(frame)
    assert device(root) == frame  # not scaled: the backlight dims
    driver.set_brightness(0)
    assert brightness_file(root) == "0\n"  # off
    driver.set_brightness(100)
    assert brightness_file(root) == "255\n"
    assert device(root) == frame


def test_on_off_backlight_switches_and_the_pixels_dim_in_software(tmp_path):
    """A GPIO backlight (max_brightness 1) is a switch: on for any brightness above 0, and
    the dimming is done on the pixels, or 20 % would look like 100 %."""
    root = fake_fb(tmp_path, width=4, height=3, backlight=("gpio-backlight", 1))
    driver = opened(root, brightness=100)
    assert driver.brightness_mode == "backlight switch and software"
    frame = to_pixels(palette_image(), "RGB565")
    driver.show(frame)
    assert device(root) == frame
    driver.set_brightness(20)
    assert brightness_file(root, "gpio-backlight") == "1\n"
    assert device(root) == pixels.scale(frame, 4, 3, "RGB565", 20)
    driver.show(frame)
    assert device(root) == pixels.scale(frame, 4, 3, "RGB565", 20)  # every frame
    driver.set_brightness(0)
    assert brightness_file(root, "gpio-backlight") == "0\n"
    assert device(root) == bytes(24)
    driver.set_brightness(100)
    assert brightness_file(root, "gpio-backlight") == "1\n"
    assert device(root) == frame
    checks = by_name(framebuffer.preflight(cfg(), root=root))
    assert checks["backlight"].status == "pass"
    assert "on or off only" in checks["backlight"].reason
    assert "scaled in software" in checks["backlight"].reason


def test_a_backlight_without_levels_is_no_backlight(tmp_path):
    """fbtft registers a backlight with max_brightness 0 for led_pin (docs/raspberry-pi.md's
    ILI9341 line): nothing to set, so brightness is done in software and the LCD lights up."""
    root = fake_fb(tmp_path, width=4, height=3, backlight=("fb_ili9341", 0))
    checks = by_name(framebuffer.preflight(cfg(), root=root))
    assert checks["backlight"].status == "skip", checks["backlight"]
    assert "no brightness levels" in checks["backlight"].reason
    assert "scaled in software" in checks["backlight"].reason
    assert not any(c.status == "fail" for c in checks.values())
    driver = opened(root, brightness=100)
    assert driver.brightness_mode == "software"
    frame = to_pixels(palette_image(), "RGB565")
    driver.show(frame)
    driver.set_brightness(50)
    assert device(root) == pixels.scale(frame, 4, 3, "RGB565", 50)
    assert brightness_file(root) == "0\n", "left alone"
    # named explicitly, the same
    assert opened(root, framebuffer_backlight="fb_ili9341").brightness_mode == "software"


def test_backlight_choice(tmp_path):
    root = fake_fb(tmp_path, backlight=("rpi_backlight", 255))
    Path(root, "sys/class/backlight/fb_ili9341").mkdir()
    Path(root, "sys/class/backlight/fb_ili9341/max_brightness").write_text("1\n")
    Path(root, "sys/class/backlight/fb_ili9341/brightness").write_text("1\n")
    # two backlights: auto takes the one named like the framebuffer's driver
    light, _ = framebuffer.find_backlight("auto", root, "fb_ili9341")
    assert light.name == "fb_ili9341"
    light, why = framebuffer.find_backlight("auto", root, "fb_st7789v")
    assert light is None and "several backlights" in why
    assert framebuffer.find_backlight("rpi_backlight", root)[0].max_brightness == 255
    assert framebuffer.find_backlight("none", root)[0] is None
    with pytest.raises(LookupError, match="no backlight 'nope'"):
        framebuffer.find_backlight("nope", root)


def test_software_brightness_scales_a_copy_and_redraws_the_current_frame(tmp_path):
    root = fake_fb(tmp_path, width=4, height=3, backlight=None)
    driver = opened(root, brightness=100)
    assert driver.brightness_mode == "software"
    frame = to_pixels(palette_image(), "RGB565")
    half = pixels.scale(frame, 4, 3, "RGB565", 50)
    driver.show(frame)
    assert device(root) == frame  # 100 %: a plain copy
    driver.set_brightness(50)
    assert device(root) == half  # the current frame redrawn, scaled
    driver.set_brightness(0)
    assert device(root) == bytes(24)  # 0 blanks
    driver.set_brightness(100)
    assert device(root) == frame  # the unscaled frame was kept
    driver.set_brightness(50)
    other = to_pixels(Image.new("RGB", (4, 3), (255, 255, 255)), "RGB565")
    driver.show(other)
    assert device(root) == pixels.scale(other, 4, 3, "RGB565", 50)
    driver.clear()
    driver.set_brightness(100)
    assert device(root) == bytes(24), "clear() forgets the frame"


def test_software_brightness_scales_rotated_frames_too(tmp_path):
    root = fake_fb(tmp_path, width=3, height=4, bpp=32, backlight=None)
    driver = opened(root, rotation=90, framebuffer_backlight="none")
    frame = to_pixels(palette_image(4, 3), "BGRX", 90)
    driver.set_brightness(50)
    driver.show(frame)
    assert device(root) == pixels.scale(frame, 3, 4, "BGRX", 50)


def test_backlight_none_scales_in_software(tmp_path):
    root = fake_fb(tmp_path, width=4, height=3)
    driver = opened(root, framebuffer_backlight="none")
    assert driver.brightness_mode == "software"
    driver.set_brightness(30)
    assert brightness_file(root) == "255\n", "the backlight is left alone"


# ---- pre-flight ---------------------------------------------------------------------------

def _break(kind: str, tmp_path: Path) -> tuple[str, dict]:
    """A fake tree with one thing wrong, and the config keys for it."""
    if kind == "missing":
        root = fake_fb(tmp_path)
        os.unlink(Path(root, "dev/fb1"))
        return root, {}
    if kind == "directory":
        root = fake_fb(tmp_path)
        os.unlink(Path(root, "dev/fb1"))
        Path(root, "dev/fb1").mkdir()
        return root, {}
    if kind == "bad_name":
        root = fake_fb(tmp_path)
        Path(root, "dev/fb1").rename(Path(root, "dev/lcd"))
        return root, {"framebuffer_device": "/dev/lcd"}
    if kind == "no_sysfs":
        root = fake_fb(tmp_path)
        os.unlink(Path(root, "sys/class/graphics/fb1/stride"))
        return root, {}
    if kind == "garbage_sysfs":
        root = fake_fb(tmp_path)
        Path(root, "sys/class/graphics/fb1/virtual_size").write_text("wide\n")
        return root, {}
    if kind == "24bpp":
        return fake_fb(tmp_path, bpp=24), {}
    if kind == "zero_size":
        return fake_fb(tmp_path, width=0, height=240, stride=640, size=640 * 240), {}
    if kind == "short_stride":
        return fake_fb(tmp_path, width=320, stride=600), {}
    if kind == "small_file":
        return fake_fb(tmp_path, size=1000), {}
    if kind == "size_mismatch":
        return fake_fb(tmp_path, width=240, height=320), {"framebuffer_width": 320,
                                                         "framebuffer_height": 240}
    if kind == "wrong_size":
        return fake_fb(tmp_path), {"framebuffer_width": 480, "framebuffer_height": 320}
    if kind == "read_only":
        root = fake_fb(tmp_path)
        os.chmod(Path(root, "dev/fb1"), 0o444)
        return root, {}
    if kind == "no_such_backlight":
        return fake_fb(tmp_path), {"framebuffer_backlight": "rpi_backlight"}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, check, needle, fix", [
    ("missing", "framebuffer_device", "/dev/fb1 does not exist", "dtoverlay=fbtft"),
    ("directory", "framebuffer_device", "not a framebuffer device", "framebuffer_device"),
    ("bad_name", "framebuffer_device", "/dev/lcd is not a framebuffer device", "/dev/fbN"),
    ("no_sysfs", "framebuffer_sysfs", "cannot read /sys/class/graphics/fb1/stride",
     "right device"),
    ("garbage_sysfs", "framebuffer_sysfs", "virtual_size holds 'wide'", "right device"),
    ("24bpp", "pixel_format", "24 bits per pixel is not supported", "16 or 32"),
    ("zero_size", "geometry", "reports 0x240 pixels", "width and height"),
    ("short_stride", "geometry", "stride of 600 bytes is shorter than a row of 320 pixels",
     "overlay"),
    ("small_file", "geometry", "has 1000 bytes", "large enough"),
    ("size_mismatch", "panel_size", "ask for 320x240, but fb1 is 240x320",
     "set display.rotation to 90 or 270"),
    ("wrong_size", "panel_size", "ask for 480x320", "framebuffer_width and framebuffer_height"),
    ("read_only", "writable", "/dev/fb1 cannot be opened read-write", "video group"),
    ("no_such_backlight", "backlight", "no backlight 'rpi_backlight'", "auto, none"),
])
def test_each_preflight_failure_has_a_clear_reason_and_fix(tmp_path, kind, check, needle, fix):
    root, keys = _break(kind, tmp_path)
    checks = by_name(framebuffer.preflight(cfg(**keys), root=root))
    failed = [c for c in checks.values() if c.status == "fail"]
    assert [c.name for c in failed] == [check], failed
    assert needle in checks[check].reason
    assert fix in checks[check].fix
    # and the service runs headless with that reason instead of failing
    driver, reason = open_driver(cfg(**keys), str(tmp_path / "data"), root=root)
    assert driver.name == "headless" and needle in reason


def test_a_character_device_that_is_not_a_framebuffer_is_refused():
    checks = by_name(framebuffer.preflight(cfg(framebuffer_device="/dev/null")))
    assert checks["framebuffer_device"].status == "fail"
    assert "/dev/null is a character device 1:3, not a framebuffer (major 29)" in \
        checks["framebuffer_device"].reason


def test_a_regular_file_is_only_a_device_in_a_fake_tree(tmp_path):
    root = fake_fb(tmp_path)
    device_path = str(Path(root, "dev/fb1"))
    checks = by_name(framebuffer.preflight(cfg(framebuffer_device=device_path), root="/"))
    assert checks["framebuffer_device"].status == "fail"
    assert "not a framebuffer device" in checks["framebuffer_device"].reason


def test_preflight_passes_on_a_good_tree(tmp_path):
    root = fake_fb(tmp_path, width=240, height=320, stride=512)
    checks = by_name(framebuffer.preflight(cfg(rotation=90, framebuffer_width=320,
                                               framebuffer_height=240), root=root))
    assert {c.status for c in checks.values()} == {"pass"}, checks
    assert "picture 320x240 (fb1 240x320 turned 90°" in checks["panel_size"].reason
    assert "32 bytes of row padding" in checks["geometry"].reason
    assert "fb_ili9341" in checks["backlight"].reason


def test_unwritable_backlight_falls_back_to_software_brightness(tmp_path):
    root = fake_fb(tmp_path)
    os.chmod(Path(root, "sys/class/backlight/fb_ili9341/brightness"), 0o444)
    checks = by_name(framebuffer.preflight(cfg(), root=root))
    assert checks["backlight"].status == "skip"
    assert "scaled in software" in checks["backlight"].reason
    assert "drop-in" in checks["backlight"].fix
    driver = opened(root)
    assert driver.brightness_mode == "software"


def test_failed_framebuffer_falls_back_at_the_expected_size(tmp_path):
    keys = {"framebuffer_width": 320, "framebuffer_height": 240}
    driver, reason = open_driver(cfg(**keys), str(tmp_path), root=str(tmp_path))
    assert driver.name == "headless" and (driver.width, driver.height) == (320, 240)
    assert "does not exist" in reason


# ---- through the whole service ------------------------------------------------------------

class FailingMap:
    """Wraps the driver's mmap; while `failing`, every write raises EIO like a dead device."""

    def __init__(self, inner):
        self.inner, self.failing = inner, False

    def __setitem__(self, key, value):
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        self.inner[key] = value

    def __getitem__(self, key):
        return self.inner[key]

    def close(self):
        self.inner.close()


@pytest.fixture
def fb_app(make_app):
    def start(root, **overrides):
        overrides.setdefault("display.driver", "framebuffer")
        return make_app(root=root, **overrides)
    return start


def status(client):
    return client.get("/api/poll/status").data


def test_service_plays_on_the_framebuffer_and_the_breaker_opens_and_recovers(tmp_path, fb_app):
    root = fake_fb(tmp_path, width=240, height=320, bpp=16, backlight=None)
    app = fb_app(root, **{"display.rotation": 90, "display.breaker_max_failures": 2,
                          "display.breaker_reset_sec": 0.2,
                          "display.breaker_max_reset_sec": 0.4,
                          "display.slow_call_ms": 2000, "display.brightness": 100,
                          "media.loop_count": 1000})
    client = Client(app.server.port)
    assert app.driver.name == "framebuffer" and app.display_reason is None
    shown = client.get("/api/display").data
    assert (shown["width"], shown["height"]) == (320, 240)
    assert status(client)["display"] == {"driver": "framebuffer", "status": "ok",
                                         "breaker": "closed", "fit": "contain"}
    reply = client.upload([("t.gif", gif_bytes(((255, 0, 0), (0, 0, 255)), (40, 40),
                                               size=(320, 240)))])
    assert reply.status == 201, reply
    item = reply.data["results"][0]["item"]
    meta = client.get(f"/api/media/{item['id']}").data
    assert meta["width"] == 320
    red, blue = rgb565(255, 0, 0), rgb565(0, 0, 255)
    wait_for(lambda: struct.unpack_from("<H", device(root), 0)[0] == red)
    wait_for(lambda: struct.unpack_from("<H", device(root), 0)[0] == blue)
    # the preview is the upright picture
    png = Image.open(io.BytesIO(client.get("/api/display/frame.png?scale=1").body))
    assert png.size == (320, 240) and png.getpixel((0, 0)) in ((255, 0, 0), (0, 0, 255))

    failing = FailingMap(app.driver._map)
    app.driver._map = failing
    failing.failing = True  # the device starts failing mid-run
    wait_for(lambda: status(client)["display"]["breaker"] == "open")
    assert status(client)["display"]["status"] == "degraded"
    health = client.get("/api/poll/health").data
    assert health["status"] == "degraded"
    assert "Input/output error" in health["checks"]["display"]["reason"]
    played = app.player.frames_shown
    wait_for(lambda: app.player.frames_shown > played + 3)  # playback goes on headless

    failing.failing = False  # the device is back
    wait_for(lambda: status(client)["display"]["breaker"] == "closed", timeout=10)
    assert status(client)["display"]["status"] == "ok"
    Path(root, "dev/fb1").write_bytes(bytes(240 * 320 * 2))
    wait_for(lambda: struct.unpack_from("<H", device(root), 0)[0] in (red, blue))


def test_service_without_the_device_runs_headless_and_says_why(tmp_path, fb_app):
    app = fb_app(str(tmp_path / "empty"))
    client = Client(app.server.port)
    assert app.driver.name == "headless"
    health = client.get("/api/poll/health").data
    assert "/dev/fb1 does not exist" in health["checks"]["display"]["reason"]
    assert status(client)["display"]["status"] == "degraded"


def test_thumbnail_and_preview_are_upright_on_a_turned_panel(tmp_path, fb_app):
    root = fake_fb(tmp_path, width=240, height=320, bpp=32)
    app = fb_app(root, **{"display.rotation": 270, "display.brightness": 100})
    client = Client(app.server.port)
    img = Image.new("RGB", (320, 240), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 160, 240))  # red left half, blue right half
    body = io.BytesIO()
    img.save(body, "PNG")
    reply = client.post("/api/media?name=halves.png", body=body.getvalue())
    assert reply.status == 201, reply
    item = reply.data["results"][0]["item"]
    thumb = Image.open(io.BytesIO(client.get(item["thumb"]).body)).convert("RGB")
    assert thumb.width > thumb.height
    assert thumb.getpixel((2, thumb.height // 2)) == (255, 0, 0)
    assert thumb.getpixel((thumb.width - 3, thumb.height // 2)) == (0, 0, 255)
    # on the device (turned 270° clockwise) the picture's left half is the bottom half:
    # red (BGRX 00 00 ff 00) on the bottom row, blue (ff 00 00 00) on the top row
    bottom = (319 * 240 + 120) * 4
    wait_for(lambda: device(root)[bottom:bottom + 4] == bytes([0, 0, 255, 0]))
    assert device(root)[120 * 4:121 * 4] == bytes([255, 0, 0, 0])
    png = Image.open(io.BytesIO(client.get("/api/display/frame.png?scale=1").body))
    assert png.getpixel((2, 120)) == (255, 0, 0) and png.getpixel((317, 120)) == (0, 0, 255)
