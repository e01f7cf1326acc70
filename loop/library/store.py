"""The media library on disk and `index.json`, the commit point.

An item exists if and only if the index lists it. Commit: build the item in `tmp/`, fsync,
rename into `media/`, fsync `media/`, then write the index. Delete: rename out into `tmp/`,
write the index, then remove the files. Start-up recovery makes the directories agree with
the index again (docs/architecture.md, "Data layout and the commit point").
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass

from loop.durable import fsync_dir, write_json_atomic
from loop.media import frames
from loop.media.errors import MediaError, storage_error

log = logging.getLogger("loop.store")

ID_PATTERN = re.compile(r"\A[0-9a-f]{16}\Z")
INDEX_VERSION = 1
ITEM_FIELDS = ("id", "name", "kind", "width", "height", "frames", "duration_ms", "bytes",
               "created_at", "loop_count", "duration_sec")
MAX_NAME = 200
# After a failed index write the debounced flush waits this long, doubling up to the cap: a
# dying SD card (a persistent EIO) is neither hammered nor allowed to flood the log.
FLUSH_RETRY_MIN_SEC = 5.0
FLUSH_RETRY_MAX_SEC = 300.0


def valid_id(text: str) -> bool:
    """True for a well-formed item id (16 lowercase hex digits); nothing else reaches a path."""
    return bool(ID_PATTERN.match(text or ""))


LOCK_NAME = "loop.lock"


def lock_data_dir(data_dir: str) -> int:
    """Hold the data directory for this process (flock on DATA/loop.lock): the service while
    it runs, an offline restore while it swaps. Returns the fd (closing it releases the lock);
    raises BlockingIOError naming the problem when another process holds it."""
    fd = os.open(os.path.join(data_dir, LOCK_NAME), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BlockingIOError(errno.EWOULDBLOCK, f"another LOOP process uses the data "
                              f"directory {data_dir} (stop it first)") from None
    return fd


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class LibraryView:
    """Immutable picture of the library, replaced on every change; read without locks."""
    items: tuple  # metas in library order
    loop: tuple   # ids that play, in order
    version: int
    pending: frozenset = frozenset()  # ids waiting to be re-rendered: not played

    @property
    def bytes(self) -> int:
        return sum(item.get("bytes", 0) for item in self.items)

    def get(self, item_id: str):
        for item in self.items:
            if item["id"] == item_id:
                return item
        return None


class Store:
    """The library: items, loop order and runtime settings, persisted in `index.json`."""

    def __init__(self, data_dir: str, setting_defaults: dict, *, clock=time.monotonic):
        self.data_dir = data_dir
        self.clock = clock  # paces the retries of a failed flush
        self.media_dir = os.path.join(data_dir, "media")
        self.tmp_dir = os.path.join(data_dir, "tmp")
        self.index_path = os.path.join(data_dir, "index.json")
        self._lock = threading.RLock()
        self._items: dict[str, dict] = {}
        self._loop: list[str] = []
        # Settings are replaced, never changed in place, under their own small lock: the
        # display thread changes them (current item, mode) and must never wait for the
        # library lock, which is held across fsyncs.
        self._settings: dict = dict(setting_defaults)
        self._settings_lock = threading.Lock()
        self.settings_gen = 0  # bumped by every settings change
        self._written_gen = 0  # the generation index.json holds
        self._defaults = dict(setting_defaults)
        self.index_writes = 0
        self.write_error: str | None = None  # the last failed library write, until one works
        self.write_failures = 0  # index writes failed in a row
        self.flush_retry_at = -math.inf  # (clock) no debounced flush is tried before this
        self.recovery: dict = {}
        self._pending: frozenset = frozenset()
        self.view = LibraryView((), (), 0)

    # ---- paths -------------------------------------------------------------------------
    def item_dir(self, item_id: str) -> str:
        if not valid_id(item_id):
            raise ValueError("invalid item id")
        return os.path.join(self.media_dir, item_id)

    def frames_path(self, item_id: str) -> str:
        return os.path.join(self.item_dir(item_id), "frames.bin")

    def thumb_path(self, item_id: str) -> str:
        return os.path.join(self.item_dir(item_id), "thumb.png")

    def original_path(self, item_id: str) -> str:
        meta = self.view.get(item_id)
        ext = (meta or {}).get("ext", "bin")
        return os.path.join(self.item_dir(item_id), f"original.{ext}")

    def new_temp_dir(self, prefix: str) -> str:
        """A fresh directory under tmp/ for an upload or render in flight."""
        path = os.path.join(self.tmp_dir, f"{prefix}-{uuid.uuid4().hex[:12]}")
        try:
            os.mkdir(path)
        except OSError as exc:
            raise storage_error(exc) from exc
        return path

    # ---- reading -----------------------------------------------------------------------
    @property
    def settings(self) -> dict:
        return dict(self._settings)

    # ---- writing -----------------------------------------------------------------------
    def _index_doc(self) -> dict:
        return {"version": INDEX_VERSION, "items": list(self._items.values()),
                "loop": list(self._loop), "settings": self._settings}

    def _set_settings(self, **changes) -> None:
        with self._settings_lock:
            self._settings = dict(self._settings, **changes)
            self.settings_gen += 1

    def _write_index(self) -> None:
        generation = self.settings_gen
        try:
            write_json_atomic(self.index_path, self._index_doc())
        except OSError as exc:
            self._write_failed(f"index.json not written: {exc.strerror or exc}")
            raise
        self._written_gen = generation
        self.index_writes += 1
        if self.write_error is not None:
            log.warning("index.json written again, after %d failed attempt(s)",
                        self.write_failures)
        self.write_error = None
        self.write_failures = 0
        self.flush_retry_at = -math.inf

    def _write_failed(self, error: str) -> None:
        """Log a write failure once per change of state (not once per retry) and back off
        the debounced flush; health shows `write_error` until a write works again."""
        self.write_failures += 1
        delay = FLUSH_RETRY_MIN_SEC * 2 ** min(self.write_failures - 1, 16)
        self.flush_retry_at = self.clock() + min(delay, FLUSH_RETRY_MAX_SEC)
        if error != self.write_error:
            log.error("%s; settings are retried after %.0f s, doubling up to %.0f s, and "
                      "health shows it until a write works", error, FLUSH_RETRY_MIN_SEC,
                      FLUSH_RETRY_MAX_SEC)
        self.write_error = error

    def _publish(self) -> None:
        self._pending = self._pending & self._items.keys()
        self.view = LibraryView(tuple(dict(m) for m in self._items.values()),
                                tuple(self._loop), self.view.version + 1, self._pending)

    def set_pending(self, ids) -> None:
        """Mark the items waiting for a re-render (the player skips them)."""
        with self._lock:
            pending = frozenset(ids) & self._items.keys()
            if pending != self._pending:
                self._pending = pending
                self._publish()

    def _transaction(self, change) -> None:
        """Apply `change()` to the in-memory state, write the index, roll back on failure."""
        saved = (dict(self._items), list(self._loop), self._settings)
        change()
        try:
            self._write_index()
        except OSError as exc:
            self._items, self._loop, self._settings = saved
            raise storage_error(exc) from exc
        self._publish()

    def commit_item(self, staging: str, meta: dict) -> tuple[dict, bool]:
        """Move a fully built item directory into the library; (item, created)."""
        item_id = meta["id"]
        with self._lock:
            existing = self._items.get(item_id)
            if existing is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return dict(existing), False
            final = self.item_dir(item_id)
            try:
                write_json_atomic(os.path.join(staging, "meta.json"), meta)
                if os.path.lexists(final):  # an unlisted leftover: not part of the library
                    os.rename(final, os.path.join(self.tmp_dir, f"stale-{uuid.uuid4().hex}"))
                os.rename(staging, final)
                fsync_dir(self.media_dir)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)  # if it never got renamed
                self._discard(final)
                raise storage_error(exc) from exc

            def change():
                self._items[item_id] = meta
                self._loop.append(item_id)
            try:
                self._transaction(change)
            except MediaError:
                self._discard(final)
                raise
            return dict(meta), True

    def _discard(self, final: str) -> None:
        """Take an uncommitted directory out of media/ (into tmp/, then remove it)."""
        if not os.path.lexists(final):
            return
        graveyard = os.path.join(self.tmp_dir, f"uncommitted-{uuid.uuid4().hex}")
        try:
            os.rename(final, graveyard)
        except OSError:
            graveyard = final  # removed in place; recovery removes whatever is left
        shutil.rmtree(graveyard, ignore_errors=True)

    def delete_item(self, item_id: str) -> None:
        """Remove an item: out of media/ first, then the index, then the files."""
        with self._lock:
            if item_id not in self._items:
                raise MediaError(404, "not_found", f"no item {item_id}")
            graveyard = os.path.join(self.tmp_dir, f"deleted-{item_id}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(self.item_dir(item_id), graveyard)
                fsync_dir(self.media_dir)
            except OSError as exc:
                raise storage_error(exc) from exc

            def change():
                del self._items[item_id]
                self._loop = [i for i in self._loop if i != item_id]
                if self._settings.get("current") == item_id:
                    self._set_settings(current=None)
            try:
                self._transaction(change)
            except MediaError:
                os.rename(graveyard, self.item_dir(item_id))
                raise
            shutil.rmtree(graveyard, ignore_errors=True)

    RESTORED_FIELDS = ("name", "created_at", "loop_count", "duration_sec")

    def replace_library(self, staging_media: str, items: list, loop: list,
                        settings: dict) -> dict:
        """Swap in a restored library with the commit protocol: new items into media/ (ids
        already here keep their directory and frames: same id, same bytes), then the new
        index as the commit point, then the items it no longer lists are removed. A crash
        at any point leaves the old library or the new one (recovery removes the unlisted).

        `staging_media` holds `<id>/{meta.json, original.<ext>}` for each new item; restored
        items have `render: null` and no frames until the maintenance thread renders them."""
        with self._lock:
            moved: list[str] = []
            try:
                for meta in items:
                    item_id = meta["id"]
                    if item_id in self._items:
                        continue
                    source = os.path.join(staging_media, item_id)
                    if not os.path.exists(os.path.join(source, f"original.{meta['ext']}")):
                        raise MediaError(409, "conflict", f"item {item_id} was deleted while "
                                         "the restore ran; restore again")
                    final = self.item_dir(item_id)
                    if os.path.lexists(final):  # an unlisted leftover: not part of the library
                        os.rename(final, os.path.join(self.tmp_dir, f"stale-{uuid.uuid4().hex}"))
                    os.rename(source, final)
                    moved.append(item_id)
                if moved:
                    fsync_dir(self.media_dir)
            except (OSError, MediaError) as exc:
                for item_id in moved:
                    shutil.rmtree(self.item_dir(item_id), ignore_errors=True)
                if isinstance(exc, MediaError):
                    raise
                raise storage_error(exc) from exc
            kept = {}
            new_items = {}
            for meta in items:
                current = self._items.get(meta["id"])
                if current is None:
                    new_items[meta["id"]] = dict(meta)
                else:
                    merged = dict(current, **{k: meta.get(k) for k in self.RESTORED_FIELDS})
                    new_items[meta["id"]] = merged
                    if merged != current:
                        kept[meta["id"]] = merged
            removed = [i for i in self._items if i not in new_items]

            def change():
                self._items = new_items
                self._loop = list(loop)
                self._set_settings(**settings, brightness_override=None)
                if self._settings.get("current") not in new_items:
                    self._set_settings(current=None)
            try:
                self._transaction(change)  # the commit point
            except MediaError:
                for item_id in moved:
                    shutil.rmtree(self.item_dir(item_id), ignore_errors=True)
                raise
            for item_id in removed:
                _remove(self.item_dir(item_id))
            if removed:
                fsync_dir(self.media_dir)
            for item_id, meta in kept.items():
                try:
                    write_json_atomic(os.path.join(self.item_dir(item_id), "meta.json"), meta)
                except OSError as exc:  # the index holds the change; meta.json catches up
                    log.warning("meta.json of %s not updated: %s", item_id, exc)
            return {"added": moved, "kept": len(new_items) - len(moved),
                    "removed": len(removed)}

    def replace_render(self, item_id: str, staging: str, changes: dict) -> bool:
        """Swap in frames re-rendered for the current panel; False if the item is gone.

        Each file is replaced atomically (`os.replace` within the data filesystem) and the
        item directory fsynced before the index records the new `render`. A crash in between
        leaves valid frames whose meta still names the old render: they are simply rendered
        again at the next start.
        """
        with self._lock:
            if item_id not in self._items:
                return False
            directory = self.item_dir(item_id)
            try:
                for name in ("frames.bin", "thumb.png"):
                    os.replace(os.path.join(staging, name), os.path.join(directory, name))
                fsync_dir(directory)
            except OSError as exc:
                raise storage_error(exc) from exc
            meta = dict(self._items[item_id], **changes)

            def change():
                self._items[item_id] = meta
                self._pending = self._pending - {item_id}
            saved_pending = self._pending
            try:
                self._transaction(change)
            except MediaError:
                self._pending = saved_pending
                raise
            try:
                write_json_atomic(os.path.join(directory, "meta.json"), meta)
            except OSError as exc:  # the index holds the change; meta.json catches up later
                log.warning("meta.json of %s not updated: %s", item_id, exc)
            return True

    def update_item(self, item_id: str, changes: dict) -> dict:
        """Change an item's editable fields (already validated by the caller)."""
        with self._lock:
            if item_id not in self._items:
                raise MediaError(404, "not_found", f"no item {item_id}")
            meta = dict(self._items[item_id], **changes)

            def change():
                self._items[item_id] = meta
            self._transaction(change)
            try:
                write_json_atomic(os.path.join(self.item_dir(item_id), "meta.json"), meta)
            except OSError as exc:  # the index already holds the change; meta.json catches up
                log.warning("meta.json of %s not updated: %s", item_id, exc)
            return dict(meta)

    def set_loop(self, ids: list[str]) -> None:
        """Replace the loop order; every id must be in the library, none repeated."""
        with self._lock:
            unknown = [i for i in ids if i not in self._items]
            if unknown:
                raise MediaError(422, "validation_failed", f"unknown item {unknown[0]}")
            if len(set(ids)) != len(ids):
                raise MediaError(422, "validation_failed", "an item is listed twice")

            def change():
                self._loop = list(ids)
            self._transaction(change)

    def update_settings(self, durable: bool = False, **changes) -> None:
        """Change runtime settings; written at once when `durable`, else by `flush()`.

        The debounced path never waits for the library lock (the display thread uses it).
        """
        if all(self._settings.get(k) == v for k, v in changes.items()):
            return
        if not durable:
            self._set_settings(**changes)
            return
        with self._lock:
            self._transaction(lambda: self._set_settings(**changes))

    @property
    def unsaved(self) -> bool:
        """True while a debounced settings change has not reached index.json."""
        return self._written_gen != self.settings_gen

    def flush(self, force: bool = False) -> bool:
        """Write debounced setting changes; True when something was written. After a failed
        write it is not tried again before `flush_retry_at` (see FLUSH_RETRY_MIN_SEC), unless
        `force` (shutdown)."""
        if not force and self.clock() < self.flush_retry_at:
            return False
        with self._lock:
            if self._written_gen == self.settings_gen:
                return False
            try:
                self._write_index()
            except OSError:
                return False  # logged and shown in health; tried again at the next change
            return True

    # ---- start-up recovery -------------------------------------------------------------
    def open(self) -> dict:
        """Recover the data directory and load the library; returns what recovery did."""
        report = {"tmp_removed": 0, "orphans_removed": 0, "dropped": [], "rebuilt": False,
                  "bad_index_kept": None, "restored": [], "temp_files_removed": 0,
                  "rerender": []}
        with self._lock:
            os.makedirs(self.media_dir, exist_ok=True)
            os.makedirs(self.tmp_dir, exist_ok=True)
            report["temp_files_removed"] = _remove_temp_files(self.data_dir)
            doc, needs_write = self._load_index(report)
            self._items = {m["id"]: m for m in doc["items"]}
            report["restored"] = self._restore_unfinished_deletes()
            report["tmp_removed"] = _empty_dir(self.tmp_dir)
            if report["tmp_removed"]:
                fsync_dir(self.tmp_dir)
            self._loop = [i for i in doc["loop"] if i in self._items]
            self._settings = dict(self._defaults, **doc.get("settings", {}))
            self._written_gen = self.settings_gen
            for item_id in list(self._items):
                reason = self._check_item(item_id)
                if reason:
                    log.error("recovery: item %s is dropped and its files removed: %s",
                              item_id, reason)
                    report["dropped"].append({"id": item_id, "reason": reason})
                    del self._items[item_id]
                    needs_write = True
                    continue
                damage = self._check_frames(item_id)
                if damage:
                    self._render_again(item_id, damage)
                    report["rerender"].append({"id": item_id, "reason": damage})
                    needs_write = True
            self._loop = [i for i in self._loop if i in self._items]
            report["orphans_removed"] = self._remove_orphans()
            for item_id in self._items:
                report["temp_files_removed"] += _remove_temp_files(self.item_dir(item_id))
            if needs_write:
                self._write_index()
            self._publish()
        self.recovery = report
        if any(report[k] for k in ("tmp_removed", "orphans_removed", "dropped", "rebuilt",
                                   "restored", "temp_files_removed", "rerender")):
            log.warning("recovery: %s", report)
        else:
            log.info("recovery: the data directory was clean (%d items)", len(self._items))
        return report

    def _restore_unfinished_deletes(self) -> list[str]:
        """A delete renamed `media/<id>` into tmp/ but the index still lists it: the crash
        came before the delete's commit point, so the item comes back."""
        restored = []
        for name in sorted(os.listdir(self.tmp_dir)):
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "deleted" or parts[1] not in self._items:
                continue
            final = os.path.join(self.media_dir, parts[1])
            if not os.path.lexists(final):
                os.rename(os.path.join(self.tmp_dir, name), final)
                restored.append(parts[1])
        if restored:
            fsync_dir(self.media_dir)
        return restored

    def _load_index(self, report: dict) -> tuple[dict, bool]:
        try:
            with open(self.index_path, encoding="utf-8") as fh:
                doc = json.load(fh)
            _check_index(doc)
            return doc, False
        except FileNotFoundError:
            if not any(valid_id(n) for n in os.listdir(self.media_dir)):
                return {"items": [], "loop": [], "settings": {}}, True
            log.error("index.json is missing; rebuilding it from meta.json files")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            kept = f"{self.index_path}.bad-{int(time.time())}"
            try:
                os.replace(self.index_path, kept)
                report["bad_index_kept"] = kept
            except OSError:
                pass
            log.error("index.json is unreadable (%s); rebuilding it, bad copy kept at %s",
                      exc, kept)
        report["rebuilt"] = True
        return self._rebuild_from_meta(), True

    def _rebuild_from_meta(self) -> dict:
        items = []
        for name in sorted(os.listdir(self.media_dir)):
            if not valid_id(name):
                continue
            try:
                with open(os.path.join(self.media_dir, name, "meta.json"),
                          encoding="utf-8") as fh:
                    meta = json.load(fh)
                if meta.get("id") == name:
                    items.append(meta)
            except (OSError, ValueError):
                continue
        items.sort(key=lambda m: m.get("created_at", ""))
        return {"items": items, "loop": [m["id"] for m in items], "settings": {}}

    def _check_item(self, item_id: str) -> str | None:
        """Why the item cannot stay in the library, or None. Only a missing directory or an
        unreadable original drops an item: the original is the user's data, and everything
        else (frames, thumbnail) is made from it again."""
        if not valid_id(item_id):
            return "invalid id"
        directory = os.path.join(self.media_dir, item_id)
        if not os.path.isdir(directory):
            return "directory missing"
        try:
            with open(self.original_path_for(self._items[item_id]), "rb") as fh:
                if not fh.read(1):
                    return "original is empty"
        except FileNotFoundError:
            return "original missing"
        except OSError as exc:
            return f"original unreadable: {exc.strerror or exc}"
        return None

    def _check_frames(self, item_id: str) -> str | None:
        """What is wrong with the item's frame file (truncated by a crash, damaged), or
        None."""
        frames_path = os.path.join(self.media_dir, item_id, "frames.bin")
        # a restored item (render: null) has no frames until the maintenance thread renders it
        if self._items[item_id].get("render", "") is None and not os.path.lexists(frames_path):
            return None
        try:
            frames.validate(frames_path)
        except (OSError, frames.FrameFileError) as exc:
            return f"frame file: {exc}"
        return None

    def _render_again(self, item_id: str, damage: str) -> None:
        """Keep an item whose frames are damaged: drop the bad frame file and record that
        the item has no render (`render: null`, as a restored item), so the maintenance
        thread makes new frames from the original. Nothing maps the file yet at start-up."""
        log.warning("recovery: item %s is kept and will be re-rendered from its original "
                    "(%s)", item_id, damage)
        try:
            os.unlink(os.path.join(self.media_dir, item_id, "frames.bin"))
        except FileNotFoundError:
            pass
        except OSError as exc:  # it stays pending all the same; the re-render replaces it
            log.warning("cannot remove the damaged frame file of %s: %s", item_id, exc)
        meta = dict(self._items[item_id], render=None)
        self._items[item_id] = meta
        try:
            write_json_atomic(os.path.join(self.media_dir, item_id, "meta.json"), meta)
        except OSError as exc:  # the index holds the change; meta.json catches up later
            log.warning("meta.json of %s not updated: %s", item_id, exc)

    def original_path_for(self, meta: dict) -> str:
        return os.path.join(self.media_dir, meta["id"], f"original.{meta.get('ext', 'bin')}")

    def _remove_orphans(self) -> int:
        removed = 0
        for name in os.listdir(self.media_dir):
            if name not in self._items:
                _remove(os.path.join(self.media_dir, name))
                removed += 1
        if removed:
            fsync_dir(self.media_dir)
        return removed


def _check_index(doc) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list) \
            or not isinstance(doc.get("loop"), list):
        raise ValueError("index.json has the wrong shape")
    for meta in doc["items"]:
        if not isinstance(meta, dict) or not valid_id(meta.get("id")):
            raise ValueError("index.json lists a malformed item")
    if not isinstance(doc.get("settings", {}), dict):
        raise ValueError("index.json settings are not an object")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _remove_temp_files(directory: str) -> int:
    """Half-written `write_json_atomic` temp files (`.<name>.<hex>.tmp`) left by a crash."""
    removed = 0
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(".tmp"):
            _remove(os.path.join(directory, name))
            removed += 1
    return removed


def _empty_dir(path: str) -> int:
    names = os.listdir(path)
    for name in names:
        _remove(os.path.join(path, name))
    return len(names)
