"""Memory bombs inside the limits (issue 16, item 1): small files that decode into hundreds
of MB. Each is built here (bench/bombs.py), sent to the real service (`loop.py` as a
subprocess, the shipped `system.memory_limit_mb`), and must get a clear 4xx or a correct item
while the service's peak RSS (VmHWM) plus its children's stays within the limit."""

from __future__ import annotations

import os
import re
import threading
import time

import psutil
import pytest
from conftest import Client, make_config, write_config
from mediagen import needs_ffmpeg

from bench import bombs
from loop import config
from loop.media import budget, image, video
from loop.media.errors import MediaError
from loop.media.geometry import Target

LIMIT_MB = config.defaults().system.memory_limit_mb


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            found = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
        return int(found.group(1)) if found else 0
    except OSError:
        return 0


class ChildPeaks(threading.Thread):
    """Samples the service's children (ffmpeg, ffprobe) every 5 ms: the highest sum of
    their peak RSS (VmHWM) seen at once."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb = pid, 0
        self.halt = threading.Event()

    def run(self):
        service = psutil.Process(self.pid)
        while not self.halt.is_set():
            try:
                children = service.children(recursive=True)
            except psutil.Error:
                return
            self.peak_kb = max(self.peak_kb, sum(status_kb(c.pid, "VmHWM") for c in children))
            self.halt.wait(0.005)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The real service with the shipped memory limit (rate limits opened for the barrage)."""
    from conftest import spawn
    root = tmp_path_factory.mktemp("bombs")
    path = write_config(root / "config.json", root / "data",
                        web={"rate_upload_per_sec": 1000.0, "rate_upload_burst": 1000})
    svc = spawn(path)
    yield svc
    if svc.proc.poll() is None:
        svc.proc.terminate()
        svc.proc.wait(20)


def send_at_once(service, blobs: list[tuple[str, bytes]], timeout=120):
    """Upload every blob at once; (replies, service VmHWM MB, children's peak MB)."""
    children = ChildPeaks(service.proc.pid)
    children.start()
    replies = [None] * len(blobs)

    def send(n, name, data):  # from distinct clients: one client holds at most 2 of 3 slots
        replies[n] = Client(service.port, source=f"127.0.0.{10 + n}").post(
            f"/api/media?name={name}", body=data, timeout=timeout)
    threads = [threading.Thread(target=send, args=(n, name, data))
               for n, (name, data) in enumerate(blobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    children.halt.set()
    children.join(5)
    return replies, status_kb(service.proc.pid, "VmHWM") / 1024, children.peak_kb / 1024


def refused_within_budget(service, blobs, size_text):
    started = time.monotonic()
    replies, own, children = send_at_once(service, blobs)
    for reply in replies:
        assert reply.status == 422, reply
        message = reply.json["message"]
        assert size_text in message and "system.memory_limit_mb" in message, message
        assert re.search(r"needs about \d+ MB, more than the \d+ MB", message), message
    assert own + children <= LIMIT_MB, (own, children)
    assert time.monotonic() - started < 30  # refused from the header, not after a decode
    assert service.proc.poll() is None


def test_png_bomb(service):
    refused_within_budget(service, [("big.png", bombs.png_rgba())], "6300x6300 RGBA PNG")


def test_animated_webp_bomb(service):
    refused_within_budget(service, [("anim.webp", bombs.webp_animated())],
                          "6000x6000 animated RGBA WEBP")


def test_three_webp_bombs_at_once_do_not_add_up(service):
    refused_within_budget(service, [(f"anim{n}.webp", bombs.webp_animated(frames=n))
                                    for n in (2, 3, 4)], "6000x6000 animated")


def test_gif_of_many_tiny_frames_on_a_huge_screen(service):
    refused_within_budget(service, [("many.gif", bombs.gif_many_frames())],
                          "6000x6000 animated P GIF")


@needs_ffmpeg
def test_mkv_with_patched_dimensions(service):
    refused_within_budget(service, [("big.mkv", bombs.mkv_patched())], "6300x6300")
    assert psutil.Process(service.proc.pid).children() == []


def test_decodes_that_fit_alone_wait_for_each_other(service):
    """Three 3000x3000 RGBA PNGs (~42 MB each to decode) at once: together more than the
    pool, so one waits for the others; all three become items, and memory stays in bounds."""
    blobs = [(f"mid{n}.png", bombs.png_rgba(3000, 3000 + n)) for n in range(3)]
    replies, own, children = send_at_once(service, blobs)
    assert [r.status for r in replies] == [201, 201, 201], replies
    assert own + children <= LIMIT_MB, (own, children)


# ---- the pool itself, in process -------------------------------------------------------------
def test_a_slot_binds_the_pool_to_its_thread_and_release_unbinds_it(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(bombs.png_rgba(3000, 3000))
    slots = budget.DecodeSlots(2, 10 * budget.MiB, "a test pool")
    assert slots.acquire(blocking=False)
    try:
        with pytest.raises(MediaError) as refused:
            image.render_image(str(path), str(tmp_path / "a.bin"), Target(64, 32),
                               config.defaults().media)
        assert refused.value.status == 422 and "a test pool" in refused.value.message
    finally:
        slots.release()
    # no slot held: not budgeted (the bench's render alone, the self-test)
    image.render_image(str(path), str(tmp_path / "b.bin"), Target(64, 32),
                       config.defaults().media)
    assert slots.refused == 1 and slots.held == 0


def test_a_reservation_waits_for_memory_then_gives_up_with_503():
    slots = budget.DecodeSlots(3, 100, "pool")
    entered = threading.Event()
    leave = threading.Event()

    def holder():
        with slots.reserve(80, "first", None):
            entered.set()
            leave.wait(10)
    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(5)
    with pytest.raises(MediaError) as busy:
        with slots.reserve(30, "second", time.monotonic() + 0.2):
            pass
    assert busy.value.status == 503
    got = threading.Event()

    def waiter():
        with slots.reserve(30, "third", time.monotonic() + 10):
            got.set()
    second = threading.Thread(target=waiter)
    second.start()
    time.sleep(0.1)
    assert not got.is_set()  # waits while the first holds 80 of 100
    leave.set()
    second.join(5)
    thread.join(5)
    assert got.is_set() and slots.held == 0 and slots.peak == 80


def test_maintenance_rerenders_are_budgeted_too(make_app, tmp_path):
    app = make_app()
    client = Client(app.server.port)
    reply = client.post("/api/media?name=mid.png", body=bombs.png_rgba(2000, 2000))
    assert reply.status == 201, reply
    app.job_slots.set_capacity(4 * budget.MiB, "a tiny pool")
    assert client.put("/api/display", json_body={"fit": "cover"}).status == 200
    item = reply.data["results"][0]["item"]["id"]

    def failed():
        jobs = client.get("/api/poll/progress").data["jobs"]
        return [j for j in jobs if j["id"] == f"render-{item}" and j["stage"] == "failed"]
    deadline = time.monotonic() + 30
    while not failed() and time.monotonic() < deadline:
        time.sleep(0.05)
    job = failed()
    assert job and "a tiny pool" in job[0]["error"], job


# ---- ffmpeg under its memory limit ------------------------------------------------------------
@needs_ffmpeg
def test_a_video_that_lies_about_its_size_hits_the_child_limit(tmp_path, monkeypatch):
    """As if the header had said 64x64: the decode is budgeted small, and ffmpeg, which then
    finds 6300x6300 frames, runs into its RLIMIT_DATA instead of taking the memory."""
    path = tmp_path / "big.mkv"
    path.write_bytes(bombs.mkv_patched())
    monkeypatch.setattr(video, "decode_cost", lambda info: video.CHILD_BASE)
    cfg = make_config(tmp_path)
    with pytest.raises(MediaError) as refused:
        video.render(str(path), video.sniff(str(path)), str(tmp_path / "f.bin"),
                     Target(64, 32), cfg.media)
    assert refused.value.status == 422
    assert "it may have run out of" in refused.value.message
    assert [c for c in psutil.Process().children() if c.name() in ("ffmpeg", "sh")] == []
    assert not os.path.exists(tmp_path / "f.bin") or os.path.getsize(tmp_path / "f.bin") < 4096
