"""The decode memory budget: decodes at once (a count) and the memory they may hold (bytes).

`media.max_pixels` bounds pixels, not memory: a 150 KB PNG of 6300x6300 RGBA decodes into
160 MB, a 140-byte animated WebP of 6000x6000 into 580 MB. So every decode estimates its peak
from the header before it allocates (loop/media/image.py, loop/media/video.py) and takes that
much from one shared pool; it waits while other decodes hold too much of it, and is refused
(422, naming the size and the budget) when it could never fit.

`DecodeSlots` is one object for both: `acquire()`/`release()` are the job slots
(`processing.max_concurrent_jobs`, a bounded count, as the API and the maintenance thread
take them), and while a thread holds a slot, `reserve()` on that thread draws memory from the
pool. The slot is bound to the thread, so the media layer finds it (`reservation`) without
every caller passing it down; a decode on a thread that holds no slot (the bench's render
alone, the self-test) is not budgeted.
"""

from __future__ import annotations

import contextlib
import threading
import time

from loop.media.errors import MediaError

MiB = 1024 * 1024

_bound = threading.local()  # .slots: the DecodeSlots whose slot this thread holds


def mb(nbytes: float) -> str:
    return f"{nbytes / MiB:.0f} MB"


class DecodeSlots:
    """Job slots plus the memory pool decodes reserve from (see the module docstring)."""

    def __init__(self, slots: int, capacity: int, explain: str = ""):
        self._slots = threading.BoundedSemaphore(slots)
        # one client holds at most all slots but one: its slow uploads cannot lock out others
        self.per_client = max(1, slots - 1)
        self._by_client: dict[str, int] = {}
        self._cond = threading.Condition()
        self.capacity = capacity  # bytes decodes may hold at once
        self.explain = explain  # how the capacity was found, for refusals
        self.held = 0  # bytes reserved now
        self.peak = 0  # the most ever reserved at once
        self.refused = 0  # decodes that could never fit

    # ---- the job slots (a BoundedSemaphore's interface) ---------------------------------
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        got = self._slots.acquire(blocking, timeout) if blocking else \
            self._slots.acquire(False)
        if got:
            _bound.slots = self
        return got

    def release(self) -> None:
        if getattr(_bound, "slots", None) is self:
            _bound.slots = None
        self._slots.release()

    def try_acquire_for(self, client: str) -> str | None:
        """A slot for a request of `client` without waiting: None when held, else why not
        ('client': it holds its share already; 'full')."""
        with self._cond:
            if self._by_client.get(client, 0) >= self.per_client:
                return "client"
            if not self.acquire(blocking=False):
                return "full"
            self._by_client[client] = self._by_client.get(client, 0) + 1
            return None

    def release_for(self, client: str) -> None:
        with self._cond:
            left = self._by_client.get(client, 1) - 1
            if left:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)
        self.release()

    # ---- the memory pool ------------------------------------------------------------------
    def set_capacity(self, capacity: int, explain: str) -> None:
        with self._cond:
            self.capacity, self.explain = max(0, capacity), explain
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str, deadline: float | None):
        """Hold `nbytes` of the pool while the block runs. 422 at once when `nbytes` is more
        than the whole pool; while others hold too much, wait until `deadline` (monotonic),
        then 503."""
        nbytes = max(0, int(nbytes))
        with self._cond:
            if nbytes > self.capacity:
                self.refused += 1
                raise MediaError(422, "invalid_media", f"{what}: decoding it needs about "
                                 f"{mb(nbytes)}, more than the {mb(self.capacity)} this "
                                 f"device keeps for decoding ({self.explain})")
            while self.held + nbytes > self.capacity:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise MediaError(503, "busy", f"{what}: decoding it needs about "
                                     f"{mb(nbytes)} and other decodes hold the memory; "
                                     "try again shortly")
                self._cond.wait(left)
            self.held += nbytes
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with self._cond:
                self.held -= nbytes
                self._cond.notify_all()

    def snapshot(self) -> dict:
        return {"capacity_mb": round(self.capacity / MiB, 1),
                "held_mb": round(self.held / MiB, 1), "peak_mb": round(self.peak / MiB, 1),
                "refused": self.refused}


def reservation(nbytes: int, what: str, deadline: float | None):
    """Reserve `nbytes` from the pool of the slot this thread holds (nothing when it holds
    none); a context manager."""
    slots = getattr(_bound, "slots", None)
    if slots is None:
        return contextlib.nullcontext()
    return slots.reserve(nbytes, what, deadline)



# What the service needs besides decoding while a decode runs: 64 connections' read buffers
# (4 MB), request bodies, the player's frames, Python's own garbage.
SERVICE_HEADROOM = 16 * MiB


def capacity_for(limit_mb: float, baseline: int) -> tuple[int, str]:
    """The pool decodes share: `system.memory_limit_mb` (which counts the service and its
    ffmpeg children) minus the service's own memory (`baseline`, its RSS once started) and
    SERVICE_HEADROOM; and how that was found, for refusals."""
    capacity = int(limit_mb * MiB) - baseline - SERVICE_HEADROOM
    return max(0, capacity), (f"system.memory_limit_mb = {limit_mb:g} minus the service's "
                              f"own {mb(baseline + SERVICE_HEADROOM)}")
