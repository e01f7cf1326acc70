"""Backup and restore: round trip over HTTP and offline, restoring twice, hostile archives
(each leaves the library exactly as it was), the token, and kill -9 at every durable step of
a restore (a forked child kills itself; recovery must find the old library or the new one)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading

import pytest
from conftest import ROOT, Client, gif_bytes, jpeg_bytes, png_bytes, wait_for, write_config

from loop.library import backup
from loop.library.store import Store

TOKEN = "backup-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NIGHT = {"days": ["friday"], "start": "22:00", "end": "07:00", "brightness": 5}


def item_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def upload(client: Client, name: str, data: bytes) -> str:
    reply = client.request("POST", f"/api/media?name={name}", body=data, headers=AUTH,
                           timeout=30)
    assert reply.status in (200, 201), reply
    return item_id(data)


def call(client, method, path, body=None, **kw):
    return client.request(method, path, json_body=body, headers=AUTH, **kw)


MEDIA = {"red.gif": gif_bytes(), "blue.png": png_bytes((0, 0, 200)),
         "photo.jpg": jpeg_bytes((250, 200, 10))}


def build_library(app) -> dict:
    """Three items, a loop order that is not the upload order and leaves one out, settings
    and per-item fields changed from their defaults."""
    client = Client(app.server.port)
    ids = {name: upload(client, name, data) for name, data in MEDIA.items()}
    loop = [ids["photo.jpg"], ids["red.gif"]]
    assert call(client, "PUT", "/api/loop", {"items": loop}).status == 200
    assert call(client, "PATCH", f"/api/media/{ids['red.gif']}",
                {"name": "Red square", "loop_count": 7}).status == 200
    assert call(client, "PUT", "/api/playback/mode", {"mode": "shuffle"}).status == 200
    assert call(client, "PUT", "/api/display", {"brightness": 33, "fit": "cover"}).status == 200
    assert call(client, "PUT", "/api/schedule", {"rules": [NIGHT]}).status == 200
    return {"ids": ids, "loop": loop}


def library_state(client: Client) -> dict:
    media = client.get("/api/media").data["items"]
    return {"items": [(m["id"], m["name"], m["loop_count"], m["bytes"], m["kind"])
                      for m in media],
            "loop": client.get("/api/loop").data["items"],
            "display": {k: client.get("/api/display").data[k] for k in ("brightness", "fit")},
            "mode": client.get("/api/poll/status").data["player"]["mode"],
            "rules": client.get("/api/schedule").data["rules"]}


def disk_state(data_dir) -> dict:
    """index.json (without the current item, which moves as the player plays) and every
    file under media/ with its size and mtime."""
    with open(os.path.join(data_dir, "index.json"), "rb") as fh:
        index = json.load(fh)
    index["settings"].pop("current", None)
    files = {}
    for base, _, names in os.walk(os.path.join(data_dir, "media")):
        for name in names:
            st = os.stat(os.path.join(base, name))
            files[os.path.relpath(os.path.join(base, name), data_dir)] = (st.st_size,
                                                                          st.st_mtime_ns)
    return {"index": index, "files": files}


def get_backup(client: Client) -> bytes:
    reply = client.request("GET", "/api/backup", headers=AUTH, timeout=30)
    assert reply.status == 200, reply
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    return reply.body


def post_restore(client: Client, data: bytes, **kw):
    headers = dict(AUTH, **{"Content-Type": "application/x-tar"})
    return client.request("POST", "/api/restore", body=data, headers=headers, timeout=60,
                          **kw)


def settled(app) -> bool:
    return not app.store.view.pending and not app.jobs.active


def rendered(app) -> bool:
    view = app.store.view
    return bool(view.items) and all(
        os.path.exists(app.store.frames_path(m["id"])) and m.get("render") is not None
        for m in view.items)


@pytest.fixture
def source(make_app, tmp_path):
    """A running app with a library, and the backup of it."""
    app = make_app(web__api_token=TOKEN, schedule__timezone="Europe/Berlin",
                   system__data_dir=str(tmp_path / "source"))
    built = build_library(app)
    wait_for(lambda: settled(app), timeout=30)  # re-rendered for the new fit
    client = Client(app.server.port)
    built.update(app=app, client=client, state=library_state(client),
                 archive=get_backup(client))
    return built


# ---- the archive ---------------------------------------------------------------------------
def test_backup_is_a_plain_tar_without_frames(source):
    with tarfile.open(fileobj=io.BytesIO(source["archive"])) as tar:
        names = tar.getnames()
        index = json.load(tar.extractfile("index.json"))
        for member in tar.getmembers():
            assert member.isreg() and member.mode == 0o644
    assert names[0] == "index.json"
    ids = source["ids"]
    expected = {"index.json"} | {f"media/{i}/meta.json" for i in ids.values()} | {
        f"media/{ids[n]}/original.{ext}" for n, ext in
        (("red.gif", "gif"), ("blue.png", "png"), ("photo.jpg", "jpg"))}
    assert set(names) == expected
    assert not any("frames" in n or "thumb" in n for n in names)
    assert index["loop"] == source["loop"]
    assert index["settings"]["schedule"] == [NIGHT]
    assert index["settings"]["brightness"] == 33 and index["settings"]["mode"] == "shuffle"
    assert all("render" not in meta for meta in index["items"])
    assert len(source["archive"]) % 10240 == 0


def test_backup_needs_the_token_and_head_tells_the_length(source):
    client = source["client"]
    assert client.get("/api/backup").status == 401
    assert client.request("HEAD", "/api/backup").status == 401
    head = client.request("HEAD", "/api/backup", headers=AUTH)
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len(source["archive"])
    assert head.headers["Content-Type"] == "application/x-tar"
    assert head.headers["Content-Disposition"].startswith('attachment; filename="loop-backup-')
    assert client.post("/api/restore", body=source["archive"]).status == 401


def test_backup_streams_without_holding_the_archive(source, monkeypatch):
    """The response carries an iterator and the exact length; no bytes body is built."""
    from loop.http.envelope import Response
    seen = []
    original = Response.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)
    monkeypatch.setattr(Response, "__init__", spy)
    assert get_backup(source["client"]) == source["archive"]
    streamed = [r for r in seen if r.stream is not None]
    assert streamed and streamed[0].body == b""
    assert streamed[0].length == len(source["archive"])


# ---- round trips ---------------------------------------------------------------------------
def test_round_trip_to_an_empty_device(source, make_app, tmp_path):
    target = make_app(web__api_token=TOKEN, schedule__timezone="Europe/Berlin",
                      system__data_dir=str(tmp_path / "target"))
    client = Client(target.server.port)
    reply = post_restore(client, source["archive"])
    assert reply.status == 200, reply
    assert reply.data["items"] == 3 and len(reply.data["added"]) == 3
    assert library_state(client) == source["state"]
    wait_for(lambda: rendered(target), timeout=30)
    wait_for(lambda: client.get("/api/poll/status").data["player"]["item"] in source["loop"])
    for item in source["ids"].values():
        assert client.get(f"/api/media/{item}/thumb.png").status == 200
    # restoring the same backup again changes nothing and renders nothing
    before = disk_state(target.cfg.system.data_dir)
    again = post_restore(client, source["archive"])
    assert again.status == 200 and again.data["added"] == [] and again.data["kept"] == 3
    assert library_state(client) == source["state"]
    after = disk_state(target.cfg.system.data_dir)
    assert after["files"] == before["files"]
    assert after["index"]["items"] == before["index"]["items"]


def test_restore_replaces_the_library_and_keeps_shared_items(source, make_app, tmp_path):
    target = make_app(web__api_token=TOKEN, system__data_dir=str(tmp_path / "target"))
    client = Client(target.server.port)
    shared = upload(client, "blue.png", MEDIA["blue.png"])
    extra = upload(client, "green.png", png_bytes((0, 200, 0)))
    data_dir = target.cfg.system.data_dir
    frames = os.stat(os.path.join(data_dir, "media", shared, "frames.bin"))
    reply = post_restore(client, source["archive"])
    assert reply.status == 200, reply
    assert reply.data["removed"] == 1 and reply.data["kept"] == 1
    assert not os.path.exists(os.path.join(data_dir, "media", extra))
    kept = os.stat(os.path.join(data_dir, "media", shared, "frames.bin"))
    assert kept.st_ino == frames.st_ino  # same bytes, same id: its frames were kept
    state = library_state(client)
    assert [i[0] for i in state["items"]] == [i[0] for i in source["state"]["items"]]
    assert state["loop"] == source["loop"]


def test_offline_backup_and_restore_commands(source, tmp_path, make_app):
    config_path = write_config(tmp_path / "config.json", tmp_path / "unused")
    out = tmp_path / "loop.tar"
    src_dir = source["app"].cfg.system.data_dir
    with open(out, "wb") as fh:
        done = subprocess.run([sys.executable, "loop.py", "backup", "--config", config_path,
                               "--data-dir", src_dir], cwd=ROOT, stdout=fh,
                              stderr=subprocess.PIPE, text=False, timeout=60)
    assert done.returncode == 0, done.stderr
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == sorted(
            tarfile.open(fileobj=io.BytesIO(source["archive"])).getnames())

    target_dir = tmp_path / "offline"
    with open(out, "rb") as fh:
        done = subprocess.run([sys.executable, "loop.py", "--config", config_path, "restore",
                               "--data-dir", str(target_dir)], cwd=ROOT, stdin=fh,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "restored 3 item(s)" in done.stderr
    # the service renders them at its next start, in the restored order
    target = make_app(web__api_token=TOKEN, schedule__timezone="Europe/Berlin",
                      system__data_dir=str(target_dir))
    client = Client(target.server.port)
    assert library_state(client) == source["state"]
    wait_for(lambda: rendered(target), timeout=30)

    # a running service holds the data directory: the offline restore refuses
    with open(out, "rb") as fh:
        done = subprocess.run([sys.executable, "loop.py", "restore", "--config", config_path,
                               "--data-dir", str(target_dir)], cwd=ROOT, stdin=fh,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "another LOOP process uses" in done.stderr


# ---- hostile and broken archives -------------------------------------------------------------
def members_of(archive: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            out.append((member, tar.extractfile(member).read()))
    return out


def tar_of(members, fmt=tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


def raw_tar(members, end: bool = True) -> bytes:
    """Members as ustar blocks, by hand (so an archive can stop anywhere)."""
    out = b""
    for info, data in members:
        info.size = len(data)
        out += info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)
    if end:
        out += bytes(1024)
    return out


def entry(name, data=b"", kind=tarfile.REGTYPE, **attrs):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, len(data), 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def replace_member(archive, name, data):
    return tar_of([(m, data if m.name == name else d) for m, d in members_of(archive)])


def with_extra(archive, *extra):
    return tar_of(members_of(archive) + list(extra))


def edited_index(archive, change):
    members = members_of(archive)
    index = json.loads(members[0][1])
    change(index)
    return tar_of([(members[0][0], json.dumps(index).encode())] + members[1:])


def huge_member(archive):
    """A header promising 2 GiB for an original, followed by a little data."""
    members = members_of(archive)
    info = tarfile.TarInfo(first_original(archive))
    info.size = 2 * 2**30
    return raw_tar(members[:2], end=False) + info.tobuf(format=tarfile.USTAR_FORMAT) + \
        b"x" * 4096


def first_original(archive):
    return next(m.name for m, _ in members_of(archive) if "/original." in m.name)


HOSTILE = {
    "traversal": (lambda a: with_extra(a, entry("../../evil.txt", b"pwned")), 422),
    "traversal_inside": (lambda a: with_extra(a, entry("media/../../evil.txt", b"x")), 422),
    "absolute_path": (lambda a: with_extra(a, entry("/tmp/loop-evil.txt", b"x")), 422),
    "symlink": (lambda a: with_extra(a, entry("media/0000000000000000/original.gif",
                                              kind=tarfile.SYMTYPE, linkname="/etc/passwd")),
                422),
    "hardlink": (lambda a: with_extra(a, entry("media/x", kind=tarfile.LNKTYPE,
                                               linkname="index.json")), 422),
    "device": (lambda a: with_extra(a, entry("media/dev", kind=tarfile.CHRTYPE,
                                             devmajor=1, devminor=3)), 422),
    "fifo": (lambda a: with_extra(a, entry("media/fifo", kind=tarfile.FIFOTYPE)), 422),
    "unexpected_name": (lambda a: with_extra(a, entry(
        first_original(a).rsplit("/", 1)[0] + "/frames.bin", b"frames")), 422),
    "pax_header": (lambda a: tar_of(members_of(a) + [entry("media/" + "a" * 120, b"x")],
                                    fmt=tarfile.PAX_FORMAT), 422),
    "gnu_long_name": (lambda a: tar_of(members_of(a) + [entry("media/" + "a" * 120, b"x")],
                                       fmt=tarfile.GNU_FORMAT), 422),
    "huge_member": (huge_member, 413),
    "wrong_hash": (lambda a: replace_member(a, first_original(a), b"GIF89a not the same"),
                   422),
    "truncated": (lambda a: a[:len(a) // 2], 400),
    "truncated_at_member": (lambda a: raw_tar(members_of(a), end=False), 400),
    "bad_checksum": (lambda a: a[:148] + b"0000000\0" + a[156:], 400),
    "not_a_tar": (lambda a: os.urandom(4096), 400),
    "empty_tar": (lambda a: bytes(10240), 400),
    "index_not_first": (lambda a: tar_of(members_of(a)[1:] + members_of(a)[:1]), 422),
    "missing_original": (lambda a: tar_of([m for m in members_of(a)
                                           if m[0].name != first_original(a)]), 422),
    "duplicate_member": (lambda a: with_extra(a, members_of(a)[1]), 422),
    "bad_settings": (lambda a: edited_index(
        a, lambda i: i["settings"].update(brightness=500)), 422),
    "bad_schedule": (lambda a: edited_index(
        a, lambda i: i["settings"].update(schedule=[{"start": "25:00"}])), 422),
    "loop_names_unknown": (lambda a: edited_index(
        a, lambda i: i["loop"].append("ffffffffffffffff")), 422),
    "wrong_format": (lambda a: edited_index(a, lambda i: i.update(version=99)), 422),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_the_library_is_untouched(case, source, tmp_path):
    app, client = source["app"], source["client"]
    make, status = HOSTILE[case]
    archive = make(source["archive"])
    data_dir = app.cfg.system.data_dir
    before = disk_state(data_dir)
    reply = post_restore(client, archive)
    assert reply.status == status, reply
    assert reply.json["success"] is False and reply.json["message"]
    assert disk_state(data_dir) == before
    assert library_state(client) == source["state"]
    assert os.listdir(os.path.join(data_dir, "tmp")) == []
    assert not os.path.exists(tmp_path / "evil.txt")
    assert not os.path.exists("/tmp/loop-evil.txt")


@pytest.mark.parametrize("data", [b"shopping list: milk, eggs\n",
                                  b"shopping list: milk, eggs\n" * 100,
                                  png_bytes((1, 2, 3), (64, 32))], ids=["short_text", "text",
                                                                        "photo"])
def test_restoring_something_else_says_it_is_not_a_backup(source, data):
    reply = post_restore(source["client"], data)
    assert reply.status == 400, reply
    assert reply.json["message"].startswith("this is not a LOOP backup"), reply.json
    assert library_state(source["client"]) == source["state"]


def test_restore_over_the_size_limit_is_refused_before_reading(make_app, tmp_path, source):
    app = make_app(web__api_token=TOKEN, media__max_restore_mb=0.004,
                   system__data_dir=str(tmp_path / "small"))
    client = Client(app.server.port)
    reply = post_restore(client, source["archive"])
    assert reply.status == 413 and "media.max_restore_mb" in reply.json["message"]
    assert client.get("/api/media").data["items"] == []


def test_restore_limit_is_its_own_not_the_upload_limit(make_app, tmp_path, source):
    """A backup larger than one upload may be restored (media.max_restore_mb governs)."""
    size = len(source["archive"])
    app = make_app(web__api_token=TOKEN, media__max_upload_mb=(size - 1) / 2**20,
                   system__data_dir=str(tmp_path / "bigger"))
    reply = post_restore(Client(app.server.port), source["archive"])
    assert reply.status == 200, reply


def test_extract_refuses_a_stream_over_the_limit(tmp_path, source):
    stream = io.BytesIO(source["archive"])
    with pytest.raises(backup.RestoreError) as caught:
        backup.extract(stream.read, str(tmp_path / "x"), limit=4096, max_item_bytes=2**20)
    assert caught.value.status == 413


# ---- kill -9 -----------------------------------------------------------------------------
CRASHABLE = [("os", "rename"), ("os", "replace"), ("os", "fsync"), ("shutil", "rmtree"),
             ("os", "unlink")]


def restore_in_child(data_dir: str, archive_path: str, crash_at: int | None) -> int:
    """Fork; the child restores offline and SIGKILLs itself at its `crash_at`-th durable
    step (rename, replace, fsync, rmtree, unlink). Returns the steps it counted when it was
    not killed, or -1."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no cleanup of any kind after this point
        try:
            os.close(read_end)
            import importlib
            steps = [0]
            for module_name, name in CRASHABLE:
                module = importlib.import_module(module_name)
                real = getattr(module, name)

                def counted(*args, _real=real, **kwargs):
                    steps[0] += 1
                    if crash_at is not None and steps[0] == crash_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return _real(*args, **kwargs)
                setattr(module, name, counted)
            target = Store(data_dir, {"brightness": 80, "fit": "contain", "mode": "all",
                                      "current": None})
            target.open()
            steps[0] = 0  # count from the restore on
            with open(archive_path, "rb") as fh:
                backup.restore(target, fh.read, limit=2**30, max_item_bytes=2**28)
            os.write(write_end, str(steps[0]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as fh:
        reported = fh.read()
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return -1
    assert reported, "the child failed before finishing"
    return int(reported)


def open_library(data_dir: str) -> tuple[list, list, dict]:
    target = Store(data_dir, {"brightness": 80, "fit": "contain", "mode": "all",
                              "current": None})
    report = target.open()
    assert report["dropped"] == [] and not report["rebuilt"], report
    items = [m["id"] for m in target.view.items]
    for item in items:  # every listed item is complete on disk
        meta = target.view.get(item)
        assert os.path.exists(target.original_path_for(meta))
        assert meta.get("render") is None or os.path.exists(target.frames_path(item))
    leftovers = set(os.listdir(target.media_dir)) - set(items)
    assert not leftovers
    return items, list(target.view.loop), target.settings


def test_kill_9_at_every_step_of_a_restore_leaves_old_or_new(source, make_app, tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    old_app = make_app(system__data_dir=str(tmp_path / "old"))
    client = Client(old_app.server.port)
    upload(client, "blue.png", MEDIA["blue.png"])  # shared with the backup
    upload(client, "grey.png", png_bytes((90, 90, 90)))
    old_app.stop()
    source["app"].stop()  # fewer threads in the process that forks
    old_dir = old_app.cfg.system.data_dir
    old = open_library(old_dir)
    archive_path = tmp_path / "backup.tar"
    archive_path.write_bytes(source["archive"])

    scratch = tmp_path / "dry"
    shutil.copytree(old_dir, scratch)
    steps = restore_in_child(str(scratch), str(archive_path), None)
    new = open_library(str(scratch))
    assert set(new[0]) == set(source["ids"].values()) and new[1] == source["loop"]
    assert steps > 5

    outcomes = []
    for crash_at in range(1, steps + 1):
        work = tmp_path / f"crash{crash_at}"
        shutil.copytree(old_dir, work)
        assert restore_in_child(str(work), str(archive_path), crash_at) == -1
        items, loop, settings = open_library(str(work))
        if (items, loop) == (old[0], old[1]):
            outcomes.append("old")
            assert settings.get("schedule") is None
        else:
            assert (sorted(items), loop) == (sorted(new[0]), new[1]), crash_at
            assert settings["schedule"] == [NIGHT] and settings["mode"] == "shuffle"
            outcomes.append("new")
        shutil.rmtree(work)
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=("old", "new").index)  # one switch: the index


def test_kill_9_of_the_service_during_a_restore_upload(source, tmp_path, services):
    """The service dies while the backup arrives: it comes back with the old library."""
    data_dir = tmp_path / "victim"
    config_path = write_config(tmp_path / "victim.json", data_dir,
                               web={"api_token": TOKEN})
    service = services(config_path)
    client = service.client
    old_item = upload(client, "grey.png", png_bytes((90, 90, 90)))
    archive = source["archive"]
    sent, killed = threading.Event(), threading.Event()

    def slow_restore():
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        try:
            conn.putrequest("POST", "/api/restore")
            conn.putheader("Authorization", f"Bearer {TOKEN}")
            conn.putheader("Content-Length", str(len(archive)))
            conn.endheaders()
            conn.send(archive[:len(archive) // 2])
            sent.set()
            killed.wait(10)
        except OSError:
            pass
        finally:
            conn.close()
    thread = threading.Thread(target=slow_restore, daemon=True)
    thread.start()
    assert sent.wait(10)
    wait_for(lambda: any(name.startswith("restore-")
                         for name in os.listdir(data_dir / "tmp")), timeout=10)
    service.proc.kill()
    service.proc.wait(10)
    killed.set()
    thread.join(10)
    service = services(config_path)
    items = service.client.get("/api/media").data["items"]
    assert [m["id"] for m in items] == [old_item]
    assert os.listdir(data_dir / "tmp") == []


def test_offline_backup_of_a_mistyped_data_dir_fails(tmp_path):
    config_path = write_config(tmp_path / "config.json", tmp_path / "unused")
    done = subprocess.run([sys.executable, "loop.py", "backup", "--config", config_path,
                           "--data-dir", str(tmp_path / "no-such-dir")], cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 1 and done.stdout == b""
    assert b"not a LOOP data directory" in done.stderr
