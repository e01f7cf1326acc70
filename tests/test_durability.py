"""Nothing acknowledged is lost: kill -9 torture, fault injection, start-up recovery."""

import errno
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, Client, gif_bytes, png_bytes, spawn, wait_for, write_config
from mediagen import HAVE_FFMPEG, video_bytes
from PIL import Image

from loop.library import store
from loop.media import frames

ROUNDS = int(os.environ.get("LOOP_TORTURE_ROUNDS", "50"))
OPEN_LIMITS = {"rate_upload_per_sec": 10000.0, "rate_upload_burst": 10000,
               "rate_control_per_sec": 10000.0, "rate_control_burst": 10000,
               "rate_poll_per_sec": 10000.0, "rate_poll_burst": 10000,
               "access_log": False}


# ---- kill -9 torture ------------------------------------------------------------------------
class Model:
    """What the clients were told: per item id, 'present', 'absent' or 'unknown' (in flight
    when the server died). Only acknowledged answers move an id to present/absent."""

    def __init__(self):
        self.state: dict[str, str] = {}
        self.lock = threading.Lock()
        self.serial = 0

    def next_upload(self, rng) -> tuple[str, bytes, str]:
        with self.lock:
            self.serial += 1
            n = self.serial
        colour = (n % 251, (n // 251) % 251, 100 + n % 97)
        if rng.random() < 0.4:  # an animation: more frames to write, a longer commit
            data = gif_bytes(colours=[(colour[0], colour[1], i * 20) for i in range(12)],
                             delays=[40] * 12, size=(48, 24))
            name = f"a{n}.gif"
        else:
            data = png_bytes(colour, size=(64 + n % 7, 32))
            name = f"p{n}.png"
        return store_id(data), data, name

    def claim_present(self, rng) -> str | None:
        with self.lock:
            present = [i for i, s in self.state.items() if s == "present"]
            if not present:
                return None
            item_id = rng.choice(present)
            self.state[item_id] = "unknown"
            return item_id

    def set(self, item_id: str, state: str) -> None:
        with self.lock:
            self.state[item_id] = state


def store_id(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()[:16]


def client_loop(port: int, model: Model, rng: random.Random, stop: threading.Event,
                source: str) -> None:
    client = Client(port, source=source)
    while not stop.is_set():
        try:
            with model.lock:
                present = sum(s == "present" for s in model.state.values())
            if rng.random() < (0.7 if present < 30 else 0.4):  # a library of a few dozen
                item_id, data, name = model.next_upload(rng)
                model.set(item_id, "unknown")
                if rng.random() < 0.5:
                    reply = client.post(f"/api/media?name={name}", body=data, timeout=5)
                else:
                    reply = client.upload([(name, data)])
                if reply.status in (200, 201):
                    model.set(item_id, "present")
                else:
                    raise AssertionError(f"upload refused: {reply}")
            else:
                item_id = model.claim_present(rng)
                if item_id is None:
                    continue
                reply = client.request("DELETE", f"/api/media/{item_id}", timeout=5)
                if reply.status == 200:
                    model.set(item_id, "absent")
                else:
                    raise AssertionError(f"delete refused: {reply}")
        except (OSError, http.client.HTTPException):
            return  # the server was killed under us: that op's outcome is unknown


def check_after_restart(service, data_dir: str, model: Model, rng, where: str) -> None:
    tmp = os.listdir(os.path.join(data_dir, "tmp"))
    assert tmp == [], f"{where}: tmp/ not empty after start-up: {tmp}"
    with open(os.path.join(data_dir, "index.json")) as fh:
        index = json.load(fh)  # parses
    listed = {m["id"] for m in index["items"]}
    api = {m["id"]: m for m in service.client.get("/api/media").data["items"]}
    assert set(api) == listed, where
    media_dirs = set(os.listdir(os.path.join(data_dir, "media")))
    assert media_dirs == listed, f"{where}: media/ {media_dirs ^ listed} disagree with index"
    assert not [n for n in os.listdir(data_dir) if n.endswith(".tmp")], where
    for item_id, state in sorted(model.state.items()):
        if state == "present":
            assert item_id in listed, f"{where}: acknowledged upload {item_id} lost"
        elif state == "absent":
            assert item_id not in listed, f"{where}: acknowledged delete {item_id} came back"
    for item_id in listed:  # nothing listed is broken
        directory = os.path.join(data_dir, "media", item_id)
        frames.validate(os.path.join(directory, "frames.bin"))
        meta = api[item_id]
        assert not meta["quarantined"], where
        assert os.path.exists(os.path.join(directory, f"original.{index_ext(index, item_id)}"))
        with open(os.path.join(directory, "meta.json")) as fh:
            assert json.load(fh)["id"] == item_id
    # the unknowns are settled by what survived; the model is exact again
    for item_id, state in list(model.state.items()):
        if state == "unknown":
            model.state[item_id] = "present" if item_id in listed else "absent"
    for item_id in rng.sample(sorted(listed), min(2, len(listed))):  # and it plays
        status = service.client.post("/api/playback/select", json_body={"id": item_id})
        assert status.status == 200 and status.data["item"] == item_id, where
        assert status.data["state"] == "playing", where


def index_ext(index: dict, item_id: str) -> str:
    return next(m for m in index["items"] if m["id"] == item_id)["ext"]


@pytest.mark.timeout(60 + ROUNDS * 10)
def test_kill_minus_9_torture(tmp_path):
    seed = int(os.environ.get("LOOP_TORTURE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    data_dir = str(tmp_path / "data")
    cfg = write_config(tmp_path / "config.json", data_dir, web=OPEN_LIMITS,
                       system={"log_level": "WARNING"})
    model = Model()
    kills_mid_start = 0
    for round_no in range(ROUNDS):
        where = f"round {round_no} (LOOP_TORTURE_SEED={seed})"
        if round_no % 10 == 9:  # now and then, die during start-up recovery itself
            kills_mid_start += 1
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "loop.py"),
                                     "--config", cfg], cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 0.25))
            proc.kill()
            proc.wait(10)
        service = spawn(cfg)
        try:
            check_after_restart(service, data_dir, model, rng, where)
            stop = threading.Event()
            threads = [threading.Thread(target=client_loop, daemon=True,
                                        args=(service.port, model,
                                              random.Random(rng.random()), stop,
                                              f"127.0.0.{2 + n}")) for n in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.02, 0.3))
            service.proc.send_signal(signal.SIGKILL)
            service.proc.wait(10)
            stop.set()
            for thread in threads:
                thread.join(10)
                assert not thread.is_alive(), where
        finally:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait(10)
    final = spawn(cfg)
    try:
        check_after_restart(final, data_dir, model, rng, "final")
        health = final.client.get("/api/poll/health").data
        assert "recovery" in health["checks"]["storage"]
    finally:
        final.proc.kill()
        final.proc.wait(10)
    acknowledged = sum(s == "present" for s in model.state.values())
    assert model.serial > ROUNDS, f"too little traffic to mean anything ({model.serial})"
    print(f"torture: {ROUNDS} rounds, {model.serial} uploads tried, {acknowledged} items "
          f"kept, seed {seed}")


# ---- fault injection: ENOSPC ------------------------------------------------------------------
def library_state(app):
    root = app.cfg.system.data_dir
    files = {}
    for base, _, names in os.walk(os.path.join(root, "media")):
        for name in names:
            with open(os.path.join(base, name), "rb") as fh:
                files[os.path.relpath(os.path.join(base, name), root)] = fh.read()
    with open(os.path.join(root, "index.json")) as fh:
        items = json.load(fh)["items"]
    return files, items, app.store.view.items


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs as the data directory, where the sandbox lets us mount one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path, leave_bytes: int) -> None:
    """Fill the filesystem of `path` until `leave_bytes` remain."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "filler"), "ab") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_enospc_on_a_real_full_disk_is_507_and_the_library_survives(make_app, tiny_disk,
                                                                    monkeypatch):
    app = make_app(**{"system.data_dir": str(tiny_disk / "data"),
                      "system.min_free_disk_percent": 0.0, "media.max_item_mb": 0.2})
    client = Client(app.server.port)
    keep = client.post("/api/media?name=keep.png", body=png_bytes())
    assert keep.status == 201
    before = library_state(app)
    real_check = app.intake.check_disk

    def check_then_someone_fills_the_disk(length):
        real_check(length)  # passes: there was room when the request came in
        fill(str(tiny_disk), leave_bytes=40_000)
    monkeypatch.setattr(app.intake, "check_disk", check_then_someone_fills_the_disk)
    noise = Image.frombytes("RGB", (160, 120), os.urandom(160 * 120 * 3))
    out = io.BytesIO()
    noise.save(out, "PNG")
    cases = {  # the body itself does not fit; the frames do not fit
        "receiving": out.getvalue(),
        "rendering": gif_bytes(colours=[(i, 0, 0) for i in range(12)], delays=[50] * 12,
                               size=(32, 16)),
    }
    for stage, data in cases.items():
        reply = client.post(f"/api/media?name={stage}", body=data)
        assert reply.status == 507 and reply.json["error"] == "insufficient_storage", stage
        os.unlink(tiny_disk / "filler")
        assert library_state(app) == before, stage
        assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []
    jobs = client.get("/api/poll/progress").data["jobs"]
    assert [j["stage"] for j in jobs][-2:] == ["failed", "failed"]
    monkeypatch.undo()
    assert client.post("/api/media?name=ok.gif", body=gif_bytes()).status == 201


def test_enospc_while_rendering_is_507(app, client, monkeypatch):
    client.post("/api/media?name=keep.png", body=png_bytes())
    before = library_state(app)

    def full(self, frame, ms):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(frames.FrameWriter, "add", full)
    reply = client.post("/api/media?name=a.gif", body=gif_bytes())
    assert reply.status == 507 and reply.json["error"] == "insufficient_storage"
    assert library_state(app) == before
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []


def test_enospc_on_the_index_keeps_the_item_on_delete(app, client, monkeypatch):
    item = client.post("/api/media?name=a.png", body=png_bytes()).data["results"][0]["item"]
    before = library_state(app)
    real_open = open

    def no_space_for_index(path, mode="r", *args, **kwargs):
        if "index.json" in os.fspath(path) and "x" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr("builtins.open", no_space_for_index)
    reply = client.request("DELETE", f"/api/media/{item['id']}")
    monkeypatch.undo()
    assert reply.status == 507
    assert library_state(app) == before  # renamed back into media/, index untouched
    assert client.get(f"/api/media/{item['id']}").status == 200
    health = client.get("/api/poll/health").data["checks"]["storage"]
    assert health["status"] == "degraded" and "index.json" in health["reason"]
    assert client.request("DELETE", f"/api/media/{item['id']}").status == 200
    assert client.get("/api/poll/health").data["checks"]["storage"]["status"] == "ok"


# ---- fault injection: fsync -----------------------------------------------------------------
def fail_fsync_for(monkeypatch, predicate):
    """os.fsync raises EIO for files whose path matches; counts the refusals."""
    real = os.fsync
    refused = []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if predicate(path):
            refused.append(path)
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return refused


def test_failed_index_fsync_is_fatal_and_the_old_index_stays(app, client, monkeypatch):
    client.post("/api/media?name=keep.png", body=png_bytes())
    index_path = os.path.join(app.cfg.system.data_dir, "index.json")
    with open(index_path, "rb") as fh:
        old_index = fh.read()
    before = library_state(app)
    refused = fail_fsync_for(monkeypatch, lambda p: "index.json" in p and p.endswith(".tmp"))
    reply = client.post("/api/media?name=new.gif", body=gif_bytes())
    assert reply.status == 500 and "storage write failed" in reply.json["message"]
    assert len(refused) == 1  # tried once: no retry-and-pretend
    monkeypatch.undo()
    with open(index_path, "rb") as fh:
        assert fh.read() == old_index
    assert library_state(app) == before  # the new item's directory was taken out again
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []
    storage = client.get("/api/poll/health").data["checks"]["storage"]
    assert storage["status"] == "degraded" and "Input/output error" in storage["reason"]
    assert client.post("/api/media?name=new.gif", body=gif_bytes()).status == 201
    assert client.get("/api/poll/health").data["checks"]["storage"]["status"] == "ok"


def test_failed_frames_fsync_fails_the_upload(app, client, monkeypatch):
    before = library_state(app)
    fail_fsync_for(monkeypatch, lambda p: p.endswith("frames.bin"))
    reply = client.post("/api/media?name=new.gif", body=gif_bytes())
    assert reply.status == 500
    monkeypatch.undo()
    assert library_state(app) == before
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []


# ---- fault injection: a hanging ffmpeg -------------------------------------------------------
@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffprobe is needed to get as far as ffmpeg")
def test_hanging_ffmpeg_is_killed_at_the_deadline(make_app, tmp_path):
    pids = tmp_path / "pids"
    fake = tmp_path / "ffmpeg"  # a stand-in for the external tool, for this fault only
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pids}\nwait\n")
    fake.chmod(0o755)
    app = make_app(**{"media.ffmpeg": str(fake), "media.decode_timeout_sec": 1.0,
                      "processing.max_concurrent_jobs": 1})
    client = Client(app.server.port)
    started = time.monotonic()
    reply = client.post("/api/media?name=hang.mp4", body=video_bytes("mp4"),
                        headers={"X-Upload-Id": "hang"}, timeout=60)
    took = time.monotonic() - started
    assert reply.status == 422 and "media.decode_timeout_sec" in reply.json["message"]
    assert 0.9 < took < 60  # the deadline, not the stand-in's 300 s
    for pid in map(int, pids.read_text().split()):  # ffmpeg and what it started: gone
        wait_for(lambda pid=pid: not _alive(pid))
    job = next(j for j in client.get("/api/poll/progress").data["jobs"] if j["id"] == "hang")
    assert job["stage"] == "failed" and "decode_timeout" in job["error"]
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []
    # the server is fine and the only slot is free again
    assert client.get("/api/poll/health").status == 200
    assert client.post("/api/media?name=ok.png", body=png_bytes()).status == 201


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


# ---- start-up recovery --------------------------------------------------------------------
def test_recovery_is_reported_in_health_and_the_log(make_app, caplog):
    app = make_app()
    client = Client(app.server.port)
    ids = [client.post(f"/api/media?name={i}.png", body=png_bytes((i, 0, 0)))
           .data["results"][0]["item"]["id"] for i in range(3)]
    app.stop()
    data = app.cfg.system.data_dir
    # a crash half way through a delete (before the index), an upload staged in tmp/,
    # an unlisted directory in media/, a half-written index temp file
    os.rename(os.path.join(data, "media", ids[0]),
              os.path.join(data, "tmp", f"deleted-{ids[0]}-0a1b2c3d"))
    os.mkdir(os.path.join(data, "tmp", "up-123"))
    os.mkdir(os.path.join(data, "media", "0123456789abcdef"))
    with open(os.path.join(data, ".index.json.abc.tmp"), "w") as fh:
        fh.write("{")
    # and a frame file cut short under a listed item
    with open(os.path.join(data, "media", ids[2], "frames.bin"), "r+b") as fh:
        fh.truncate(100)
    caplog.set_level("INFO", logger="loop.store")
    again = make_app()
    report = Client(again.server.port).get("/api/poll/health").data["checks"]["storage"]
    recovery = report["recovery"]
    assert recovery["restored"] == [ids[0]]
    assert recovery["tmp_removed"] == 1 and recovery["orphans_removed"] == 1
    assert recovery["temp_files_removed"] == 1
    # the broken frames are made again from the original: the item stays
    assert recovery["dropped"] == [] and [d["id"] for d in recovery["rerender"]] == [ids[2]]
    assert [m["id"] for m in again.store.view.items] == ids
    assert "recovery:" in caplog.text and f"item {ids[2]} is kept" in caplog.text
    assert sorted(os.listdir(os.path.join(data, "media"))) == sorted(ids)
    # the maintenance thread renders it in tmp/ and swaps the frames in
    wait_for(lambda: not again.store.view.pending
             and os.listdir(os.path.join(data, "tmp")) == [], timeout=30)
    frames.validate(again.store.frames_path(ids[2]))


def test_a_damaged_frame_file_after_a_kill_is_rendered_again_from_the_original(tmp_path,
                                                                             services):
    """A power cut or a kill on a card that lies about fsync can leave a frame file cut
    short. The original is the user's data: the item stays, gets new frames from it, and
    plays; only an item whose original is unreadable is dropped, and the log says which."""
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "config.json", data_dir)
    service = services(cfg)
    uploads = {name: gif_bytes(colours=[(i * 40, 200, 0) for i in range(1, 4)],
                               delays=(60, 60, 60)) if name == "cat.gif" else png_bytes(colour)
               for name, colour in (("cat.gif", None), ("sun.png", (250, 200, 0)),
                                    ("lost.png", (0, 0, 250)))}
    ids = {}
    for name, data in uploads.items():
        reply = service.client.post(f"/api/media?name={name}", body=data)
        assert reply.status == 201
        ids[name] = reply.data["results"][0]["item"]["id"]
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait(10)
    media = data_dir / "media"
    for name in ("cat.gif", "lost.png"):  # frames cut short mid-frame, as a torn write
        with open(media / ids[name] / "frames.bin", "r+b") as fh:
            fh.truncate(os.path.getsize(fh.name) // 2 + 1)
    (media / ids["sun.png"] / "frames.bin").write_bytes(b"\0" * 64)  # garbage
    lost_original = next((media / ids["lost.png"]).glob("original.*"))
    lost_original.write_bytes(b"")  # and this one's original is gone too

    again = services(cfg)
    listed = {m["id"]: m for m in again.client.get("/api/media").data["items"]}
    assert set(listed) == {ids["cat.gif"], ids["sun.png"]}
    assert not (media / ids["lost.png"]).exists()
    recovery = again.client.get("/api/poll/health").data["checks"]["storage"]["recovery"]
    assert {d["id"] for d in recovery["rerender"]} == {ids["cat.gif"], ids["sun.png"]}
    assert recovery["dropped"] == [{"id": ids["lost.png"], "reason": "original is empty"}]
    log = again.stderr()
    assert f"item {ids['cat.gif']} is kept and will be re-rendered from its original" in log
    assert f"item {ids['lost.png']} is dropped and its files removed: original is empty" in log

    def rendered():
        items = again.client.get("/api/media").data["items"]
        return all(not m["pending"] for m in items) and items
    wait_for(rendered, timeout=30)
    for name in ("cat.gif", "sun.png"):
        item_id = ids[name]
        original = again.client.get(f"/api/media/{item_id}/original")
        assert original.status == 200 and original.body == uploads[name]
        frames.validate(str(media / item_id / "frames.bin"))
        status = again.client.post("/api/playback/select", json_body={"id": item_id})
        assert status.status == 200 and status.data["item"] == item_id
        assert status.data["state"] == "playing"
    assert again.terminate() == 0


def test_clean_start_says_so(make_app, caplog):
    caplog.set_level("INFO", logger="loop.store")
    app = make_app()
    assert "data directory was clean" in caplog.text
    assert app.store.recovery["dropped"] == [] and not app.store.recovery["rebuilt"]


def test_replace_render_crash_windows_leave_a_valid_item(tmp_path):
    """Frames swapped but the index not yet written: still valid, just rendered again."""
    st = store.Store(str(tmp_path), {"fit": "contain"})
    st.open()
    staging = st.new_temp_dir("item")
    writer = frames.FrameWriter(os.path.join(staging, "frames.bin"), 4, 2)
    writer.add(b"\1" * 24, 100)
    writer.finish()
    with open(os.path.join(staging, "original.png"), "wb") as fh:
        fh.write(png_bytes())
    meta = {"id": "00000000000000aa", "name": "x", "ext": "png",
            "render": {"width": 4, "height": 2, "pixel_format": "RGB24", "fit": "contain"}}
    st.commit_item(staging, meta)
    render = st.new_temp_dir("render")
    writer = frames.FrameWriter(os.path.join(render, "frames.bin"), 8, 2)
    writer.add(b"\2" * 48, 100)
    writer.finish()
    open(os.path.join(render, "thumb.png"), "wb").close()
    real = st._transaction

    def crash(change):
        raise store.MediaError(500, "internal", "power cut")
    st._transaction = crash
    with pytest.raises(store.MediaError):
        st.replace_render(meta["id"], render, {"render": {"width": 8}})
    st._transaction = real
    again = store.Store(str(tmp_path), {"fit": "contain"})
    again.open()
    assert again.recovery["dropped"] == []
    assert frames.validate(again.frames_path(meta["id"])).width == 8
    assert again.view.get(meta["id"])["render"]["width"] == 4  # will be rendered again


def test_failed_commit_before_the_rename_leaves_nothing(app, client, monkeypatch):
    before = library_state(app)
    fail_fsync_for(monkeypatch, lambda p: "meta.json" in p and p.endswith(".tmp"))
    reply = client.post("/api/media?name=new.gif", body=gif_bytes())
    assert reply.status == 500
    monkeypatch.undo()
    assert library_state(app) == before
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "tmp")) == []
    assert os.listdir(os.path.join(app.cfg.system.data_dir, "media")) == []
