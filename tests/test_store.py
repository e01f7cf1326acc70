"""The library on disk: the commit protocol and start-up recovery."""

import json
import os

import pytest
from test_player import add_item

from loop.durable import write_json_atomic
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


def test_recovery_drops_items_whose_files_are_broken(tmp_path):
    store = open_store(tmp_path)
    good = add_item(store, 1, [100])
    truncated = add_item(store, 2, [100, 100])
    gone = add_item(store, 3, [100])
    with open(store.frames_path(truncated), "r+b") as fh:
        fh.truncate(50)
    os.unlink(store.frames_path(gone))
    again = open_store(tmp_path)
    assert [m["id"] for m in again.view.items] == [good]
    assert {d["id"] for d in again.recovery["dropped"]} == {truncated, gone}
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
