"""Media made for the media tests: small real videos (by the real ffmpeg), hostile files,
and a raw-socket helper for uploads that stop half way."""

from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import zlib

import pytest
from PIL import Image

HAVE_FFMPEG = bool(shutil.which("ffmpeg") and shutil.which("ffprobe"))
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")

_DIR = tempfile.mkdtemp(prefix="loop-mediagen-")
atexit.register(shutil.rmtree, _DIR, True)

# name -> (container file name, ffmpeg output arguments); testsrc at 160x120, 30 fps, 1 s
VIDEO_KINDS = {
    "mp4": ("v.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]),
    "mov": ("v.mov", ["-c:v", "mpeg4"]),
    "webm": ("v.webm", ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"]),
    "mkv": ("v.mkv", ["-c:v", "mpeg4"]),
    "avi": ("v.avi", ["-c:v", "mpeg4"]),
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True,
                   timeout=120)


@functools.cache
def video_bytes(kind: str = "mp4", seconds: float = 1.0, size: str = "160x120",
                rate: int = 30) -> bytes:
    """A real test-pattern video made by ffmpeg (cached for the session)."""
    name, codec = VIDEO_KINDS[kind]
    path = os.path.join(_DIR, f"{seconds}-{size}-{rate}-{name}")
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-t", str(seconds),
            *codec, path)
    with open(path, "rb") as fh:
        return fh.read()


def video_path(kind: str = "mp4", **kwargs) -> str:
    data = video_bytes(kind, **kwargs)
    path = os.path.join(_DIR, f"copy-{abs(hash(data))}-{VIDEO_KINDS[kind][0]}")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def lossless_video(image: Image.Image, container: str = "avi", frames: int = 2) -> bytes:
    """A video whose frames are exactly `image` (raw BGR in AVI, or FFV1 in Matroska)."""
    fd, png = tempfile.mkstemp(suffix=".png", dir=_DIR)
    os.close(fd)
    image.save(png)
    out = png[:-4] + "." + container
    codec = ["-c:v", "rawvideo", "-pix_fmt", "bgr24"] if container == "avi" else \
        ["-c:v", "ffv1", "-pix_fmt", "bgr0"]
    _ffmpeg("-loop", "1", "-i", png, "-frames:v", str(frames), "-r", "10", *codec, out)
    with open(out, "rb") as fh:
        return fh.read()


def raw_video_file(path: str, seconds: float, size: str = "320x240") -> int:
    """A big, cheap video: uncompressed RGB in AVI (no encoding cost). Returns its size."""
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=30", "-t", str(seconds),
            "-c:v", "rawvideo", "-pix_fmt", "bgr24", path)
    return os.path.getsize(path)


# ---- hostile files ------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + \
        _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b"")


def gif_many_frames(count: int, size: int = 4) -> bytes:
    """A GIF with `count` tiny frames, built by repeating one frame's bytes (cheap)."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 0, 0)).save(out, "GIF")
    data = out.getvalue()
    start = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the palette
    while data[start] == 0x21:  # skip extensions up to the image descriptor
        start += 2
        while data[start]:
            start += data[start] + 1
        start += 1
    end = data.rindex(b"\x3b")
    frame = b"\x21\xf9\x04\x00\x02\x00\x00\x00" + data[start:end]  # 20 ms per frame
    return data[:start] + frame * count + b"\x3b"


HLS_PLAYLIST = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n"
                b"#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\n%s\n#EXT-X-ENDLIST\n")


def zip_bytes() -> bytes:
    import zipfile
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("a.txt", "hello")
    return out.getvalue()


HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" '
       b'height="10"><script>alert(1)</script></svg>')


# ---- raw sockets ------------------------------------------------------------------------
def open_upload(port: int, length: int, first: bytes = b"", path: str = "/api/media?name=x",
                headers: dict | None = None, source: str | None = None) -> socket.socket:
    """Send an upload's head (and maybe part of its body) and keep the connection open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0) if source else None)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    for key, value in (headers or {}).items():
        head += f"{key}: {value}\r\n"
    sock.sendall(head.encode() + b"\r\n" + first)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP response on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body
