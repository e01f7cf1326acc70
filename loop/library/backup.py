"""Backup and restore of the library as a plain tar archive.

The archive (ustar, uncompressed; originals are already compressed media) holds, in order:

    index.json                     {"format": "loop-backup", "version": 1, "items": [meta…],
                                    "loop": [id…], "settings": {…}, "created_at", "loop_version"}
    media/<id>/meta.json           each item's metadata
    media/<id>/original.<ext>      each item's upload as received

and nothing else: no frames (they are rendered again for whatever panel the backup is restored
on, by the maintenance thread), no config.json (the operator's file, not the library's).

Writing streams: `Backup.chunks()` yields the archive piece by piece with its exact length
known up front (`Backup.length`), so `GET /api/backup` sends `Content-Length` and never holds
more than one chunk in memory.

Reading is a small ustar reader of its own, not `tarfile`: every header is checked before a
byte of its data is read (only regular files and directories, only the expected names, sizes
within limits, no base-256 sizes, no pax/GNU extension headers, whose data `tarfile` would
hold in memory), data streams to `tmp/` while it is hashed, and the archive must end with its
end-of-archive block. Then the whole content is checked (every item's id is the SHA-256 of its
original, the index lists exactly the items present, the settings are valid) before the store
swaps it in with the commit protocol (`Store.replace_library`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import time
from dataclasses import dataclass, field

from loop import __version__, schedule, untrusted_json
from loop.config import FITS, MODES
from loop.durable import fsync_dir, write_json_atomic
from loop.library.names import clean_name
from loop.library.store import Store, lock_data_dir, now_iso, valid_id
from loop.media.errors import MediaError, storage_error

log = logging.getLogger("loop.backup")

FORMAT_NAME = "loop-backup"
FORMAT_VERSION = 1
INDEX = "index.json"
BLOCK = 512
RECORD = 20 * BLOCK  # archives are padded to whole records, like tar(1) and tarfile do
CHUNK = 64 * 1024
MAX_INDEX_BYTES = 16 * 2**20
MAX_META_BYTES = 256 * 1024
# Items one restore may bring: far more than a panel's library holds (every item is rendered
# again after a restore), few enough that checking and re-rendering stay bounded.
MAX_ITEMS = 10_000
ITEM_MEMBER = re.compile(r"\Amedia/([0-9a-f]{16})/(meta\.json|original\.([a-z0-9]{1,10}))\Z")
DIR_MEMBER = re.compile(r"\A(media|media/[0-9a-f]{16})/?\Z")
WORD = re.compile(r"\A[a-z0-9_.+-]{1,32}\Z")
CREATED = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
KINDS = ("image", "animation", "video")
# Runtime settings a backup carries. `brightness_override` is not one of them: it belongs
# to the moment it was set.
SETTING_KEYS = ("brightness", "mode", "fit", "current", "schedule")
_ZERO_BLOCK = bytes(BLOCK)


class RestoreError(MediaError):
    """A refused archive: HTTP status, machine code, a sentence naming the problem."""


def _bad(message: str) -> RestoreError:
    return RestoreError(400, "bad_request", f"not a usable LOOP backup: {message}")


def _invalid(message: str) -> RestoreError:
    return RestoreError(422, "validation_failed", f"the backup was refused: {message}")


def _not_a_backup() -> RestoreError:
    return RestoreError(400, "bad_request", "this is not a LOOP backup: a backup is the tar "
                        "file that GET /api/backup or `loop.py backup` makes")


# ---- writing -------------------------------------------------------------------------------
@dataclass
class _Member:
    name: str
    size: int
    data: bytes | None = None  # small members are built in memory
    path: str | None = None  # originals stream from disk


@dataclass
class Backup:
    """One archive, planned: its members and exact length, streamed by `chunks()`."""
    members: list = field(default_factory=list)
    mtime: int = 0

    @property
    def length(self) -> int:
        body = sum(BLOCK + _padded(m.size) for m in self.members) + 2 * BLOCK
        return _round_up(body, RECORD)

    def chunks(self):
        """The archive, piece by piece. An original that vanished (deleted while the download
        ran) or changed size raises OSError: the length promised can no longer be kept, so the
        caller must cut the connection."""
        sent = 0
        for member in self.members:
            header = _header(member.name, member.size, self.mtime)
            yield header
            sent += len(header)
            if member.data is not None:
                yield member.data + bytes(_padded(member.size) - member.size)
            else:
                yield from _file_chunks(member.path, member.size)
            sent += _padded(member.size)
        tail = self.length - sent
        yield bytes(tail)

    def write_to(self, out) -> int:
        written = 0
        for chunk in self.chunks():
            out.write(chunk)
            written += len(chunk)
        return written


def _padded(size: int) -> int:
    return _round_up(size, BLOCK)


def _round_up(size: int, unit: int) -> int:
    return -(-size // unit) * unit


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    info.uname = info.gname = "loop"
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="ascii", errors="strict")


def _file_chunks(path: str, size: int):
    with open(path, "rb") as fh:
        left = size
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{path} shrank while it was being backed up")
            left -= len(chunk)
            yield chunk
        if fh.read(1):
            raise OSError(f"{path} grew while it was being backed up")
    pad = _padded(size) - size
    if pad:
        yield bytes(pad)


def _json(obj) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")


def plan(items, loop, settings, original_path) -> Backup:
    """The archive of a library: `items` (metas, library order), `loop` (ids), `settings`,
    and `original_path(meta)` -> where its upload is. Sizes are taken now (stat)."""
    items = [_portable(meta) for meta in items]
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created_at": now_iso(),
             "loop_version": __version__, "host": socket.gethostname(),
             "items": items, "loop": list(loop),
             "settings": {k: settings[k] for k in SETTING_KEYS if k in settings}}
    backup = Backup(mtime=int(time.time()))
    data = _json(index)
    backup.members.append(_Member(INDEX, len(data), data=data))
    for meta in items:
        item_id = meta["id"]
        data = _json(meta)
        backup.members.append(_Member(f"media/{item_id}/meta.json", len(data), data=data))
        path = original_path(meta)
        backup.members.append(_Member(f"media/{item_id}/original.{meta.get('ext', 'bin')}",
                                      os.stat(path).st_size, path=path))
    return backup


def _portable(meta: dict) -> dict:
    """An item's metadata without what belongs to this panel (its render)."""
    return {k: v for k, v in meta.items() if k != "render" and not k.startswith("_")}


def plan_store(store) -> Backup:
    """The archive of a running store's current library."""
    view = store.view
    return plan(view.items, view.loop, store.settings, store.original_path_for)


def read_library(data_dir: str) -> tuple[list, list, dict]:
    """Items, loop and settings from a data directory's index.json, read-only (the offline
    backup may run next to the service; it must not recover or write anything)."""
    path = os.path.join(data_dir, "index.json")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        items, loop, settings = doc["items"], doc["loop"], doc.get("settings", {})
        if not isinstance(items, list) or not isinstance(loop, list) \
                or not all(isinstance(m, dict) and valid_id(m.get("id")) for m in items):
            raise ValueError("wrong shape")
    except FileNotFoundError:
        raise OSError(f"{data_dir} is not a LOOP data directory (no index.json); check "
                      "--data-dir") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OSError(f"{path} is unreadable ({exc}); start the service once so its "
                      "recovery rebuilds it, then back up") from None
    return items, loop, settings if isinstance(settings, dict) else {}


def plan_data_dir(data_dir: str) -> Backup:
    items, loop, settings = read_library(data_dir)
    media = os.path.join(data_dir, "media")
    return plan(items, loop, settings, lambda meta: os.path.join(
        media, meta["id"], f"original.{meta.get('ext', 'bin')}"))


# ---- reading -------------------------------------------------------------------------------
class _Source:
    """The archive's bytes: at most `limit`, exactly `length` when it is known (HTTP)."""

    def __init__(self, read, limit: int, length: int | None = None, progress=None):
        self._read, self.limit, self.length = read, limit, length
        self.received = 0
        self._progress = progress or (lambda received: None)

    def exactly(self, size: int, what: str):
        """Yield chunks totalling `size` bytes; a short archive is truncated."""
        left = size
        while left > 0:
            chunk = self._read(min(CHUNK, left))
            if not chunk:
                raise _bad(f"it is truncated (it ended inside {what})")
            left -= len(chunk)
            self._count(len(chunk))
            yield chunk

    def block(self, what: str) -> bytes:
        return b"".join(self.exactly(BLOCK, what))

    def _count(self, size: int) -> None:
        self.received += size
        if self.received > self.limit:
            raise RestoreError(413, "payload_too_large", "the backup is larger than "
                               f"media.max_restore_mb allows ({self.limit} bytes)")
        self._progress(self.received)

    def drain(self) -> None:
        """Read what follows the end-of-archive block (record padding) up to the declared
        length, so the connection stays usable."""
        if self.length is None:
            return
        for _ in self.exactly(self.length - self.received, "the record padding"):
            pass


@dataclass
class _Header:
    name: str
    size: int
    kind: str  # file | dir


def _octal(field_bytes: bytes, what: str) -> int:
    if field_bytes[:1] and field_bytes[0] & 0x80:
        raise _bad(f"{what} uses a base-256 number")
    text = field_bytes.replace(b"\0", b" ").strip()
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise _bad(f"{what} is not an octal number")
    return int(text, 8)


def _parse_header(block: bytes) -> _Header:
    stored = _octal(block[148:156], "a header checksum")
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != computed:
        raise _bad("a header's checksum is wrong (not a tar archive, or damaged)")
    magic = block[257:265]
    if magic not in (b"ustar\x0000", b"ustar  \x00"):
        raise _bad("it is not a ustar archive")
    try:
        name = block[0:100].split(b"\0", 1)[0].decode("ascii")
        prefix = block[345:500].split(b"\0", 1)[0].decode("ascii") \
            if magic == b"ustar\x0000" else ""
    except UnicodeDecodeError:
        raise _invalid("a member's name is not ASCII") from None
    if prefix:
        name = f"{prefix}/{name}"
    size = _octal(block[124:136], f"the size of {name[:80]!r}")
    flag = block[156:157]
    if flag in (b"0", b"\0", b"7"):
        kind = "file"
    elif flag == b"5":
        kind = "dir"
    else:
        what = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device",
                b"4": "a block device", b"6": "a FIFO", b"x": "a pax extended header",
                b"g": "a pax global header", b"L": "a GNU long name",
                b"K": "a GNU long link", b"S": "a GNU sparse file"}.get(flag, "an unknown type")
        raise _invalid(f"{name[:80]!r} is {what}; only regular files are accepted")
    return _Header(name, size, kind)


@dataclass
class Extracted:
    """What an archive held, checked, in a staging directory."""
    staging: str  # holds media/<id>/{meta.json, original.<ext>}
    items: list  # clean metas, library order
    loop: list
    settings: dict
    bytes: int


def extract(read, staging: str, *, limit: int, max_item_bytes: int, length: int | None = None,
            progress=None, present=frozenset()) -> Extracted:
    """Read an archive from `read(n)` into `staging`, checking every member and then the
    whole; raises RestoreError (4xx) or MediaError (507/500 for write failures). Originals of
    the ids in `present` (already in the library: same id, same bytes) are checked, not
    written."""
    source = _Source(read, limit, length, progress)
    media_dir = os.path.join(staging, "media")
    os.makedirs(media_dir, exist_ok=True)
    seen: set[str] = set()
    index = None
    originals: dict[str, dict] = {}  # id -> {"ext", "size", "sha256"}
    metas: dict[str, dict] = {}
    first = True
    while True:
        try:
            block = source.block("a header")
            header = None if block == _ZERO_BLOCK else _parse_header(block)
        except RestoreError as exc:
            if first and exc.status == 400:  # a photo, a text file: say what a backup is
                raise _not_a_backup() from None
            raise
        first = False
        if header is None:
            source.block("the end-of-archive marker")  # the second zero block
            break
        name = header.name
        if name in seen:
            raise _invalid(f"{name[:80]!r} appears twice")
        seen.add(name)
        if header.kind == "dir":
            if not DIR_MEMBER.match(name) or header.size:
                raise _invalid(f"unexpected directory {name[:80]!r}")
            continue
        if index is None:
            if name != INDEX:
                raise _invalid(f"it must start with {INDEX}, not {name[:80]!r}")
            index = _read_index(_small(source, header, MAX_INDEX_BYTES), max_item_bytes)
            continue
        match = ITEM_MEMBER.match(name)
        if not match:
            raise _invalid(f"unexpected member {name[:80]!r}; a backup holds only {INDEX} "
                           "and media/<id>/meta.json, media/<id>/original.<ext>")
        item_id, leaf, ext = match.group(1), match.group(2), match.group(3)
        if item_id not in index["ids"]:
            raise _invalid(f"{name} belongs to an item the index does not list")
        if leaf == "meta.json":
            metas[item_id] = _read_meta(_small(source, header, MAX_META_BYTES), item_id)
            continue
        if item_id in originals:
            raise _invalid(f"item {item_id} has two originals")
        if header.size > max_item_bytes:
            raise RestoreError(413, "payload_too_large", f"{name} ({header.size} bytes) is "
                               f"larger than any upload may be (media.max_upload_mb)")
        originals[item_id] = _write_original(source, header, media_dir, item_id, ext,
                                             keep=item_id not in present)
        _skip_padding(source, header)
    source.drain()
    if index is None:
        raise _bad(f"it holds no {INDEX}")
    items = _check_whole(index, metas, originals)
    _write_metas(media_dir, items)
    return Extracted(staging, items, index["loop"], index["settings"],
                     sum(o["size"] for o in originals.values()))


def _small(source: _Source, header: _Header, limit: int) -> bytes:
    if header.size > limit:
        raise RestoreError(413, "payload_too_large", f"{header.name} is {header.size} bytes; "
                           f"at most {limit} are expected")
    data = b"".join(source.exactly(header.size, header.name))
    _skip_padding(source, header)
    return data


def _skip_padding(source: _Source, header: _Header) -> None:
    for _ in source.exactly(_padded(header.size) - header.size, header.name):
        pass


def _write_original(source: _Source, header: _Header, media_dir: str, item_id: str,
                    ext: str, keep: bool = True) -> dict:
    directory = os.path.join(media_dir, item_id)
    digest = hashlib.sha256()
    try:
        os.makedirs(directory, exist_ok=True)
        if not keep:
            for chunk in source.exactly(header.size, header.name):
                digest.update(chunk)
        else:
            with open(os.path.join(directory, f"original.{ext}"), "xb") as fh:
                for chunk in source.exactly(header.size, header.name):
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        raise storage_error(exc) from exc
    sha = digest.hexdigest()
    if sha[:16] != item_id:
        raise _invalid(f"the original of item {item_id} does not match its id (SHA-256 "
                       f"{sha[:16]}…): the archive is damaged or was edited")
    return {"ext": ext, "size": header.size, "sha256": sha}


def _load_json(data: bytes, what: str):
    try:
        return untrusted_json.loads(data)
    except ValueError:  # not JSON, not UTF-8, or nested too deep
        raise _invalid(f"{what} is not valid JSON (nested at most {untrusted_json.MAX_DEPTH} "
                       "levels)") from None


def _read_index(data: bytes, max_item_bytes: int) -> dict:
    return check_index(_load_json(data, INDEX))


def check_index(doc) -> dict:
    """The backup's index, checked in time linear in its size: at most MAX_ITEMS items, each
    with a valid id listed once, a loop of listed ids, valid settings."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise _invalid(f"{INDEX} is not a LOOP backup index")
    if doc.get("version") != FORMAT_VERSION:
        raise _invalid(f"backup format version {doc.get('version')!r} is not supported "
                       f"(this LOOP reads version {FORMAT_VERSION})")
    items, loop = doc.get("items"), doc.get("loop")
    if not isinstance(items, list) or not isinstance(loop, list):
        raise _invalid(f"{INDEX} needs an items list and a loop list")
    if len(items) > MAX_ITEMS or len(loop) > MAX_ITEMS:
        raise _invalid(f"{INDEX} lists {max(len(items), len(loop))} items; a restore takes at "
                       f"most {MAX_ITEMS}")
    ids: set[str] = set()
    for n, meta in enumerate(items):
        if not isinstance(meta, dict) or not valid_id(meta.get("id")):
            raise _invalid(f"{INDEX}: items[{n}] has no valid id")
        if meta["id"] in ids:
            raise _invalid(f"{INDEX} lists an item twice")
        ids.add(meta["id"])
    if not all(isinstance(i, str) and i in ids for i in loop) or len(set(loop)) != len(loop):
        raise _invalid(f"{INDEX}: the loop names an unknown item or one twice")
    settings = _check_settings(doc.get("settings", {}), ids)
    return {"items": items, "ids": ids, "loop": list(loop), "settings": settings}


def _check_settings(raw, ids: set) -> dict:
    if not isinstance(raw, dict):
        raise _invalid("settings must be an object")
    out = {}
    for key, value in raw.items():
        if key not in SETTING_KEYS:
            log.info("restore: setting %r is not restored (unknown here)", str(key)[:40])
            continue
        if key == "brightness":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise _invalid("settings.brightness must be a whole number 0..100")
        elif key == "mode" and value not in MODES:
            raise _invalid(f"settings.mode must be one of {', '.join(MODES)}")
        elif key == "fit" and value not in FITS:
            raise _invalid(f"settings.fit must be one of {', '.join(FITS)}")
        elif key == "current" and value is not None and value not in ids:
            value = None  # it pointed at an item not in the backup: start at the first
        elif key == "schedule":
            try:
                value = [rule.as_dict() for rule in schedule.parse_rules(value)]
            except schedule.RuleError as exc:
                raise _invalid(f"settings.schedule: {exc}") from None
        out[key] = value
    return out


def _read_meta(data: bytes, item_id: str) -> dict:
    meta = _load_json(data, f"media/{item_id}/meta.json")
    if not isinstance(meta, dict) or meta.get("id") != item_id:
        raise _invalid(f"media/{item_id}/meta.json does not describe item {item_id}")
    return meta


def _check_whole(index: dict, metas: dict, originals: dict) -> list:
    """Every listed item has both files; returns the clean metas in library order."""
    items = []
    for raw in index["items"]:
        item_id = raw["id"]
        if item_id not in originals:
            raise _invalid(f"item {item_id} is listed but its original is missing")
        if item_id not in metas:
            raise _invalid(f"item {item_id} is listed but its meta.json is missing")
        original = originals[item_id]
        for source in (raw, metas[item_id]):
            if source.get("ext", original["ext"]) != original["ext"]:
                raise _invalid(f"item {item_id}: its metadata names another file type than "
                               f"original.{original['ext']}")
        items.append(clean_meta(raw, original))
    return items


def clean_meta(raw: dict, original: dict) -> dict:
    """The metadata a restored item gets: known fields, checked; sizes and hash from the
    bytes themselves; `render` null (frames wait for the maintenance thread)."""
    item_id = raw["id"]

    def number(key, kind, lo, hi, default=None):
        value = raw.get(key, default)
        if value is None or isinstance(value, bool) or not isinstance(value, kind) \
                or not lo <= value <= hi:
            return default
        return value

    name = clean_name(raw.get("name")) if isinstance(raw.get("name"), str) else ""
    name = name or f"{item_id}.{original['ext']}"
    notes = raw.get("notes")
    notes = [n[:300] for n in notes[:20] if isinstance(n, str)] if isinstance(notes, list) \
        else []
    created = raw.get("created_at")
    return {
        "id": item_id, "name": name.strip(),
        "kind": raw.get("kind") if raw.get("kind") in KINDS else "image",
        "format": raw.get("format") if isinstance(raw.get("format"), str)
        and WORD.match(raw.get("format")) else original["ext"],
        "ext": original["ext"],
        "width": number("width", int, 0, 1_000_000, 0),
        "height": number("height", int, 0, 1_000_000, 0),
        "frames": number("frames", int, 0, 10_000_000, 0),
        "duration_ms": number("duration_ms", int, 0, 10**10, 0),
        "bytes": original["size"], "sha256": original["sha256"],
        "created_at": created if isinstance(created, str) and CREATED.match(created)
        else now_iso(),
        "loop_count": number("loop_count", int, 1, 10000),
        "duration_sec": number("duration_sec", (int, float), 0.1, 86400),
        "notes": notes,
        "render": None,
    }


def _write_metas(media_dir: str, items: list) -> None:
    try:
        for meta in items:
            write_json_atomic(os.path.join(media_dir, meta["id"], "meta.json"), meta)
        fsync_dir(media_dir)
    except OSError as exc:
        raise storage_error(exc) from exc


# ---- restore -------------------------------------------------------------------------------
def restore(store, read, *, limit: int, max_item_bytes: int, length: int | None = None,
            progress=None) -> dict:
    """Read, check and swap in an archive; the library is untouched unless all of it is good.

    Returns what changed: {"items", "added", "kept", "removed", "settings"}."""
    staging = store.new_temp_dir("restore")
    try:
        found = extract(read, staging, limit=limit, max_item_bytes=max_item_bytes,
                        length=length, progress=progress,
                        present=frozenset(m["id"] for m in store.view.items))
        report = store.replace_library(os.path.join(staging, "media"), found.items,
                                       found.loop, found.settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.warning("library restored from a backup: %d items (%d new, %d kept, %d removed)",
                len(found.items), len(report["added"]), report["kept"], report["removed"])
    return dict(report, items=len(found.items), settings=sorted(found.settings))


# ---- the offline commands (`loop.py backup`, `loop.py restore`) ----------------------------
def command(args, cfg) -> int:
    """Run `backup` or `restore` against cfg.system.data_dir; the exit status."""
    data_dir = cfg.system.data_dir
    try:
        if args.command == "backup":
            return _backup_command(data_dir, getattr(args, "output", None), sys.stdout)
        return _restore_command(cfg, getattr(args, "input", None), sys.stdin)
    except (OSError, MediaError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        print(f"loop: {args.command} failed: {message}", file=sys.stderr)
        return 1


def _backup_command(data_dir: str, output: str | None, stdout) -> int:
    archive = plan_data_dir(data_dir)
    if output:
        tmp = f"{output}.partial"
        with open(tmp, "wb") as fh:
            archive.write_to(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    else:
        if stdout.isatty():
            print("loop: backup writes a tar: redirect it (> loop.tar) or use --output",
                  file=sys.stderr)
            return 1
        stdout.flush()
        archive.write_to(stdout.buffer)
        stdout.buffer.flush()
    count = sum(1 for m in archive.members if "/original." in m.name)
    print(f"loop: backup of {count} item(s), {archive.length} bytes", file=sys.stderr)
    return 0


def _restore_command(cfg, path: str | None, stdin) -> int:
    data_dir = cfg.system.data_dir
    if path is None and stdin.isatty():
        print("loop: restore reads a tar: redirect it (< loop.tar) or use --input",
              file=sys.stderr)
        return 1
    os.makedirs(data_dir, exist_ok=True)
    lock = lock_data_dir(data_dir)  # the service must not run meanwhile
    try:
        store = Store(data_dir, {"brightness": cfg.display.brightness, "fit": cfg.display.fit,
                                 "mode": "all", "current": None})
        store.open()
        source = open(path, "rb") if path else stdin.buffer
        try:
            report = restore(store, source.read,
                             limit=int(cfg.media.max_restore_mb * 1024 * 1024),
                             max_item_bytes=int(cfg.media.max_upload_mb * 1024 * 1024),
                             length=os.fstat(source.fileno()).st_size if path else None)
        finally:
            if path:
                source.close()
        _give_to_owner(data_dir)
    finally:
        os.close(lock)
    print(f"loop: restored {report['items']} item(s): {len(report['added'])} new, "
          f"{report['kept']} kept, {report['removed']} removed; new items are rendered for "
          "the panel when the service starts", file=sys.stderr)
    return 0


def _give_to_owner(data_dir: str) -> None:
    """Run as root: what the restore created belongs to the data directory's owner (the
    service user), or the service could not re-render into it."""
    if os.geteuid() != 0:
        return
    owner = os.stat(data_dir)
    for base, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid) and name != "loop.lock":
                os.lchown(path, owner.st_uid, owner.st_gid)
