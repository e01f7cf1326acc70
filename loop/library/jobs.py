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
        self._lock = threading.Lock()
        self.version = 0
        self.outcomes = {"done": 0, "failed": 0}

    def create(self, name: str, job_id: str | None = None) -> Job:
        with self._lock:
            taken = job_id in self._jobs and self._jobs[job_id].finished is None
            if not job_id or taken:  # a finished job's id may be reused (a client's retry)
                job_id = (job_id + "-" if job_id else "") + uuid.uuid4().hex[:8]
            job = Job(job_id, name)
            self._jobs[job_id] = job
            self.version += 1
            return job

    def update(self, job: Job, stage: str | None = None, progress: float | None = None,
               item: str | None = None, error: str | None = None) -> None:
        with self._lock:
            if stage and stage != job.stage:
                job.stage = stage
                self.version += 1
                if stage in ("done", "failed"):
                    job.finished = self._clock()
                    self.outcomes[stage] += 1
            if progress is not None:
                job.progress = max(0.0, min(1.0, progress))
            if item is not None:
                job.item = item
            if error is not None:
                job.error = error
            job.updated_at = now_iso()

    def list(self) -> list[dict]:
        with self._lock:
            return [job.as_dict() for job in self._jobs.values()]

    @property
    def active(self) -> int:
        return sum(1 for job in list(self._jobs.values()) if job.finished is None)

    def expire(self) -> int:
        """Forget finished jobs older than `keep_sec`; returns how many."""
        cutoff = self._clock() - self.keep_sec
        with self._lock:
            old = [k for k, j in self._jobs.items()
                   if j.finished is not None and j.finished < cutoff]
            for key in old:
                del self._jobs[key]
            if old:
                self.version += 1
        return len(old)


