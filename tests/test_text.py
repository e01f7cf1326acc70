"""Text and clock rendering, pure: the fonts picked per panel height, pixels against an
independent drawing, the marquee's one-pixel steps, the clock's composed frames (rotations
included), labels across a DST change, the fallback without fonts, bad specs."""

import os
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import make_config
from PIL import Image, ImageDraw, ImageFont

from loop.media import clock, generated, text
from loop.media.errors import MediaError
from loop.media.fonts import DEFAULT_DIR, Fonts
from loop.media.frames import FrameFile
from loop.media.geometry import Target
from loop.media.pixels import frame_image

FONTS = Fonts(DEFAULT_DIR)
BERLIN = ZoneInfo("Europe/Berlin")
requires_fonts = pytest.mark.skipif(not FONTS.available, reason="xfonts-base is not installed "
                                    "(apt-get install xfonts-base)")


def reference(label, strike, size, scale, panel, x, y, colour=(255, 255, 255)):
    """`label` drawn straight with Pillow and FreeType, as the test expects it on the panel."""
    font = ImageFont.truetype(os.path.join(DEFAULT_DIR, f"{strike}.pcf.gz"), size)
    mask = Image.new("L", (int(font.getlength(label)), size))
    ImageDraw.Draw(mask).text((0, 0), label, font=font, fill=255)
    mask = mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)
    img = Image.new("RGB", panel)
    img.paste(colour, (x, y), mask)
    return img


def lit_in(img, colour=(0, 255, 0)) -> bool:
    return colour in {c for _, c in img.getcolors(img.width * img.height)}


def media_cfg(tmp_path, **overrides):
    return make_config(tmp_path, **overrides).media


@requires_fonts
@pytest.mark.parametrize("cols, rows, strike, size, scale", [
    (64, 8, "5x8", 8, 1), (64, 16, "9x15B", 15, 1), (64, 32, "9x18B", 18, 1),
    (128, 64, "9x18B", 18, 3)])
def test_a_static_text_is_sharp_and_centred_at_each_panel_height(tmp_path, cols, rows, strike,
                                                                  size, scale):
    spec = text.parse_text({"text": "Hi!", "color": "#ffffff"})
    path = str(tmp_path / "frames.bin")
    target = Target(cols, rows)
    rendered = text.render_text(spec, path, target, FONTS, media_cfg(tmp_path))
    frames = FrameFile(path)
    assert frames.count == 1 and rendered.kind == "text"
    shown = frame_image(frames.frame(0), cols, rows)
    width = int(ImageFont.truetype(os.path.join(DEFAULT_DIR, f"{strike}.pcf.gz"), size)
                .getlength("Hi!")) * scale
    expected = reference("Hi!", strike, size, scale, (cols, rows), (cols - width) // 2,
                         (rows - size * scale) // 2)
    assert shown.tobytes() == expected.tobytes()
    assert {c for _, c in shown.getcolors()} == {(0, 0, 0), (255, 255, 255)}  # sharp


@requires_fonts
@pytest.mark.parametrize("rows", [16, 32, 64])
def test_a_marquee_moves_one_pixel_per_frame_and_skips_no_step(tmp_path, rows):
    spec = text.parse_text({"text": "Back in 5 minutes, çà ü ß €", "speed_px_s": 30,
                            "color": "#00ff00", "background": "#100000"})
    path = str(tmp_path / "frames.bin")
    target = Target(64, rows)
    rendered = text.render_text(spec, path, target, FONTS, media_cfg(tmp_path))
    frames = FrameFile(path)
    face = FONTS.face("auto", rows)
    width = FONTS.measure(face, spec.text)
    assert frames.count == 64 + width - 1 == rendered.frames
    # 30 px/s: 1000/30 ms a step, rounded without drift
    assert sum(frames.durations[:30]) == 1000 and set(frames.durations) <= {33, 34}
    images = [frame_image(frames.frame(i), 64, rows) for i in range(frames.count)]
    assert images[0].getpixel((63, 0)) == (16, 0, 0)
    lit = [img.crop((63, 0, 64, rows)) for img in images]
    assert any(lit_in(col) for col in lit[:10])  # enters at the right edge
    for before, after in zip(images, images[1:]):
        # every frame is the previous one moved left by exactly one pixel
        assert after.crop((0, 0, 63, rows)).tobytes() == before.crop((1, 0, 64, rows)).tobytes()
    # it leaves at the left edge: its last character's columns pass column 0 at the end
    assert any(lit_in(img.crop((0, 0, 1, rows))) for img in images[-face.advance:])
    assert not lit_in(images[-1].crop((1, 0, 64, rows)))


@requires_fonts
def test_scroll_modes_and_an_unknown_character_is_a_visible_box(tmp_path):
    cfg = media_cfg(tmp_path)
    target = Target(64, 32)
    for name, options, count in [("fits", {"text": "OPEN"}, 1),
                                 ("always", {"text": "OPEN", "scroll": "always"}, 64 + 36 - 1),
                                 ("never", {"text": "Back in 5 minutes", "scroll": "never"}, 1)]:
        path = str(tmp_path / f"{name}.bin")
        rendered = text.render_text(text.parse_text(options), path, target, FONTS, cfg)
        assert FrameFile(path).count == count, name
    assert any("cut" in note for note in rendered.notes)
    # a character no font has (a CJK ideograph, an emoji) draws the font's placeholder box
    face = FONTS.face("auto", 32)
    box = FONTS.mask(face, "\u4e2d")
    assert box.getbbox() is not None and FONTS.mask(face, "😀").tobytes() == box.tobytes()
    assert box.tobytes() != FONTS.mask(face, "A").tobytes()


def test_without_fonts_text_still_renders_with_the_builtin_font(tmp_path):
    fonts = Fonts(str(tmp_path / "no-fonts"))
    assert fonts.fallback_reason and "xfonts-base" in fonts.fallback_reason
    path = str(tmp_path / "frames.bin")
    spec = text.parse_text({"text": "Zürich €"})
    rendered = text.render_text(spec, path, Target(64, 32), fonts, media_cfg(tmp_path))
    img = frame_image(FrameFile(path).frame(0), 64, 32)
    assert img.getbbox() is not None and rendered.notes
    assert fonts.printable(fonts.face("auto", 32), "Zürich €") == "Zürich ?"


def test_a_marquee_over_the_item_budget_is_refused_before_drawing(tmp_path):
    cfg = media_cfg(tmp_path, **{"media.max_frames": 100})
    spec = text.parse_text({"text": "x" * 200})
    with pytest.raises(MediaError) as refused:
        text.render_text(spec, str(tmp_path / "f.bin"), Target(64, 32), FONTS, cfg)
    assert refused.value.status == 422 and refused.value.message.startswith("text:")
    assert not os.path.exists(tmp_path / "f.bin")


@pytest.mark.parametrize("body, field", [
    ({}, "text"), ({"text": ""}, "text"), ({"text": " "}, "text"), ({"text": 5}, "text"),
    ({"text": "a\x00b"}, "text"), ({"text": "\ud800"}, "text"), ({"text": "x" * 501}, "text"),
    ({"text": "a", "color": "red"}, "color"), ({"text": "a", "background": "#12345"},
                                               "background"),
    ({"text": "a", "scroll": "sideways"}, "scroll"), ({"text": "a", "speed_px_s": 0},
                                                      "speed_px_s"),
    ({"text": "a", "speed_px_s": True}, "speed_px_s"), ({"text": "a", "font": "comic"}, "font"),
    ({"text": "a", "size": 3}, "size"), ({"clock": []}, "clock"),
    ({"clock": {"format": "HH"}}, "clock.format"), ({"clock": {"seconds": 1}}, "clock.seconds"),
    ({"clock": {"colour": "#ffffff"}}, "clock.colour")])
def test_malformed_specs_are_400_naming_the_field(body, field):
    with pytest.raises(MediaError) as bad:
        generated.parse_item(body)
    assert bad.value.status == 400 and bad.value.message.startswith(f"{field}:"), \
        bad.value.message


def test_the_canonical_json_makes_the_same_text_the_same_item():
    a = generated.parse_item({"text": "Cafe\u0301", "color": "#FFFFFF"})
    b = generated.parse_item({"font": "auto", "text": "Café", "speed_px_s": 30.0})
    assert a.canonical() == b.canonical()
    assert a.canonical() != generated.parse_item({"text": "Café", "color": "#fffffe"}) \
        .canonical()


def test_a_stored_spec_is_recognised_only_in_its_canonical_form(tmp_path):
    spec = generated.parse_item({"clock": {"seconds": True}})
    path = tmp_path / "original.json"
    path.write_bytes(spec.canonical())
    assert generated.read_spec(str(path)) == spec
    path.write_bytes(spec.canonical().replace(b":", b": ", 1))
    assert generated.read_spec(str(path)) is None
    path.write_bytes(b"GIF89a")
    assert generated.read_spec(str(path)) is None


# ---- clocks ----------------------------------------------------------------------------------
def test_clock_labels_and_a_dst_change():
    assert clock.label(datetime(2026, 1, 1, 9, 5, 7), "HH:MM", False) == "09:05"
    assert clock.label(datetime(2026, 1, 1, 9, 5, 7), "H:MM", True) == " 9:05:07"
    assert clock.label(datetime(2026, 1, 1, 0, 5), "hh:MM", False) == "12:05"
    assert clock.label(datetime(2026, 1, 1, 13, 5), "h:MM", False) == " 1:05"
    # Europe/Berlin springs forward at 02:00 CET on 2026-03-29: 01:59 is followed by 03:00
    before = datetime(2026, 3, 29, 0, 59, tzinfo=ZoneInfo("UTC"))
    assert clock.label(before.astimezone(BERLIN), "HH:MM", False) == "01:59"
    after = before + timedelta(minutes=1)
    assert clock.label(after.astimezone(BERLIN), "HH:MM", False) == "03:00"


@requires_fonts
@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_a_clock_face_composes_exactly_what_drawing_the_time_gives(tmp_path, rotation):
    spec = clock.parse_clock({"seconds": True, "color": "#ff8000"})
    path = str(tmp_path / "clock.bin")
    target = Target(64, 32, "RGB565" if rotation else "RGB24", rotation=rotation)
    rendered = clock.render_clock(spec, path, target, FONTS, media_cfg(tmp_path))
    layout = rendered.extra["layout"]
    face = clock.ClockFace(FrameFile(path), layout)
    assert (layout["font"], layout["cell_width"], layout["cells"]) == ("7x14B", 7, 8)
    when = datetime(2026, 7, 1, 23, 58, 9, tzinfo=BERLIN)
    assert face.show(when) and not face.show(when)  # composed once per new text
    first = bytes(face.frame(0))
    assert face.show(when + timedelta(seconds=1))
    img = frame_image(face.frame(0), 64, 32, target.pixel_format, rotation)
    # the expected picture, drawn directly: 8 cells of 7 px, centred
    font = ImageFont.truetype(os.path.join(DEFAULT_DIR, "7x14B.pcf.gz"), 14)
    expected = Image.new("RGB", (64, 32))
    draw = ImageDraw.Draw(expected)
    for n, ch in enumerate("23:58:10"):
        draw.text(((64 - 56) // 2 + 7 * n, (32 - 14) // 2), ch, font=font, fill=(255, 128, 0))
    if target.pixel_format == "RGB565":  # what the panel format keeps of the colour
        expected = frame_image(clock.to_pixels(expected, "RGB565"), 64, 32, "RGB565")
    assert img.tobytes() == expected.tobytes()
    assert bytes(face.frame(0)) != first
