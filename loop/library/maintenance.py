"""The short-lived maintenance thread: re-render items whose frames no longer fit the panel.

An item's `render` (panel width, height, pixel format, fit mode) is recorded when its frames
are made. When the panel or the fit mode changes, every item whose `render` differs is marked
pending in the store (the player skips it) before anything plays, and one thread started after
`READY=1` re-renders them from `original.*`, one at a time, each as a job in
`/api/poll/progress`, taking a processing slot like an upload does. It exits when the backlog
is empty; a later change starts a new one.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from loop.media import render
from loop.media.errors import MediaError
from loop.media.frames import FrameFile
from loop.media.geometry import Target

log = logging.getLogger("loop.maintenance")

SLOT_POLL_SEC = 0.2


class Stopped(Exception):
    """The service is stopping: abandon the render in progress."""


def render_key(target: Target) -> dict:
    """What an item's frames were made for (stored as meta["render"])."""
    return {"width": target.width, "height": target.height,
            "pixel_format": target.pixel_format, "fit": target.fit,
            "rotation": target.rotation}


def is_stale(meta: dict, key: dict) -> bool:
    """True when the item's frames were made for another target (no rotation recorded = 0)."""
    return dict({"rotation": 0}, **(meta.get("render") or {})) != key


class Maintenance:
    """Keeps the library rendered for the current target; see the module docstring."""

    def __init__(self, store, jobs, job_slots, target, cfg, on_change=None):
        self.store, self.jobs, self.job_slots = store, jobs, job_slots
        self.target = target  # callable -> media.Target
        self.cfg = cfg  # callable -> the current Config
        self.on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._jobs: dict[str, object] = {}  # item id -> its unfinished job
        self._failed: dict[str, dict] = {}  # item id -> the render key it failed for
        self.rendered = 0

    # ---- any thread ----------------------------------------------------------------------
    def mark(self) -> list[str]:
        """Mark every item whose frames do not match the target as pending; the backlog."""
        with self._lock:
            return self._mark()

    def schedule(self) -> None:
        """Recompute the backlog and make sure a thread is working through it."""
        with self._lock:
            todo = self._mark()
            if not todo or self._stop.is_set():
                return
            for item_id in todo:
                self._job(item_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="maintenance",
                                                daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ---- bookkeeping (under the lock) ----------------------------------------------------
    def _mark(self) -> list[str]:
        key = render_key(self.target())
        view = self.store.view
        stale = [m["id"] for m in view.items if is_stale(m, key)]
        self.store.set_pending(stale)
        order = {item_id: n for n, item_id in enumerate(view.loop)}
        todo = [i for i in stale if self._failed.get(i) != key]
        todo.sort(key=lambda i: order.get(i, len(order)))  # what plays first, first
        for item_id, job in list(self._jobs.items()):
            if item_id not in stale:  # deleted, or the target went back to its render
                gone = view.get(item_id) is None
                self.jobs.update(job, stage="failed" if gone else "done", progress=1.0,
                                 error="the item was deleted" if gone else None)
                del self._jobs[item_id]
        return todo

    def _job(self, item_id: str):
        job = self._jobs.get(item_id)
        if job is None:
            meta = self.store.view.get(item_id) or {}
            job = self.jobs.create(meta.get("name") or item_id, f"render-{item_id}")
            self.jobs.update(job, stage="decoding", progress=0.0, item=item_id)
            self._jobs[item_id] = job
        return job

    # ---- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                todo = self._mark()
                if not todo:
                    self._thread = None
                    break
                item_id = todo[0]
                job = self._job(item_id)
            try:
                self._render_one(item_id, job)
            except Exception as exc:  # a bug must not leave the backlog stuck forever
                log.exception("re-rendering %s failed", item_id)
                self._finish(item_id, job, f"internal error: {exc}")
        else:
            with self._lock:
                self._thread = None

    def _render_one(self, item_id: str, job) -> None:
        while not self.job_slots.acquire(timeout=SLOT_POLL_SEC):
            if self._stop.is_set():
                return
        try:
            target = self.target()
            meta = self.store.view.get(item_id)
            if meta is None or not is_stale(meta, render_key(target)):
                return  # deleted or no longer stale; _mark settles its job
            error = self._render(meta, target, job)
        finally:
            self.job_slots.release()
        self._finish(item_id, job, error, render_key(target))
        self.on_change()

    def _render(self, meta: dict, target: Target, job) -> str | None:
        """Render one item into a staging dir and swap it in; the error text or None."""
        cfg = self.cfg()
        staging = self.store.new_temp_dir("render")
        try:
            frames_path = os.path.join(staging, "frames.bin")

            def progress(fraction):
                if self._stop.is_set():
                    raise Stopped()
                self.jobs.update(job, stage="rendering", progress=fraction)
            try:
                rendered = render.render(self.store.original_path_for(meta), frames_path,
                                        target, cfg.media, progress=progress,
                                        deadline=time.monotonic()
                                        + cfg.media.decode_timeout_sec)
                frame_file = FrameFile(frames_path)
                try:
                    render.write_thumb(frame_file.frame(rendered.thumb_frame), target,
                                      os.path.join(staging, "thumb.png"))
                finally:
                    frame_file.close()
                self.store.replace_render(meta["id"], staging, {
                    "kind": rendered.kind, "frames": rendered.frames,
                    "duration_ms": rendered.duration_ms, "notes": rendered.notes,
                    "render": render_key(target), **rendered.extra})
            except MediaError as exc:
                return exc.message
            except Stopped:
                return "stopped before it was rendered; it is rendered at the next start"
            except OSError as exc:
                return f"storage error: {exc.strerror or exc}"
            self.rendered += 1
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _finish(self, item_id: str, job, error: str | None, key: dict | None = None) -> None:
        with self._lock:
            if error is None:
                self.jobs.update(job, stage="done", progress=1.0)
                self._failed.pop(item_id, None)
            else:
                log.error("item %s could not be re-rendered: %s", item_id, error)
                self.jobs.update(job, stage="failed", error=error)
                if key is not None and not self._stop.is_set():
                    self._failed[item_id] = key
            self._jobs.pop(item_id, None)
