"""JSON from outside (request bodies, a backup's index and metadata): parsed only when its
nesting is shallow. `json.loads` recurses once per level, so ~60 KB of `[[[[…` would end in
a RecursionError (a 500 and a traceback per request) instead of a clear refusal."""

from __future__ import annotations

import json
import re

MAX_DEPTH = 32  # LOOP's own documents nest 4 levels deep; 32 leaves room and refuses a bomb

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"\[\]|\{\}")


def nesting_ok(data: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """True when the brackets of `data` (outside strings) balance within `max_depth` levels.

    Linear in the size for each level: one pass removes the innermost pairs."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = _INNERMOST.sub(b"", brackets)
    return not brackets


def loads(data: bytes, max_depth: int = MAX_DEPTH):
    """`json.loads` for untrusted bytes (UTF-8); ValueError (or UnicodeDecodeError, a
    ValueError too) for anything that is not JSON nesting at most `max_depth` levels."""
    if not nesting_ok(data, max_depth):
        raise ValueError(f"not JSON, or nested deeper than {max_depth} levels")
    return json.loads(data.decode("utf-8"))
