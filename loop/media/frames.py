"""The on-disk frame file: panel-ready frames plus their durations, memory-mapped for playback.

Layout (little-endian):

    header   32 bytes  magic "LOOPFRM1", width u16, height u16, pixel format u8, 3 reserved,
                       frame count u32, frame size u32, 8 reserved
    frames   count * frame size bytes, already in the driver's pixel format
    durations count * u32 milliseconds

The count is written last (it is 0 while the file is being filled), so a file cut short by a
crash never validates. A committed file is never changed in place, only replaced or unlinked:
a memory-mapped file that shrinks kills the reader with SIGBUS. The header and size rules
below are pure functions; `FrameWriter` and `FrameFile` are the thin I/O around them.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

MAGIC = b"LOOPFRM1"
HEADER = struct.Struct("<8sHHB3xII8x")
PIXEL_FORMATS = {"RGB24": (1, 3), "RGB565": (2, 2), "BGRX": (3, 4)}  # name: (code, bytes/px)
_FORMAT_BY_CODE = {code: name for name, (code, _) in PIXEL_FORMATS.items()}
MAX_DURATION_MS = 3_600_000


class FrameFileError(Exception):
    """A frame file that is malformed, truncated or not finished."""


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    pixel_format: str
    count: int

    @property
    def frame_size(self) -> int:
        return self.width * self.height * PIXEL_FORMATS[self.pixel_format][1]

    @property
    def durations_offset(self) -> int:
        return HEADER.size + self.count * self.frame_size

    @property
    def file_size(self) -> int:
        return self.durations_offset + 4 * self.count


def pack_header(header: Header) -> bytes:
    """The 32 header bytes for `header`."""
    code = PIXEL_FORMATS[header.pixel_format][0]
    return HEADER.pack(MAGIC, header.width, header.height, code, header.count,
                       header.frame_size)


def parse_header(data: bytes, file_size: int) -> Header:
    """Validate the header bytes against the file's size; raise FrameFileError if wrong."""
    if len(data) < HEADER.size:
        raise FrameFileError("file shorter than the header")
    magic, width, height, code, count, frame_size = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameFileError("not a LOOP frame file")
    if code not in _FORMAT_BY_CODE:
        raise FrameFileError(f"unknown pixel format {code}")
    if width == 0 or height == 0:
        raise FrameFileError("empty geometry")
    header = Header(width, height, _FORMAT_BY_CODE[code], count)
    if frame_size != header.frame_size:
        raise FrameFileError("frame size does not match the geometry")
    if count == 0:
        raise FrameFileError("unfinished frame file (no frames)")
    if file_size != header.file_size:
        raise FrameFileError(f"size {file_size} != expected {header.file_size} (truncated?)")
    return header


def parse_durations(data: bytes, count: int) -> tuple[int, ...]:
    """The per-frame durations in ms; each must be 1..MAX_DURATION_MS."""
    durations = struct.unpack(f"<{count}I", data)
    if any(not 0 < d <= MAX_DURATION_MS for d in durations):
        raise FrameFileError("frame duration out of range")
    return durations


class FrameWriter:
    """Streams frames into a new file; `finish()` makes it valid and durable."""

    def __init__(self, path: str, width: int, height: int, pixel_format: str = "RGB24"):
        self.header = Header(width, height, pixel_format, 0)
        self.durations: list[int] = []
        self._fh = open(path, "xb")
        self._fh.write(pack_header(self.header))

    @property
    def count(self) -> int:
        return len(self.durations)

    def add(self, frame, duration_ms: int) -> None:
        """Append one frame (exactly frame_size bytes) shown for `duration_ms`."""
        if len(frame) != self.header.frame_size:
            raise FrameFileError(f"frame of {len(frame)} bytes, expected "
                                 f"{self.header.frame_size}")
        self._fh.write(frame)
        self.durations.append(max(1, min(int(duration_ms), MAX_DURATION_MS)))

    def extend_last(self, duration_ms: int) -> None:
        """Lengthen the last frame (used when frames are dropped to lower the frame rate)."""
        self.durations[-1] = min(self.durations[-1] + int(duration_ms), MAX_DURATION_MS)

    def finish(self, sync: bool = True) -> Header:
        """Write durations and the final count, fsync (unless `sync` is False: a transient
        file such as a notification's), close."""
        if not self.durations:
            raise FrameFileError("no frames")
        self._fh.write(struct.pack(f"<{self.count}I", *self.durations))
        self.header = Header(self.header.width, self.header.height,
                             self.header.pixel_format, self.count)
        self._fh.seek(0)
        self._fh.write(pack_header(self.header))
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())
        self._fh.close()
        return self.header

    def close(self) -> None:
        self._fh.close()


class FrameFile:
    """A validated, memory-mapped frame file; `frame(i)` is a zero-copy view."""

    def __init__(self, path: str):
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEADER.size)
            self.header = parse_header(head, size)
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        start = self.header.durations_offset
        self.durations = parse_durations(self._map[start:start + 4 * self.header.count],
                                         self.header.count)
        self._view = memoryview(self._map)
        self.path = path

    @property
    def count(self) -> int:
        return self.header.count

    @property
    def width(self) -> int:
        return self.header.width

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def pixel_format(self) -> str:
        return self.header.pixel_format

    @property
    def total_ms(self) -> int:
        return sum(self.durations)

    def frame(self, index: int) -> memoryview:
        size = self.header.frame_size
        offset = HEADER.size + index * size
        return self._view[offset:offset + size]

    def close(self) -> None:
        # Views handed out may still be alive in another thread; the mapping is then freed by
        # the garbage collector instead, which is what we want.
        try:
            self._view.release()
            self._map.close()
        except (BufferError, ValueError):
            pass


def validate(path: str) -> Header:
    """Open and validate the file's structure without mapping the frames."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        header = parse_header(fh.read(HEADER.size), size)
        fh.seek(header.durations_offset)
        parse_durations(fh.read(4 * header.count), header.count)
    return header
