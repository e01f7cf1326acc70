"""Durable file writes: every state file LOOP keeps is replaced whole, never edited in place.

A temp file in the same directory is written, flushed and fsynced, `os.replace`d over the old
one, and the directory is fsynced, so a power cut leaves either the old file or the new one
(docs/architecture.md, "Data layout and the commit point").
"""

from __future__ import annotations

import json
import os
import uuid


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, obj) -> None:
    """Temp file in the same directory, flush, fsync, `os.replace`, fsync the directory.

    Any failure (ENOSPC, a failed fsync) raises and leaves the old file in place; a failed
    fsync is never retried, since the kernel may already have dropped the dirty pages.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


