"""Progress jobs: every upload, re-render and restore is a job that `/api/poll/progress`
shows with its stage and progress; finished jobs expire. Intake, maintenance, restore and the
monitor (which expires them) all use this table."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from loop.library.store import now_iso

STAGES = ("receiving", "decoding", "rendering", "done", "failed")
# The table is bounded by count as well as by age: a client sending many refused parts within
# its rate limit must not grow it (and /api/poll/progress) without end. Finished jobs go first,
# oldest first; unfinished ones are bounded by the work admitted (slots, the render backlog).
MAX_FINISHED = 200
# What one answer of /api/poll/progress lists: the unfinished jobs first, then the newest
# finished ones; `total` says how many the table holds.
PROGRESS_LIMIT = 100


@dataclass
class Job:
    id: str
    name: str
    stage: str = "receiving"
    progress: float = 0.0
    item: str | None = None
    error: str | None = None
    updated_at: str = field(default_factory=now_iso)
    finished: float | None = None  # monotonic time it reached done/failed

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "stage": self.stage,
                "progress": round(self.progress, 3), "item": self.item, "error": self.error,
                "updated_at": self.updated_at}


class Jobs:
    """Upload and render jobs shown in /api/poll/progress; finished ones expire."""

    def __init__(self, keep_sec: float, clock=time.monotonic):
        self.keep_sec = keep_sec
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._finished: dict[str, None] = {}  # ids of finished jobs, oldest first
        self._lock = threading.Lock()
        self.version = 0
        self.outcomes = {"done": 0, "failed": 0}

    def create(self, name: str, job_id: str | None = None) -> Job:
        with self._lock:
            taken = job_id in self._jobs and self._jobs[job_id].finished is None
            if not job_id or taken:  # a finished job's id may be reused (a client's retry)
                job_id = (job_id + "-" if job_id else "") + uuid.uuid4().hex[:8]
            job = Job(job_id, name)
            self._jobs.pop(job_id, None)  # a reused id moves to the end (the newest)
            self._finished.pop(job_id, None)
            self._jobs[job_id] = job
            self.version += 1
            return job

    def merge_failed(self, jobs: list[Job]) -> None:
        """The failed jobs of one request become one: the first keeps a summary, the others
        leave the table (a request of 64 refused parts is one line, not 64)."""
        failed = [job for job in jobs if job.stage == "failed"]
        if len(failed) < 2:
            return
        first = failed[0]
        with self._lock:
            first.error = f"{len(failed)} files of this upload failed; the first: {first.error}"
            for job in failed[1:]:
                if self._jobs.get(job.id) is job:
                    del self._jobs[job.id]
                    self._finished.pop(job.id, None)
            self.version += 1

    def update(self, job: Job, stage: str | None = None, progress: float | None = None,
               item: str | None = None, error: str | None = None) -> None:
        with self._lock:
            if stage and stage != job.stage:
                job.stage = stage
                self.version += 1
                if stage in ("done", "failed"):
                    job.finished = self._clock()
                    self.outcomes[stage] += 1
                    if self._jobs.get(job.id) is job:  # not one already dropped
                        self._finished[job.id] = None
                    while len(self._finished) > MAX_FINISHED:  # the oldest finished go
                        oldest = next(iter(self._finished))
                        del self._finished[oldest]
                        del self._jobs[oldest]
            if progress is not None:
                job.progress = max(0.0, min(1.0, progress))
            if item is not None:
                job.item = item
            if error is not None:
                job.error = error
            job.updated_at = now_iso()

    def list(self, limit: int = PROGRESS_LIMIT) -> list[dict]:
        """At most `limit` jobs: unfinished ones first (in the order they began), then the
        most recently finished, in the order they finished (the newest last)."""
        with self._lock:
            running = [job for job in self._jobs.values() if job.finished is None][:limit]
            room = limit - len(running)
            newest = list(self._finished)[-room:] if room > 0 else []
            return [job.as_dict() for job in running] + \
                [self._jobs[key].as_dict() for key in newest]

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def active(self) -> int:
        return sum(1 for job in list(self._jobs.values()) if job.finished is None)

    def expire(self) -> int:
        """Forget finished jobs older than `keep_sec`; returns how many."""
        cutoff = self._clock() - self.keep_sec
        with self._lock:
            old = []
            for key in self._finished:  # oldest first
                if self._jobs[key].finished >= cutoff:
                    break
                old.append(key)
            for key in old:
                del self._jobs[key]
                del self._finished[key]
            if old:
                self.version += 1
        return len(old)


