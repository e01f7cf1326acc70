"""Streaming upload intake: raw body or multipart into temp files, hashed on the way in,
then decoded, rendered and committed one file after another, each as a progress job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass

import multipart

from loop.library import names
from loop.library.jobs import Job, Jobs
from loop.library.maintenance import render_key
from loop.library.store import Store, now_iso
from loop.media import render
from loop.media.errors import MediaError, storage_error
from loop.media.frames import FrameFile

log = logging.getLogger("loop.intake")

CHUNK = 64 * 1024
UPLOAD_ID = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def clean_name(name: str | None, fallback: str = "upload") -> str:
    """A display name from a client-supplied file name: no path, then the one rule for names
    (loop/library/names.py)."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return names.clean_name(name) or fallback


@dataclass
class Received:
    """One file of a request, on disk in tmp/, with its hash."""
    name: str
    path: str
    size: int
    sha256: str
    job: Job


class Intake:
    """Turns request bodies into library items."""

    def __init__(self, store: Store, jobs: Jobs, cfg, target, job_slots: threading.Semaphore):
        self.store, self.jobs, self.cfg = store, jobs, cfg
        self.target = target  # callable -> media.Target for the current panel and fit
        self.job_slots = job_slots  # decodes at once (processing.max_concurrent_jobs)
        self.after_commit = None  # called after a new item is stored (re-render check)

    # ---- admission (before a byte of the body is read) ---------------------------------
    def check_disk(self, length: int) -> None:
        """507 when storing `length` more bytes would cross the free-disk floor.

        An item needs its original (`length`) plus a frame file of at most
        `media.max_item_mb`; both are counted before a byte of the body is read.
        """
        st = os.statvfs(self.store.data_dir)
        total = st.f_blocks * st.f_frsize
        needed = length + int(self.cfg.media.max_item_mb * 1024 * 1024)
        free = st.f_bavail * st.f_frsize - needed
        if total and free * 100 / total < self.cfg.system.min_free_disk_percent:
            raise MediaError(507, "insufficient_storage", "not enough free storage for this "
                             f"upload (keeping {self.cfg.system.min_free_disk_percent:g} % free)")

    # ---- receiving ---------------------------------------------------------------------
    def receive_raw(self, read, length: int, name: str | None,
                    upload_id: str | None) -> list[Received]:
        """A raw body (`curl --data-binary`) as one file."""
        job = self.jobs.create(clean_name(name), upload_id)
        directory = self.store.new_temp_dir("up")
        sink = None
        try:
            sink = _Sink(directory, job, self.jobs, length)
            remaining = length
            while remaining > 0:
                chunk = read(min(CHUNK, remaining))
                if not chunk:
                    raise MediaError(400, "bad_request", "the body ended early")
                sink.write(chunk)
                remaining -= len(chunk)
            return [sink.close(clean_name(name))]
        except BaseException as exc:
            if sink is not None:
                sink.discard()
            self._fail(job, exc)
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def receive_bytes(self, data: bytes, name: str,
                      upload_id: str | None = None) -> Received:
        """Bytes already in memory (a text or clock spec, an MQTT payload) as one file."""
        directory = self.store.new_temp_dir("up")
        try:
            sink = _Sink(directory, self.jobs.create(clean_name(name), upload_id), self.jobs,
                         len(data))
            sink.write(data)
            return sink.close(clean_name(name))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def receive_multipart(self, read, length: int, boundary: str,
                          upload_id: str | None) -> list[Received]:
        """Every `file` field of a multipart body, streamed with the push parser."""
        directory = self.store.new_temp_dir("up")
        files: list[Received] = []
        sink = None
        try:
            parser = multipart.PushMultipartParser(boundary, length, max_segment_count=64,
                                                   strict=True)
            # parse_blocking reads at most `length` bytes; a body that ends early is an
            # empty read, which the parser reports as an incomplete stream
            for event in parser.parse_blocking(read, CHUNK):
                if isinstance(event, multipart.MultipartSegment):
                    if event.name == "file" and event.filename is not None:
                        # the first file takes the client's id, later ones <id>-<random>
                        # (Jobs.create makes a taken id unique)
                        job = self.jobs.create(clean_name(event.filename), upload_id)
                        sink = _Sink(directory, job, self.jobs, length)
                elif event is None:
                    if sink is not None:
                        files.append(sink.close(sink.job.name))
                    sink = None
                elif sink is not None:
                    sink.write(event)
        except multipart.MultipartError as exc:
            self._abandon(files, sink, directory)
            raise MediaError(400, "bad_request", f"malformed multipart body: {exc}") from None
        except BaseException as exc:
            self._abandon(files, sink, directory, exc)
            raise
        if not files:
            shutil.rmtree(directory, ignore_errors=True)
            raise MediaError(400, "bad_request", "no file field named 'file' in the form")
        return files

    def _abandon(self, files, sink, directory, exc=None) -> None:
        if sink is not None:
            sink.discard()
        jobs = [f.job for f in files] + ([sink.job] if sink else [])
        for job in jobs:
            self._fail(job, exc or MediaError(400, "bad_request", "upload aborted"))
        self.jobs.merge_failed(jobs)
        shutil.rmtree(directory, ignore_errors=True)

    def _fail(self, job: Job, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, MediaError) else "upload aborted"
        self.jobs.update(job, stage="failed", error=message)

    # ---- processing --------------------------------------------------------------------
    def process_all(self, files: list[Received]) -> tuple[int, list[dict]]:
        """Decode and commit each received file in turn; (HTTP status, results).

        The request succeeds when any file is in the library afterwards: 201 when one is
        new, else 200 when one was there already; only when none is, the first failure's
        status. Each file's own status is in its result, whatever the mix."""
        results = []
        try:
            for received in files:
                results.append(self.process(received))
        finally:
            for received in files:
                shutil.rmtree(os.path.dirname(received.path), ignore_errors=True)
            self.jobs.merge_failed([received.job for received in files])
        statuses = [r["status"] for r in results]
        for success in (201, 200):
            if success in statuses:
                return success, results
        return next(s for s in statuses if s >= 400), results

    def process(self, received: Received) -> dict:
        """One file: duplicate check, render into a staging dir, commit."""
        job = received.job
        result = {"name": received.name, "status": 0, "item": None, "error": None,
                  "code": None, "job": job.id}
        item_id = received.sha256[:16]
        try:
            if received.size == 0:
                raise MediaError(422, "invalid_media", f"{received.name} is empty")
            existing = self.store.view.get(item_id)
            if existing is None:
                meta = self._build(received, item_id)
                item, created = self.store.commit_item(meta.pop("_staging"), meta)
            else:
                item, created = existing, False
        except MediaError as exc:
            self.jobs.update(job, stage="failed", error=exc.message)
            result.update(status=exc.status, error=exc.message, code=exc.code)
            return result
        self.jobs.update(job, stage="done", progress=1.0, item=item_id)
        if created and self.after_commit is not None:
            self.after_commit()  # the fit may have changed while this one rendered
        result.update(status=201 if created else 200, item=item)
        return result

    def _build(self, received: Received, item_id: str) -> dict:
        job = received.job
        self.jobs.update(job, stage="decoding", progress=0.0)
        staging = self.store.new_temp_dir("item")
        try:
            target = self.target()
            deadline = time.monotonic() + self.cfg.media.decode_timeout_sec
            frames_path = os.path.join(staging, "frames.bin")

            def progress(fraction):
                self.jobs.update(job, stage="rendering", progress=fraction)
            try:
                rendered = render.render(received.path, frames_path, target, self.cfg.media,
                                        progress=progress, deadline=deadline)
                frame_file = FrameFile(frames_path)
                render.write_thumb(frame_file.frame(rendered.thumb_frame), target,
                                  os.path.join(staging, "thumb.png"))
                frame_file.close()
                os.rename(received.path, os.path.join(staging, f"original.{rendered.ext}"))
            except OSError as exc:
                raise storage_error(exc) from exc
            meta = {
                "id": item_id, "name": received.name, "kind": rendered.kind,
                "format": rendered.format.lower(), "ext": rendered.ext,
                "width": rendered.width, "height": rendered.height,
                "frames": rendered.frames, "duration_ms": rendered.duration_ms,
                "bytes": received.size, "sha256": received.sha256,
                "created_at": now_iso(), "loop_count": None, "duration_sec": None,
                "notes": rendered.notes,
                "render": render_key(target),
                "_staging": staging,
                **rendered.extra,
            }
            return meta
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


class _Sink:
    """Writes one file of an upload into tmp/, hashing as it goes."""

    def __init__(self, directory: str, job: Job, jobs: Jobs, expected: int):
        self.path = os.path.join(directory, uuid.uuid4().hex)
        self.job, self.jobs, self.expected = job, jobs, max(1, expected)
        self.hash = hashlib.sha256()
        self.size = 0
        try:
            self._fh = open(self.path, "xb")
        except OSError as exc:
            raise storage_error(exc) from exc

    def write(self, chunk: bytes) -> None:
        try:
            self._fh.write(chunk)
        except OSError as exc:
            raise storage_error(exc) from exc
        self.hash.update(chunk)
        self.size += len(chunk)
        self.jobs.update(self.job, progress=self.size / self.expected)

    def discard(self) -> None:
        """The upload was aborted: let go of the file handle (the caller removes the file)."""
        self._fh.close()

    def close(self, name: str) -> Received:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise storage_error(exc) from exc
        finally:
            self._fh.close()
        return Received(name, self.path, self.size, self.hash.hexdigest(), self.job)
