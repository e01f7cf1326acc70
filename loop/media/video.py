"""Video uploads, decoded by an `ffmpeg` subprocess into panel-sized frames.

Nothing a client sends is parsed by ffmpeg's auto-detection:

- `sniff` recognises the container from its first bytes (ISO BMFF / QuickTime, Matroska /
  WebM, RIFF AVI); anything else never reaches ffmpeg, so playlists (HLS), concat lists,
  image sequences and every other demuxer are refused before a process starts;
- `ffprobe` and `ffmpeg` then run with that demuxer forced (`-f`), the same short list as
  `-format_whitelist`, and `-protocol_whitelist file`, so neither can open another file or a
  URL (the mov demuxer's external references stay off: `enable_drefs` defaults to false);
- each child runs in its own session with no stdin, an environment without the systemd
  notify/watchdog variables, a deadline (`media.decode_timeout_sec`) after which its whole
  process group is killed, and stderr kept only as a small tail for the error message.

ffmpeg does the work the Pi should not do in Python: frame-rate cap (`media.max_fps`),
scaling/padding/cropping for the fit mode (same geometry as images, `geometry.fit_geometry`),
and conversion to RGB24. Raw frames are read in exact frame-sized chunks straight into the
frame file, so one frame is in memory whatever the size of the video. A panel that wants
another pixel format or a rotation (a framebuffer) gets each frame through the same
`pixels.to_pixels` as images, so both kinds of media are packed identically.
"""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from loop.media import budget
from loop.media.errors import MediaError
from loop.media.frames import PIXEL_FORMATS, FrameWriter
from loop.media.geometry import Target, fit_geometry, is_pixel_art
from loop.media.image import Rendered
from loop.media.pixels import frame_image, to_pixels

# demuxer forced with -f -> the format names ffprobe may report for it
DEMUXERS = {"mov": ("mov", "mp4", "m4a", "3gp", "3g2", "mj2"),
            "matroska": ("matroska", "webm"),
            "avi": ("avi",)}
FORMAT_WHITELIST = ",".join(name for names in DEMUXERS.values() for name in names)
# QuickTime files from old cameras may start with one of these atoms instead of `ftyp`
QUICKTIME_ATOMS = (b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
# ISO BMFF brands that are still images (AVIF, HEIF): those go to Pillow, never to ffmpeg
IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis",
                b"hevm", b"hevs", b"mif1", b"msf1")
ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
            "LISTEN_FDNAMES")
STDERR_TAIL = 4096  # bytes of a child's stderr kept for the error message
PROBE_OUTPUT_MAX = 64 * 1024
CHILD_NICE = 10  # ffmpeg/ffprobe yield the CPU to the display thread and the HTTP threads
DECODE_THREADS = 2  # decoder threads per ffmpeg: 3 jobs x 2 threads on a 4-core Pi
# Above about 1080p the decoder gets one thread: each more thread holds another full frame.
BIG_FRAME_PIXELS = 2_100_000
# Memory of a child, for the decode budget (loop/media/budget.py). Measured with Debian's
# ffmpeg 5.1: before any frame, ffmpeg and ffprobe are ~55-57 MB resident (mostly library
# pages); a decode then holds about (decoder threads + 3) frames in the decoder's pixel
# format (1080p H.264, 2 threads: 70 MB; 4K, 1 thread: 93 MB). ffprobe decodes a frame or
# two of its own to fill in the stream's details (4K: 70 MB).
CHILD_BASE = 60 * 1024 * 1024
FRAMES_HELD_BEYOND_THREADS = 3
PROBE_COST = 72 * 1024 * 1024
# Each child runs under RLIMIT_DATA (`ulimit -d`) = its reservation + DATA_SLACK, so a header
# that lies about the picture size cannot take the Pi down: the child fails to allocate and
# the upload gets a 422. RLIMIT_DATA rather than RLIMIT_AS: ffmpeg maps 500-650 MB of address
# space it never touches (shared libraries, 64 MB malloc arenas), which RLIMIT_AS counts and
# RLIMIT_DATA does not. What RLIMIT_DATA counts beyond the resident set is thread stacks and
# arena slack: VmData - VmRSS was 27-47 MB in every decode measured.
DATA_SLACK = 80 * 1024 * 1024
MIN_FPS_FACTOR = 4  # the item budget lowers the frame rate at most this much, then cuts


@dataclass(frozen=True)
class Container:
    demuxer: str  # mov | matroska | avi
    ext: str  # mp4 | mov | mkv | webm | avi


@dataclass(frozen=True)
class Probe:
    format_name: str
    codec: str
    width: int  # display size: sample aspect ratio and rotation applied
    height: int
    fps: float | None
    duration: float | None
    coded_pixels: int = 0  # width x height as stored: what the decoder allocates
    pix_fmt: str = ""


def pixel_bytes(pix_fmt: str) -> float:
    """Bytes per pixel of a decoded frame in ffmpeg's pixel format (unknown: 4)."""
    deep = 2 if re.search(r"p(9|10|12|14|16)(le|be)?\Z", pix_fmt or "") else 1
    for prefixes, size in ((("yuv420", "yuvj420", "yuva420", "nv12", "nv21"), 1.5),
                           (("yuv422", "yuvj422", "nv16"), 2),
                           (("yuv444", "yuvj444", "gbrp", "rgb24", "bgr24"), 3),
                           (("gray", "yuv400"), 1)):
        if (pix_fmt or "").startswith(prefixes):
            return size * deep
    return 4 * deep


def decoder_threads(info: Probe) -> int:
    return 1 if info.coded_pixels > BIG_FRAME_PIXELS else DECODE_THREADS


def decode_cost(info: Probe) -> int:
    """Bytes an ffmpeg decoding this stream holds at its peak, from ffprobe's header."""
    frames = decoder_threads(info) + FRAMES_HELD_BEYOND_THREADS
    return CHILD_BASE + int(info.coded_pixels * pixel_bytes(info.pix_fmt) * frames)


class DecodeTimeout(Exception):
    """A child ran past its deadline; its process group has been killed."""


def sniff(path: str) -> Container | None:
    """The video container the first bytes announce, or None (not a video we accept)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in IMAGE_BRANDS:
            return None
        return Container("mov", "mov" if brand == b"qt  " else "mp4")
    if box in QUICKTIME_ATOMS and len(head) >= 8:
        return Container("mov", "mov")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Container("matroska", "webm" if b"webm" in head else "mkv")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Container("avi", "avi")
    return None


def tool(name: str) -> str | None:
    """Absolute path of an executable (a name on PATH or a path), None when missing/empty."""
    return shutil.which(name) if name else None


def child_env() -> dict:
    """The service's environment minus what only the service may use (sd_notify, sockets)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["AV_LOG_FORCE_NOCOLOR"] = "1"
    return env


class Child:
    """A subprocess in its own session, read against a deadline; stderr keeps only its tail.

    Reads happen on the calling thread through a selector over stdout and stderr, so no
    helper thread exists and a full stderr pipe can never stall the child.
    """

    def __init__(self, argv: list[str], deadline: float, data_limit: int | None = None):
        self.deadline = deadline
        self.tail = bytearray()
        self.data_limit = data_limit
        self.name = os.path.basename(argv[0])
        if data_limit is not None:  # set in the child before exec: no window without it
            argv = ["/bin/sh", "-c", 'ulimit -d "$0" && exec "$@"',
                    str(max(1, data_limit // 1024)), *argv]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=child_env(), bufsize=0, close_fds=True,
                                         start_new_session=True)
        except OSError as exc:  # not executable, wrong architecture, ...
            raise MediaError(415, "unsupported_media", f"video uploads need a working "
                             f"{self.name}: {exc.strerror or exc}") from None
        try:  # before ffmpeg starts its threads (they inherit it): the panel and the API first
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, CHILD_NICE)
        except OSError:
            pass
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ, "out")
        self._selector.register(self.proc.stderr, selectors.EVENT_READ, "err")
        self._out_open = self._err_open = True

    def _wait_readable(self) -> None:
        """Block until stdout has data (or EOF), draining stderr meanwhile."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise DecodeTimeout()
            for key, _ in self._selector.select(remaining):
                if key.data == "out":
                    return
                self._drain_stderr()

    def _drain_stderr(self) -> None:
        chunk = os.read(self.proc.stderr.fileno(), 4096)
        if not chunk:
            self._selector.unregister(self.proc.stderr)
            self._err_open = False
            return
        self.tail += chunk
        del self.tail[:-STDERR_TAIL]

    def readinto(self, view: memoryview) -> int:
        """Fill `view` from stdout; fewer bytes only at end of stream."""
        got = 0
        while got < len(view) and self._out_open:
            self._wait_readable()
            n = self.proc.stdout.readinto(view[got:])
            if not n:
                self._selector.unregister(self.proc.stdout)
                self._out_open = False
                break
            got += n
        return got

    def read_capped(self, cap: int) -> bytes:
        """All of stdout, refusing more than `cap` bytes."""
        out = bytearray()
        buf = memoryview(bytearray(8192))
        while self._out_open:
            n = self.readinto(buf[:min(len(buf), cap + 1 - len(out))])
            out += buf[:n]
            if len(out) > cap:
                self.kill()
                raise MediaError(422, "invalid_media", "the video's description is too large")
        return bytes(out)

    def finish(self) -> int:
        """Drain what is left (stdout discarded), reap the child within the deadline."""
        scratch = memoryview(bytearray(8192))
        while self._err_open or self._out_open:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise DecodeTimeout()
            for key, _ in self._selector.select(remaining):
                if key.data == "err":
                    self._drain_stderr()
                elif not self.proc.stdout.readinto(scratch):
                    self._selector.unregister(self.proc.stdout)
                    self._out_open = False
        try:
            return self.proc.wait(max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise DecodeTimeout() from None

    def kill(self) -> None:
        """SIGKILL the whole process group (ffmpeg and anything it started), then reap."""
        if self.proc.returncode is None:  # not reaped yet: the pid/pgid cannot be reused
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()

    @property
    def exec_failed(self) -> bool:
        """The shell that sets the limit could not start the tool (the shell's 126/127)."""
        return self.data_limit is not None and self.proc.returncode in (126, 127)

    def last_error(self, path: str) -> str:
        """The last line ffmpeg printed, without our temp path, for people; with the memory
        limit it ran under, which may be why it stopped."""
        lines = [ln.strip() for ln in self.tail.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        text = lines[-1] if lines else "no details"
        if self.proc.returncode is not None and self.proc.returncode < 0:
            text = f"killed by signal {-self.proc.returncode}; {text}"
        text = text.replace(f"file:{path}", "input").replace(path, "input")[-200:]
        if self.data_limit is not None:
            text += (f" (it may have run out of the {self.data_limit // 2**20} MB it may use:"
                     " a picture larger than the video's header says)")
        return text


def _rate(text: str | None) -> float | None:
    try:
        num, _, den = (text or "").partition("/")
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if 0 < value <= 1000 else None


def _seconds(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 1e7 and math.isfinite(value) else None


def probe(ffprobe: str, path: str, container: Container, deadline: float) -> Probe:
    """Inspect the first video stream with ffprobe, the demuxer forced and whitelisted."""
    if container.demuxer not in DEMUXERS:
        raise MediaError(415, "unsupported_media", "this container is not accepted")
    argv = [ffprobe, "-v", "error", "-hide_banner", "-protocol_whitelist", "file",
            "-format_whitelist", FORMAT_WHITELIST, "-f", container.demuxer,
            "-threads", "1", "-select_streams", "v:0", "-of", "json",
            "-show_entries", "format=format_name,duration:stream=codec_type,codec_name,width,"
            "height,pix_fmt,avg_frame_rate,r_frame_rate,duration,sample_aspect_ratio:"
            "stream_tags=rotate:stream_side_data=rotation", f"file:{path}"]
    child = Child(argv, deadline, data_limit=PROBE_COST + DATA_SLACK)
    try:
        output = child.read_capped(PROBE_OUTPUT_MAX)
        status = child.finish()
        if child.exec_failed:
            raise MediaError(415, "unsupported_media", f"video uploads need a working "
                             f"{child.name}: {bytes(child.tail[-200:]).decode(errors='replace')}")
        if status != 0:
            raise MediaError(422, "invalid_media", "a broken or truncated video: "
                             + child.last_error(path))
    finally:
        child.close()
    try:
        doc = json.loads(output)
        fmt = doc.get("format") or {}
        streams = [s for s in doc.get("streams") or [] if s.get("codec_type") == "video"]
    except (ValueError, AttributeError):
        raise MediaError(422, "invalid_media", "the video could not be inspected") from None
    names = str(fmt.get("format_name", "")).split(",")
    if not set(names) <= set(DEMUXERS[container.demuxer]):
        raise MediaError(415, "unsupported_media", "this container is not accepted")
    if not streams:
        raise MediaError(422, "invalid_media", "the file has no video stream")
    stream = streams[0]
    width, height = stream.get("width"), stream.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        raise MediaError(422, "invalid_media", "the video stream has no picture size")
    coded = width * height
    sar = _rate((stream.get("sample_aspect_ratio") or "1:1").replace(":", "/")) or 1.0
    if sar != 1.0:
        width = max(1, round(width * sar))
    rotation = (stream.get("tags") or {}).get("rotate") or 0
    for side in stream.get("side_data_list") or []:
        rotation = side.get("rotation", rotation)
    try:
        if int(float(rotation)) % 180 == 90:  # ffmpeg turns the frames upright itself
            width, height = height, width
    except (TypeError, ValueError):
        pass
    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    duration = _seconds(fmt.get("duration")) or _seconds(stream.get("duration"))
    return Probe(names[0], str(stream.get("codec_name") or "?"), width, height, fps, duration,
                 coded, str(stream.get("pix_fmt") or ""))


def plan(info: Probe, frame_size: int, media_cfg) -> tuple[float, int, float, list[str]]:
    """(fps, most frames, most seconds, notes) within the caps and the item's budget.

    The budget (`media.max_item_mb`, `media.max_frames`) lowers the frame rate first, at most
    by MIN_FPS_FACTOR, and only then cuts the clip short.
    """
    notes = []
    fps = min(info.fps or media_cfg.max_fps, media_cfg.max_fps)
    if info.fps and info.fps > media_cfg.max_fps:
        notes.append(f"frame rate capped at {media_cfg.max_fps} fps (media.max_fps)")
    seconds = media_cfg.max_duration_sec
    if info.duration and info.duration > seconds:
        notes.append(f"cut at {seconds:g} s (media.max_duration_sec)")
    by_bytes = int(media_cfg.max_item_mb * 1024 * 1024) // (frame_size + 4)
    budget = max(1, min(by_bytes, media_cfg.max_frames))
    which = "media.max_item_mb" if by_bytes <= media_cfg.max_frames else "media.max_frames"
    length = min(info.duration or seconds, seconds)
    if length * fps > budget:
        lowered = max(fps / MIN_FPS_FACTOR, budget / length)
        if lowered < fps:
            notes.append(f"frame rate lowered from {fps:g} to {lowered:.3g} fps to fit {which}")
            fps = lowered
        if length * fps > budget + 0.5:
            cut = budget / fps
            notes.append(f"cut after {budget} frames ({cut:.1f} s) to fit {which}")
            seconds = min(seconds, cut)
    return fps, budget, seconds, notes


def filter_graph(info: Probe, target: Target, fps: float) -> str:
    """Scale, fps cap, then pad (contain) / crop (cover) / nothing (stretch), then RGB."""
    width, height, x, y = fit_geometry((info.width, info.height), target)
    flags = "neighbor" if is_pixel_art((info.width, info.height), (width, height)) else "area"
    # scale first: no filter holds a full-size frame (the fps filter keeps one back)
    steps = [f"scale={width}:{height}:flags={flags}", f"fps=fps={fps:.6f}", "setsar=1"]
    if x > 0 or y > 0:
        steps.append(f"pad={target.width}:{target.height}:{x}:{y}:black")
    elif x < 0 or y < 0:
        steps.append(f"crop={target.width}:{target.height}:{-x}:{-y}")
    steps.append("format=rgb24")
    return ",".join(steps)


def frame_ms(index: int, fps: float) -> int:
    """Duration of frame `index` at a constant rate, rounded without drift."""
    return max(1, round((index + 1) * 1000 / fps) - round(index * 1000 / fps))


def render(path: str, container: Container, frames_path: str, target: Target, media_cfg, *,
           progress=None, deadline: float | None = None) -> Rendered:
    """Decode a video upload into `frames_path`; raise MediaError on bad input."""
    ffmpeg, ffprobe = tool(media_cfg.ffmpeg), tool(media_cfg.ffprobe)
    if not ffmpeg or not ffprobe:
        raise MediaError(415, "unsupported_media", "video uploads need ffmpeg, which is not "
                         "installed on this device (apt install ffmpeg); images still work")
    if deadline is None:
        deadline = time.monotonic() + media_cfg.decode_timeout_sec
    path = os.path.abspath(path)
    try:
        return _decode(ffmpeg, ffprobe, path, container, frames_path, target, media_cfg,
                       progress, deadline)
    except DecodeTimeout:
        raise MediaError(422, "invalid_media", "decoding took longer than "
                         f"media.decode_timeout_sec = {media_cfg.decode_timeout_sec:g} s"
                         ) from None


def _decode(ffmpeg, ffprobe, path, container, frames_path, target, media_cfg, progress,
            deadline) -> Rendered:
    with budget.reservation(PROBE_COST, "inspecting the video", deadline):
        info = probe(ffprobe, path, container, deadline)
    if info.width * info.height > media_cfg.max_pixels:
        raise MediaError(422, "invalid_media", f"video is {info.width}x{info.height}, more "
                         f"pixels than media.max_pixels = {media_cfg.max_pixels}")
    cost = decode_cost(info)
    what = f"the video is {info.width}x{info.height} {info.pix_fmt or info.codec}"
    with budget.reservation(cost, what, deadline):
        return _run_ffmpeg(ffmpeg, path, container, frames_path, target, media_cfg, progress,
                           deadline, info, cost)


def _run_ffmpeg(ffmpeg, path, container, frames_path, target, media_cfg, progress, deadline,
                info: Probe, cost: int) -> Rendered:
    frame_size = target.width * target.height * PIXEL_FORMATS[target.pixel_format][1]
    rgb_size = target.width * target.height * 3  # what ffmpeg sends
    direct = target.pixel_format == "RGB24" and target.rotation == 0
    fps, budget, seconds, notes = plan(info, frame_size, media_cfg)
    expected = min(budget, max(1, math.ceil(min(info.duration or seconds, seconds) * fps)))
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            "-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST,
            "-threads", str(decoder_threads(info)), "-f", container.demuxer,
            "-i", f"file:{path}",
            "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", filter_graph(info, target, fps),
            "-t", f"{seconds:.3f}", "-frames:v", str(budget),
            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    # the frame file first: if it cannot be created no child is started (a child started
    # before it would be left behind, sleeping on a full pipe)
    writer = FrameWriter(frames_path, target.width, target.height, target.pixel_format)
    child = None
    try:
        child = Child(argv, deadline, data_limit=cost + DATA_SLACK)
        frame = memoryview(bytearray(rgb_size))  # the one frame in memory
        while writer.count < budget:
            if child.readinto(frame) < rgb_size:
                break  # end of stream (a partial last frame is dropped)
            packed = frame if direct else to_pixels(
                frame_image(frame, target.width, target.height), target.pixel_format,
                target.rotation)
            writer.add(packed, frame_ms(writer.count, fps))
            if progress:
                progress(min(1.0, writer.count / expected))
        if writer.count >= budget:
            child.kill()  # enough: whatever ffmpeg still has is not wanted
        elif child.finish() != 0 and writer.count:
            notes.append(f"the decoder reported an error after {writer.count} frames; "
                         "kept those")
        if writer.count == 0:
            raise MediaError(422, "invalid_media", "no frame could be decoded from the "
                             "video: " + child.last_error(path))
        header = writer.finish()
    finally:
        writer.close()
        if child is not None:
            child.close()
    return Rendered("video", container.ext, info.width, info.height, header.count,
                    sum(writer.durations), notes, container.ext)
