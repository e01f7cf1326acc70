"""Text items and text notifications: the request's JSON, checked and made canonical, and its
frames.

A text is one line. It is drawn once per frame file, never per frame on the display thread:
static and centred when it fits the panel (or when asked), otherwise a marquee that moves
exactly one pixel per frame, every step present, each frame shown for 1/speed_px_s seconds
(durations rounded without drift: 30 px/s gives 33, 33, 34 ms...). The marquee enters at the
right edge and leaves at the left; one pass is one loop of the animation.

The canonical JSON (every field, defaults filled in, keys sorted, UTF-8, NFC) is the item's
"original": its SHA-256 is the item's id, so the same text twice is the same item, and a
restore renders it again from that file like any upload.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass

from PIL import Image

from loop.media.errors import MediaError
from loop.media.fonts import FONT_NAMES, Face, Fonts
from loop.media.frames import PIXEL_FORMATS, FrameWriter
from loop.media.geometry import Target
from loop.media.image import Rendered
from loop.media.pixels import to_pixels

MAX_TEXT = 500  # characters
SCROLLS = ("auto", "always", "never")
SPEED_RANGE = (1, 100)  # px/s; 100 px/s is a 10 ms frame, about what a panel shows smoothly
DEFAULTS = {"color": "#ffffff", "background": "#000000", "scroll": "auto", "speed_px_s": 30,
            "font": "auto"}
TEXT_KEYS = ("text",) + tuple(DEFAULTS)
_COLOR = re.compile(r"\A#[0-9a-fA-F]{6}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def bad(field: str, reason: str) -> MediaError:
    """The 400 for a malformed field; the message starts with the field's name."""
    return MediaError(400, "bad_request", f"{field}: {reason}")


@dataclass(frozen=True)
class TextSpec:
    text: str
    color: str
    background: str
    scroll: str
    speed_px_s: float
    font: str

    def canonical(self) -> bytes:
        """The item's original: sorted keys, no spaces, UTF-8."""
        return canonical_json(asdict(self))

    def name(self) -> str:
        return self.text if len(self.text) <= 60 else self.text[:59] + "…"


def canonical_json(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def color(field: str, value) -> str:
    """A "#rrggbb" colour, lower case."""
    if not isinstance(value, str) or not _COLOR.match(value):
        raise bad(field, 'must be a colour like "#ff8800"')
    return value.lower()


def rgb(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def clean_text(field: str, value, limit: int = MAX_TEXT) -> str:
    """Text as it is drawn: NFC, tabs and line breaks become spaces, no control characters."""
    if not isinstance(value, str):
        raise bad(field, "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(field, "is not valid Unicode (a lone surrogate)") from None
    value = unicodedata.normalize("NFC", re.sub(r"[\t\n\r]", " ", value))
    if _CONTROL.search(value):
        raise bad(field, "must not contain control characters")
    if not value.strip():
        raise bad(field, "must not be empty")
    if len(value) > limit:
        raise bad(field, f"at most {limit} characters")
    return value


def parse_text(body: dict, prefix: str = "") -> TextSpec:
    """A TextSpec from the request's fields (`text` and its options); 400 naming the field.
    Keys other than TEXT_KEYS are the caller's to check."""
    values = dict(DEFAULTS, **{k: body[k] for k in DEFAULTS if k in body})
    if "text" not in body:
        raise bad(f"{prefix}text", "is required")
    text = clean_text(f"{prefix}text", body["text"])
    if values["scroll"] not in SCROLLS:
        raise bad(f"{prefix}scroll", f"must be one of {', '.join(SCROLLS)}")
    speed = values["speed_px_s"]
    lo, hi = SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) \
            or not lo <= speed <= hi:
        raise bad(f"{prefix}speed_px_s", f"must be a number {lo}..{hi} (pixels per second)")
    if values["font"] not in FONT_NAMES:
        raise bad(f"{prefix}font", f"must be one of {', '.join(FONT_NAMES)}")
    return TextSpec(text, color(f"{prefix}color", values["color"]),
                    color(f"{prefix}background", values["background"]), values["scroll"],
                    int(speed) if float(speed).is_integer() else float(speed), values["font"])


# ---- rendering -------------------------------------------------------------------------------
def step_durations(count: int, speed_px_s: float) -> list[int]:
    """Milliseconds of each one-pixel step, rounded so the sum never drifts."""
    per = 1000.0 / speed_px_s
    return [max(1, round((i + 1) * per) - round(i * per)) for i in range(count)]


def layout(spec: TextSpec, target: Target, fonts: Fonts) -> tuple[Face, int, bool]:
    """(face, text width in pixels, marquee?) for `spec` on `target`."""
    face = fonts.face(spec.font, target.height)
    width = fonts.measure(face, spec.text)
    marquee = spec.scroll == "always" or (spec.scroll == "auto" and width > target.width)
    return face, width, marquee


def check_budget(count: int, target: Target, media_cfg) -> None:
    """422 before any drawing when the frames would not fit the item budget."""
    frame_bytes = target.width * target.height * PIXEL_FORMATS[target.pixel_format][1]
    budget = min(media_cfg.max_frames,
                 int(media_cfg.max_item_mb * 1024 * 1024) // (frame_bytes + 4))
    if count > budget:
        raise MediaError(422, "text_too_long", f"text: the marquee would need {count} frames "
                         f"(one per pixel step); this panel allows {budget} "
                         "(media.max_frames, media.max_item_mb): shorten the text or pick a "
                         "smaller font")


def render_text(spec: TextSpec, frames_path: str, target: Target, fonts: Fonts, media_cfg,
                *, sync: bool = True, deadline: float | None = None, **_) -> Rendered:
    """Draw `spec` into a new frame file; the budget is checked before drawing."""
    face, width, marquee = layout(spec, target, fonts)
    panel_w, panel_h = target.width, target.height
    count = panel_w + width - 1 if marquee else 1
    check_budget(count, target, media_cfg)
    mask = fonts.mask(face, spec.text)
    y = (panel_h - face.height) // 2
    notes = []
    if fonts.fallback_reason:
        notes.append("drawn with Pillow's built-in font: the misc-fixed fonts are missing")
    if marquee:
        # the text sits one panel width into a strip; frame i is the strip from i + 1 on
        strip = Image.new("RGB", (2 * panel_w + width - 1, panel_h), rgb(spec.background))
        strip.paste(rgb(spec.color), (panel_w, y), mask)
        durations = step_durations(count, spec.speed_px_s)
    else:
        x = (panel_w - width) // 2 if width <= panel_w else 0
        if width > panel_w:
            notes.append("the text is wider than the panel and was cut (scroll: never)")
        strip = Image.new("RGB", (panel_w, panel_h), rgb(spec.background))
        strip.paste(rgb(spec.color), (x, y), mask)
        durations = [1000]
    writer = FrameWriter(frames_path, panel_w, panel_h, target.pixel_format)
    try:
        for i, ms in enumerate(durations):
            frame = strip.crop((i + 1, 0, i + 1 + panel_w, panel_h)) if marquee else strip
            writer.add(to_pixels(frame, target.pixel_format, target.rotation), ms)
        writer.finish(sync=sync)
    finally:
        writer.close()
    # frame panel_w - 1 shows the text's start at the left edge: the marquee's thumbnail
    return Rendered("text", "json", width, face.height, count, sum(durations), notes, "json",
                    extra={"spec": asdict(spec)},
                    thumb_frame=min(panel_w - 1, count - 1) if marquee else 0)

