"""The library on disk: the commit protocol and start-up recovery."""

import errno
import json
import os

import pytest
from test_player import add_item

from loop.durable import write_json_atomic
from loop.library import store as store_module
from loop.library.store import Store, valid_id
from loop.media.errors import MediaError

DEFAULTS = {"brightness": 80, "fit": "contain", "mode": "all", "current": None}


def open_store(path) -> Store:
    store = Store(str(path), DEFAULTS)
    os.makedirs(path, exist_ok=True)
    store.open()
    return store


def test_ids_are_strict():
    assert valid_id("0123456789abcdef")
    for bad in ("..", "*", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0",
                "../../etc/passwd", "0123456789abcde\n", "", None):
        assert not valid_id(bad)


def test_commit_then_reopen(tmp_path):
    store = open_store(tmp_path)
    item_id = add_item(store, 1, [100, 100])
    again = open_store(tmp_path)
    assert [m["id"] for m in again.view.items] == [item_id]
    assert again.view.loop == (item_id,)
    assert again.recovery["dropped"] == [] and not again.recovery["rebuilt"]


def test_recovery_empties_tmp_and_removes_unlisted_dirs(tmp_path):
    store = open_store(tmp_path)
    item_id = add_item(store, 1, [100])
    os.makedirs(tmp_path / "tmp" / "up-half-written")
    (tmp_path / "tmp" / "up-half-written" / "x").write_bytes(b"partial")
    os.makedirs(tmp_path / "media" / "00000000000000ff")  # renamed in, index never written
    again = open_store(tmp_path)
    assert os.listdir(tmp_path / "tmp") == []
    assert sorted(os.listdir(tmp_path / "media")) == [item_id]
    assert again.recovery["tmp_removed"] == 1 and again.recovery["orphans_removed"] == 1


def test_recovery_keeps_items_with_broken_frames_and_renders_them_again(tmp_path):
    store = open_store(tmp_path)
    good = add_item(store, 1, [100])
    truncated = add_item(store, 2, [100, 100])
    gone = add_item(store, 3, [100])
    with open(store.frames_path(truncated), "r+b") as fh:
        fh.truncate(50)
    os.unlink(store.frames_path(gone))
    originals = {i: open(store.original_path(i), "rb").read() for i in (truncated, gone)}
    again = open_store(tmp_path)
    assert [m["id"] for m in again.view.items] == [good, truncated, gone]
    assert again.recovery["dropped"] == []
    assert {d["id"] for d in again.recovery["rerender"]} == {truncated, gone}
    for item_id, data in originals.items():
        # the user's original is untouched; no render recorded, so the maintenance thread
        # renders it again (the same state as an item restored from a backup)
        assert open(again.original_path(item_id), "rb").read() == data
        assert again.view.get(item_id)["render"] is None
        assert not os.path.exists(again.frames_path(item_id))
        with open(tmp_path / "media" / item_id / "meta.json") as fh:
            assert json.load(fh)["render"] is None
    with open(tmp_path / "index.json") as fh:
        assert [m.get("render", "-") for m in json.load(fh)["items"]] == ["-", None, None]
    third = open_store(tmp_path)  # a second start finds nothing new to do
    assert third.recovery["rerender"] == [] and third.recovery["dropped"] == []


@pytest.mark.parametrize("damage, reason", [
    (lambda path: os.unlink(path), "original missing"),
    (lambda path: open(path, "wb").close(), "original is empty"),
    (lambda path: (os.unlink(path), os.mkdir(path)), "original unreadable: Is a directory"),
])
def test_recovery_drops_an_item_only_when_its_original_is_unusable(tmp_path, damage, reason):
    store = open_store(tmp_path)
    good = add_item(store, 1, [100])
    lost = add_item(store, 2, [100, 100])
    with open(store.frames_path(lost), "r+b") as fh:
        fh.truncate(50)
    damage(store.original_path(lost))
    again = open_store(tmp_path)
    assert [m["id"] for m in again.view.items] == [good]
    assert again.recovery["dropped"] == [{"id": lost, "reason": reason}]
    assert sorted(os.listdir(tmp_path / "media")) == [good]
    with open(tmp_path / "index.json") as fh:
        assert [m["id"] for m in json.load(fh)["items"]] == [good]


def test_unreadable_index_is_rebuilt_and_kept_aside(tmp_path):
    store = open_store(tmp_path)
    ids = [add_item(store, tag, [100]) for tag in (1, 2)]
    (tmp_path / "index.json").write_text('{"items": [tru')
    again = open_store(tmp_path)
    assert sorted(m["id"] for m in again.view.items) == sorted(ids)
    assert again.recovery["rebuilt"] is True
    kept = again.recovery["bad_index_kept"]
    assert kept and open(kept).read() == '{"items": [tru'


def test_missing_index_with_media_is_rebuilt(tmp_path):
    store = open_store(tmp_path)
    item_id = add_item(store, 1, [100])
    os.unlink(tmp_path / "index.json")
    again = open_store(tmp_path)
    assert [m["id"] for m in again.view.items] == [item_id]


def test_failed_index_write_keeps_old_index_and_state(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    first = add_item(store, 1, [100])
    before = (tmp_path / "index.json").read_bytes()

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(MediaError) as err:
        store.set_loop([])
    assert err.value.status == 500
    monkeypatch.undo()
    assert (tmp_path / "index.json").read_bytes() == before
    assert store.view.loop == (first,)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_write_json_atomic_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_json_atomic(str(path), {"a": 1})

    def no_space(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError):
        write_json_atomic(str(path), {"a": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_delete_is_gone_after_reopen(tmp_path):
    store = open_store(tmp_path)
    keep = add_item(store, 1, [100])
    drop = add_item(store, 2, [100])
    store.delete_item(drop)
    assert not os.path.exists(tmp_path / "media" / drop)
    again = open_store(tmp_path)
    assert [m["id"] for m in again.view.items] == [keep]


def test_settings_are_debounced_until_flush(tmp_path):
    store = open_store(tmp_path)
    writes = store.index_writes
    for value in range(20):
        store.update_settings(brightness=value)
    assert store.index_writes == writes
    assert store.flush() is True and store.index_writes == writes + 1
    assert store.flush() is False
    assert open_store(tmp_path).settings["brightness"] == 19


def test_a_persistent_eio_is_logged_once_and_retried_with_back_off(tmp_path, monkeypatch,
                                                                    caplog):
    """A dying SD card: every index write fails with EIO. The monitor asks for a flush every
    settings_flush_sec (5 s); the store tries after 5, 10, 20 … s up to 5 min, logs the
    failure once and the recovery once, and health keeps showing it meanwhile."""
    now = [1000.0]
    store = Store(str(tmp_path), DEFAULTS, clock=lambda: now[0])
    store.open()
    add_item(store, 1, [100])
    attempts, failing = [], [True]
    real_write = store_module.write_json_atomic

    def write(path, obj):
        if path == store.index_path and failing:
            attempts.append(now[0] - 1000.0)
            raise OSError(errno.EIO, "Input/output error")
        real_write(path, obj)
    monkeypatch.setattr(store_module, "write_json_atomic", write)
    caplog.set_level("DEBUG", logger="loop.store")
    store.update_settings(brightness=1)
    for _ in range(720):  # an hour of monitor rounds
        store.flush()
        now[0] += 5.0
    assert attempts == [0, 5, 15, 35, 75, 155, 315, 615, 915, 1215, 1515, 1815, 2115, 2415,
                        2715, 3015, 3315]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Input/output error" in errors[0].getMessage()
    assert store.write_error == "index.json not written: Input/output error"
    assert store.write_failures == 17 and store.unsaved

    failing.clear()  # the card works again
    while not store.flush():
        now[0] += 5.0
    assert now[0] - 1000.0 == 3615
    assert store.write_error is None and store.write_failures == 0 and not store.unsaved
    assert [r.levelname for r in caplog.records].count("ERROR") == 1
    assert "written again, after 17 failed attempt(s)" in caplog.text
    with open(tmp_path / "index.json") as fh:
        assert json.load(fh)["settings"]["brightness"] == 1


def test_shutdown_flushes_whatever_the_back_off_says(tmp_path, monkeypatch):
    now = [1000.0]
    store = Store(str(tmp_path), DEFAULTS, clock=lambda: now[0])
    store.open()
    real_write = store_module.write_json_atomic

    def broken(path, obj):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(store_module, "write_json_atomic", broken)
    store.update_settings(brightness=3)
    assert store.flush() is False and store.flush() is False  # the second one waits
    monkeypatch.setattr(store_module, "write_json_atomic", real_write)
    assert store.flush() is False  # still inside the back-off
    assert store.flush(force=True) is True
    assert open_store(tmp_path).settings["brightness"] == 3
