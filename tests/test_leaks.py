"""Resources let go on every path (issue 17, items 5 and 6): no ffmpeg child left when the
frame file cannot be created, no upload file handle left open when the body is cut, no file
opened by `HEAD`, and binding an IPv6 server does not break a later IPv4 one.

A leaked file object shows up as a `ResourceWarning` when it is collected; here that warning
is an error, caught by an unraisable-exception hook (it is raised inside `__del__`)."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import time
import warnings

import psutil
import pytest
from conftest import gif_bytes, make_config, wait_for
from mediagen import needs_ffmpeg, open_upload, video_path

from loop.http import server as http_server
from loop.media import video
from loop.media.errors import MediaError
from loop.media.geometry import Target


@contextlib.contextmanager
def resource_warnings_as_errors():
    """Collect every ResourceWarning (as an error) raised while the block runs, including
    those raised in `__del__` on any thread; yields the list of their messages."""
    caught: list[str] = []
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, ResourceWarning):
            caught.append(str(unraisable.exc_value))
        else:
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            yield caught
            gc.collect()
    finally:
        sys.unraisablehook = previous


def open_files_under(root: str) -> list[str]:
    """Paths under `root` this process holds open (deleted files included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(root)):
                found.append(target)
    return found


@needs_ffmpeg
def test_no_ffmpeg_child_left_when_the_frame_file_cannot_be_created(tmp_path):
    cfg = make_config(tmp_path)
    path = video_path("mp4")
    container = video.sniff(path)
    missing = str(tmp_path / "no-such-dir" / "frames.bin")
    # other tests' long-lived helpers (a browser, a broker) may be children of this process
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with resource_warnings_as_errors() as caught:
        with pytest.raises((OSError, MediaError)) as failure:
            video.render(path, container, missing, Target(64, 32), cfg.media)
        # the failure (and its traceback, which holds the render's locals) is still alive
        assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
        del failure
    assert caught == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_aborted_upload_closes_its_file(make_app):
    app = make_app()
    tmp = os.path.join(app.cfg.system.data_dir, "tmp")
    with resource_warnings_as_errors() as caught:
        sock = open_upload(app.server.port, 100_000, first=b"x" * 5000)
        wait_for(lambda: any(j["stage"] == "receiving" and j["progress"] > 0
                             for j in app.jobs.list()))
        sock.close()  # the body ends early: the upload is aborted
        wait_for(lambda: all(j["stage"] == "failed" for j in app.jobs.list()))
        wait_for(lambda: os.listdir(tmp) == [])
        time.sleep(0.1)  # the connection thread finishes its turn
        assert open_files_under(tmp) == []
    assert caught == []


def test_aborted_multipart_upload_closes_its_file(make_app):
    app = make_app()
    tmp = os.path.join(app.cfg.system.data_dir, "tmp")
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.gif\"\r\n\r\n").encode()
    with resource_warnings_as_errors() as caught:
        sock = open_upload(app.server.port, 100_000, first=head + b"x" * 5000,
                           path="/api/media",
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        wait_for(lambda: any(j["progress"] > 0 for j in app.jobs.list()))
        sock.close()
        wait_for(lambda: app.jobs.list() and all(j["stage"] == "failed"
                                                 for j in app.jobs.list()))
        time.sleep(0.1)
        assert open_files_under(tmp) == []
    assert caught == []


@pytest.mark.parametrize("leaf", ["thumb.png", "original"])
def test_head_on_a_stored_file_opens_nothing_it_keeps(app, client, leaf):
    item = client.post("/api/media?name=a.gif", body=gif_bytes()).data["results"][0]["item"]
    media = os.path.join(app.cfg.system.data_dir, "media")
    with resource_warnings_as_errors() as caught:
        for _ in range(3):
            reply = client.request("HEAD", f"/api/media/{item['id']}/{leaf}")
            assert reply.status == 200 and reply.body == b""
            assert int(reply.headers["Content-Length"]) > 0
        time.sleep(0.1)
        # (the player keeps frames.bin mapped; that is not what HEAD opened)
        assert [p for p in open_files_under(media) if not p.endswith("frames.bin")] == []
    assert caught == []
    # and GET still streams the whole file
    assert len(client.get(f"/api/media/{item['id']}/{leaf}").body) == \
        int(reply.headers["Content-Length"])


class _NoApi:
    def body_limit(self):
        return 0, "media.max_upload_mb"


def test_an_ipv6_bind_does_not_break_later_ipv4_binds(tmp_path):
    web = make_config(tmp_path).web
    first = http_server.bind("::1", 0, web, _NoApi())
    try:
        assert first.socket.family == socket.AF_INET6
        second = http_server.bind("127.0.0.1", 0, web, _NoApi())
        try:
            assert second.socket.family == socket.AF_INET
            assert http_server.LoopServer.address_family == socket.AF_INET
        finally:
            second.server_close()
    finally:
        first.server_close()
