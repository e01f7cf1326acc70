"""Giving freed memory back to the kernel.

glibc keeps memory Python freed in its arenas for reuse; after start-up (imports, the store's
recovery) and after a big decode, the process keeps megabytes it does not use, and on a
512 MB Pi the resident size is what counts. `malloc_trim(0)` returns what is free (about
1 MB after start-up, measured). Elsewhere (musl, macOS) there is nothing to call.
"""

from __future__ import annotations

import ctypes

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
except (AttributeError, OSError):
    _malloc_trim = None


def trim() -> bool:
    """Return free heap to the kernel; True when the C library could do it."""
    return _malloc_trim is not None and bool(_malloc_trim(0))
