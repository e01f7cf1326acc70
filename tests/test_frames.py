"""The frame-file format: pure header rules, then the writer and the memory-mapped reader."""

import os
import struct

import pytest

from loop.media import frames
from loop.media.frames import FrameFile, FrameFileError, FrameWriter, Header


def write(path, count=3, width=4, height=2, durations=None):
    writer = FrameWriter(str(path), width, height)
    for i in range(count):
        writer.add(bytes([i]) * (width * height * 3), (durations or [100] * count)[i])
    return writer.finish()


def test_header_round_trip():
    header = Header(64, 32, "RGB24", 7)
    parsed = frames.parse_header(frames.pack_header(header), header.file_size)
    assert parsed == header
    assert header.frame_size == 64 * 32 * 3
    assert header.file_size == 32 + 7 * 64 * 32 * 3 + 7 * 4


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"NOTLOOP!" + b[8:], "not a LOOP frame file"),
    (lambda b: b[:12] + b"\x09" + b[13:], "unknown pixel format"),
    (lambda b: b[:16] + struct.pack("<I", 0) + b[20:], "unfinished"),
    (lambda b: b[:20] + struct.pack("<I", 5) + b[24:], "frame size"),
    (lambda b: b[:10], "shorter than the header"),
])
def test_bad_headers_rejected(mutate, message):
    header = Header(4, 2, "RGB24", 3)
    with pytest.raises(FrameFileError, match=message):
        frames.parse_header(mutate(frames.pack_header(header)), header.file_size)


def test_size_mismatch_is_truncation():
    header = Header(4, 2, "RGB24", 3)
    with pytest.raises(FrameFileError, match="truncated"):
        frames.parse_header(frames.pack_header(header), header.file_size - 1)


def test_durations_must_be_positive():
    with pytest.raises(FrameFileError):
        frames.parse_durations(struct.pack("<2I", 100, 0), 2)
    assert frames.parse_durations(struct.pack("<2I", 100, 40), 2) == (100, 40)


def test_writer_and_reader(tmp_path):
    path = tmp_path / "f.bin"
    write(path, durations=[100, 20, 3000])
    ff = FrameFile(str(path))
    assert (ff.count, ff.width, ff.height) == (3, 4, 2)
    assert ff.durations == (100, 20, 3000)
    assert bytes(ff.frame(1)) == bytes([1]) * 24
    assert ff.total_ms == 3120
    ff.close()
    assert frames.validate(str(path)).count == 3


def test_unfinished_file_never_validates(tmp_path):
    path = tmp_path / "f.bin"
    writer = FrameWriter(str(path), 4, 2)
    writer.add(bytes(24), 100)
    writer._fh.flush()  # a crash before finish(): count is still 0
    with pytest.raises(FrameFileError, match="unfinished"):
        frames.validate(str(path))
    writer.close()


def test_truncated_file_fails(tmp_path):
    path = tmp_path / "f.bin"
    write(path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 3)
    with pytest.raises(FrameFileError):
        FrameFile(str(path))


def test_wrong_frame_size_refused(tmp_path):
    writer = FrameWriter(str(tmp_path / "f.bin"), 4, 2)
    with pytest.raises(FrameFileError):
        writer.add(bytes(23), 100)
    writer.close()


def test_extend_last_merges_dropped_frames(tmp_path):
    writer = FrameWriter(str(tmp_path / "f.bin"), 1, 1)
    writer.add(b"abc", 100)
    writer.extend_last(50)
    assert writer.finish().count == 1
    assert FrameFile(str(tmp_path / "f.bin")).durations == (150,)
