"""Hostile uploads: each gets a 4xx (never a 500, never a crash) and leaves nothing behind."""

import io
import os
import threading
import time

import psutil
import pytest
from conftest import Client, gif_bytes, jpeg_bytes, make_config, png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mediagen import (
    HAVE_FFMPEG,
    HLS_PLAYLIST,
    HTML,
    SVG,
    gif_many_frames,
    png_header_only,
    video_bytes,
    zip_bytes,
)
from PIL import Image

from loop.service.app import App


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One server for the whole module (rate limits opened wide for the barrage)."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = make_config(root, **{"web.rate_upload_per_sec": 10000.0,
                               "web.rate_upload_burst": 10000,
                               "media.decode_timeout_sec": 20.0})
    app = App(cfg, environ={})
    app.start()
    client = Client(app.server.port)
    keep = client.post("/api/media?name=keep.png", body=png_bytes((7, 7, 7)))
    assert keep.status == 201
    yield app, client
    app.stop()


def snapshot(app):
    """Every file under the data dir except the index (its debounced settings may move)."""
    root = app.cfg.system.data_dir
    out = {}
    for base, _, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            if os.path.relpath(path, root) != "index.json":
                out[os.path.relpath(path, root)] = os.path.getsize(path)
    return out


def refused(hostile, send, statuses=None):
    """Upload something hostile; check the answer and that nothing was left behind."""
    app, client = hostile
    before, items = snapshot(app), app.store.view.items
    reply = send(client)
    assert 400 <= reply.status < 500, reply
    assert reply.json["success"] is False and reply.json["error"] and reply.json["message"]
    if statuses:
        assert reply.status in statuses, reply
    assert snapshot(app) == before
    assert app.store.view.items == items
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []
    assert psutil.Process().children() == []  # no ffmpeg left running
    return reply


def raw(data, name="x"):
    return lambda client: client.post(f"/api/media?name={name}", body=data)


def form(data, name):
    return lambda client: client.upload([(name, data)])


def noise_png(size=(120, 80)) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("name, data", [
    ("gif", gif_bytes(size=(64, 64))),
    ("png", noise_png()),
    ("jpg", jpeg_bytes(size=(200, 120))),
])
def test_truncated_images(hostile, name, data):
    for cut in (len(data) // 2, len(data) // 3, 20):  # pixel data cut, header cut
        refused(hostile, form(data[:cut], f"t.{name}"), {415, 422})


def test_huge_png_header_is_refused_before_decoding(hostile):
    started = time.monotonic()
    reply = refused(hostile, raw(png_header_only(30000, 30000), "big.png"), {422})
    assert "pixels" in reply.json["message"] and time.monotonic() - started < 2


def test_gif_with_100k_frames_is_refused_quickly(hostile):
    data = gif_many_frames(100_000)
    started = time.monotonic()
    reply = refused(hostile, raw(data, "many.gif"), {422})
    assert "frames" in reply.json["message"] and time.monotonic() - started < 5


@pytest.mark.parametrize("data", [zip_bytes(), HTML, SVG, b"GIF89a" + HTML,
                                  b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"],
                         ids=["zip", "html", "svg", "gif-magic-html", "pdf"])
def test_other_files_renamed_gif(hostile, data):
    refused(hostile, form(data, "cat.gif"), {415, 422})


def test_heif_photo_says_what_it_is(hostile):
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + os.urandom(500)
    reply = refused(hostile, form(heic, "IMG_0001.HEIC"), {415})
    assert "HEIF" in reply.json["message"]


def test_zero_bytes(hostile):
    refused(hostile, raw(b"", "empty.gif"), {400})
    refused(hostile, form(b"", "empty.gif"), {422})


def test_path_in_the_name_is_only_a_name(hostile):
    app, client = hostile
    refused(hostile, form(b"root:x:0:0:root:/root:/bin/sh\n", "../../etc/passwd"), {415})
    refused(hostile, raw(b"root:x:0:0:root:/root:/bin/sh\n", "..%2F..%2Fetc%2Fpasswd"), {415})
    reply = client.upload([("../../etc/passwd", png_bytes((1, 2, 3)))])
    assert reply.status == 201
    item = reply.data["results"][0]["item"]
    assert item["name"] == "passwd"
    assert sorted(os.listdir(app.store.item_dir(item["id"]))) == \
        ["frames.bin", "meta.json", "original.png", "thumb.png"]
    assert client.request("DELETE", f"/api/media/{item['id']}").status == 200


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg not installed")
def test_hls_playlist_renamed_mp4_opens_nothing(hostile, tmp_path):
    """The playlist points at a FIFO: opening it would block, and a reader would show."""
    fifo = tmp_path / "segment.ts"
    os.mkfifo(fifo)
    opened = threading.Event()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:  # succeeds only while someone has the FIFO open for reading
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.002)
                continue
            opened.set()
            os.close(fd)
            return
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for target in (str(fifo).encode(), b"file://" + str(fifo).encode(),
                       b"http://192.0.2.1/x.ts"):
            refused(hostile, form(HLS_PLAYLIST % target, "clip.mp4"), {415})
        concat = b"ffconcat version 1.0\nfile '" + str(fifo).encode() + b"'\n"
        refused(hostile, form(concat, "clip.mp4"), {415})
        refused(hostile, form(b"\x00\x00\x00\x18ftypisom" + HLS_PLAYLIST % str(fifo).encode(),
                              "clip.mp4"), {415, 422})
    finally:
        stop.set()
        watcher.join(2)
    assert not opened.is_set(), "something opened the file the playlist names"


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg not installed")
@pytest.mark.parametrize("head", [b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2mp41",
                                  b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm",
                                  b"RIFF\x00\x10\x00\x00AVI LIST"],
                         ids=["mp4", "webm", "avi"])
def test_video_magic_with_garbage(hostile, head):
    refused(hostile, form(head + os.urandom(3000), "v.bin"), {415, 422})


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg not installed")
def test_truncated_video(hostile):
    data = video_bytes("mp4")  # moov at the end: without it nothing can be decoded
    refused(hostile, form(data[:len(data) // 2], "half.mp4"), {422})


MAGIC = [b"", b"GIF89a", b"GIF87a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM",
         b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"\x00\x00\x00\x1cftypavif"]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=2048))
def test_random_bytes(hostile, magic, body):
    app, client = hostile
    reply = client.post("/api/media?name=r.gif", body=magic + body)
    if reply.status == 201:  # random bytes that happen to decode are fine; tidy up
        client.request("DELETE", f"/api/media/{reply.data['results'][0]['item']['id']}")
        return
    assert 400 <= reply.status < 500, reply
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []


def test_server_is_fine_afterwards(hostile):
    app, client = hostile
    assert client.get("/api/poll/health").status == 200
    assert client.post("/api/media?name=ok.gif", body=gif_bytes()).status == 201
    assert app.server.counters.by_status.get(500, 0) == 0
