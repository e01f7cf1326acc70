"""The media domain's one exception type, and how a storage failure becomes one."""

from __future__ import annotations

import errno
import os


class MediaError(Exception):
    """A bad or unsupported upload: HTTP status, machine code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def storage_error(exc: OSError) -> MediaError:
    """Map a write failure to the answer a client gets."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MediaError(507, "insufficient_storage", "the device's storage is full")
    return MediaError(500, "internal", f"storage write failed: {os.strerror(exc.errno or 0)}")


