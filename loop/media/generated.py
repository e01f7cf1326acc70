"""Items drawn from a JSON spec instead of decoded from an upload: texts and clocks.

The spec's canonical JSON is stored as the item's original (`original.json`); `read_spec`
recognises such a file again when the library is re-rendered (new fit, new panel, a restore),
so these items live in the library, the loop and backups like any upload.
"""

from __future__ import annotations

import json

from loop.media import clock, text
from loop.media.errors import MediaError
from loop.media.fonts import fonts_in
from loop.media.geometry import Target
from loop.media.image import Rendered

MAX_SPEC_BYTES = 8192  # a canonical spec of MAX_TEXT characters is well under this


def parse_item(body: dict, allowed=()) -> text.TextSpec | clock.ClockSpec:
    """The spec of a text (`{"text": …, options}`) or clock (`{"clock": {…}}`) item; a 400
    naming the field when it is malformed. `allowed` are further keys the caller handles."""
    if "clock" in body:
        keys = ("clock",)
    elif "text" in body:
        keys = text.TEXT_KEYS
    else:
        raise text.bad("text", "is required (or clock, for a clock item)")
    for key in body:
        if key not in keys and key not in allowed:
            raise text.bad(str(key)[:40], f"unknown field; allowed: "
                           f"{', '.join(keys + tuple(allowed))}")
    if "clock" in body:
        return clock.parse_clock(body["clock"])
    return text.parse_text(body)


def read_spec(path: str) -> text.TextSpec | clock.ClockSpec | None:
    """The spec stored in `path`, or None when it is not one (any other upload). Only the
    canonical form counts, so an item's id stays the hash of exactly these bytes."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_SPEC_BYTES + 1)
    if not data.startswith(b"{") or len(data) > MAX_SPEC_BYTES:
        return None
    try:
        body = json.loads(data.decode("utf-8"))
        spec = parse_item(body) if isinstance(body, dict) else None
    except (ValueError, MediaError):
        return None
    return spec if spec is not None and spec.canonical() == data else None


def render_spec(spec, frames_path: str, target: Target, media_cfg, **kwargs) -> Rendered:
    """Draw a text or clock spec into a new frame file."""
    fonts = fonts_in(media_cfg.font_dir)
    if isinstance(spec, clock.ClockSpec):
        return clock.render_clock(spec, frames_path, target, fonts, media_cfg, **kwargs)
    return text.render_text(spec, frames_path, target, fonts, media_cfg, **kwargs)
