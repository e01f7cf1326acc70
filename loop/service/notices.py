"""Posting and retracting notifications: the one path HTTP and MQTT share (`App.notify`).

Every check runs before the work it protects: the fields (400 naming the field), room in the
queue (429), then, for an uploaded image, the same admission as an upload (memory, a
processing slot, free disk) before the body is read. The frames are made here, on the
calling thread: a text is drawn, an upload decoded, a library item mapped. They go to a
file in tmp/ that is memory-mapped and unlinked at once, so nothing is left on disk when the
notification ends or the service stops: notifications are transient by design, a restart
drops them.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import UTC, datetime

from loop.media import generated, render
from loop.media.clock import ClockFace
from loop.media.errors import MediaError, storage_error
from loop.media.frames import FrameFile, FrameFileError
from loop.media.text import TEXT_KEYS
from loop.playback.notifications import FIELDS, Notification, parse_fields

CONTENT_KEYS = TEXT_KEYS + ("item",)


class Notices:
    """What `App.notify` and `App.retract` do; `app` gives the components."""

    def __init__(self, app, monotonic=time.monotonic, wall=time.time):
        self.app = app
        self.monotonic, self.wall = monotonic, wall

    @property
    def queue(self):
        return self.app.notifications

    def notify(self, body: dict, receive=None) -> tuple[dict, bool]:
        """Post a notification: `body` holds the fields (and a text's or an item's, unless
        `receive` is given: a callable that reads an uploaded image and returns the received
        files). Returns (the notification as listed, replaced?)."""
        allowed = FIELDS + (() if receive is not None else CONTENT_KEYS)
        for key in body:
            if key not in allowed:
                raise MediaError(400, "bad_request", f"{str(key)[:40]}: unknown field; "
                                 f"allowed: {', '.join(allowed)}")
        fields = parse_fields(body)
        if receive is None and "item" in body and "text" in body:
            raise MediaError(400, "bad_request", "item: give text or item, not both")
        if receive is None and "item" not in body:
            if "text" not in body:
                raise MediaError(400, "bad_request", "text: is required (or item, or send an "
                                 "image as the body)")
            spec = generated.parse_item({k: body[k] for k in TEXT_KEYS if k in body})
        now = self.monotonic()
        self.queue.check_room(fields.id, now)  # 429 before any work
        if receive is not None:
            source, about, marquee = self._upload(receive)
        elif "item" in body:
            source, about, marquee = self._item(body["item"])
        else:
            source, about, marquee = self._text(spec)
        seconds, repeat = fields.duration_sec, fields.repeat
        if seconds is None and repeat is None:
            if marquee:
                repeat = 1  # a marquee plays once through: the whole message is read
            else:
                seconds = self.app.cfg.notify.duration_sec
        wall = self.wall()
        note = Notification(
            id=fields.id or f"n-{uuid.uuid4().hex[:8]}", priority=fields.priority,
            source=source, seconds=seconds, repeat=repeat, brightness=fields.brightness,
            posted_at=now, expires_at=now + fields.expires_sec if fields.expires_sec else None,
            about=dict(about, posted_at=_iso(wall), expires_at=_iso(wall + fields.expires_sec)
                       if fields.expires_sec else None))
        replaced = self.queue.post(note, now)
        self.app.player.command("notify", wait=False)
        listed = next((n for n in self.queue.listing(now) if n["id"] == note.id), None)
        return listed or dict(note.about, id=note.id, state="done"), replaced is not None

    def retract(self, note_id: str) -> bool:
        """Take a notification off the panel or out of the queue; False when there is none."""
        if self.queue.retract(note_id) is None:
            return False
        self.app.player.command("notify", wait=False)
        return True

    # ---- the frames -------------------------------------------------------------------------
    def _text(self, spec) -> tuple:
        frames, _ = self.transient_frames(lambda path: generated.render_spec(
            spec, path, self.app.target(), self.app.cfg.media, sync=False))
        return frames, {"kind": "text", "text": spec.text}, frames.count > 1

    def _item(self, item_id) -> tuple:
        if not isinstance(item_id, str):
            raise MediaError(400, "bad_request", "item: must be an item id")
        store = self.app.store
        view = store.view
        item = view.get(item_id) if len(item_id) == 16 else None
        if item is None:
            raise MediaError(404, "not_found", f"item: no item {item_id[:40]}")
        if item_id in view.pending:
            raise MediaError(409, "conflict", "item: it is being re-rendered for the panel")
        try:
            frames = FrameFile(store.frames_path(item_id))
            if item.get("kind") == "clock":
                file, frames = frames, ClockFace(frames, item["layout"])
                file.close()
        except (OSError, FrameFileError, KeyError, ValueError) as exc:
            raise MediaError(409, "conflict", f"item: its frames cannot be read ({exc})") \
                from None
        about = {"kind": "item", "item": item_id, "name": item.get("name")}
        return frames, about, item.get("kind") == "text" and frames.count > 1

    def _upload(self, receive) -> tuple:
        app = self.app
        monitor = app.monitor  # memory shedding: a flag the monitor sets, as for uploads
        if monitor is not None and monitor.shedding:
            monitor.shed_uploads += 1
            raise MediaError(503, "busy", f"the device is short of memory, so new uploads "
                             f"wait until it recovers: {monitor.shedding}")
        intake = app.intake
        if not intake.job_slots.acquire(blocking=False):
            raise MediaError(503, "busy", "all processing slots are busy; try again shortly")
        try:
            files = receive()
            try:
                if len(files) != 1:
                    raise MediaError(400, "bad_request", "file: send exactly one image")
                received = files[0]
                with open(received.path, "rb") as fh:
                    if fh.read(1) == b"{":
                        raise MediaError(415, "unsupported_media", "this body is not an "
                                         "image; a JSON body needs Content-Type: "
                                         "application/json")
                deadline = time.monotonic() + app.cfg.media.decode_timeout_sec
                frames, _ = self.transient_frames(lambda path: render.render(
                    received.path, path, app.target(), app.cfg.media, deadline=deadline))
                app.jobs.update(received.job, stage="done", progress=1.0)
            except MediaError as exc:
                for received in files:
                    app.jobs.update(received.job, stage="failed", error=exc.message)
                raise
            finally:
                for received in files:
                    shutil.rmtree(os.path.dirname(received.path), ignore_errors=True)
        finally:
            intake.job_slots.release()
        return frames, {"kind": "upload", "name": received.name}, False

    def transient_frames(self, draw) -> tuple[FrameFile, object]:
        """(frames, what `draw` returned): frames drawn by `draw(path)` into tmp/, mapped,
        and unlinked at once. The mapping keeps them until the last user lets go, and a crash
        leaves nothing behind."""
        directory = self.app.store.new_temp_dir("notify")
        try:
            path = os.path.join(directory, "frames.bin")
            try:
                rendered = draw(path)
                return FrameFile(path), rendered
            except OSError as exc:
                raise storage_error(exc) from exc
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
