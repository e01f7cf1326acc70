"""The one rule for item names, wherever a name comes from: an upload's file name, `PATCH
/api/media/{id}`, a restored backup."""

from __future__ import annotations

from loop.library.store import MAX_NAME


def clean_name(text: str) -> str:
    """`text` as a name that shows what it says: every kind of white space (newline, tab,
    no-break space, ...) becomes a plain space; control and format characters (NUL, ESC, the
    bidirectional overrides such as U+202E that make `gpj.exe` look like `exe.jpg`) and every
    other non-printable character are dropped; surrounding space is stripped and at most
    MAX_NAME characters are kept. The result may be empty: the caller decides what then."""
    kept = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace()
                   or ch.isprintable())
    return kept.strip()[:MAX_NAME].strip()
